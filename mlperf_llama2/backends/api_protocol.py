"""The OpenAI `/v1/completions` wire format as pure functions: request bodies in, token ids out.

No I/O here. Two modes:
- token-id mode (default, vLLM): the prompt goes as a list of token ids (a list of lists for a
  batch) and the output token ids come back from the server, never re-tokenized. Accepted
  carriers, first match wins: `choice["token_ids"]` (vLLM's `return_token_ids`, and other servers
  that return ids directly), then `choice["logprobs"]["tokens"]` as "token_id:N" strings (vLLM's
  `return_tokens_as_token_ids` with `logprobs`).
- text mode: the prompt goes as text and the output text is re-tokenized by the caller.

EOS rule (one place, `apply_eos_rule`): a choice that ends with `finish_reason == "stop"` stopped
on EOS (we send no stop strings), so its ids end with exactly one EOS: kept if the server returned
it, appended once if the server left it out. Any other finish reason ("length") adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from mlperf_llama2 import constants

TOKEN_ID_PREFIX = "token_id:"
SSE_DONE = "[DONE]"


class ProtocolError(Exception):
    """The server answered 2xx but with a body we cannot use (no token ids, bad JSON, wrong count)."""


def completion_body(
    model: str,
    prompt: str | Sequence[int] | Sequence[Sequence[int]],
    max_tokens: int,
    *,
    token_ids: bool,
    stream: bool = False,
) -> dict[str, Any]:
    """The JSON body of one greedy completion request.

    Token-id mode adds vLLM's extensions (`min_tokens`, `return_tokens_as_token_ids` with
    `logprobs: 1`, `return_token_ids`); text mode sends only standard OpenAI fields, because
    strict servers (e.g. `transformers serve`) reject unknown ones.
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "temperature": 0,
    }
    if token_ids:
        body.update(
            min_tokens=constants.MIN_NEW_TOKENS,
            logprobs=1,
            return_tokens_as_token_ids=True,
            return_token_ids=True,
        )
    if stream:
        body["stream"] = True
    return body


def parse_token_string(token: str) -> int:
    """'token_id:123' -> 123."""
    if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
        raise ProtocolError(
            f"expected a token id string like 'token_id:123', got {token!r}; "
            "the server must honour return_tokens_as_token_ids (vLLM) or return token_ids"
        )
    try:
        return int(token[len(TOKEN_ID_PREFIX):])
    except ValueError:
        raise ProtocolError(f"bad token id string {token!r}") from None


def _token_id(value: Any) -> int:
    """A JSON integer (not a bool, a float or a string), else ProtocolError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"expected an integer token id, got {value!r}")
    return value


def choice_token_ids(choice: dict[str, Any]) -> Optional[list[int]]:
    """The output token ids a choice (or a streamed delta) carries, or None if it carries none."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return [_token_id(t) for t in ids]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        return [parse_token_string(t) for t in logprobs["tokens"]]
    return None


def prompt_echo(choice: dict[str, Any]) -> Optional[list[int]]:
    """The prompt ids a choice says it answered (vLLM's `prompt_token_ids` with `return_token_ids`), or None."""
    ids = choice.get("prompt_token_ids")
    return [_token_id(t) for t in ids] if isinstance(ids, list) else None


