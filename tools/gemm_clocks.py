"""Sustained GEMM load against the SM clock: the fraction of the peak at the clock the card actually ran.

The 1,979 TOPS dense 8-bit peak of an H100/H200 SXM is 132 SMs x 8,192 ops a clock at 1,830 MHz (dense fp16:
4,096 a clock). Under a sustained tensor-core load the card may run its SMs above that clock (up to its maximum,
1,980 MHz) or below it (power cap, thermals), so a GEMM's "fraction of 1,979" mixes the kernel's efficiency
with the clock. This replays one kernel's CUDA graph (tools/bench_gemm.py's operands, rotated through more than
twice the L2) for --seconds while `nvidia-smi` samples the SM clock, the board power and the active clock-event
reasons every --interval-ms, and reports per point: TOPS over the whole loaded window, the median and lowest SM
clock seen under load, the median power, the reasons seen (SwPowerCap = the power limit holds the clock down),
and TOPS / (SMs x ops a clock x median clock): how close the kernel is to what that clock allows. It never
changes a clock or a limit (METHOD.md: measure the card as you find it).

    python tools/gemm_clocks.py --out /tmp/clk                                    # default points, ~1 min
    python tools/gemm_clocks.py --points ws_fp8:gate_up:4096,fp16:gate_up:4096 --seconds 10 --out /tmp/clk
    python tools/gemm_clocks.py --points ws_fp8:gate_up:4096:gauss,ws_fp8:gate_up:4096:outlier --out /tmp/clk

A point's optional fourth field is the activations' data (`DATA`): the energy of a multiply depends on its
operands' bits, so a card at its power limit may hold another clock for other data, and a benchmark's random
weights may not draw the power a real checkpoint's do. `gauss` (the default; what tools/bench_gemm.py and the
random-weight benchmarks feed); `outlier` (the same with one column in 1,024 a hundred times larger, as LLM
activations carry a few outlier features: the per-token scale follows them, so the other values land ~5 binades
lower, E4M3 codes around 2 instead of 100, int8 codes mostly 0 and +-1); `zeros` (every 8-bit code of x zero, for
fp16 x itself: the data-power floor, not a workload). Weights stay Gaussian in all three.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402
import bench_gemm  # noqa: E402  (tools/, this script's directory, is first on sys.path)
from gpu_clock import SPEC_MHZ, Sampler, clock_stats  # noqa: E402

OPS_PER_CLOCK = {"8bit": 8192, "fp16": 4096}  # dense tensor-core ops per SM per clock on sm_90
DEFAULT_POINTS = "ws_fp8:gate_up:4096,scaled_mm_row:gate_up:4096,ws_fp8_fast:gate_up:4096,ws_fp8:gate_up:512," \
                 "fp16:gate_up:4096"
DATA = ("gauss", "outlier", "zeros")  # a point's activations (module docstring)
OUTLIER_EVERY, OUTLIER_GAIN = 1024, 100.0
def parse_points(text: str) -> list[tuple[str, str, int, str]]:
    """'ws_fp8:gate_up:4096,fp16:o:512:outlier' -> [(kernel, shape, M, data)] (70B shapes; kernels as bench_gemm
    names them, a ws_* one possibly with its @tile; data one of DATA, default gauss)."""
    shapes = {name for name, _, _ in bench_gemm.SHAPES["70b"]}
    points = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        fields = item.split(":")
        if (len(fields) not in (3, 4) or fields[1] not in shapes or not fields[2].isdigit() or int(fields[2]) < 1
                or (len(fields) == 4 and fields[3] not in DATA)):
            raise UserError(f"--points: each point is KERNEL:SHAPE:M[:DATA] with SHAPE one of "
                            f"{', '.join(sorted(shapes))}, M >= 1 and DATA one of {', '.join(DATA)}, got {item!r}")
        try:
            bench_gemm.parse_kernels(fields[0])
        except UserError as exc:  # its message names bench_gemm's --kernels flag
            raise UserError(f"--points {item!r}: {str(exc).removeprefix('--kernels: ')}") from None
        points.append((fields[0], fields[1], int(fields[2]), fields[3] if len(fields) == 4 else "gauss"))
    if not points:
        raise UserError("--points: give at least one KERNEL:SHAPE:M")
    return points


def summarize(samples: list[dict], ops: float, seconds: float, sms: int, ops_per_clock: int) -> dict:
    """One point's figures from its loaded-window samples: TOPS, clocks, power, reasons and the two fractions."""
    achieved = ops / seconds / 1e12
    row = {"tops": achieved, "seconds": seconds, "samples": len(samples),
           "frac_spec_peak": achieved / (sms * ops_per_clock * SPEC_MHZ * 1e6 / 1e12)}
    if samples:
        row.update(clock_stats(samples))
        row["peak_at_clock_tops"] = sms * ops_per_clock * row["mhz_median"] * 1e6 / 1e12
        row["frac_clock_peak"] = achieved / row["peak_at_clock_tops"]
    return row


def point_operands(kernel: str, x16, w16, data: str) -> dict:
    """The kernel family's operands from fp16 x [M, K] and w [N, K], x shaped as `data` says (DATA)."""
    import torch

    if data == "outlier":
        x16 = x16.clone()
        x16[:, ::OUTLIER_EVERY] *= OUTLIER_GAIN
    ops = bench_gemm.make_operands(bench_gemm.kernel_info(kernel).operands, x16, w16)
    if data == "zeros":
        ops["x"] = torch.zeros_like(ops["x"])
    return ops


