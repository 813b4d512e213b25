"""A step's small host<->device transfers: its input arrays up in one copy, its tokens back without a wait.

On CUDA both go through pinned buffers, so queuing step N+1 never waits for step N (overlapped
steps, `llm_engine.py`); elsewhere they are plain copies. Buffers alternate between two sets.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class StepOutput:
    """One launched step's tokens: `tokens()` waits for the device (CUDA: an event on a pinned copy)."""

    def __init__(self, host: torch.Tensor, done: Optional[torch.cuda.Event]) -> None:
        self._host = host
        self._done = done

    def tokens(self) -> list[int]:
        if self._done is not None:
            self._done.synchronize()
        return self._host.tolist()


class Staging:
    """Host-to-device copies of a step's small integer arrays, one copy a step.

    On CUDA the arrays are packed into a pinned buffer and copied asynchronously, so queuing a step
    never waits for the one before it; buffers alternate between two sets, which is safe because the
    engine reads step N-1's tokens before it queues step N+1 (so N-1's copies are done). Call `put`
    once per step. Elsewhere a plain copy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._bufs: list[Optional[torch.Tensor]] = [None, None]
        self._tok_bufs: list[Optional[torch.Tensor]] = [None, None]
        self._turn = 0
        self._tok_turn = 0

    def _host(self, bufs: list, turn: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        if bufs[turn] is None or bufs[turn].numel() < n:
            bufs[turn] = torch.empty(max(n, 1024), dtype=dtype, pin_memory=self._pinned)
        return bufs[turn][:n]

    def put(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """int arrays -> int64 device tensors (views of one copy)."""
        sizes = [a.size for a in arrays]
        host = self._host(self._bufs, self._turn, sum(sizes), torch.int64)
        self._turn ^= 1
        np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays], out=host.numpy())
        dev = host.to(self.device, non_blocking=True) if self._pinned else host.clone()
        return list(dev.split(sizes))

    def next_tokens(self, n: int) -> torch.Tensor:
        buf = self._host(self._tok_bufs, self._tok_turn, n, torch.int64)
        self._tok_turn ^= 1
        return buf
