"""The Server sweep of tools/bench.py: LoadGen Server -> the project's SUT -> a backend, one LoadGen run per QPS.

Each point is a real LoadGen Server PerformanceOnly test, set up the way main.py sets one up
(`mlperf_llama2.loadgen.settings.build_settings` over a user.conf written for the sweep, then
`runner.run_test`): LoadGen's built-in llama2-70b keys (token latencies, equal issue, seeds), then
`min_duration` (the flag), `min_query_count` 1 so the duration governs, and the latency limits
written out explicitly (llama2-70b: TTFT 2000 ms / TPOT 200 ms; llama2-70b-interactive: 450 / 40 ms);
per point `server_target_qps` and the samples loaded (`point_sample_count`). The results are LoadGen's
own: p99 TTFT and TPOT, completed samples and tokens per second and "Result is : VALID/INVALID",
read from mlperf_log_summary.txt (`parse_summary`), and the errors of mlperf_log_detail.txt.

The sweep is explicit points and/or an automatic search (`auto_sweep`) over fractions of the
Offline capacity (Offline tokens/s / mean output tokens); `best_point` is the highest QPS whose p99
TTFT and TPOT both meet the limits. The backend is bench_paths.ForcedLengthEngine: forced output
lengths, EOS ignored, every generated token counted by LoadGen. No torch here (tests import it bare).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mlperf_llama2 import constants

log = logging.getLogger("bench")

NS_PER_MS = 1e6


@dataclass(frozen=True)
class Limits:
    """One latency limit set: the LoadGen model name that selects it, its p99 TTFT / TPOT in ms, and the
    fractions of the Offline capacity the automatic sweep searches between (`auto_range`: low, start, high)."""

    name: str
    lg_model_name: str
    ttft_ms: float
    tpot_ms: float
    auto_range: tuple[float, float, float]


SERVER = Limits("server", constants.LG_MODEL_NAME, constants.SERVER_TTFT_MS, constants.SERVER_TPOT_MS,
                (0.6, 0.9, 1.0))
INTERACTIVE = Limits("interactive", constants.LG_MODEL_NAME_INTERACTIVE, constants.INTERACTIVE_TTFT_MS,
                     constants.INTERACTIVE_TPOT_MS, (0.0, 0.5, 1.0))


def user_conf_text(limits: Limits, duration_s: float, min_queries: int = 1) -> str:
    """The sweep's user.conf: everything but the per-point target QPS and sample count (`ServerRuns.measure`).
    min_queries: LoadGen's min_query_count (1: the duration governs; the issue's VALID points need >= 500)."""
    m = limits.lg_model_name
    return (f"{m}.Server.min_duration = {int(round(duration_s * 1000))}\n"
            f"{m}.Server.min_query_count = {min_queries}\n"
            f"{m}.Server.ttft_latency = {limits.ttft_ms:g}\n"
            f"{m}.Server.tpot_latency = {limits.tpot_ms:g}\n")


def point_sample_count(qps: float, duration_s: float, available: int, min_queries: int = 1) -> int:
    """Samples LoadGen loads for one point: the queries `duration_s` takes at `qps` (at least `min_queries`) plus
    3 sigma, at most `available`.

    llama2-70b runs in equal-issue mode (mlperf.conf's sample_concatenate_permutation = 1): the
    query count is rounded up to a multiple of the loaded samples. Loading just more than the
    Poisson schedule needs makes the run last about `duration_s` with every loaded sample issued once.
    """
    expected = max(qps * duration_s, min_queries)
    return max(1, min(available, math.ceil(expected + 3 * math.sqrt(expected))))


_SUMMARY_KEYS = {  # mlperf_log_summary.txt label (LoadGen 6.0.17, Server, token latencies) -> JSON key
    "Scheduled samples per second": "scheduled_samples_per_s",
    "Completed samples per second": "completed_samples_per_s",
    "Completed tokens per second": "completed_tokens_per_s",
    "99.00 percentile first token latency (ns)": "ttft_p99_ns",
    "99.00 percentile time to output token (ns)": "tpot_p99_ns",
    "Mean First Token latency (ns)": "ttft_mean_ns",
    "Mean Time per Output Token (ns)": "tpot_mean_ns",
    "99.00 percentile latency (ns)": "latency_p99_ns",
    "ttft_latency (ns)": "ttft_limit_ns",
    "tpot_latency (ns)": "tpot_limit_ns",
    "target_qps": "target_qps",
    "min_duration (ms)": "min_duration_ms",
    "min_query_count": "min_query_count",
    "performance_sample_count": "performance_sample_count",
}


def parse_summary(text: str) -> dict:
    """The numbers and verdict of a LoadGen mlperf_log_summary.txt: JSON keys of `_SUMMARY_KEYS`, ms
    fields derived from the ns ones, `valid` (bool), `result` ("VALID"/"INVALID") and `notes` (the
    summary's " * " lines: recommendations, early-stopping verdicts)."""
    out: dict = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        key = _SUMMARY_KEYS.get(label.strip())
        if sep and key and key not in out:  # the first occurrence: results come before the settings echo
            try:
                out[key] = float(value.strip())
            except ValueError:
                continue
    verdict = re.search(r"Result is\s*:\s*(VALID|INVALID)", text)
    out["result"] = verdict.group(1) if verdict else None
    out["valid"] = out["result"] == "VALID"
    out["notes"] = [m.strip() for m in re.findall(r"^\s*\*\s*(.+)$", text, re.MULTILINE)]
    for key in ("ttft_p99", "tpot_p99", "ttft_mean", "tpot_mean", "latency_p99", "ttft_limit", "tpot_limit"):
        if f"{key}_ns" in out:
            out[f"{key}_ms"] = out[f"{key}_ns"] / NS_PER_MS
    return out


def detail_errors(path: str) -> list[str]:
    """LoadGen's ERROR entries of mlperf_log_detail.txt (`:::MLLOG {json}` lines whose key is "error")."""
    errors = []
    with open(path) as fh:
        for line in fh:
            if line.startswith(":::MLLOG") and '"error"' in line:
                try:
                    entry = json.loads(line[len(":::MLLOG"):])
                except ValueError:
                    continue
                if entry.get("key") == "error":
                    errors.append(str(entry.get("value")))
    return errors


def meets(point: dict, limits: Limits) -> bool:
    """p99 TTFT and p99 TPOT (LoadGen's) within `limits`, and every sample answered."""
    return (point.get("ttft_p99_ms") is not None and point.get("tpot_p99_ms") is not None
            and point["ttft_p99_ms"] <= limits.ttft_ms and point["tpot_p99_ms"] <= limits.tpot_ms
            and not point.get("failures"))


def best_point(points: Sequence[dict]) -> Optional[dict]:
    """The highest-QPS point whose p99s meet its limits (`meets_limits`), or None."""
    ok = [p for p in points if p["meets_limits"]]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def setting_bests(points: Sequence[dict]) -> list[dict]:
    """Per (max_num_seqs, max_num_batched_tokens[, graph_mixed_tokens]) setting of a swept run, in first-measured
    order: its highest QPS meeting the limits (None if none did), that point's tokens/s and LoadGen verdict."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["max_num_seqs"], p["max_num_batched_tokens"], p.get("graph_mixed_tokens")),
                          []).append(p)
    rows = []
    for (seqs, tokens, flat), group in groups.items():
        best = best_point(group)
        row = {"max_num_seqs": seqs, "max_num_batched_tokens": tokens}
        if flat is not None:
            row["graph_mixed_tokens"] = flat
        rows.append({**row, "points": len(group),
                     "best_qps": best["qps"] if best else None,
                     "best_tokens_per_s": best["completed_tokens_per_s"] if best else None,
                     "best_valid": best["valid"] if best else None})
    return rows


def auto_sweep(capacity_qps: float, measure: Callable[[float], dict], max_points: int,
               auto_range: tuple[float, float, float]) -> list[dict]:
    """Bisect the fraction of `capacity_qps` between auto_range's low and high, starting at its start:
    a point that meets the limits raises the low end, one that misses lowers the high end; `max_points`
    LoadGen runs. Server (0.6, 0.9, 1.0) tries 0.9, then 0.95 or 0.75, ... Returns the points in order."""
    low, fraction, high = auto_range
    points: list[dict] = []
    for _ in range(max_points):
        point = measure(round(capacity_qps * fraction, 3))
        point["capacity_fraction"] = fraction
        points.append(point)
        if point["meets_limits"]:
            low = fraction
        else:
            high = fraction
        fraction = (low + high) / 2
    return points


class ServerRuns:
    """LoadGen Server runs at several QPS in one process, over one TestSettings built once.

    LoadGen reads its built-in mlperf.conf only on the process's first `FromConfig`; a second call
    logs "Multiple conf files are used" as an error and drops mlperf.conf's llama2-70b keys (token
    latencies, seeds, equal issue). So the settings are built once, as main.py builds them
    (`build_settings` over the sweep's user.conf), and each point changes only
    `server_target_qps` and `performance_sample_count_override`.
    """

    def __init__(self, backend, dataset, limits: Limits, duration_s: float, work_dir: str,
                 min_queries: int = 1) -> None:
        from mlperf_llama2.config import RunConfig
        from mlperf_llama2.loadgen.settings import build_settings

        self.backend, self.dataset, self.limits, self.duration_s = backend, dataset, limits, duration_s
        self.min_queries = min_queries
        os.makedirs(work_dir, exist_ok=True)
        self.user_conf = user_conf_text(limits, duration_s, min_queries)
        conf_path = os.path.join(work_dir, "user.conf")
        with open(conf_path, "w") as fh:
            fh.write(self.user_conf)
        config = RunConfig(scenario="Server", user_conf=conf_path, lg_model_name=limits.lg_model_name,
                           output_log_dir=os.path.join(work_dir, "server"),
                           total_sample_count=dataset.total_sample_count)
        self.settings = build_settings(config)

    def measure(self, qps: float) -> dict:
        """One LoadGen Server PerformanceOnly run at `qps`; LoadGen's results and the run's own counts."""
        from mlperf_llama2.loadgen.runner import run_test

        test = self.settings.test
        test.server_target_qps = qps
        test.performance_sample_count_override = point_sample_count(qps, self.duration_s,
                                                                    self.dataset.total_sample_count, self.min_queries)
        log.info("server %s: target %g QPS, min duration %.0f s, min queries %d, %d samples loaded, limits %g/%g ms",
                 self.limits.name, qps, self.duration_s, self.min_queries, test.performance_sample_count_override,
                 self.limits.ttft_ms, self.limits.tpot_ms)
        engine = getattr(self.backend, "engine", None)  # the engine backend: its steps timed (tools/step_timer.py)
        timer = None
        if engine is not None and hasattr(engine, "runner"):
            from step_timer import StepTimer

            timer = StepTimer(engine)
        with timer if timer is not None else contextlib.nullcontext():
            result = run_test("Server", self.backend, self.dataset, self.settings, audit_conf="no-audit.config",
                              max_new_tokens=constants.MAX_NEW_TOKENS)
        log_dir = self.settings.output_dir
        with open(os.path.join(log_dir, "mlperf_log_summary.txt")) as fh:
            summary_text = fh.read()
        point = {"qps": qps, "limits": self.limits.name, "samples": result.samples, "tokens": result.tokens,
                 "wall_s": result.wall_s, "failures": len(result.failures),
                 "samples_loaded": test.performance_sample_count_override, **parse_summary(summary_text),
                 "loadgen_errors": detail_errors(os.path.join(log_dir, "mlperf_log_detail.txt"))}
        point["meets_limits"] = meets(point, self.limits)
        if timer is not None:
            point["host"] = timer.summary()  # whether this point's steps waited on the GPU or on the host
        if hasattr(self.backend, "eos_replaced"):
            point["eos_ids_replaced"] = self.backend.eos_replaced()
        return point


def point_line(p: dict) -> str:
    flat = f", graph-mixed {p['graph_mixed_tokens']}" if "graph_mixed_tokens" in p else ""
    setting = (f" [seqs {p['max_num_seqs']}, budget {p['max_num_batched_tokens']}{flat}]"
               if "max_num_batched_tokens" in p else "")
    host = p.get("host") or {}
    steps = (f"; steps {host['step_ms_mean']:.1f} ms (busy {host['busy_ms_mean']:.1f}), launch "
             f"{host['launch_ms_mean']:.1f} ms, waiting for the GPU {host['wait_share']:.0%} of the busy time"
             if host.get("steps") else "")
    clock = p.get("gpu_clock") or {}  # tools/gpu_clock.py, where bench.py sampled it
    steps += f"; SM clock median {clock['mhz_median']:,.0f} MHz, {clock['watts_median']:.0f} W" if clock else ""
    return (f"server {p['limits']:<11} qps {p['qps']:>7.3f}{setting}: "
            f"{p.get('completed_samples_per_s', 0):.2f} samples/s, "
            f"{p.get('completed_tokens_per_s', 0):.0f} tok/s, p99 TTFT {p.get('ttft_p99_ms', float('nan')):.0f} ms, "
            f"p99 TPOT {p.get('tpot_p99_ms', float('nan')):.1f} ms, p99s {'meet' if p['meets_limits'] else 'miss'} "
            f"the limits, LoadGen {p['result']}{steps}")


def sweep_lines(sweep: dict) -> list[str]:
    """The table's Server lines: the settings, one line per point, the highest QPS meeting the limits."""
    lim = sweep["limits"]
    lines = [f"LoadGen Server PerformanceOnly ({lim['lg_model_name']}: p99 TTFT <= {lim['ttft_ms']:g} ms, "
             f"TPOT <= {lim['tpot_ms']:g} ms), min duration {sweep['min_duration_s']:g} s per point; "
             f"Offline {sweep['offline_tokens_per_s'] or float('nan'):.0f} tok/s ({sweep['offline_source']})"
             + (f" = {sweep['capacity_qps']:.2f} QPS at the mean output" if "capacity_qps" in sweep else "")]
    lines += [point_line(p) for p in sweep["points"]]
    for row in sweep.get("settings", []):
        flat = f" --graph-mixed-tokens {row['graph_mixed_tokens']}" if "graph_mixed_tokens" in row else ""
        lines.append(f"server: --max-num-seqs {row['max_num_seqs']} --max-num-batched-tokens "
                     f"{row['max_num_batched_tokens']}{flat}: " + (
                         "no point met the limits" if row["best_qps"] is None else
                         f"highest QPS meeting the limits {row['best_qps']:g} ({row['best_tokens_per_s']:.0f} tok/s, "
                         f"LoadGen {'VALID' if row['best_valid'] else 'INVALID'})"))
    if sweep.get("best_qps") is None:
        lines.append("server: no QPS point met the limits")
    else:
        ratio, ratio_24576 = sweep.get("ratio_to_offline"), sweep.get("ratio_to_offline_24576")
        lines.append(f"server: highest QPS meeting the limits {sweep['best_qps']:g} (LoadGen "
                     f"{'VALID' if sweep['best_valid'] else 'INVALID'}): {sweep['best_tokens_per_s']:.0f} tok/s"
                     + (f" = {ratio:.2f} of Offline (target >= 0.90)" if ratio is not None else "")
                     + (f", {ratio_24576:.2f} of that Offline extrapolated to 24,576 samples "
                        f"({sweep['offline_extrapolated_24576']:,.0f} tok/s: what a submission's Offline would show)"
                        if ratio_24576 is not None else ""))
    return lines
