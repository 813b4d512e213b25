"""Helpers for the reliability tests: main.py and other entry points in subprocesses with extra
environment (fault injection), accuracy logs keyed by qsl_idx, and the process-tree checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

REPO = Path(__file__).resolve().parents[1]


def child_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLPERF_LLAMA2_FAULTS", None)
    env.pop("MLPERF_LLAMA2_VERBOSE", None)
    env.update(extra or {})
    return env


def start(args, cwd, *, script: str = "main.py", env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    path = script if os.path.isabs(script) else str(REPO / script)
    return subprocess.Popen([sys.executable, path, *map(str, args)], cwd=cwd, env=child_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait at most `timeout` seconds; a process still running then is killed and the test sees rc -9."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n[killed after {timeout} s: hang]"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(args, cwd, *, script: str = "main.py", env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return finish(start(args, cwd, script=script, env=env), timeout)


def accuracy_by_index(log_dir: Path) -> dict[int, str]:
    """mlperf_log_accuracy.json as qsl_idx -> hex data (first entry per index, as the scorer reads it)."""
    entries = json.loads((Path(log_dir) / "mlperf_log_accuracy.json").read_text())
    out: dict[int, str] = {}
    for entry in entries:
        out.setdefault(entry["qsl_idx"], entry["data"])
    return out


def error_lines(stderr: str) -> list[str]:
    """The lines an entry point prints for a failure ("prog: error: ...")."""
    return [line for line in stderr.splitlines() if ": error: " in line]


def descendants(pid: int) -> list[int]:
    """Live processes whose parent chain includes `pid` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text(errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            parents[int(entry)] = int(fields[1])
    found, frontier = [], {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        found.extend(children)
        frontier = children
    return found
