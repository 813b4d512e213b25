"""The row groups of a flat step (`--graph-mixed-tokens`: every token a row, `ModelRunner._flat_rows`): consecutive
rows of one sequence that `paged_decode_triton.paged_rows_attention` reads together. Host side only (numpy), so the
runner needs no Triton to build them."""

from __future__ import annotations

import numpy as np

ROWS_PER_PROGRAM = 8  # rows of one sequence that paged_decode_triton.paged_rows_attention reads together


def row_groups(ctx: np.ndarray, same_as_previous: np.ndarray, rows: int = ROWS_PER_PROGRAM) -> np.ndarray:
    """Host side of `paged_decode_triton.paged_rows_attention`: int32 [len(ctx), 3] groups (first row, rows,
    context of the first row), padded with empty ones. `ctx[i]`: row i's context length; `same_as_previous[i]`:
    row i is the next token of row i - 1's sequence (ctx[i] == ctx[i - 1] + 1, the same block table). A group never
    spans two sequences and holds at most `rows` rows."""
    n = len(ctx)
    idx = np.arange(n)
    same = np.asarray(same_as_previous, bool).copy()
    if n:
        same[0] = False
    run_start = np.maximum.accumulate(np.where(same, 0, idx)) if n else idx
    starts = idx[(idx - run_start) % rows == 0]
    out = np.zeros((n, 3), np.int32)
    out[:len(starts), 0] = starts
    out[:len(starts), 1] = np.diff(np.append(starts, n))
    out[:len(starts), 2] = np.asarray(ctx)[starts]
    return out
