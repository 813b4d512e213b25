"""Times the paged decode kernel over auto (fp16), fp8 and int8 KV caches at 70B shapes; prints a table and JSON.

One decode step's attention for B sequences of `--context` tokens each (64 query heads, 8 KV heads,
head dim 128, blocks of 16 scattered over the cache), per layer. The 8-bit caches hold the fp16
cache's random values quantized with synthetic per-head scales (each head's absolute maximum over
the 8-bit range: no calibration, these are random numbers). Every kernel variant of
`paged_decode_triton.DECODE_CONFIGS` is timed (or those named by --configs); each row also reports
its largest difference from the base kernel run over the dequantized fp16 cache (a sanity check of
the variant on the GPU), and a variant that fails to compile is listed, not fatal. The last lines
suggest the values of `DEFAULT_DECODE_CONFIG_16BIT` / `_8BIT` (least total time over the batches).

  python3 tools/bench_kv_decode.py --out /tmp/kv_decode.json
  TRITON_INTERPRET=1 python3 tools/bench_kv_decode.py --device cpu --batches 2 --context 40 --heads 8 \\
      --kv-heads 2 --head-dim 32 --configs base,n64w4s3v_split4 --iters 1   # a smoke run of the script on a CPU

`--whole-config` times instead the whole-config int8 mode's decode attention (whole_config_decode_triton: two
passes, int8 Q, P and K/V, the 16-bit mask and output quantizers) in each of its `WC_DECODE_CONFIGS` variants,
beside the Linear-only mode's int8-cache kernel (`DEFAULT_DECODE_CONFIG_8BIT`) on the same cache: what honouring
every rule costs in attention. Each variant's largest difference from the `base` variant is reported (0 expected
at the same tile size).

`--flat D:C:P[:N]` times instead the attention of a flat step (`--graph-mixed-tokens`: every token a row): D
decode rows at context C, then N prompt chunks of P tokens (each after a C-token prefix), the rows' attention one
decode-kernel program per row (the engine's flat steps today, `DEFAULT_DECODE_CONFIG_*`) against
`paged_rows_attention` (consecutive rows of a sequence together, `flat_rows.row_groups`) in each of `--row-configs`
(ROWSrBLOCK_NnWARPSwSTAGESs, e.g. 8r32n4w2s); every row's largest difference from the per-row kernel is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.engine.kv_cache import FP8_MAX, INT8_MAX, dequantize, quantize  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

STORAGE = {"fp8": (torch.float8_e4m3fn, FP8_MAX), "int8": (torch.int8, INT8_MAX)}


def paged_case(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, block_size: int,
               device: torch.device, seed: int):
    """(q [B, H, D], fp16 k/v caches [S, KV, D], block tables [B, W] int32 scattered, context lens [B] int32)."""
    g = torch.Generator(device=device).manual_seed(seed)
    blocks = -(-context // block_size)
    k = torch.randn(batch * blocks * block_size, kv_heads, head_dim, generator=g, device=device).half()
    v = torch.randn(k.shape, generator=g, device=device).half()
    table = torch.randperm(batch * blocks, generator=g, device=device).to(torch.int32).view(batch, blocks)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn(batch, heads, head_dim, generator=g, device=device).half()
    return q, k, v, table, lens


def timed_ms(fn, device: torch.device, iters: int) -> float:
    for _ in range(min(iters, 3)):
        fn()
    if device.type != "cuda":
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) / iters * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / iters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="256,384,512", help="comma-separated batch sizes")
    ap.add_argument("--context", type=int, default=750, help="cached tokens per sequence")
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--configs", default=None,
                    help="comma-separated kernel variants to time: paged_decode_triton.DECODE_CONFIGS names, or "
                         "BLOCK_NxWARPS (the base kernel with that tile); default: every DECODE_CONFIGS name")
    ap.add_argument("--whole-config", action="store_true",
                    help="time the whole-config int8 decode variants (WC_DECODE_CONFIGS) against the int8 cache kernel")
    ap.add_argument("--flat", default=None, metavar="D:C:P[:N]",
                    help="time a flat step's attention instead: D decode rows at context C and N (default 1) prompt "
                         "chunks of P tokens after a C-token prefix, per row against grouped rows")
    ap.add_argument("--row-configs", default="8r32n4w2s,4r32n4w2s,16r32n4w2s,8r64n4w2s,8r16n4w3s,8r32n8w2s,2r16n1w8s",
                    help="--flat: paged_rows_attention launches, ROWSrBLOCK_NnWARPSwSTAGESs, comma-separated")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("needs a CUDA device (or TRITON_INTERPRET=1 for a CPU smoke run)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} but torch sees no CUDA GPU; pass --device cpu with TRITON_INTERPRET=1 "
                        "for a CPU smoke run")
    from mlperf_llama2.engine import paged_decode_triton as pdt

    if args.whole_config:
        report(whole_config_rows(args, device, pdt), args, device, reference="int8")
        return 0
    if args.flat:
        rows = flat_rows(args, device, pdt)
        print_flat(rows, args, device)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "args": vars(args), "rows": rows}, fh, indent=1)
        return 0
    names = args.configs.split(",") if args.configs else list(pdt.DECODE_CONFIGS)
    configs = {name: parse_config(name, pdt) for name in names if name}  # a bad name: UserError, exit 2
    scale = args.head_dim ** -0.5
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        q, k, v, table, lens = paged_case(batch, args.context, args.heads, args.kv_heads, args.head_dim,
                                          args.block_size, device, seed=batch)
        caches = {"auto": (k, v, None, k, v)}
        for name, (storage, qmax) in STORAGE.items():
            scales = torch.stack([x.float().abs().amax(dim=(0, 2)) / qmax for x in (k, v)])  # [2, KV] synthetic
            k8, v8 = quantize(k, scales[0], storage), quantize(v, scales[1], storage)
            caches[name] = (k8, v8, scales.contiguous(),
                            dequantize(k8, scales[0], torch.float16), dequantize(v8, scales[1], torch.float16))
        for name, (kc, vc, scales, kd, vd) in caches.items():
            read_gb = 2 * batch * args.context * args.kv_heads * args.head_dim * kc.element_size() / 1e9
            # every variant is checked against the base kernel over the (dequantized) 16-bit cache
            want = pdt.paged_decode_attention(q, kd, vd, table, lens, scale, args.block_size, config="base")
            for cname, cfg in configs.items():
                row = {"kv_cache_dtype": name, "batch": batch, "context": args.context, "heads": args.heads,
                       "kv_heads": args.kv_heads, "head_dim": args.head_dim, "config": cname,
                       "kernel": dataclasses.asdict(cfg), "kv_gb_read": read_gb}
                run = lambda cfg=cfg: pdt.paged_decode_attention(q, kc, vc, table, lens, scale,  # noqa: E731
                                                                 args.block_size, kv_scales=scales, config=cfg)
                try:
                    err = float((run().float() - want.float()).abs().max())
                    ms = timed_ms(run, device, args.iters)
                except Exception as e:  # a variant that fails to compile here (shared memory...): reported
                    rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                    continue
                rows.append({**row, "ms": ms, "tb_per_s": read_gb / ms, "max_abs_diff_vs_base_fp16": err})
        del caches, q, k, v
    report(rows, args, device)
    return 0


def parse_flat(text: str) -> tuple[int, int, int, int]:
    """D:C:P[:N] -> (decodes, context, prompt tokens a chunk, chunks); a bad spec is one line."""
    parts = text.split(":")
    try:
        values = [int(x) for x in parts]
    except ValueError:
        values = []
    if (len(values) not in (3, 4) or min(values) < 0 or (values[0] and values[1] < 1)
            or (len(values) == 4 and values[3] < 1) or values[0] + values[2] < 1):
        raise UserError(f"--flat must be D:C:P[:N] (decode rows, their context >= 1, prompt tokens a chunk after a "
                        f"C-token prefix, chunks >= 1; some rows), got {text!r}")
    return (*values, 1)[:4] if len(values) == 3 else tuple(values)


def parse_row_config(text: str) -> dict:
    """ROWSrBLOCK_NnWARPSwSTAGESs -> paged_rows_attention's launch keywords."""
    m = re.fullmatch(r"(\d+)r(\d+)n(\d+)w(\d+)s", text)
    if not m:
        raise UserError(f"--row-configs: {text!r} is not ROWSrBLOCK_NnWARPSwSTAGESs (e.g. 8r32n4w2s)")
    return {"rows": int(m[1]), "block_n": int(m[2]), "num_warps": int(m[3]), "num_stages": int(m[4])}


