"""Spreading requests over replicas or nodes: least outstanding tokens first (no torch, no I/O).

A request costs its prompt length plus its max new tokens; the router sends it to the target with
the fewest outstanding tokens (ties: fewest requests, then lowest index) and forgets the cost when
the request ends. Thread-safe; used by the data-parallel backend and the SUT-node client alike.
"""

from __future__ import annotations

import threading
from typing import Optional


class LeastLoadedRouter:
    def __init__(self, num_targets: int) -> None:
        if num_targets < 1:
            raise ValueError("a router needs at least one target")
        self.outstanding_tokens = [0] * num_targets
        self.outstanding_requests = [0] * num_targets
        self._owner: dict[int, tuple[int, int]] = {}  # request id -> (target, cost)
        self._lock = threading.Lock()

    def assign(self, request_id: int, cost: int) -> int:
        """The target for a new request (recorded until `release`)."""
        with self._lock:
            target = min(range(len(self.outstanding_tokens)),
                         key=lambda i: (self.outstanding_tokens[i], self.outstanding_requests[i], i))
            self.outstanding_tokens[target] += cost
            self.outstanding_requests[target] += 1
            self._owner[request_id] = (target, cost)
            return target

    def release(self, request_id: int) -> Optional[int]:
        """Forget a finished request; returns its target (None if unknown or already released)."""
        with self._lock:
            entry = self._owner.pop(request_id, None)
            if entry is None:
                return None
            target, cost = entry
            self.outstanding_tokens[target] -= cost
            self.outstanding_requests[target] -= 1
            return target


def request_cost(prompt_len: int, max_new_tokens: int) -> int:
    return prompt_len + max_new_tokens
