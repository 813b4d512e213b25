"""`--liteml-config` end to end: check the request at start-up, then quantize the loaded model.

`plan_quantization(quant_config, dataset_path, device, num_layers, model_path, output_dir)` runs before
any model loads: it picks the backend (auto: LiteML when the real package is installed, else the open
backend; logged), reads and validates the YAML for the open backend (every rule must reach a module of
the model, with dims inside the rank of what it quantizes: `check_rules_for_model`), finds the
calibration pickle, and checks a `--calibration-scales` file against the config and the model.
`apply_quantization` then wraps the loaded transformers model (LiteML's RetrainerModel, or the open
backend in place) and returns it with a `QuantReport` for the run summary; the open backend's
calibration writes its scales to `output_dir/calibration_scales.safetensors` (`calibration_file.py`),
or reads them from that flag.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fake_quant import Numerics
from mlperf_llama2.quant.yaml_config import QuantRules, load_rules, read_yaml

logger = logging.getLogger(__name__)

CALIBRATION_GLOB = "*calibration_*.pkl"


@dataclass(frozen=True)
class QuantPlan:
    backend: str  # liteml | open
    config_path: str
    mode: str  # simulate | int8 (open backend)
    calibration_path: Optional[str]
    numerics: Numerics
    rules: Optional[QuantRules]  # open backend only
    static: bool  # the config has static quantizers (needs calibration)
    scales_path: Optional[str] = None  # --calibration-scales: static ranges from this file, no calibration
    model_path: Optional[str] = None  # for the scales file's model identity
    output_dir: Optional[str] = None  # where calibration writes calibration_scales.safetensors


def default_calibration_path(dataset_path: Optional[str]) -> Optional[str]:
    """The processorca calibration_*.pkl beside the dataset, if exactly one is there."""
    if not dataset_path:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(dataset_path)), CALIBRATION_GLOB)))
    if len(found) > 1:
        raise UserError(f"several calibration pickles beside the dataset ({', '.join(found)}); "
                        "choose one with --calibration-path")
    return found[0] if found else None


def calibration_samples(path: str, vocab_size: Optional[int] = None) -> list[torch.Tensor]:
    """Every row's tok_input as one (1, L) int64 tensor, in file order."""
    from mlperf_llama2.data.dataset import load_dataset

    data = load_dataset(path, total_sample_count=10**9, vocab_size=vocab_size)
    return [torch.tensor(p, dtype=torch.long)[None, :] for p in data.prompts]  # each [1, L]


def check_rules_for_model(rules: QuantRules, num_layers: int) -> None:
    """Every rule must reach a module of a `num_layers` Llama (the first matching rule wins), and its
    dims must be axes of the tensors it quantizes there; one UserError naming the rule otherwise."""
    from mlperf_llama2.quant.llama_slots import input_rank, slot_names

    slots = slot_names(num_layers)
    won: dict[int, list[tuple[str, str]]] = {rule.index: [] for rule in rules.rules}
    for kind, name in slots:
        rule = rules.match(kind, name)
        if rule is not None:
            won[rule.index].append((kind, name))
    for rule in rules.rules:
        head = f"--liteml-config {rules.path}: {rule.label}"
        if not won[rule.index]:
            shadow = next((r for r in rules.rules if r.index < rule.index
                           and any(r.matches(k, n) for k, n in slots if rule.matches(k, n))), None)
            if shadow is not None:
                raise UserError(f"{head}: every module it matches is taken by the earlier {shadow.label}; "
                                "reorder or remove it")
            known = sorted({n.rsplit(".", 1)[-1] for k, n in slots if k == rule.source_kind})
            raise UserError(f"{head}: matches no module of the model; {rule.source_module} modules are named "
                            f"{', '.join(known)}")
        for kind, name in won[rule.index]:
            for role, spec in rule.quantizers:
                rank = input_rank(kind, name, role)
                bad = [d for d in spec.dims if not -rank <= d < rank]
                if bad:
                    raise UserError(f"{head}: {role} dims {list(spec.dims)}: axis {bad[0]} is outside the "
                                    f"rank-{rank} tensor it quantizes at {name} (axes {-rank}..{rank - 1})")


