"""The systems under test LoadGen drives: Offline and Server SUTs over a generation `Backend`.

`issue_queries` turns LoadGen's samples into `GenerationRequest`s, submits them and returns at once
(LoadGen's issue thread is never held). The backend answers through the SUT's `Responder`, which
posts each response to LoadGen (SPEC §2 decisions 1-4): data cut after the first EOS, int32,
`n_tokens` = its length, one `QuerySamplesComplete` per sample, and in Server a
`FirstTokenComplete` (int32) that always precedes the sample's `QuerySamplesComplete` and whose
token is the first token of the final response. A failed request is recorded and still answered,
so LoadGen finishes and the run can end with a clear error. A failure (the backend gave up on a
sample after its retries) or `abort()` (a signal) stops the run: every outstanding sample, and
every sample issued later, is answered at once with an empty response, so LoadGen returns soon.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import mlperf_loadgen as lg
import numpy as np

from mlperf_llama2 import constants
from mlperf_llama2.backends.base import Backend, GenerationRequest
from mlperf_llama2.data.dataset import Dataset
from mlperf_llama2.postprocess import finalize_output

log = logging.getLogger(__name__)


class RunObserver:
    """Hooks for progress bars and summaries; called from LoadGen's and the backend's threads."""

    def samples_issued(self, requests: Sequence[GenerationRequest]) -> None:
        """LoadGen issued these requests (ids and QSL indices)."""

    def first_token(self, request_id: int) -> None:
        """A Server sample's first token was reported to LoadGen."""

    def sample_done(self, request_id: int, n_tokens: int) -> None:
        """A sample's response (of `n_tokens` tokens) was reported to LoadGen."""

    def sample_failed(self, request_id: int, error: BaseException) -> None:
        """A sample's generation failed (it was answered with an empty response)."""


@dataclass(frozen=True)
class SampleFailure:
    sample_index: int
    error: str


class Responder:
    """The backend's `ResultSink`: turns results into LoadGen responses, exactly one per issued sample."""

    def __init__(
        self,
        eos_token_id: int,
        *,
        report_first_tokens: bool,
        observers: Sequence[RunObserver] = (),
        keep_outputs: bool = False,
    ):
        self._eos = eos_token_id
        self._report_first_tokens = report_first_tokens
        self._observers = tuple(observers)
        self._keep_outputs = keep_outputs
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # LoadGen response id -> QSL index
        self._first_sent: dict[int, int] = {}  # request id -> the first token LoadGen got for it
        self.first_token_mismatches = 0  # responses whose first token is not the one LoadGen timed
        self.samples_done = 0
        self.tokens_done = 0
        self.failures: list[SampleFailure] = []
        self.skipped = 0  # samples answered empty, without generating, after the run was stopped
        self.abort_reason: Optional[str] = None
        self.outputs: dict[int, list[int]] = {}  # QSL index -> response tokens (keep_outputs only)

    def track(self, requests: Sequence[GenerationRequest]) -> None:
        with self._lock:
            for request in requests:
                self._in_flight[request.request_id] = request.sample_index
        for observer in self._observers:
            observer.samples_issued(requests)

    def skip_if_stopped(self, requests: Sequence[GenerationRequest]) -> bool:
        """After `track`: True when the run is stopped and the requests were answered empty (don't generate)."""
        if self.abort_reason is None:
            return False
        for request in requests:
            self._respond(request.request_id, np.zeros(0, dtype=np.int32), skipped=True)
        return True

    def abort(self, reason: str) -> int:
        """Stop the run: answer every outstanding sample now, empty, and later ones on arrival. Returns how many."""
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = reason
            pending = list(self._in_flight)
        for request_id in pending:
            self._respond(request_id, np.zeros(0, dtype=np.int32), skipped=True)
        return len(pending)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def first_token(self, request_id: int, token: int) -> None:
        if not self._report_first_tokens:
            return
        with self._lock:
            if request_id not in self._in_flight or request_id in self._first_sent:
                return
            self._send_first_token_locked(request_id, token)

    def complete(self, request_id: int, tokens: Sequence[int]) -> None:
        data = finalize_output(tokens, self._eos)
        if len(data) < 2:
            # LoadGen rejects n_tokens <= 1; with min_new_tokens=1 this means the backend is broken.
            self.fail(request_id, RuntimeError(f"backend returned {len(data)} token(s); at least 2 are needed"))
            return
        if self._respond(request_id, data):  # not for a repeated or unknown id, nor one the stop answered empty
            for observer in self._observers:
                observer.sample_done(request_id, len(data))

    def fail(self, request_id: int, error: BaseException) -> None:
        with self._lock:
            sample_index = self._in_flight.get(request_id, -1)
            if sample_index == -1:
                if self.abort_reason is None:  # else: answered already when the run was stopped
                    log.error("failure for unknown or already answered request %d ignored (%s: %s)", request_id,
                              type(error).__name__, error)
                return
        log.error("sample %d failed: %s: %s", sample_index, type(error).__name__, error)
        # Answer LoadGen anyway (an empty response) so the run finishes; the run is then reported failed.
        if self._respond(request_id, np.zeros(0, dtype=np.int32), failure=f"{type(error).__name__}: {error}"):
            for observer in self._observers:
                observer.sample_failed(request_id, error)

    def _send_first_token_locked(self, request_id: int, token: int) -> None:
        first = np.array([token], dtype=np.int32)
        lg.FirstTokenComplete([lg.QuerySampleResponse(request_id, first.ctypes.data, first.nbytes, 1)])
        self._first_sent[request_id] = int(token)
        for observer in self._observers:
            observer.first_token(request_id)

    def _respond(self, request_id: int, data: np.ndarray, failure: Optional[str] = None,
                 skipped: bool = False) -> bool:
        """Post the final response once per request; returns False for an unknown or repeated id."""
        with self._lock:
            sample_index = self._in_flight.pop(request_id, None)
            if sample_index is None:
                if self.abort_reason is None:
                    log.error("response for unknown or already answered request %d dropped", request_id)
                return False
            if self._report_first_tokens and request_id not in self._first_sent:
                # A backend that does not stream: the first token still goes first, and is data[0].
                self._send_first_token_locked(request_id, int(data[0]) if len(data) else self._eos)
            first = self._first_sent.pop(request_id, None)
            if first is not None and failure is None and not skipped and len(data) and int(data[0]) != first:
                # LoadGen's TTFT timed a token the response does not start with: the latency is not this output's
                self.first_token_mismatches += 1
                if self.first_token_mismatches == 1:
                    log.warning("sample %d: the first token reported to LoadGen (%d) is not the response's first "
                                "token (%d); its TTFT does not time this output (a backend bug)",
                                sample_index, first, int(data[0]))
            if skipped:
                self.skipped += 1
            elif failure is None:
                self.samples_done += 1
                self.tokens_done += len(data)
                if self._keep_outputs and sample_index not in self.outputs:
                    self.outputs[sample_index] = data.tolist()
            else:
                self.failures.append(SampleFailure(sample_index, failure))
        # `data` stays referenced until LoadGen has copied it (QuerySamplesComplete copies synchronously).
        response = lg.QuerySampleResponse(request_id, data.ctypes.data, data.nbytes, len(data))
        lg.QuerySamplesComplete([response])
        if failure is not None:  # the backend gave up on this sample after its retries: stop the run
            skipped = self.abort(f"sample {sample_index} could not be generated")
            if skipped:
                log.error("run stopped: %d outstanding sample(s) answered empty without generating", skipped)
        return True


