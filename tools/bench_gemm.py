"""Time every GEMM the engine could use at the Llama-2 projection shapes: fp16, int8 and fp8, M from 16 to 16,384.

Kernels (--kernels, comma-separated; default: all but gemm8_fp8_mma):
  fp16                torch.mm on fp16 operands (dense fp16 peak is half the 8-bit one)
  int_mm              torch._int_mm, int8 -> int32, no rescale (M = 16 padded to 17, as Int8Linear does)
  int8_triton         the engine's Triton int8 GEMM with the rescale fused (quant/int8_kernels.py)
  scaled_mm_tensor    torch._scaled_mm fp8, one scale per tensor
  scaled_mm_row       torch._scaled_mm fp8, per-token x per-channel scales, fp32 accumulation
  scaled_mm_row_fast  the same with use_fast_accum=True (Hopper's reduced-precision accumulation)
  gemm8_fp8           quant/gemm8_triton.py fp8, fp32 accumulator promoted every 128 elements of K
  gemm8_fp8_mma       the same, promotion left to Triton (max_num_imprecise_acc)
  gemm8_fp8_fast      gemm8 fp8 without promotion
  gemm8_int8          gemm8 int8 (int32 accumulation, exact)
  ws_fp8              quant/gemm8_ws.py (warp-specialised Gluon kernel) fp8, promoted every 128 elements of K
  ws_fp8_fast         gemm8_ws fp8 without promotion
  ws_int8             gemm8_ws int8

A gemm8_ws kernel takes a fixed tile with a suffix, BMxBN s STAGES p SPLIT [w WGS] (the candidates are
gemm8_ws.CONFIGS; w2 = two MMA partitions): ws_fp8@128x128s5p2, ws_fp8@128x128s6p1w2; without one,
gemm8_ws.default_config(M).

Each (shape, M, kernel) is timed as CUDA-graph replays of calls that cycle through copies of the operands
whose total exceeds twice the L2 cache (so weights come from HBM, as in a model), the median replay taken;
Triton autotuning happens in the warm-up before capture. TOPS = 2 M N K / time (FLOP/s for fp16), and the
fraction of the 1,979 TOPS dense 8-bit peak of an H100/H200 SXM. Each kernel's output is checked once per
(shape, M) against a float64 reference on the same (quantized) operands, on the first 256 rows: relative
Frobenius error. Prints a table; writes bench_gemm.json and table.txt into --out.

--rounds R times every (shape, M) point R times, the kernels in a rotated order each round (round r starts
at the r-th kernel), and keeps the median: on an H100 the same tile timed twice in one sweep differed by up
to 10% (clock and power state drift; bench_gemm_groupm2_70b_h100.json), more than most tile A/Bs decide.
Each row keeps every round's ms and its spread ((max - min) / median); the table names the widest spread.
The SM clock and power over the sweep (nvidia-smi, tools/gpu_clock.py) close the table: each point runs for
milliseconds, so these are burst rates at a higher clock than a sustained load holds (tools/gemm_clocks.py).

    python tools/bench_gemm.py --out results/gemm                              # 70B shapes, all M (H200: < 6 min)
    python tools/bench_gemm.py --shapes 7b --m-list 256,4096 --kernels fp16,gemm8_fp8 --out /tmp/g
    python tools/bench_gemm.py --m-list 1024,4096 --kernels gemm8_fp8,ws_fp8@128x128s5p1,ws_fp8@128x128s5p2 --out /tmp/w
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

PEAK_8BIT_TOPS = 1979.0  # H100 / H200 SXM, dense FP8 and INT8 tensor-core peak
SHAPES = {  # (name, K, N): the projections as the engine runs them (fused QKV and gate/up)
    "70b": [("qkv", 8192, 10240), ("o", 8192, 8192), ("gate_up", 8192, 57344), ("down", 28672, 8192),
            ("lm_head", 8192, 32000)],
    "7b": [("qkv", 4096, 12288), ("o", 4096, 4096), ("gate_up", 4096, 22016), ("down", 11008, 4096),
           ("lm_head", 4096, 32000)],
}
DEFAULT_M = [2 ** i for i in range(4, 15)]  # 16 .. 16384
CHECK_ROWS = 256
REPLAYS = 7
GRAPH_MS = 3.0  # each replay runs at least this long, so launch gaps are amortised


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str
    operands: str  # "fp16", "int8", "fp8_row" (per-token x per-channel scales) or "fp8_tensor"
    label: str  # column header


KERNELS = [
    Kernel("fp16", "fp16", "fp16"), Kernel("int_mm", "int8", "int_mm"),
    Kernel("int8_triton", "int8", "i8_triton"), Kernel("scaled_mm_tensor", "fp8_tensor", "smm_tens"),
    Kernel("scaled_mm_row", "fp8_row", "smm_row"), Kernel("scaled_mm_row_fast", "fp8_row", "smm_fast"),
    Kernel("gemm8_fp8", "fp8_row", "g8_fp8"), Kernel("gemm8_fp8_mma", "fp8_row", "g8_fp8mma"),
    Kernel("gemm8_fp8_fast", "fp8_row", "g8_fp8fst"), Kernel("gemm8_int8", "int8", "g8_int8"),
    Kernel("ws_fp8", "fp8_row", "ws_fp8"), Kernel("ws_fp8_fast", "fp8_row", "ws_fp8fst"),
    Kernel("ws_int8", "int8", "ws_int8"),
]
BY_NAME = {k.name: k for k in KERNELS}
DEFAULT_KERNELS = [k.name for k in KERNELS if k.name != "gemm8_fp8_mma"]
WS_CONFIG = re.compile(r"^(\d+)x(\d+)s(\d+)p(\d+)(?:w(\d))?(?:g(\d+))?(?:d(\d))?$")


def ws_config(suffix: str, flag: str = "--kernels") -> dict:
    """'128x128s5p2' -> the gemm8_ws.WsConfig fields {bm 128, bn 128, stages 5, split 2, wgs 1, group_m 8};
    '...w2': two MMA partitions; '...g16': tile rows grouped 16 at a time in the persistent order (GROUP_M);
    '...d2': promoted fp8 with two MMA groups in flight per partition (WsConfig.depth).
    A dict, not the WsConfig itself: gemm8_ws needs triton, which the argument check must not."""
    match = WS_CONFIG.match(suffix)
    if not match or (match.group(6) is not None and int(match.group(6)) < 1) or match.group(7) not in (None, "1", "2"):
        raise UserError(f"{flag}: a gemm8_ws tile is BMxBNsSTAGESpSPLIT[wWGS][gGROUP_M][dDEPTH] (e.g. "
                        f"128x128s5p1, 128x128s6p1w2, 128x128s6p1w2g16, 128x128s6p1w2d2), got {suffix!r}")
    bm, bn, stages, split, wgs, group_m, depth = match.groups()
    return dict(bm=int(bm), bn=int(bn), stages=int(stages), split=int(split), wgs=int(wgs or 1),
                group_m=int(group_m or 8), depth=int(depth or 1))


def kernel_info(name: str) -> Kernel:
    """The registry entry of a kernel name, a gemm8_ws one possibly with its @tile suffix."""
    base, _, suffix = name.partition("@")
    k = BY_NAME[base]
    return dataclasses.replace(k, name=name, label=f"{k.label}@{suffix}") if suffix else k


def parse_m_list(text: str) -> list[int]:
    try:
        ms = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--m-list must be comma-separated integers, got {text!r}") from None
    if not ms or any(m < 1 for m in ms):
        raise UserError(f"--m-list needs at least one M >= 1, got {text!r}")
    return ms


def parse_kernels(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n.partition("@")[0] not in BY_NAME]
    for n in names:
        base, at, suffix = n.partition("@")
        if at and base in BY_NAME and not base.startswith("ws_"):
            raise UserError(f"--kernels: only the ws_* kernels take a @tile suffix, got {n!r}")
        if at and base in BY_NAME:
            ws_config(suffix)
    if unknown or not names:
        raise UserError(f"--kernels: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BY_NAME)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="70b")
    ap.add_argument("--m-list", default=",".join(map(str, DEFAULT_M)), help="comma-separated M values")
    ap.add_argument("--kernels", default=",".join(DEFAULT_KERNELS), help="comma-separated, from: " + ", ".join(BY_NAME))
    ap.add_argument("--rounds", type=int, default=1,
                    help="time each point this many times, kernels in a rotated order each round; the median is kept")
    ap.add_argument("--out", required=True, help="directory for bench_gemm.json and table.txt")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        raise UserError(f"--rounds must be 1-20, got {args.rounds}")
    args.m_values = parse_m_list(args.m_list)
    args.kernel_names = parse_kernels(args.kernels)
    return args


def tops(m: int, n: int, k: int, ms: float) -> float:
    """Tera-operations per second of one M x N x K GEMM taking `ms` milliseconds."""
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


def rotation_sets(bytes_per_set: int, l2_bytes: int) -> int:
    """Operand copies to cycle through so consecutive calls never find their inputs in L2 (total > 2 x L2)."""
    return max(1, min(64, math.ceil(2 * l2_bytes / max(bytes_per_set, 1))))


def format_table(rows: list[dict], kernel_names: list[str]) -> str:
    """TOPS per (shape, M) and kernel with the fraction of the 8-bit peak; then each kernel's worst relative
    error per shape. A cell is '-' when not run and 'err' when the kernel failed."""
    labels = [kernel_info(n).label for n in kernel_names]
    width = max([13] + [len(lab) for lab in labels])
    head = f"{'shape':>8} {'M':>6} " + " ".join(f"{lab:>{width}}" for lab in labels) + "   best 8-bit"
    lines = [f"TOPS (fraction of {PEAK_8BIT_TOPS:,.0f} dense 8-bit peak)", head, "-" * len(head)]
    cells: dict = {(r["shape"], r["M"], r["kernel"]): r for r in rows}
    keys = sorted({(r["shape"], r["M"]) for r in rows}, key=lambda sm: (_shape_order(sm[0]), sm[1]))
    for shape, m in keys:
        parts, best = [], None
        for name in kernel_names:
            r = cells.get((shape, m, name))
            if r is None:
                parts.append(f"{'-':>{width}}")
            elif r.get("error"):
                parts.append(f"{'err':>{width}}")
            else:
                parts.append(f"{r['tops']:>{width - 6}.0f} {'(%.0f%%)' % (r['frac_peak'] * 100):>5}")
                if name != "fp16" and (best is None or r["tops"] > best[1]):
                    best = (name, r["tops"])
        lines.append(f"{shape:>8} {m:>6} " + " ".join(parts) + (f"   {best[0]}" if best else ""))
    lines += ["", "max relative error vs the float64 reference (first rows), per shape", head.rsplit("   ", 1)[0]]
    for shape in sorted({r["shape"] for r in rows}, key=_shape_order):
        parts = []
        for name in kernel_names:
            errs = [r["rel_err"] for r in rows if r["shape"] == shape and r["kernel"] == name
                    and r.get("rel_err") is not None]
            parts.append(f"{max(errs):>{width}.2e}" if errs else f"{'-':>{width}}")
        lines.append(f"{shape:>8} {'all':>6} " + " ".join(parts))
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        lines.append(f"error: {r['kernel']} {r['shape']} M={r['M']}: {r['error']}")
    return "\n".join(lines)


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's kernel order: the list rotated to start at its r-th kernel, so over len(names) rounds each
    kernel is timed once at each position (a clock that drifts within a round favours no kernel)."""
    i = r % len(names)
    return names[i:] + names[:i]


