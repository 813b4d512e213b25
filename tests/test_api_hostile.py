"""Hostile inputs to the api backend and the SUT-node path: misbehaving servers and bad flags.

Each case is a server (or a flag) that a careless or broken deployment really produces. The rule
checked: a wrong answer never reaches LoadGen as a valid-looking result, nothing hangs, nothing is
lost, and bad input is one UserError line (no traceback). `ScriptedServer` answers each POST with
whatever the test scripts, so every malformed shape can be served on loopback without a model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import pytest

from mlperf_llama2.backends import api_protocol as proto
from mlperf_llama2.backends.api import ApiBackend
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.config import ApiConfig, RunConfig, build_parser
from mlperf_llama2.errors import UserError
from test_api_backend import Sink, run

EOS = 2
VOCAB = 32000
PROMPT = [1, 40, 41, 42]
MODEL = "tiny"


def good_choice(index: int = 0, ids=(5, 6, EOS), finish: Optional[str] = "stop") -> dict:
    return {"index": index, "text": "", "token_ids": list(ids), "finish_reason": finish}


def sse(*objs, done: bool = True) -> list[bytes]:
    lines = [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs]
    return lines + ([b"data: [DONE]\n\n"] if done else [])


class ScriptedServer:
    """Loopback OpenAI-style server: GET /v1/models answers `models`; POST /v1/completions answers
    `reply(body)`, which returns (status, JSON object) or a list of raw SSE byte strings (each written
    and flushed, a float in the list sleeps that long). The start-up probe (max_tokens 1) is answered
    with one good token unless `probe` scripts it."""

    def __init__(self, reply: Callable[[dict], object], *, models=None, probe: Optional[Callable] = None,
                 info=None):
        self.reply = reply
        self.probe = probe
        self.models = {"object": "list", "data": [{"id": MODEL}]} if models is None else models
        self.info = info  # GET /node/info: None -> 404 (a vLLM server), else (status, object)
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "ScriptedServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _json(self, status, obj):
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json(200, fake.models)
                if self.path == "/node/info" and fake.info is not None:
                    return self._json(*fake.info)
                self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("max_tokens") == 1:
                    good = (200, {"choices": [good_choice(ids=[7], finish="length")]})
                    answer = fake.probe(body) if fake.probe else good
                else:
                    fake.bodies.append(body)
                    answer = fake.reply(body)
                if isinstance(answer, tuple):
                    return self._json(*answer)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for item in answer:
                    if isinstance(item, float):
                        time.sleep(item)
                        continue
                    self.wfile.write(item)
                    self.wfile.flush()

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self._httpd = Quiet(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def backend_for(url, *, streaming=False, vocab_size=VOCAB, **cfg) -> ApiBackend:
    config = ApiConfig(api_servers=(url,), api_model_name=MODEL,
                       **{"api_backoff_s": 0.01, "api_concurrency": 1, "api_timeout_s": 5.0, "api_retries": 1, **cfg})
    return ApiBackend(config, eos_token_id=EOS, vocab_size=vocab_size, streaming=streaming)


def one_request(max_new: int = 16, request_id: int = 7) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=request_id, sample_index=0, prompt=PROMPT, max_new_tokens=max_new)]


def run_one(backend: ApiBackend, reqs=None, timeout: float = 30.0) -> Sink:
    return run(backend, reqs or one_request(), timeout)


def failed_with(sink: Sink, request_id: int, pattern: str) -> None:
    kind, value = sink.done[request_id]
    assert kind == "fail", f"a bad answer was accepted as {value}"
    assert pattern in str(value), str(value)


# ----- wrong flags -----

def parse_config(*argv) -> RunConfig:
    return RunConfig.from_cli_args(build_parser().parse_args(["--device", "cpu", *argv]))


@pytest.mark.parametrize("flags", [
    ["--api-server", "http://127.0.0.1:8000"],
    ["--api-model-name", "my-llama"],
    ["--api-text-mode"],
    ["--api-batch-size", "4"],
])
def test_api_flags_without_vllm_are_refused(flags):
    """Without --vllm the local model would run and the server flag would be ignored: a valid-looking run of
    the wrong system."""
    with pytest.raises(UserError, match=f"{flags[0]}.*--vllm"):
        parse_config(*flags)
    parse_config("--vllm", *flags)  # the same flags with --vllm are fine


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:port", "http://[::1"])
def test_bad_api_server_url_is_one_user_error(url):
    with pytest.raises(UserError, match="--api-server"):
        ApiConfig(api_servers=(url,))


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_bad_sut_node_url_is_one_user_error(url):
    from mlperf_llama2.backends.nodes import NodeAddress

    with pytest.raises(UserError, match="--sut-nodes"):
        NodeAddress.parse(url)
    with pytest.raises(UserError, match="--sut-nodes"):  # at parse time, before the dataset or any model
        parse_config("--sut-nodes", url)


@pytest.mark.parametrize("kw, flag", [
    ({"api_timeout_s": float("inf")}, "--api-timeout"),  # every socket timeout would raise OverflowError
    ({"api_backoff_s": float("nan")}, "--api-backoff"),  # silently no backoff at all
    ({"api_backoff_s": float("inf")}, "--api-backoff"),
])
def test_non_finite_api_seconds_are_one_user_error(kw, flag):
    with pytest.raises(UserError, match=flag):
        ApiConfig(api_servers=("http://127.0.0.1:8000",), **kw)


@pytest.mark.parametrize("flags", [["--node-timeout", "inf"], ["--node-wait", "nan"], ["--node-timeout", "nan"]])
def test_non_finite_node_seconds_are_one_user_error(flags):
    with pytest.raises(UserError, match=flags[0]):
        parse_config("--sut-nodes", "http://127.0.0.1:8001", *flags)


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_bad_sut_node_request_timeout_is_one_user_error_before_any_model(value):
    from mlperf_llama2 import sut_node

    with pytest.raises(UserError, match="--request-timeout"):
        sut_node.main(["--request-timeout", value, "--device", "cpu", "--model-path", "/nonexistent"])


def test_models_listing_without_a_list_is_one_user_error():
    with ScriptedServer(lambda b: (200, {}), models={"object": "list", "data": None}) as server:
        with pytest.raises(UserError, match="is not served by"):
            backend_for(server.url).check_servers()


@pytest.mark.parametrize("probe", [
    {"choices": [{"index": 0, "token_ids": ["abc"], "finish_reason": "length"}]},
    {"choices": [{"index": 0, "token_ids": [None], "finish_reason": "length"}]},
    {"choices": ["not an object"]},
    {"choices": [{"index": 0, "token_ids": [VOCAB + 5], "finish_reason": "length"}]},
])
def test_start_up_probe_with_unusable_ids_is_one_user_error(probe):
    with ScriptedServer(lambda b: (200, {}), probe=lambda b: (200, probe)) as server:
        with pytest.raises(UserError, match="cannot serve token-id mode"):
            backend_for(server.url).check_servers()


# ----- answers that must not reach LoadGen as valid -----

@pytest.mark.parametrize("ids, pattern", [
    ([5, VOCAB + 3, EOS], "vocabulary"),   # another tokenizer's ids (a different model behind the URL)
    ([5, -1, EOS], "vocabulary"),
    ([5, 1.5, EOS], "token id"),
    ([5, True, EOS], "token id"),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_ids_that_are_not_tokens_of_the_model_fail_the_sample(ids, pattern, streaming):
    def reply(body):
        if body.get("stream"):
            return sse({"choices": [good_choice(ids=ids[:1], finish=None)]},
                       {"choices": [good_choice(ids=ids[1:], finish="stop")]})
        return 200, {"choices": [good_choice(ids=ids)]}

    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, streaming=streaming))
    failed_with(sink, 7, pattern)


@pytest.mark.parametrize("streaming", [False, True])
def test_server_ignoring_max_tokens_fails_the_sample(streaming):
    """--max-new-tokens 4 (or the closed-division 1024) must bound the response; a server that ignores it
    would inflate tokens/s and the TPOT count."""
    long = list(range(10, 20))

    def reply(body):
        if body.get("stream"):
            return sse(*[{"choices": [good_choice(ids=[t], finish=None)]} for t in long[:-1]],
                       {"choices": [good_choice(ids=long[-1:], finish="length")]})
        return 200, {"choices": [good_choice(ids=long, finish="length")]}

    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, streaming=streaming), one_request(max_new=4))
    failed_with(sink, 7, "max_tokens")


@pytest.mark.parametrize("ids, finish, pattern", [
    ([5, 6], "abort", "finish_reason"),      # vLLM's aborted request: a partial output
    ([5, 6], None, "finish_reason"),
    ([5, 6, 7], "length", "max_tokens 16"),  # cut short by the server (its context limit), not by max_tokens
])
@pytest.mark.parametrize("streaming", [False, True])
def test_partial_outputs_fail_the_sample(ids, finish, pattern, streaming):
    def reply(body):
        if body.get("stream"):
            return sse({"choices": [good_choice(ids=ids[:1], finish=None)]},
                       {"choices": [good_choice(ids=ids[1:], finish=finish)]})
        return 200, {"choices": [good_choice(ids=ids, finish=finish)]}

    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, streaming=streaming, api_retries=0), one_request(max_new=16))
    failed_with(sink, 7, pattern)


def test_stream_with_a_second_choice_is_not_merged_into_the_first():
    """A server that answers n=2 (or another request's choice) interleaved in one stream."""
    def reply(body):
        return sse({"choices": [good_choice(0, ids=[5], finish=None)]},
                   {"choices": [good_choice(1, ids=[9], finish=None)]},
                   {"choices": [good_choice(0, ids=[6], finish="length")]},
                   {"choices": [good_choice(1, ids=[8], finish="length")]})

    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, streaming=True))
    failed_with(sink, 7, "choice")


