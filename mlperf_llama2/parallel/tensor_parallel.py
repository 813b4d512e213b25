"""Tensor parallelism for the engine's Llama: one rank's shard of the model, loaded from the checkpoint.

Split (Megatron style), for world size N and rank r:
  * attention heads: rank r owns query heads [r*H/N, (r+1)*H/N) and key/value heads
    [r*KV/N, (r+1)*KV/N), so the fused `qkv_proj` is column-parallel and the KV cache of each rank
    holds only its KV heads (requires KV % N == 0; Llama-2-70B has 8 KV heads: N in 1, 2, 4, 8);
  * MLP: `gate_up_proj` column-parallel (I/N columns of gate and of up), `down_proj` row-parallel;
  * `o_proj` and `down_proj` are row-parallel: each rank's partial sum is all-reduced (`RowParallel`);
  * the embedding, final norm and lm_head are replicated: every rank computes the same full logits
    (simplest and token-exact; 2 x 32000 x 8192 x 2 bytes = 1 GiB per rank on the 70B).
A shard is an ordinary `LlamaForCausalLM` built with the per-rank shape (`shard_shape`), so the
engine's ModelRunner, attention and kernels run on it unchanged; only the two row-parallel Linears
get wrapped after the weights are loaded (the wrapped `nn.Linear` stays swappable by quantization).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from mlperf_llama2.engine.llama import LlamaForCausalLM, LlamaShape, load_hf_weights, rope_cos_sin
from mlperf_llama2.engine.weights import fill_random_
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output rows split
ROW_PARALLEL = ("o_proj", "down_proj")  # input columns split, outputs all-reduced


def check_divisible(shape: LlamaShape, world: int) -> None:
    """One clear line when the model cannot be split `world` ways."""
    for what, n in (("attention heads", shape.num_heads), ("key/value heads", shape.num_kv_heads),
                    ("MLP columns (intermediate_size)", shape.intermediate_size)):
        if n % world:
            raise UserError(f"--tensor-parallel {world}: the model has {n} {what}, not divisible by {world}; "
                            f"use a tensor-parallel size that divides the KV-head count ({shape.num_kv_heads})")


def shard_shape(shape: LlamaShape, world: int) -> LlamaShape:
    """The per-rank shape: H/N query heads, KV/N key/value heads, I/N MLP columns (head_dim unchanged)."""
    check_divisible(shape, world)
    return dataclasses.replace(shape, num_heads=shape.num_heads // world, num_kv_heads=shape.num_kv_heads // world,
                               intermediate_size=shape.intermediate_size // world)


def _rows(full: LlamaShape, local: LlamaShape, proj: str, rank: int) -> tuple[int, int]:
    """[start, stop) of this rank's slice along the split dimension of `proj`'s weight."""
    size = {"q_proj": local.num_heads * local.head_dim, "k_proj": local.num_kv_heads * local.head_dim,
            "v_proj": local.num_kv_heads * local.head_dim, "o_proj": local.num_heads * local.head_dim,
            "gate_proj": local.intermediate_size, "up_proj": local.intermediate_size,
            "down_proj": local.intermediate_size}[proj]
    return rank * size, (rank + 1) * size


def _projection(name: str) -> Optional[str]:
    parts = name.removeprefix("model.").split(".")
    if len(parts) >= 4 and parts[0] == "layers" and parts[3] in COLUMN_PARALLEL + ROW_PARALLEL:
        return parts[3]
    return None


def shard_tensor(name: str, reader, full: LlamaShape, local: LlamaShape, rank: int) -> torch.Tensor:
    """This rank's part of checkpoint tensor `name`; `reader` slices like safetensors' get_slice (or a tensor)."""
    proj = _projection(name)
    if proj is None:
        return reader[:]
    start, stop = _rows(full, local, proj, rank)
    if proj in COLUMN_PARALLEL:
        return reader[start:stop]  # weight [out, in] and bias [out]: split the output rows
    if name.endswith(".bias"):
        return reader[:]  # a row-parallel bias is added once, after the all-reduce (RowParallel)
    return reader[:, start:stop]  # weight [out, in]: split the input columns


def sharded_checkpoint(model_path: str, full: LlamaShape, local: LlamaShape, rank: int) -> Iterator:
    """(name, tensor) of this rank's shard, read slice by slice (a rank never reads the whole 70B)."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise UserError(f"{model_path}: no *.safetensors files; the engine loads safetensors checkpoints only")
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, shard_tensor(name, f.get_slice(name), full, local, rank)


class RowParallel(nn.Module):
    """A row-parallel Linear: local partial product, then all-reduce (sum) over the tensor-parallel group."""

    def __init__(self, linear: nn.Linear, rank: int, group=None) -> None:
        super().__init__()
        if linear.bias is not None and rank != 0:
            linear.bias.data.zero_()  # the all-reduce sums the bias of every rank: keep one
        self.linear = linear
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # [T, hidden], this rank's partial sum
        dist.all_reduce(y, group=self.group)
        return y


def wrap_row_parallel(model: LlamaForCausalLM, rank: int, group=None) -> None:
    for layer in model.layers:
        layer.o_proj = RowParallel(layer.o_proj, rank, group)
        layer.down_proj = RowParallel(layer.down_proj, rank, group)


def empty_shard(hf_config, local: LlamaShape, device: torch.device, dtype: torch.dtype,
                max_positions: int) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(local)
    model = model.to_empty(device=device).to(dtype)
    for module in model.modules():
        if module.__class__.__name__ == "RMSNorm":
            module.weight.data.fill_(1.0)
    model.set_rope(*rope_cos_sin(hf_config, max(max_positions, 1), dtype, device))
    return model.eval().requires_grad_(False)


def load_shard(model_path: str, rank: int, world: int, device: torch.device, dtype: torch.dtype,
               max_positions: int, group=None):
    """(model shard with row-parallel all-reduces, hf_config) for `rank` of `world`."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path)
    if hf_config.model_type != "llama":
        raise UserError(f"{model_path}: model_type {hf_config.model_type!r}; the engine runs Llama checkpoints only")
    full = LlamaShape.from_hf_config(hf_config)
    local = shard_shape(full, world)
    model = empty_shard(hf_config, local, device, dtype, max_positions)
    load_hf_weights(model, sharded_checkpoint(model_path, full, local, rank))
    wrap_row_parallel(model, rank, group)
    log.info("rank %d/%d: loaded shard of %s (%d/%d heads, %d/%d KV heads, %d/%d MLP columns) on %s", rank, world,
             model_path, local.num_heads, full.num_heads, local.num_kv_heads, full.num_kv_heads,
             local.intermediate_size, full.intermediate_size, device)
    return model, hf_config


def random_shard(hf_config, rank: int, world: int, device: torch.device, dtype: torch.dtype, max_positions: int,
                 init_std: float = 0.02, seed: int = 0, group=None) -> LlamaForCausalLM:
    """Random weights in the shard's shapes (benchmarks). Same seed on every rank: replicated parts agree."""
    local = shard_shape(LlamaShape.from_hf_config(hf_config), world)
    model = empty_shard(hf_config, local, device, dtype, max_positions)
    fill_random_(model, init_std, torch.Generator(device=device).manual_seed(seed))
    wrap_row_parallel(model, rank, group)
    return model
