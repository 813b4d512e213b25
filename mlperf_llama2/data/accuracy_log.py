"""Read LoadGen's `mlperf_log_accuracy.json` into token-id predictions, as the reference scorer reads it.

Entries are `{seq_id, qsl_idx, data (hex), token_count[, token_data]}`; in file order only the first
entry of each `qsl_idx` is kept, and `data` is read with `np.frombuffer(bytes.fromhex(data), dtype)`.
Any malformed input (missing or unreadable file, truncated or corrupt JSON, bad hex, a byte length that is not a
multiple of the dtype size, a qsl_idx outside the dataset) is one `UserError` naming the entry.
`check_token_ids` then holds the ids against the tokenizer's vocabulary; a log read with the wrong
--dtype is named as such: int64 data read as int32 has every second value 0 (the high words), int32
data read as int64 gives ids far outside the vocabulary, integer data read as float gives non-integers.
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
    except OSError as exc:  # no permission, an I/O error on the disk: one line, not a traceback
        raise UserError(f"accuracy log {path}: cannot read it ({exc.strerror or exc})") from None
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


def _looks_like_int64(predictions: list[Prediction]) -> bool:
    """int64 ids read as int32: every sample has an even length and every second value (a high word) is 0."""
    if any(len(p.tokens) % 2 for p in predictions):
        return False
    high = np.concatenate([p.tokens[1::2] for p in predictions])
    low = np.concatenate([p.tokens[0::2] for p in predictions])
    return high.size > 0 and not high.any() and bool(low.any())


def _fits_as(tokens: np.ndarray, dtype, vocab_size: int) -> bool:
    """The same bytes read as `dtype` are all token ids (whole numbers in 0..vocab_size-1)."""
    if tokens.nbytes % np.dtype(dtype).itemsize:
        return False
    other = tokens.view(dtype)
    return bool(other.size) and bool((other >= 0).all() and (other < vocab_size).all() and (other == np.round(other)).all())


def check_token_ids(predictions: list[Prediction], vocab_size: int, dtype: str, path: str = "log") -> None:
    """Every logged id is a token of the tokenizer (0..vocab_size-1); a wrong --dtype is one line naming it."""
    if dtype == "int32" and _looks_like_int64(predictions):
        raise UserError(f"{path}: every second int32 value is 0: the log holds int64 token ids; pass --dtype int64")
    for p in predictions:
        where = f"{path}: sample qsl_idx {p.qsl_idx}"
        tokens = p.tokens
        if dtype == "float":
            bad = ~np.isfinite(tokens) | (tokens != np.round(tokens))
            if bad.any():
                raise UserError(f"{where}: value {float(tokens[bad][0])!r} is not a token id: the log holds integer ids "
                                "(the harness writes int32); pass --dtype int32")
        if (tokens < 0).any():
            raise UserError(f"{where}: negative token id {int(tokens[tokens < 0][0])}: the log is corrupt or was "
                            "written with another --dtype")
        if (tokens >= vocab_size).any():
            hint = "is --checkpoint-path the model the run used?"
            if dtype == "int64" and _fits_as(tokens, np.int32, vocab_size):
                hint = "the log holds int32 token ids; pass --dtype int32"
            elif dtype != "float" and _fits_as(tokens, np.float32, vocab_size):
                hint = "the log holds float32 values; pass --dtype float"
            raise UserError(f"{where}: token id {int(tokens[tokens >= vocab_size][0])} is outside the tokenizer's "
                            f"vocabulary (0..{vocab_size - 1}); {hint}")
