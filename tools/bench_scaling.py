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

from bench_paths import bench_model, loadgen_offline
from mlperf_llama2 import constants
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


def run_requests(engines, arrivals, prompts, outputs, timeout_s: float) -> dict:
    """Feed (time offset, prompt index) arrivals to the engines' loops; per-request TTFT/TPOT and tokens/s."""
    router = LeastLoadedRouter(len(engines))
    lock, finished = threading.Lock(), threading.Event()
    arrive, first, done = {}, {}, {}

    def on_first(seq, _tok):
        with lock:
            first[seq.request_id] = time.perf_counter()

    def on_done(seq):
        router.release(seq.request_id)
        with lock:
            done[seq.request_id] = (time.perf_counter(), len(seq.output))
            if len(done) == len(arrivals):
                finished.set()

    for engine in engines:
        engine.start_loop(on_first, on_done, lambda exc: finished.set())
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
            "tpot_p99_ms": float(np.percentile(tpot, 99)) if len(tpot) else None}


def run_scaling(args, cfg, prompts, o_len, p_len) -> int:
    """The multi-device benchmark; `args` are tools/bench.py's parsed flags."""
    apply_dist_env()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gpus = args.tensor_parallel * args.data_parallel
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
                    "data_parallel": args.data_parallel, "setup_s": time.perf_counter() - t,
                    "kv_cache": {"dtype": args.kv_cache_dtype, "scales": None if kv_scales is None else
                                 "unit (1.0 per layer and KV head; timing only)",
                                 "storage": [str(kv_storage(e).dtype).removeprefix("torch.") for e in engines]},
                    "workload": {"prompt_mean": float(p_len.mean()), "output_mean": float(o_len.mean())}}
    try:
        for engine in engines:  # warm-up
            engine.generate(prompts[:8], SamplingParams(4, ignore_eos=True))
        forced = {i: int(n) for i, n in enumerate(o_len)}
        replicas = [EngineBackend(engine, forced_output_lengths=forced) for engine in engines]
        backend = replicas[0] if len(replicas) == 1 else DataParallelBackend(replicas)
        run = loadgen_offline(backend, prompts, os.path.join(args.out, "loadgen-offline"))
        tokens = int(o_len.sum())
        offline = {**run, "tokens": tokens, "tokens_per_s": tokens / run["wall_s"],
                   "tokens_per_s_per_gpu": tokens / run["wall_s"] / gpus}
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
            row["meets_server"] = (row["ttft_p99_ms"] or 1e18) <= constants.SERVER_TTFT_MS and \
                (row["tpot_p99_ms"] or 1e18) <= constants.SERVER_TPOT_MS
            result.setdefault("server", []).append(row)
            log.info("server %s", row)
    finally:
        for shutdown in shutdowns:
            shutdown()
    if args.baseline_json:
        with open(args.baseline_json) as fh:
            base = json.load(fh)
        if "offline" in base:
            per_gpu = base["offline"]["tokens_per_s"] / base["gpus"]
        else:  # a single-device tools/bench.py run: its engine row
            per_gpu = next(r["tokens_per_s"] for r in base["rows"] if r["backend"] == "engine")
        result["scaling_efficiency"] = result["offline"]["tokens_per_s_per_gpu"] / per_gpu
    with open(os.path.join(args.out, "bench.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    eff = f", scaling efficiency {result['scaling_efficiency']:.0%}" if "scaling_efficiency" in result else ""
    print(f"\nshape {args.shape} layers {cfg.num_hidden_layers} {dtype}, TP {args.tensor_parallel} x DP "
          f"{args.data_parallel} = {gpus} device(s): Offline {result['offline']['tokens_per_s']:.0f} tok/s "
          f"({result['offline']['tokens_per_s_per_gpu']:.0f} per GPU){eff}")
    for row in result.get("server", []):
        print(f"server qps {row['qps']:.2f}: {row['tokens_per_s']:.0f} tok/s, p99 TTFT {row['ttft_p99_ms']:.0f} ms, "
              f"p99 TPOT {row['tpot_p99_ms']:.1f} ms, server {'ok' if row['meets_server'] else 'no'}")
    return 0
