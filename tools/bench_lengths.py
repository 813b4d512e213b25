"""Prompt and output token lengths of a benchmark workload: PERF.md's synthetic draw, or a processed dataset's.

`--lengths-from PATH.pkl` (a processorca pickle): prompt lengths are the rows' `tok_input_length` (else
len(`tok_input`)), output lengths the reference answers' `tok_output_length` (else len(`tok_output`)),
clipped to 1..MAX_NEW_TOKENS (what generation may produce). Rows keep their (prompt, output) pairing; they
are drawn in a seeded random order and cycled when more samples are asked than the dataset has, so the
same seed gives the same workload. Bad files fail with one `UserError` line before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mlperf_llama2 import constants
from mlperf_llama2.data.dataset import read_frame
from mlperf_llama2.errors import UserError

PROMPT_COLUMNS = ("tok_input_length", "tok_input")  # a length column first, else the token lists
OUTPUT_COLUMNS = ("tok_output_length", "tok_output")


@dataclass(frozen=True)
class Workload:
    """Per-sample token lengths and where they came from."""

    prompt: np.ndarray  # [n] int
    output: np.ndarray  # [n] int
    source: str  # "synthetic (PERF.md)" or "dataset PATH (R rows)"

    def summary(self) -> dict:
        return {"source": self.source, "samples": len(self.prompt),
                "prompt_mean": float(self.prompt.mean()) if len(self.prompt) else 0.0,
                "output_mean": float(self.output.mean()) if len(self.output) else 0.0}


def _column_lengths(frame, columns: tuple[str, str], what: str, path: str) -> np.ndarray:
    """Token counts [rows] from the length column, else from the token lists."""
    length_col, tokens_col = columns
    if length_col in frame.columns:
        values = frame[length_col].to_numpy()
    elif tokens_col in frame.columns:
        values = np.array([len(t) if t is not None else 0 for t in frame[tokens_col]])
    else:
        raise UserError(f"--lengths-from {path}: no {what} lengths (needs column {length_col!r} or {tokens_col!r}; "
                        f"has {', '.join(map(str, frame.columns)) or 'none'})")
    try:
        lengths = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"--lengths-from {path}: column {length_col!r} is not numeric") from None
    if np.isnan(lengths).any() or (lengths != np.rint(lengths)).any():
        raise UserError(f"--lengths-from {path}: {what} lengths must be whole numbers (found NaN or fractions)")
    return lengths.astype(int)


def dataset_lengths(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All rows' (prompt lengths, output lengths), each [rows]; outputs clipped to 1..MAX_NEW_TOKENS."""
    if not os.path.isfile(path):
        raise UserError(f"--lengths-from {path}: no such file (a processed dataset pickle, e.g. from processorca.py)")
    frame = read_frame(path)
    if len(frame) == 0:
        raise UserError(f"--lengths-from {path}: the dataset has no rows")
    prompt = _column_lengths(frame, PROMPT_COLUMNS, "prompt", path)
    output = _column_lengths(frame, OUTPUT_COLUMNS, "output", path)
    bad = np.flatnonzero((prompt < 1) | (prompt > constants.INPUT_TOKEN_LIMIT))
    if len(bad):
        raise UserError(f"--lengths-from {path}: row {int(bad[0])} has a prompt of {int(prompt[bad[0]])} tokens "
                        f"(must be 1..{constants.INPUT_TOKEN_LIMIT})")
    return prompt, np.clip(output, 1, constants.MAX_NEW_TOKENS)


def draw(prompt: np.ndarray, output: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) pairs: the rows in a seeded random order, cycled when n exceeds the rows."""
    order = np.random.default_rng(seed).permutation(len(prompt))
    index = np.resize(order, n)  # repeats the permutation when n > rows
    return prompt[index], output[index]


def workload_lengths(n: int, seed: int, lengths_from: Optional[str], synthetic) -> Workload:
    """The run's lengths: from `lengths_from` when given, else `synthetic(n, seed)` (tools/bench.py's draw)."""
    if lengths_from is None:
        prompt, output = synthetic(n, seed)
        return Workload(prompt, output, "synthetic (PERF.md)")
    prompt, output = dataset_lengths(lengths_from)
    p, o = draw(prompt, output, n, seed)
    return Workload(p, o, f"dataset {lengths_from} ({len(prompt)} rows)")