class _SUT:
    """Common part: request building, start/stop of the backend. Subclasses decide how to submit."""

    report_first_tokens = False

    def __init__(
        self,
        backend: Backend,
        dataset: Dataset,
        *,
        max_new_tokens: int = constants.MAX_NEW_TOKENS,
        observers: Sequence[RunObserver] = (),
        keep_outputs: bool = False,
    ):
        self.backend = backend
        self.dataset = dataset
        self.max_new_tokens = max_new_tokens
        self.responder = Responder(
            backend.eos_token_id,
            report_first_tokens=self.report_first_tokens,
            observers=observers,
            keep_outputs=keep_outputs,
        )

    def start(self) -> None:
        self.backend.start(self.responder)

    def stop(self) -> None:
        self.backend.stop()

    def abort(self, reason: str) -> None:
        """Stop the run now (a signal): answer LoadGen for every outstanding sample; teardown stops the backend."""
        skipped = self.responder.abort(reason)
        log.debug("%s: %d outstanding sample(s) answered empty", reason, skipped)

    def _requests(self, query_samples) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                request_id=sample.id,
                sample_index=sample.index,
                prompt=self.dataset.prompt(sample.index),
                max_new_tokens=self.max_new_tokens,
            )
            for sample in query_samples
        ]

    def issue_queries(self, query_samples) -> None:  # LoadGen callback
        raise NotImplementedError

    def flush_queries(self) -> None:  # LoadGen callback
        self.backend.flush()


class OfflineSUT(_SUT):
    """Offline: the whole query goes to the backend at once; it batches (`--batch-size` per worker)."""

    def issue_queries(self, query_samples) -> None:
        requests = self._requests(query_samples)
        self.responder.track(requests)
        if not self.responder.skip_if_stopped(requests):
            self.backend.submit(requests)


class ServerSUT(_SUT):
    """Server: each sample is its own request; first tokens are reported before final responses."""

    report_first_tokens = True

    def issue_queries(self, query_samples) -> None:
        requests = self._requests(query_samples)
        self.responder.track(requests)
        if self.responder.skip_if_stopped(requests):
            return
        for request in requests:
            self.backend.submit([request])


def sut_class(scenario: str) -> type[_SUT]:
    return {"Offline": OfflineSUT, "Server": ServerSUT}[scenario]
