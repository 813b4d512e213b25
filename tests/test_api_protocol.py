"""The /v1/completions wire format: request bodies, token-id carriers, the EOS rule, SSE parsing."""

import json

import pytest

from mlperf_llama2.backends import api_protocol as proto

EOS = 2


def test_token_id_body_is_greedy_with_vllm_extensions():
    body = proto.completion_body("m", [[1, 5], [1, 6]], 1024, token_ids=True)
    assert body["temperature"] == 0 and body["max_tokens"] == 1024 and body["min_tokens"] == 1
    assert body["prompt"] == [[1, 5], [1, 6]]
    assert body["return_tokens_as_token_ids"] is True and body["logprobs"] == 1
    assert "stream" not in body


def test_text_body_has_only_standard_fields():
    body = proto.completion_body("m", "hello", 16, token_ids=False, stream=True)
    assert set(body) == {"model", "prompt", "max_tokens", "temperature", "stream"}


def test_logprob_token_strings_are_parsed_to_ids():
    choice = {"text": "x", "logprobs": {"tokens": ["token_id:7", "token_id:31999"]}}
    assert proto.choice_token_ids(choice) == [7, 31999]


def test_token_ids_field_wins_over_logprobs():
    choice = {"token_ids": [4, 5], "logprobs": {"tokens": ["token_id:9"]}}
    assert proto.choice_token_ids(choice) == [4, 5]


def test_plain_text_tokens_are_rejected_with_advice():
    with pytest.raises(proto.ProtocolError, match="return_tokens_as_token_ids"):
        proto.choice_token_ids({"logprobs": {"tokens": ["Hello"]}})


@pytest.mark.parametrize("tokens, finish, expected", [
    ([5, 6], "stop", [5, 6, EOS]),        # server stopped on EOS and left it out: appended once
    ([5, 6, EOS], "stop", [5, 6, EOS]),   # server returned it: kept once
    ([5, 6], "length", [5, 6]),           # hit max_tokens: nothing added
    ([5, EOS], "length", [5, EOS]),
])
def test_eos_rule(tokens, finish, expected):
    assert proto.apply_eos_rule(tokens, finish, EOS) == expected


def test_completion_choices_are_put_in_prompt_order():
    body = json.dumps({"choices": [
        {"index": 1, "token_ids": [8], "finish_reason": "length"},
        {"index": 0, "token_ids": [7], "finish_reason": "stop"},
    ]})
    results = proto.parse_completion(body, 2, token_ids=True)
    assert [r.token_ids for r in results] == [[7], [8]]
    assert [r.finish_reason for r in results] == ["stop", "length"]


def test_completion_without_ids_or_with_wrong_count_is_an_error():
    with pytest.raises(proto.ProtocolError, match="no token ids"):
        proto.parse_completion(json.dumps({"choices": [{"index": 0, "text": "hi"}]}), 1, token_ids=True)
    with pytest.raises(proto.ProtocolError, match="expected 2 choices"):
        proto.parse_completion(json.dumps({"choices": [{"index": 0, "token_ids": [1]}]}), 2, token_ids=True)
    with pytest.raises(proto.ProtocolError, match="not JSON"):
        proto.parse_completion(b"<html>", 1, token_ids=True)


def test_sse_stream_is_folded_into_ids_text_and_finish_reason():
    lines = [
        b": keep-alive\n",
        b'data: {"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": ["token_id:11"]}}]}\n', b"\n",
        b'data: {"choices": [{"index": 0, "text": "b", "logprobs": {"tokens": ["token_id:12"]},'
        b' "finish_reason": "stop"}]}\n', b"\n",
        b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n', b"\n",
        b"data: [DONE]\n", b"\n",
        b'data: {"choices": [{"index": 0, "text": "never read", "token_ids": [99]}]}\n',
    ]
    acc = proto.StreamAccumulator(token_ids=True)
    deltas = [acc.add(chunk) for chunk in proto.sse_payloads(lines)]
    assert deltas == [[11], [12], []]
    assert acc.result.token_ids == [11, 12] and acc.result.text == "ab" and acc.result.finish_reason == "stop"


def test_sse_error_object_raises():
    with pytest.raises(proto.ProtocolError, match="boom"):
        list(proto.sse_payloads([b'data: {"error": "boom"}\n']))


def test_streamed_text_without_ids_is_rejected_in_token_mode():
    acc = proto.StreamAccumulator(token_ids=True)
    with pytest.raises(proto.ProtocolError, match="without token ids"):
        acc.add({"choices": [{"index": 0, "text": "x"}]})
