"""Load: a Server run at a target QPS far above capacity completes, reports INVALID, answers every
query exactly once and keeps memory bounded; a smaller version of the 5,000-query soak
(tools/soak.py) keeps resident memory growth under 10% with every sample answered once.

Both run tools/soak.py in a subprocess on the EOS-biased tiny model (outputs end within a few
tokens); "exactly once" is read from LoadGen's own accuracy log (every response logged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loadgen_fixtures import write_dataset
from reliability_fixtures import REPO, finish, start

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def soak_runs(tmp_path_factory, tiny_tokenizer_dir, eos_model_dir):
    root = tmp_path_factory.mktemp("load")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    common = ["--model-path", eos_model_dir, "--dataset-path", root / "data.pkl", "--max-new-tokens", 16]
    started = {
        "overload": start([*common, "--scenario", "Server", "--target-qps", 10000, "--queries", 300,
                           "--expect", "INVALID", "--json", root / "overload.json"], root, script="tools/soak.py"),
        "soak": start([*common, "--scenario", "Offline", "--batch-size", 8, "--queries", 600, "--points", 10,
                       "--json", root / "soak.json"], root, script="tools/soak.py"),
    }
    results = {name: finish(proc, TIMEOUT_S) for name, proc in started.items()}
    return root, results


def _report(root: Path, name: str) -> dict:
    return json.loads((root / f"{name}.json").read_text())


def test_overload_completes_invalid_with_every_query_answered_once(soak_runs):
    root, results = soak_runs
    result = results["overload"]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = _report(root, "overload")
    assert report["result"] == "INVALID"
    assert report["issued"] >= 300
    assert report["answered"] == report["issued"] == report["logged_responses"] == report["unique_seq_ids"]
    assert report["failed"] == 0 and report["loadgen_errors"] == 0 and report["empty_responses"] == 0
    assert report["achieved_qps"] < report["target_qps"] / 10  # it really was overloaded
    assert report["rss_peak_mb"] < 1.1 * report["rss_baseline_mb"]  # the backlog does not balloon memory


def test_small_soak_keeps_memory_growth_under_10_percent(soak_runs):
    root, results = soak_runs
    result = results["soak"]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = _report(root, "soak")
    assert report["answered"] == report["issued"] == report["logged_responses"] == report["unique_seq_ids"] >= 600
    assert report["growth_pct"] < 10.0
    assert len(report["points"]) >= 10
    assert "rss MB" in result.stdout  # the table


def test_soak_finds_a_repeated_answer(tmp_path):
    """The exactly-once check can fail: a log with a repeated seq_id is reported."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import soak
    finally:
        sys.path.pop(0)
    (tmp_path / "mlperf_log_summary.txt").write_text("Result is : VALID\n2 ERRORS encountered. See detailed log.\n")
    entries = [{"seq_id": 1, "qsl_idx": 0, "data": "05000000", "token_count": 1},
               {"seq_id": 1, "qsl_idx": 0, "data": "05000000", "token_count": 1},
               {"seq_id": 2, "qsl_idx": 1, "data": "", "token_count": 0}]
    (tmp_path / "mlperf_log_accuracy.json").write_text(json.dumps(entries))
    facts = soak.read_loadgen(str(tmp_path))
    assert facts == {"result": "VALID", "loadgen_errors": 2, "logged_responses": 3, "unique_seq_ids": 2,
                     "empty_responses": 1}