@pytest.mark.parametrize("streaming", [False, True])
def test_answer_for_another_prompt_fails_the_sample(streaming):
    """vLLM echoes prompt_token_ids with return_token_ids: a choice for a prompt we did not send is caught."""
    other = [1, 99, 98]

    def reply(body):
        if body.get("stream"):
            first = good_choice(ids=[5], finish=None)
            first["prompt_token_ids"] = other
            return sse({"choices": [first]}, {"choices": [good_choice(ids=[6], finish="stop")]})
        choice = good_choice()
        choice["prompt_token_ids"] = other
        return 200, {"choices": [choice]}

    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, streaming=streaming))
    failed_with(sink, 7, "prompt")


def test_matching_prompt_echo_is_accepted():
    def reply(body):
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            c = good_choice(i, ids=[5, 6 + i, EOS])
            c["prompt_token_ids"] = prompt
            choices.append(c)
        return 200, {"choices": choices}

    reqs = [GenerationRequest(10 + i, i, [1, 50 + i], 16) for i in range(3)]
    with ScriptedServer(reply) as server:
        sink = run_one(backend_for(server.url, api_batch_size=3), reqs)
    assert [sink.done[10 + i] for i in range(3)] == [("complete", [5, 6 + i, EOS]) for i in range(3)]


