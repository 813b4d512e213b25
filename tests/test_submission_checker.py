"""The packager against MLCommons' own submission checker: tiny-model Offline runs through real LoadGen,
packaged for v6.1 in the open division, then `submission_checker` as a subprocess.

A tiny run cannot meet three rules the checker enforces in every division (600 s, a 24,576-sample
performance set, an accuracy run over the whole dataset); accuracy is only a warning in open. Every
error the checker reports must be one of those, and the packager must have named each of them first;
anything else (seeds, structure, system description, src/, names, hashes) fails the test. The closed
division refuses the same runs with the reasons listed. The checker's directory comes from
MLPERF_INFERENCE_DIR (a clone of MLCommons' inference repository; .ci/run sets it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen_fixtures import REPO, SMALL_USER_CONF, finish, run_main, start_main, write_dataset
from mlperf_llama2.submission.__main__ import main as package

CHECKER_DIR = os.environ.get("MLPERF_INFERENCE_DIR")
pytestmark = pytest.mark.skipif(not CHECKER_DIR, reason="MLPERF_INFERENCE_DIR is not set (a clone of MLCommons' "
                                                        "inference repository, for its submission checker)")

MAX_NEW = 8
SYSTEM_FIELDS = ["host_memory_configuration=8x DDR5", "host_networking=Ethernet", "cooling=air",
                 "host_networking_topology=N/A (single node)"]
# checker error -> the packager's line for the same rule; what a tiny run cannot avoid.
UNAVOIDABLE = {
    r"performance_sample_count, found 6, needs to be >= 24576": "performance_sample_count 6 < 24576",
    r"Test duration less than 600s in user config": "min_duration 0 ms < 600000 ms",
    r"accurcy run does not cover all dataset, accuracy samples: 6, dataset size: 24576":
        "covers 6 samples, the dataset has 24576",
}
# The checker's own summary lines once any check failed.
CONSEQUENCES = (r"Some (performance|accuracy) checks Checks failed", r"NoResults ", r"SUMMARY: submission has errors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("checker")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    common = ["--model-path", tiny_model_dir, "--dataset-path", root / "data.pkl", "--user-conf", root / "user.conf",
              "--max-new-tokens", MAX_NEW, "--scenario", "Offline", "--batch-size", 6]
    started = {"perf": start_main([*common, "--output-log-dir", "perf"], root),
               "acc": start_main([*common, "--accuracy", "--output-log-dir", "acc"], root)}
    for name, proc in started.items():
        done = finish(proc)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    scored = run_main(["--checkpoint-path", tiny_model_dir, "--dataset-file", root / "data.pkl", "--workers", 1,
                       "--mlperf-accuracy-file", root / "acc" / "mlperf_log_accuracy.json"], root,
                      script="evaluate-accuracy.py")
    assert scored.returncode == 0, scored.stderr[-2000:]
    (root / "acc" / "accuracy.txt").write_text(scored.stdout)
    return root


def pack(root: Path, division: str, *extra: str) -> list[str]:
    return ["--root", str(root / f"sub_{division}"), "--division", division, "--submitter", "Acme",
            "--system", "tiny_cpu", "--status", "available", "--scenario", "Offline",
            "--performance-dir", str(root / "perf"), "--accuracy-dir", str(root / "acc"),
            "--allow-modified-source", *[a for f in SYSTEM_FIELDS for a in ("--system-field", f)], *extra]


def run_checker(tree: Path, out: Path) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "tools.submission.submission_checker.main", "--input", str(tree),
                           "--version", "v6.1", "--submitter", "Acme", "--csv", str(out / "summary.csv")],
                          cwd=CHECKER_DIR, capture_output=True, text=True, timeout=120)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\bERROR\b", line)]


def test_the_open_v6_1_tree_fails_the_official_checker_only_where_a_tiny_run_must(runs, capsys):
    assert package(pack(runs, "open", "--force")) == 0
    packager = capsys.readouterr().err
    tree = runs / "sub_open"
    result = tree / "open" / "Acme" / "results" / "tiny_cpu" / "llama2-70b-99.9" / "Offline"
    # What the checker cannot see but the packager guarantees: the hash is the full log's.
    full_log = (runs / "acc" / "mlperf_log_accuracy.json").read_bytes()
    assert f"hash={hashlib.sha256(full_log).hexdigest()}" in (result / "accuracy" / "accuracy.txt").read_text()
    assert list((tree / "open" / "Acme" / "src").iterdir()), "src/ holds the harness source"

    checked = run_checker(tree, runs / "checker_out")
    output = checked.stdout + checked.stderr
    Path(runs / "checker_output.txt").write_text(output)
    errors = error_lines(output)
    unexplained = [e for e in errors if not any(re.search(p, e) for p in (*UNAVOIDABLE, *CONSEQUENCES))]
    assert unexplained == [], "\n".join(unexplained)
    for checker_error, packager_error in UNAVOIDABLE.items():
        assert any(re.search(checker_error, e) for e in errors), f"checker no longer reports {checker_error!r}"
        assert packager_error in packager, f"packager did not name {packager_error!r} first"
    assert checked.returncode == 1  # the three shortfalls make it "submission has errors"
    assert re.search(r"WARNING.*accuracy not met", output)  # open: ROUGE of a random model is only a warning


def test_the_closed_division_refuses_the_tiny_runs_with_every_reason(runs, capsys):
    assert package(pack(runs, "closed", "--check-only")) == 2
    err = capsys.readouterr().err
    for reason in ("min_duration 0 ms < 600000 ms", "performance_sample_count 6 < 24576",
                   "6 samples per query < 24576", "covers 6 samples, the dataset has 24576",
                   "below the llama2-70b-99.9 target", f"outputs capped at --max-new-tokens {MAX_NEW}",
                   "user.conf set performance_sample_count_override 6", "no --test06-dir",
                   "QSL of 6 samples, not the dataset's 24576"):
        assert reason in err, reason
    assert not (runs / "sub_closed").exists()


def test_src_and_system_description_come_from_the_run_and_the_machine(runs):
    base = runs / "sub_open" / "open" / "Acme"
    info = json.loads((runs / "perf" / "run_info.json").read_text())
    commit = info["harness_commit"].removesuffix("-dirty")
    src = base / "src" / f"mlperf_llama2-{commit[:12]}"
    assert (src / "mlperf_llama2" / "submission" / "rules.py").is_file() or (src / "main.py").is_file()
    system = json.loads((base / "systems" / "tiny_cpu.json").read_text())
    assert system["status"] == "available" and system["system_type"] == "datacenter"
    assert system["cooling"] == "air" and system["host_processor_core_count"]
    assert system["accelerators_per_node"] == "0"  # a CPU machine says so
    measurements = json.loads((base / "results" / "tiny_cpu" / "llama2-70b-99.9" / "Offline" /
                               "measurements.json").read_text())
    assert measurements["weight_data_types"] == "fp32"


def test_ci_points_the_checker_at_the_shared_tools():
    assert "MLPERF_INFERENCE_DIR" in (REPO / ".ci" / "run").read_text()
