"""Runs the paged decode attention once per KV-cache dtype (fp16, fp8, int8) inside cudaProfilerStart/Stop, after
a warm-up: the target of an Nsight Compute profile of the decode kernels (`STEPS=attnncu bash
tools/gpu/verify_head.sh`), which says why the 8-bit caches run at ~2.4 TB/s where the fp16 one runs at ~2.9
(docs/results/bench_kv_decode_variants_70b_h100.json): memory, conversion, or latency.

    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats \\
        python3 tools/decode_attn_once.py --batch 256 --context 750

Each dtype runs its engine default (`DEFAULT_DECODE_CONFIG_16BIT` / `_8BIT`) on the same random cache as
tools/bench_kv_decode.py (70B shapes, blocks of 16 scattered over the cache, synthetic per-head scales).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=750)
    ap.add_argument("--dtypes", default="auto,fp8,int8", help="comma-separated: auto (fp16), fp8, int8")
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = sorted(set(dtypes) - {"auto", "fp8", "int8"})
    if unknown or not dtypes:
        raise UserError(f"decode_attn_once: --dtypes takes auto, fp8, int8; got {args.dtypes!r}")
    if args.batch < 1 or args.context < 1:
        raise UserError("decode_attn_once: --batch and --context must be >= 1")
    import torch

    if not torch.cuda.is_available():
        raise UserError("decode_attn_once: needs a CUDA GPU")
    from bench_kv_decode import STORAGE, paged_case

    from mlperf_llama2.engine.kv_cache import quantize
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    device = torch.device("cuda")
    q, k, v, table, lens = paged_case(args.batch, args.context, 64, 8, 128, 16, device, seed=0)
    calls = {}
    for name in dtypes:
        if name == "auto":
            calls[name] = (k, v, None)
            continue
        storage, qmax = STORAGE[name]
        scales = torch.stack([x.float().abs().amax(dim=(0, 2)) / qmax for x in (k, v)]).contiguous()  # [2, KV]
        calls[name] = (quantize(k, scales[0], storage), quantize(v, scales[1], storage), scales)
    run = {name: (lambda kc=kc, vc=vc, s=s: paged_decode_attention(q, kc, vc, table, lens, 128 ** -0.5, 16,
                                                                    kv_scales=s))
           for name, (kc, vc, s) in calls.items()}
    for fn in run.values():  # compile and warm up outside the profiled range
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, fn in run.items():
        torch.cuda.nvtx.range_push(f"decode {name}")
        fn()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    kv_bytes = {name: 2 * args.batch * args.context * 8 * 128 * (2 if name == "auto" else 1) for name in run}
    print("decode_attn_once: ran " + ", ".join(f"{n} ({kv_bytes[n] / 1e6:.0f} MB of K and V)" for n in run))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