def plan_quantization(quant_config, dataset_path: Optional[str], device: str, num_layers: Optional[int] = None,
                      model_path: Optional[str] = None, output_dir: Optional[str] = None) -> Optional[QuantPlan]:
    """Check everything about quantization a run needs before its model loads; None when off.

    With `num_layers` (from config.json) the open backend's rules are checked against the model too."""
    from mlperf_llama2.quant.liteml_adapter import liteml_available

    qc = quant_config
    if not qc.enabled:
        return None
    if qc.quant_backend == "liteml":
        backend = "liteml"
        if not liteml_available():
            from mlperf_llama2.quant.liteml_adapter import load_liteml

            load_liteml()  # raises the one-line error naming what is missing
    elif qc.quant_backend == "auto":
        backend = "liteml" if liteml_available() else "open"
        logger.info("--quant-backend auto: %s", "Ceva LiteML found, using it" if backend == "liteml"
                    else "Ceva LiteML not installed, using the open W8A8 backend")
    else:
        backend = "open"
    if backend == "liteml" and qc.quant_mode != "simulate":
        raise UserError("--quant-mode int8 is an open-backend mode; use --quant-backend open")
    if backend == "open" and qc.quant_mode == "int8" and not device.startswith("cuda"):
        raise UserError("--quant-mode int8 needs a CUDA device (torch._int_mm); use --quant-mode simulate on CPU")
    rules = load_rules(qc.liteml_config) if backend == "open" else None
    if rules is not None and num_layers is not None:
        check_rules_for_model(rules, num_layers)
    if rules is not None:
        static = rules.needs_calibration
    else:
        data_q = (read_yaml(qc.liteml_config)["QAT"] or {}).get("data_quantization") or {}
        static = data_q.get("quantization_mode") == "static"
    scales_path = qc.calibration_scales
    if scales_path is not None:
        from mlperf_llama2.quant.calibration_file import check_scales_file, config_id

        if backend != "open":
            raise UserError("--calibration-scales is read by the open backend; LiteML calibrates by itself "
                            "(use --quant-backend open)")
        check_scales_file(scales_path, config_id(qc.liteml_config), model_path, qc)
        if rules is not None:
            check_scales_cover(scales_path, rules, num_layers or 1)
    calibration_path = None if scales_path else qc.calibration_path or default_calibration_path(dataset_path)
    if static and calibration_path is None and scales_path is None:
        raise UserError(f"{qc.liteml_config} has static quantizers and needs calibration data: pass "
                        "--calibration-path (the processorca calibration_*.pkl)")
    numerics = Numerics(momentum=qc.momentum, rounding=qc.rounding, narrow_range=qc.narrow_range,
                        batch_shared_scale=qc.batch_shared_scale)
    return QuantPlan(backend, qc.liteml_config, qc.quant_mode, calibration_path, numerics, rules, static,
                     scales_path, model_path, output_dir)


def _static_quantizers(rules: QuantRules, num_layers: int) -> list[tuple[str, str, str, object]]:
    """(slot, module kind, module name, spec) of every static quantizer but Linears' in a `num_layers` Llama."""
    from mlperf_llama2.quant.llama_slots import slot_names

    found = []
    for kind, name in slot_names(num_layers):
        rule = rules.match(kind, name)
        if rule is not None and kind != "Linear":
            found += [(f"{name}.{role}", kind, name, spec) for role, spec in rule.quantizers
                      if not spec.dynamic and role != "weights_quantizer"]
    return found


def static_slots(rules: QuantRules, num_layers: int) -> list[str]:
    """Every static quantizer's slot name (`model.layers.3.mlp.mul.quantizer_in1`) in a `num_layers` Llama."""
    return [slot for slot, _, _, _ in _static_quantizers(rules, num_layers)]


