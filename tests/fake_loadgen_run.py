#!/usr/bin/env python3
"""A seconds-long real LoadGen run against a fake SUT, for tests that need genuine LoadGen logs.

Usage: python fake_loadgen_run.py OUTDIR SCENARIO MODE [--samples N] [--tokens T] [--delay-ms D] [--min-duration-ms M]
SCENARIO is Offline or Server, MODE is accuracy or performance. The fake SUT answers every sample with
T int32 tokens (the last one EOS = 2) after D milliseconds, sending the first token first in Server.
It records sample_timings.csv and run_info.json the way main.py does.
"""

import argparse
import array
import threading
import time

import mlperf_loadgen as lg

from mlperf_llama2.report.run_info import RunInfo, write_run_info
from mlperf_llama2.report.timings import TimingRecorder

EOS = 2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument("scenario", choices=("Offline", "Server"))
    p.add_argument("mode", choices=("accuracy", "performance"))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--min-duration-ms", type=int, default=200,
                   help="LoadGen's min_duration; one far beyond the run's length makes it INVALID whatever the "
                        "machine's speed (Offline then expects just --samples over that time)")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--dataset", default=None, help="recorded in run_info.json (reference lengths for plots)")
    a = p.parse_args()

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server if a.scenario == "Server" else lg.TestScenario.Offline
    settings.mode = lg.TestMode.AccuracyOnly if a.mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.use_token_latencies = True
    settings.min_duration_ms = a.min_duration_ms
    settings.min_query_count = a.samples
    settings.server_target_qps = 50
    settings.ttft_latency = 2_000_000_000
    settings.tpot_latency = 200_000_000
    settings.offline_expected_qps = min(100.0, a.samples * 1000.0 / a.min_duration_ms)

    recorder = TimingRecorder()
    write_run_info(a.outdir, RunInfo(scenario=a.scenario, accuracy=a.mode == "accuracy", max_new_tokens=a.tokens,
                                     model_path=None, dataset_path=a.dataset))

    def answer(samples):
        for s in samples:
            recorder.issued(s.id, s.index)
            time.sleep(a.delay_ms / 1000)
            tokens = array.array("i", [100 + (s.index % 7)] * (a.tokens - 1) + [EOS])
            addr, _ = tokens.buffer_info()
            if a.scenario == "Server":
                first = array.array("i", tokens[:1])
                lg.FirstTokenComplete([lg.QuerySampleResponse(s.id, first.buffer_info()[0], 4, 1)])
                recorder.first_token(s.id)
                time.sleep(a.delay_ms / 1000)
            recorder.completed(s.id, len(tokens))
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, addr, len(tokens) * 4, len(tokens))])

    def issue(samples):
        threading.Thread(target=answer, args=(list(samples),)).start()

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(a.samples, a.samples, lambda s: None, lambda s: None)
    out = lg.LogOutputSettings()
    out.outdir = a.outdir
    out.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = out
    log_settings.enable_trace = a.trace
    lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, "no-audit.config")
    recorder.write(a.outdir)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)


if __name__ == "__main__":
    main()
