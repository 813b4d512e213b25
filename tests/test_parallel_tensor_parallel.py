"""Tensor parallelism on CPU (gloo, 2 processes): same greedy tokens as one process, shards split right.

The tiny fixture has 4 query heads, 2 KV heads and 128 MLP columns, so TP=2 gives each rank 2 heads,
1 KV head and 64 columns. Rank 0 runs in the test process and drives one worker subprocess.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlperf_llama2.config import EngineConfig
from mlperf_llama2.engine.loader import Parallel, _local_slice
from mlperf_llama2.parallel.tensor_parallel import shard_shape
from mlperf_llama2.parallel.tp_group import ShardSpec, start_tp_engine
from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError

NEW_TOKENS = 16
# chunked prefill (budget 24) and decodes mixed in one step, plus a prompt of one token
PROMPTS = [[1, 40, 41, 42, 300, 7], [1] + list(range(100, 140)), [1, 5], [1, 260, 261, 262, 263, 9, 9, 9, 12]]
ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=24, num_kv_blocks=64, cuda_graphs=False)
SHAPE = LlamaShape(vocab_size=515, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=2048)


def test_shard_shape_splits_heads_and_columns():
    local = shard_shape(SHAPE, 2)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size, local.head_dim) == (2, 1, 64, 16)
    with pytest.raises(UserError, match="2 key/value heads, not divisible by 4"):
        shard_shape(SHAPE, 4)


def test_each_rank_takes_its_rows_or_columns_of_a_part():
    r0, r1 = Parallel(0, 2), Parallel(1, 2)
    q = torch.arange(64 * 64).view(64, 64)  # q part of qkv_proj [H*D, hidden]: rows split
    assert torch.equal(_local_slice("layers.0.qkv_proj", "weight", q, SHAPE, 0, r1), q[32:64])
    k = torch.arange(32 * 64).view(32, 64)  # k part [KV*D, hidden]
    assert torch.equal(_local_slice("layers.1.qkv_proj", "weight", k, SHAPE, 1, r1), k[16:32])
    down = torch.arange(64 * 128).view(64, 128)  # [hidden, I]: columns split
    assert torch.equal(_local_slice("layers.0.down_proj", "weight", down, SHAPE, 0, r0), down[:, :64])
    o = torch.arange(64 * 64).view(64, 64)
    assert torch.equal(_local_slice("layers.0.o_proj", "weight", o, SHAPE, 0, r1), o[:, 32:])
    bias = torch.ones(64)  # a row-parallel bias is added once, after the all-reduce: rank 0 holds it
    assert torch.equal(_local_slice("layers.0.o_proj", "bias", bias, SHAPE, 0, r1), torch.zeros(64))
    emb = torch.arange(515 * 64).view(515, 64)
    assert torch.equal(_local_slice("embed_tokens", "weight", emb, SHAPE, 0, r1), emb)


@pytest.mark.parametrize("flat", [0, 24], ids=["eager_mixed", "flat_rows"])
def test_tp2_tokens_identical_to_tp1(tiny_model_dir, flat):
    """flat_rows: every step with prompt chunks runs as decode rows (--graph-mixed-tokens) on every rank."""
    config = dataclasses.replace(ENGINE, graph_mixed_tokens=flat)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    single = LLMEngine.from_pretrained(str(tiny_model_dir), config, "cpu", torch.float32).generate(PROMPTS, params)
    spec = ShardSpec(world=2, port=0, base_device="cpu", dtype="float32",
                     engine=dataclasses.asdict(config), model_path=str(tiny_model_dir))
    engine, group = start_tp_engine(spec)
    workers = list(group.procs)
    try:
        assert engine.runner.model.shape.num_kv_heads == 1  # rank 0 really holds half the KV heads
        split = engine.generate(PROMPTS, params)
        assert engine.num_steps > len(PROMPTS)  # several lockstep steps ran, prefill chunked
        assert (group.runner.flat_steps > 0) == bool(flat)
    finally:
        group.shutdown()
    assert [p.returncode for p in workers] == [0]  # the worker stopped cleanly when told to
    assert split == single
    assert all(len(out) >= 2 for out in split)


def test_a_dead_worker_fails_the_next_step_instead_of_hanging(tiny_model_dir):
    import time

    spec = ShardSpec(world=2, port=0, base_device="cpu", dtype="float32",
                     engine=dataclasses.asdict(ENGINE), model_path=str(tiny_model_dir))
    engine, group = start_tp_engine(spec)
    worker = group.procs[0]
    try:
        worker.kill()
        worker.wait(timeout=30)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError):
            engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))
        assert time.monotonic() - t0 < 30  # the broken connection is noticed at once, not after a timeout
    finally:
        group.shutdown()
