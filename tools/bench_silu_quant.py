"""SiLU·up quantized per token, each way the engine can compute it, timed side by side on one GPU.

The decoder's MLP turns gate_up [T, 2 I] (16-bit) into the 8-bit input of down_proj and its per-token scales:

  fused        fused_quant_triton.silu_mul_quant: two passes over (token, 1,024-column) programs
  unfused      fused_triton.silu_mul, then the Linear's own per-token quantizer (int8_kernels.quantize_rows[_fp8])
  whole-config whole_config_triton.silu_mul_q8: the fused passes with the config's 16-bit quantizers (int8)

Each variant runs as a CUDA graph of --calls launches (as in the engine's decode step), timed over --reps
replays; the table gives µs a call and the effective bandwidth of the least traffic (read gate_up, write the
8-bit row and its scales) against --peak-tbs (H200: 4.8 TB/s, H100 SXM: 3.35).

  python3 tools/bench_silu_quant.py --tokens 256,512,4096 --out /tmp/silu
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_int8 import time_graph  # noqa: E402  (calls captured in one CUDA graph, replayed)


def variants():
    import torch

    from mlperf_llama2.engine import fused_quant_triton as fq
    from mlperf_llama2.engine import fused_triton as ft
    from mlperf_llama2.engine import whole_config_triton as wc
    from mlperf_llama2.quant import int8_kernels as ik

    # On the GPU before any capture: a host-to-device copy cannot be captured in a CUDA graph
    scales = (torch.tensor(0.05 / 32767, device="cuda"), torch.tensor([0.05 / 32767, 0.05 / 32767], device="cuda"))
    return {
        "fp8 fused": lambda gu: fq.silu_mul_quant(gu, "fp8"),
        "fp8 unfused": lambda gu: ik.quantize_rows_fp8(ft.silu_mul(gu)),
        "int8 fused": lambda gu: fq.silu_mul_quant(gu, "int8"),
        "int8 unfused": lambda gu: ik.quantize_rows(ft.silu_mul(gu)),
        "whole-config": lambda gu: wc.silu_mul_q8(gu, *scales),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="256,512,2048,4096", help="comma-separated T")
    ap.add_argument("--intermediate", type=int, default=28672, help="I (Llama-2-70B: 28,672)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--peak-tbs", type=float, default=4.8, help="HBM bandwidth for the fraction column, TB/s")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        raise UserError(f"bench_silu_quant: --tokens must be comma-separated integers, got {args.tokens!r}")
    if min(tokens) < 1 or args.intermediate < 1 or args.calls < 1 or args.reps < 1:
        raise UserError("bench_silu_quant: --tokens, --intermediate, --calls and --reps must be >= 1")
    import torch

    if not torch.cuda.is_available():
        raise UserError("bench_silu_quant: needs a CUDA GPU")
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for t in tokens:
        gate_up = (torch.randn(t, 2 * args.intermediate, device="cuda", generator=gen) * 3).half()
        least_bytes = t * args.intermediate * (2 * 2 + 1) + 4 * t
        fns = variants()
        outputs = {name: fn(gate_up) for name, fn in fns.items()}
        for name, fn in fns.items():
            us = 1e3 * time_graph(lambda fn=fn, gu=gate_up: fn(gu), args.calls, args.reps)  # ms a call -> µs
            tbs = least_bytes / (us * 1e-6) / 1e12
            kind = name.split()[0]
            same = None  # fused and unfused: the same bits (the fused kernels' contract)
            if kind in ("fp8", "int8"):
                q, s = outputs[name]
                q_ref, s_ref = outputs[f"{kind} unfused"]
                same = bool(torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref))
            rows.append({"tokens": t, "variant": name, "us_per_call": us, "least_bytes": least_bytes,
                         "effective_tbs": tbs, "fraction_of_peak": tbs / args.peak_tbs,
                         "equals_unfused": same})
        del gate_up
    gpu = torch.cuda.get_device_name()
    lines = [f"{gpu}; I {args.intermediate}, fp16 gate_up; CUDA graphs of {args.calls} calls x {args.reps} replays",
             "| T | variant | µs/call | TB/s (least traffic) | of peak | bits = unfused |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['tokens']} | {r['variant']} | {r['us_per_call']:.1f} | {r['effective_tbs']:.2f} | "
              f"{r['fraction_of_peak']:.0%} | {'-' if r['equals_unfused'] is None else r['equals_unfused']} |"
              for r in rows]
    print("\n".join(lines))
    differ = [f"{r['variant']} at T {r['tokens']}" for r in rows if r["equals_unfused"] is False]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_silu_quant.json"), "w") as f:
        json.dump({"gpu": gpu, "args": vars(args), "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if differ:
        print(f"bench_silu_quant: fused output differs from the unfused path: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
