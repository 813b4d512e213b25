"""Which of the engine's Linears get which weight format, from the run's quantization settings.

  * `--quantization fp8`: every Linear but lm_head is `fp8` (E4M3 weights per output channel, activations
    per token; quant/fp8.py); lm_head stays in the model dtype;
  * `--liteml-config FILE --quant-mode int8`: each engine Linear is matched under the transformers names it
    stands for (`loader.hf_names`); a Linear whose rule is W8A8 as int8 mode computes it
    (`open_backend.int8_capable`) is `int8` (weights per tensor) or `int8_channel`; fused projections keep
    one weight scale per projection. An int8 KV cache with the config's own per-tensor scales computes the
    K and V quantizers of Q·Kᵀ and P·V (`kv_cache_honours`). With `--int8-rules all` (the default) every other
    rule is computed by `whole_config.py`; with `--int8-rules linear` they stay in float and `left_out` lists
    them, logged once at start-up.
The plan is a dict (engine Linear name -> format) that `loader.build_model` builds the model from.
`warm_up_gemms` runs each distinct 8-bit GEMM shape at every M bucket so the Triton autotuner never tunes
mid-run or mid-capture.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.loader import ENGINE_LINEARS, hf_names, linear_names
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.int8_linear import Int8Linear
from mlperf_llama2.quant.open_backend import int8_capable
from mlperf_llama2.quant.yaml_config import QuantRules, Rule, load_rules

log = logging.getLogger(__name__)


def engine_rules(quant_config) -> Optional[QuantRules]:
    """The rules of `--liteml-config` for the engine backend (None when quantization is off)."""
    if not quant_config.enabled:
        return None
    if quant_config.quant_backend == "liteml":
        raise UserError("--backend engine quantizes with the open backend only; drop --quant-backend liteml "
                        "or use --backend reference")
    if quant_config.quant_mode != "int8":
        raise UserError("--backend engine runs --liteml-config as real int8 only: add --quant-mode int8 "
                        "(simulate mode needs --backend reference)")
    return load_rules(quant_config.liteml_config)


def fp8_plan(shape: LlamaShape) -> dict[str, str]:
    """`--quantization fp8`: every Linear but lm_head in FP8 (lm_head's logits pick the token: kept exact)."""
    return {name: ("float" if name == "lm_head" else "fp8") for name in linear_names(shape)}


def int8_plan(shape: LlamaShape, rules: QuantRules) -> dict[str, str]:
    """Engine Linear name ("layers.3.qkv_proj", "lm_head") -> "int8" | "int8_channel" | "float"."""
    plan: dict[str, str] = {}
    targets = [(f"layers.{i}.{n}", hf_names(i, n)) for i in range(shape.num_layers) for n in ENGINE_LINEARS]
    for name, parts in targets + [("lm_head", ("lm_head",))]:
        found = [rules.match("Linear", part) for part in parts]
        capable = [r is not None and int8_capable(r) for r in found]
        if not any(capable):
            plan[name] = "float"
            continue
        per_channel = {r.quantizer("weights_quantizer").dims in ((-1,), (1,)) for r in found if r is not None}
        if not all(capable) or len(per_channel) != 1:
            raise UserError(f"{rules.path}: the engine fuses {', '.join(parts)} into one Linear; give them the "
                            "same W8A8 rule (or use --backend reference)")
        plan[name] = "int8_channel" if per_channel.pop() else "int8"
    return plan


KV_MATMULS = ("matmul_qkt", "matmul_pv")  # their quantizer_in2 quantizes K, resp. V
KV_ROLE = "quantizer_in2"


def kv_cache_honours(rules: QuantRules, num_layers: int, quant_config, engine_config) -> bool:
    """True when the int8 KV cache computes the config's K and V quantizers exactly: every layer's K and V
    rule is static, symmetric, 8-bit and per tensor, and the cache uses the config's own per-tensor scales
    (`--calibration-scales`, checked against the config before loading) with the same numerics as simulate
    (round half to even, narrow range: kv_cache.py's int8)."""
    kv = None if engine_config is None else (engine_config.kv_cache_dtype, engine_config.kv_scale_granularity)
    if kv != ("int8", "tensor"):
        return False
    if not quant_config.calibration_scales or not quant_config.narrow_range or quant_config.rounding != "half_even":
        return False
    for layer in range(num_layers):
        for matmul in KV_MATMULS:
            rule = rules.match("Matmul", f"model.layers.{layer}.self_attn.{matmul}")
            spec = rule.quantizer(KV_ROLE) if rule is not None else None
            if spec is None or spec.dynamic or spec.bits != 8 or not spec.symmetric or not _per_tensor(spec.dims):
                return False
    return True


def _per_tensor(dims: tuple[int, ...]) -> bool:
    """One scale for K [B, H, S, D]: no dims, or all four reduced."""
    return not dims or {d % 4 for d in dims} == {0, 1, 2, 3}


def left_out(rules: QuantRules, plan: dict[str, str], kv_honoured: bool = False,
             whole_config: bool = False) -> list[str]:
    """Each rule of the config that the engine's int8 mode does not compute, with what it does instead.
    `kv_honoured` (`kv_cache_honours`): the K and V quantizers of Q·Kᵀ and P·V are the int8 KV cache, so
    only those rules' other quantizers (Q, P, outputs) are listed. `whole_config` (`--int8-rules all`):
    every non-Linear rule is computed (`whole_config.py`), so only Linears without an int8 rule are listed."""
    notes = []
    for r in rules.rules:
        if r.source_kind == "Linear" or whole_config:
            continue
        if kv_honoured and r.source_kind == "Matmul" and r.quantizer(KV_ROLE) is not None:
            rest = tuple((role, spec) for role, spec in r.quantizers if role != KV_ROLE)
            if rest:
                notes.append(f"{_rule_label(r, rest)}: not applied, the engine computes these in float "
                             f"({KV_ROLE} is the int8 KV cache)")
            continue
        notes.append(f"{_rule_label(r)}: not applied, the engine computes {r.source_kind} in float")
    kept = sorted(name for name, fmt in plan.items() if fmt == "float")
    if kept:
        notes.append(f"{len(kept)} Linears kept in float (no int8-capable rule), e.g. {', '.join(kept[:3])}")
    return notes


def _rule_label(rule: Rule, quantizers=None) -> str:
    specs = "; ".join(f"{role} {spec.describe()}" for role, spec in (quantizers or rule.quantizers))
    return f"{rule.label} [{specs}]"


def log_plan(rules: QuantRules, plan: dict[str, str], kv_honoured: bool = False, whole_config: bool = False) -> None:
    count = sum(fmt != "float" for fmt in plan.values())
    log.info("int8 mode (%s): %d of %d Linears int8 W8A8 (weights per %s)", rules.path, count, len(plan),
             "channel" if "int8_channel" in plan.values() else "tensor")
    if whole_config:
        log.info("int8 mode: every other rule of %s as simulate computes it, per sequence (--int8-rules all)",
                 rules.path)
    elif kv_honoured:
        log.info("int8 mode: K and V (%s of %s) int8 in the KV cache with the config's static per-tensor scales",
                 KV_ROLE, " and ".join(KV_MATMULS))
    for note in left_out(rules, plan, kv_honoured, whole_config):
        log.warning("int8 mode leaves out %s", note)


def weight_plan(quant_config, shape: LlamaShape, engine_config=None) -> dict[str, str]:
    """The format plan of a run's quantization settings ({} = everything in the model dtype); logs it once.
    `engine_config` (an `EngineConfig`): its KV cache counts for the config's K/V rules (`kv_cache_honours`)."""
    if getattr(quant_config, "quantization", None) == "fp8":
        plan = fp8_plan(shape)
        fast = getattr(engine_config, "fp8_accumulation", "promoted") == "fast"
        log.info("fp8 mode: %d of %d Linears FP8 E4M3 (weights per output channel, activations per token, %s); "
                 "lm_head in the model dtype", len(plan) - 1, len(plan),
                 "Hopper's fast low-precision accumulation, not promoted (--fp8-accumulation fast)" if fast
                 else "float32 accumulation")
        return plan
    rules = engine_rules(quant_config)
    if rules is None:
        return {}
    if quant_config.rounding != "half_even":  # Int8Linear's weights and per-token activations: torch.round / rint
        raise UserError(f"--quant-rounding {quant_config.rounding} with --quant-mode int8: the engine's int8 Linears "
                        "round half to even, so only the other rules would follow the flag; drop it, or run "
                        "--quant-mode simulate (--backend reference)")
    plan = int8_plan(shape, rules)
    log_plan(rules, plan, kv_cache_honours(rules, shape.num_layers, quant_config, engine_config),
             getattr(quant_config, "int8_rules", "all") == "all")
    return plan


# --engine-gemm -> (Int8Linear.gemm, Fp8Linear.gemm); "auto" is resolved per GPU by `auto_paths`
GEMM_PATHS = {"auto": ("fused", "scaled_mm"), "cublas": ("int_mm", "scaled_mm"), "triton": ("gemm8", "gemm8"),
              "ws": ("gemm8_ws", "gemm8_ws")}


def auto_paths(device: torch.device) -> tuple[str, str]:
    """--engine-gemm auto, by measurement (docs/engine.md, "The 8-bit GEMM"): on sm_90 both kinds run the
    warp-specialised GEMM, its tile chosen by M (gemm8_ws.TILES). int8 (H100: 1.53-1.57 POPS at the 70B shapes,
    M 4,096, against 1.10-1.19 for the Triton one; Offline +6% Linear rules, +8.5% whole config); fp8 with two
    MMA partitions is faster than cuBLASLt at every measured M (H100, a decoder layer's four Linears: 0.31 vs
    0.37-0.40 ms at M 16-64, 0.335 vs 0.349 at 128, 0.380 vs 0.420 at 256, 5.59 vs 5.67 at 4,096).
    Elsewhere the Triton int8 GEMM and cuBLASLt fp8."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return "gemm8_ws", "gemm8_ws"
    return GEMM_PATHS["auto"]


def apply_gemm(model: nn.Module, choice: str, device: Optional[torch.device] = None,
               fp8_accumulation: str = "promoted") -> dict[str, int]:
    """Point every 8-bit Linear at the GEMM `choice` (EngineConfig.gemm) names; returns {path: Linears}.
    A Linear the warp-specialised GEMM cannot take (K not a multiple of 16 or N of 8: TMA strides) keeps the
    Triton int8 / cuBLASLt fp8 GEMM under auto; an explicit `ws` leaves it to gemm8_ws's one-line refusal.
    fp8_accumulation "fast": every FP8 Linear takes its path's unpromoted form (fp8.FAST_PATHS)."""
    from mlperf_llama2.quant.fp8 import FAST_PATHS, Fp8Linear

    int8_path, fp8_path = auto_paths(device) if choice == "auto" and device is not None else GEMM_PATHS[choice]
    counts: dict[str, int] = {}
    for module in model.modules():
        kind = 0 if isinstance(module, Int8Linear) else 1 if isinstance(module, Fp8Linear) else None
        if kind is None:
            continue
        path = (int8_path, fp8_path)[kind]
        if choice == "auto" and path == "gemm8_ws" and (module.in_features % 16 or module.out_features % 8):
            path = GEMM_PATHS["auto"][kind]
        if kind == 1 and fp8_accumulation == "fast":
            path = FAST_PATHS[path]
        module.gemm = path
        counts[path] = counts.get(path, 0) + 1
    return counts


@torch.inference_mode()
def warm_up_gemms(model: nn.Module, max_rows: int, dtype: torch.dtype) -> int:
    """Call each distinct 8-bit Linear shape at every power-of-two M up to `max_rows`; returns the calls made.

    The Triton GEMMs are autotuned per (M bucket, N, K) and the Gluon one compiled per tile: doing it here keeps
    tuning and compiling (host syncs, seconds) out of CUDA graph capture and out of timed runs. M - 1 rows as
    well from 32 on: Triton compiles separately for M divisible by 16 or not, and mixed steps have any M."""
    from mlperf_llama2.quant.activation import Quant8Linear

    seen: dict[tuple[int, int], Quant8Linear] = {}
    for module in model.modules():
        if isinstance(module, Quant8Linear):
            seen.setdefault((module.in_features, module.out_features), module)
    if any(module.qweight.is_cuda for module in seen.values()):
        _shorter_autotuning()
    sizes, m = [], 1
    while m < max_rows:
        sizes += [m, m - 1] if m >= 32 else [m]
        m *= 2
    sizes += [max_rows, max_rows - 1] if max_rows >= 32 else [max_rows]
    calls = 0
    for (k, _), module in seen.items():
        for rows in sizes:
            module(torch.zeros(rows, k, dtype=dtype, device=module.qweight.device))  # [rows, K]
            calls += 1
    return calls


AUTOTUNE_WARMUP_MS, AUTOTUNE_REP_MS = 5, 25


def _shorter_autotuning() -> None:
    """Time each GEMM config for 5 + 25 ms instead of Triton's default 25 + 100 ms.

    70B's warm-up tunes 5 shapes x 13 M buckets x 10 configs; at the default that alone is ~1.5-2 min.
    25 ms still repeats the largest GEMM (70B gate/up at M 4096, ~3.5 ms) about 7 times. Uses the
    Autotuner's `do_bench` hook (Triton 3.x: a cached property an instance attribute overrides)."""
    from mlperf_llama2.quant.int8_linear import triton_kernels

    kernels = triton_kernels()
    tuner = getattr(kernels, "_int8_gemm_kernel", None) if kernels is not None else None
    if tuner is None or not hasattr(tuner, "configs"):
        return
    import triton.testing

    tuner.do_bench = functools.partial(triton.testing.do_bench, warmup=AUTOTUNE_WARMUP_MS, rep=AUTOTUNE_REP_MS)
