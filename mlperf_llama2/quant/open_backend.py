"""The open W8A8 backend: apply a config's rules to a loaded Llama, in simulate or int8 mode.

`quantize_model(model, rules, mode, numerics, calibration)` installs the named slots, replaces
every module a rule matches (first match wins) by its destination, calibrates the static
quantizers on the given samples, and returns a `QuantReport`. simulate: fake-quant everywhere,
the accuracy reference. int8 (CUDA): Linears whose rule is W8A8 (int8 symmetric weights, int8
symmetric dynamic per-token activations) become `Int8Linear`s; P inside P.V is not quantized (a
fused attention kernel cannot do it); every such approximation is listed in the report and logged
once. Everything else stays exact fake-quant in both modes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.destinations import DESTINATION_CLASSES
from mlperf_llama2.quant.fake_quant import FakeQuantizer, Numerics, set_calibrating
from mlperf_llama2.quant.int8_linear import Int8Linear
from mlperf_llama2.quant.llama_slots import AddSlot, MatmulSlot, MulSlot, install_slots
from mlperf_llama2.quant.yaml_config import QuantRules, Rule

logger = logging.getLogger(__name__)

MODES = ("simulate", "int8")
INT8_DROPPED_ROLES = {("QuantMatmul", "matmul_pv", "quantizer_in1"),
                      ("QuantMatmulOutputQuant", "matmul_pv", "quantizer_in1")}


@dataclass
class QuantReport:
    mode: str
    replaced: Counter = field(default_factory=Counter)  # destination -> modules
    int8_linears: int = 0
    approximations: list[str] = field(default_factory=list)  # what int8 mode does not compute as written
    calibration_samples: int = 0
    scales_file: Optional[str] = None  # static scales read from this file instead of calibrating

    def summary(self) -> str:
        parts = ", ".join(f"{k} x{v}" for k, v in sorted(self.replaced.items()))
        source = f"static scales from {self.scales_file}" if self.scales_file else \
            f"calibrated on {self.calibration_samples} samples"
        return f"quantization ({self.mode}): {parts}; int8 Linears {self.int8_linears}; {source}"


def slot_kind(module: nn.Module) -> Optional[str]:
    """The config's source kind of a module, or None when no rule can name it."""
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, MatmulSlot) or type(module).__name__ == "LiteMLMatmul":
        return "Matmul"
    if isinstance(module, AddSlot) or type(module).__name__ == "LiteMLAdd":
        return "Add"
    if isinstance(module, MulSlot) or type(module).__name__ == "LiteMLMul":
        return "Mul"
    if isinstance(module, nn.SiLU):
        return "SiLU"
    if type(module).__name__ == "LlamaRMSNorm":
        return "RMSNorm"
    return None


def int8_capable(rule: Rule) -> bool:
    """A LinearQuant rule that int8 mode computes for real: W int8 sym, A int8 sym dynamic per token."""
    w, a = rule.quantizer("weights_quantizer"), rule.quantizer("act_quantizer")
    return (rule.destination == "LinearQuant" and w is not None and a is not None
            and rule.quantizer("quantizer_out") is None
            and w.bits == 8 and w.symmetric and w.dims in ((), (-1,), (1,))
            and a.bits == 8 and a.symmetric and a.dynamic and a.dims == (-1,))


def _int8_linear(linear: nn.Linear, rule: Rule) -> Int8Linear:
    per_channel = rule.quantizer("weights_quantizer").dims in ((-1,), (1,))
    return Int8Linear.from_float(linear.weight, linear.bias, per_channel=per_channel, out_dtype=linear.weight.dtype)


