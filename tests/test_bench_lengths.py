"""tools/bench.py --lengths-from: the workload's lengths are the dataset's (prompt lengths and reference
answer token counts, paired per row, drawn with the seed), and the JSON and table say which workload ran."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from loadgen_fixtures import REPO, run_main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_lengths  # noqa: E402

from mlperf_llama2 import constants  # noqa: E402
from mlperf_llama2.errors import UserError  # noqa: E402

# prompt length i + 10 goes with output length 3 * i + 1: the pairing is checkable after any draw
ROWS = 7
PROMPT = np.arange(ROWS) + 10
OUTPUT = 3 * np.arange(ROWS) + 1


def write(path, **columns) -> str:
    pd.DataFrame(columns).to_pickle(path)
    return str(path)


@pytest.fixture
def length_columns(tmp_path):
    return write(tmp_path / "lengths.pkl", tok_input_length=PROMPT, tok_output_length=OUTPUT,
                 input=[f"q{i}" for i in range(ROWS)])


def test_length_columns_are_read(length_columns):
    prompt, output = bench_lengths.dataset_lengths(length_columns)
    assert prompt.tolist() == PROMPT.tolist()
    assert output.tolist() == OUTPUT.tolist()


def test_token_lists_count_when_no_length_columns(tmp_path):
    path = write(tmp_path / "tokens.pkl", tok_input=[[1] * int(n) for n in PROMPT],
                 tok_output=[[5] * int(n) for n in OUTPUT])
    prompt, output = bench_lengths.dataset_lengths(path)
    assert prompt.tolist() == PROMPT.tolist()
    assert output.tolist() == OUTPUT.tolist()


def test_outputs_clipped_to_what_generation_may_produce(tmp_path):
    path = write(tmp_path / "long.pkl", tok_input_length=[5, 6], tok_output_length=[0, 5000])
    _, output = bench_lengths.dataset_lengths(path)
    assert output.tolist() == [1, constants.MAX_NEW_TOKENS]


@pytest.mark.parametrize("n", [4, ROWS, 3 * ROWS + 2])
def test_draw_keeps_pairs_and_cycles(length_columns, n):
    workload = bench_lengths.workload_lengths(n, 0, length_columns, synthetic=None)
    assert len(workload.prompt) == len(workload.output) == n
    assert ((workload.prompt - 10) * 3 + 1 == workload.output).all()  # each row's pair survives the draw
    counts = np.bincount(workload.prompt - 10, minlength=ROWS)
    assert counts.max() - counts.min() <= 1  # cycled: no row drawn twice before every row once
    assert workload.source.startswith(f"dataset {length_columns}")
    again = bench_lengths.workload_lengths(n, 0, length_columns, synthetic=None)
    assert again.prompt.tolist() == workload.prompt.tolist()  # the seed fixes the draw


def test_seed_changes_the_order(length_columns):
    a = bench_lengths.workload_lengths(ROWS, 0, length_columns, synthetic=None)
    b = bench_lengths.workload_lengths(ROWS, 1, length_columns, synthetic=None)
    assert sorted(a.prompt.tolist()) == sorted(b.prompt.tolist())
    assert a.prompt.tolist() != b.prompt.tolist()


def test_without_a_dataset_the_synthetic_draw_is_used():
    calls = []

    def synthetic(n, seed):
        calls.append((n, seed))
        return np.full(n, 100), np.full(n, 50)

    workload = bench_lengths.workload_lengths(5, 3, None, synthetic)
    assert calls == [(5, 3)]
    assert workload.summary() == {"source": "synthetic (PERF.md)", "samples": 5, "prompt_mean": 100.0,
                                  "output_mean": 50.0}


@pytest.mark.parametrize("columns, message", [
    (dict(tok_input_length=[5]), "no output lengths"),
    (dict(tok_output_length=[5]), "no prompt lengths"),
    (dict(tok_input_length=[0], tok_output_length=[5]), "row 0 has a prompt of 0 tokens"),
    (dict(tok_input_length=[5.5], tok_output_length=[5]), "whole numbers"),
])
def test_bad_datasets_name_the_problem(tmp_path, columns, message):
    path = write(tmp_path / "bad.pkl", **columns)
    with pytest.raises(UserError, match=message):
        bench_lengths.dataset_lengths(path)


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(UserError, match="--lengths-from .*nope.pkl: no such file"):
        bench_lengths.dataset_lengths(str(tmp_path / "nope.pkl"))


def test_bench_cli_rejects_a_bad_dataset_in_one_line(tmp_path):
    path = write(tmp_path / "bad.pkl", tok_input_length=[5])
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--lengths-from", path, "--out", tmp_path / "out"], tmp_path,
                    timeout=120, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no output lengths" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # failed before anything was built or written


@pytest.mark.slow
def test_bench_offline_runs_the_dataset_lengths(tmp_path, length_columns):
    proc = run_main(["--shape", "tiny", "--layers", 1, "--device", "cpu", "--samples", 5, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--lengths-from", length_columns, "--max-num-seqs", 8,
                     "--out", tmp_path / "out"], tmp_path, timeout=300, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    expected = bench_lengths.workload_lengths(5, 0, length_columns, synthetic=None)
    assert result["workload"]["source"] == expected.source
    assert result["workload"]["prompt_mean"] == pytest.approx(expected.prompt.mean())
    assert result["workload"]["output_mean"] == pytest.approx(expected.output.mean())
    row = [r for r in result["rows"] if r["backend"] == "engine"][0]
    assert row["samples"] == 5
    # the step log (tools/step_timer.py): seven columns a step, launch time within the step's time; every step
    # but the last launched one (which has no next launch to end its gap) is logged
    assert row["step_log"] and all(len(r) == 7 and 0 <= r[5] <= r[3] for r in row["step_log"])
    assert row["host"]["steps"] == len(row["step_log"]) == row["steps"] - 1
    table = (tmp_path / "out" / "table.txt").read_text()
    assert f"dataset {length_columns} lengths" in table and "engine steps: " in table
