"""Benchmark the W8A8 int8 Linear (activation quantization included) against fp16 on Llama-2 GEMM shapes.

Prints a table and writes JSON (PERF.md rules). Parts, each optional:
  gemm    per shape (7B and 70B: fused QKV, o, fused gate/up, down) and M in --m: fp16 `F.linear`,
          `torch._int_mm` alone, and the whole Int8Linear (Triton quantize + _int_mm + Triton rescale);
          timed as CUDA-graph replays (what a decode loop with graphs pays) and eagerly.
  decode  one decode step of a random 7B-shape transformers Llama (slots installed, eager attention),
          fp16 vs the same model with every Linear an Int8Linear, batch 32 and 128, context 512.
  mem70b  a Llama-2-70B-shaped set of int8 weights built directly in int8: bytes and free GPU memory.

    python tools/bench_int8.py --out results/int8 [--parts gemm,decode,mem70b]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.quant.int8_linear import Int8Linear, int_matmul  # noqa: E402

# (model, name, K, N): fused projections as an engine runs them
SHAPES = [
    ("7B", "qkv", 4096, 12288), ("7B", "o", 4096, 4096), ("7B", "gate_up", 4096, 22016), ("7B", "down", 11008, 4096),
    ("70B", "qkv", 8192, 10240), ("70B", "o", 8192, 8192), ("70B", "gate_up", 8192, 57344),
    ("70B", "down", 28672, 8192),
]


def time_eager(fn, budget_s: float = 0.05) -> float:
    """Mean ms per call, calls queued back to back."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    iters = max(5, min(500, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def time_graph(fn, calls: int = 20, replays: int = 10) -> float:
    """Mean ms per call when `calls` calls are captured in one CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / (replays * calls)
    del graph
    return ms


def bench_gemm(ms_list: list[int]) -> list[dict]:
    rows = []
    for model, name, k, n in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        layer = Int8Linear.from_float(w)
        fused = Int8Linear.from_float(w)
        fused.gemm = "fused"
        for m in ms_list:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            qx = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
            row = {"model": model, "op": name, "M": m, "K": k, "N": n}
            for label, fn in (("fp16", lambda: F.linear(x, w)), ("int_mm", lambda: int_matmul(qx, layer.qweight)),
                              ("int8", lambda: layer(x)), ("int8_fused", lambda: fused(x))):
                row[f"{label}_graph_ms"] = time_graph(fn, calls=20 if m <= 2048 else 4, replays=5)
                row[f"{label}_eager_ms"] = time_eager(fn)
            row["speedup_graph"] = row["fp16_graph_ms"] / row["int8_graph_ms"]
            row["speedup_eager"] = row["fp16_eager_ms"] / row["int8_eager_ms"]
            row["speedup_fused_graph"] = row["fp16_graph_ms"] / row["int8_fused_graph_ms"]
            row["int8_tops"] = 2 * m * k * n / row["int8_graph_ms"] / 1e9
            rows.append(row)
            print(f"{model:>4} {name:>8} M={m:>6} K={k:>6} N={n:>6} | fp16 {row['fp16_graph_ms']:8.4f} ms  "
                  f"int_mm {row['int_mm_graph_ms']:8.4f}  int8 {row['int8_graph_ms']:8.4f} "
                  f"x{row['speedup_graph']:.2f} (eager x{row['speedup_eager']:.2f})  "
                  f"fused {row['int8_fused_graph_ms']:8.4f} x{row['speedup_fused_graph']:.2f}", flush=True)
            x = qx = None  # free before the next M
        w = layer = fused = None  # free before the next shape
        torch.cuda.empty_cache()
    return rows


def seven_b_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


@torch.no_grad()
def decode_step_ms(model, batch: int, context: int) -> float:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    prompt = torch.randint(3, 32000, (batch, context), device="cuda")
    model(prompt, past_key_values=cache, use_cache=True)
    step = prompt[:, -1:]
    for _ in range(2):
        model(step, past_key_values=cache, use_cache=True)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    steps = 8
    start.record()
    for _ in range(steps):
        model(step, past_key_values=cache, use_cache=True)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def bench_decode() -> list[dict]:
    from mlperf_llama2.quant.llama_slots import install_slots

    model = install_slots(seven_b_model())
    rows = []
    fp16 = {b: decode_step_ms(model, b, 512) for b in (32, 128)}
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    Int8Linear.from_float(module.weight, module.bias))
    torch.cuda.empty_cache()
    for b in (32, 128):
        ms = decode_step_ms(model, b, 512)
        rows.append({"batch": b, "context": 512, "fp16_ms": fp16[b], "int8_ms": ms, "speedup": fp16[b] / ms})
        print(f"7B decode step B={b} ctx=512 | fp16 {fp16[b]:.2f} ms  int8 {ms:.2f} ms  x{fp16[b] / ms:.2f}",
              flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def bench_mem70b() -> dict:
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    layers = []
    for _ in range(80):
        layers.append([Int8Linear.random(8192, 10240), Int8Linear.random(8192, 8192),
                       Int8Linear.random(8192, 57344), Int8Linear.random(28672, 8192),
                       torch.ones(2, 8192, device="cuda", dtype=torch.float16)])
    embed = torch.empty(32000, 8192, device="cuda", dtype=torch.float16)
    lm_head = Int8Linear.random(8192, 32000)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - base
    free, total = torch.cuda.mem_get_info()
    x = torch.randn(2048, 8192, device="cuda", dtype=torch.float16)
    y = layers[0][2](x)  # one fused gate/up at M 2048 runs
    result = {"weights_gb": weights / 1e9, "free_gb": free / 1e9, "total_gb": total / 1e9,
              "kv_tokens_fp16_in_free": int(free / (80 * 2 * 8 * 128 * 2)), "forward_ok": bool(torch.isfinite(y).all())}
    print(f"70B int8 weights {result['weights_gb']:.1f} GB; free {result['free_gb']:.1f} of "
          f"{result['total_gb']:.1f} GB (room for {result['kv_tokens_fp16_in_free']} fp16 KV tokens)", flush=True)
    del layers, embed, lm_head, x, y
    torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for bench_int8.json")
    parser.add_argument("--parts", default="gemm,decode,mem70b")
    parser.add_argument("--m", default="32,256,2048,16384", help="token counts M")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_int8: needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    parts = set(args.parts.split(","))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    path = os.path.join(args.out, "bench_int8.json")
    for part, fn in (("mem70b", bench_mem70b), ("gemm", lambda: bench_gemm([int(m) for m in args.m.split(",")])),
                     ("decode", bench_decode)):
        if part in parts:
            t0 = time.time()
            result[part] = fn()
            result[f"{part}_seconds"] = time.time() - t0
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
