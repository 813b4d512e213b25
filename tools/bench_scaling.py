"""Multi-GPU engine benchmark: `tools/bench.py --tensor-parallel N` or `--data-parallel M` lands here.

Same synthetic workload and random-weight shapes as tools/bench.py (PERF.md), on N or M devices:
  * tensor parallel: one engine whose ranks are this process and N-1 workers (mlperf_llama2.parallel);
  * data parallel: M engine replicas in this process, one per device, requests spread by least
    outstanding tokens (exactly what `main.py --backend engine --data-parallel M` runs).
It measures Offline tokens/s through the real LoadGen -> SUT -> backend path (bench_paths.loadgen_offline,
the same backends main.py builds) and, with --server-qps, a Server sweep straight into the engines'
loops (Poisson arrivals, p99 TTFT/TPOT). With --baseline-json (a bench.json of a smaller run) it reports
scaling efficiency = (tokens/s / GPUs) / (baseline tokens/s / baseline GPUs). Writes bench.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time

import numpy as np
import torch

import bench_server
from bench_paths import bench_model, loadgen_offline
from gpu_clock import Sampler, clock_stats, stats_line
from mlperf_llama2.backends.engine import EngineBackend
from mlperf_llama2.config import EngineConfig
from mlperf_llama2.backends.data_parallel import DataParallelBackend
from mlperf_llama2.parallel.env import apply_dist_env, device_for_rank
from mlperf_llama2.parallel.routing import LeastLoadedRouter, request_cost
from mlperf_llama2.engine.llm_engine import MAX_MODEL_LEN, LLMEngine
from mlperf_llama2.engine.model_runner import ModelRunner
from mlperf_llama2.engine.sequence import SamplingParams

log = logging.getLogger("bench_scaling")


def build_engines(args, cfg, econf: EngineConfig, dtype: torch.dtype, kv_scales=None):
    """(engines, shutdown callables): one TP engine, or M single-device replicas. kv_scales [2, L, KV]: an
    8-bit KV cache's (the whole model's; a TP rank slices its heads)."""
    if args.tensor_parallel > 1:
        from mlperf_llama2.parallel.tp_group import ShardSpec, start_tp_engine

        quant = {"int8": {"liteml_config": args.liteml_config, "quant_backend": "open", "quant_mode": "int8",
                          "int8_rules": args.int8_rules},
                 "fp8": {"quantization": "fp8"}}.get(args.weights)
        spec = ShardSpec(world=args.tensor_parallel, port=0, base_device=args.device,
                         dtype={torch.float16: "float16", torch.float32: "float32"}[dtype],
                         engine=dataclasses.asdict(econf), random_config=cfg.to_dict(), init_std=args.init_std,
                         seed=args.seed, max_model_len=MAX_MODEL_LEN, quant=quant)
        if kv_scales is not None:
            spec = dataclasses.replace(spec, kv_scales=kv_scales.tolist())  # each rank slices its KV heads
        engine, group = start_tp_engine(spec)
        return [engine], [group.shutdown]
    engines = []
    for i in range(args.data_parallel):
        device = torch.device(device_for_rank(args.device, i))
        model = bench_model(cfg, args.weights, args.liteml_config, device, dtype, MAX_MODEL_LEN, args.init_std,
                            args.seed, args.int8_rules)
        engines.append(LLMEngine(ModelRunner(model, econf, cfg.eos_token_id, MAX_MODEL_LEN, device, dtype, kv_scales),
                                 econf, cfg.eos_token_id))
    return engines, []


def kv_storage(engine: LLMEngine) -> torch.Tensor:
    """The KV cache an engine's (rank 0's) runner allocated."""
    runner = engine.runner
    return getattr(runner, "local", runner).kv_cache  # TP: lockstep.DriverRunner wraps rank 0's ModelRunner


def check_args(args) -> None:
    """tools/bench.py's flags this benchmark does not act on, refused in one line before anything is built (they
    would be accepted and the run recorded as if they had applied)."""
    ignored = [("--samples 0", args.samples == 0), ("--server-auto", bool(args.server_auto)),
               ("--offline-json", args.offline_json is not None),
               ("--server-min-queries", args.server_min_queries != 1),
               ("--server-samples", args.server_samples != 2048),
               ("--row-groups/--no-row-groups", args.row_groups is not None)]
    for flag, given in ignored:
        if given:
            raise SystemExit(f"bench: {flag} is not wired into the multi-GPU benchmark (--tensor-parallel/"
                             "--data-parallel: Offline through LoadGen, then --server-qps points straight into the "
                             "engines); drop it")
    if args.tensor_parallel > 1 and args.data_parallel > 1:  # build_engines starts one TP engine, no replicas of it
        raise SystemExit(f"bench: --tensor-parallel {args.tensor_parallel} with --data-parallel {args.data_parallel}: "
                         "the multi-GPU benchmark runs one or the other (it would run one TP engine and record "
                         f"{args.tensor_parallel * args.data_parallel} GPUs); give only one of them")


def check_devices(args) -> None:
    """Every rank / replica needs its own device: cuda:K .. cuda:K+N-1 must exist (torch would fail with a traceback
    once the first model is built). Call it once CUDA is known to be there."""
    if args.device == "cpu":
        return
    needed = args.tensor_parallel * args.data_parallel
    try:
        first = int(args.device.split(":", 1)[1]) if ":" in args.device else 0
    except ValueError:
        first = -1
    if not args.device.startswith("cuda") or first < 0:
        raise SystemExit(f"bench: --device {args.device}: the multi-GPU benchmark runs on cpu or cuda[:K] (ranks and "
                         "replicas on cuda:K, cuda:K+1, ...)")
    seen = torch.cuda.device_count()
    if first + needed > seen:
        raise SystemExit(f"bench: --tensor-parallel {args.tensor_parallel} x --data-parallel {args.data_parallel} "
                         f"from --device {args.device} needs cuda:{first}..cuda:{first + needed - 1}, torch sees "
                         f"{seen} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         "ask for a machine with enough GPUs or lower the counts")


def read_baseline(path: str, args) -> dict:
    """The --baseline-json run, checked before anything is built: -> {"path", "gpus", "tokens_per_s_per_gpu"}. A
    baseline of another shape, layer count, weights or KV cache would make the efficiency a ratio of two workloads."""
    try:
        with open(path) as fh:
            base = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench: --baseline-json {path}: cannot read it as a bench.json ({exc})") from None
    if not isinstance(base, dict):
        raise SystemExit(f"bench: --baseline-json {path}: not a bench.json (no JSON object)")
    theirs = base.get("args") or {}
    for key in ("shape", "layers", "weights", "kv_cache_dtype"):
        if key in theirs and theirs[key] != getattr(args, key):
            raise SystemExit(f"bench: --baseline-json {path} ran --{key.replace('_', '-')} {theirs[key]}, this run "
                             f"{getattr(args, key)}: a scaling efficiency needs the same model on fewer GPUs")
    if isinstance(base.get("offline"), dict) and base["offline"].get("tokens_per_s") and base.get("gpus"):
        return {"path": path, "gpus": base["gpus"],
                "tokens_per_s_per_gpu": base["offline"]["tokens_per_s"] / base["gpus"]}
    rows = [r for r in base.get("rows") or [] if isinstance(r, dict) and r.get("backend") == "engine"
            and r.get("tokens_per_s")]
    if not rows:  # a single-device tools/bench.py run: its engine row
        raise SystemExit(f"bench: --baseline-json {path} has no Offline engine tokens/s (neither a multi-GPU "
                         "'offline' section nor a single-device engine row)")
    return {"path": path, "gpus": 1, "tokens_per_s_per_gpu": rows[-1]["tokens_per_s"]}


def device_names(args) -> list[str]:
    """The device each rank / replica ran on, by name (torch's CUDA name, or cpu)."""
    devices = [device_for_rank(args.device, i) for i in range(args.tensor_parallel * args.data_parallel)]
    return [torch.cuda.get_device_name(torch.device(d)) if d.startswith("cuda") else d for d in devices]


def devices_label(names: list[str]) -> str:
    """['NVIDIA H100', 'NVIDIA H100'] -> '2x NVIDIA H100'; mixed devices are listed one by one."""
    if names and len(set(names)) == 1:
        return f"{len(names)}x {names[0]}"
    return ", ".join(names)


def run_requests(engines, arrivals, prompts, outputs, timeout_s: float) -> dict:
    """Feed (time offset, prompt index) arrivals to the engines' loops; per-request TTFT/TPOT and tokens/s."""
    router = LeastLoadedRouter(len(engines))
    lock, finished = threading.Lock(), threading.Event()
    arrive, first, done, errors = {}, {}, {}, []

    def on_first(seq, _tok):
        with lock:
            first[seq.request_id] = time.perf_counter()

    def on_done(seq):
        router.release(seq.request_id)
        with lock:
            done[seq.request_id] = (time.perf_counter(), len(seq.output))
            if len(done) == len(arrivals):
                finished.set()

    def on_error(exc):
        errors.append(f"{type(exc).__name__}: {exc}")
        finished.set()

    for engine in engines:
        engine.start_loop(on_first, on_done, on_error)
    t0 = time.perf_counter()
    try:
        for rid, (offset, k) in enumerate(arrivals):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with lock:
                arrive[rid] = time.perf_counter()
            target = router.assign(rid, request_cost(len(prompts[k]), int(outputs[k])))
            engines[target].add_request(rid, prompts[k], SamplingParams(int(outputs[k]), ignore_eos=True))
        finished.wait(timeout=timeout_s)
    finally:
        for engine in engines:
            engine.stop_loop()
    ttft = np.array([first[r] - arrive[r] for r in done]) * 1e3
    tpot = np.array([(done[r][0] - first[r]) / max(done[r][1] - 1, 1) for r in done]) * 1e3
    span = max((t for t, _ in done.values()), default=t0) - t0
    tokens = sum(n for _, n in done.values())
    return {"issued": len(arrivals), "completed": len(done), "tokens": tokens, "seconds": span,
            "tokens_per_s": tokens / span if span > 0 else 0.0,
            "ttft_p99_ms": float(np.percentile(ttft, 99)) if len(ttft) else None,
            "tpot_p99_ms": float(np.percentile(tpot, 99)) if len(tpot) else None,
            **({"error": errors[0]} if errors else {})}


def meets_limits(row: dict, limits) -> bool:
    """A point meets the latency limits only with every issued request completed (a lost request has no
    latency to miss them by) and both p99s within them."""
    return (row["completed"] == row["issued"] and "error" not in row and row["ttft_p99_ms"] is not None
            and row["tpot_p99_ms"] is not None and row["ttft_p99_ms"] <= limits.ttft_ms
            and row["tpot_p99_ms"] <= limits.tpot_ms)


def clock_samplers(args) -> list:
    """One nvidia-smi sampler per CUDA device the run uses (tools/gpu_clock.py); none off CUDA or without it."""
    if not args.device.startswith("cuda"):
        return []
    base = int(args.device.split(":", 1)[1]) if ":" in args.device else 0
    samplers = [Sampler.start(index=base + i) for i in range(args.tensor_parallel * args.data_parallel)]
    return [s for s in samplers if s is not None]


def run_scaling(args, cfg, prompts, o_len, p_len) -> int:
    """The multi-device benchmark; `args` are tools/bench.py's parsed flags."""
    check_args(args)
    baseline = read_baseline(args.baseline_json, args) if args.baseline_json else None
    apply_dist_env()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gpus = args.tensor_parallel * args.data_parallel
    limits = bench_server.INTERACTIVE if args.interactive else bench_server.SERVER
    names = device_names(args)
    econf = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                         num_kv_blocks=None if device.type == "cuda" else 4096, kv_cache_dtype=args.kv_cache_dtype,
                         gemm=args.engine_gemm, fp8_accumulation=args.fp8_accumulation,
                         graph_mixed_tokens=args.graph_mixed_tokens, prefill_align=args.prefill_align)
    kv_scales = None
    if args.kv_cache_dtype != "auto":  # unit scales: timing only, as tools/bench.py's single-device runs
        kv_scales = torch.ones(2, cfg.num_hidden_layers, cfg.num_key_value_heads)
    t = time.perf_counter()
    engines, shutdowns = build_engines(args, cfg, econf, dtype, kv_scales)
    result: dict = {"args": vars(args), "gpus": gpus, "tensor_parallel": args.tensor_parallel,
                    "data_parallel": args.data_parallel, "device_name": devices_label(names), "devices": names,
                    "setup_s": time.perf_counter() - t,
                    "kv_cache": {"dtype": args.kv_cache_dtype, "scales": None if kv_scales is None else
                                 "unit (1.0 per layer and KV head; timing only)",
                                 "storage": [str(kv_storage(e).dtype).removeprefix("torch.") for e in engines]},
                    "workload": {"prompt_mean": float(p_len.mean()), "output_mean": float(o_len.mean())},
                    "server_limits": {"name": limits.name, "ttft_ms": limits.ttft_ms, "tpot_ms": limits.tpot_ms}}
    clocks = clock_samplers(args)
    try:
        for engine in engines:  # warm-up
            engine.generate(prompts[:8], SamplingParams(4, ignore_eos=True))
        forced = {i: int(n) for i, n in enumerate(o_len)}
        replicas = [EngineBackend(engine, forced_output_lengths=forced) for engine in engines]
        backend = replicas[0] if len(replicas) == 1 else DataParallelBackend(replicas)
        t0 = time.monotonic()
        run = loadgen_offline(backend, prompts, os.path.join(args.out, "loadgen-offline"))
        if run["failures"]:  # the rate counts every forced length as generated: not with failed samples
            raise SystemExit(f"bench: multi-GPU Offline: {run['failures']} of {len(prompts)} samples failed (see the "
                             "log above); no tokens/s recorded")
        tokens = int(o_len.sum())
        offline = {**run, "tokens": tokens, "tokens_per_s": tokens / run["wall_s"],
                   "tokens_per_s_per_gpu": tokens / run["wall_s"] / gpus}
        if clocks:
            offline["gpu_clock"] = [clock_stats(c.between(t0, time.monotonic())) for c in clocks]
        if len(replicas) > 1:
            offline["requests_per_replica"] = backend.submitted
        result["offline"] = offline
        log.info("offline on %d device(s): %.0f tok/s (%.0f per GPU)", gpus, offline["tokens_per_s"],
                 offline["tokens_per_s_per_gpu"])
        rng = np.random.default_rng(args.seed)
        for qps in [float(q) for q in args.server_qps.split(",") if q]:
            gaps = rng.exponential(1.0 / qps, int(qps * args.server_seconds) + 1)
            arrivals = [(float(off), i % len(prompts)) for i, off in enumerate(np.cumsum(gaps) - gaps[0])]
            row = run_requests(engines, arrivals, prompts, o_len, timeout_s=args.server_seconds + 600)
            row["qps"] = qps
            row["meets_server"] = meets_limits(row, limits)
            result.setdefault("server", []).append(row)
            log.info("server %s", row)
    finally:
        for shutdown in shutdowns:
            shutdown()
        for sampler in clocks:
            sampler.close()
    if baseline:
        result["baseline"] = baseline
        result["scaling_efficiency"] = result["offline"]["tokens_per_s_per_gpu"] / baseline["tokens_per_s_per_gpu"]
    with open(os.path.join(args.out, "bench.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    table = "\n".join(table_lines(args, cfg, dtype, result))
    print("\n" + table)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table + "\n")
    return 0


def table_lines(args, cfg, dtype, result: dict) -> list[str]:
    """The printed summary, from bench.json's fields only (so the table and the JSON cannot disagree)."""
    offline, gpus = result["offline"], result["gpus"]
    eff = ""
    if "scaling_efficiency" in result:
        base = result["baseline"]
        eff = (f", scaling efficiency {result['scaling_efficiency']:.0%} against {base['path']} "
               f"({base['tokens_per_s_per_gpu']:.0f} tok/s per GPU on {base['gpus']})")
    lines = [f"shape {args.shape} layers {cfg.num_hidden_layers} {dtype}, TP {args.tensor_parallel} x DP "
             f"{args.data_parallel} = {gpus} device(s): Offline {offline['tokens_per_s']:.0f} tok/s "
             f"({offline['tokens_per_s_per_gpu']:.0f} per GPU){eff}",
             f"device {result.get('device_name', 'not recorded')}"]
    for i, stats in enumerate(offline.get("gpu_clock") or []):
        if stats:
            lines.append(f"  Offline GPU {i}: {stats_line(stats)}")
    limits = result.get("server_limits", {"name": "server"})
    for row in result.get("server", []):
        if not row["completed"]:
            lines.append(f"{limits['name']} qps {row['qps']:.2f}: none of {row['issued']} requests completed"
                         + (f" ({row['error']})" if row.get("error") else "") + f", {limits['name']} no")
            continue
        lost = f", {row['issued'] - row['completed']} of {row['issued']} requests lost" \
            if row["completed"] < row["issued"] else ""
        lines.append(f"{limits['name']} qps {row['qps']:.2f}: {row['tokens_per_s']:.0f} tok/s, p99 TTFT "
                     f"{row['ttft_p99_ms']:.0f} ms, p99 TPOT {row['tpot_p99_ms']:.1f} ms{lost}"
                     + (f" ({row['error']})" if row.get("error") else "")
                     + f", {limits['name']} {'ok' if row['meets_server'] else 'no'}")
    return lines
