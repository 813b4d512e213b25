"""Turning generated ids into the response LoadGen gets (SPEC §2 decisions 1-3). Pure functions."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mlperf_llama2 import constants


def cut_after_first_eos(tokens: Sequence[int], eos_token_id: int) -> list[int]:
    """Keep everything up to and including the first EOS; drop what follows (batch padding)."""
    out: list[int] = []
    for tok in tokens:
        out.append(int(tok))
        if tok == eos_token_id:
            break
    return out


def finalize_output(tokens: Sequence[int], eos_token_id: int) -> np.ndarray:
    """The response payload: cut after the first EOS, as a contiguous int32 array; n_tokens = its length."""
    return np.ascontiguousarray(cut_after_first_eos(tokens, eos_token_id), dtype=constants.OUTPUT_DTYPE)