# ----- transient failures and silence -----

def test_429_too_many_requests_is_retried():
    answers = [(429, {"error": "rate limited"}), (200, {"choices": [good_choice()]})]
    with ScriptedServer(lambda body: answers.pop(0)) as server:
        sink = run_one(backend_for(server.url, api_retries=2))
    assert sink.done[7] == ("complete", [5, 6, EOS])
    assert len(server.bodies) == 2


def test_stream_that_only_sends_keep_alives_times_out_instead_of_hanging():
    """SSE comments every 0.1 s and never a token: each read returns, so a per-read timeout never fires."""
    with ScriptedServer(lambda body: [b": ping\n\n", 0.1] * 400) as server:
        start = time.monotonic()
        sink = run_one(backend_for(server.url, streaming=True, api_timeout_s=0.5, api_retries=0), timeout=20)
    assert time.monotonic() - start < 10
    failed_with(sink, 7, "timed out")


def test_stream_of_empty_data_chunks_times_out_instead_of_hanging():
    """data: lines that carry no token (an empty choice every 0.1 s) reset no clock but the output's."""
    empty = {"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": None}]}
    with ScriptedServer(lambda body: [*sse(empty, done=False), 0.1] * 400) as server:
        start = time.monotonic()
        sink = run_one(backend_for(server.url, streaming=True, api_timeout_s=0.5, api_retries=0), timeout=20)
    assert time.monotonic() - start < 10
    failed_with(sink, 7, "no output")


def test_stream_whose_server_keeps_it_open_after_the_finish_reason_is_kept():
    """The whole answer arrived (finish_reason set); a server that then neither sends [DONE] nor closes must not
    turn it into a timeout and a regeneration."""
    last = {"choices": [good_choice(ids=[6, EOS], finish="stop")]}
    first = {"choices": [good_choice(ids=[5], finish=None)]}
    with ScriptedServer(lambda body: [*sse(first, last, done=False), 30.0]) as server:
        start = time.monotonic()
        sink = run_one(backend_for(server.url, streaming=True, api_timeout_s=5.0, api_retries=0), timeout=20)
    assert time.monotonic() - start < 4
    assert sink.done[7] == ("complete", [5, 6, EOS])
    assert len(server.bodies) == 1


