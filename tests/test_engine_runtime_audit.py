"""The engine backend's runtime contract under careless or hostile use (CPU, tiny fixtures).

Every request submitted gets exactly one answer (`complete` or `fail`), whatever happens: a request the
engine could never run fails alone and at once (the others still complete), a submit after stop fails at
once, a stop with requests outstanding fails them (a later start begins empty), an id still in flight
is refused, a one-token request reports its first token and its completion once each, a preempted
sequence reports its first token once and generates what transformers' greedy decode does, and a burst
of far more requests than `max_num_seqs` is answered in full with the same tokens.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch

from loadgen_fixtures import direct_generate
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.backends.engine import EngineBackend
from mlperf_llama2.config import EngineConfig
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.postprocess import cut_after_first_eos

EOS = 2
SMALL = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_kv_blocks=128)


class Sink:
    """Records every callback; `wait(n)` until n requests have their one answer."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []
        self._cond = threading.Condition()

    def first_token(self, request_id, token):
        with self._cond:
            self.events.append(("first", request_id, token))

    def complete(self, request_id, tokens):
        with self._cond:
            self.events.append(("complete", request_id, list(tokens)))
            self._cond.notify_all()

    def fail(self, request_id, error):
        with self._cond:
            self.events.append(("fail", request_id, error))
            self._cond.notify_all()

    def answers(self) -> list[tuple[str, int, object]]:
        with self._cond:
            return [e for e in self.events if e[0] != "first"]

    def wait(self, n: int, timeout: float = 120) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: sum(e[0] != "first" for e in self.events) >= n, timeout)


def backend_for(model_dir, config=SMALL) -> EngineBackend:
    return EngineBackend.from_pretrained(str(model_dir), config)


def test_a_request_that_can_never_run_fails_alone_and_the_others_complete(tiny_model_dir):
    # before: an empty prompt raised out of submit (LoadGen's issue thread) and left the requests after it
    # unanswered; a prompt too long for the context or the KV cache, or with an id outside the vocabulary, stopped
    # the loop and failed every request
    backend = backend_for(tiny_model_dir)
    sink = Sink()
    backend.start(sink)
    good = [GenerationRequest(10 + i, i, [1, 40 + i, 50], 4) for i in range(3)]
    bad = [GenerationRequest(20, 7, [], 4),  # empty prompt
           GenerationRequest(21, 8, [1] * 2040, 40),  # prompt + max_new_tokens beyond the context (2,048)
           GenerationRequest(22, 9, [1] * 600, 40),  # beyond the whole KV cache (128 blocks of 4)
           GenerationRequest(23, 10, [1, 100000, 5], 4),  # a token id outside the vocabulary
           GenerationRequest(24, 11, [1, -1, 5], 4)]
    backend.submit([good[0], bad[0], good[1], bad[1], bad[2], bad[3], bad[4], good[2]])  # must not raise
    assert sink.wait(8)
    backend.stop()
    answers = sink.answers()
    assert Counter(e[1] for e in answers) == {r.request_id: 1 for r in good + bad}
    failed = {e[1]: str(e[2]) for e in answers if e[0] == "fail"}
    assert sorted(failed) == [20, 21, 22, 23, 24]
    assert "empty prompt" in failed[20] and "2080 > 2048" in failed[21] and "the cache has 512" in failed[22]
    assert "outside the model's vocabulary" in failed[23] and "outside the model's vocabulary" in failed[24]
    assert all(e[0] == "complete" and len(e[2]) == 4 for e in answers if e[1] < 20)


def test_submit_after_stop_or_before_start_fails_at_once(tiny_model_dir):
    # before: the request was queued for a loop that no longer ran, and never answered (LoadGen waits forever)
    backend = backend_for(tiny_model_dir)
    sink = Sink()
    backend.start(sink)
    backend.stop()
    backend.submit([GenerationRequest(1, 0, [1, 5, 6], 4)])
    assert sink.wait(1, timeout=5)
    assert [(e[0], e[1]) for e in sink.events] == [("fail", 1)]
    assert "not running" in str(sink.events[0][2])


