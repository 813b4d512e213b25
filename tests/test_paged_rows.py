"""`paged_rows_attention`: the flat steps' attention (--graph-mixed-tokens), consecutive rows of one sequence in
one program. Every row equals attention over its own sequence's cache up to itself (a torch reference over the
gathered, dequantized rows) and the per-row decode kernel over the same rows, for decode rows, prompt chunks
longer and shorter than a group, a prompt with a cached prefix, padded rows, 16/32-bit and 8-bit caches; the
host's grouping never crosses a sequence and covers every row once. Runs under TRITON_INTERPRET=1 on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlperf_llama2.engine.kv_cache import dequantize, quantize
from triton_device import needs_triton, triton_device

from test_engine_paged_decode import STORAGE

DEVICE = triton_device()
BS = 4  # tokens per cache block


def test_row_groups_split_by_sequence_and_size():
    from mlperf_llama2.engine.flat_rows import row_groups

    # rows: a decode (ctx 9), a decode (ctx 3), a 5-token prompt chunk (ctx 7..11), a 2-token chunk (1..2), 2 pads
    ctx = np.array([9, 3, 7, 8, 9, 10, 11, 1, 2, 1, 1])
    same = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0], bool)
    g = row_groups(ctx, same, rows=2)
    want = [(0, 1, 9), (1, 1, 3), (2, 2, 7), (4, 2, 9), (6, 1, 11), (7, 2, 1), (9, 1, 1), (10, 1, 1)]
    assert [tuple(r) for r in g[:len(want)]] == want and not g[len(want):].any() and g.dtype == np.int32
    covered = np.concatenate([np.arange(a, a + n) for a, n, _ in g if n])
    assert covered.tolist() == list(range(len(ctx)))  # every row once, in order
    assert row_groups(np.array([], np.int64), np.array([], bool)).shape == (0, 3)
    big = row_groups(np.arange(1, 21), np.array([0] + [1] * 19, bool), rows=8)
    assert [tuple(r) for r in big[:3]] == [(0, 8, 1), (8, 8, 9), (16, 4, 17)]


def _case(cache_dtype: str, q_dtype: torch.dtype, heads: int = 8, kv_heads: int = 2, d: int = 32, seed: int = 0):
    """Rows of a flat step: (sequence, context length) per row. Sequence 0 decodes at 13; 1 decodes at 1;
    2 is a 11-token chunk after a 6-token cached prefix (ctx 7..17); 3 a fresh 3-token prompt (1..3); two pads
    on the scratch block (ctx 1)."""
    g = torch.Generator().manual_seed(seed)
    seq_len = {0: 13, 1: 1, 2: 17, 3: 3, "pad": 1}
    blocks = {k: -(-n // BS) for k, n in seq_len.items()}
    perm = torch.randperm(sum(blocks.values()) + 2, generator=g).tolist()
    tables, start = {}, 0
    for k, n in blocks.items():
        tables[k] = perm[start:start + n]
        start += n
    rows = [(0, 13), (1, 1)] + [(2, c) for c in range(7, 18)] + [(3, c) for c in (1, 2, 3)] + [("pad", 1)] * 2
    same = [i > 0 and rows[i][0] == rows[i - 1][0] and rows[i][0] != "pad" for i in range(len(rows))]
    x = torch.randn(2, (sum(blocks.values()) + 2) * BS, kv_heads, d, generator=g) * 2
    q = torch.randn(len(rows), heads, d, generator=g).to(q_dtype)
    if cache_dtype == "auto":
        caches, scales = [x[i].to(q_dtype) for i in range(2)], None
        full = [c.float() for c in caches]
    else:
        storage, qmax = STORAGE[cache_dtype]
        scales = torch.stack([x[i].abs().amax(dim=(0, 2)) for i in range(2)]) * 0.9 / qmax
        caches = [quantize(x[i], scales[i], storage) for i in range(2)]
        full = [dequantize(caches[i], scales[i], q_dtype).float() for i in range(2)]
    want = []
    for (k, n), qi in zip(rows, q):
        idx = torch.tensor([tables[k][p // BS] * BS + p % BS for p in range(n)])
        kk, vv = full[0][idx].transpose(0, 1), full[1][idx].transpose(0, 1)
        want.append(F.scaled_dot_product_attention(qi.float()[:, None], kk, vv, scale=d ** -0.5,
                                                   enable_gqa=True)[:, 0])
    width = max(blocks.values())
    bt = torch.tensor([tables[k] + [0] * (width - len(tables[k])) for k, _ in rows], dtype=torch.int32)
    ctx = np.array([n for _, n in rows])
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(q), [to(c) for c in caches], to(scales), to(bt), ctx, np.array(same), torch.stack(want)


@needs_triton
@pytest.mark.parametrize("cache_dtype,q_dtype,tol", [("auto", torch.float32, 1e-5), ("int8", torch.float32, 1e-5),
                                                     ("fp8", torch.float32, 1e-5), ("auto", torch.float16, 2e-3),
                                                     ("int8", torch.float16, 2e-3), ("fp8", torch.float16, 2e-3)])
@pytest.mark.parametrize("rows_per_program", [1, 2, 8])
def test_each_row_attends_to_its_sequence_up_to_itself(cache_dtype, q_dtype, tol, rows_per_program):
    from mlperf_llama2.engine.flat_rows import row_groups
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention, paged_rows_attention

    q, caches, scales, bt, ctx, same, want = _case(cache_dtype, q_dtype)
    groups = torch.as_tensor(row_groups(ctx, same, rows_per_program), device=q.device)
    got = paged_rows_attention(q, caches[0], caches[1], bt, groups, q.shape[-1] ** -0.5, BS, kv_scales=scales,
                               rows=rows_per_program).cpu()
    assert got.dtype == q_dtype
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    per_row = paged_decode_attention(q, caches[0], caches[1], bt, torch.as_tensor(ctx, dtype=torch.int32,
                                                                                  device=q.device),
                                     q.shape[-1] ** -0.5, BS, kv_scales=scales).cpu()
    torch.testing.assert_close(got.float(), per_row.float(), atol=tol, rtol=tol)


@needs_triton
@pytest.mark.parametrize("cache_dtype", ["auto", "fp8"])
def test_tiles_of_16_keys_loop_over_the_context(cache_dtype):
    """The default tiles (32 or 64 keys) hold these contexts (up to 17) whole; 16-key tiles take two iterations."""
    from mlperf_llama2.engine.flat_rows import row_groups
    from mlperf_llama2.engine.paged_decode_triton import paged_rows_attention

    q, caches, scales, bt, ctx, same, want = _case(cache_dtype, torch.float32)
    groups = torch.as_tensor(row_groups(ctx, same, 8), device=q.device)
    got = paged_rows_attention(q, caches[0], caches[1], bt, groups, q.shape[-1] ** -0.5, BS, kv_scales=scales,
                               block_n=16).cpu()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_triton
def test_bad_groups_are_one_line():
    from mlperf_llama2.engine.paged_decode_triton import paged_rows_attention
    from mlperf_llama2.errors import UserError

    q, caches, scales, bt, ctx, same, _ = _case("auto", torch.float32)
    with pytest.raises(UserError, match=r"groups must be int32 \[18, 3\], got torch.int64 \[18, 3\]"):
        paged_rows_attention(q, caches[0], caches[1], bt, torch.zeros(18, 3, dtype=torch.int64, device=q.device),
                             1.0, BS)