def check_scales_cover(scales_path: str, rules: QuantRules, num_layers: int) -> None:
    """One line when the file lacks a static quantizer the config needs (e.g. a K/V-only engine calibration), or
    holds one in another shape than that quantizer keeps (header only): the observer's range has the rank of the
    tensor it sees, 1 on every axis its dims reduce and on the batch axis (calibration runs one prompt at a time),
    so per-head ranges under a per-tensor rule are refused instead of broadcast."""
    from mlperf_llama2.quant.calibration_file import slot_shapes
    from mlperf_llama2.quant.fake_quant import reduce_axes
    from mlperf_llama2.quant.llama_slots import input_rank

    held = slot_shapes(scales_path)
    wanted = _static_quantizers(rules, num_layers)
    missing = [slot for slot, _, _, _ in wanted if slot not in held]
    if missing:
        raise UserError(f"--calibration-scales {scales_path}: holds no range for {len(missing)} static quantizer(s) "
                        f"of {os.path.basename(rules.path)}, e.g. {missing[0]}; calibrate with the whole config "
                        "(a run without --calibration-scales writes one)")
    for slot, kind, name, spec in wanted:
        rank = input_rank(kind, name, slot.rsplit(".", 1)[-1])
        ones = set(reduce_axes(rank, spec.dims, True)) | {0}
        for shape in held[slot]:
            if len(shape) != rank or any(shape[a] != 1 for a in ones):
                want = tuple(1 if a in ones else "N" for a in range(rank))
                raise UserError(f"--calibration-scales {scales_path}: range of {slot} has shape {shape}, its rule "
                                f"(dims {list(spec.dims)}) keeps {want}; calibrated for another config; recalibrate")


def apply_quantization(model: torch.nn.Module, plan: QuantPlan, device: str):
    """Quantize a loaded LlamaForCausalLM as planned; returns (model to call generate on, report or None)."""
    vocab = getattr(model.config, "vocab_size", None)
    reuse = plan.static and plan.scales_path is not None
    samples = calibration_samples(plan.calibration_path, vocab) if plan.static and not reuse else None
    if plan.backend == "liteml":
        from mlperf_llama2.quant.liteml_adapter import wrap_with_liteml

        return wrap_with_liteml(model, plan.config_path, samples, device), None
    from mlperf_llama2.quant import calibration_file as cf
    from mlperf_llama2.quant.open_backend import quantize_model

    scales = cf.read_scales(plan.scales_path) if reuse else None
    report = quantize_model(model, plan.rules, plan.mode, plan.numerics, samples, scales=scales)
    if samples is not None and plan.output_dir is not None:
        path = write_calibration(model, plan, len(samples))
        logger.info("calibration scales written to %s (reuse with --calibration-scales %s)", path, path)
    return model, report


def write_calibration(model: torch.nn.Module, plan: QuantPlan, rows: int) -> str:
    """The open backend's calibrated static ranges -> output_dir/calibration_scales.safetensors."""
    from mlperf_llama2.quant import calibration_file as cf

    observers = sorted({spec.observer for rule in plan.rules.rules for _, spec in rule.quantizers if not spec.dynamic})
    metadata = {
        "config_id": cf.config_id(plan.config_path), "config_name": os.path.basename(plan.config_path),
        **(cf.model_identity(plan.model_path) if plan.model_path else
           {"model_config_sha256": "", "model_weights_sha256": ""}),
        **cf.calibration_metadata(plan.calibration_path, rows),
        **cf.numerics_metadata(plan.numerics.momentum, plan.numerics.rounding, plan.numerics.narrow_range),
        "observer": f"{'+'.join(observers)} momentum={plan.numerics.momentum}, one update per sample (1, len)",
        "quant_mode": plan.mode, "writer": "reference",
    }
    return cf.write_scales(os.path.join(plan.output_dir, cf.FILE_NAME), cf.static_ranges(model), metadata)