def load_point(kernel: str, shape: str, m: int, seconds: float, sampler: Sampler, l2_bytes: int,
               data: str = "gauss") -> tuple:
    """Replay the point's graph back to back for `seconds` (after one second of the same load to reach a steady
    clock); -> (ops done, GPU seconds, samples in the window)."""
    import torch

    k, n = next((k, n) for name, k, n in bench_gemm.SHAPES["70b"] if name == shape)
    g = torch.Generator(device="cuda").manual_seed(m * 7 + n)
    x16 = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=g)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16, generator=g) * 0.02
    base = point_operands(kernel, x16, w16, data)
    sets = bench_gemm.operand_sets(base, m, n, l2_bytes)
    fns = [bench_gemm.kernel_call(kernel, ops) for ops in sets]
    ms = bench_gemm.time_graph(fns)  # warms up (compiles) and gives the per-call time
    calls = len(fns) * max(1, round(20.0 / ms / len(fns)))  # ~20 ms a replay
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t_warm = time.monotonic() + 1.0
    while time.monotonic() < t_warm:
        graph.replay()
        torch.cuda.synchronize()
    t0 = time.monotonic()
    start.record()
    replays = 0
    while time.monotonic() - t0 < seconds:
        for _ in range(4):  # a few replays queued ahead keep the GPU busy between host checks
            graph.replay()
        replays += 4
        torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
    t1 = time.monotonic()
    gpu_s = start.elapsed_time(end) / 1e3
    del graph, fns, sets
    torch.cuda.empty_cache()
    return 2.0 * m * n * k * calls * replays, gpu_s, sampler.between(t0 + 0.2, t1)


def format_table(rows: list[dict]) -> str:
    head = (f"{'kernel':>28} {'shape':>8} {'M':>6} {'data':>7} {'TOPS':>6} {'spec%':>6} {'MHz med':>8} {'min':>5} "
            f"{'W':>5} {'limit':>5} {'clk%':>6}  reasons")
    lines = ["sustained load: TOPS, % of the spec peak (1,830 MHz), SM clock under load, board power and its limit, "
             "% of the peak at the median clock", head, "-" * len(head)]
    for r in rows:
        what = f"{r['kernel']:>28} {r['shape']:>8} {r['M']:>6} {r.get('data', 'gauss'):>7}"
        if "error" in r:
            lines.append(f"{what} error: {r['error']}")
            continue
        limit = f"{r['watts_limit']:>5.0f}" if r.get("watts_limit") is not None else f"{'-':>5}"
        clk = (f"{r['mhz_median']:>8.0f} {r['mhz_min']:>5.0f} {r['watts_median']:>5.0f} {limit} "
               f"{100 * r['frac_clock_peak']:>5.1f}%  {','.join(r['reasons']) or '-'}") if r["samples"] else \
            "no nvidia-smi samples"
        lines.append(f"{what} {r['tops']:>6.0f} {100 * r['frac_spec_peak']:>5.1f}% " + clk)
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", default=DEFAULT_POINTS,
                    help="KERNEL:SHAPE:M[:DATA],... (70B shapes; bench_gemm kernels; DATA gauss|outlier|zeros)")
    ap.add_argument("--seconds", type=float, default=6.0, help="loaded window per point (after 1 s of warm load)")
    ap.add_argument("--interval-ms", type=int, default=100, help="nvidia-smi sampling interval")
    ap.add_argument("--out", required=True, help="directory for gemm_clocks.json and table.txt")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 120:
        raise UserError(f"--seconds must be 1-120, got {args.seconds}")
    if not 20 <= args.interval_ms <= 1000:
        raise UserError(f"--interval-ms must be 20-1000, got {args.interval_ms}")
    args.point_list = parse_points(args.points)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise UserError("gemm_clocks needs a CUDA GPU (none is visible)")
    if shutil.which("nvidia-smi") is None:
        raise UserError("gemm_clocks needs nvidia-smi on PATH (it reads the clocks)")
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2 ** 20)
    os.makedirs(args.out, exist_ok=True)
    sampler = Sampler(args.interval_ms)  # CUDA device 0 as this process sees it
    time.sleep(1.0)
    idle = sampler.between(0.0, time.monotonic())
    rows = []
    for kernel, shape, m, data in args.point_list:
        row = {"kernel": kernel, "shape": shape, "M": m, "data": data}
        try:
            ops, gpu_s, samples = load_point(kernel, shape, m, args.seconds, sampler, l2_bytes, data)
            family = "fp16" if kernel == "fp16" else "8bit"
            row.update(summarize(samples, ops, gpu_s, props.multi_processor_count, OPS_PER_CLOCK[family]))
        except Exception as exc:  # noqa: BLE001 - one point failing is a row, the others still run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
    bad = sampler.close()
    result = {"device": props.name, "sms": props.multi_processor_count, "spec_mhz": SPEC_MHZ,
              "idle": {"samples": len(idle), "mhz_median": statistics.median(s["mhz"] for s in idle) if idle else None},
              "nvidia_smi_unparsed": bad, "args": {"points": args.points, "seconds": args.seconds,
                                                   "interval_ms": args.interval_ms}, "rows": rows}
    table = format_table(rows)
    if bad:
        table += f"\nnvidia-smi printed lines that are not samples, e.g.: {bad}"
    bench_gemm.write_outputs(args.out, "gemm_clocks.json", result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
