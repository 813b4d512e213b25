"""Shutdown: Ctrl-C (SIGINT) or SIGTERM in the middle of a LoadGen run ends main.py within 10 s with
exit 128 + signal, exactly one clear line, no traceback, its child processes gone, and LoadGen's
detail log on disk and readable.

Offline (the backend is mid-generation of 1024 tokens): the outstanding query is answered and
LoadGen returns, so the teardown runs normally. Server (LoadGen's schedule still has a minute of
queries to issue): LoadGen cannot be unblocked, so the process leaves through os._exit after
stopping the backend and its children. A backend that started a helper child process checks that
the child does not outlive the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from loadgen_fixtures import write_dataset
from reliability_fixtures import REPO, descendants, finish, start

EXIT_LIMIT_S = 10.0
STARTUP_TIMEOUT_S = 180.0

SLOW_CONF = """\
*.Offline.min_duration = 0
*.Offline.min_query_count = 6
*.Server.target_qps = 0.5
*.Server.min_duration = 60000
*.Server.min_query_count = 6
*.*.performance_sample_count_override = 6
"""

# main.py, but the backend also starts a helper process it never stops itself.
CHILD_DRIVER = """
import subprocess, sys
from mlperf_llama2.backends import registry
from mlperf_llama2.backends.reference import create_reference_backend
from mlperf_llama2.errors import run_cli
from mlperf_llama2.harness import main

def with_child(config):
    backend = create_reference_backend(config)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"helper child pid {child.pid}", file=sys.stderr, flush=True)
    return backend

registry.register("reference", with_child)
sys.exit(run_cli(main))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("shutdown")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "slow.conf").write_text(SLOW_CONF)
    (root / "child_main.py").write_text(CHILD_DRIVER)
    return root


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def interrupt_run(workdir, model_dir, scenario: str, sig: int, backend: str = "reference"):
    """Start a slow run, wait for LoadGen, send `sig`; returns (result, seconds to exit, helper child pid)."""
    out = workdir / f"{scenario}_{sig}_{backend}"
    script = str(workdir / "child_main.py") if backend == "reference" else str(REPO / "main.py")
    proc = start(["--model-path", model_dir, "--dataset-path", workdir / "data.pkl", "--user-conf",
                  workdir / "slow.conf", "--scenario", scenario, "--device", "cpu", "--output-log-dir", out,
                  "--backend", backend], workdir, script=script,
                 # the engine finishes 6 x 1024 tiny-model tokens in ~1 s on an idle CPU: slow every step
                 # (50 ms) so the signal lands mid-run, not in the teardown after LoadGen returned
                 env={"MLPERF_LLAMA2_FAULTS": "sleep@batch=*:0.05"} if backend == "engine" else None)
    lines, child = [], None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for line in proc.stderr:  # read until LoadGen has started
        lines.append(line)
        if line.startswith("helper child pid"):
            child = int(line.split()[-1])
        if "starting LoadGen" in line or time.monotonic() > deadline:
            break
    assert "starting LoadGen" in lines[-1], "".join(lines[-20:])
    time.sleep(1.5)  # LoadGen is issuing and the backend generating
    assert proc.poll() is None, "the run ended before the signal"
    threads_before = len(os.listdir(f"/proc/{proc.pid}/task"))
    sent = time.monotonic()
    proc.send_signal(sig)
    result = finish(proc, timeout=60)
    elapsed = time.monotonic() - sent
    result.stderr = "".join(lines) + result.stderr
    return result, elapsed, child, out, threads_before


@pytest.mark.parametrize("scenario, sig, backend", [("Offline", signal.SIGINT, "reference"),
                                                    ("Server", signal.SIGTERM, "reference"),
                                                    ("Server", signal.SIGINT, "reference"),
                                                    ("Offline", signal.SIGTERM, "engine")])
def test_signal_mid_run_ends_within_10_s_with_one_line_and_readable_logs(workdir, tiny_model_dir, scenario, sig,
                                                                         backend):
    result, elapsed, child, out, threads_before = interrupt_run(workdir, tiny_model_dir, scenario, sig, backend)
    name = signal.Signals(sig).name
    assert elapsed < EXIT_LIMIT_S, f"exit took {elapsed:.1f} s"
    assert result.returncode == 128 + sig, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "interrupted" in line]
    prog = "child_main.py" if backend == "reference" else "main.py"
    assert lines == [f"{prog}: error: interrupted by {name}: run stopped before completion "
                     f"(LoadGen logs so far are in {out})"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert threads_before > 2  # LoadGen's and the backend's threads existed; the process (all of them) is gone
    if backend == "reference":  # the driver's backend started a helper process
        assert child is not None and not _alive(child), "the backend's child process outlived the run"
    detail = (out / "mlperf_log_detail.txt").read_text()
    records = [json.loads(line[len(":::MLLOG "):]) for line in detail.splitlines(keepends=True)
               if line.startswith(":::MLLOG ") and line.endswith("\n")]
    assert any(r["key"] == "effective_scenario" and r["value"] == scenario for r in records), detail[:2000]
    assert f"stopped before completion (interrupted by {name})" in (out / "RUN_STOPPED.txt").read_text()


def test_sigterm_before_loadgen_starts_is_one_line_too(workdir, tiny_model_dir):
    """SIGTERM while the process is still starting (before LoadGen): same one line, exit 143."""
    proc = start(["--model-path", tiny_model_dir, "--dataset-path", workdir / "data.pkl", "--user-conf",
                  workdir / "slow.conf", "--device", "cpu", "--output-log-dir", workdir / "early"],
                 workdir, script=str(REPO / "main.py"))
    for line in proc.stderr:
        if "dataset" in line:  # inputs checked, model not yet loaded
            break
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert "interrupted by SIGTERM: run stopped before completion" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "early" / "mlperf_log_summary.txt").exists()


def test_helper_process_check_sees_children(tmp_path):
    """The child-process check above can fail: a live child is seen as alive."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert _alive(child.pid) and child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not _alive(child.pid)
