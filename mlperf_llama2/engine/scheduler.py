"""Which sequences run in the next engine step, and how many of their tokens (no torch).

Each step has a token budget (`max_num_batched_tokens`) shared by decodes (1 token each) and
prefill chunks, so prefill is chunked and mixed with decode. Running sequences go first, oldest
first; when their next tokens find no free KV block, the newest running sequence is preempted:
its blocks are freed and it goes back to the front of the queue to be recomputed later. Waiting
sequences are admitted in arrival order while the budget, `max_num_seqs` and free blocks allow
(admission needs blocks for the whole pending prompt, so an admitted prompt is not starved, plus a
reserve of `growth_reserve` blocks per running sequence, so the running ones have room to grow).
A running sequence whose last token is in flight (`is_draining`) is not scheduled again.
With `prefill_align` N, a step of more than N tokens that holds a prompt chunk is trimmed to a multiple of N by
shortening its last prompt chunk (the rest waits for the next step): the 8-bit GEMMs compute whole 128-row tiles,
so a step of 1,476 tokens costs what 1,536 do.

The scheduler also owns every change to a sequence after a step: `on_launched(batch)` once the
step's tokens are in the cache (a sequence whose tokens are all computed now has a sampled token
in flight), `on_sampled(batch, tokens)` once those tokens are on the host (append, stop at EOS or
max_new_tokens, free the blocks). The engine only calls the three in order.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence as Seq

from mlperf_llama2.engine.block_manager import BlockManager, blocks_needed
from mlperf_llama2.engine.sequence import Sequence, Status

log = logging.getLogger(__name__)

# Admission keeps this many free KV blocks per running sequence (rounded up) beyond the new prompt's, so running
# sequences can grow before a newcomer takes their room. Without it, a KV-bound run admits prompts into the last
# free blocks and preempts (recomputes) the newest sequences as the others grow. tools/sched_sim.py replays the
# H100 FP8 70B run (1,762 blocks, 1,024 PERF.md samples) through this scheduler: 561 preemptions (measured: 567)
# and 25% of the computed tokens recomputed; with 0.5, 191 and 10% (1.0: 69 and 3.5%; 2.0: 6, but a smaller
# batch), +1.7% modelled tokens/s; the H200 FP8 run at 1,024 sequences: 76 -> 7 preemptions, +1.5%. A run whose
# KV cache is not the limit is unchanged (docs/engine.md "Admission reserve").
GROWTH_RESERVE = 0.5


@dataclass(frozen=True)
class StepEvent:
    seq: Sequence
    first_token: Optional[int]  # set when this step produced the sequence's first token
    finished: bool


@dataclass
class ScheduledBatch:
    """One step's work: (sequence, number of its pending tokens to compute), decodes first."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)  # per item, set by on_launched: it sampled a token

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
                 max_model_len: int, eos_token_id: int, growth_reserve: float = GROWTH_RESERVE,
                 prefill_align: int = 0) -> None:
        self.block_manager = block_manager
        self.eos_token_id = eos_token_id
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.growth_reserve = growth_reserve
        self.prefill_align = prefill_align
        self.num_aligned = 0  # steps trimmed by prefill_align

    def check(self, seq: Sequence) -> None:
        """Raise ValueError if `seq` could never run: longer than the model's context or than the whole KV cache.
        Reads only limits fixed at construction, so any thread may call it (the engine does, before queuing)."""
        total = len(seq.prompt) + seq.params.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"request {seq.request_id}: prompt + max_new_tokens = {total} > {self.max_model_len}")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if blocks_needed(total, self.block_manager.block_size) > self.block_manager.num_blocks:
            raise ValueError(f"request {seq.request_id}: needs {total} KV slots, the cache has {capacity}")

    def add(self, seq: Sequence) -> None:
        self.check(seq)
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
            if not self._can_admit(seq):
                break
            n = min(seq.num_pending_tokens, budget)
            self.waiting.popleft()
            self.block_manager.allocate(seq, n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.items.append((seq, n))
            budget -= n
        if self.prefill_align:
            self._align(batch)
        batch.items.sort(key=lambda item: item[1] != 1)  # stable: decodes first, then prefill chunks
        return batch

    def _align(self, batch: ScheduledBatch) -> None:
        """Shorten the last prompt chunk that can give up the step's excess over a multiple of prefill_align (it
        keeps >= 1 token; its blocks stay allocated for the next step). Steps of at most prefill_align tokens and
        steps without such a chunk are left as they are."""
        total = batch.num_tokens
        excess = total % self.prefill_align
        if total <= self.prefill_align or not excess:
            return
        for i in range(len(batch.items) - 1, -1, -1):
            seq, n = batch.items[i]
            if n > excess:  # a prompt chunk (decodes have n == 1 <= excess)
                batch.items[i] = (seq, n - excess)
                self.num_aligned += 1
                return

    def _can_admit(self, seq: Sequence) -> bool:
        """Blocks for the whole pending prompt, and `growth_reserve` blocks per running sequence left free after it."""
        need = self.block_manager.extra_blocks_for(seq, seq.num_pending_tokens)
        reserve = math.ceil(self.growth_reserve * len(self.running))
        return need + reserve <= self.block_manager.num_free_blocks

    def on_launched(self, batch: ScheduledBatch) -> None:
        """The step is queued: its tokens count as cached; an item that completed its sequence's tokens
        sampled one more, now in flight at its row (a partial prefill chunk samples nothing)."""
        batch.sampled = []
        for row, (seq, n) in enumerate(batch.items):
            seq.num_computed_tokens += n
            done = seq.num_computed_tokens >= seq.num_tokens
            if done:
                seq.num_inflight += 1
                seq.inflight_row = row
            batch.sampled.append(done)

    def on_sampled(self, batch: ScheduledBatch, tokens: Seq[int]) -> list[StepEvent]:
        """The step's tokens (one per item) are on the host: append them, finish the sequences that stop."""
        events = []
        for (seq, _), sampled, token in zip(batch.items, batch.sampled, tokens):
            if not sampled:
                continue
            seq.num_inflight -= 1
            if seq.status == Status.FINISHED:
                continue  # stopped at EOS the step before: this token lies past the end
            first = not seq.output
            finished = seq.append(token, self.eos_token_id)
            if finished:
                self._finish(seq)
            if first or finished:
                events.append(StepEvent(seq, token if first else None, finished))
        return events

    def _finish(self, seq: Sequence) -> None:
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
