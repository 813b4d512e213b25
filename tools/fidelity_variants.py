"""The 8-bit variants tools/bench_fidelity.py measures next to the fp16 engine (issue #19).

A variant is the engine with FP8 Linears (`--quantization fp8`: E4M3 weights per output channel,
activations per token), an FP8 KV cache (`--kv-cache-dtype fp8`) or both. KV scales are calibrated by the
engine itself (`engine/kv_calibration.py`) on calibration prompts distinct from the measured ones, on the
variant's own model (the FP8 model for "both"), at one granularity: one scale per layer and KV head
(`head`) or one per layer (`tensor`). `fp8` runs Fp8Linear's default GEMM (cuBLASLt `_scaled_mm`, FP32
accumulation); on CUDA only (a CPU runs every FP8 GEMM on the reference path) `fp8-gemm8` runs the
project's Triton GEMM (FP32 promotion every 128 of K) and `fp8-fast` Hopper's fast low-precision
accumulation (`Fp8Linear.gemm = "scaled_mm_fast_accum"`), so their accuracy cost is measured; `fp8-ws` and
`fp8-ws-fast` the warp-specialised GEMM (sm_90) promoted and not (`--fp8-accumulation fast` on sm_90).
Each variant's logits are compared with the fp32 truth and with the fp16 engine's; greedy outputs with the
reference's, the fp16 engine's and fp32's.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from mlperf_llama2.engine.kv_cache import FP8_MAX
from mlperf_llama2.engine.kv_calibration import calibrate_kv_ranges
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.calibration_file import amax_to_scale
from mlperf_llama2.quant.fp8 import Fp8Linear

log = logging.getLogger("bench_fidelity")


@dataclass(frozen=True)
class Variant:
    """One 8-bit configuration of the engine."""

    name: str  # the --variants name
    weights: str  # "float" (the engine's dtype) or "fp8"
    kv_cache_dtype: str = "auto"  # auto | fp8
    granularity: Optional[str] = None  # KV scales: "head" | "tensor" (fp8 KV only)
    gemm: Optional[str] = None  # Fp8Linear.gemm override (fp8 weights only)

    @property
    def key(self) -> str:
        """Its name in fidelity.json and the table."""
        return "engine_" + self.name.replace("-", "_").replace("+", "_")


VARIANTS = {v.name: v for v in (
    Variant("fp8", "fp8"),
    Variant("kv-head", "float", "fp8", "head"),
    Variant("kv-tensor", "float", "fp8", "tensor"),
    Variant("fp8+kv-head", "fp8", "fp8", "head"),
    Variant("fp8+kv-tensor", "fp8", "fp8", "tensor"),
    Variant("fp8-gemm8", "fp8", gemm="gemm8"),
    Variant("fp8-fast", "fp8", gemm="scaled_mm_fast_accum"),
    Variant("fp8-ws", "fp8", gemm="gemm8_ws"),
    Variant("fp8-ws-fast", "fp8", gemm="gemm8_ws_fast"),
)}
CUDA_ONLY = ("fp8-gemm8", "fp8-fast", "fp8-ws", "fp8-ws-fast")
SHORT_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def parse_variants(text: str, device: torch.device) -> list[Variant]:
    """`--variants`: "all" (every variant this device can run), "none", or comma-separated names."""
    if text == "none":
        return []
    if text == "all":
        return [v for name, v in VARIANTS.items() if device.type == "cuda" or name not in CUDA_ONLY]
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}; choose from all, none, "
                         f"{', '.join(VARIANTS)}")
    cuda_only = [n for n in names if n in CUDA_ONLY]
    if device.type != "cuda" and cuda_only:
        raise UserError(f"--variants {', '.join(cuda_only)}: needs --device cuda "
                         "(a CPU runs every FP8 GEMM on the reference path)")
    return [VARIANTS[n] for n in names]


def kv_scales_by_granularity(model, prompts: list[list[int]], granularities: set[str]) -> dict[str, torch.Tensor]:
    """{granularity: FP8 K/V scales [2, L, KV] float32} from one calibration pass of `model` over `prompts`."""
    if not granularities:
        return {}
    ranges = calibrate_kv_ranges(model, prompts)
    return {g: amax_to_scale(ranges.amax(g), FP8_MAX) for g in sorted(granularities)}


@torch.inference_mode()
def warm_up_gemm8(linears: list[Fp8Linear], max_rows: int, dtype: torch.dtype) -> None:
    """Autotune the Triton GEMM (compile the Gluon one's tiles) for every distinct shape and M bucket now, not
    inside CUDA graph capture."""
    shapes = {(m.in_features, m.out_features): m for m in linears}
    rows, m = [], 1
    while m < max_rows:
        rows += [m, m - 1] if m >= 32 else [m]  # Triton compiles apart for M divisible by 16 or not
        m *= 2
    rows += [max_rows, max_rows - 1]
    for (k, _), module in shapes.items():
        for r in rows:
            module(torch.zeros(r, k, dtype=dtype, device=module.qweight.device))  # [r, K]


@contextmanager
def fp8_gemm(model, gemm: Optional[str], max_rows: int, dtype: torch.dtype):
    """Every Fp8Linear of `model` runs `gemm` inside the block (None: as it is); the project's GEMMs are warmed up
    first for up to `max_rows` rows (the engine's token budget)."""
    linears = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    before = [m.gemm for m in linears]
    if gemm is not None:
        for m in linears:
            m.gemm = gemm
    if gemm in ("gemm8", "gemm8_fast", "gemm8_ws", "gemm8_ws_fast") and linears and linears[0].qweight.is_cuda:
        warm_up_gemm8(linears, max_rows, dtype)  # tuned / compiled now, not inside a CUDA graph capture
    try:
        yield
    finally:
        for m, g in zip(linears, before):
            m.gemm = g


def scale_summary(scales: dict[str, torch.Tensor]) -> dict:
    """Per granularity: the spread of the K and V scales (how much a single per-layer scale gives up)."""
    out = {}
    for g, s in scales.items():  # s: [2, L, KV]
        spread = (s.amax(-1) / s.amin(-1)).amax(-1)  # [2]: the largest max/min ratio over heads of a layer
        out[g] = {"k_min": float(s[0].min()), "k_max": float(s[0].max()), "v_min": float(s[1].min()),
                  "v_max": float(s[1].max()), "k_head_spread": float(spread[0]), "v_head_spread": float(spread[1])}
    return out


def variant_lines(result: dict) -> list[str]:
    """The 8-bit variants: logit error against fp32 and the fp16 engine, greedy identity."""
    tf = (result.get("teacher_forced") or {}).get("variants", {})
    greedy = (result.get("greedy") or {}).get("variants", {})
    names = list(tf) or list(greedy)
    if not names:
        return []
    a = result["args"]
    lines = [f"8-bit variants (KV scales calibrated by the engine on {a['calib_prompts']} other prompts; "
             f"compared dtype {a['dtype']}): logit error / std, top-1; greedy identical of {a['prompts']}"]
    lines.append(f"{'variant':<28}{'against':<13}{'mean/std':>10}{'max/std':>10}{'top1 all':>10}{'top1 dec':>10}"
                 f"{'greedy':>8}")
    for name in names:
        for ref, label in (("vs_fp32", "fp32"), ("vs_engine", "engine " + SHORT_DTYPE.get(a["dtype"], a["dtype"]))):
            s = tf.get(name, {}).get(ref)
            c = greedy.get(name, {}).get(ref)
            cols = (f"{s['all']['mean_rel_std']:>10.3g}{s['all']['max_rel_std']:>10.3g}{s['all']['top1_agree']:>10.2%}"
                    f"{s['decode']['top1_agree']:>10.2%}" if s else f"{'-':>10}" * 4)
            same = f"{c['identical']}/{c['prompts']}" if c else "-"
            lines.append(f"{name:<28}{label:<13}{cols}{same:>8}")
        c = greedy.get(name, {}).get("vs_reference")
        if c:
            same = f"{c['identical']}/{c['prompts']}"
            lines.append(f"{'':<28}{'reference':<13}{'':>40}{same:>8}")
    scales = result.get("kv_scales")
    for model, per in (scales or {}).items():
        for g, s in per.items():
            lines.append(f"KV scales ({model} model, per {g}): K {s['k_min']:.3g}..{s['k_max']:.3g}, "
                         f"V {s['v_min']:.3g}..{s['v_max']:.3g}; largest max/min over the heads of one layer: "
                         f"K {s['k_head_spread']:.3g}, V {s['v_head_spread']:.3g}")
    return lines
