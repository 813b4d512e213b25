"""PNG plots of a run directory (matplotlib, Agg backend: no display needed).

Server runs (needs `sample_timings.csv` with first-token times): TTFT and TPOT distributions against
their LoadGen limits, and completed tokens/s over time. Accuracy runs: histogram of generated lengths
(mlperf_log_accuracy.json, first entry per sample) against the dataset's reference answer lengths
(`tok_output_length`, from the dataset named in run_info.json or given). Any run with timings also
gets tokens/s over time. Returns the files written; a plot whose data is missing is skipped (logged).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

from mlperf_llama2 import constants
from mlperf_llama2.report.run_info import read_run_info
from mlperf_llama2.report.numbers import fmt_vs_limits
from mlperf_llama2.report.summary import DETAIL_FILE, accuracy_log_lengths, parse_detail
from mlperf_llama2.report.timings import SampleTiming, read_timings

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
THROUGHPUT_WINDOWS = 40


def _save(fig, path: str) -> str:
    """Lay out, write the PNG and free the figure (a long report must not accumulate open figures)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_limits_ms(run_dir: str) -> tuple[float, float]:
    """(TTFT, TPOT) limits in ms the run was held to: LoadGen's effective settings, else the llama2 values."""
    info = read_run_info(run_dir)
    interactive = info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE
    ttft, tpot = ((constants.INTERACTIVE_TTFT_MS, constants.INTERACTIVE_TPOT_MS) if interactive
                  else (constants.SERVER_TTFT_MS, constants.SERVER_TPOT_MS))
    detail_path = os.path.join(run_dir, DETAIL_FILE)
    if os.path.isfile(detail_path):
        detail, _ = parse_detail(detail_path)
        ttft = detail.get("requested_server_ttft_latency", ttft * 1e6) / 1e6
        tpot = detail.get("requested_server_tpot_latency", tpot * 1e6) / 1e6
    return float(ttft), float(tpot)


def loadgen_p99_ms(run_dir: str) -> tuple[Optional[float], Optional[float]]:
    """(TTFT, TPOT) p99 in ms as LoadGen's detail log states them; None where it logged none."""
    detail_path = os.path.join(run_dir, DETAIL_FILE)
    if not os.path.isfile(detail_path):
        return None, None
    detail, _ = parse_detail(detail_path)
    values = (detail.get("result_first_token_99.00_percentile_latency_ns"),
              detail.get("result_time_per_output_token_99.00_percentile_ns"))
    return tuple(None if v is None else float(v) / 1e6 for v in values)  # type: ignore[return-value]


def p99_marker(values_ms: Sequence[float], limit_ms: float, loadgen_ms: Optional[float]) -> tuple[float, str]:
    """Where the p99 line goes and its legend: LoadGen's p99 when its log has one (the number the run is judged
    by), else the p99 of sample_timings.csv, labelled as the harness's own measurement."""
    if loadgen_ms is not None:
        return loadgen_ms, f"p99 {fmt_vs_limits(loadgen_ms, [limit_ms])} ms (LoadGen)"
    p99 = sorted(values_ms)[min(len(values_ms) - 1, int(0.99 * len(values_ms)))]
    return p99, f"p99 {fmt_vs_limits(p99, [limit_ms])} ms (harness clock, not LoadGen's)"


