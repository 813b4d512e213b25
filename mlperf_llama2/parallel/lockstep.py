"""Tensor-parallel ranks in lockstep: rank 0 schedules, every rank runs the same step on its shard.

Rank 0 owns the engine (scheduler, block manager, sequences). Before running a step it broadcasts
the step's description over a CPU (gloo) control group: per scheduled item, the number of tokens,
how many are already cached, those new token ids, the block table and the EOS-suppression flag.
Each worker rebuilds the batch from it (`StepSequence` has exactly what the ModelRunner reads) and
calls the very same `ModelRunner.run`, so all ranks issue the same kernels and all-reduces in the
same order. Only rank 0's sampled tokens are used (the logits are identical on every rank: the
lm_head is replicated and its input comes out of an all-reduce). A "stop" message ends the workers.
`StepSequence` must offer every Sequence member ModelRunner reads; tests/test_parallel_tensor_parallel.py
runs the real runner through it, so a new one shows up there first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch.distributed as dist

from mlperf_llama2.engine.scheduler import ScheduledBatch

log = logging.getLogger(__name__)

STEP, STOP = "step", "stop"


@dataclass
class StepSequence:
    """What a worker's ModelRunner reads of one scheduled sequence (no prompt, no output history)."""

    num_computed_tokens: int
    new_tokens: list[int]  # the ids at positions [num_computed_tokens, num_computed_tokens + n)
    block_table: list[int]
    suppress_eos: bool

    def tokens(self, start: int, stop: int) -> list[int]:
        base = self.num_computed_tokens
        return self.new_tokens[start - base:stop - base]

    def token_at(self, index: int) -> int:
        return self.new_tokens[index - self.num_computed_tokens]

    @property
    def num_known_tokens(self) -> int:
        """Every id a worker is sent is on the host (TP steps are not overlapped)."""
        return self.num_computed_tokens + len(self.new_tokens)


def encode_batch(batch: ScheduledBatch) -> list[tuple]:
    """The step as plain data: [(n, num_computed, new token ids, block table, suppress_eos)] in batch order."""
    out = []
    for seq, n in batch.items:
        start = seq.num_computed_tokens
        out.append((n, start, list(seq.tokens(start, start + n)), list(seq.block_table), bool(seq.suppress_eos)))
    return out


def decode_batch(items: list[tuple]) -> ScheduledBatch:
    return ScheduledBatch(items=[(StepSequence(start, tokens, table, suppress), n)
                                 for n, start, tokens, table, suppress in items])


def _broadcast(message: Any, group) -> Any:
    box = [message]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


class DriverRunner:
    """Rank 0's runner: tells the workers each step, then runs it on its own shard.

    Quacks like ModelRunner for the engine (`run`, `num_blocks`, `model`, ...): everything but `run`
    and `num_blocks` is the local runner's. `num_blocks` is the smallest KV-cache size of all ranks.
    `step_started` is when the running step began (None between steps: a watchdog reads it); a step
    that fails is re-raised with `diagnose()`'s account of the workers (which rank died or hung) first.
    """

    overlap_capable = False  # every rank must see each step's tokens before the next is broadcast

    def __init__(self, local, ctrl_group, num_blocks: int,
                 diagnose: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.local = local
        self.ctrl_group = ctrl_group
        self.num_blocks = num_blocks
        self.diagnose = diagnose
        self.step_started: Optional[float] = None
        self._stopped = False

    def __getattr__(self, name: str):
        return getattr(self.__dict__["local"], name)

    def run(self, batch: ScheduledBatch) -> list[int]:
        self.step_started = time.monotonic()
        try:
            _broadcast((STEP, encode_batch(batch)), self.ctrl_group)
            return self.local.run(batch)
        except Exception as exc:
            why = self.diagnose() if self.diagnose is not None else None
            if why is None:
                raise
            detail = " ".join(str(exc).split())[:200]
            raise RuntimeError(f"{why} (rank 0 saw: {type(exc).__name__}: {detail})") from exc
        finally:
            self.step_started = None

    def stop_workers(self) -> None:
        if not self._stopped:
            self._stopped = True
            _broadcast((STOP, None), self.ctrl_group)


def worker_loop(runner, ctrl_group) -> int:
    """Run rank 0's steps on this rank's shard until told to stop; returns the number of steps run."""
    steps = 0
    while True:
        kind, payload = _broadcast(None, ctrl_group)
        if kind == STOP:
            log.info("worker: stop after %d steps", steps)
            return steps
        runner.run(decode_batch(payload))
        steps += 1