# ----- SUT-node protocol -----

def test_sut_nodes_url_of_a_plain_vllm_server_is_one_user_error():
    """/node/info is 404 on a vLLM server (or any other service): one line, no traceback."""
    from mlperf_llama2.backends.nodes import NodeBackend

    with ScriptedServer(lambda b: (200, {})) as server:
        with pytest.raises(UserError, match="SUT node"):
            NodeBackend([server.url], stream=False, wait_s=0.3)


@pytest.mark.parametrize("info", [[1, 2], {"name": "x"}, {"eos_token_id": "two"}])
def test_sut_node_info_without_an_eos_id_is_one_user_error(info):
    from mlperf_llama2.backends.nodes import NodeBackend

    with ScriptedServer(lambda b: (200, {}), info=(200, info)) as server:
        with pytest.raises(UserError, match="SUT node"):
            NodeBackend([server.url], stream=False, wait_s=0.3)


def test_sut_nodes_with_different_vocabularies_are_refused():
    from mlperf_llama2.backends.nodes import NodeBackend

    base = {"name": "n", "backend": "engine", "eos_token_id": EOS, "streams_first_token": True}
    with ScriptedServer(lambda b: (200, {}), info=(200, {**base, "vocab_size": 32000})) as a, \
            ScriptedServer(lambda b: (200, {}), info=(200, {**base, "vocab_size": 32128})) as b:
        with pytest.raises(UserError, match="vocabulary"):
            NodeBackend([a.url, b.url], stream=False, wait_s=0.3)


class _EchoBackend:
    """A minimal backend for a SutNode: completes every request with [5, 6, EOS] at once."""

    name = "echo"
    streams_first_token = False
    eos_token_id = EOS
    vocab_size = VOCAB

    def start(self, sink):
        self._sink = sink

    def submit(self, requests):
        for r in requests:
            self._sink.complete(r.request_id, [5, 6, EOS])

    def stop(self):
        pass


@pytest.fixture
def echo_node():
    from mlperf_llama2.sut_node import SutNode

    node = SutNode(_EchoBackend(), "echo-node", "127.0.0.1", 0, request_timeout_s=5)
    thread = threading.Thread(target=node.serve_forever, daemon=True)
    thread.start()
    yield node
    node.shutdown()
    thread.join(timeout=5)


def raw_post(node, payload: bytes, headers: dict) -> tuple[int, dict]:
    host, port = node.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"POST /v1/completions HTTP/1.0\r\n{head}\r\n".encode() + payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data, "the node closed the connection without an answer"
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_sut_node_bad_content_length_is_400(echo_node, length):
    status, body = raw_post(echo_node, b'{"prompt": [1, 2], "max_tokens": 4}', {"Content-Length": length})
    assert status == 400 and "Content-Length" in body["error"]["message"]


@pytest.mark.parametrize("body, message", [
    ({"prompt": [True, False], "max_tokens": 4}, "token ids"),
    ({"prompt": [1, 2], "max_tokens": True}, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": 4, "stream": "no"}, "stream"),
])
def test_sut_node_refuses_non_integer_fields(echo_node, body, message):
    data = json.dumps(body).encode()
    status, answer = raw_post(echo_node, data, {"Content-Length": str(len(data))})
    assert status == 400 and message in answer["error"]["message"]


def test_sut_node_answers_a_good_request(echo_node):
    data = json.dumps({"prompt": [1, 2], "max_tokens": 4}).encode()
    status, answer = raw_post(echo_node, data, {"Content-Length": str(len(data))})
    assert status == 200 and answer["choices"][0]["token_ids"] == [5, 6, EOS]


def test_protocol_rejects_non_integer_ids_as_protocol_errors():
    for bad in (["7"], [None], [1.0], [False]):
        with pytest.raises(proto.ProtocolError):
            proto.choice_token_ids({"token_ids": bad})
    with pytest.raises(proto.ProtocolError):
        proto.parse_completion(json.dumps({"choices": [[1]]}), 1, token_ids=True)