def test_stop_with_requests_outstanding_fails_each_once_and_a_restart_begins_empty(tiny_model_dir):
    # before: stop abandoned them silently (never answered), and a restarted loop finished them later anyway
    backend = backend_for(tiny_model_dir, EngineConfig(max_num_seqs=1, max_num_batched_tokens=64, block_size=4,
                                                       num_kv_blocks=128))
    sink = Sink()
    started = threading.Event()
    backend.engine.before_step = lambda batch: started.set()
    backend.start(sink)
    backend.submit([GenerationRequest(i, i, [1, 30 + i, 31], 200) for i in range(4)])
    assert started.wait(60)
    backend.stop()  # long before 4 x 200 tokens are generated one sequence at a time
    answers = sink.answers()
    assert Counter(e[1] for e in answers) == {i: 1 for i in range(4)}
    assert not backend.engine.has_work() and backend.engine.scheduler.block_manager.num_free_blocks == 128
    backend.engine.before_step = None
    backend.start(sink)  # the same sink: nothing more arrives for the stopped requests
    backend.submit([GenerationRequest(9, 0, [1, 5, 6], 3)])
    assert sink.wait(5)
    backend.stop()
    assert Counter(e[1] for e in sink.answers()) == {0: 1, 1: 1, 2: 1, 3: 1, 9: 1}


def test_an_id_still_in_flight_is_refused_and_each_request_is_answered_once(tiny_model_dir):
    # before: both ran, and the id got two first tokens and two completions
    backend = backend_for(tiny_model_dir)
    sink = Sink()
    backend.start(sink)
    backend.submit([GenerationRequest(1, 0, [1, 5, 6], 4), GenerationRequest(1, 1, [1, 9, 9], 4)])
    assert sink.wait(2)
    backend.stop()
    kinds = Counter(e[0] for e in sink.events)
    assert kinds == {"first": 1, "complete": 1, "fail": 1}
    assert "already in flight" in str(next(e[2] for e in sink.events if e[0] == "fail"))


def test_one_new_token_reports_the_first_token_and_the_completion_once_each(tiny_model_dir):
    backend = backend_for(tiny_model_dir)
    sink = Sink()
    backend.start(sink)
    backend.submit([GenerationRequest(5, 0, [1, 5, 6], 1)])
    assert sink.wait(1)
    backend.stop()
    assert [e[0] for e in sink.events] == ["first", "complete"]
    assert sink.events[1][2] == [sink.events[0][2]]


def test_generate_refuses_params_that_do_not_match_the_prompts_and_a_bad_prompt_before_queuing(tiny_model_dir):
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), SMALL)
    with pytest.raises(ValueError, match="3 prompts but 2 SamplingParams"):  # before: the third prompt was dropped
        engine.generate([[1, 5], [1, 6], [1, 7]], [SamplingParams(2), SamplingParams(2)])
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[1, 5], []], SamplingParams(2))
    assert not engine.has_work()  # before: [1, 5] stayed queued and ran with the next call's requests
    assert engine.generate([[1, 5]], SamplingParams(3)) == LLMEngine.from_pretrained(
        str(tiny_model_dir), SMALL).generate([[1, 5]], SamplingParams(3))


def test_preempted_sequences_report_their_first_token_once_and_generate_the_greedy_tokens(tiny_model_dir):
    g = torch.Generator().manual_seed(5)
    prompts = [[1] + torch.randint(3, 500, (n,), generator=g).tolist() for n in (30, 7, 22, 15, 40, 3)]
    tight = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_kv_blocks=24,
                         overlap_steps=True)
    backend = backend_for(tiny_model_dir, tight)
    sink = Sink()
    backend.start(sink)
    backend.submit([GenerationRequest(i, i, p, 16) for i, p in enumerate(prompts)])
    assert sink.wait(len(prompts))
    backend.stop()
    assert backend.engine.scheduler.num_preemptions > 0
    want = direct_generate(tiny_model_dir, prompts, 16)
    for i in range(len(prompts)):
        mine = [e for e in sink.events if e[1] == i]
        assert [e[0] for e in mine] == ["first", "complete"]
        assert mine[0][2] == mine[1][2][0]
        assert cut_after_first_eos(mine[1][2], EOS) == want[i]


def test_a_burst_of_requests_far_above_max_num_seqs_is_answered_in_full(eos_model_dir):
    distinct = [[1, 10 + i, 20 + 3 * i, 7] for i in range(6)]
    n = 1200
    config = EngineConfig(max_num_seqs=3, max_num_batched_tokens=8, block_size=2, num_kv_blocks=40)
    backend = backend_for(eos_model_dir, config)
    sink = Sink()
    backend.start(sink)
    backend.submit([GenerationRequest(1000 + i, i, distinct[i % 6], 3) for i in range(n)])
    assert sink.wait(n, timeout=240)
    backend.stop()
    answers = sink.answers()
    assert Counter(e[1] for e in answers) == {1000 + i: 1 for i in range(n)}
    assert Counter(e[1] for e in sink.events if e[0] == "first") == {1000 + i: 1 for i in range(n)}
    want = direct_generate(eos_model_dir, distinct, 3)
    for kind, request_id, tokens in answers:
        assert kind == "complete" and cut_after_first_eos(tokens, EOS) == want[(request_id - 1000) % 6]
