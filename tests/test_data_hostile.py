"""Hostile inputs to the data path (processorca, dataset, evaluate-accuracy, TEST06, accuracy_subset): each one
gives one clear error line (or the reference's result), never a result that only looks valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlperf_llama2.compliance.test06 import check_dtype
from mlperf_llama2.data import processorca as P
from mlperf_llama2.data.dataset import load_dataset
from mlperf_llama2.errors import UserError
from openorca_fixture import SEQLEN_LIMIT, openorca_rows, write_openorca_parquet

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}


def run_script(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=300)


def one_error_line(proc, message):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


# --- dataset.py ------------------------------------------------------------------------------------------------


def write_frame(tmp_path, data, name="d.pkl"):
    path = tmp_path / name
    pd.DataFrame(data).to_pickle(path)
    return str(path)


@pytest.mark.parametrize("count", [0, -1])
def test_a_non_positive_total_sample_count_is_an_error_not_a_silent_cut(tmp_path, count):
    # -1 used to slice off the last row ([:-1]) and report 2 of 3 samples; 0 gave a traceback in dataset.py
    path = write_frame(tmp_path, {"tok_input": [[1, 2], [1, 3], [1, 4]], "output": ["a", "b", "c"]})
    with pytest.raises(UserError, match=f"total sample count must be >= 1, got {count}"):
        load_dataset(path, total_sample_count=count)
    one_error_line(run_script("dataset.py", path, "--total-sample-count", count), "must be >= 1")


@pytest.mark.parametrize("answer", [np.nan, None, 5])
def test_a_non_string_reference_answer_is_an_error(tmp_path, answer):
    # it used to become "" and score ROUGE 0 for that sample, a valid-looking but lowered result
    path = write_frame(tmp_path, {"tok_input": [[1, 2], [1, 3]], "output": ["An answer.", answer]})
    with pytest.raises(UserError, match="row 1: its reference answer in 'output' is not text"):
        load_dataset(path)
    assert load_dataset(path, total_sample_count=1).targets == ("An answer.",)  # rows not used are not judged


@pytest.mark.parametrize("prompt, message", [
    ({1: 2, 3: 4}, "must be a list of token ids, got dict"),
    ({1, 2}, "must be a list of token ids, got set"),
    (["1", "2"], "non-integer token ids"),
    ([1, True], "non-integer token ids"),
])
def test_prompts_that_only_convert_to_ints_are_refused(tmp_path, prompt, message):
    # a dict's keys, digit strings and bools used to load as token ids without a word
    path = write_frame(tmp_path, {"tok_input": [[1, 2], prompt]})
    with pytest.raises(UserError, match=f"row 1: .*{message}"):
        load_dataset(path, vocab_size=512)


def test_prompts_that_disagree_with_their_recorded_lengths_are_refused(tmp_path):
    # processorca records tok_input_length = len(tok_input); a prompt cut or edited after it used to load silently
    path = write_frame(tmp_path, {"tok_input": [[1, 2, 3], [1, 4]], "tok_input_length": [3, 5]})
    with pytest.raises(UserError, match="row 1: tok_input has 2 tokens but tok_input_length says 5"):
        load_dataset(path)


# --- evaluate-accuracy.py ---------------------------------------------------------------------------------------


def test_scoring_a_sample_whose_answer_is_missing_is_one_line(sp_tokenizer_dir, tmp_path):
    dataset = write_frame(tmp_path, {"tok_input": [[1, 5]] * 3, "output": ["The cat sat.", np.nan, "A dog ran."]})
    log = tmp_path / "log.json"
    log.write_text(json.dumps([{"seq_id": k, "qsl_idx": k, "data": np.asarray([100 + k, 2], np.int32).tobytes().hex(),
                                "token_count": 2} for k in range(3)]))
    proc = run_script("evaluate-accuracy.py", "--checkpoint-path", sp_tokenizer_dir, "--mlperf-accuracy-file", log,
                      "--dataset-file", dataset, "--workers", "1")
    one_error_line(proc, "qsl_idx 1: its reference answer in")
    assert "Results" not in proc.stdout


# --- processorca.py ---------------------------------------------------------------------------------------------


def orca_frame():
    rows = openorca_rows()
    return pd.DataFrame([{k: r[k] for k in ("id", "system_prompt", "question", "response")} for r in rows])


def test_a_null_system_prompt_gets_the_no_system_template(tmp_path):
    # pandas >= 3 reads a parquet null as NaN, which is truthy: the prompt used to carry a "nan" system block
    frame = orca_frame()
    frame.loc[1, "system_prompt"] = None
    frame.to_parquet(tmp_path / "o.parquet")
    loaded = P.add_prompts(P.load_parquet(str(tmp_path / "o.parquet")))
    assert loaded.loc[1, "input"] == P.PROMPT_NO_SYSTEM.format(question=frame.loc[1, "question"])
    assert P.llama2_prompt(float("nan"), "Why?") == "<s>[INST] Why? [/INST]"


@pytest.mark.parametrize("column, row, value, message", [
    ("question", 0, None, "1 row(s) with no text in 'question' (first: row 0, id cot.0"),
    ("id", 2, None, "1 row(s) with no text in 'id' (first: row 2"),
    ("id", 3, "cot.0", "duplicate id(s): cot.0"),
])
def test_a_damaged_parquet_is_one_line_before_the_tokenizer_loads(tmp_path, column, row, value, message):
    # a null question used to become the prompt "<s>[INST] nan [/INST]"; a null id the origin "nan"
    frame = orca_frame()
    frame.loc[row, column] = value
    frame.to_parquet(tmp_path / "o.parquet")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        P.load_parquet(str(tmp_path / "o.parquet"))
    proc = run_script("processorca.py", "--dataset_pq_path", tmp_path / "o.parquet", "--model_dir", tmp_path,
                      "--export_dir", tmp_path / "out")  # tmp_path holds no tokenizer: the parquet is read first
    one_error_line(proc, message)


def test_a_parquet_with_both_response_and_output_is_one_line(tmp_path):
    # renaming response -> output made two 'output' columns: a traceback ('DataFrame' has no attribute 'tolist')
    frame = orca_frame()
    frame["output"] = frame["response"]
    frame.to_parquet(tmp_path / "o.parquet")
    with pytest.raises(UserError, match="has both 'response' and 'output'"):
        P.load_parquet(str(tmp_path / "o.parquet"))


def config_for(parquet, tokenizer_dir, export_dir, **over):
    base = dict(dataset_pq_path=str(parquet), model_dir=str(tokenizer_dir), export_dir=str(export_dir),
                seqlen_limit=SEQLEN_LIMIT, num_total_samples=8, calibration_subset_size=3)
    return P.ProcessConfig(**{**base, **over})


def test_an_interrupted_rebuild_does_not_leave_the_old_record_beside_new_pickles(tiny_tokenizer_dir, tmp_path,
                                                                                   monkeypatch):
    write_openorca_parquet(tmp_path / "o.parquet")
    a = config_for(tmp_path / "o.parquet", tiny_tokenizer_dir, tmp_path / "out")
    first = pd.read_pickle(P.generate(a)["full"])
    b = P.ProcessConfig(**{**a.__dict__, "seqlen_limit": int(first["tok_input_length"].max())})

    def interrupted(frame):
        raise KeyboardInterrupt  # Ctrl-C after B's full pickle is written, before its record

    monkeypatch.setattr(P, "split_by_origin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.generate(b)
    monkeypatch.undo()
    again = pd.read_pickle(P.generate(a)["full"])  # A's record must not vouch for B's pickle
    pd.testing.assert_frame_equal(again, first)


def test_a_parquet_replaced_at_the_same_path_is_not_served_from_the_cache(tiny_tokenizer_dir, tmp_path):
    parquet = tmp_path / "o.parquet"
    write_openorca_parquet(parquet)
    config = config_for(parquet, tiny_tokenizer_dir, tmp_path / "out")
    P.generate(config)
    smaller = orca_frame()
    smaller = smaller[smaller["id"] != "cot.0"]
    smaller.to_parquet(parquet)
    full = pd.read_pickle(P.generate(config)["full"])
    assert "cot.0" not in set(full["id"])


def test_a_truncated_cached_pickle_is_rebuilt_not_a_traceback(tiny_tokenizer_dir, tmp_path, caplog):
    write_openorca_parquet(tmp_path / "o.parquet")
    config = config_for(tmp_path / "o.parquet", tiny_tokenizer_dir, tmp_path / "out")
    paths = P.generate(config)
    sampled = pd.read_pickle(paths["sampled"])
    for part in ("cot", "full"):
        data = Path(paths[part]).read_bytes()
        Path(paths[part]).write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        again = P.generate(config)
    assert "cannot read the cached" in caplog.text
    pd.testing.assert_frame_equal(pd.read_pickle(again["sampled"]), sampled)


# --- TEST06 -----------------------------------------------------------------------------------------------------


def test_test06_never_suggests_a_dtype_that_does_not_exist():
    # 5 bytes for 3 tokens: no -d fits; it used to say "pass -d 1.66667-byte"
    entries = [{"qsl_idx": 0, "data": "0500000006", "token_count": 3}]
    with pytest.raises(UserError, match="entry 0: data is 5 bytes, not whole int32 values"):
        check_dtype(entries, "int32", "log.json")


# --- tools/accuracy_subset.py -----------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [0, -1])
def test_accuracy_subset_refuses_a_stride_below_one(tmp_path, every):
    # 0 was a traceback; -1 silently reversed the dataset and negated every qsl_idx of the log
    pd.DataFrame({"output": ["a", "b", "c"]}).to_pickle(tmp_path / "full.pkl")
    (tmp_path / "full.json").write_text(json.dumps([{"qsl_idx": 1, "data": "01"}]))
    for what, src, dst in (("dataset", "full.pkl", "sub.pkl"), ("log", "full.json", "sub.json")):
        proc = run_script("tools/accuracy_subset.py", what, tmp_path / src, tmp_path / dst, "--every", every)
        one_error_line(proc, f"--every must be >= 1, got {every}")
        assert not os.path.exists(tmp_path / dst)


def test_accuracy_subset_missing_input_is_one_line(tmp_path):
    proc = run_script("tools/accuracy_subset.py", "log", tmp_path / "none.json", tmp_path / "sub.json")
    one_error_line(proc, "none.json")
