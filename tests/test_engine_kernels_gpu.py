"""The CUDA attention paths agree with a plain SDPA reference (fp16, GQA and MHA)."""

import pytest
import torch
import torch.nn.functional as F

from mlperf_llama2.engine.attention import AttentionMetadata, attention

pytestmark = pytest.mark.gpu


def random_paged_cache(ctx_lens, kv_heads, head_dim, block_size, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    blocks_per = [-(-n // block_size) for n in ctx_lens]
    num_blocks = sum(blocks_per) + 3
    perm = torch.randperm(num_blocks, generator=g, device="cuda").tolist()  # scattered blocks
    k_cache = torch.randn(num_blocks * block_size, kv_heads, head_dim, device="cuda", dtype=torch.float16, generator=g)
    v_cache = torch.randn_like(k_cache)
    tables, start = [], 0
    for n in blocks_per:
        tables.append(perm[start:start + n])
        start += n
    return k_cache, v_cache, tables


def slots_of(table, n, block_size):
    return [table[p // block_size] * block_size + p % block_size for p in range(n)]


def reference(q, k, v):
    """q: [Lq, H, D], k/v: [Lk, KV, D]; queries are the last Lq positions."""
    lq, lk = q.shape[0], k.shape[0]
    mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    out = F.scaled_dot_product_attention(q.transpose(0, 1).float(), k.transpose(0, 1).float(),
                                         v.transpose(0, 1).float(), attn_mask=mask, enable_gqa=True)
    return out.transpose(0, 1)


@pytest.mark.parametrize("heads,kv_heads", [(64, 8), (32, 32), (8, 2)])
def test_paged_decode_kernel_matches_sdpa(heads, kv_heads):
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    bs, d = 16, 128
    ctx = [1, 15, 16, 17, 100, 777, 1500]
    k_cache, v_cache, tables = random_paged_cache(ctx, kv_heads, d, bs)
    q = torch.randn(len(ctx), heads, d, device="cuda", dtype=torch.float16)
    width = max(map(len, tables))
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda")
    out = paged_decode_attention(q, k_cache, v_cache, bt, torch.tensor(ctx, dtype=torch.int32, device="cuda"),
                                 d ** -0.5, bs)
    for i, n in enumerate(ctx):
        idx = torch.tensor(slots_of(tables[i], n, bs), device="cuda")
        want = reference(q[i:i + 1], k_cache[idx], v_cache[idx])
        torch.testing.assert_close(out[i:i + 1].float(), want, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("heads,kv_heads", [(64, 8), (32, 32)])
def test_mixed_step_prefill_with_cached_prefix_and_decodes(heads, kv_heads):
    bs, d = 16, 128
    # two decodes (contexts 40, 9), then two prefill chunks: 30 new after a 50-token prefix, 12 fresh
    ctx = [40, 9, 80, 12]
    q_lens = [1, 1, 30, 12]
    k_cache, v_cache, tables = random_paged_cache(ctx, kv_heads, d, bs, seed=1)
    q = torch.randn(sum(q_lens), heads, d, device="cuda", dtype=torch.float16)
    new_slots = sum((slots_of(tables[i], ctx[i], bs)[ctx[i] - q_lens[i]:] for i in range(4)), [])
    k_new = k_cache[torch.tensor(new_slots, device="cuda")]
    v_new = v_cache[torch.tensor(new_slots, device="cuda")]
    width = max(map(len, tables))
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(new_slots, device="cuda"), num_decodes=2, block_size=bs,
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables[:2]], dtype=torch.int32, device="cuda"),
        context_lens=torch.tensor(ctx[:2], dtype=torch.int32, device="cuda"),
        cu_seqlens_q=torch.tensor([0, 30, 42], dtype=torch.int32, device="cuda"),
        cu_seqlens_k=torch.tensor([0, 80, 92], dtype=torch.int32, device="cuda"),
        max_seqlen_q=30, max_seqlen_k=80, prefill_q_lens=(30, 12), prefill_k_lens=(80, 12),
        context_slots=torch.tensor(slots_of(tables[2], 80, bs) + slots_of(tables[3], 12, bs), device="cuda"),
    )
    out = attention(q, k_new, v_new, k_cache, v_cache, meta, d ** -0.5)
    row = 0
    for i in range(4):
        idx = torch.tensor(slots_of(tables[i], ctx[i], bs), device="cuda")
        want = reference(q[row:row + q_lens[i]] * 1.0, k_cache[idx], v_cache[idx])
        torch.testing.assert_close(out[row:row + q_lens[i]].float(), want, atol=2e-3, rtol=2e-3)
        row += q_lens[i]


@pytest.mark.parametrize("cache_dtype", ["auto", "int8", "fp8"])
def test_every_paged_decode_variant_matches_sdpa_at_70b_shapes(cache_dtype):
    """Each DECODE_CONFIGS variant over a 16-bit or 8-bit cache equals SDPA over the dequantized context."""
    from mlperf_llama2.engine.kv_cache import FP8_MAX, INT8_MAX, dequantize, quantize
    from mlperf_llama2.engine.paged_decode_triton import DECODE_CONFIGS, paged_decode_attention

    bs, d, heads, kv_heads = 16, 128, 64, 8
    ctx = [1, 15, 16, 17, 100, 777, 1500]
    k_cache, v_cache, tables = random_paged_cache(ctx, kv_heads, d, bs, seed=2)
    scales = None
    if cache_dtype != "auto":
        storage, qmax = {"int8": (torch.int8, INT8_MAX), "fp8": (torch.float8_e4m3fn, FP8_MAX)}[cache_dtype]
        scales = torch.stack([c.float().abs().amax(dim=(0, 2)) / qmax for c in (k_cache, v_cache)]).contiguous()
        k_cache, v_cache = quantize(k_cache, scales[0], storage), quantize(v_cache, scales[1], storage)
    k_full = k_cache if scales is None else dequantize(k_cache, scales[0], torch.float16)
    v_full = v_cache if scales is None else dequantize(v_cache, scales[1], torch.float16)
    q = torch.randn(len(ctx), heads, d, device="cuda", dtype=torch.float16)
    width = max(map(len, tables))
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda")
    lens = torch.tensor(ctx, dtype=torch.int32, device="cuda")
    wants = [reference(q[i:i + 1], k_full[idx], v_full[idx])
             for i, n in enumerate(ctx) for idx in [torch.tensor(slots_of(tables[i], n, bs), device="cuda")]]
    for name in DECODE_CONFIGS:
        out = paged_decode_attention(q, k_cache, v_cache, bt, lens, d ** -0.5, bs, kv_scales=scales, config=name)
        for i, want in enumerate(wants):
            torch.testing.assert_close(out[i:i + 1].float(), want, atol=2e-3, rtol=2e-3,
                                       msg=lambda m: f"{name}, context {ctx[i]}: {m}")
