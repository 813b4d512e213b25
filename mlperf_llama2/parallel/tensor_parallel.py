"""Tensor parallelism for the engine's Llama: the split, and the row-parallel all-reduce.

Split (Megatron style), for world size N and rank r:
  * attention heads: rank r owns query heads [r*H/N, (r+1)*H/N) and key/value heads
    [r*KV/N, (r+1)*KV/N), so the fused `qkv_proj` is column-parallel and the KV cache of each rank
    holds only its KV heads (requires KV % N == 0; Llama-2-70B has 8 KV heads: N in 1, 2, 4, 8);
  * MLP: `gate_up_proj` column-parallel (I/N columns of gate and of up), `down_proj` row-parallel;
  * `o_proj` and `down_proj` are row-parallel: each rank's partial sum is all-reduced (`RowParallel`);
  * the embedding, final norm and lm_head are replicated: every rank computes the same full logits
    (simplest and token-exact; 2 x 32000 x 8192 x 2 bytes = 1 GiB per rank on the 70B).
A shard is an ordinary `LlamaForCausalLM` built with the per-rank shape (`shard_shape`) by the
engine's one loader (`engine/loader.py`), which also slices each checkpoint tensor for its rank.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.distributed as dist
from torch import nn

from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)


def check_divisible(shape: LlamaShape, world: int) -> None:
    """One clear line when the model cannot be split `world` ways."""
    counts = (("attention heads", shape.num_heads), ("key/value heads", shape.num_kv_heads),
              ("MLP columns (intermediate_size)", shape.intermediate_size))
    for what, n in counts:
        if n % world:
            sizes = [k for k in range(1, shape.num_kv_heads + 1) if not any(m % k for _, m in counts)]
            raise UserError(f"--tensor-parallel {world}: the model has {n} {what}, not divisible by {world}; "
                            f"use a tensor-parallel size that divides heads, KV heads and MLP columns: "
                            f"{', '.join(map(str, sizes))}")


def shard_shape(shape: LlamaShape, world: int) -> LlamaShape:
    """The per-rank shape: H/N query heads, KV/N key/value heads, I/N MLP columns (head_dim unchanged)."""
    if world == 1:
        return shape
    check_divisible(shape, world)
    return dataclasses.replace(shape, num_heads=shape.num_heads // world, num_kv_heads=shape.num_kv_heads // world,
                               intermediate_size=shape.intermediate_size // world)


class RowParallel(nn.Module):
    """A row-parallel Linear: local partial product, then all-reduce (sum) over the tensor-parallel group.

    A quantized Linear's input is split along K, so its per-token activation scale must span the whole
    row: it gets `act_scale_group`, over which it all-reduces each token's absmax before quantizing.
    The bias is held by rank 0 only (the loader zeroes it elsewhere): the all-reduce adds it once."""

    def __init__(self, linear: nn.Module, group=None) -> None:
        super().__init__()
        self.linear = linear
        self.group = group
        if hasattr(linear, "row_parallel"):
            linear.row_parallel, linear.act_scale_group = True, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # [T, hidden], this rank's partial sum
        dist.all_reduce(y, group=self.group)
        return y
