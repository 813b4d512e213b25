"""Block manager and scheduler as specifications: plain Python, no torch imported."""

import os
import subprocess
import sys

import pytest

from mlperf_llama2.engine.block_manager import BlockManager, blocks_needed
from mlperf_llama2.engine.scheduler import GROWTH_RESERVE, Scheduler
from mlperf_llama2.engine.sequence import SamplingParams, Sequence, Status

EOS = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_seq(i, prompt_len, max_new=8):
    return Sequence.create(i, list(range(3, 3 + prompt_len)), SamplingParams(max_new))


def make_sched(num_blocks, block_size, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
               growth_reserve=0.0):
    """growth_reserve 0 by default: these tests fill the cache on purpose (the reserve has its own test)."""
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, max_num_batched_tokens, max_model_len, EOS,
                     growth_reserve)


def run_step(sched, token=7):
    """One engine step without overlap: schedule, (the runner samples `token` for every item), read back."""
    batch = sched.schedule()
    sched.on_launched(batch)
    sched.on_sampled(batch, [token] * len(batch.items))
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
    sched = make_sched(64, 4, max_num_seqs=8, max_num_batched_tokens=10, max_model_len=256)
    a, b = make_seq(0, 6), make_seq(1, 20)
    sched.add(a)
    sched.add(b)
    first = run_step(sched)
    assert [(s.request_id, n) for s, n in first.items] == [(0, 6), (1, 4)]
    assert first.sampled == [True, False] and a.output == [7] and b.output == []  # a partial chunk samples nothing
    second = sched.schedule()
    # a decodes (1 token, listed first); b continues its prompt with the rest of the budget
    assert [(s.request_id, n) for s, n in second.items] == [(0, 1), (1, 9)]
    assert second.num_tokens == 10 and not second.is_decode_only


def test_max_num_seqs_limits_admission():
    sched = make_sched(64, 4, max_num_seqs=2, max_num_batched_tokens=100, max_model_len=256)
    for i in range(3):
        sched.add(make_seq(i, 3))
    batch = sched.schedule()
    assert sorted(s.request_id for s, _ in batch.items) == [0, 1] and len(sched.waiting) == 1


def test_sequences_stop_at_eos_or_max_new_tokens_and_free_their_blocks():
    sched = make_sched(16, 4)
    bm = sched.block_manager
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
    sched = make_sched(num_blocks=4, block_size=2, max_model_len=8)
    bm = sched.block_manager
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


def test_admission_leaves_running_sequences_room_to_grow():
    # 10 blocks of 2 tokens; each prompt needs 2 blocks. Without a reserve the fifth prompt takes the last two free
    # blocks; with 0.5 a block per two running sequences stays free, so it waits for room.
    def admitted(reserve):
        sched = make_sched(num_blocks=10, block_size=2, max_num_seqs=8, max_model_len=16, growth_reserve=reserve)
        for i in range(6):
            sched.add(make_seq(i, 4, max_new=8))
        run_step(sched)
        return len(sched.running), sched.block_manager.num_free_blocks

    assert admitted(0.0) == (5, 0)
    assert admitted(0.5) == (4, 2)  # a fifth would leave 0 free, below ceil(0.5 * 4) = 2
    assert admitted(1.0) == (3, 4)  # a fourth would leave 2 free, below 3


def test_the_growth_reserve_never_holds_back_a_sequence_when_none_runs():
    sched = make_sched(num_blocks=4, block_size=2, max_model_len=8, growth_reserve=8.0)
    seq = make_seq(0, 6, max_new=2)  # needs 3 of the 4 blocks
    sched.add(seq)
    run_step(sched)
    assert sched.running == [seq]
    while sched.has_work():
        run_step(sched)
    assert seq.output == [7, 7] and sched.num_preemptions == 0


def test_the_default_reserve_cuts_recompute_in_a_kv_bound_run():
    """The scheduler alone replays a KV-bound run (the H100 FP8 one's cache: 1,762 blocks) on PERF.md lengths."""
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = np.clip(np.rint(rng.lognormal(np.log(395), 0.7, 256)), 16, 1023).astype(int)
    outputs = np.clip(np.rint(rng.lognormal(np.log(224), 0.8, 256)), 2, 1024).astype(int)

    def computed(reserve):
        sched = Scheduler(BlockManager(1762, 16), 512, 8192, 2048, EOS, reserve)
        for i, (p, o) in enumerate(zip(prompts, outputs)):
            sched.add(Sequence.create(i, [5] * p, SamplingParams(int(o), ignore_eos=True)))
        tokens = 0
        while sched.has_work():
            tokens += run_step(sched).num_tokens
        return tokens, sched.num_preemptions

    useful = int(prompts.sum() + outputs.sum())
    plain, reserved = computed(0.0), computed(GROWTH_RESERVE)
    assert plain[0] >= useful and reserved[0] >= useful - len(prompts)  # every token computed at least once
    assert reserved[1] < plain[1] / 2 and reserved[0] - useful < (plain[0] - useful) / 2, (plain, reserved, useful)


