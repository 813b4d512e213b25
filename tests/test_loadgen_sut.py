"""The SUTs' responder posts what LoadGen must get (SPEC §2 decisions 1-4), checked call by call.

LoadGen's two completion calls are replaced by recorders (QuerySampleResponse stays real), so the
order of FirstTokenComplete / QuerySamplesComplete and the exact payloads can be asserted.
"""

from __future__ import annotations

import ctypes
import threading

import pytest

from mlperf_llama2.backends.base import Backend, GenerationRequest
from mlperf_llama2.data.dataset import Dataset
from mlperf_llama2.loadgen import sut as sut_module
from mlperf_llama2.loadgen.sut import OfflineSUT, Responder, RunObserver, ServerSUT

EOS = 2


@pytest.fixture
def calls(monkeypatch):
    """Record (kind, response id, int32 payload, n_tokens) for every LoadGen completion call."""
    recorded = []

    def recorder(kind):
        def call(responses):
            for r in responses:
                payload = (ctypes.c_int32 * (r.size // 4)).from_address(r.data) if r.size else []
                recorded.append((kind, r.id, list(payload), r.n_tokens))
        return call

    monkeypatch.setattr(sut_module.lg, "FirstTokenComplete", recorder("first"))
    monkeypatch.setattr(sut_module.lg, "QuerySamplesComplete", recorder("complete"))
    return recorded


def _responder(server, **kw):
    r = Responder(EOS, report_first_tokens=server, **kw)
    r.track([GenerationRequest(7, 3, (1, 5), 8), GenerationRequest(8, 4, (1, 6), 8)])
    return r


def test_offline_response_is_int32_cut_after_first_eos(calls):
    r = _responder(server=False, keep_outputs=True)
    r.first_token(7, 11)  # ignored in Offline
    r.complete(7, [11, 12, EOS, EOS, EOS])  # batch padding after the EOS
    assert calls == [("complete", 7, [11, 12, EOS], 3)]
    assert r.outputs == {3: [11, 12, EOS]} and (r.samples_done, r.tokens_done) == (1, 3)


def test_server_first_token_always_precedes_the_response_and_is_its_first_token(calls):
    r = _responder(server=True)
    r.first_token(7, 11)
    r.first_token(7, 11)  # a repeat is not sent twice
    r.complete(7, [11, 12, 13])
    r.complete(8, [21, 22])  # a backend that did not stream: tokens[0] goes first
    assert calls == [("first", 7, [11], 1), ("complete", 7, [11, 12, 13], 3),
                     ("first", 8, [21], 1), ("complete", 8, [21, 22], 2)]


def test_each_sample_is_answered_once(calls):
    r = _responder(server=False)
    r.complete(7, [11, 12])
    r.complete(7, [11, 12])
    r.complete(99, [11, 12])  # never issued
    assert [c[1] for c in calls] == [7]


def test_failure_is_recorded_and_still_answered(calls):
    failed = []

    class Observer(RunObserver):
        def sample_failed(self, request_id, error):
            failed.append((request_id, str(error)))

    failures = (lambda r: r.fail(7, RuntimeError("boom")),
                lambda r: r.complete(7, [21]))  # one token: LoadGen would reject n_tokens <= 1, so it is a failure
    for fail in failures:
        r = _responder(server=True, observers=[Observer()])
        fail(r)
        assert [(f.sample_index, f.error.split(":")[0]) for f in r.failures] == [(3, "RuntimeError")]
        assert r.skipped == 1 and r.in_flight == 0  # the failure stopped the run: sample 4 was answered empty
    assert [c[0] for c in calls] == ["first", "complete", "first", "complete"] * 2
    assert [c[2] for c in calls if c[0] == "complete"] == [[], []] * 2
    assert failed == [(7, "boom"), (7, "backend returned 1 token(s); at least 2 are needed")]


class EchoBackend(Backend):
    """Answers each request on a thread with prompt-derived tokens; records how it was called."""

    name = "echo"

    def __init__(self, stream):
        self.streams_first_token = stream
        self.submits = []
        self.threads = []

    @property
    def eos_token_id(self):
        return EOS

    def start(self, sink):
        self.sink = sink

    def submit(self, requests):
        self.submits.append([r.sample_index for r in requests])
        for r in requests:
            t = threading.Thread(target=self._answer, args=(r,))
            t.start()
            self.threads.append(t)

    def _answer(self, request):
        tokens = [100 + request.sample_index, 200, EOS, EOS]
        if self.streams_first_token:
            self.sink.first_token(request.request_id, tokens[0])
        self.sink.complete(request.request_id, tokens)

    def stop(self):
        for t in self.threads:
            t.join()


class Sample:
    def __init__(self, id, index):
        self.id, self.index = id, index


@pytest.mark.parametrize("sut_cls,server", [(OfflineSUT, False), (ServerSUT, True)])
def test_sut_submits_and_posts_one_response_per_sample(calls, sut_cls, server):
    done = []

    class Observer(RunObserver):
        def sample_done(self, request_id, n_tokens):
            done.append((request_id, n_tokens))

    dataset = Dataset(path="x", prompts=((1, 5), (1, 6), (1, 7)), targets=None)
    backend = EchoBackend(stream=server)
    sut = sut_cls(backend, dataset, max_new_tokens=8, observers=[Observer()])
    sut.start()
    sut.issue_queries([Sample(10, 0), Sample(11, 2)])
    sut.flush_queries()
    sut.stop()
    assert backend.submits == ([[0], [2]] if server else [[0, 2]])
    completes = sorted(c for c in calls if c[0] == "complete")
    assert completes == [("complete", 10, [100, 200, EOS], 3), ("complete", 11, [102, 200, EOS], 3)]
    for rid in (10, 11):
        kinds = [c[0] for c in calls if c[1] == rid]
        assert kinds == (["first", "complete"] if server else ["complete"])
    assert sorted(done) == [(10, 3), (11, 3)]
