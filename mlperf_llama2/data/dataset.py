"""The processed OpenOrca dataset the SUT reads (SPEC §3): loaded once, validated before any model loads.

Token ids stay host-side Python lists: nothing is moved to a device per sample. A bad file is one
`UserError` naming the file, the problem and what to do.
"""

from __future__ import annotations

import logging
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from mlperf_llama2 import constants
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

INPUT_COLUMN = "tok_input"
LENGTH_COLUMN = "tok_input_length"
TARGET_COLUMN = "output"


@dataclass(frozen=True)
class Dataset:
    """Prompts (token ids, BOS included) and, when present, the reference answers."""

    path: str
    prompts: tuple[tuple[int, ...], ...]
    targets: Optional[tuple[str, ...]]

    @property
    def total_sample_count(self) -> int:
        return len(self.prompts)

    @property
    def perf_sample_count(self) -> int:
        # SPEC §3: performance sample count = total; LoadGen then applies mlperf.conf's 24576.
        return len(self.prompts)

    def prompt(self, index: int) -> tuple[int, ...]:
        return self.prompts[index]


def read_frame(path: str):
    """Read a processed pickle (.pkl or .pkl.gz; compression inferred) into a DataFrame."""
    import pandas as pd

    if not path:
        raise UserError("no dataset given: pass --dataset-path PATH (a processorca .pkl or .pkl.gz)")
    if not os.path.exists(path):
        raise UserError(f"dataset not found: {path} (run processorca.py to create it, or fix --dataset-path)")
    if os.path.isdir(path):
        raise UserError(f"dataset path is a directory, expected a .pkl file: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"dataset file is empty: {path}")
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            raise UserError(f"dataset is a parquet file, expected the processed pickle: {path} (processorca.py "
                            "turns the OpenOrca parquet into the .pkl that --dataset-path takes)")
    try:
        frame = pd.read_pickle(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise UserError(f"dataset is not a readable pandas pickle: {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"dataset pickle holds a {type(frame).__name__}, expected a pandas DataFrame: {path}")
    return frame


def validate_prompt(index: int, ids: object, vocab_size: Optional[int], path: str) -> tuple[int, ...]:
    """One prompt: a non-empty list of ints in [0, vocab_size) shorter than INPUT_TOKEN_LIMIT."""
    if not isinstance(ids, (list, tuple, np.ndarray)) or getattr(ids, "ndim", 1) != 1:
        raise UserError(f"{path}: row {index}: {INPUT_COLUMN} must be a list of token ids, got {type(ids).__name__}")
    if len(ids) == 0:
        raise UserError(f"{path}: row {index}: empty prompt ({INPUT_COLUMN} has no tokens)")
    if len(ids) >= constants.INPUT_TOKEN_LIMIT:
        raise UserError(
            f"{path}: row {index}: prompt has {len(ids)} tokens; prompts must be shorter than "
            f"{constants.INPUT_TOKEN_LIMIT} (reprocess with processorca.py --seqlen_limit)"
        )
    # numbers only: digit strings and bools would convert to ids without a word (checked per type, for speed)
    if not all(issubclass(k, (numbers.Real, np.number)) and not issubclass(k, (bool, np.bool_))
               for k in {type(t) for t in ids}):
        raise UserError(f"{path}: row {index}: {INPUT_COLUMN} holds non-integer token ids")
    try:
        prompt = tuple(int(t) for t in ids)
    except (TypeError, ValueError):
        raise UserError(f"{path}: row {index}: {INPUT_COLUMN} holds non-integer token ids") from None
    if any(float(a) != float(b) for a, b in zip(prompt, ids)):
        raise UserError(f"{path}: row {index}: {INPUT_COLUMN} holds non-integer token ids")
    lo, hi = min(prompt), max(prompt)
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bad = lo if lo < 0 else hi
        raise UserError(
            f"{path}: row {index}: token id {bad} is outside the model's vocabulary [0, {vocab_size}) "
            "(was the dataset tokenized for another model?)"
        )
    return prompt


def check_target(target: object, where: str) -> str:
    """A reference answer is text: anything else (NaN, None) would be scored as "" and lower ROUGE unseen."""
    if not isinstance(target, str):
        raise UserError(f"{where}: its reference answer in '{TARGET_COLUMN}' is not text but {target!r}; the "
                        "dataset is damaged (processorca.py writes text answers)")
    return target


def load_dataset(
    path: str,
    total_sample_count: int = constants.TOTAL_SAMPLE_COUNT,
    vocab_size: Optional[int] = None,
    require_targets: bool = False,
) -> Dataset:
    """Load and validate the first min(rows, total_sample_count) rows of a processed pickle."""
    if total_sample_count < 1:  # a negative count would slice rows off the end ([:-1])
        raise UserError(f"total sample count must be >= 1, got {total_sample_count}")
    frame = read_frame(path)
    if INPUT_COLUMN not in frame.columns:
        raise UserError(
            f"{path}: no '{INPUT_COLUMN}' column (has: {', '.join(map(str, frame.columns))}); "
            "is this a processorca.py output?"
        )
    if require_targets and TARGET_COLUMN not in frame.columns:
        raise UserError(f"{path}: no '{TARGET_COLUMN}' column with the reference answers")
    if len(frame) == 0:
        raise UserError(f"{path}: the dataset has no rows")
    count = min(len(frame), total_sample_count)
    column: Sequence = frame[INPUT_COLUMN].tolist()[:count]
    prompts = tuple(validate_prompt(i, ids, vocab_size, path) for i, ids in enumerate(column))
    if LENGTH_COLUMN in frame.columns:  # processorca's record of each prompt: a prompt edited since disagrees
        for i, (prompt, length) in enumerate(zip(prompts, frame[LENGTH_COLUMN].tolist()[:count])):
            if len(prompt) != length:
                raise UserError(f"{path}: row {i}: {INPUT_COLUMN} has {len(prompt)} tokens but {LENGTH_COLUMN} says "
                                f"{length}; the prompts were changed after processorca.py wrote them")
    targets = None
    if TARGET_COLUMN in frame.columns:
        targets = tuple(frame[TARGET_COLUMN].tolist()[:count])
        for i, t in enumerate(targets):
            check_target(t, f"{path}: row {i}")
    log.info("dataset %s: %d of %d rows used", path, count, len(frame))
    return Dataset(path=path, prompts=prompts, targets=targets)
