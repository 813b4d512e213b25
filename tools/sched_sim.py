"""Replay an engine Offline run's scheduling on the CPU: the real Scheduler and BlockManager, no model, a step-time
model fitted to a measured run's step log. For choosing scheduler policy (the admission `growth_reserve`) without
GPU time; the figures it prints are a model, not a measurement.

  python3 tools/sched_sim.py --from-bench docs/results/bench_engine_70b_fp8_fp8kv_h100_1024.json --out OUT
  python3 tools/sched_sim.py --blocks 4000 --max-num-seqs 512 --samples 1024 --c0-ms 43.7 --c1-ms 0.0574 --out OUT

`--from-bench` takes a tools/bench.py bench.json: its KV blocks, sequence cap, token budget, samples and workload
draw (same seed and lengths), and fits step ms = c0 + c1 x tokens + c2 x sequences to its step log (least squares
over the steps within 5x the median; the first 3 steps, autotuning and warm-up, left out). The run itself had no
reserve, so the reserve-0 row checks the replay: its steps and preemptions should match the measured ones.
Each row: steps, preemptions, the share of computed tokens that were recomputed, the mean batch, and the modelled
time and tokens/s (output tokens over modelled time).

`--server-qps Q [--seq-caps A,B] [--token-budgets X,Y]`: Server mode instead: the samples arrive as a Poisson
stream; p99 TTFT and TPOT (LoadGen's definitions) per setting. The model is fitted to Offline steps, mostly large:
it is for comparing settings, not for a scenario's absolute latencies (docs/engine.md "Admission reserve").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mlperf_llama2.engine.block_manager import BlockManager  # noqa: E402
from mlperf_llama2.engine.scheduler import GROWTH_RESERVE, Scheduler  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams, Sequence  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

MAX_MODEL_LEN = 2048


def fit_step_model(step_log: list) -> tuple[float, float, float]:
    """(c0, c1, c2) of ms = c0 + c1 * tokens + c2 * sequences over a bench.json step log
    (rows: decode only, sequences, tokens, ms, decodes)."""
    rows = np.asarray(step_log[3:], dtype=float)
    if len(rows) < 10:
        raise UserError(f"the step log has {len(step_log)} steps; at least 13 are needed for a fit")
    ms = rows[:, 3]
    keep = ms <= 5 * np.median(ms)
    a = np.column_stack([np.ones(keep.sum()), rows[keep, 2], rows[keep, 1]])
    coef, *_ = np.linalg.lstsq(a, ms[keep], rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def step_ms(model: tuple[float, float, float], tokens: int, seqs: int) -> float:
    """One step's modelled time; a model that gives a step no time (negative or zero coefficients) would print
    rates from nothing, so it is refused in one line."""
    ms = model[0] + model[1] * tokens + model[2] * seqs
    if not ms > 0:
        raise UserError(f"the step-time model gives a step of {tokens} tokens and {seqs} sequences {ms:.3g} ms "
                        f"(c0 {model[0]:.3g}, c1 {model[1]:.3g}, c2 {model[2]:.3g}): every step must take some time; "
                        "give --c0-ms > 0 (or a bench.json whose step log fits one)")
    return ms


def new_scheduler(blocks: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int,
                  reserve: float) -> Scheduler:
    return Scheduler(BlockManager(blocks, block_size), max_num_seqs, max_num_batched_tokens, MAX_MODEL_LEN,
                     eos_token_id=-1, growth_reserve=reserve)


def add_sample(sched: Scheduler, i: int, prompt: int, output: int, blocks: int, block_size: int) -> None:
    try:
        sched.add(Sequence.create(i, [5] * prompt, SamplingParams(output, ignore_eos=True)))
    except ValueError as exc:  # the scheduler refuses a sequence the whole cache cannot hold
        raise UserError(f"--blocks {blocks} x --block-size {block_size}: sample {i} ({prompt} prompt + {output} "
                        f"output tokens) does not fit the KV cache ({exc}); give more --blocks") from None


def replay(prompts: np.ndarray, outputs: np.ndarray, blocks: int, block_size: int, max_num_seqs: int,
           max_num_batched_tokens: int, reserve: float, model: tuple[float, float, float]) -> dict:
    sched = new_scheduler(blocks, block_size, max_num_seqs, max_num_batched_tokens, reserve)
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        add_sample(sched, i, int(p), int(o), blocks, block_size)
    steps = tokens = seqs = 0
    ms = 0.0
    while sched.has_work():
        batch = sched.schedule()
        sched.on_launched(batch)
        sched.on_sampled(batch, [7] * len(batch.items))
        steps += 1
        tokens += batch.num_tokens
        seqs += len(batch.items)
        ms += step_ms(model, batch.num_tokens, len(batch.items))
    useful = int(prompts.sum() + outputs.sum()) - len(prompts)  # a sequence's last token is sampled, never fed
    return {"reserve": reserve, "steps": steps, "preemptions": sched.num_preemptions,
            "recomputed_share": (tokens - useful) / tokens, "mean_batch": seqs / steps,
            "model_s": ms / 1e3, "model_tokens_per_s": float(outputs.sum()) / (ms / 1e3)}


def serve(prompts: np.ndarray, outputs: np.ndarray, qps: float, blocks: int, block_size: int, max_num_seqs: int,
          max_num_batched_tokens: int, reserve: float, model: tuple[float, float, float], seed: int) -> dict:
    """Server mode: the samples arrive as a Poisson stream at `qps` (in order); each step takes the model's time; a
    query's first token is out when the step that finishes its prompt ends. TTFT and TPOT as LoadGen computes them
    ((completion - first token) / (tokens - 1)), their p99s, and output tokens over the span of the run."""
    arrivals = np.cumsum(np.random.default_rng(seed + 7).exponential(1.0 / qps, len(prompts)))
    sched = new_scheduler(blocks, block_size, max_num_seqs, max_num_batched_tokens, reserve)
    first, done = np.zeros(len(prompts)), np.zeros(len(prompts))
    t, nxt = 0.0, 0
    while nxt < len(prompts) or sched.has_work():
        if not sched.has_work() and arrivals[nxt] > t:
            t = arrivals[nxt]
        while nxt < len(prompts) and arrivals[nxt] <= t:
            add_sample(sched, nxt, int(prompts[nxt]), int(outputs[nxt]), blocks, block_size)
            nxt += 1
        batch = sched.schedule()
        t += step_ms(model, batch.num_tokens, len(batch.items)) / 1e3
        sched.on_launched(batch)
        for event in sched.on_sampled(batch, [7] * len(batch.items)):
            if event.first_token is not None:
                first[event.seq.request_id] = t
            if event.finished:
                done[event.seq.request_id] = t
    ttft = first - arrivals
    many = outputs > 1
    tpot = (done[many] - first[many]) / (outputs[many] - 1)
    return {"qps": qps, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
            "ttft_p99_ms": float(np.percentile(ttft, 99) * 1e3), "tpot_p99_ms": float(np.percentile(tpot, 99) * 1e3),
            "tokens_per_s": float(outputs.sum() / (done.max() - arrivals[0])), "preemptions": sched.num_preemptions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-bench", default=None, metavar="BENCH.json", help="a tools/bench.py run to replay")
    ap.add_argument("--blocks", type=int, default=None, help="KV blocks (else the bench run's)")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--c0-ms", type=float, default=None, help="step-time model: fixed ms per step")
    ap.add_argument("--c1-ms", type=float, default=None, help="step-time model: ms per token")
    ap.add_argument("--c2-ms", type=float, default=0.0, help="step-time model: ms per sequence")
    ap.add_argument("--reserves", default=f"0,{GROWTH_RESERVE:g},1,2", help="growth_reserve values to replay")
    ap.add_argument("--server-qps", type=float, default=None,
                    help="Server mode: Poisson arrivals at this QPS; reports p99 TTFT/TPOT per --seq-caps x "
                         "--token-budgets setting instead of the Offline replay")
    ap.add_argument("--seq-caps", default="", help="Server mode: --max-num-seqs values (default: the run's)")
    ap.add_argument("--token-budgets", default="", help="Server mode: --max-num-batched-tokens values")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from bench import synthetic_lengths  # noqa: E402 - tools/bench.py's draw (imports torch)
    from bench_lengths import workload_lengths

    run, measured, lengths_from = {}, None, None
    if args.from_bench:
        try:
            with open(args.from_bench) as fh:
                bench = json.load(fh)
            run = bench["args"]
            measured = next(r for r in bench["rows"] if r["backend"] == "engine" and r.get("step_log"))
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            raise UserError(f"--from-bench {args.from_bench}: not a bench.json with an engine step log "
                            f"({type(exc).__name__}: {exc})")
        lengths_from = run.get("lengths_from")
    # a size given as 0 or less is refused, never replaced by the bench run's (`or` took 0 for "not given")
    for flag, value in (("--blocks", args.blocks), ("--block-size", args.block_size),
                        ("--max-num-seqs", args.max_num_seqs),
                        ("--max-num-batched-tokens", args.max_num_batched_tokens),
                        ("--samples", args.samples)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--c0-ms", args.c0_ms), ("--c1-ms", args.c1_ms), ("--c2-ms", args.c2_ms)):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise UserError(f"{flag} must be a finite number of ms >= 0, got {value}")

    def given(value, key, source):
        return value if value is not None else source.get(key)

    blocks = given(args.blocks, "kv_blocks", measured or {})
    seqs = given(args.max_num_seqs, "max_num_seqs", run)
    budget = given(args.max_num_batched_tokens, "max_num_batched_tokens", run) or 8192
    samples = given(args.samples, "samples", run)
    seed = args.seed if args.seed is not None else run.get("seed", 0)
    if not (blocks and seqs and samples):
        raise UserError("give --from-bench, or --blocks, --max-num-seqs and --samples")
    if measured is not None and args.c0_ms is None:
        model = fit_step_model(measured["step_log"])
    elif args.c0_ms is not None and args.c1_ms is not None:
        model = (args.c0_ms, args.c1_ms, args.c2_ms)
    else:
        raise UserError("give --from-bench (the step-time model is fitted to it) or --c0-ms and --c1-ms")
    try:
        reserves = [float(r) for r in args.reserves.split(",") if r]
    except ValueError:
        raise UserError(f"--reserves takes comma-separated numbers, got {args.reserves!r}") from None
    workload = workload_lengths(samples, seed, lengths_from, synthetic_lengths)
    if run.get("output_cap"):
        workload = dataclasses.replace(workload, output=np.minimum(workload.output, run["output_cap"]))
    if args.server_qps is not None:
        return serve_table(args, workload, blocks, seqs, budget, model, seed)
    rows = [replay(workload.prompt, workload.output, blocks, args.block_size, seqs, budget, r, model)
            for r in reserves]
    result = {"source": args.from_bench, "blocks": blocks, "max_num_seqs": seqs, "max_num_batched_tokens": budget,
              "samples": samples, "workload": workload.source, "step_model_ms": model, "rows": rows}
    lines = [f"{samples} samples ({workload.source}), {blocks} KV blocks of {args.block_size}, --max-num-seqs {seqs}, "
             f"budget {budget}; step ms = {model[0]:.2f} + {model[1]:.4f} x tokens + {model[2]:.4f} x sequences"]
    if measured is not None:
        result["measured"] = {k: measured.get(k) for k in ("steps", "preemptions", "wall_s", "tokens_per_s")}
        lines.append(f"measured (no reserve): {measured.get('steps')} steps, {measured.get('preemptions')} "
                     f"preemptions, {measured.get('wall_s', 0):.1f} s, {measured.get('tokens_per_s', 0):.0f} tok/s")
    lines.append(f"{'reserve':>8}{'steps':>8}{'preempt':>9}{'recomputed':>12}{'batch':>8}{'model s':>9}"
                 f"{'model tok/s':>13}")
    for r in rows:
        lines.append(f"{r['reserve']:>8g}{r['steps']:>8}{r['preemptions']:>9}{r['recomputed_share']:>12.1%}"
                     f"{r['mean_batch']:>8.1f}{r['model_s']:>9.1f}{r['model_tokens_per_s']:>13.0f}")
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sched_sim.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if min(values, default=1) < 1:
        raise UserError(f"{flag} values must be >= 1")
    return values


def serve_table(args, workload, blocks: int, seqs: int, budget: int, model, seed: int) -> int:
    if not (args.server_qps > 0 and np.isfinite(args.server_qps)):
        raise UserError(f"--server-qps must be a finite number > 0, got {args.server_qps}")
    rows = [serve(workload.prompt, workload.output, args.server_qps, blocks, args.block_size, cap, tokens,
                  GROWTH_RESERVE, model, seed)
            for cap in _ints(args.seq_caps, "--seq-caps") or [seqs]
            for tokens in _ints(args.token_budgets, "--token-budgets") or [budget]]
    lines = [f"Server model at {args.server_qps:g} QPS: {len(workload.prompt)} samples ({workload.source}), {blocks} "
             f"KV blocks; step ms = {model[0]:.2f} + {model[1]:.4f} x tokens + {model[2]:.4f} x sequences",
             f"{'seqs':>6}{'budget':>8}{'p99 TTFT ms':>13}{'p99 TPOT ms':>13}{'tok/s':>8}{'preempt':>9}"]
    lines += [f"{r['max_num_seqs']:>6}{r['max_num_batched_tokens']:>8}{r['ttft_p99_ms']:>13.0f}"
              f"{r['tpot_p99_ms']:>13.1f}{r['tokens_per_s']:>8.0f}{r['preemptions']:>9}" for r in rows]
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sched_sim_server.json"), "w") as fh:
        json.dump({"blocks": blocks, "samples": len(workload.prompt), "workload": workload.source,
                   "step_model_ms": model, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