def merge_rounds(rows: list[dict]) -> dict:
    """One kernel's rows from several rounds -> one row: the median ms (and TOPS from it), every round's ms,
    the spread (max - min) / median; the first round's error check. A failure in any round fails the cell."""
    first = dict(rows[0])
    failed = [r for r in rows if r.get("error")]
    if failed:
        return {key: v for key, v in first.items() if key not in ("ms", "tops", "frac_peak")} | \
            {"error": failed[0]["error"]}
    times = [r["ms"] for r in rows]
    ms = statistics.median(times)
    first.update(ms=ms, tops=tops(first["M"], first["N"], first["K"], ms))
    first["frac_peak"] = first["tops"] / PEAK_8BIT_TOPS
    if len(times) > 1:
        first.update(ms_rounds=times, spread=(max(times) - min(times)) / ms)
    return first


def widest_spread(rows: list[dict]) -> str:
    """The table's line on round-to-round variation ('' for one round)."""
    spread = [r for r in rows if "spread" in r]
    if not spread:
        return ""
    worst = max(spread, key=lambda r: r["spread"])
    med = statistics.median(r["spread"] for r in spread)
    return (f"rounds: {len(worst['ms_rounds'])}, median spread {med:.1%}, widest {worst['spread']:.1%} "
            f"({worst['kernel']} {worst['shape']} M={worst['M']})")


