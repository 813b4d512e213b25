"""Steady-state rate and drain share of an engine Offline run, from tools/bench.py's step log.

  python3 tools/steady_state.py docs/results/bench_engine_70b_fp8_h200.json [...]

A step log row is (decode only, sequences, tokens, milliseconds, decodes). The milliseconds are the host's
view: with overlapped steps (the default on CUDA) part of a step's GPU time is booked on the next step (a
70B FP8 mixed step of ~1,500 tokens logs ~95 ms, the decode-only step after it ~220, against ~88 ms for
decode-only steps after decode-only ones), so single rows mislead while sums over many steps hold.
Steady state: the steps whose batch holds at least 95% of the run's largest batch; their decode tokens over their time.
Drain: the steps after the last one that prefilled a prompt (no new work left), as a share of the
run's time. Whole-run rate extrapolated to N samples: the drain (a fixed cost of one batch finishing)
is spread over N / samples times the steady part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402


# fewer full-batch steps than this are no steady state: one step's host time misleads (see above)
MIN_STEADY_STEPS = 2


def analyse(row: dict, extrapolate_to: int = 24576) -> dict:
    """The steady rate, drain share and extrapolated whole-run rate of one engine row. A figure the log cannot
    give (a steady window of fewer than MIN_STEADY_STEPS steps or no time, a log of no time) is None, and
    `note` says why, rather than a division by zero or a rate from one step."""
    log = row["step_log"]
    largest = max((r[1] for r in log), default=0)
    full = [r for r in log if r[1] >= 0.95 * largest] if log else []
    full_ms = sum(r[3] for r in full)
    notes = []
    steady = None
    if len(full) < MIN_STEADY_STEPS or full_ms <= 0:
        notes.append(f"steady window too short: {len(full)} full-batch step(s) of {full_ms:g} ms (needs at least "
                     f"{MIN_STEADY_STEPS} steps and some time)")
    else:
        steady = round(sum(r[4] for r in full) / (full_ms / 1e3))
    last_prefill = max((i for i, r in enumerate(log) if r[2] > r[4]), default=len(log) - 1)
    total_ms = sum(r[3] for r in log)
    drain_ms = sum(r[3] for r in log[last_prefill + 1:])
    tokens = row["tokens_per_s"] * row["wall_s"]
    busy_s, drain_s = (row["wall_s"] - drain_ms / 1e3), drain_ms / 1e3
    scale = extrapolate_to / row["samples"]
    extrapolated = None
    if total_ms <= 0:
        notes.append("the step log holds no time: no drain share or extrapolation")
    elif busy_s * scale + drain_s > 0:
        extrapolated = round(tokens * scale / (busy_s * scale + drain_s))
    out = {"samples": row["samples"], "tokens_per_s": round(row["tokens_per_s"]), "steady_tokens_per_s": steady,
           "largest_batch": largest, "full_batch_steps": len(full), "steps": len(log),
           "drain_share": round(drain_ms / total_ms, 3) if total_ms > 0 else None,
           f"extrapolated_{extrapolate_to}": extrapolated}
    if notes:
        out["note"] = "; ".join(notes)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", nargs="+", help="bench.json files written by tools/bench.py")
    ap.add_argument("--samples", type=int, default=24576, help="extrapolate the whole-run rate to this many samples")
    args = ap.parse_args(argv)
    if args.samples < 1:
        raise UserError(f"steady_state: --samples must be >= 1, got {args.samples}")
    for path in args.bench_json:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UserError(f"steady_state: cannot read {path}: {exc}")
        rows = [r for r in data.get("rows", []) if r.get("backend") == "engine" and r.get("step_log")]
        if not rows:
            raise UserError(f"steady_state: {path} has no engine Offline row with a step log")
        for row in rows:
            print(path, json.dumps(analyse(row, args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
