#!/usr/bin/env python3
"""Soak and overload test of the harness: one LoadGen performance run of many short queries, with
resident memory sampled as samples complete. Prints a table, writes JSON, exits 1 on a finding.

  python tools/soak.py --model-path EOS_MODEL --dataset-path data.pkl --queries 5000 \\
      --scenario Server --target-qps 40 --json soak.json

The run is main.py's (same checks, settings, backend and SUT) with a generated user.conf: no minimum
duration, `--queries` as the minimum query count, the dataset's rows as performance sample count,
and every response copied to the accuracy log (TestSettings.accuracy_log_probability = 1), so that "every
query answered exactly once" is read from LoadGen's own log: one entry per issued sample, unique
seq_ids. Memory: RSS after warm-up (the first `--warmup` fraction of samples) is the baseline; the
growth is (last - baseline) / baseline. Findings: growth above `--max-growth-pct`, an unanswered,
failed or repeated sample, or LoadGen errors. With a target QPS far above capacity the run must
still complete (LoadGen reports INVALID) with every query answered once and memory bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mlperf_llama2.errors import UserError, configure_logging, run_cli  # noqa: E402
from mlperf_llama2.loadgen.sut import RunObserver  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class MemoryProbe(RunObserver):
    """Samples RSS every `every` completed samples (called from the backend's threads)."""

    def __init__(self, every: int):
        self.every = max(1, every)
        self.done = 0
        self.issued = 0
        self.failed = 0
        self.points: list[dict] = []
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def mark(self) -> None:
        self.points.append({"done": self.done, "issued": self.issued, "rss_mb": round(rss_mb(), 1),
                            "elapsed_s": round(time.monotonic() - self._start, 1)})

    # Arguments are read loosely: the RunObserver hooks gain request ids on the demo branch.
    def samples_issued(self, issued) -> None:
        with self._lock:
            self.issued += issued if isinstance(issued, int) else len(issued)

    def sample_failed(self, *_args) -> None:
        with self._lock:
            self.failed += 1

    def sample_done(self, *_args) -> None:
        with self._lock:
            self.done += 1
            if self.done % self.every == 0:
                self.mark()


def user_conf(scenario: str, queries: int, target_qps: float, samples: int) -> str:
    return "\n".join([
        f"*.{scenario}.min_duration = 0",
        f"*.{scenario}.min_query_count = {queries}",
        f"*.Server.target_qps = {target_qps}",
        f"*.Offline.target_qps = {target_qps}",
        f"*.*.performance_sample_count_override = {samples}",
        "",
    ])


def read_loadgen(log_dir: str) -> dict:
    """Result, error count and exactly-once facts from LoadGen's logs."""
    summary = (Path(log_dir) / "mlperf_log_summary.txt").read_text()
    result = next((line.split(":", 1)[1].strip() for line in summary.splitlines() if line.startswith("Result is")), "?")
    found = re.search(r"(\d+) ERRORS? encountered", summary)
    errors = int(found.group(1)) if found else 0
    entries = json.loads((Path(log_dir) / "mlperf_log_accuracy.json").read_text())
    seq_ids = [e["seq_id"] for e in entries]
    return {"result": result, "loadgen_errors": errors, "logged_responses": len(entries),
            "unique_seq_ids": len(set(seq_ids)), "empty_responses": sum(1 for e in entries if not e["data"])}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--dataset-path", required=True)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--scenario", choices=("Offline", "Server"), default="Server")
    p.add_argument("--target-qps", type=float, default=40.0)
    p.add_argument("--batch-size", type=int, default=8, help="Offline batch per worker (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of samples before the RSS baseline")
    p.add_argument("--points", type=int, default=20, help="RSS samples over the run")
    p.add_argument("--max-growth-pct", type=float, default=10.0)
    p.add_argument("--expect", choices=("any", "VALID", "INVALID"), default="any",
                   help="LoadGen result the run must report")
    p.add_argument("--output-log-dir", default=None, help="LoadGen logs (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.queries < 1 or not 0 <= args.warmup < 1:
        raise UserError("--queries must be >= 1 and --warmup in [0, 1)")
    from mlperf_llama2.backends.registry import create_backend
    from mlperf_llama2.harness import check_inputs, parse_config
    from mlperf_llama2.loadgen.runner import run_test
    from mlperf_llama2.loadgen.settings import build_settings

    work = tempfile.mkdtemp(prefix="soak-")
    log_dir = args.output_log_dir or os.path.join(work, "logs")
    conf = os.path.join(work, "user.conf")
    base = ["--model-path", args.model_path, "--dataset-path", args.dataset_path, "--scenario", args.scenario,
            "--device", args.device, "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
            str(args.batch_size), "--output-log-dir", log_dir, "--user-conf", conf]
    Path(conf).write_text(user_conf(args.scenario, args.queries, args.target_qps, 1))  # checked with the inputs
    dataset = check_inputs(parse_config(base))
    Path(conf).write_text(user_conf(args.scenario, args.queries, args.target_qps, dataset.total_sample_count))
    config = parse_config(base)
    settings = build_settings(config)
    settings.test.accuracy_log_probability = 1.0  # LoadGen reads this key only from an audit.config
    backend = create_backend(config)
    probe = MemoryProbe(args.queries // max(1, args.points))
    probe.mark()
    result = run_test(config.scenario, backend, dataset, settings, max_new_tokens=config.max_new_tokens,
                      observers=[probe])
    probe.mark()
    facts = read_loadgen(log_dir)
    warm = [p for p in probe.points if p["done"] >= args.warmup * probe.done and p["done"] > 0]
    baseline = warm[0]["rss_mb"] if warm else probe.points[0]["rss_mb"]
    last = probe.points[-1]["rss_mb"]
    report = {
        "scenario": args.scenario, "target_qps": args.target_qps, "queries_requested": args.queries,
        "issued": probe.issued, "answered": result.samples, "failed": len(result.failures),
        "wall_s": round(result.wall_s, 1),
        "achieved_qps": round(result.samples / result.wall_s, 1) if result.wall_s else None,
        "rss_start_mb": probe.points[0]["rss_mb"], "rss_baseline_mb": baseline, "rss_last_mb": last,
        "rss_peak_mb": max(p["rss_mb"] for p in probe.points),
        "growth_pct": round(100.0 * (last - baseline) / baseline, 2), **facts, "points": probe.points,
    }
    print(f"{'done':>7} {'issued':>7} {'rss MB':>8} {'elapsed s':>10}")
    for p in probe.points:
        print(f"{p['done']:>7} {p['issued']:>7} {p['rss_mb']:>8.1f} {p['elapsed_s']:>10.1f}")
    print(f"{report['answered']} of {report['issued']} samples answered in {report['wall_s']} s "
          f"({report['achieved_qps']} QPS) at target {args.target_qps}; LoadGen: {facts['result']}, "
          f"{facts['loadgen_errors']} errors; RSS {baseline} -> {last} MB "
          f"({report['growth_pct']:+.2f}% after warm-up), peak {report['rss_peak_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    findings = []
    if report["growth_pct"] > args.max_growth_pct:
        findings.append(f"RSS grew {report['growth_pct']}% (> {args.max_growth_pct}%)")
    if not (report["answered"] == report["issued"] == facts["logged_responses"] == facts["unique_seq_ids"]):
        findings.append("not every issued sample was answered exactly once")
    if report["failed"] or facts["loadgen_errors"]:
        findings.append(f"{report['failed']} failed samples, {facts['loadgen_errors']} LoadGen errors")
    if args.expect != "any" and facts["result"] != args.expect:
        findings.append(f"LoadGen result {facts['result']}, expected {args.expect}")
    for finding in findings:
        print(f"soak: FINDING: {finding}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