def _shape_order(name: str) -> int:
    order = [s for s, _, _ in SHAPES["70b"]]
    return order.index(name) if name in order else len(order)


# --- GPU side ---------------------------------------------------------------------------------------------

def _fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, K] -> (e4m3 [R, K], float32 scale [R]), one scale per row (per token for x, per channel for w)."""
    scale = (x.float().abs().amax(dim=1) / 448.0).clamp_min(torch.finfo(torch.float32).tiny)
    return (x.float() / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def _fp8_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (x.float().abs().amax() / 448.0).clamp_min(torch.finfo(torch.float32).tiny)
    return (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def make_operands(kind: str, x16: torch.Tensor, w16: torch.Tensor) -> dict:
    """One set of a kernel family's inputs, quantized from the same fp16 x [M, K] and w [N, K]."""
    from mlperf_llama2.quant.int8_linear import quantize_rows_reference, quantize_weight

    if kind == "fp16":
        return {"x": x16, "w": w16}
    if kind == "int8":
        qx, sx = quantize_rows_reference(x16)
        qw, sw = quantize_weight(w16, per_channel=True)
        return {"x": qx, "w": qw, "sx": sx, "sw": sw}
    quant = _fp8_rows if kind == "fp8_row" else _fp8_tensor
    (qx, sx), (qw, sw) = quant(x16), quant(w16)
    return {"x": qx, "w": qw, "sx": sx, "sw": sw}


