"""Static quantizer scales as a file: `calibration_scales.safetensors`, written once, reused by both backends.

Contract. The file is safetensors. Each static quantizer (slot name = its `FakeQuantizer.name`, e.g.
`model.layers.3.self_attn.matmul_qkt.quantizer_in2`) has two float32 tensors, `<slot>.min` and
`<slot>.max`: the observer's running range, in the shape the observer keeps (symmetric scale =
max(|min|, |max|) / qmax). The engine's K/V calibration also writes `kv_heads.min` / `kv_heads.max`
([2, L, KV]: K then V, per layer and KV head). The metadata (all strings) identify what the scales
belong to: the config (`config_id`: sha256 of the YAML bytes, or a name such as "fp8-kv" for an
engine-only KV calibration), the model (sha256 of config.json and of the sorted weight names and
shapes from the safetensors headers), the calibration set (path, sha256, rows), the observer
settings and the harness version, and `tensors_sha256`, a digest of every tensor (name, dtype, shape, bytes), so a
file edited after writing or given another file's metadata is told apart. `check_scales_file` compares them with a
run's config, numerics, calibration set and model, and checks every range (float32, min and max of one shape,
finite, min <= max, not zero), before the model loads; any mismatch or unreadable file is one `UserError` line.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Optional

import torch

from mlperf_llama2.errors import UserError
from mlperf_llama2.file_hash import sha256_file

logger = logging.getLogger(__name__)

FILE_NAME = "calibration_scales.safetensors"
FORMAT = "mlperf_llama2.calibration_scales/1"
KV_HEADS = "kv_heads"  # engine K/V ranges per layer and KV head: kv_heads.min / kv_heads.max [2, L, KV]
K_SLOT = "model.layers.{layer}.self_attn.matmul_qkt.quantizer_in2"  # K's static quantizer in the slots
V_SLOT = "model.layers.{layer}.self_attn.matmul_pv.quantizer_in2"  # V's
GRANULARITIES = ("tensor", "head")
IDENTITY_KEYS = ("config_id", "model_config_sha256", "model_weights_sha256")
DIGEST_KEY = "tensors_sha256"  # absent in files of harnesses before it (their tensors are still range-checked)


def config_id(liteml_config: Optional[str], name: Optional[str] = None) -> str:
    """Identity of the quantization config: sha256 of the YAML bytes, or the given name (engine-only KV)."""
    if liteml_config is None:
        if not name:
            raise UserError("calibration scales need a config: pass --liteml-config")
        return name
    try:
        return "sha256:" + sha256_file(liteml_config)
    except OSError as exc:
        raise UserError(f"--liteml-config {liteml_config}: cannot read: {exc.strerror}") from None


def _safetensors_header(path: str, flag: str) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, metadata), without reading tensors;
    `flag` names where the file came from in messages."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (size,) = struct.unpack("<Q", raw)
            if size > 100 * 2**20 or size > os.path.getsize(path) - 8:
                raise ValueError("header length out of range")
            header = json.loads(f.read(size))
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{flag} {path}: not a safetensors file ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise UserError(f"{flag} {path}: not a safetensors file (header is not a mapping)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise UserError(f"{flag} {path}: not a safetensors file (__metadata__ is not a mapping of strings)")
    ends = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and isinstance(info.get("shape"), list) and all(type(d) is int for d in info["shape"])):
            raise UserError(f"{flag} {path}: not a safetensors file (tensor {name!r} has no valid shape and "
                            "data_offsets)")
        ends.append(offsets[1])
    if max(ends, default=0) != os.path.getsize(path) - 8 - size:
        raise UserError(f"{flag} {path}: truncated or corrupt (tensor data does not match the header); copy it again")
    return header


def model_identity(model_path: str) -> dict[str, str]:
    """sha256 of config.json, and of the sorted "name shape" lines of every safetensors weight (headers only;
    for a .bin checkpoint, of its file names and sizes)."""
    try:
        config_sha = sha256_file(os.path.join(model_path, "config.json"))
    except OSError as exc:
        raise UserError(f"--model-path {model_path}: cannot read config.json: {exc.strerror}") from None
    from mlperf_llama2.checkpoint import safetensors_files

    files = safetensors_files(model_path)  # the files that load: a stale shard beside them is no part of the model
    if files:
        lines = sorted(f"{name} {list(info['shape'])}" for path in files
                       for name, info in _safetensors_header(path, "--model-path").items() if name != "__metadata__")
    else:
        lines = sorted(f"{os.path.basename(p)} {os.path.getsize(p)}"
                       for p in glob.glob(os.path.join(model_path, "pytorch_model*.bin")))
    weights_sha = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"model_config_sha256": config_sha, "model_weights_sha256": weights_sha}


def calibration_metadata(path: Optional[str], rows: int) -> dict[str, str]:
    if path is None:
        return {"calibration_path": "", "calibration_sha256": "", "calibration_rows": str(rows)}
    return {"calibration_path": os.path.abspath(path), "calibration_sha256": sha256_file(path),
            "calibration_rows": str(rows)}


def numerics_metadata(momentum: float, rounding: Optional[str] = None,
                      narrow_range: Optional[bool] = None) -> dict[str, str]:
    """The open-backend numerics a calibration ran with (the observed ranges depend on them), for the reuse check."""
    out = {"momentum": repr(float(momentum))}
    if rounding is not None:
        out["rounding"] = rounding
    if narrow_range is not None:
        out["narrow_range"] = str(bool(narrow_range))
    return out


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def check_ranges(where: str, tensors: dict[str, torch.Tensor]) -> None:
    """Every `<slot>.min` / `<slot>.max` pair: float32, one shape, finite, min <= max, |range| > 0 (a zero range
    would make every value of that tensor quantize to ~0; a NaN one to garbage), else one UserError naming it."""
    slots = sorted({name[:-4] for name in tensors if name.endswith((".min", ".max"))})
    for slot in slots:
        lo, hi = tensors.get(f"{slot}.min"), tensors.get(f"{slot}.max")
        if lo is None or hi is None:
            problem = f"has only {'max' if lo is None else 'min'}"
        elif lo.dtype != torch.float32 or hi.dtype != torch.float32:
            problem = f"is {lo.dtype}/{hi.dtype}, not float32"
        elif lo.shape != hi.shape:
            problem = f"has min of shape {tuple(lo.shape)} and max of shape {tuple(hi.shape)}"
        elif not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            problem = "not finite (NaN or inf)"
        elif (lo > hi).any():
            problem = "inverted (min > max)"
        elif (torch.maximum(lo.abs(), hi.abs()) == 0).any():
            problem = "zero (every value would quantize to 0)"
        else:
            continue
        raise UserError(f"{where}: range of {slot} {problem}; recalibrate")


def harness_version() -> str:
    from mlperf_llama2 import __version__
    from mlperf_llama2.report.run_info import git_state

    return f"{__version__} ({git_state().commit or 'no git commit'})"


@dataclass(frozen=True)
class ScalesFile:
    path: str
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]  # "<slot>.min" / "<slot>.max" and optionally kv_heads.min / .max

    def slot_range(self, slot: str) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.tensors.get(f"{slot}.min"), self.tensors.get(f"{slot}.max")
        if lo is None or hi is None:
            raise UserError(f"--calibration-scales {self.path}: no scale for {slot} (calibrated for another "
                            "config or an older harness; recalibrate)")
        return lo, hi

    def describe(self) -> str:
        m = self.metadata
        return (f"{self.path}: {len(self.tensors) // 2} ranges, config {m.get('config_name') or m.get('config_id')}, "
                f"calibrated on {m.get('calibration_rows')} rows of {m.get('calibration_path') or '?'} "
                f"({m.get('observer')}), harness {m.get('harness_version')}")


def write_scales(path: str, ranges: dict[str, tuple[torch.Tensor, torch.Tensor]], metadata: dict[str, str]) -> str:
    """Write {slot: (min, max)} and the metadata (identity keys required); returns the path."""
    from safetensors.torch import save_file

    missing = [k for k in IDENTITY_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"calibration metadata lacks {missing}")
    tensors: dict[str, torch.Tensor] = {}
    for slot, (lo, hi) in ranges.items():
        tensors[f"{slot}.min"] = lo.detach().float().cpu().contiguous()
        tensors[f"{slot}.max"] = hi.detach().float().cpu().contiguous()
    check_ranges(f"calibration scales {path}: not written", tensors)
    meta = {"format": FORMAT, "harness_version": harness_version(), **{k: str(v) for k, v in metadata.items()},
            DIGEST_KEY: tensors_digest(tensors)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return path


def read_metadata(path: str) -> dict[str, str]:
    """The file's metadata from its header only (cheap; for the start-up check)."""
    if not os.path.isfile(path):
        raise UserError(f"--calibration-scales: file not found: {path}")
    meta = _safetensors_header(path, "--calibration-scales").get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise UserError(f"--calibration-scales {path}: not a calibration scales file (format "
                        f"{meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def read_scales(path: str) -> ScalesFile:
    meta = read_metadata(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"--calibration-scales {path}: unreadable ({str(exc).splitlines()[0]})") from None
    if DIGEST_KEY in meta and meta[DIGEST_KEY] != tensors_digest(tensors):
        raise UserError(f"--calibration-scales {path}: its tensors were changed after it was written, or its "
                        "metadata comes from another file (tensors_sha256 differs); recalibrate")
    check_ranges(f"--calibration-scales {path}", tensors)
    return ScalesFile(path, meta, tensors)


def check_scales_file(path: str, expected_config_id: str, model_path: Optional[str],
                      quant_config=None) -> dict[str, str]:
    """Before the model loads: the file was made for this config and this model, its tensors are those written and
    every range is usable, and (with the run's `quant_config`) it was calibrated with the run's numerics and, if
    --calibration-path is given, on that set. Returns its metadata."""
    meta = read_metadata(path)
    if meta.get("config_id") != expected_config_id:
        raise UserError(f"--calibration-scales {path}: calibrated for config {meta.get('config_name') or '?'} "
                        f"({_short(meta.get('config_id'))}), not this run's ({_short(expected_config_id)}); "
                        "recalibrate")
    if model_path is not None:
        ours = model_identity(model_path)
        for key, what in (("model_config_sha256", "config.json"), ("model_weights_sha256", "weight names/shapes")):
            if meta.get(key) != ours[key]:
                raise UserError(f"--calibration-scales {path}: calibrated for another model ({what} differs from "
                                f"{model_path}); recalibrate")
    read_scales(path)  # digest and ranges (the file is small: two floats per static quantizer)
    if quant_config is not None:
        _check_calibrated_like(path, meta, quant_config)
    return meta


def _check_calibrated_like(path: str, meta: dict[str, str], qc) -> None:
    """The run's numerics flags and --calibration-path must be what the file was calibrated with: with
    --calibration-scales no calibration runs, so a different value would change nothing while the command line
    recorded it."""
    head = f"--calibration-scales {path}: calibrated with"
    observer = meta.get("observer", "")
    momentum = meta.get("momentum")
    if momentum is None:  # files written before the key: the observer line says it
        found = re.search(r"momentum=([0-9.eE+-]+)", observer)
        momentum = found.group(1) if found else None
    if "MovingAverage" in observer and momentum is not None and float(momentum) != qc.momentum:
        raise UserError(f"{head} --quant-momentum {momentum}, this run has {qc.momentum}; pass the file's value "
                        "or recalibrate")
    if "rounding" in meta and meta["rounding"] != qc.rounding:
        raise UserError(f"{head} --quant-rounding {meta['rounding']}, this run has {qc.rounding}; pass the file's "
                        "value or recalibrate")
    if "narrow_range" in meta and meta["narrow_range"] != str(bool(qc.narrow_range)):
        said = "without" if meta["narrow_range"] == "True" else "with"
        raise UserError(f"{head} {said} --quant-full-range, this run {'with' if said == 'without' else 'without'} "
                        "it; match the file or recalibrate")
    if qc.calibration_path is not None and meta.get("calibration_sha256") != sha256_file(qc.calibration_path):
        raise UserError(f"--calibration-scales {path}: calibrated on {meta.get('calibration_path') or 'another set'}"
                        f", not --calibration-path {qc.calibration_path}; drop --calibration-path (no calibration "
                        "runs with --calibration-scales) or recalibrate")


def _short(identity: Optional[str]) -> str:
    """A config id for messages: "sha256:" and 12 hex digits, or the name."""
    return identity[:19] if identity and identity.startswith("sha256:") else str(identity)


def slot_shapes(path: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """slot -> (shape of its min, shape of its max) for every slot a scales file holds a range for (header only)."""
    header = _safetensors_header(path, "--calibration-scales")
    return {name[:-4]: (tuple(info["shape"]), tuple(header[f"{name[:-4]}.max"]["shape"]))
            for name, info in header.items() if name.endswith(".min") and f"{name[:-4]}.max" in header}


def slot_names_in(path: str) -> set[str]:
    """The slots a scales file holds a range for (header only)."""
    return set(slot_shapes(path))


def kv_granularity(path: str, requested: str, with_config: bool) -> str:
    """"tensor" or "head": which K/V ranges of the file an 8-bit KV cache uses (header only, before loading).

    `requested` "auto": with a quantization config (`with_config`), the config's own per-tensor K and V
    scales (its static quantizers' slots; a LiteML simulate calibration holds nothing else); without one,
    per KV head when the file holds kv_heads.*, else per tensor."""
    if requested not in ("auto",) + GRANULARITIES:
        raise UserError(f"KV scale granularity must be one of auto, {', '.join(GRANULARITIES)}, got {requested!r}")
    has_heads = f"{KV_HEADS}.min" in _safetensors_header(path, "--calibration-scales")
    if requested == "head" and not has_heads:
        raise UserError(f"--calibration-scales {path}: holds no per-KV-head K/V ranges (a quantization config's "
                        "calibration is per tensor): use --kv-scale-granularity tensor, or calibrate with "
                        "tools/calibrate_kv.py")
    if requested != "auto":
        return requested
    return "head" if has_heads and not with_config else "tensor"


def kv_scales_from_file(path: str, num_layers: int, num_kv_heads: int, granularity: str,
                        dtype_max: float) -> torch.Tensor:
    """K and V scales [2, L, KV] float32 = amax / dtype_max (127 int8, 448 fp8 e4m3); per tensor: one value
    per layer broadcast over the KV heads (from K's and V's static slots); per head: from kv_heads.*."""
    if granularity not in GRANULARITIES:
        raise UserError(f"KV scale granularity must be one of {GRANULARITIES}, got {granularity!r}")
    f = read_scales(path)
    if granularity == "head":
        lo, hi = f.slot_range(KV_HEADS)  # [2, L, KV]
        if tuple(lo.shape) != (2, num_layers, num_kv_heads):
            raise UserError(f"--calibration-scales {path}: K/V ranges are {tuple(lo.shape)}, the model needs "
                            f"(2, {num_layers}, {num_kv_heads})")
        amax = torch.maximum(lo.abs(), hi.abs())
    else:
        amax = torch.empty(2, num_layers, 1)
        for which, template in enumerate((K_SLOT, V_SLOT)):
            for layer in range(num_layers):
                lo, hi = f.slot_range(template.format(layer=layer))
                amax[which, layer] = torch.maximum(lo.abs(), hi.abs()).max()
        amax = amax.expand(2, num_layers, num_kv_heads)
    return amax_to_scale(amax, dtype_max)


def amax_to_scale(amax: torch.Tensor, dtype_max: float) -> torch.Tensor:
    """float32 scale = amax / dtype_max, never zero (as fake_quant.symmetric_scale)."""
    divisor = torch.full((), float(dtype_max), dtype=torch.float32, device=amax.device)
    return (amax.float() / divisor).clamp_min(torch.finfo(torch.float32).tiny).contiguous()


def static_quantizers(model: torch.nn.Module) -> dict:
    """{slot name: FakeQuantizer} of every static quantizer in a model quantized by the open backend."""
    from mlperf_llama2.quant.fake_quant import FakeQuantizer

    return {m.name: m for m in model.modules() if isinstance(m, FakeQuantizer) and not m.spec.dynamic}


def static_ranges(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{slot: (running_min, running_max)} of every calibrated static quantizer."""
    found = static_quantizers(model)
    uncalibrated = sorted(name for name, q in found.items() if not q.calibrated)
    if uncalibrated:
        raise UserError(f"static quantizer {uncalibrated[0]} was never calibrated; nothing to write")
    return {name: (q.running_min, q.running_max) for name, q in sorted(found.items())}


def load_static_ranges(model: torch.nn.Module, scales: ScalesFile, device: torch.device) -> int:
    """Give every static quantizer its range from the file (no calibration); returns how many."""
    found = static_quantizers(model)
    for name, q in found.items():
        lo, hi = scales.slot_range(name)
        q.running_min, q.running_max = lo.to(device), hi.to(device)
        q.calibrating = False
    logger.info("static scales of %d quantizers read from %s", len(found), scales.describe())
    return len(found)
