"""The SUT node's wire format: the token-id subset of OpenAI's `/v1/completions` (as vLLM speaks it).

Pure functions, no I/O. A request is `{"model", "prompt": [token ids], "max_tokens", "temperature": 0,
"stream"}` (greedy only); a non-streamed request may carry a list of prompts (one choice each, by
`index`), as the api backend sends Offline batches. A choice carries the generated ids in
`token_ids` (vLLM's `return_token_ids` field), `text` is always "" (nodes never see a tokenizer),
and `finish_reason` is "stop" when the ids end with EOS, else "length". A streamed answer is
server-sent events: one chunk with the first token as soon as it exists, one with the remaining
ids and the finish reason, then `data: [DONE]`. `GET /node/info` adds what LoadGen's node needs
to know before a run (EOS id, vocabulary size, whether first tokens stream).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from mlperf_llama2 import constants

INFO_PATH = "/node/info"
MODELS_PATH = "/v1/models"
COMPLETIONS_PATH = "/v1/completions"
SSE_DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """A request body the node cannot serve (answered with HTTP 400 and this message)."""


def request_body(model: str, prompt: Sequence[int], max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt": [int(t) for t in prompt], "max_tokens": int(max_tokens), "temperature": 0,
            "min_tokens": constants.MIN_NEW_TOKENS, "return_token_ids": True, "stream": bool(stream)}


def _is_int(value) -> bool:
    """A JSON integer; JSON true/false are not token ids or counts."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prompt(prompt, vocab_size: Optional[int]) -> list[int]:
    if not isinstance(prompt, list) or not prompt or not all(_is_int(t) for t in prompt):
        raise BadRequest("prompt must be a non-empty list of token ids, or a list of them "
                         "(this node takes token ids, not text)")
    if len(prompt) >= constants.INPUT_TOKEN_LIMIT:
        raise BadRequest(f"prompt has {len(prompt)} tokens; the limit is {constants.INPUT_TOKEN_LIMIT - 1}")
    if vocab_size is not None and not all(0 <= t < vocab_size for t in prompt):
        raise BadRequest(f"prompt has token ids outside the model's vocabulary (0..{vocab_size - 1})")
    return prompt


def parse_request(raw: bytes, vocab_size: Optional[int]) -> tuple[list[list[int]], int, bool]:
    """(prompts, max new tokens, stream) of a request body; BadRequest with a clear message otherwise.

    `prompt` is one list of ids, or (not streamed) a list of such lists answered as one choice each.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    prompt = body.get("prompt")
    batched = isinstance(prompt, list) and bool(prompt) and all(isinstance(p, list) for p in prompt)
    prompts = [_check_prompt(p, vocab_size) for p in prompt] if batched else [_check_prompt(prompt, vocab_size)]
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest("stream must be true or false")
    stream = bool(stream)
    if stream and len(prompts) > 1:
        raise BadRequest("a streamed request carries one prompt")
    max_tokens = body.get("max_tokens", constants.MAX_NEW_TOKENS)
    if not _is_int(max_tokens) or not 1 <= max_tokens <= constants.MAX_NEW_TOKENS:
        raise BadRequest(f"max_tokens must be an integer in 1..{constants.MAX_NEW_TOKENS}")
    if body.get("temperature", 0) not in (0, 0.0, None):
        raise BadRequest("only greedy decoding is served: temperature must be 0")
    return prompts, max_tokens, stream


def finish_reason(tokens: Sequence[int], eos_token_id: int) -> str:
    return "stop" if tokens and tokens[-1] == eos_token_id else "length"


def choice(token_ids: Sequence[int], reason: Optional[str], index: int = 0) -> dict[str, Any]:
    return {"index": index, "text": "", "token_ids": [int(t) for t in token_ids], "finish_reason": reason}


def completion(request_id: str, model: str, outputs: Sequence[Sequence[int]], eos_token_id: int) -> bytes:
    """A whole answer: one choice per prompt, in prompt order."""
    choices = [choice(ids, finish_reason(ids, eos_token_id), i) for i, ids in enumerate(outputs)]
    return json.dumps({"id": request_id, "object": "text_completion", "model": model, "choices": choices}).encode()


def sse_chunk(request_id: str, model: str, token_ids: Sequence[int], reason: Optional[str]) -> bytes:
    payload = {"id": request_id, "object": "text_completion", "model": model, "choices": [choice(token_ids, reason)]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def parse_choice(obj: Any) -> tuple[list[int], Optional[str]]:
    """(token ids, finish reason) of a completion or stream chunk; ValueError if it carries no ids."""
    try:
        first = obj["choices"][0]
        return [int(t) for t in first["token_ids"]], first.get("finish_reason")
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f"answer carries no choices[0].token_ids: {str(obj)[:200]}") from None
