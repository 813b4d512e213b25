"""Live progress bar (mlperf_llama2/report/progress.py): its text, when it is shown, and that it keeps
out of non-terminal output and out of log lines."""

import io
import logging

from mlperf_llama2.report.progress import (
    CLEAR_LINE,
    ProgressBar,
    format_duration,
    format_line,
    progress_stream,
    should_show,
)


class FakeTty(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(83.4) == "1:23"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == format_duration(float("inf")) == "--:--"


def test_line_shows_samples_rate_elapsed_and_eta():
    line = format_line("Offline accuracy", 64, 256, 3200, 40.0, width=8)
    assert line == "Offline accuracy [##------] 64/256 | 80.0 tok/s | 0:40 elapsed | ETA 2:00"


def test_line_before_any_sample_has_no_eta_and_never_overflows():
    assert format_line("", 0, 10, 0, 0.0, width=4) == "[----] 0/10 | 0.0 tok/s | 0:00 elapsed | ETA --:--"
    assert format_line("", 12, 10, 5, 1.0, width=4).startswith("[####] 12/10")


def test_shown_only_on_a_terminal_and_not_with_no_progress(monkeypatch):
    monkeypatch.delenv("MLPERF_LLAMA2_PROGRESS_TTY", raising=False)
    assert should_show(FakeTty(), no_progress=False)
    assert not should_show(FakeTty(), no_progress=True)
    assert not should_show(io.StringIO(), no_progress=False)
    assert progress_stream(False, io.StringIO()) is None
    tty = FakeTty()
    assert progress_stream(False, tty) is tty and progress_stream(True, tty) is None


def test_disabled_bar_writes_nothing_but_still_counts():
    out = io.StringIO()
    bar = ProgressBar(4, stream=out, enabled=False)
    bar.update(1, 10)
    bar.update(3, 30)
    bar.close()
    assert out.getvalue() == ""
    assert (bar.done, bar.tokens) == (4, 40)


def test_bar_redraws_in_place_at_most_every_interval_and_ends_the_line():
    out, clock = FakeTty(), Clock()
    bar = ProgressBar(3, label="run", stream=out, clock=clock, min_interval_s=1.0)
    clock.now += 2
    bar.update(1, 20)  # first draw
    clock.now += 0.5
    bar.update(1, 20)  # too soon: no draw
    assert out.getvalue().count(CLEAR_LINE) == 1
    assert "1/3 | 10.0 tok/s" in out.getvalue()
    clock.now += 0.1
    bar.update(1, 20)  # last sample: always drawn
    bar.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert "3/3" in text.split(CLEAR_LINE)[-1]


def test_log_records_clear_the_bar_first():
    out = FakeTty()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = ProgressBar(2, stream=out, min_interval_s=0.0)
        bar.update(1, 5)
        logging.getLogger("x").warning("hello")
        bar.close()
        logging.getLogger("x").warning("after")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    before_log = text[:text.index("hello")]
    assert before_log.endswith(CLEAR_LINE)  # the bar line was wiped, the record starts at column 0
    after_close = text[text.rindex("1/2"):]  # the final bar line, its newline, then the later record
    assert after_close.endswith("after\n") and CLEAR_LINE not in after_close