def flat_case(decodes: int, context: int, prompt: int, chunks: int, heads: int, kv_heads: int, head_dim: int,
              block_size: int, device: torch.device, seed: int):
    """A flat step's rows: (q [T, H, D], fp16 k/v caches [S, KV, D], tables [T, W] int32, ctx [T] int64 on the host,
    same-as-previous [T] bool). Decode row i is sequence i at context `context`; chunk j's rows are one sequence
    at contexts context + 1 .. context + prompt. Blocks scattered."""
    import numpy as np

    g = torch.Generator(device=device).manual_seed(seed)
    seqs = [(context, 1)] * decodes + [(context + prompt, prompt)] * chunks  # (cached tokens, rows)
    widths = [-(-n // block_size) for n, _ in seqs]
    perm = torch.randperm(sum(widths), generator=g, device=device).to(torch.int32)
    tables, ctx, same, start = [], [], [], 0
    width = max(widths)
    for (n, rows), w in zip(seqs, widths):
        table = torch.zeros(width, dtype=torch.int32, device=device)
        table[:w] = perm[start:start + w]
        start += w
        for r in range(rows):
            tables.append(table)
            ctx.append(n - rows + 1 + r)
            same.append(r > 0)
    t = len(ctx)
    k = torch.randn(sum(widths) * block_size, kv_heads, head_dim, generator=g, device=device).half()
    v = torch.randn(k.shape, generator=g, device=device).half()
    q = torch.randn(t, heads, head_dim, generator=g, device=device).half()
    return q, k, v, torch.stack(tables), np.asarray(ctx), np.asarray(same)


def flat_rows(args, device: torch.device, pdt) -> list:
    """Per cache dtype: the per-row decode kernel, then paged_rows_attention in each --row-configs launch."""
    from mlperf_llama2.engine.flat_rows import row_groups

    decodes, context, prompt, chunks = parse_flat(args.flat)
    configs = {name: parse_row_config(name) for name in args.row_configs.split(",") if name}
    q, k, v, table, ctx, same = flat_case(decodes, context, prompt, chunks, args.heads, args.kv_heads,
                                          args.head_dim, args.block_size, device, seed=0)
    lens = torch.as_tensor(ctx, dtype=torch.int32, device=device)
    scale = args.head_dim ** -0.5
    caches = {"auto": (k, v, None)}
    for name, (storage, qmax) in STORAGE.items():
        scales = torch.stack([x.float().abs().amax(dim=(0, 2)) / qmax for x in (k, v)]).contiguous()
        caches[name] = (quantize(k, scales[0], storage), quantize(v, scales[1], storage), scales)
    base = {"decodes": decodes, "context": context, "prompt": prompt, "chunks": chunks, "rows": len(ctx)}
    out = []
    for name, (kc, vc, scales) in caches.items():
        per_row = lambda: pdt.paged_decode_attention(q, kc, vc, table, lens, scale,  # noqa: E731
                                                     args.block_size, kv_scales=scales)
        want = per_row().float()
        out.append({**base, "kv_cache_dtype": name, "kernel": "per row (decode kernel)",
                    "ms": timed_ms(per_row, device, args.iters), "max_abs_diff_vs_per_row": 0.0})
        for cname, launch in configs.items():
            groups = torch.as_tensor(row_groups(ctx, same, launch["rows"]), device=device)
            run = lambda launch=launch, groups=groups: pdt.paged_rows_attention(  # noqa: E731
                q, kc, vc, table, groups, scale, args.block_size, kv_scales=scales, **launch)
            row = {**base, "kv_cache_dtype": name, "kernel": f"rows {cname}"}
            try:
                err = float((run().float() - want).abs().max())
                out.append({**row, "ms": timed_ms(run, device, args.iters), "max_abs_diff_vs_per_row": err})
            except Exception as e:  # a launch that fails to compile here (shared memory, registers): reported
                out.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    return out


def print_flat(rows: list, args, device: torch.device) -> None:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    r0 = rows[0]
    print(f"flat step attention, one layer: {r0['decodes']} decode rows at context {r0['context']} + {r0['chunks']} "
          f"chunk(s) of {r0['prompt']} prompt tokens ({r0['rows']} rows); H {args.heads} KV {args.kv_heads} "
          f"D {args.head_dim}; {device_name}")
    print(f"{'kv dtype':<9}{'kernel':<26}{'ms':>9}{'vs per row':>11}{'max diff':>10}")
    ref = {r["kv_cache_dtype"]: r["ms"] for r in rows if r["kernel"].startswith("per row") and "ms" in r}
    for r in rows:
        if "ms" not in r:
            print(f"{r['kv_cache_dtype']:<9}{r['kernel']:<26}  {r['error']}")
            continue
        print(f"{r['kv_cache_dtype']:<9}{r['kernel']:<26}{r['ms']:>9.3f}{ref[r['kv_cache_dtype']] / r['ms']:>10.2f}x"
              f"{r['max_abs_diff_vs_per_row']:>10.1e}")


def whole_config_rows(args, device: torch.device, pdt) -> list:
    """Per batch: the int8-cache kernel of the Linear-only mode, then every whole-config decode variant."""
    from mlperf_llama2.engine import whole_config_decode_triton as wcd

    names = args.configs.split(",") if args.configs else list(wcd.WC_DECODE_CONFIGS)
    configs = {name: wcd.wc_decode_config(name) for name in names if name}
    scale = args.head_dim ** -0.5
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        q, k, v, table, lens = paged_case(batch, args.context, args.heads, args.kv_heads, args.head_dim,
                                          args.block_size, device, seed=batch)
        scales = torch.stack([x.float().abs().amax(dim=(0, 2)) / INT8_MAX for x in (k, v)]).contiguous()
        k8, v8 = quantize(k, scales[0], torch.int8), quantize(v, scales[1], torch.int8)
        qs = q.float().abs().amax(dim=(1, 2)) / INT8_MAX  # [B]: the per-token scale over all heads
        q8 = torch.round(q.float() / qs[:, None, None]).clamp(-127, 127).to(torch.int8)
        read_gb = 2 * batch * args.context * args.kv_heads * args.head_dim / 1e9
        base = dict(batch=batch, context=args.context, heads=args.heads, kv_heads=args.kv_heads,
                    head_dim=args.head_dim, kv_gb_read=read_gb)
        linear = lambda: pdt.paged_decode_attention(q, k8, v8, table, lens, scale, args.block_size,  # noqa: E731
                                                    kv_scales=scales)
        rows.append({**base, "kv_cache_dtype": "int8", "config": f"linear-only:{pdt.DEFAULT_DECODE_CONFIG_8BIT}",
                     "ms": timed_ms(linear, device, args.iters), "max_abs_diff_vs_base_fp16": 0.0})
        rows[-1]["tb_per_s"] = read_gb / rows[-1]["ms"]
        s_mask, s_out = 40.0 / 32767, 8.0 / 32767  # 16-bit static scales (synthetic ranges)
        want = None
        for cname, cfg in configs.items():
            row = {**base, "kv_cache_dtype": "wc-int8", "config": cname, "kernel": dataclasses.asdict(cfg)}
            run = lambda cfg=cfg: wcd.decode_q8(q8, qs, k8, v8, table, lens, scale, args.block_size,  # noqa: E731
                                                scales, s_mask, s_out, torch.float16, config=cfg)
            try:
                got = run().float()
                want = got if want is None else want
                ms = timed_ms(run, device, args.iters)
            except Exception as e:  # a variant that fails to compile here: reported
                rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                continue
            rows.append({**row, "ms": ms, "tb_per_s": read_gb / ms,
                         "max_abs_diff_vs_base_fp16": float((got - want).abs().max())})
    return rows


def parse_config(text: str, pdt):
    """A DECODE_CONFIGS name, or BLOCK_NxWARPS (the base kernel with that tile, as before)."""
    tile = re.fullmatch(r"(\d+)x(\d+)", text)
    if tile:
        return dataclasses.replace(pdt.decode_config("base"), block_n=int(tile[1]), num_warps=int(tile[2]))
    return pdt.decode_config(text)


def report(rows, args, device: torch.device, reference: str = "auto") -> None:
    """Prints the best variant per (cache dtype, batch), every variant's ms, the suggested defaults, and the JSON."""
    ok = [r for r in rows if "ms" in r]
    best = {}
    for r in ok:
        key = (r["kv_cache_dtype"], r["batch"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"paged decode, one layer: H {args.heads} KV {args.kv_heads} D {args.head_dim} context {args.context}, "
          f"{device_name}; 8-bit scales synthetic (per-head amax / qmax of random data)")
    print(f"{'kv dtype':<9}{'batch':>6}  {'best':<18}{'ms':>9}{'TB/s':>7}{'vs ' + reference:>9}{'max diff':>10}")
    for (name, batch), r in best.items():
        auto = best[(reference, batch)]["ms"] if (reference, batch) in best else float("nan")
        print(f"{name:<9}{batch:>6}  {r['config']:<18}{r['ms']:>9.3f}{r['tb_per_s']:>7.2f}"
              f"{auto / r['ms']:>8.2f}x{r['max_abs_diff_vs_base_fp16']:>10.1e}")
    columns = sorted({(r["kv_cache_dtype"], r["batch"]) for r in rows}, key=lambda c: (c[0] != reference, c))
    print("ms per variant:" + "".join(f"{f'{n}@{b}':>12}" for n, b in columns))
    for cname in dict.fromkeys(r["config"] for r in rows):
        ms = {(r["kv_cache_dtype"], r["batch"]): r["ms"] for r in ok if r["config"] == cname}
        failed = {(r["kv_cache_dtype"], r["batch"]) for r in rows if r["config"] == cname and "error" in r}
        print(f"{cname:<15}" + "".join(f"{ms[c]:>12.3f}" if c in ms else f"{'failed' if c in failed else '-':>12}"
                                       for c in columns))
    defaults = (("DEFAULT_WC_DECODE_CONFIG", ("wc-int8",)),) if args.whole_config else \
        (("DEFAULT_DECODE_CONFIG_16BIT", ("auto",)), ("DEFAULT_DECODE_CONFIG_8BIT", ("fp8", "int8")))
    for label, dtypes in defaults:
        totals = {}
        for r in ok:
            if r["kv_cache_dtype"] in dtypes:
                totals.setdefault(r["config"], []).append(r["ms"])
        full = {c: sum(v) for c, v in totals.items() if len(v) == max(map(len, totals.values()))}
        if full:
            print(f"suggested: {label} = {min(full, key=full.get)!r} (least total ms over its dtypes and batches)")
    for r in rows:
        if "error" in r:
            print(f"failed: {r['config']} {r['kv_cache_dtype']} B={r['batch']}: {r['error']}")
    result = {"device": device_name, "scales": "synthetic: per-head amax / qmax of the random cache", "rows": rows}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    sys.exit(run_cli(main))
