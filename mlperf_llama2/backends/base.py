"""The generation-backend interface the SUTs drive: token ids in, token ids out, results by callback.

A backend knows nothing of LoadGen. The SUT submits `GenerationRequest`s and returns at once; the
backend generates greedily on its own threads and reports through the `ResultSink` it was started
with: `first_token` (streaming backends, as soon as a first token exists) and then exactly one of
`complete` or `fail` per request. Outputs are raw generated ids; the SUT cuts them after the first
EOS and converts them to int32 (`postprocess.finalize_output`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence


@dataclass(frozen=True)
class GenerationRequest:
    request_id: int  # LoadGen's response id, echoed back in every callback
    sample_index: int  # QSL index of the prompt
    prompt: Sequence[int]  # token ids, BOS included, < INPUT_TOKEN_LIMIT
    max_new_tokens: int


class ResultSink(Protocol):
    def first_token(self, request_id: int, token: int) -> None: ...

    def complete(self, request_id: int, tokens: Sequence[int]) -> None: ...

    def fail(self, request_id: int, error: BaseException) -> None: ...


class Backend(abc.ABC):
    """Registered under `name`; selected with `--backend NAME`."""

    name: str = ""
    streams_first_token: bool = False  # True: first_token() arrives before complete()
    network_name: Optional[Callable[[], str]] = None  # set: this process is LoadGen's node of a multi-node run

    @property
    @abc.abstractmethod
    def eos_token_id(self) -> int: ...

    @property
    def vocab_size(self) -> int | None:
        """Model vocabulary size, used to validate dataset token ids before a run (None: unknown)."""
        return None

    @abc.abstractmethod
    def start(self, sink: ResultSink) -> None:
        """Start worker threads; results go to `sink`."""

    @abc.abstractmethod
    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Queue requests and return immediately (never blocks LoadGen's issue thread)."""

    def flush(self) -> None:
        """LoadGen's flush_queries: nothing more will be issued for now."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Finish or abandon outstanding work and join the threads. Idempotent."""
