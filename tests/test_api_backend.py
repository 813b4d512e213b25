"""The api backend against a vLLM-protocol server on loopback: the fake wraps the tiny model's generate.

Outputs must equal direct greedy `generate`; failures must reach the sink (never hang, never drop).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from api_fake_server import FakeVllmServer, model_generator
from mlperf_llama2.backends.api import ApiBackend
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.config import ApiConfig
from mlperf_llama2.errors import UserError

EOS = 2
PROMPTS = [[1, 40, 41, 42, 29], [1, 7, 8], [1, 100, 200, 300, 301, 302, 5], [1, 260, 261], [1, 3, 4, 5, 6]]
MAX_NEW = 12


class Sink:
    """Records callbacks in order; wait() until every request has completed or failed."""

    def __init__(self):
        self.events: list[tuple] = []
        self.done: dict[int, tuple] = {}
        self._cond = threading.Condition()

    def first_token(self, request_id, token):
        with self._cond:
            self.events.append(("first", request_id, token))

    def complete(self, request_id, tokens):
        with self._cond:
            self.events.append(("complete", request_id, list(tokens)))
            self.done[request_id] = ("complete", list(tokens))
            self._cond.notify_all()

    def fail(self, request_id, error):
        with self._cond:
            self.events.append(("fail", request_id, error))
            self.done[request_id] = ("fail", error)
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.done) >= n, timeout), f"only {len(self.done)}/{n} finished"


@pytest.fixture(scope="module")
def tiny_generate(tiny_model_dir):
    return model_generator(tiny_model_dir)


@pytest.fixture(scope="module")
def expected(tiny_generate):
    """Direct greedy generate, one prompt at a time, cut after EOS (the reference output)."""
    out = []
    for p in PROMPTS:
        ids = tiny_generate(p, MAX_NEW)
        out.append(ids[: ids.index(EOS) + 1] if EOS in ids else ids)
    return out


def make_backend(urls, *, streaming=False, **cfg) -> ApiBackend:
    config = ApiConfig(api_servers=tuple(urls), api_model_name="tiny", api_backoff_s=0.05,
                       **{"api_concurrency": 2, "api_timeout_s": 10.0, **cfg})
    return ApiBackend(config, eos_token_id=EOS, streaming=streaming)


def requests(prompts=PROMPTS, max_new=MAX_NEW):
    return [GenerationRequest(request_id=100 + i, sample_index=i, prompt=p, max_new_tokens=max_new)
            for i, p in enumerate(prompts)]


def run(backend: ApiBackend, reqs, timeout=60.0) -> Sink:
    sink = Sink()
    backend.start(sink)
    try:
        backend.submit(reqs)
        sink.wait(len(reqs), timeout)
    finally:
        backend.stop()
    return sink


def outputs(sink: Sink, reqs) -> list:
    return [sink.done[r.request_id][1] for r in reqs]


@pytest.mark.parametrize("carrier", ["logprobs", "token_ids"])
def test_offline_batched_outputs_equal_direct_generate(tiny_generate, expected, carrier):
    with FakeVllmServer(tiny_generate, carrier=carrier) as server:
        sink = run(make_backend([server.url], api_batch_size=2), requests())
    assert outputs(sink, requests()) == expected
    assert [len(b["prompt"]) for b in server.bodies if isinstance(b["prompt"][0], list)] == [2, 2]
    assert all(b["temperature"] == 0 and b["min_tokens"] == 1 and b["max_tokens"] == MAX_NEW for b in server.bodies)
    assert not any(e[0] == "first" for e in sink.events)


def test_server_streaming_first_token_then_complete(tiny_generate, expected):
    with FakeVllmServer(tiny_generate) as server:
        sink = run(make_backend([server.url], streaming=True), requests())
    assert outputs(sink, requests()) == expected
    assert all(b["stream"] is True for b in server.bodies) and len(server.bodies) == len(PROMPTS)
    for r in requests():
        mine = [e for e in sink.events if e[1] == r.request_id]
        assert [e[0] for e in mine] == ["first", "complete"]  # first token before completion, once
        assert mine[0][2] == mine[1][2][0]  # the final response starts with the streamed token


@pytest.mark.parametrize("streaming", [False, True])
def test_eos_omitted_by_server_is_appended_exactly_once(eos_model_dir, streaming):
    generate = model_generator(eos_model_dir)
    reqs = requests(max_new=20)
    direct = [generate(p, 20) for p in PROMPTS]
    assert sum(EOS in ids for ids in direct) >= 3, "the eos model must stop within 20 tokens on most prompts"
    with FakeVllmServer(generate, include_eos=False) as server:
        sink = run(make_backend([server.url], streaming=streaming), reqs)
    for got, ids in zip(outputs(sink, reqs), direct):
        if EOS in ids:
            assert got == ids[: ids.index(EOS) + 1] and got.count(EOS) == 1
        else:
            assert got == ids  # hit max_tokens ("length"): no EOS invented


def test_wrong_model_name_is_one_user_error(tiny_generate):
    with FakeVllmServer(tiny_generate, model_name="other") as server:
        backend = make_backend([server.url])
        with pytest.raises(UserError, match=r"'tiny' is not served by .*it serves: other"):
            backend.check_servers()


def test_server_without_token_ids_fails_the_start_up_probe(tiny_generate):
    with FakeVllmServer(tiny_generate, carrier="text") as server:
        backend = make_backend([server.url])
        with pytest.raises(UserError, match="cannot serve token-id mode: .*no token ids.*--api-text-mode"):
            backend.check_servers()
    assert len(server.probes) == 1 and server.probes[0]["max_tokens"] == 1 and server.bodies == []


def test_server_down_is_one_user_error():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = make_backend([f"http://127.0.0.1:{port}"])
    with pytest.raises(UserError, match="cannot list models"):
        backend.check_servers()


def test_500_then_success_is_retried(tiny_generate, expected):
    with FakeVllmServer(tiny_generate, faults=[500]) as server:
        sink = run(make_backend([server.url], api_batch_size=8), requests())
    assert outputs(sink, requests()) == expected
    assert len(server.bodies) == 2


def test_timeout_then_success_is_retried(tiny_generate, expected):
    with FakeVllmServer(tiny_generate, faults=[("sleep", 2.0)]) as server:
        sink = run(make_backend([server.url], api_batch_size=8, api_timeout_s=0.5), requests())
    assert outputs(sink, requests()) == expected
    assert len(server.bodies) == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_dropped_connection_then_success_is_retried(tiny_generate, expected, streaming):
    with FakeVllmServer(tiny_generate, faults=["drop"]) as server:
        sink = run(make_backend([server.url], streaming=streaming, api_concurrency=1), requests())
    assert outputs(sink, requests()) == expected


def test_stream_cut_after_the_first_token_is_retried_and_first_token_sent_once(tiny_generate, expected):
    with FakeVllmServer(tiny_generate, faults=["cut"]) as server:
        sink = run(make_backend([server.url], streaming=True, api_concurrency=1), requests())
    assert outputs(sink, requests()) == expected
    assert len(server.bodies) == len(PROMPTS) + 1
    assert [e[0] for e in sink.events if e[1] == requests()[0].request_id] == ["first", "complete"]


@pytest.mark.parametrize("streaming", [False, True])
def test_request_failing_every_retry_fails_cleanly(tiny_generate, streaming):
    reqs = requests()[:2]
    with FakeVllmServer(tiny_generate, faults=[503] * 20) as server:
        start = time.monotonic()
        backend = make_backend([server.url], streaming=streaming, api_retries=2, api_concurrency=1, api_batch_size=1)
        sink = run(backend, reqs, timeout=20)
    assert time.monotonic() - start < 10
    assert all(sink.done[r.request_id][0] == "fail" for r in reqs)
    assert "503" in str(sink.done[reqs[0].request_id][1]) and "3 attempt" in str(sink.done[reqs[0].request_id][1])
    assert len(server.bodies) == 6  # 2 requests x (1 + 2 retries)


def test_client_error_is_not_retried(tiny_generate):
    with FakeVllmServer(tiny_generate, faults=[400]) as server:
        sink = run(make_backend([server.url], api_batch_size=8), requests())
    assert all(v[0] == "fail" for v in sink.done.values()) and len(server.bodies) == 1


def test_submit_never_blocks_and_load_is_spread(tiny_generate, expected):
    with FakeVllmServer(tiny_generate, faults=[("sleep", 0.5)] * 5) as a, \
            FakeVllmServer(tiny_generate, faults=[("sleep", 0.5)] * 5) as b:
        backend = make_backend([a.url, b.url], api_batch_size=1, api_concurrency=1)
        sink = Sink()
        backend.start(sink)
        t0 = time.monotonic()
        backend.submit(requests())
        assert time.monotonic() - t0 < 0.1
        sink.wait(len(PROMPTS))
        backend.stop()
    assert outputs(sink, requests()) == expected
    assert len(a.bodies) >= 2 and len(b.bodies) >= 2 and len(a.bodies) + len(b.bodies) == len(PROMPTS)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="base URL"):
        ApiConfig(api_servers=("localhost:8000",))
    with pytest.raises(UserError, match="--api-concurrency"):
        ApiConfig(api_servers=("http://127.0.0.1:1",), api_concurrency=0)
