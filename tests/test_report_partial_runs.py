"""The run report (`python -m mlperf_llama2.report`) on partial, corrupt and read-only runs (issue 17, item 5):
a warning or one line (exit 2), never a traceback, and nothing written where it cannot be."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real LoadGen runs (Offline accuracy, Server performance) of the fake SUT."""
    root = tmp_path_factory.mktemp("lgruns")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    dirs = {}
    for scenario, mode in (("Offline", "accuracy"), ("Server", "performance")):
        out = root / f"{scenario}-{mode}"
        out.mkdir()
        proc = subprocess.run([sys.executable, str(HERE / "fake_loadgen_run.py"), str(out), scenario, mode,
                               "--samples", "24", "--tokens", "6"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        dirs[(scenario, mode)] = str(out)
    return dirs


def report(run_dir, *extra):
    return subprocess.run([sys.executable, "-m", "mlperf_llama2.report", str(run_dir), *extra], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)), timeout=120)


@pytest.mark.parametrize("damage, warned", [
    (lambda d: (d / "mlperf_log_accuracy.json").write_text('[{"qsl_idx": 0, "data": "0500'), "mlperf_log_accuracy.json"),
    (lambda d: (d / "mlperf_log_accuracy.json").write_text('[{"seq_id": 0}, 7]'), "mlperf_log_accuracy.json"),
    (lambda d: (d / "sample_timings.csv").write_text("sample_index,issued_s\n1,abc\n"), "sample_timings.csv"),
])
def test_partial_or_corrupt_run_files_are_a_warning_not_a_traceback(runs, tmp_path, damage, warned):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[("Offline", "accuracy")], run_dir)
    damage(run_dir)
    out = report(run_dir, "--no-plots")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "LoadGen verdict" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and warned in warnings[0] and "partial or corrupt" in warnings[0]


def test_unreadable_detail_log_is_one_line(tmp_path):
    (tmp_path / "mlperf_log_detail.txt").mkdir()  # there, but no file to read
    out = report(tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no mlperf_log_detail.txt" in out.stderr


def test_read_only_run_directory_is_one_line_before_anything_is_written(runs, tmp_path, monkeypatch, capsys):
    """Root ignores chmod, so the refused write probe is simulated; summary.json must not be (re)written."""
    import tempfile

    from mlperf_llama2.errors import run_cli
    from mlperf_llama2.report.__main__ import main

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("Server", "performance")], run_dir)
    before = sorted(p.name for p in run_dir.iterdir())

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert run_cli(main, [str(run_dir)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot write in" in err[0] and "Permission denied" in err[0]
    assert captured.out == "" and sorted(p.name for p in run_dir.iterdir()) == before


def test_a_directory_a_run_is_still_writing_is_not_summarized(runs, tmp_path):
    """A run holds its --output-log-dir's claim while it writes: the report built a summary from its partial logs
    and wrote summary.json and plots/ into the live run's directory."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs[("Server", "performance")], run_dir)
    (run_dir / "summary.json").unlink(missing_ok=True)
    with _held(run_dir):
        out = report(run_dir, "--no-plots")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "a run is writing into this directory" in out.stderr
    assert not (run_dir / "summary.json").exists()
    assert report(run_dir, "--no-plots").returncode == 0  # once the run has ended


class _held:
    """The flock claim_output_dir takes, held on a directory that already holds results."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
