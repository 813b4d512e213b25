"""The paged decode kernel's variants (paged_decode_triton.DECODE_CONFIGS) all compute the same attention.

Specification: every variant (bigger tiles, vectorised block-table reads, the int8 bit trick, the
context split over several programs and merged) equals a torch reference over the gathered,
dequantized context, for 16/32-bit and 8-bit caches, contexts from 1 token (most splits empty) to
several tiles; the int8 bit trick is exact (same output as the plain conversion); a bad config name
is one clear error. Runs under TRITON_INTERPRET=1 on a CPU (or on CUDA).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from mlperf_llama2.engine.kv_cache import FP8_MAX, INT8_MAX, dequantize, quantize
from mlperf_llama2.errors import UserError


from triton_device import needs_triton, triton_device  # noqa: E402

DEVICE = triton_device()
STORAGE = {"int8": (torch.int8, INT8_MAX), "fp8": (torch.float8_e4m3fn, FP8_MAX)}
CONTEXTS = [1, 6, 23, 64, 137]


def paged_case(cache_dtype: str, q_dtype: torch.dtype, bs: int, heads: int = 8, kv_heads: int = 2, d: int = 32,
               seed: int = 0):
    """(q [B, H, D], caches [S, KV, D], scales [2, KV] or None, tables [B, W] int32, lens [B] int32, reference
    [B, H, D] fp32: SDPA over each sequence's gathered and dequantized rows)."""
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-n // bs) for n in CONTEXTS]
    perm = torch.randperm(sum(blocks) + 3, generator=g).tolist()  # scattered blocks, a few unused
    tables, start = [], 0
    for n in blocks:
        tables.append(perm[start:start + n])
        start += n
    x = torch.randn(2, (sum(blocks) + 3) * bs, kv_heads, d, generator=g) * 2  # [2, S, KV, D]
    q = torch.randn(len(CONTEXTS), heads, d, generator=g).to(q_dtype)
    if cache_dtype == "auto":
        caches, scales = [x[i].to(q_dtype) for i in range(2)], None
        full = [c.float() for c in caches]
    else:
        storage, qmax = STORAGE[cache_dtype]
        scales = torch.stack([x[i].abs().amax(dim=(0, 2)) for i in range(2)]) * 0.9 / qmax  # [2, KV], some clamp
        caches = [quantize(x[i], scales[i], storage) for i in range(2)]
        full = [dequantize(caches[i], scales[i], q_dtype).float() for i in range(2)]
    want = []
    for table, n, qi in zip(tables, CONTEXTS, q):
        idx = torch.tensor([table[p // bs] * bs + p % bs for p in range(n)])
        k, v = full[0][idx].transpose(0, 1), full[1][idx].transpose(0, 1)  # [KV, n, D]
        want.append(F.scaled_dot_product_attention(qi.float()[:, None], k, v, scale=d ** -0.5,
                                                   enable_gqa=True)[:, 0])
    width = max(blocks)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return (to(q), [to(c) for c in caches], to(scales), to(bt), to(torch.tensor(CONTEXTS, dtype=torch.int32)),
            torch.stack(want))


def run(case, config, bs):
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    q, caches, scales, bt, lens, _ = case
    return paged_decode_attention(q, caches[0], caches[1], bt, lens, q.shape[-1] ** -0.5, bs,
                                  kv_scales=scales, config=config).cpu()


@needs_triton
@pytest.mark.parametrize("cache_dtype", ["auto", "int8", "fp8"])
def test_every_variant_equals_the_reference_fp32(cache_dtype):
    from mlperf_llama2.engine.paged_decode_triton import DECODE_CONFIGS

    for bs in (4, 16):
        case = paged_case(cache_dtype, torch.float32, bs)
        for name in DECODE_CONFIGS:
            got = run(case, name, bs)
            assert got.shape == case[-1].shape
            torch.testing.assert_close(got, case[-1], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} bs {bs}: {m}")


@needs_triton
@pytest.mark.parametrize("cache_dtype", ["auto", "int8", "fp8"])
def test_variants_in_fp16_agree_and_the_int8_bit_trick_is_exact(cache_dtype):
    from mlperf_llama2.engine.paged_decode_triton import DECODE_CONFIGS

    bs = 16
    case = paged_case(cache_dtype, torch.float16, bs, seed=1)
    outs = {name: run(case, name, bs) for name in ("base", "n128w4s3v", "n128w4s3vm", "n64w4s3v_split4")}
    for name, got in outs.items():
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), case[-1], atol=2e-3, rtol=2e-3, msg=lambda m: f"{name}: {m}")
    assert DECODE_CONFIGS["n128w4s3vm"].int8_magic and not DECODE_CONFIGS["n128w4s3v"].int8_magic
    assert torch.equal(outs["n128w4s3vm"], outs["n128w4s3v"])  # same tile, only the int8 conversion differs


def test_split_count_and_config_checks():
    pytest.importorskip("triton")
    from mlperf_llama2.engine.paged_decode_triton import (DEFAULT_DECODE_CONFIG_8BIT, DEFAULT_DECODE_CONFIG_16BIT,
                                                          DecodeKernelConfig, auto_splits, decode_config)

    cpu = torch.device("cpu")  # counted as 4 SMs: aim at 8 programs
    assert auto_splits(1, cpu) == 8 and auto_splits(3, cpu) == 4 and auto_splits(4096, cpu) == 1
    assert auto_splits(1, cpu, max_splits=2) == 2
    assert decode_config(DEFAULT_DECODE_CONFIG_8BIT) and decode_config(DEFAULT_DECODE_CONFIG_16BIT)
    with pytest.raises(UserError, match="unknown decode kernel config 'n999'; choose from base,"):
        decode_config("n999")
    for bad, what in [({"splits": 3}, "splits must be 0"), ({"block_n": 8}, "block_n must be >= 16"),
                      ({"num_stages": 3, "block_n": 96}, "block_n must be a power of 2"),
                      ({"num_stages": 0}, "num_stages must be >= 1"),
                      ({"base": True, "splits": 2}, "base kernel has no splits")]:
        with pytest.raises(UserError, match=what):
            DecodeKernelConfig(**bad)
