"""Audit of the SUT's responder and the run's reported numbers: what the harness records and prints must be what
LoadGen got and logged, or say that it is the harness's own measurement.

Responder tests replace LoadGen's two completion calls by recorders (as tests/test_loadgen_sut.py does); summary
tests read genuine LoadGen logs of a fake SUT (tests/fake_loadgen_run.py), edited where a state is needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.loadgen import runner
from mlperf_llama2.loadgen.sut import Responder
from mlperf_llama2.report import plots, summary as summary_module
from mlperf_llama2.report.observer import ReportObserver
from mlperf_llama2.report.summary import build_summary, parse_detail, render_table, write_summary
from mlperf_llama2.report.timings import TIMINGS_FILE, TimingRecorder, read_timings
from test_loadgen_sut import calls  # noqa: F401 - the fixture recording LoadGen's completion calls

HERE = Path(__file__).resolve().parent
EOS = 2
SAMPLES, TOKENS = 24, 6


def _tracked(server: bool) -> tuple[Responder, ReportObserver]:
    observer = ReportObserver(total=2, label="", stream=None)
    r = Responder(EOS, report_first_tokens=server, observers=[observer])
    r.track([GenerationRequest(7, 3, (1, 5), 8), GenerationRequest(8, 4, (1, 6), 8)])
    return r, observer


@pytest.mark.parametrize("server", [False, True])
def test_a_repeated_or_unknown_completion_is_not_counted_by_the_progress_bar_or_timings(calls, server, tmp_path):
    """LoadGen gets one response per sample; the bar and sample_timings.csv counted a second complete() again."""
    r, observer = _tracked(server)
    r.complete(7, [11, 12, EOS])
    r.complete(7, [11, 12, 13, EOS])  # a backend answering the same request twice
    r.complete(99, [11, 12])  # an id LoadGen never issued
    assert [c[1] for c in calls if c[0] == "complete"] == [7]
    assert (observer.progress.done, observer.progress.tokens) == (1, 3)
    observer.finish(str(tmp_path))
    rows = read_timings(str(tmp_path))
    assert [(t.sample_index, t.n_tokens) for t in rows] == [(3, 3)]


def test_a_sample_answered_empty_by_the_stop_is_not_recorded_with_the_backends_late_tokens(calls, tmp_path):
    """A stopped run answers outstanding samples empty; a backend that completes one afterwards must not put its
    tokens into sample_timings.csv (LoadGen's accuracy log holds the empty answer) nor into the bar."""
    r, observer = _tracked(server=False)
    r.fail(7, RuntimeError("boom"))  # stops the run: request 8 is answered empty at once
    r.complete(8, [21, 22, 23, EOS])  # the backend's late answer
    assert [(c[1], c[3]) for c in calls] == [(7, 0), (8, 0)]
    assert r.skipped == 1 and r.samples_done == 0
    assert observer.progress.tokens == 0
    observer.finish(str(tmp_path))
    assert [(t.sample_index, t.n_tokens) for t in read_timings(str(tmp_path))] == [(3, 0)]


def test_a_failure_for_an_unknown_request_is_not_logged_as_sample_minus_one(calls, caplog):
    r, _ = _tracked(server=False)
    with caplog.at_level(logging.ERROR):
        r.fail(99, RuntimeError("boom"))
    assert not calls and not r.failures and r.abort_reason is None
    assert "sample -1" not in caplog.text and "unknown or already answered request 99" in caplog.text


def test_a_first_token_that_is_not_the_responses_first_is_counted_and_warned(calls, caplog):
    """LoadGen times TTFT on FirstTokenComplete; a backend that reports a token its response does not start with
    (e.g. a placeholder sent early) gets a TTFT that does not time its output: say so."""
    r, _ = _tracked(server=True)
    with caplog.at_level(logging.WARNING):
        r.first_token(7, 0)  # placeholder
        r.complete(7, [11, 12, EOS])
        r.first_token(8, 21)
        r.complete(8, [21, 22])  # consistent
    assert r.first_token_mismatches == 1
    assert "first token reported to LoadGen (0) is not the response's first token (11)" in caplog.text
    assert [c[0] for c in calls] == ["first", "complete", "first", "complete"]


def test_progress_total_follows_the_offline_query_loadgen_issued():
    """The bar's total is min_query_count; an Offline query of more samples (1.1 x min_duration x target_qps)
    showed e.g. 30/24 with no ETA."""
    observer = ReportObserver(total=6, label="", stream=None)
    observer.samples_issued([GenerationRequest(i, i % 3, (1,), 4) for i in range(24)])
    assert observer.progress.total == 24
    observer.samples_issued([GenerationRequest(100, 0, (1,), 4)])
    assert observer.progress.total == 25
    bigger = ReportObserver(total=50, label="", stream=None)
    bigger.samples_issued([GenerationRequest(1, 0, (1,), 4)])
    assert bigger.progress.total == 50  # never lowered (Server issues one sample at a time)


def _interrupt_midway(real_dump):
    def dump(obj, f, *args, **kwargs):
        f.write(json.dumps(obj)[:20])
        raise KeyboardInterrupt
    return dump


def test_ctrl_c_while_writing_summary_json_leaves_no_half_file(monkeypatch, tmp_path):
    s = summary_module.RunSummary(scenario="Offline", mode="PerformanceOnly", samples=1, tokens_per_s=1.0,
                                  ttft_p50_ms=None, ttft_p99_ms=None, tpot_p50_ms=None, tpot_p99_ms=None,
                                  verdict="VALID", reason="", loadgen_errors=0, max_new_tokens=1024, rouge=None,
                                  targets=None, model=None)
    monkeypatch.setattr(summary_module.json, "dump", _interrupt_midway(json.dump))
    with pytest.raises(KeyboardInterrupt):
        write_summary(str(tmp_path), s)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_writing_sample_timings_leaves_no_truncated_csv(monkeypatch, tmp_path):
    """A csv cut at a row boundary reads as a whole, shorter run."""
    recorder = TimingRecorder()
    for i in range(10):
        recorder.issued(i, i)
        recorder.completed(i, 5)
    import csv as csv_module

    real_writer = csv_module.writer

    def writer(f, *args, **kwargs):
        w = real_writer(f, *args, **kwargs)

        class Cut:
            rows = 0

            def writerow(self, row):
                Cut.rows += 1
                if Cut.rows > 4:
                    raise KeyboardInterrupt
                return w.writerow(row)
        return Cut()

    monkeypatch.setattr(csv_module, "writer", writer)
    with pytest.raises(KeyboardInterrupt):
        recorder.write(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_writing_save_outputs_leaves_no_half_file(monkeypatch, tmp_path):
    path = tmp_path / "outputs.json"
    monkeypatch.setattr(runner.json, "dump", _interrupt_midway(json.dump))
    with pytest.raises(KeyboardInterrupt):
        runner.write_outputs(str(path), "Offline", {0: [1, 2, 3]})
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sutaudit")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    procs = {}
    for scenario in ("Offline", "Server"):
        out = root / scenario
        out.mkdir()
        procs[scenario] = (out, subprocess.Popen(
            [sys.executable, str(HERE / "fake_loadgen_run.py"), str(out), scenario, "performance",
             "--samples", str(SAMPLES), "--tokens", str(TOKENS)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    dirs = {}
    for scenario, (out, proc) in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        dirs[scenario] = out
    return dirs


def _summary_txt(run_dir: Path) -> dict[str, str]:
    out = {}
    for line in (run_dir / "mlperf_log_summary.txt").read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip(), value.strip())
    return out


def test_server_numbers_equal_loadgens_summary(runs):
    run_dir = runs["Server"]
    text = _summary_txt(run_dir)
    s = build_summary(str(run_dir))
    assert s.tokens_per_s == pytest.approx(float(text["Completed tokens per second"]), abs=0.006)  # 2 decimals there
    assert s.ttft_p50_ms == pytest.approx(int(text["50.00 percentile first token latency (ns)"]) / 1e6)
    assert s.ttft_p99_ms == pytest.approx(int(text["99.00 percentile first token latency (ns)"]) / 1e6)
    assert s.tpot_p50_ms == pytest.approx(int(text["50.00 percentile time to output token (ns)"]) / 1e6)
    assert s.tpot_p99_ms == pytest.approx(int(text["99.00 percentile time to output token (ns)"]) / 1e6)
    assert s.verdict == text["Result is"]
    assert re.search(r"Processed (\d+) queries", (run_dir / "mlperf_log_summary.txt").read_text()).group(1) == \
        str(s.samples)


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_samples_is_loadgens_count_not_the_rows_of_sample_timings(runs, tmp_path, scenario):
    """A sample_timings.csv short of rows (an observer that missed samples, a stopped write) made the table's
    'samples' its row count; LoadGen's logged count is what the run measured."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs[scenario], run_dir)
    detail, _ = parse_detail(str(run_dir / "mlperf_log_detail.txt"))
    loadgen_count = detail["result_query_count"] * detail["generated_samples_per_query"]
    assert loadgen_count == SAMPLES
    timings = run_dir / TIMINGS_FILE
    timings.write_text("".join(timings.read_text().splitlines(keepends=True)[:11]))  # header + 10 rows
    s = build_summary(str(run_dir))
    assert s.samples == SAMPLES and not s.samples_counted_by_us
    assert re.search(rf"^samples +: {SAMPLES}$", render_table(s), re.M)
    # LoadGen logged no result (killed): the count is ours and says so
    detail_path = run_dir / "mlperf_log_detail.txt"
    detail_path.write_text("".join(line for line in detail_path.read_text().splitlines(keepends=True)
                                   if '"key": "result_' not in line))
    s = build_summary(str(run_dir))
    assert s.samples == 10 and s.samples_counted_by_us
    assert "10 (counted by us from sample_timings.csv" in render_table(s)


def test_latency_plot_marks_loadgens_p99_or_labels_its_own(runs):
    ttft, tpot = plots.loadgen_p99_ms(str(runs["Server"]))
    detail, _ = parse_detail(str(runs["Server"] / "mlperf_log_detail.txt"))
    assert ttft == pytest.approx(detail["result_first_token_99.00_percentile_latency_ns"] / 1e6)
    assert tpot == pytest.approx(detail["result_time_per_output_token_99.00_percentile_ns"] / 1e6)
    value, label = plots.p99_marker([1.0, 2.0, 3.0], 2000.0, ttft)
    assert value == ttft and label.endswith("ms (LoadGen)")
    value, label = plots.p99_marker([1.0, 2.0, 3.0], 2000.0, None)
    assert value == 3.0 and "harness clock, not LoadGen's" in label
    assert plots.p99_marker([39.97], 40.0, None)[1].startswith("p99 39.97 ms")  # never rounded onto the limit


class _AnsweringBackend:
    """Answers each submitted request at once with two tokens."""

    name = "answering"
    eos_token_id = EOS
    network_name = None

    def start(self, sink):
        self.sink = sink

    def submit(self, requests):
        for r in requests:
            self.sink.complete(r.request_id, [10 + r.sample_index, EOS])

    def flush(self):
        pass

    def stop(self):
        pass


def test_an_interrupted_run_does_not_leave_an_earlier_runs_save_outputs_file(calls, monkeypatch, tmp_path):
    """--overwrite lets --save-outputs name an earlier run's file; a run stopped by Ctrl-C never replaced it, so
    the earlier outputs read as this run's. Now the file holds this run's outputs, marked as stopped."""
    from types import SimpleNamespace

    from mlperf_llama2.data.dataset import Dataset
    from mlperf_llama2.errors import Interrupted

    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"scenario": "Offline", "outputs": {"0": [99, 99, EOS], "1": [98, EOS]}}))
    sut_holder = {}
    real_sut_class = runner.sut_class

    def sut_class(scenario):
        cls = real_sut_class(scenario)

        class Kept(cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                sut_holder["sut"] = self
        return Kept

    class Sample:
        def __init__(self, id, index):
            self.id, self.index = id, index

    def interrupted_run(start_test, *, abort, stop, log_dir):
        sut_holder["sut"].issue_queries([Sample(1, 0)])  # one sample generated, then Ctrl-C
        abort("interrupted by SIGINT")
        raise Interrupted()

    for name in ("ConstructSUT", "ConstructQSL", "DestroySUT", "DestroyQSL"):
        monkeypatch.setattr(runner.lg, name, lambda *a: None)
    monkeypatch.setattr(runner, "sut_class", sut_class)
    monkeypatch.setattr(runner, "run_interruptibly", interrupted_run)
    settings = SimpleNamespace(effective=None, output_dir=str(tmp_path), test=SimpleNamespace(mode=None), log=None)
    dataset = Dataset(path="x", prompts=((1, 5), (1, 6)), targets=None)
    with pytest.raises(Interrupted):
        runner.run_test("Offline", _AnsweringBackend(), dataset, settings, max_new_tokens=4,
                        save_outputs=str(outputs))
    saved = json.loads(outputs.read_text())
    assert saved["outputs"] == {"0": [10, EOS]} and saved["run_stopped"] == "interrupted by SIGINT"


def test_outputs_of_a_run_stopped_by_a_failed_sample_are_marked(tmp_path):
    path = tmp_path / "o.json"
    runner.write_outputs(str(path), "Server", {2: [5, EOS]}, stopped="sample 3 could not be generated")
    assert json.loads(path.read_text())["run_stopped"] == "sample 3 could not be generated"
    runner.write_outputs(str(path), "Server", {2: [5, EOS]})
    assert "run_stopped" not in json.loads(path.read_text())
