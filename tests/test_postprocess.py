"""The response LoadGen receives: cut after the first EOS, int32, n_tokens = len(data)."""

import numpy as np

from mlperf_llama2.postprocess import cut_after_first_eos, finalize_output

EOS = 2


def test_padding_after_first_eos_is_dropped():
    assert cut_after_first_eos([5, 7, EOS, EOS, EOS], EOS) == [5, 7, EOS]


def test_output_without_eos_is_kept_whole():
    assert cut_after_first_eos([5, 7, 9], EOS) == [5, 7, 9]


def test_tokens_after_eos_that_are_not_eos_are_dropped_too():
    assert cut_after_first_eos([5, EOS, 9, EOS], EOS) == [5, EOS]


def test_finalize_is_contiguous_int32():
    out = finalize_output(np.array([3, 4, EOS, EOS], dtype=np.int64), EOS)
    assert out.dtype == np.int32
    assert out.flags["C_CONTIGUOUS"]
    assert out.tolist() == [3, 4, EOS]
    assert out.nbytes == 4 * len(out)
