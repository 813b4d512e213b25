"""dataset.py (SPEC §3): the processed pickle is read as the reference reads it, and bad files fail early."""

import gzip
import pickle

import pandas as pd
import pytest

from mlperf_llama2.data.dataset import load_dataset
from mlperf_llama2.errors import UserError

pytestmark = pytest.mark.tf_compat  # the LiteML wheel's transformers 4.46 too (make test-compat)


def write(tmp_path, frame, name="d.pkl"):
    path = tmp_path / name
    frame.to_pickle(path)
    return str(path)


def frame(prompts, outputs=None):
    data = {"tok_input": prompts}
    if outputs is not None:
        data["output"] = outputs
    return pd.DataFrame(data)


def test_loads_prompts_and_targets_in_row_order(tmp_path):
    ds = load_dataset(write(tmp_path, frame([[1, 5, 6], [1, 7]], ["a", "b"])))
    assert ds.prompts == ((1, 5, 6), (1, 7))
    assert ds.targets == ("a", "b")
    assert ds.total_sample_count == ds.perf_sample_count == 2


def test_gzip_compression_is_inferred(tmp_path):
    ds = load_dataset(write(tmp_path, frame([[1, 2, 3]]), name="d.pkl.gz"))
    assert ds.prompts == ((1, 2, 3),)
    with gzip.open(tmp_path / "d.pkl.gz") as f:
        assert isinstance(pickle.load(f), pd.DataFrame)


def test_total_sample_count_caps_rows(tmp_path):
    path = write(tmp_path, frame([[1, i] for i in range(10)]))
    assert load_dataset(path, total_sample_count=3).total_sample_count == 3
    assert load_dataset(path, total_sample_count=100).total_sample_count == 10


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([[1, 2], []], "row 1: empty prompt"),
        ([[1] * 1024], "prompt has 1024 tokens"),
        ([[1, 600]], "token id 600 is outside"),
        ([[1, -3]], "token id -3 is outside"),
        ([[1, 2.5]], "non-integer"),
        (["hello"], "must be a list of token ids"),
    ],
)
def test_bad_prompts_are_one_clear_error(tmp_path, prompts, message):
    with pytest.raises(UserError, match=message):
        load_dataset(write(tmp_path, frame(prompts)), vocab_size=512)


def test_missing_column_names_the_column(tmp_path):
    with pytest.raises(UserError, match="no 'tok_input' column"):
        load_dataset(write(tmp_path, pd.DataFrame({"input": ["x"]})))


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"not a pickle", "not a readable pandas pickle")])
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_dataset(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="dataset not found"):
        load_dataset(str(tmp_path / "nope.pkl"))
