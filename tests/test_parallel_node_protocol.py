"""A SUT node in-process on loopback: the wire format, streaming order, errors, and the node client."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
import torch

from parallel_fixtures import SMALL_ENGINE, RecordingSink
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.backends.engine import EngineBackend
from mlperf_llama2.sut_node import SutNode
from mlperf_llama2.backends.nodes import NodeBackend
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams

NEW = 10
PROMPTS = [[1, 50, 60, 70], [1] + list(range(200, 230)), [1, 9]]


@pytest.fixture(scope="module")
def node(tiny_model_dir):
    backend = EngineBackend.from_pretrained(str(tiny_model_dir), SMALL_ENGINE, "cpu", "float32")
    node = SutNode(backend, "tiny-node", "127.0.0.1", 0, request_timeout_s=60)
    thread = threading.Thread(target=node.serve_forever, daemon=True)
    thread.start()
    yield node
    node.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    """A separate engine on the calling thread (the node's engine is busy with its own loop)."""
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), SMALL_ENGINE, "cpu", torch.float32)
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW))


def post(node, body) -> tuple[int, bytes]:
    host, port = node.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_completion_returns_token_ids_and_finish_reason(node, expected):
    status, data = post(node, {"model": "tiny-node", "prompt": PROMPTS[0], "max_tokens": NEW, "temperature": 0})
    assert status == 200
    choice = json.loads(data)["choices"][0]
    assert choice["token_ids"] == expected[0]
    assert choice["finish_reason"] == ("stop" if expected[0][-1] == 2 else "length")


def test_a_batch_of_prompts_gets_one_choice_each_in_order(node, expected):
    status, data = post(node, {"prompt": PROMPTS, "max_tokens": NEW, "temperature": 0})
    assert status == 200
    choices = json.loads(data)["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["token_ids"] for c in choices] == expected


@pytest.mark.parametrize("body, message", [
    ({"prompt": "some text", "max_tokens": 4}, "list of token ids"),
    ({"prompt": [[1, 2], [1, 3]], "max_tokens": 4, "stream": True}, "one prompt"),
    ({"prompt": [1, 2], "max_tokens": 4, "temperature": 0.7}, "temperature must be 0"),
    ({"prompt": [1, 99999], "max_tokens": 4}, "outside the model's vocabulary"),
    ({"prompt": [1, 2], "max_tokens": 5000}, "max_tokens must be"),
])
def test_bad_requests_are_400_with_a_reason(node, body, message):
    status, data = post(node, body)
    assert status == 400
    assert message in json.loads(data)["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_node_client_answers_each_request_once(node, expected, stream):
    client = NodeBackend([node.url], stream=stream, concurrency=4, timeout_s=60, wait_s=5)
    assert client.eos_token_id == 2 and client.vocab_size == node.backend.vocab_size
    assert "tiny-node (engine)" in client.sut_name()
    sink = RecordingSink()
    client.start(sink)
    try:
        client.submit([GenerationRequest(10 + i, i, p, NEW) for i, p in enumerate(PROMPTS)])
        sink.wait(len(PROMPTS), timeout=60)
    finally:
        client.stop()
    assert not sink.failed
    assert {rid: outs for rid, outs in sink.completed.items()} == {10 + i: [e] for i, e in enumerate(expected)}
    if stream:
        for rid, outs in sink.completed.items():
            assert sink.first[rid] == [outs[0][0]]
            assert sink.order.index(("first", rid)) < sink.order.index(("complete", rid))
    else:
        assert not sink.first
    assert client.router.outstanding_tokens == [0]


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_node_is_a_clear_error():
    from mlperf_llama2.errors import UserError

    with pytest.raises(UserError, match="is not answering"):
        NodeBackend([f"http://127.0.0.1:{free_loopback_port()}"], stream=False, wait_s=0.5)


@pytest.mark.parametrize("streaming", [False, True])
def test_the_api_backend_talks_to_a_node(node, expected, streaming):
    """The node speaks vLLM's token-id protocol: `--backend api --api-server NODE` works against it."""
    from mlperf_llama2.backends.api import ApiBackend
    from mlperf_llama2.config import ApiConfig

    config = ApiConfig(api_servers=(node.url,), api_model_name="tiny-node", api_concurrency=2, api_batch_size=2)
    api = ApiBackend(config, eos_token_id=2, vocab_size=node.backend.vocab_size, streaming=streaming)
    sink = RecordingSink()
    api.start(sink)
    try:
        api.submit([GenerationRequest(20 + i, i, p, NEW) for i, p in enumerate(PROMPTS)])
        sink.wait(len(PROMPTS), timeout=60)
    finally:
        api.stop()
    assert not sink.failed
    assert {rid: outs for rid, outs in sink.completed.items()} == {20 + i: [e] for i, e in enumerate(expected)}