def _set_module(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, rules: QuantRules, mode: str = "simulate", numerics: Numerics = Numerics(),
                   calibration: Optional[Iterable[torch.Tensor]] = None, scales=None) -> QuantReport:
    """Quantize `model` in place as `rules` say; `calibration` yields (1, L) token tensors for static rules,
    or `scales` (a calibration_file.ScalesFile) gives them their ranges without calibrating."""
    if mode not in MODES:
        raise UserError(f"--quant-mode must be one of {', '.join(MODES)}, got {mode!r}")
    device = next(model.parameters()).device  # int8 on CPU runs the exact int64 GEMM (tests only)
    install_slots(model)
    report = QuantReport(mode=mode)
    targets = [(name, module, slot_kind(module)) for name, module in model.named_modules()]
    for name, module, kind in targets:
        if kind is None:
            continue
        rule = rules.match(kind, name)
        if rule is None:
            continue
        if mode == "int8" and kind == "Linear" and int8_capable(rule):
            _set_module(model, name, _int8_linear(module, rule))
            report.int8_linears += 1
            report.replaced["Int8Linear"] += 1
            continue
        new = DESTINATION_CLASSES[rule.destination](module, rule, numerics, name)
        if mode == "int8":
            _drop_int8_unsupported(new, rule, name, report)
        _set_module(model, name, new.to(device))
        report.replaced[rule.destination] += 1
    if mode == "int8":
        report.approximations = sorted(set(report.approximations))
        logger.info("int8 mode approximates: %s", "; ".join(report.approximations) or "nothing")
    if rules.needs_calibration and scales is not None:
        from mlperf_llama2.quant.calibration_file import load_static_ranges

        load_static_ranges(model, scales, device)
        report.scales_file = scales.path
    elif rules.needs_calibration:
        report.calibration_samples = calibrate(model, calibration, device)
    logger.info(report.summary())
    return report


def _drop_int8_unsupported(module: nn.Module, rule: Rule, name: str, report: QuantReport) -> None:
    slot = name.rsplit(".", 1)[-1]
    for role in ("quantizer_in1", "quantizer_in2", "quantizer_out"):
        if (rule.destination, slot, role) in INT8_DROPPED_ROLES and getattr(module, role, None) is not None:
            setattr(module, role, None)
            report.approximations.append(f"{slot}.{role} ({rule.quantizer(role).describe()}) not applied: "
                                         "a fused/paged attention kernel cannot quantize P inside P.V")


@torch.no_grad()
def calibrate(model: nn.Module, samples: Optional[Iterable[torch.Tensor]], device: torch.device) -> int:
    """Run each (1, L) token tensor through the model with the static quantizers observing."""
    if samples is None:
        raise UserError("the quantization config has static rules and needs calibration data: pass "
                        "--calibration-path or put the processorca calibration_*.pkl beside the dataset")
    count = set_calibrating(model, True)
    n = 0
    try:
        for ids in samples:
            model(ids.to(device))  # ids: [1, L]
            n += 1
    finally:
        set_calibrating(model, False)
    if n == 0:
        raise UserError("calibration data is empty; static quantizers cannot be calibrated")
    check_calibrated_ranges(model, n)
    logger.info("calibrated %d static quantizers on %d samples", count, n)
    return n


def check_calibrated_ranges(model: nn.Module, samples: int) -> None:
    """A range calibration produced must be finite and not zero (what a --calibration-scales file is held to):
    a NaN or inf range (inf/NaN activations in a calibration prompt) would turn that slot's every output into NaN,
    a zero one would quantize it to ~0, and the run would still finish and record a result."""
    for module in model.modules():
        if not isinstance(module, FakeQuantizer) or module.spec.dynamic or not module.calibrated:
            continue
        lo, hi = module.running_min, module.running_max
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            problem = "is not finite (NaN or inf activations on the calibration data; fp16 overflow?)"
        elif (torch.maximum(lo.abs(), hi.abs()) == 0).any():
            problem = "is zero (the tensor was 0 on every calibration sample; every value would quantize to 0)"
        else:
            continue
        raise UserError(f"{module.rule_label}: calibration on {samples} samples: the range of static quantizer "
                        f"{module.name} {problem}; check the model and --calibration-path, or make the rule dynamic")
