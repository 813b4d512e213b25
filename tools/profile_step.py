"""Where one engine step's time goes: decode-only and mixed steps, eager vs fused elementwise ops.

Builds a random-weight model in a real shape on the GPU (as tools/bench.py does), fills the KV cache
with `--batch` sequences of `--context` tokens, and times, for each op set (the eager torch ops and
the fused Triton kernels of engine/ops.py; with 8-bit Linears, the fused kernels again with each Linear
quantizing its own input, `model.fused_quant = False`, against the producers that write it):
  * a decode-only step through its CUDA graph (what Offline's steady state runs), and eagerly;
  * a mixed step: the same decodes plus one `--prefill`-token prompt (run eagerly, as the engine does);
  * both again overlapped: each step queued before the last one's tokens are read, as the engine runs;
and attributes the eager steps' GPU time to kernel classes (GEMM, attention, elementwise, other)
with torch.profiler. The host's share is the graph step's wall time minus its GPU time. Prints a
table, writes profile.json into --out.

  python3 tools/profile_step.py --shape 7b --batch 256 --context 740 --prefill 460 --out /tmp/p
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import host_profile  # noqa: E402
from bench import DEFAULT_QUANT_CONFIG, clock_sampler, hf_config_for  # noqa: E402
from bench_paths import bench_model  # noqa: E402
from gpu_clock import clock_stats, stats_line  # noqa: E402
from mlperf_llama2.config import EngineConfig  # noqa: E402
from mlperf_llama2.engine import launch_cache  # noqa: E402
from mlperf_llama2.engine.config import FP8_ACCUMULATIONS  # noqa: E402
from mlperf_llama2.engine.llm_engine import MAX_MODEL_LEN, LLMEngine  # noqa: E402
from mlperf_llama2.engine.model_runner import ModelRunner  # noqa: E402
from mlperf_llama2.engine.ops import EagerOps, FusedOps  # noqa: E402
from mlperf_llama2.engine.scheduler import ScheduledBatch  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams, Sequence, Status  # noqa: E402

log = logging.getLogger("profile_step")


def kernel_class(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "cutlass", "sm90_xmma", "matmul", "nvjet", "wgmma", "gemv")):
        return "gemm"
    if any(k in n for k in ("paged_decode", "paged_rows", "merge_splits", "flash", "fmha", "attn", "_stats_kernel",
                            "_pv_kernel", "_pass1_kernel", "_pass2_kernel", "prefill")):
        return "attention"  # (the last five: the whole config's attention passes)
    if any(k in n for k in ("elementwise", "reduce", "norm", "rope", "silu", "index", "cat", "copy", "fill",
                            "scatter", "gather", "_kernel")):
        return "elementwise"
    return "other"


def make_batch(engine: LLMEngine, batch: int, context: int, prefill: int, vocab: int) -> ScheduledBatch:
    """`batch` decoding sequences at `context` tokens (cache slots allocated; their contents are whatever
    the cache holds: timing does not depend on them) plus, if prefill > 0, one fresh prompt."""
    rng = np.random.default_rng(0)
    bm = engine.scheduler.block_manager
    items = []
    for i in range(batch):
        seq = Sequence.create(i, rng.integers(3, vocab, context).tolist(), SamplingParams(16, ignore_eos=True))
        seq.status = Status.RUNNING
        bm.allocate(seq, context)
        seq.num_computed_tokens = context - 1
        items.append((seq, 1))
    if prefill:
        seq = Sequence.create(batch, rng.integers(3, vocab, prefill).tolist(), SamplingParams(16, ignore_eos=True))
        bm.allocate(seq, prefill)
        items.append((seq, prefill))
    return ScheduledBatch(items=items)


def time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # ends in a host read of the tokens
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def overlapped_ms(runner, batch, reps: int) -> float:
    """Per-step wall time when each step is queued before the last one's tokens are read (the engine's loop)."""
    out = runner.launch(batch)
    out.tokens()
    t0 = time.perf_counter()
    out = runner.launch(batch)
    for _ in range(reps - 1):
        nxt = runner.launch(batch)
        out.tokens()
        out = nxt
    out.tokens()
    return (time.perf_counter() - t0) * 1e3 / reps


def gpu_breakdown(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    classes: dict = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0, "other": 0.0}
    kernels = 0
    by_name: dict = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            classes[kernel_class(evt.name)] += evt.device_time / 1e3  # us -> ms
            by_name[evt.name] = by_name.get(evt.name, 0.0) + evt.device_time / 1e3
            kernels += 1
    classes["gpu_total"] = sum(classes.values())
    classes["kernels"] = kernels
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    classes["top_kernels_ms"] = {name[:120]: round(ms, 4) for name, ms in top}  # where a class's time goes
    return classes


def parse_ws_tiles(items: list, prog: str = "profile_step") -> dict:
    """['int8=128x128s6p1w2', ...] -> {family: gemm8_ws.WsConfig}; one line for a bad family or tile (also
    tools/bench.py's --ws-tile)."""
    if not items:
        return {}
    from bench_gemm import ws_config
    from mlperf_llama2.errors import UserError
    from mlperf_llama2.quant.gemm8_ws import TILES, WsConfig

    tiles = {}
    for item in items:
        family, sep, tile = item.partition("=")
        if not sep or family not in TILES:
            raise SystemExit(f"{prog}: --ws-tile takes FAMILY=TILE with FAMILY one of {', '.join(TILES)}, "
                             f"got {item!r}")
        try:
            tiles[family] = WsConfig(**ws_config(tile, "--ws-tile"))
        except UserError as err:
            raise SystemExit(f"{prog}: {err}") from None
    return tiles


def apply_ws_tiles(tiles: dict) -> None:
    """Each family's tile at every M (gemm8_ws.TILES) for this process."""
    if tiles:
        from mlperf_llama2.quant import gemm8_ws

        for family, cfg in tiles.items():
            gemm8_ws.TILES[family] = [(None, cfg)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="7b", choices=("tiny", "7b", "70b"))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--weights", choices=("fp16", "int8", "fp8"), default="fp16")
    ap.add_argument("--kv-cache-dtype", choices=("auto", "fp8", "int8"), default="auto",
                    help="8-bit KV cache with unit scales (timing only)")
    ap.add_argument("--int8-rules", choices=("linear", "all"), default="linear",
                    help="--weights int8: every rule of the config (whole_config.py; needs --kv-cache-dtype int8)")
    ap.add_argument("--engine-gemm", choices=("auto", "cublas", "triton", "ws"), default="auto",
                    help="GEMM of the 8-bit Linears (main.py's --engine-gemm)")
    ap.add_argument("--fp8-accumulation", choices=FP8_ACCUMULATIONS, default="promoted",
                    help="--weights fp8: main.py's --fp8-accumulation")
    ap.add_argument("--ws-tile", action="append", default=[], metavar="FAMILY=TILE",
                    help="A/B of the warp-specialised GEMM's tile inside the step: FAMILY (int8, fp8_promote, "
                         "fp8_fast) runs TILE (bench_gemm's BMxBNsSTAGESpSPLIT[wWGS][gGROUP_M][dDEPTH], e.g. "
                         "int8=128x128s6p1w2, fp8_promote=128x128s6p1w2d2) at every M")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=740, help="tokens per decoding sequence (steady-state mean)")
    ap.add_argument("--prefill", type=int, default=460, help="prompt tokens added in the mixed step")
    ap.add_argument("--pdl", action="store_true",
                    help="programmatic dependent launch of the engine's kernels (engine/pdl.py; an experiment)")
    ap.add_argument("--graph-mixed", action="store_true",
                    help="also the mixed step through the flat graphs, every token a row (main.py's "
                         "--graph-mixed-tokens; graphs captured up to --batch + --prefill rows), with the rows' "
                         "attention per row and in groups of a sequence's rows (EngineConfig.flat_row_groups)")
    ap.add_argument("--host-profile", action="store_true",
                    help="also where the host's time goes when the fused-ops step is launched eagerly (mixed and "
                         "decode-only): launch time without and with cProfile, top functions (tools/host_profile.py), "
                         "and the launch time through Triton's launch path against kept kernels relaunched "
                         "directly (engine/launch_cache.py), interleaved")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    tiles = parse_ws_tiles(args.ws_tile)
    if not torch.cuda.is_available():
        raise SystemExit(f"profile_step: profiles CUDA kernels, but torch sees no CUDA GPU (torch {torch.__version__})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    apply_ws_tiles(tiles)
    os.makedirs(args.out, exist_ok=True)
    device, dtype = torch.device("cuda"), torch.float16
    cfg = hf_config_for(args.shape, args.layers)
    if args.int8_rules == "all" and (args.weights != "int8" or args.kv_cache_dtype != "int8"):
        raise SystemExit("profile_step: --int8-rules all needs --weights int8 --kv-cache-dtype int8")
    if args.graph_mixed and args.int8_rules == "all":
        raise SystemExit("profile_step: --graph-mixed with --int8-rules all: the whole config's prompt attention "
                         "runs its own kernels (main.py refuses --graph-mixed-tokens with it)")
    if args.fp8_accumulation != "promoted" and args.weights != "fp8":
        raise SystemExit("profile_step: --fp8-accumulation fast needs --weights fp8")
    model = bench_model(cfg, args.weights, DEFAULT_QUANT_CONFIG, device, dtype, MAX_MODEL_LEN, 0.02, 0,
                        args.int8_rules)
    econf = EngineConfig(max_num_seqs=args.batch, max_num_batched_tokens=max(8192, args.batch + args.prefill),
                         kv_cache_dtype=args.kv_cache_dtype, gemm=args.engine_gemm,
                         fp8_accumulation=args.fp8_accumulation,
                         graph_mixed_tokens=args.batch + args.prefill if args.graph_mixed else 0, pdl=args.pdl)
    kv_scales = None if args.kv_cache_dtype == "auto" else \
        torch.ones(2, cfg.num_hidden_layers, cfg.num_key_value_heads)  # unit scales: timing only
    engine = LLMEngine(ModelRunner(model, econf, cfg.eos_token_id, MAX_MODEL_LEN, device, dtype, kv_scales), econf,
                       cfg.eos_token_id)
    runner = engine.runner
    decode = make_batch(engine, args.batch, args.context, 0, cfg.vocab_size)
    mixed = ScheduledBatch(items=decode.items + make_batch(engine, 0, 1, args.prefill, cfg.vocab_size).items)
    # weights-only and KV-only bounds of the decode step at the measured copy bandwidth (PERF.md)
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                       if t.numel() > 1_000_000)  # int8 weights are buffers; RoPE tables are not weights
    kv_bytes = args.batch * args.context * 2 * model.shape.num_layers * model.shape.num_kv_heads * \
        model.shape.head_dim * engine.runner.kv_cache.element_size()
    result = {"args": vars(args), "bounds_ms": {"weights": weight_bytes / 4.3e9, "kv": kv_bytes / 4.3e9},
              "rows": []}

    def eager(b):
        def fn():
            input_ids, positions, meta, last_rows, suppress = runner._prepare(b)
            hidden = runner.model(input_ids, positions, runner.kv_cache, meta, runner.kv_scales)
            return runner._sample(hidden[last_rows], suppress).tolist()
        return fn

    op_sets = [("eager ops", EagerOps, True), ("fused ops", FusedOps, True)]
    if args.int8_rules == "all":  # the whole config runs its own kernels (whole_config.forward_fused), not model.ops
        op_sets = [("whole-config kernels", FusedOps, True)]
    elif any(hasattr(m, "act_kind") for m in model.modules()):  # 8-bit Linears: A/B the quantizing producers
        op_sets.append(("fused ops, Linears quantize", FusedOps, False))
    flat = runner.graph_mixed_tokens
    clocks, t_start = clock_sampler(device), time.monotonic()  # the SM clock over the profile (short bursts)
    for name, ops, fused_quant in op_sets:
        model.ops, model.fused_quant = ops, fused_quant
        runner.graphs.clear()
        runner.graph_mixed_tokens = flat  # graphs up to this many rows
        runner._capture_graphs()
        runner.graph_mixed_tokens = 0  # the mixed rows below run eagerly
        graph_ms = time_ms(lambda: runner.run(decode), args.reps)
        graph_gpu = gpu_breakdown(lambda: runner.run(decode))
        rows = {"graph decode": (graph_ms, graph_gpu),
                "graph decode, overlapped": (overlapped_ms(runner, decode, args.reps), graph_gpu),
                "eager mixed, overlapped": (overlapped_ms(runner, mixed, args.reps), gpu_breakdown(eager(mixed))),
                "eager decode": (time_ms(eager(decode), args.reps), gpu_breakdown(eager(decode))),
                "eager mixed": (time_ms(eager(mixed), args.reps), gpu_breakdown(eager(mixed)))}
        if flat:
            runner.graph_mixed_tokens = flat
            for grouped in (False, True):  # the rows' attention one program per row, then by groups of rows
                if grouped:
                    runner.flat_row_groups = True
                    runner._capture_graphs()
                label = "graph mixed" + (", row groups" if grouped else "")
                flat_gpu = gpu_breakdown(lambda: runner.run(mixed))
                rows[label] = (time_ms(lambda: runner.run(mixed), args.reps), flat_gpu)
                rows[label + ", overlapped"] = (overlapped_ms(runner, mixed, args.reps), flat_gpu)
            runner.flat_row_groups = False
            assert runner.flat_steps > 0, "the mixed step did not take the flat graphs"
        if args.host_profile and name == "fused ops":
            saved = runner.graph_mixed_tokens, runner.graphs
            runner.graph_mixed_tokens, runner.graphs = 0, {}  # both steps eager (a mixed step runs so by default)
            result["host_profile"] = {
                step: host_profile.host_profile(lambda b=b: runner.launch(b), args.reps, torch.cuda.synchronize)
                for step, b in (("eager mixed step", mixed), ("eager decode step", decode))}
            if launch_cache.enabled():  # the short launch path against Triton's, interleaved in this process
                result["launch_ab"] = {
                    step: host_profile.launch_ab(lambda b=b: runner.launch(b), args.reps, torch.cuda.synchronize,
                                                 launch_cache.set_enabled)
                    for step, b in (("eager mixed step", mixed), ("eager decode step", decode))}
            runner.graph_mixed_tokens, runner.graphs = saved
        for step, (ms, gpu) in rows.items():
            result["rows"].append({"ops": name, "step": step, "wall_ms": ms, **gpu})
            log.info("%s %s: %.2f ms wall, gpu %s", name, step, ms, gpu)
        if clocks is not None:
            result["gpu_clock"] = clock_stats(clocks.between(t_start, time.monotonic()))
        with open(os.path.join(args.out, "profile.json"), "w") as fh:
            json.dump(result, fh, indent=1)
    if clocks is not None:
        clocks.close()

    lines = [f"shape {args.shape} {args.weights}, {args.batch} decodes at context {args.context}, mixed +"
             f"{args.prefill} prompt tokens; bounds: weights {result['bounds_ms']['weights']:.2f} ms, "
             f"KV {result['bounds_ms']['kv']:.2f} ms (at 4.3 TB/s, an H200's copy bandwidth)"
             + (f"; {stats_line(result['gpu_clock'])} over the profile" if result.get("gpu_clock") else ""),
             "| ops | step | wall ms | GPU ms | GEMM | attention | elementwise | other | kernels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['ops']} | {r['step']} | {r['wall_ms']:.2f} | {r['gpu_total']:.2f} | {r['gemm']:.2f} | "
                     f"{r['attention']:.2f} | {r['elementwise']:.2f} | {r['other']:.2f} | {r['kernels']} |")
    graph = next(r for r in result["rows"] if r["step"] == "graph decode")
    lines.append(f"top kernels of the graph decode step ({graph['ops']}), ms:")
    lines += [f"  {ms:8.3f}  {name}" for name, ms in graph["top_kernels_ms"].items()]
    for step, prof in result.get("host_profile", {}).items():
        lines += host_profile.lines(prof, step)
    for step, ab in result.get("launch_ab", {}).items():
        lines.append(f"launch time of one {step}, interleaved (median of {ab['reps']} each): Triton's launch path "
                     f"{ab['off_ms']:.2f} ms, kept kernels relaunched directly {ab['on_ms']:.2f} ms")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
