"""Block manager and scheduler as specifications: plain Python, no torch imported."""

import os
import subprocess
import sys

import pytest

from mlperf_llama2.engine.block_manager import BlockManager, blocks_needed
from mlperf_llama2.engine.scheduler import Scheduler
from mlperf_llama2.engine.sequence import SamplingParams, Sequence, Status

EOS = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_seq(i, prompt_len, max_new=8):
    return Sequence.create(i, list(range(3, 3 + prompt_len)), SamplingParams(max_new), arrival_order=i)


def run_step(sched, token=7):
    """What the engine does after the runner: count computed tokens, append a token when the prompt is done."""
    batch = sched.schedule()
    for seq, n in batch.items:
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens and seq.append(token, EOS):
            sched.finish(seq)
    return batch


def test_bookkeeping_modules_import_no_torch():
    code = ("import sys, mlperf_llama2.engine.scheduler, mlperf_llama2.engine.block_manager, "
            "mlperf_llama2.engine.sequence; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_blocks_are_taken_as_sequences_grow_and_returned_when_freed():
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = make_seq(0, 5)
    assert blocks_needed(5, 4) == 2 and bm.can_allocate(seq, 5)
    bm.allocate(seq, 5)
    assert len(seq.block_table) == 2 and bm.num_free_blocks == 2
    seq.num_computed_tokens = 5
    bm.allocate(seq, 3)  # positions 5..7 still fit in block 2
    assert len(seq.block_table) == 2
    bm.allocate(seq, 4)  # position 8 needs a third block
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 4


def test_token_budget_chunks_prefill_and_mixes_it_with_decode():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10, max_model_len=256)
    a, b = make_seq(0, 6), make_seq(1, 20)
    sched.add(a)
    sched.add(b)
    first = sched.schedule()
    assert [(s.request_id, n) for s, n in first.items] == [(0, 6), (1, 4)]
    for seq, n in first.items:
        seq.num_computed_tokens += n
    a.append(7, EOS)
    second = sched.schedule()
    # a decodes (1 token, listed first); b continues its prompt with the rest of the budget
    assert [(s.request_id, n) for s, n in second.items] == [(0, 1), (1, 9)]
    assert second.num_tokens == 10 and not second.is_decode_only


def test_max_num_seqs_limits_admission():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100, max_model_len=256)
    for i in range(3):
        sched.add(make_seq(i, 3))
    batch = sched.schedule()
    assert sorted(s.request_id for s, _ in batch.items) == [0, 1] and len(sched.waiting) == 1


def test_sequences_stop_at_eos_or_max_new_tokens_and_free_their_blocks():
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    short = make_seq(0, 3, max_new=2)
    sched.add(short)
    run_step(sched)
    run_step(sched)
    assert short.status is Status.FINISHED and short.finish_reason == "length" and short.output == [7, 7]
    eos = make_seq(1, 3, max_new=8)
    sched.add(eos)
    run_step(sched, token=EOS)
    assert eos.finish_reason == "eos" and bm.num_free_blocks == 16 and not sched.has_work()


def test_ignore_eos_runs_to_the_forced_length():
    seq = Sequence.create(0, [1, 5], SamplingParams(3, ignore_eos=True))
    assert [seq.append(EOS, EOS) for _ in range(3)] == [False, False, True]


def test_min_new_tokens_suppresses_eos_only_before_the_first_token():
    seq = make_seq(0, 3)
    assert seq.suppress_eos
    seq.append(9, EOS)
    assert not seq.suppress_eos


def test_preemption_frees_the_newest_sequence_for_recompute():
    bm = BlockManager(num_blocks=4, block_size=2)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=8)
    old, new = make_seq(0, 3, max_new=4), make_seq(1, 3, max_new=4)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # both prefilled: 2 blocks each, cache full
    assert bm.num_free_blocks == 0
    run_step(sched)  # both at 4 tokens: still fit
    batch = run_step(sched)  # old needs a third block: new is preempted
    assert batch.preempted == [new] and new.num_computed_tokens == 0 and new.block_table == []
    assert sched.waiting[0] is new and new.output == [7, 7]
    while sched.has_work():
        run_step(sched)
    assert old.output == [7] * 4 and new.output == [7] * 4 and sched.num_preemptions >= 1


def test_requests_that_can_never_fit_are_refused():
    sched = Scheduler(BlockManager(2, 4), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    with pytest.raises(ValueError, match="KV slots"):
        sched.add(make_seq(0, 6, max_new=4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        Scheduler(BlockManager(64, 4), 4, 64, max_model_len=8).add(make_seq(1, 6, max_new=4))


def test_a_sequence_whose_last_token_is_in_flight_is_not_scheduled_again():
    sched = Scheduler(BlockManager(num_blocks=16, block_size=4), max_num_seqs=4, max_num_batched_tokens=64,
                      max_model_len=64)
    last, other = make_seq(0, 3, max_new=1), make_seq(1, 3, max_new=4)
    sched.add(last)
    sched.add(other)
    batch = sched.schedule()
    for seq, n in batch.items:  # what the engine does at launch with overlapped steps
        seq.num_computed_tokens += n
        seq.num_inflight = 1
    assert last.is_draining and not other.is_draining
    assert other.num_pending_tokens == 1  # the in-flight token is the one it computes next
    assert sched.schedule().items == [(other, 1)]  # the in-flight token is the one it computes next
    last.num_inflight = 0
    assert last.append(9, EOS) and not other.is_draining
    sched.finish(last)
    assert last.status == Status.FINISHED and sched.running == [other]


def test_finishing_a_preempted_sequence_takes_it_out_of_the_queue():
    """Overlapped steps: a sequence preempted while its last token was in flight finishes from the queue."""
    sched = Scheduler(BlockManager(num_blocks=16, block_size=4), max_num_seqs=4, max_num_batched_tokens=64,
                      max_model_len=64)
    seq = make_seq(0, 5, max_new=1)
    sched.add(seq)
    sched.schedule()
    sched._preempt(sched.running.pop())
    assert seq.status == Status.WAITING and list(sched.waiting) == [seq]
    sched.finish(seq)
    assert seq.status == Status.FINISHED and not sched.waiting and sched.block_manager.num_free_blocks == 16
