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
