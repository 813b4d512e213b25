"""Helpers for the distributed tests: a result sink that records every callback, bounded waits."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from mlperf_llama2.config import EngineConfig

SMALL_ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, num_kv_blocks=64, cuda_graphs=False)
SMALL_ENGINE_FLAGS = ["--max-num-seqs", 8, "--max-num-batched-tokens", 64, "--num-kv-blocks", 64]


class RecordingSink:
    """Records first tokens, completions and failures per request id; `wait(n)` is bounded."""

    def __init__(self) -> None:
        self.first = defaultdict(list)
        self.completed = defaultdict(list)
        self.failed = defaultdict(list)
        self.order = []  # (kind, request id) in arrival order
        self._cond = threading.Condition()

    def first_token(self, request_id, token):
        with self._cond:
            self.first[request_id].append(token)
            self.order.append(("first", request_id))

    def complete(self, request_id, tokens):
        with self._cond:
            self.completed[request_id].append(list(tokens))
            self.order.append(("complete", request_id))
            self._cond.notify_all()

    def fail(self, request_id, error):
        with self._cond:
            self.failed[request_id].append(error)
            self.order.append(("fail", request_id))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.completed) + len(self.failed) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self.completed) + len(self.failed)} of {count} answered")
                self._cond.wait(left)


def start_node(model_dir, *flags, timeout: float = 180.0):
    """A SUT node subprocess on 127.0.0.1 (any free port); returns (Popen, URL) once it is ready."""
    import os
    import queue
    import subprocess
    import sys

    from loadgen_fixtures import REPO

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "mlperf_llama2.sut_node", "--host", "127.0.0.1", "--port", "0",
           "--model-path", str(model_dir), "--device", "cpu", *map(str, flags)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("SUT node ready on "):
            return proc, line.split()[-1]
    stop_node(proc)
    raise RuntimeError(f"SUT node did not start: {cmd}")


def stop_node(proc, timeout: float = 60.0) -> int:
    """SIGTERM, bounded wait, then SIGKILL; returns the exit code."""
    import subprocess

    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