def kernel_call(name: str, ops: dict) -> Callable[[], torch.Tensor]:
    from mlperf_llama2.quant import int8_kernels
    from mlperf_llama2.quant.gemm8_triton import gemm8
    from mlperf_llama2.quant.int8_linear import int_matmul

    x, w, sx, sw = ops["x"], ops["w"], ops.get("sx"), ops.get("sw")
    half = torch.float16
    base, _, suffix = name.partition("@")
    if base.startswith("ws_"):
        from mlperf_llama2.quant.gemm8_ws import WsConfig, gemm8_ws

        cfg = WsConfig(**ws_config(suffix)) if suffix else None
        kind = "int8" if base == "ws_int8" else "fp8"
        promote = 128 if base == "ws_fp8" else 0
        return lambda: gemm8_ws(x, w, sx, sw, None, half, kind=kind, promote_every=promote, config=cfg)
    calls = {
        "fp16": lambda: torch.mm(x, w.t()),
        "int_mm": lambda: int_matmul(x, w),
        "int8_triton": lambda: int8_kernels.fused_int8_matmul(x, w, sx, sw, None, half),
        "scaled_mm_tensor": lambda: torch._scaled_mm(x, w.t(), scale_a=sx, scale_b=sw, out_dtype=half),
        "scaled_mm_row": lambda: torch._scaled_mm(x, w.t(), scale_a=sx[:, None], scale_b=sw[None, :],
                                                  out_dtype=half),
        "scaled_mm_row_fast": lambda: torch._scaled_mm(x, w.t(), scale_a=sx[:, None], scale_b=sw[None, :],
                                                       out_dtype=half, use_fast_accum=True),
        "gemm8_fp8": lambda: gemm8(x, w, sx, sw, None, half, kind="fp8"),
        "gemm8_fp8_mma": lambda: gemm8(x, w, sx, sw, None, half, kind="fp8", promote_by="mma"),
        "gemm8_fp8_fast": lambda: gemm8(x, w, sx, sw, None, half, kind="fp8", promote_every=0),
        "gemm8_int8": lambda: gemm8(x, w, sx, sw, None, half, kind="int8"),
    }
    return calls[name]


def reference(name: str, ops: dict, rows: int) -> torch.Tensor:
    """float64 result of the first `rows` rows on the kernel's own operands (its rescale included)."""
    acc = ops["x"][:rows].double() @ ops["w"].double().t()
    if name in ("fp16", "int_mm"):
        return acc
    sx, sw = ops["sx"].double(), ops["sw"].double()
    if sx.dim() == 0:
        return acc * sx * sw
    return acc * sx[:rows, None] * sw[None, :]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = out[: ref.shape[0]].double() - ref
    return float(diff.norm() / ref.norm().clamp_min(1e-30))