def test_requests_that_can_never_fit_are_refused():
    with pytest.raises(ValueError, match="KV slots"):
        make_sched(2, 4).add(make_seq(0, 6, max_new=4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_sched(64, 4, max_model_len=8).add(make_seq(1, 6, max_new=4))


def test_a_launched_token_is_in_flight_until_read_back_and_a_draining_sequence_is_not_scheduled():
    """Overlapped steps: step N+1 is scheduled before step N's tokens are read back."""
    sched = make_sched(num_blocks=16, block_size=4)
    last, other = make_seq(0, 3, max_new=1), make_seq(1, 3, max_new=4)
    sched.add(last)
    sched.add(other)
    first = sched.schedule()
    sched.on_launched(first)
    assert last.num_inflight == 1 and last.output == [] and last.is_draining and not other.is_draining
    assert other.num_pending_tokens == 1 and not other.suppress_eos  # the in-flight token counts as generated
    second = sched.schedule()
    assert second.items == [(other, 1)]  # computed from the device copy of the in-flight token
    sched.on_launched(second)
    assert other.num_inflight == 2 and other.inflight_row == 0
    events = sched.on_sampled(first, [9, 8])
    assert [(e.seq, e.first_token, e.finished) for e in events] == [(last, 9, True), (other, 8, False)]
    assert last.status == Status.FINISHED and last.finish_reason == "length" and sched.running == [other]
    assert sched.on_sampled(second, [5]) == [] and other.output == [8, 5] and other.num_inflight == 0


def test_the_token_of_a_step_launched_after_eos_is_dropped():
    sched = make_sched(num_blocks=16, block_size=4)
    seq = make_seq(0, 3, max_new=8)
    sched.add(seq)
    sched.add(make_seq(1, 3))
    prefill = sched.schedule()
    sched.on_launched(prefill)
    sched.on_sampled(prefill, [4, 4])
    stale_before = sched.schedule()
    sched.on_launched(stale_before)
    stale = sched.schedule()  # launched before the EOS below is read back
    sched.on_launched(stale)
    [event] = [e for e in sched.on_sampled(stale_before, [EOS, 6]) if e.seq is seq]
    assert event.finished and seq.finish_reason == "eos" and seq.status == Status.FINISHED
    assert not [e for e in sched.on_sampled(stale, [3, 6]) if e.seq is seq]
    assert seq.output == [4, EOS] and seq.num_inflight == 0 and seq.block_table == []


def test_a_sequence_preempted_with_its_last_token_in_flight_finishes_from_the_queue():
    sched = make_sched(num_blocks=4, block_size=2, max_model_len=8)
    old, new = make_seq(0, 4, max_new=4), make_seq(1, 4, max_new=1)
    sched.add(old)
    sched.add(new)
    prefill = sched.schedule()
    sched.on_launched(prefill)
    assert new.is_draining and sched.block_manager.num_free_blocks == 0
    decode = sched.schedule()  # old needs a third block: new, the newest, is preempted with its token in flight
    assert decode.items == [(old, 1)] and decode.preempted == [new] and new.status == Status.WAITING
    sched.on_launched(decode)
    events = sched.on_sampled(prefill, [7, 9])
    assert [(e.seq, e.first_token, e.finished) for e in events] == [(old, 7, False), (new, 9, True)]
    assert new.status == Status.FINISHED and not sched.waiting and new.output == [9]
    sched.on_sampled(decode, [8])
    assert old.output == [7, 8] and sched.block_manager.num_free_blocks == 1


def test_prefill_align_trims_the_last_prompt_chunk_to_a_multiple():
    """Three decoding sequences and two new prompts (20 + 30 tokens): 53 tokens -> 48 with align 16, the newest
    prompt keeps 25 and gets its last 5 the next step; decodes are never trimmed; nothing is lost."""
    sched = make_sched(256, 4, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=256)
    sched.prefill_align = 16
    old = [make_seq(i, 4, max_new=20) for i in range(3)]
    for seq in old:
        sched.add(seq)
    first = run_step(sched)
    assert first.num_tokens == 12  # <= 16: untouched
    a, b = make_seq(3, 20), make_seq(4, 30)
    sched.add(a)
    sched.add(b)
    batch = run_step(sched)
    assert batch.num_tokens == 48 and batch.num_tokens % 16 == 0 and sched.num_aligned == 1
    assert dict((s.request_id, n) for s, n in batch.items) == {0: 1, 1: 1, 2: 1, 3: 20, 4: 25}
    assert b.num_computed_tokens == 25 and not b.output  # its prompt is not finished: no token sampled
    nxt = run_step(sched)
    assert dict((s.request_id, n) for s, n in nxt.items)[4] == 5  # the rest, in a step of 5 decodes + 5 <= 16
    assert b.num_computed_tokens == 30 and len(b.output) == 1


def test_prefill_align_leaves_steps_without_a_long_enough_chunk():
    sched = make_sched(256, 4, max_num_seqs=16, max_num_batched_tokens=256, max_model_len=256)
    sched.prefill_align = 8
    for i in range(9):
        sched.add(make_seq(i, 1))  # nine 1-token prompts: 9 tokens, no chunk can give up 1 and keep 1
    batch = run_step(sched)
    assert batch.num_tokens == 9
    sched2 = make_sched(256, 4, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=256)
    sched2.prefill_align = 8
    sched2.add(make_seq(0, 16))
    assert run_step(sched2).num_tokens == 16  # already a multiple


def test_prefill_align_flag_parses_is_off_by_default_and_reaches_nodes():
    import argparse

    from mlperf_llama2.backends.local_nodes import node_argv
    from mlperf_llama2.config import RunConfig
    from mlperf_llama2.engine.config import EngineConfig
    from mlperf_llama2.errors import UserError

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    assert EngineConfig.from_cli_args(parser.parse_args([])).prefill_align == 0
    assert EngineConfig.from_cli_args(parser.parse_args(["--prefill-align", "128"])).prefill_align == 128
    with pytest.raises(UserError, match=r"--prefill-align must be >= 0 \(0: off\), got -8"):
        EngineConfig(prefill_align=-8)
    argv = node_argv(RunConfig(backend="engine", model_path="m", engine=EngineConfig(prefill_align=128)), "cuda:0")
    assert argv[argv.index("--prefill-align") + 1] == "128"
