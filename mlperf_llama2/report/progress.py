"""A live one-line progress bar on stderr for a LoadGen run: samples done/total, generated tokens/s, elapsed, ETA.

Shown only when the stream is a terminal and the user did not pass --no-progress; otherwise every call
is a no-op, so logs and CI output never contain carriage returns. A wrapper script that pipes stderr
into a log file (run_accuracy.sh | tee) sets MLPERF_LLAMA2_PROGRESS_TTY=1: the bar then goes to the
controlling terminal (/dev/tty) when there is one, and never into the piped log. Backend threads call `update` as
samples complete; the bar redraws at most every `min_interval_s`. While it is shown, log records
written to the same stream first clear the bar's line (it is redrawn on the next update), so a log
line is never glued to the bar. LoadGen's own logs go to files and its summary to stdout: never here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

BAR_WIDTH = 24
TTY_ENV = "MLPERF_LLAMA2_PROGRESS_TTY"
CLEAR_LINE = "\r\x1b[K"


def should_show(stream: TextIO, no_progress: bool) -> bool:
    """True when a live bar belongs on `stream`: a terminal, and not switched off."""
    if no_progress:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def progress_stream(no_progress: bool, stderr: TextIO | None = None) -> Optional[TextIO]:
    """Where the bar goes: stderr when it is a terminal, else /dev/tty if TTY_ENV asks for it, else nowhere."""
    stderr = stderr if stderr is not None else sys.stderr
    if should_show(stderr, no_progress):
        return stderr
    if no_progress or os.environ.get(TTY_ENV) != "1":
        return None
    try:
        tty = open("/dev/tty", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run's bar
    except OSError:
        return None
    return tty if should_show(tty, False) else None


def format_duration(seconds: Optional[float]) -> str:
    """H:MM:SS or M:SS; '--:--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "--:--"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_line(label: str, done: int, total: int, tokens: int, elapsed_s: float, width: int = BAR_WIDTH) -> str:
    """The bar's text, e.g. 'Offline accuracy [######------] 120/256 | 85.3 tok/s | 1:23 elapsed | ETA 1:35'."""
    fraction = min(done / total, 1.0) if total > 0 else 0.0
    filled = int(fraction * width)
    rate = tokens / elapsed_s if elapsed_s > 0 else 0.0
    eta = elapsed_s * (total - done) / done if 0 < done <= total else None
    prefix = f"{label} " if label else ""
    return (
        f"{prefix}[{'#' * filled}{'-' * (width - filled)}] {done}/{total} | {rate:.1f} tok/s | "
        f"{format_duration(elapsed_s)} elapsed | ETA {format_duration(eta)}"
    )


class _ClearBarBeforeLogging(logging.Filter):
    """Attached to log handlers writing to the bar's stream: wipe the bar line before each record."""

    def __init__(self, bar: "ProgressBar") -> None:
        super().__init__()
        self.bar = bar

    def filter(self, record: logging.LogRecord) -> bool:
        self.bar.clear()
        return True


class ProgressBar:
    """Thread-safe progress of one run; disabled (all no-ops) unless `enabled`."""

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 0.2,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.done = 0
        self.tokens = 0
        self._lock = threading.Lock()
        self._start = clock()
        self._last_draw: Optional[float] = None
        self._shown = False
        self._closed = False
        self._filter = _ClearBarBeforeLogging(self)
        self._handlers: list[logging.Handler] = []
        if enabled:
            for handler in logging.getLogger().handlers:
                if getattr(handler, "stream", None) is self.stream:
                    handler.addFilter(self._filter)
                    self._handlers.append(handler)

    def line(self) -> str:
        return format_line(self.label, self.done, self.total, self.tokens, self.clock() - self._start)

    def update(self, samples: int = 1, tokens: int = 0) -> None:
        """Count finished samples and their generated tokens; redraw if due."""
        with self._lock:
            self.done += samples
            self.tokens += tokens
            if not self.enabled or self._closed:
                return
            now = self.clock()
            if self._last_draw is None or now - self._last_draw >= self.min_interval_s or self.done >= self.total:
                self._draw(now)

    def expect_at_least(self, total: int) -> None:
        """Raise the total to `total` (LoadGen issued more samples than first expected); never lowers it."""
        with self._lock:
            self.total = max(self.total, total)

    def clear(self) -> None:
        """Wipe the bar's line (before someone else writes to the stream)."""
        if self._shown and not self._closed:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        """Draw the final state and end the line; detach from log handlers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self.enabled:
                self._draw(self.clock())
                self.stream.write("\n")
                self.stream.flush()
            self._closed = True
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers.clear()

    def _draw(self, now: float) -> None:
        self.stream.write(CLEAR_LINE + format_line(self.label, self.done, self.total, self.tokens, now - self._start))
        self.stream.flush()
        self._last_draw = now
        self._shown = True

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
