"""The run's quantization settings (`--liteml-config`, `--quantization`, ...): one dataclass owns its flags.

It lives with the quant package so the engine and the tensor-parallel workers read it without
importing the harness's config module (re-exported there).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from mlperf_llama2.errors import UserError

QUANTIZATIONS = ("fp8",)
INT8_RULES = ("all", "linear")


@dataclass(frozen=True)
class QuantConfig:
    """Quantization: the fork's `--liteml-config` and how it is honoured (QUANT.md)."""

    liteml_config: Optional[str] = None
    quantization: Optional[str] = None  # "fp8": FP8 E4M3 Linears (engine), fake-quant FP8 (reference)
    quant_backend: str = "auto"  # auto | liteml | open
    quant_mode: str = "simulate"  # simulate | int8
    calibration_path: Optional[str] = None
    calibration_scales: Optional[str] = None  # calibration_scales.safetensors of an earlier run: no calibration
    # Open-backend numerics public material leaves open (docs/quantization.md).
    momentum: float = 0.01
    rounding: str = "half_even"  # half_even | half_away
    narrow_range: bool = True
    batch_shared_scale: bool = True
    int8_rules: str = "all"  # engine int8 mode: every rule of the config, or its Linear rules only (A/B)

    def __post_init__(self) -> None:
        if not 0.0 < self.momentum <= 1.0:
            raise UserError(f"--quant-momentum must be in (0, 1], got {self.momentum}")
        for flag, path in (("--liteml-config", self.liteml_config), ("--calibration-path", self.calibration_path),
                           ("--calibration-scales", self.calibration_scales)):
            if path is not None and not os.path.isfile(path):
                raise UserError(f"{flag}: {'is a directory, not a file' if os.path.isdir(path) else 'file not found'}"
                                f": {path}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise UserError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.int8_rules not in INT8_RULES:
            raise UserError(f"--int8-rules must be one of {', '.join(INT8_RULES)}, got {self.int8_rules!r}")
        if self.int8_rules != "all" and (self.liteml_config is None or self.quant_mode != "int8"):
            raise UserError(f"--int8-rules {self.int8_rules} chooses what the engine's int8 mode computes: it needs "
                            "--liteml-config and --quant-mode int8")
        if self.liteml_config is None:
            tuned = [flag for flag, on in (("--calibration-path", self.calibration_path is not None),
                                           ("--quant-momentum", self.momentum != QuantConfig.momentum),
                                           ("--quant-rounding", self.rounding != QuantConfig.rounding),
                                           ("--quant-full-range", not self.narrow_range),
                                           ("--quant-per-sample-scale", not self.batch_shared_scale)) if on]
            if tuned:  # the run would be unchanged and run_info.json would still record the setting
                raise UserError(f"{tuned[0]} tunes how a --liteml-config is applied (its calibration and the open "
                                "backend's numerics); without one it changes nothing: add --liteml-config or drop "
                                "it (an 8-bit KV cache takes its scales from --calibration-scales, written by "
                                "tools/calibrate_kv.py)")
        if self.quantization is not None and self.liteml_config is not None:
            raise UserError(f"--quantization {self.quantization} and --liteml-config are exclusive: a LiteML "
                            "config names its own numerics; pass one of them")

    @property
    def enabled(self) -> bool:
        return self.liteml_config is not None

    @property
    def fp8(self) -> bool:
        return self.quantization == "fp8"

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("quantization")
        g.add_argument("--liteml-config", default=None,
                       help="quantization YAML (liteml_configs/*.yaml); off when not given")
        g.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                       help="fp8: E4M3 weights per output channel and per-token E4M3 activations in every Linear "
                            "but lm_head (engine: real FP8 GEMMs; reference: the same numerics as fake-quant). "
                            "Exclusive with --liteml-config")
        g.add_argument("--quant-backend", choices=("auto", "liteml", "open"), default="auto",
                       help="auto: the real LiteML when installed, else our open backend (logged); "
                            "liteml: require LiteML; open: our backend (default %(default)s)")
        g.add_argument("--quant-mode", choices=("simulate", "int8"), default="simulate",
                       help="open backend: simulate = exact fake-quant at every rule (CPU/GPU); "
                            "int8 = real int8 weights, per-token int8 activations and the fused Triton int8 GEMM "
                            "on CUDA (torch._int_mm where Triton is missing; an exact integer matmul on CPU) "
                            "(default %(default)s)")
        g.add_argument("--calibration-path", default=None,
                       help="calibration pickle for static quantizers (default: the processorca "
                            "calibration_*.pkl beside the dataset)")
        g.add_argument("--calibration-scales", default=None, metavar="FILE",
                       help="static scales written by an earlier run's calibration (calibration_scales.safetensors "
                            "in its --output-log-dir): reused instead of calibrating; checked against the config "
                            "and the model")
        g.add_argument("--quant-momentum", type=float, default=QuantConfig.momentum,
                       help="open backend: MovingAverage observer update weight (default %(default)s)")
        g.add_argument("--quant-rounding", choices=("half_even", "half_away"), default=QuantConfig.rounding,
                       help="open backend: rounding of x/scale (default %(default)s)")
        g.add_argument("--quant-full-range", action="store_true",
                       help="open backend: symmetric int8 in [-128, 127] instead of [-127, 127]")
        g.add_argument("--quant-per-sample-scale", action="store_true",
                       help="open backend: a per-token scale whose dims list the batch axis is computed per "
                            "sample instead of across the batch")
        g.add_argument("--int8-rules", choices=INT8_RULES, default=QuantConfig.int8_rules,
                       help="engine --quant-mode int8: all = every rule of the config (norms, RoPE adds, Q/K/V/P, "
                            "mask add, P.V output, SiLU, mul, residual adds; scales per sequence, as simulate's "
                            "--quant-per-sample-scale); linear = the W8A8 Linears only, the rest in float and "
                            "logged (default %(default)s)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "QuantConfig":
        return cls(
            liteml_config=ns.liteml_config,
            quantization=ns.quantization,
            quant_backend=ns.quant_backend,
            quant_mode=ns.quant_mode,
            calibration_path=ns.calibration_path,
            calibration_scales=ns.calibration_scales,
            momentum=ns.quant_momentum,
            rounding=ns.quant_rounding,
            narrow_range=not ns.quant_full_range,
            batch_shared_scale=not ns.quant_per_sample_scale,
            int8_rules=ns.int8_rules,
        )
