"""Per-sample timestamps of a run, recorded by the SUT observer and written beside LoadGen's logs.

`sample_timings.csv` has one row per completed sample: `sample_index, issued_s, first_token_s,
completed_s, n_tokens` (seconds since the recorder started; `first_token_s` empty when the backend does
not stream). The plots read it: TTFT = first_token - issued, TPOT = (completed - first_token) /
(n_tokens - 1), tokens/s over time from the completion times. Thread-safe; no torch, no LoadGen.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TextIO

log = logging.getLogger(__name__)

TIMINGS_FILE = "sample_timings.csv"
FIELDS = ("sample_index", "issued_s", "first_token_s", "completed_s", "n_tokens")


@dataclass(frozen=True)
class SampleTiming:
    sample_index: int
    issued_s: float
    first_token_s: Optional[float]
    completed_s: float
    n_tokens: int

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.first_token_s is None else self.first_token_s - self.issued_s

    @property
    def tpot_s(self) -> Optional[float]:
        if self.first_token_s is None or self.n_tokens < 2:
            return None
        return (self.completed_s - self.first_token_s) / (self.n_tokens - 1)


class TimingRecorder:
    """Collects issue / first-token / completion times per request id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, float, Optional[float]]] = {}
        self.samples: list[SampleTiming] = []

    def issued(self, request_id: int, sample_index: int) -> None:
        with self._lock:
            self._pending[request_id] = (sample_index, self.clock() - self._start, None)

    def first_token(self, request_id: int) -> None:
        with self._lock:
            if request_id in self._pending:
                index, issued, _ = self._pending[request_id]
                self._pending[request_id] = (index, issued, self.clock() - self._start)

    def completed(self, request_id: int, n_tokens: int) -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                index, issued, first = entry
                self.samples.append(SampleTiming(index, issued, first, self.clock() - self._start, n_tokens))

    def write(self, run_dir: str) -> str:
        path = os.path.join(run_dir, TIMINGS_FILE)
        with self._lock:
            rows = sorted(self.samples, key=lambda s: s.completed_s)

        def write_rows(f: TextIO) -> None:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            for s in rows:
                first = "" if s.first_token_s is None else f"{s.first_token_s:.6f}"
                writer.writerow((s.sample_index, f"{s.issued_s:.6f}", first, f"{s.completed_s:.6f}", s.n_tokens))

        write_atomically(path, write_rows, newline="")
        return path


def write_atomically(path: str, write: Callable[[TextIO], None], newline: Optional[str] = None) -> None:
    """Write `path` through a temporary file beside it, renamed over it once whole: a run stopped while it is
    written (Ctrl-C, SIGTERM) leaves no file, never a truncated one that reads as complete."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", newline=newline, encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_timings(run_dir: str) -> list[SampleTiming]:
    """The run's sample timings; [] when the run recorded none."""
    path = os.path.join(run_dir, TIMINGS_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [
                SampleTiming(
                    sample_index=int(row["sample_index"]),
                    issued_s=float(row["issued_s"]),
                    first_token_s=float(row["first_token_s"]) if row["first_token_s"] else None,
                    completed_s=float(row["completed_s"]),
                    n_tokens=int(row["n_tokens"]),
                )
                for row in csv.DictReader(f)
            ]
    except (OSError, ValueError, TypeError, KeyError, csv.Error) as exc:
        log.warning("%s: unreadable, partial or corrupt (%s): no sample timings", path,
                    getattr(exc, "strerror", None) or exc)
        return []
