"""The 8-bit variants tools/bench_fidelity.py measures next to the fp16 engine (issue #19).

A variant is the engine with FP8 Linears (`--quantization fp8`: E4M3 weights per output channel,
activations per token), an FP8 KV cache (`--kv-cache-dtype fp8`) or both. KV scales are calibrated by the
engine itself (`engine/kv_calibration.py`) on calibration prompts distinct from the measured ones, on the
variant's own model (the FP8 model for "both"), at one granularity: one scale per layer and KV head
(`head`) or one per layer (`tensor`). A variant names its GEMM the way a run does, by the engine's own
settings (`--engine-gemm`, `--fp8-accumulation`), which the engine applies when it is built: `fp8` runs
`--engine-gemm auto` (the warp-specialised GEMM on sm_90, cuBLASLt elsewhere, the reference GEMM on a CPU);
on CUDA only `fp8-cublas` and `fp8-fast` cuBLASLt promoted and with Hopper's fast low-precision
accumulation, `fp8-gemm8` the project's Triton GEMM (FP32 promotion every 128 of K), `fp8-ws` and `fp8-ws-fast`
the warp-specialised GEMM (sm_90) promoted and not, so the accuracy cost of each is measured.
Each variant's logits are compared with the fp32 truth and with the fp16 engine's; greedy outputs with the
reference's, the fp16 engine's and fp32's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from mlperf_llama2.engine.kv_cache import FP8_MAX
from mlperf_llama2.engine.kv_calibration import calibrate_kv_ranges
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.calibration_file import amax_to_scale

log = logging.getLogger("bench_fidelity")


@dataclass(frozen=True)
class Variant:
    """One 8-bit configuration of the engine."""

    name: str  # the --variants name
    weights: str  # "float" (the engine's dtype) or "fp8"
    kv_cache_dtype: str = "auto"  # auto | fp8
    granularity: Optional[str] = None  # KV scales: "head" | "tensor" (fp8 KV only)
    engine_gemm: str = "auto"  # EngineConfig.gemm (--engine-gemm)
    fp8_accumulation: str = "promoted"  # EngineConfig.fp8_accumulation (--fp8-accumulation)

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
    Variant("fp8-cublas", "fp8", engine_gemm="cublas"),
    Variant("fp8-fast", "fp8", engine_gemm="cublas", fp8_accumulation="fast"),
    Variant("fp8-gemm8", "fp8", engine_gemm="triton"),
    Variant("fp8-ws", "fp8", engine_gemm="ws"),
    Variant("fp8-ws-fast", "fp8", engine_gemm="ws", fp8_accumulation="fast"),
)}
CUDA_ONLY = ("fp8-cublas", "fp8-fast", "fp8-gemm8", "fp8-ws", "fp8-ws-fast")
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
