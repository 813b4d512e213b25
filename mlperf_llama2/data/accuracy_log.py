"""Read LoadGen's `mlperf_log_accuracy.json` into token-id predictions, as the reference scorer reads it.

Entries are `{seq_id, qsl_idx, data (hex), token_count[, token_data]}`; in file order only the first
entry of each `qsl_idx` is kept, and `data` is read with `np.frombuffer(bytes.fromhex(data), dtype)`.
Any malformed input (missing file, truncated or corrupt JSON, bad hex, a byte length that is not a
multiple of the dtype size, a qsl_idx outside the dataset) is one `UserError` naming the entry.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

# --dtype choices of the reference scorer; "float" is float32 there.
DTYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32}


@dataclass(frozen=True)
class Prediction:
    """One unique sample: its dataset index and the generated token ids (as logged, dtype kept)."""

    qsl_idx: int
    tokens: np.ndarray  # [n_tokens]


def read_log_entries(path: str) -> list:
    """The JSON list of an accuracy log, or one clear error."""
    if not os.path.isfile(path):
        raise UserError(f"accuracy log not found: {path} (run with --accuracy first, or fix --mlperf-accuracy-file)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"accuracy log is not valid JSON (truncated or corrupt?): {path}: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"accuracy log is not UTF-8 text: {path}") from None
    if not isinstance(entries, list):
        raise UserError(f"accuracy log {path} holds a JSON {type(entries).__name__}, expected a list of entries")
    return entries


def decode_entry_data(hex_data: object, dtype: str, where: str) -> np.ndarray:
    """`data` hex string -> 1-D array of `dtype` (the reference's np.frombuffer(bytes.fromhex(...)))."""
    np_dtype = DTYPES[dtype]
    if not isinstance(hex_data, str):
        raise UserError(f"{where}: 'data' must be a hex string, got {type(hex_data).__name__}")
    try:
        raw = bytes.fromhex(hex_data)
    except ValueError:
        raise UserError(f"{where}: 'data' is not valid hex") from None
    size = np.dtype(np_dtype).itemsize
    if len(raw) % size:
        raise UserError(
            f"{where}: data is {len(raw)} bytes, not a multiple of {size} ({dtype}); "
            "was the log written with another --dtype?"
        )
    return np.frombuffer(raw, np_dtype)


def unique_predictions(entries: list, dtype: str, dataset_size: Optional[int], path: str = "log") -> list[Prediction]:
    """First entry per qsl_idx, in file order, with its tokens decoded and its index checked."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    seen: set[int] = set()
    predictions = []
    for position, entry in enumerate(entries):
        where = f"{path}: entry {position}"
        if not isinstance(entry, dict) or "qsl_idx" not in entry or "data" not in entry:
            raise UserError(f"{where}: expected an object with 'qsl_idx' and 'data'")
        qsl_idx = entry["qsl_idx"]
        if isinstance(qsl_idx, bool) or not isinstance(qsl_idx, int):
            raise UserError(f"{where}: qsl_idx must be an integer, got {qsl_idx!r}")
        if qsl_idx in seen:
            continue
        if qsl_idx < 0 or (dataset_size is not None and qsl_idx >= dataset_size):
            raise UserError(
                f"{where}: qsl_idx {qsl_idx} is outside the dataset (0..{dataset_size - 1 if dataset_size else '?'}); "
                "is --dataset-file the one the run used?"
            )
        seen.add(qsl_idx)
        predictions.append(Prediction(qsl_idx, decode_entry_data(entry["data"], dtype, where)))
    log.info("%s: %d entries, %d unique samples", path, len(entries), len(predictions))
    return predictions


def load_predictions(path: str, dtype: str, dataset_size: Optional[int]) -> list[Prediction]:
    """Read and decode an accuracy log; an empty log is an error (nothing to score)."""
    predictions = unique_predictions(read_log_entries(path), dtype, dataset_size, path)
    if not predictions:
        raise UserError(f"accuracy log {path} has no entries: was the run an accuracy run (--accuracy)?")
    return predictions
