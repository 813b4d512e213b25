"""Shared by the engine-vs-simulate tests of every quantized mode (int8, FP8): the batch compositions the
engine is run in, the prompts, and the reference's greedy decode (transformers `generate`, cut after EOS)."""

from __future__ import annotations

import torch

from mlperf_llama2.config import EngineConfig

NEW_TOKENS = 16
EOS = 2
COMPOSITIONS = {
    "roomy": EngineConfig(max_num_seqs=16, max_num_batched_tokens=4096, block_size=16, num_kv_blocks=64),
    "chunked_prefill": EngineConfig(max_num_seqs=16, max_num_batched_tokens=7, block_size=4, num_kv_blocks=256),
    "preemption": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=30),
    # steps of up to 64 tokens with prompt chunks run as rows of the decode path (CUDA: its graphs; the whole
    # config keeps them eager)
    "flat_rows": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=256,
                              graph_mixed_tokens=64),
}


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [[1] + torch.randint(3, 500, (n - 1,), generator=g).tolist() for n in (5, 17, 40, 2, 64, 9)]


def greedy_reference(model, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """`generate` one prompt at a time (no padding), min_new_tokens 1, each output cut after its first EOS."""
    outs = []
    for p in prompts():
        gen = model.generate(torch.tensor([p]), max_new_tokens=new_tokens, min_new_tokens=1, do_sample=False,
                             num_beams=1, pad_token_id=EOS)[0, len(p):].tolist()
        outs.append(gen[:gen.index(EOS) + 1] if EOS in gen else gen)
    return outs
