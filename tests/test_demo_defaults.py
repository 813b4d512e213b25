"""main.py without --model-path / --dataset-path: it uses the prepared demo model and data, or says in one
line how to prepare them; every run leaves run_info.json, sample_timings.csv and summary.json beside
LoadGen's logs and prints the summary table."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen_fixtures import REPO, SMALL_USER_CONF, write_dataset
from mlperf_llama2.demo import model as demo_model
from mlperf_llama2.demo.prepare import DemoPaths


def run(args, cwd, demo_dir, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MLPERF_LLAMA2_DEMO_DIR=str(demo_dir),
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_unprepared_demo_is_one_line_saying_how_to_prepare(tmp_path):
    out = run(["--accuracy"], tmp_path, tmp_path / "nothing-here")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "python -m mlperf_llama2.demo prepare" in out.stderr
    assert "--model-path / --dataset-path" in out.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_model_dir):
    """A fake prepared demo (the tiny model and a tiny dataset at the demo paths), run with no path flags."""
    root = tmp_path_factory.mktemp("demo-defaults")
    paths = DemoPaths(str(root / "demo"))
    shutil.copytree(tiny_model_dir, paths.model_dir)
    info = demo_model.DemoModelInfo("tiny", "test", "none", "0", 1, 2, 515)
    Path(paths.model_dir, demo_model.MARKER_FILE).write_text(json.dumps(info.__dict__))
    os.makedirs(paths.processed_dir)
    write_dataset(Path(paths.dataset), tiny_model_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    out = run(["--accuracy", "--max-new-tokens", "4", "--batch-size", "3", "--output-log-dir", "logs"], root,
              root / "demo")
    return root, paths, out


def test_no_path_flags_use_the_prepared_demo(demo_run):
    root, paths, out = demo_run
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads((root / "logs" / "run_info.json").read_text())
    assert info["model_path"] == paths.model_dir and info["dataset_path"] == paths.dataset
    assert info["max_new_tokens"] == 4


def test_run_leaves_timings_and_summary_and_prints_the_table(demo_run):
    root, _, out = demo_run
    with open(root / "logs" / "sample_timings.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["sample_index"]) for r in rows) == list(range(6))
    assert all(2 <= int(r["n_tokens"]) <= 4 for r in rows)
    summary = json.loads((root / "logs" / "summary.json").read_text())
    assert (summary["mode"], summary["samples"], summary["max_new_tokens"]) == ("AccuracyOnly", 6, 4)
    assert "output cap      : 4 new tokens" in out.stdout
    assert "\r" not in out.stderr  # stderr is a pipe here: no progress bar


@pytest.mark.parametrize("given", ["--model-path", "--dataset-path"])
def test_half_a_setting_is_refused_not_completed_with_the_demos_other_half(tmp_path, tiny_model_dir, given):
    """--model-path without --dataset-path ran your model on the demo's SmolLM2-tokenized prompts (a warning in the
    log, a ROUGE line at the end); --dataset-path alone ran the demo model on your prompts without a word."""
    path = tiny_model_dir if given == "--model-path" else tmp_path / "data.pkl"
    (tmp_path / "data.pkl").write_bytes(b"")
    out = run([given, path, "--accuracy"], tmp_path, tmp_path / "nothing-here")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "without --" in out.stderr and "or neither for the demo" in out.stderr