def _histogram_with_limit(values_ms: Sequence[float], limit_ms: float, title: str, xlabel: str, path: str,
                          loadgen_p99: Optional[float] = None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    p99, p99_label = p99_marker(values_ms, limit_ms, loadgen_p99)
    # Bins span 0..max(data, limit, p99) so the limit and the bars share one readable axis.
    top = max(max(values_ms), limit_ms, p99) * 1.05
    ax.hist(values_ms, bins=[top * i / 50 for i in range(51)], color="tab:blue", alpha=0.8)
    ax.axvline(limit_ms, color="tab:red", linestyle="--", label=f"limit {limit_ms:g} ms")
    ax.axvline(p99, color="tab:orange", linestyle=":", label=p99_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend()
    return _save(fig, path)


def plot_latencies(timings: Sequence[SampleTiming], limits_ms: tuple[float, float], out_dir: str,
                   loadgen_p99: tuple[Optional[float], Optional[float]] = (None, None)) -> list[str]:
    """Histograms of the harness's per-sample TTFT / TPOT; the p99 line is LoadGen's where given."""
    ttft = [t.ttft_s * 1e3 for t in timings if t.ttft_s is not None]
    tpot = [t.tpot_s * 1e3 for t in timings if t.tpot_s is not None]
    written = []
    if ttft:
        written.append(_histogram_with_limit(ttft, limits_ms[0], f"Time to first token ({len(ttft)} samples, "
                                             "harness clock)", "TTFT (ms)", os.path.join(out_dir, "ttft.png"),
                                             loadgen_p99[0]))
    if tpot:
        written.append(_histogram_with_limit(tpot, limits_ms[1], f"Time per output token ({len(tpot)} samples, "
                                             "harness clock)", "TPOT (ms)", os.path.join(out_dir, "tpot.png"),
                                             loadgen_p99[1]))
    return written


def plot_throughput(timings: Sequence[SampleTiming], out_dir: str) -> Optional[str]:
    """Completed tokens/s in equal time windows over the run (tokens counted when their sample completes)."""
    if len(timings) < 2:
        return None
    start = min(t.issued_s for t in timings)
    end = max(t.completed_s for t in timings)
    # Batched runs complete samples in bursts: a window at least as long as the longest gap between
    # completions keeps the rate from alternating between zero and a spike.
    done = sorted(t.completed_s for t in timings)
    longest_gap = max(b - a for a, b in zip(done, done[1:]))
    window = max((end - start) / THROUGHPUT_WINDOWS, longest_gap * 1.01, 1e-3)
    counts = [0] * (int((end - start) / window) + 1)
    for t in timings:
        counts[int((t.completed_s - start) / window)] += t.n_tokens
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [c / window for c in counts]
    ax.step([i * window for i in range(len(counts) + 1)], rates + rates[-1:], where="post")
    ax.set_ylim(bottom=0)
    total = sum(t.n_tokens for t in timings)
    ax.axhline(total / max(end - start, 1e-9), color="tab:green", linestyle="--",
               label=f"run mean {total / max(end - start, 1e-9):.1f} tok/s (harness clock, not LoadGen's result)")
    ax.set_title("Completed tokens per second over the run (sample_timings.csv)")
    ax.set_xlabel("seconds since the first sample was issued")
    ax.set_ylabel("tokens/s")
    ax.legend()
    return _save(fig, os.path.join(out_dir, "throughput.png"))


def generated_lengths(run_dir: str) -> dict[int, int]:
    """qsl_idx -> generated tokens, first accuracy-log entry per sample (as evaluate-accuracy.py scores)."""
    return accuracy_log_lengths(run_dir)


def reference_lengths(dataset_path: Optional[str], indices: Sequence[int]) -> list[int]:
    """Token lengths of the dataset's reference answers for `indices` ([] when unavailable)."""
    if not dataset_path or not os.path.isfile(dataset_path):
        return []
    import pandas as pd

    try:
        frame = pd.read_pickle(dataset_path)
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle: plot without the reference lengths
        log.warning("%s: cannot read the dataset (%s): output lengths plotted without the reference", dataset_path, exc)
        return []
    if "tok_output_length" in frame.columns:
        column = frame["tok_output_length"]
    elif "tok_output" in frame.columns:
        column = frame["tok_output"].map(len)
    else:
        return []
    return [int(column.iloc[i]) for i in indices if i < len(column)]


def plot_lengths(generated: dict[int, int], reference: Sequence[int], cap: Optional[int], out_dir: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    values = list(generated.values())
    top = max(values + list(reference) + [1])
    step = max(1, -(-top // 40))  # ceil: at most ~40 integer-aligned bins covering every length
    bins = list(range(0, top + 2 * step, step))
    ax.hist(values, bins=bins, alpha=0.6, label=f"generated (mean {sum(values) / len(values):.1f})")
    if reference:
        ax.hist(reference, bins=bins, alpha=0.6, label=f"reference answers (mean {sum(reference) / len(reference):.1f})")
    if cap is not None and cap < constants.MAX_NEW_TOKENS:
        ax.axvline(cap, color="tab:red", linestyle="--", label=f"output cap {cap}")
    ax.set_title(f"Output length, {len(values)} samples")
    ax.set_xlabel("tokens")
    ax.set_ylabel("samples")
    ax.legend()
    return _save(fig, os.path.join(out_dir, "output_lengths.png"))


def write_plots(run_dir: str, dataset_path: Optional[str] = None, out_dir: Optional[str] = None) -> list[str]:
    """Every plot the run's data supports, as PNGs in `out_dir` (default RUN_DIR/plots)."""
    info = read_run_info(run_dir)
    out_dir = out_dir or os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    timings = read_timings(run_dir)
    written = plot_latencies(timings, latency_limits_ms(run_dir), out_dir, loadgen_p99_ms(run_dir))
    throughput = plot_throughput(timings, out_dir)
    if throughput:
        written.append(throughput)
    generated = generated_lengths(run_dir)
    if generated:
        reference = reference_lengths(dataset_path or info.dataset_path, sorted(generated))
        written.append(plot_lengths(generated, reference, info.max_new_tokens, out_dir))
    if not written:
        log.warning("%s: no sample timings and no accuracy log: nothing to plot", run_dir)
    return written