def check_output(tokens: Sequence[int], *, max_tokens: Optional[int], vocab_size: Optional[int],
                 prompt: Optional[Sequence[int]] = None, echoed_prompt: Optional[Sequence[int]] = None) -> None:
    """ProtocolError unless `tokens` can be this request's answer: ids of the model's vocabulary, at most
    `max_tokens` of them (None: not checked), for the prompt that was sent (when the server echoes it)."""
    bad = [t for t in tokens if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        limit = f"0..{vocab_size - 1}" if vocab_size is not None else "ids >= 0"
        raise ProtocolError(f"output token id {bad[0]} is outside the model's vocabulary ({limit}): the server "
                            "serves another model or tokenizer")
    if max_tokens is not None and len(tokens) > max_tokens:
        raise ProtocolError(f"server returned {len(tokens)} tokens for max_tokens {max_tokens}")
    if prompt is not None and echoed_prompt is not None and list(echoed_prompt) != list(prompt):
        raise ProtocolError(f"server answered another prompt (prompt_token_ids {list(echoed_prompt)[:8]}..., "
                            f"sent {list(prompt)[:8]}...)")


FINISH_REASONS = ("stop", "length")  # greedy, no stop strings: EOS, or max_tokens reached


def check_finish(result: "ChoiceResult", *, max_tokens: Optional[int]) -> None:
    """ProtocolError for a partial output: a finish reason other than EOS ("stop") or max_tokens ("length"),
    e.g. vLLM's "abort", or "length" before max_tokens ids (the server's context limit cut it; token-id
    mode, where `max_tokens` is given)."""
    if result.finish_reason not in FINISH_REASONS:
        raise ProtocolError(f"finish_reason {result.finish_reason!r}: the output is partial (only "
                            f"{' or '.join(FINISH_REASONS)} ends a greedy completion)")
    if result.finish_reason == "length" and max_tokens is not None and len(result.token_ids) < max_tokens:
        raise ProtocolError(f"finish_reason 'length' after {len(result.token_ids)} tokens for max_tokens "
                            f"{max_tokens}: the server cut the output (its context length?)")


def apply_eos_rule(tokens: Sequence[int], finish_reason: Optional[str], eos_token_id: int) -> list[int]:
    """Append EOS once when the server stopped on it ("stop") but did not return it."""
    out = [int(t) for t in tokens]
    if finish_reason == "stop" and (not out or out[-1] != eos_token_id):
        out.append(eos_token_id)
    return out


@dataclass
class ChoiceResult:
    """What one prompt got back: ids (token-id mode) or text (text mode), and why it ended."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    prompt_token_ids: Optional[list[int]] = None  # the prompt the server says it answered, when it echoes it


def parse_completion(body: bytes | str, n_prompts: int, *, token_ids: bool) -> list[ChoiceResult]:
    """A non-streaming response -> one ChoiceResult per prompt, in prompt order (by `index`)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"response is not JSON: {exc}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != n_prompts:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ProtocolError(f"expected {n_prompts} choices, got {got}")
    results: list[Optional[ChoiceResult]] = [None] * n_prompts
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ProtocolError(f"choice {position} is not an object: {str(choice)[:80]}")
        index = choice.get("index", position)
        if not isinstance(index, int) or not 0 <= index < n_prompts or results[index] is not None:
            raise ProtocolError(f"bad or repeated choice index {index!r}")
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise ProtocolError(f"choice {index}: text is not a string")
        result = ChoiceResult(text=text, finish_reason=choice.get("finish_reason"),
                              prompt_token_ids=prompt_echo(choice))
        if token_ids:
            ids = choice_token_ids(choice)
            if ids is None:
                raise ProtocolError(
                    "response carries no token ids (neither choices[].token_ids nor logprobs.tokens); "
                    "use a vLLM server, or --api-text-mode for servers that only return text"
                )
            result.token_ids = ids
        results[index] = result
    return results  # type: ignore[return-value]


def sse_payloads(lines: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """Server-sent events -> the JSON objects of their `data:` lines, until `[DONE]` or the end.

    An object with an `error` member (vLLM and transformers report mid-stream failures that way)
    raises ProtocolError.
    """
    for raw in lines:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments (":"), event/id fields
        payload = line[len("data:"):].strip()
        if payload == SSE_DONE:
            return
        try:
            obj = json.loads(payload)
        except ValueError as exc:
            raise ProtocolError(f"bad SSE data line {payload[:80]!r}: {exc}") from None
        if isinstance(obj, dict) and obj.get("error"):
            raise ProtocolError(f"server error in stream: {obj['error']}")
        yield obj


class StreamAccumulator:
    """Collects the deltas of one streamed choice (index 0)."""

    def __init__(self, *, token_ids: bool):
        self._token_ids = token_ids
        self.result = ChoiceResult()

    def add(self, chunk: dict[str, Any]) -> list[int] | str:
        """Fold one SSE chunk in; returns the new ids (token-id mode) or the new text (text mode)."""
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices:
            return [] if self._token_ids else ""  # e.g. a usage-only chunk
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict) \
                or choices[0].get("index", 0) != 0:
            # One prompt, one choice: another choice's tokens (n > 1, or another request's) must not be merged in.
            raise ProtocolError(f"stream chunk carries other choices than index 0: {str(choices)[:120]}")
        choice = choices[0]
        if choice.get("finish_reason"):
            self.result.finish_reason = choice["finish_reason"]
        echo = prompt_echo(choice)
        if echo is not None:
            self.result.prompt_token_ids = echo
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise ProtocolError("stream chunk text is not a string")
        self.result.text += text
        if not self._token_ids:
            return text
        ids = choice_token_ids(choice)
        if ids is None:
            if text:
                raise ProtocolError(
                    "streamed text without token ids; use a vLLM server, or --api-text-mode"
                )
            ids = []
        self.result.token_ids.extend(ids)
        return ids
