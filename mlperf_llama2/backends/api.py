"""The `api` backend (`--vllm`): greedy generation on OpenAI-compatible servers, token ids in and out.

Offline: prompts go as token-id lists in batched `/v1/completions` requests (`--api-batch-size`
prompts each), at most `--api-concurrency` in flight per server. Server: one streaming request per
query; the first streamed token goes to `sink.first_token` at once, and the final response starts
with it. Requests are retried with exponential backoff on 5xx, 408/429, timeouts and connection
errors; after the last retry every request of the failed call goes to `sink.fail` (never dropped).
Output ids come from the server (see `api_protocol` for the carriers and the EOS rule) and must be
ids of the model's vocabulary, at most max_tokens of them (token-id mode), for the prompt sent
(when the server echoes `prompt_token_ids`); any other answer fails its sample.

`--api-text-mode` is for servers that take only text: the prompt is decoded with the checkpoint's
tokenizer, the output text is re-tokenized without BOS. That is lossy; docs/api.md says how.
`submit()` only queues; worker threads do all I/O.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Optional, Sequence

from mlperf_llama2.backends import api_protocol as proto
from mlperf_llama2.backends.api_client import RequestError, ServerPool, check_model, post_json, post_stream, \
    with_retries
from mlperf_llama2.backends.base import Backend, GenerationRequest, ResultSink
from mlperf_llama2.errors import UserError

if TYPE_CHECKING:
    from mlperf_llama2.config import ApiConfig, RunConfig
    from mlperf_llama2.tokenization import TextTokenizer

log = logging.getLogger(__name__)

COMPLETIONS_PATH = "/v1/completions"
PROBE_MAX_TOKENS = 1  # the start-up probe: one token of one one-token prompt
_STOP = None  # queue sentinel, one per worker


class ApiBackend(Backend):
    name = "api"

    def __init__(self, config: "ApiConfig", *, eos_token_id: int, vocab_size: Optional[int] = None,
                 streaming: bool = False, tokenizer: Optional["TextTokenizer"] = None):
        """`streaming`: Server scenario (one SSE request per query). `tokenizer`: needed in text mode."""
        if config.api_text_mode and tokenizer is None:
            raise ValueError("text mode needs the checkpoint's tokenizer")
        self._config = config
        self._eos = eos_token_id
        self._vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._text = config.api_text_mode
        self.streams_first_token = streaming
        self._pool = ServerPool(config.api_servers, config.api_concurrency)
        self._queue: queue.Queue = queue.Queue()
        self._stop_event = threading.Event()
        self._workers: list[threading.Thread] = []
        self._sink: Optional[ResultSink] = None
        self._checked = False
        self._tokenizer_lock = threading.Lock()  # one fast tokenizer shared by the worker threads

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> Optional[int]:
        return self._vocab_size

    def check_servers(self) -> None:
        """Every server must list --api-model-name in GET /v1/models and, in token-id mode, answer a
        one-token probe with token ids (UserError otherwise), so a wrong server fails before LoadGen."""
        for server in self._pool.servers:
            check_model(server, self._config.api_model_name)
            if not self._text:
                self._probe_token_ids(server)
        self._checked = True
        log.info("api: %d server(s) serve %s: %s", len(self._pool.servers), self._config.api_model_name,
                 ", ".join(s.base_url for s in self._pool.servers))
        if self._text:
            log.warning(
                "api: --api-text-mode: prompts are sent as decoded text and outputs re-tokenized; token ids "
                "may differ from the model's own (no min_tokens, one BOS, lossy text round trip); see docs/api.md"
            )

    def _probe_token_ids(self, server) -> None:
        body = proto.completion_body(self._config.api_model_name, [self._eos], PROBE_MAX_TOKENS, token_ids=True)
        try:
            raw = post_json(server, COMPLETIONS_PATH, body, self._config.api_timeout_s)
            [result] = proto.parse_completion(raw, 1, token_ids=True)
            proto.check_output(result.token_ids, max_tokens=PROBE_MAX_TOKENS, vocab_size=self._vocab_size)
        except (RequestError, proto.ProtocolError) as exc:
            raise UserError(
                f"--api-server {server.base_url} cannot serve token-id mode: {exc}; use a vLLM server, "
                "or --api-text-mode for servers that take only text"
            ) from None

    def start(self, sink: ResultSink) -> None:
        if not self._checked:
            self.check_servers()
        self._sink = sink
        n_workers = self._config.api_concurrency * len(self._pool.servers)
        for i in range(n_workers):
            t = threading.Thread(target=self._work, name=f"api-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        if self.streams_first_token or self._text:
            for request in requests:
                self._queue.put([request])
            return
        size = self._config.api_batch_size
        by_max: dict[int, list[GenerationRequest]] = {}
        for request in requests:
            by_max.setdefault(request.max_new_tokens, []).append(request)
        for group in by_max.values():
            for i in range(0, len(group), size):
                self._queue.put(group[i:i + size])

    def stop(self) -> None:
        if self._stop_event.is_set():
            return
        self._stop_event.set()
        if self._sink is None:
            return  # never started: nothing was sent, nobody to tell
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._fail(item, RuntimeError("api backend stopped before the request was sent"))
        for _ in self._workers:
            self._queue.put(_STOP)
        for t in self._workers:
            t.join()
        self._workers.clear()

    # ----- worker side -----

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            try:
                if self.streams_first_token:
                    self._run_stream(batch[0])
                else:
                    self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - every failure reaches the sink
                self._fail(batch, exc)

    def _fail(self, batch: Sequence[GenerationRequest], exc: BaseException) -> None:
        log.error("api: request(s) %s failed: %s", [r.request_id for r in batch], exc)
        for request in batch:
            self._sink.fail(request.request_id, exc)

    def _prompt(self, request: GenerationRequest) -> str | list[int]:
        if not self._text:
            return list(request.prompt)
        with self._tokenizer_lock:
            return prompt_text(self._tokenizer, request.prompt)

    def _retokenize(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return self._tokenizer.encode(text, add_special_tokens=False)

    def _finish(self, request: GenerationRequest, result: proto.ChoiceResult) -> list[int]:
        proto.check_finish(result, max_tokens=None if self._text else request.max_new_tokens)
        ids = result.token_ids if not self._text else self._retokenize(result.text)
        tokens = proto.apply_eos_rule(ids, result.finish_reason, self._eos)
        if not tokens:
            raise proto.ProtocolError("the server returned no output tokens")
        # Text mode: the re-tokenized count is not the server's, and the server saw decoded text, not ids.
        proto.check_output(tokens, vocab_size=self._vocab_size,
                           max_tokens=None if self._text else request.max_new_tokens,
                           prompt=None if self._text else list(request.prompt), echoed_prompt=result.prompt_token_ids)
        return tokens

    def _run_batch(self, batch: Sequence[GenerationRequest]) -> None:
        prompts = [self._prompt(r) for r in batch]
        max_tokens = batch[0].max_new_tokens
        body = proto.completion_body(self._config.api_model_name, prompts if len(prompts) > 1 else prompts[0],
                                     max_tokens, token_ids=not self._text)
        load = sum(len(r.prompt) + max_tokens for r in batch)

        def attempt(_: int) -> list[proto.ChoiceResult]:
            with self._pool.acquire(load, self._config.api_timeout_s) as server:
                raw = post_json(server, COMPLETIONS_PATH, body, self._config.api_timeout_s)
            try:
                return proto.parse_completion(raw, len(batch), token_ids=not self._text)
            except proto.ProtocolError as exc:
                raise RequestError(str(exc), retryable=False) from None

        results = with_retries(attempt, retries=self._config.api_retries, backoff_s=self._config.api_backoff_s,
                               what=f"completion of {len(batch)} prompt(s)", stop_event=self._stop_event)
        outputs = [self._finish(request, result) for request, result in zip(batch, results)]
        for request, tokens in zip(batch, outputs):
            self._sink.complete(request.request_id, tokens)

    def _run_stream(self, request: GenerationRequest) -> None:
        body = proto.completion_body(self._config.api_model_name, self._prompt(request), request.max_new_tokens,
                                     token_ids=not self._text, stream=True)
        load = len(request.prompt) + request.max_new_tokens
        sent: list[int] = []  # the first token once reported; survives retries

        def report_first(token: int) -> None:
            if not sent:
                sent.append(token)
                self._sink.first_token(request.request_id, token)
            elif sent[0] != token and not self._text:
                raise RequestError(f"retried stream began with {token}, not {sent[0]}", retryable=False)

        def attempt(_: int) -> proto.ChoiceResult:
            acc = proto.StreamAccumulator(token_ids=not self._text)
            with self._pool.acquire(load, self._config.api_timeout_s) as server:
                with post_stream(server, COMPLETIONS_PATH, body, self._config.api_timeout_s) as lines:
                    progress = time.monotonic()  # when a chunk last carried output
                    try:
                        for chunk in proto.sse_payloads(lines):
                            if acc.add(chunk):
                                progress = time.monotonic()
                            elif time.monotonic() - progress > self._config.api_timeout_s:
                                # data lines without output (empty chunks) must not keep a stream open forever
                                raise RequestError(f"stream sent no output for {self._config.api_timeout_s:g} s",
                                                   retryable=True)
                            if len(acc.result.token_ids) > request.max_new_tokens:  # never read an endless stream
                                proto.check_output(acc.result.token_ids, max_tokens=request.max_new_tokens,
                                                   vocab_size=None)
                            first = self._first_token_so_far(acc.result)
                            if first is not None:
                                report_first(first)
                            if acc.result.finish_reason is not None:
                                break  # the answer is whole; a server that keeps the stream open is not waited for
                    except proto.ProtocolError as exc:
                        raise RequestError(str(exc), retryable=False) from None
            if acc.result.finish_reason is None:
                # Every server ends a stream with a finish_reason; without one the connection was cut.
                raise RequestError("stream ended without a finish_reason (connection cut?)", retryable=True)
            return acc.result

        result = with_retries(attempt, retries=self._config.api_retries, backoff_s=self._config.api_backoff_s,
                              what=f"streamed completion of request {request.request_id}",
                              stop_event=self._stop_event)
        tokens = self._finish(request, result)
        if not sent:
            report_first(tokens[0])
        elif tokens[0] != sent[0]:
            # Text mode only (token-id mode checked every retry): re-tokenizing the whole text moved
            # the first token. The streamed one stands, so the response starts with what LoadGen saw.
            log.warning("api: text mode: re-tokenized output of request %d starts with %d, streamed %d; "
                        "keeping the streamed first token", request.request_id, tokens[0], sent[0])
            tokens = [sent[0]] + tokens[1:]
        self._sink.complete(request.request_id, tokens)

    def _first_token_so_far(self, result: proto.ChoiceResult) -> Optional[int]:
        """The first output token once it is known for sure, else None."""
        if not self._text:
            return result.token_ids[0] if result.token_ids else None
        # Text: the first re-tokenized id is settled once a second one follows it.
        ids = self._retokenize(result.text) if result.text else []
        return ids[0] if len(ids) >= 2 else None


def prompt_text(tokenizer: "TextTokenizer", prompt: Sequence[int]) -> str:
    """Text mode: the prompt without its leading BOS id(s), decoded; the server adds its own BOS."""
    ids = list(prompt)
    bos = tokenizer.hf.bos_token_id
    while ids and ids[0] == bos:
        ids.pop(0)
    return tokenizer.decode(ids, skip_special_tokens=False)


def create_api_backend(config: "RunConfig") -> ApiBackend:
    """The registry's factory: EOS/vocabulary from --model-path, the servers checked, the backend built.

    Without --model-path (token-id mode only) EOS is Llama-2's and the vocabulary is unknown.
    """
    from mlperf_llama2 import constants

    eos, vocab_size, tokenizer = constants.LLAMA2_EOS_TOKEN, None, None
    if config.model_path is not None:
        from mlperf_llama2.backends.hf_loading import read_model_info

        info = read_model_info(config.model_path)
        eos, vocab_size = info.eos_token_id, info.vocab_size
    else:
        log.info("api: no --model-path; EOS id %d (Llama-2)", eos)
    if config.api.api_text_mode:
        if config.model_path is None:
            raise UserError("--api-text-mode needs --model-path DIR for the tokenizer (prompts are decoded to text)")
        from mlperf_llama2.tokenization import load_tokenizer

        tokenizer = load_tokenizer(config.model_path)
    backend = ApiBackend(config.api, eos_token_id=eos, vocab_size=vocab_size,
                         streaming=config.scenario == "Server", tokenizer=tokenizer)
    backend.check_servers()
    return backend
