"""Which sequences run in the next engine step, and how many of their tokens (no torch).

Each step has a token budget (`max_num_batched_tokens`) shared by decodes (1 token each) and
prefill chunks, so prefill is chunked and mixed with decode. Running sequences go first, oldest
first; when their next tokens find no free KV block, the newest running sequence is preempted:
its blocks are freed and it goes back to the front of the queue to be recomputed later. Waiting
sequences are admitted in arrival order while the budget, `max_num_seqs` and free blocks allow
(admission needs blocks for the whole pending prompt, so an admitted prompt is not starved).
A running sequence whose last token is in flight (`is_draining`) is not scheduled again.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from mlperf_llama2.engine.block_manager import BlockManager, blocks_needed
from mlperf_llama2.engine.sequence import Sequence, Status

log = logging.getLogger(__name__)


@dataclass
class ScheduledBatch:
    """One step's work: (sequence, number of its pending tokens to compute), decodes first."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)

    @property
    def num_decodes(self) -> int:
        return sum(1 for _, n in self.items if n == 1)

    @property
    def is_decode_only(self) -> bool:
        return all(n == 1 for _, n in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        total = len(seq.prompt) + seq.params.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"request {seq.request_id}: prompt + max_new_tokens = {total} > {self.max_model_len}")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if blocks_needed(total, self.block_manager.block_size) > self.block_manager.num_blocks:
            raise ValueError(f"request {seq.request_id}: needs {total} KV slots, the cache has {capacity}")
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.is_draining:
                i += 1
                continue
            n = min(seq.num_pending_tokens, budget)
            while not self.block_manager.can_allocate(seq, n) and self.running[-1] is not seq:
                batch.preempted.append(self._preempt(self.running.pop()))
            if not self.block_manager.can_allocate(seq, n):
                batch.preempted.append(self._preempt(self.running.pop()))
                break
            self.block_manager.allocate(seq, n)
            batch.items.append((seq, n))
            budget -= n
            i += 1
        while self.waiting and not batch.preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq, seq.num_pending_tokens):
                break
            n = min(seq.num_pending_tokens, budget)
            self.waiting.popleft()
            self.block_manager.allocate(seq, n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.items.append((seq, n))
            budget -= n
        batch.items.sort(key=lambda item: item[1] != 1)  # stable: decodes first, then prefill chunks
        return batch

    def finish(self, seq: Sequence) -> None:
        if seq.status == Status.RUNNING:
            self.running.remove(seq)
        else:  # preempted while its last token was in flight
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self.block_manager.free(seq)

    def _preempt(self, seq: Sequence) -> Sequence:
        """Recompute policy: drop the KV cache of `seq` and queue it first to be prefilled again."""
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        log.debug("preempted request %d (%d tokens)", seq.request_id, seq.num_tokens)
        return seq