def time_graph(fns: list[Callable[[], torch.Tensor]]) -> float:
    """Median ms per call: the calls (cycling through operand sets) captured in one CUDA graph, replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:  # warm-up: Triton autotunes and compiles here, outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for fn in fns:
        fn()
    end.record()
    torch.cuda.synchronize()
    per_call = max(start.elapsed_time(end) / len(fns), 1e-3)
    calls = len(fns) * max(1, math.ceil(GRAPH_MS / per_call / len(fns)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(REPLAYS):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(samples)


def bench_point(shape: str, m: int, k: int, n: int, kernel_names: list[str], l2_bytes: int,
                rounds: int = 1) -> list[dict]:
    """Every kernel at one (shape, M), `rounds` times in rotated orders, merged (merge_rounds)."""
    g = torch.Generator(device="cuda").manual_seed(m * 7 + n)
    x16 = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=g)
    w16 = (torch.randn(n, k, device="cuda", dtype=torch.float16, generator=g) * 0.02)
    timed: dict = {name: [] for name in kernel_names}
    for r in range(rounds):
        for row in _time_kernels(shape, m, k, n, round_order(kernel_names, r), l2_bytes, x16, w16):
            timed[row["kernel"]].append(row)
    return [merge_rounds(timed[name]) for name in kernel_names]


def operand_sets(base: dict, m: int, n: int, l2_bytes: int) -> list[dict]:
    """`base` and enough copies that cycling through them (with an M x N 16-bit output each) exceeds twice L2."""
    per_set = sum(t.numel() * t.element_size() for t in base.values()) + m * n * 2
    return [base] + [{key: t.clone() for key, t in base.items()} for _ in range(rotation_sets(per_set, l2_bytes) - 1)]


def _time_kernels(shape, m, k, n, kernel_names, l2_bytes, x16, w16) -> list[dict]:
    rows = []
    by_kind: dict = {}
    for name in kernel_names:
        kind = kernel_info(name).operands
        row = {"shape": shape, "M": m, "N": n, "K": k, "kernel": name}
        try:
            if kind not in by_kind:
                by_kind.clear()  # one family's operands in memory at a time
                by_kind[kind] = make_operands(kind, x16, w16)
            base = by_kind[kind]
            sets = operand_sets(base, m, n, l2_bytes)
            fns = [kernel_call(name, ops) for ops in sets]
            out = fns[0]()
            row["rel_err"] = rel_error(out, reference(name, base, min(m, CHECK_ROWS)))
            row["ms"] = time_graph(fns)
            row["tops"] = tops(m, n, k, row["ms"])
            row["frac_peak"] = row["tops"] / PEAK_8BIT_TOPS
            row["rotation_sets"] = len(sets)
            del sets, fns, out
        except Exception as exc:  # noqa: BLE001 - one kernel failing (unsupported shape, compile error) is a cell
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
    return rows


def autotune_choices() -> dict:
    """The tile shape each Triton autotuner picked, per key (for the JSON)."""
    from mlperf_llama2.quant import gemm8_triton, int8_kernels

    picked = {}
    for label, tuner in (("gemm8", gemm8_triton._gemm8_autotuned), ("int8_triton", int8_kernels._int8_gemm_kernel)):
        picked[label] = {str(key): str(cfg) for key, cfg in getattr(tuner, "cache", {}).items()}
    return picked


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("bench_gemm needs a CUDA GPU (none is visible)")
    import triton

    os.makedirs(args.out, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2 ** 20)
    result = {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": l2_bytes,
              "torch": torch.__version__, "triton": triton.__version__, "peak_8bit_tops": PEAK_8BIT_TOPS,
              "args": {"shapes": args.shapes, "m_list": args.m_values, "kernels": args.kernel_names,
                       "rounds": args.rounds}, "rows": []}
    from gpu_clock import Sampler, clock_stats, stats_line  # tools/, this script's directory

    clocks, t_mono = Sampler.start(100), time.monotonic()  # the clock over the sweep: these are burst rates
    t0 = time.perf_counter()
    for shape, k, n in SHAPES[args.shapes]:
        for m in args.m_values:
            rows = bench_point(shape, m, k, n, args.kernel_names, l2_bytes, args.rounds)
            result["rows"] += rows
            cells = "  ".join(f"{r['kernel']} {r['tops']:.0f}" if "tops" in r else f"{r['kernel']} err"
                              for r in rows)
            print(f"[{time.perf_counter() - t0:6.0f} s] {shape} M={m} K={k} N={n}: {cells}", flush=True)
            torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["autotune"] = autotune_choices()
    table = format_table(result["rows"], args.kernel_names)
    if widest_spread(result["rows"]):
        table += "\n" + widest_spread(result["rows"])
    if clocks is not None:
        result["gpu_clock"] = clock_stats(clocks.between(t_mono, time.monotonic()))
        clocks.close()
        if result["gpu_clock"]:
            table += (f"\nover the sweep: {stats_line(result['gpu_clock'])} (milliseconds a point after idle gaps: "
                      "burst rates; tools/gemm_clocks.py gives sustained ones)")
    write_outputs(args.out, "bench_gemm.json", result, table)
    return 0


def write_outputs(out: str, json_name: str, result: dict, table: str) -> None:
    """Print the table; write the JSON and table.txt into `out`."""
    print("\n" + table)
    with open(os.path.join(out, json_name), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(out, "table.txt"), "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
