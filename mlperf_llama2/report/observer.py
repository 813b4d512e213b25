"""The SUT observer main.py attaches to every LoadGen run: live progress bar plus per-sample timings.

It implements the `RunObserver` hooks of mlperf_llama2.loadgen.sut (called from LoadGen's and the
backend's threads) without importing LoadGen. `finish(run_dir)` closes the bar and writes
sample_timings.csv beside LoadGen's logs.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, TextIO

from mlperf_llama2.report.progress import ProgressBar
from mlperf_llama2.report.timings import TimingRecorder

log = logging.getLogger(__name__)


class ReportObserver:
    def __init__(self, total: int, label: str, stream: Optional[TextIO]) -> None:
        self.progress = ProgressBar(total, label=label, stream=stream, enabled=stream is not None)
        self.timings = TimingRecorder()
        self.issued = 0

    def samples_issued(self, requests: Sequence) -> None:
        for request in requests:
            self.timings.issued(request.request_id, request.sample_index)
        # the bar's total is a guess (min_query_count); an Offline query of more samples is its true size
        self.issued += len(requests)
        self.progress.expect_at_least(self.issued)

    def first_token(self, request_id: int) -> None:
        self.timings.first_token(request_id)

    def sample_done(self, request_id: int, n_tokens: int) -> None:
        self.timings.completed(request_id, n_tokens)
        self.progress.update(1, n_tokens)

    def sample_failed(self, request_id: int, error: BaseException) -> None:
        self.timings.completed(request_id, 0)
        self.progress.update(1, 0)

    def finish(self, run_dir: str) -> str:
        self.progress.close()
        path = self.timings.write(run_dir)
        log.debug("sample timings: %s", path)
        return path
