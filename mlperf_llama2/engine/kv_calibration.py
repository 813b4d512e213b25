"""Static K/V scales from the engine's own model: prefill each calibration prompt, observe post-RoPE K and V.

This follows docs/quantization.md "Calibration" exactly as simulate does it: one prompt at a time (a
sample of shape (1, len)), one observer update per prompt with that prompt's min and max over all its
positions, MinMax (running min / max) or MovingAverage (r <- r + momentum * (batch - r), the first
prompt initialising). Ranges are kept per layer and KV head and, separately, per layer (the per-tensor
observer of the slots, which a MovingAverage does not derive from the per-head one). K and V are
observed where the engine stores them in its cache (`ops.rope_store`), so the model's kernels are not
touched: the model runs eagerly with an ops wrapper that records them, one layer after the other.
Scale = amax / dtype_max (127 for int8, 448 for fp8 e4m3).
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from mlperf_llama2.engine.calibration_prefill import prefill_each
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.calibration_file import GRANULARITIES, K_SLOT, KV_HEADS, V_SLOT, amax_to_scale

log = logging.getLogger(__name__)

OBSERVERS = ("MinMax", "MovingAverage")


@dataclass
class KVRanges:
    """Running K/V ranges: index 0 = K, 1 = V."""

    head_min: torch.Tensor  # [2, L, KV] float32
    head_max: torch.Tensor  # [2, L, KV]
    tensor_min: torch.Tensor  # [2, L]
    tensor_max: torch.Tensor  # [2, L]
    samples: int

    def amax(self, granularity: str) -> torch.Tensor:
        """[2, L, KV] absolute maxima; per tensor broadcast over the KV heads."""
        if granularity not in GRANULARITIES:
            raise UserError(f"KV scale granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if granularity == "head":
            return torch.maximum(self.head_min.abs(), self.head_max.abs())
        per_layer = torch.maximum(self.tensor_min.abs(), self.tensor_max.abs())  # [2, L]
        return per_layer[:, :, None].expand_as(self.head_min)

    def slot_ranges(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The ranges under the simulate slot names (per tensor, the slots' [1, 1, 1, 1]) plus kv_heads."""
        out = {KV_HEADS: (self.head_min, self.head_max)}
        for which, template in enumerate((K_SLOT, V_SLOT)):
            for layer in range(self.tensor_min.shape[1]):
                out[template.format(layer=layer)] = (self.tensor_min[which, layer].reshape(1, 1, 1, 1),
                                                     self.tensor_max[which, layer].reshape(1, 1, 1, 1))
        return out


class _Observer:
    """Folds one prompt's per-layer K/V ranges into the running ranges, as FakeQuantizer.observe does."""

    def __init__(self, observer: str, momentum: float) -> None:
        if observer not in OBSERVERS:
            raise UserError(f"KV calibration observer must be one of {OBSERVERS}, got {observer!r}")
        self.observer, self.momentum = observer, momentum
        self.running: Optional[list[torch.Tensor]] = None  # head_min, head_max, tensor_min, tensor_max

    def update(self, batch: list[torch.Tensor]) -> None:
        if self.running is None:
            self.running = [b.clone() for b in batch]
            return
        new = []
        for i, (r, b) in enumerate(zip(self.running, batch)):
            if self.observer == "MovingAverage":
                new.append(r + self.momentum * (b - r))
            else:
                new.append(torch.minimum(r, b) if i % 2 == 0 else torch.maximum(r, b))
        self.running = new


class _RecordingOps:
    """The model's ops, with rope_store recording each layer's post-RoPE K and V ranges for one prompt."""

    def __init__(self, base, num_layers: int) -> None:
        self.base = base
        self.num_layers = num_layers
        self.ranges: list[tuple[torch.Tensor, ...]] = []  # per layer: (k_min, k_max, v_min, v_max), each [KV]

    def __getattr__(self, name):
        return getattr(self.base, name)

    def rope_store(self, *args, **kwargs):
        q, k, v = self.base.rope_store(*args, **kwargs)  # k, v: [T, KV, D]
        kf, vf = k.float(), v.float()
        self.ranges.append((kf.amin(dim=(0, 2)), kf.amax(dim=(0, 2)), vf.amin(dim=(0, 2)), vf.amax(dim=(0, 2))))
        return q, k, v

    def take(self) -> list[torch.Tensor]:
        """This prompt's [head_min, head_max ([2, L, KV]), tensor_min, tensor_max ([2, L])]; resets."""
        if len(self.ranges) != self.num_layers:
            raise RuntimeError(f"KV calibration saw {len(self.ranges)} layers, the model has {self.num_layers}")
        k_min, k_max, v_min, v_max = (torch.stack(col) for col in zip(*self.ranges))  # each [L, KV]
        self.ranges = []
        head_min, head_max = torch.stack((k_min, v_min)), torch.stack((k_max, v_max))  # [2, L, KV]
        return [head_min, head_max, head_min.amin(dim=-1), head_max.amax(dim=-1)]


@torch.inference_mode()
def calibrate_kv_ranges(model, prompts: Iterable[Sequence[int]], observer: str = "MinMax",
                        momentum: float = 0.01) -> KVRanges:
    """Run each prompt (token ids) through the engine's LlamaForCausalLM and fold its K/V ranges."""
    base_ops = model.ops
    recorder = _RecordingOps(base_ops, model.shape.num_layers)
    obs = _Observer(observer, momentum)

    def forward(*args) -> None:
        model(*args)
        obs.update(recorder.take())

    model.ops = recorder
    try:
        n = prefill_each(model, prompts, forward, "K/V scales")
    finally:
        model.ops = base_ops
    log.info("K/V ranges calibrated on %d prompts (%s)", n, observer)
    return KVRanges(*(r.cpu() for r in obs.running), samples=n)


def calibrate_kv_scales(model, prompts: Iterable[Sequence[int]], dtype_max: float, granularity: str = "head",
                        observer: str = "MinMax", momentum: float = 0.01) -> torch.Tensor:
    """K/V scales [2, L, KV] float32 = amax / dtype_max (per tensor: one value per layer, broadcast)."""
    ranges = calibrate_kv_ranges(model, prompts, observer, momentum)
    return amax_to_scale(ranges.amax(granularity), dtype_max)


def write_kv_calibration(path: str, ranges: KVRanges, config: str, model_path: str,
                         calibration_path: Optional[str], observer: str, momentum: float) -> str:
    """K/V ranges to a calibration_scales file. `config`: a --liteml-config path (its hash is the identity)
    or a name such as "fp8-kv" for a KV-only calibration."""
    import os

    from mlperf_llama2.quant import calibration_file as cf

    is_yaml = os.path.isfile(config)
    metadata = {
        "config_id": cf.config_id(config if is_yaml else None, None if is_yaml else config),
        "config_name": os.path.basename(config), **cf.model_identity(model_path),
        **cf.calibration_metadata(calibration_path, ranges.samples), **cf.numerics_metadata(momentum),
        "observer": f"{observer} momentum={momentum}, one update per sample (1, len)", "writer": "engine",
    }
    return cf.write_scales(path, ranges.slot_ranges(), metadata)


def config_kv_observer(rules) -> Optional[str]:
    """The observer of the config's static K and V quantizers (they must agree), or None if K/V are not static."""
    found = set()
    for slot in ("matmul_qkt", "matmul_pv"):
        rule = rules.match("Matmul", f"model.layers.0.self_attn.{slot}")
        spec = rule.quantizer("quantizer_in2") if rule is not None else None
        if spec is not None and not spec.dynamic:
            found.add(spec.observer)
    if len(found) > 1:
        raise UserError(f"{rules.path}: K and V static quantizers use different observers {sorted(found)}; "
                        "the engine's K/V calibration needs one")
    return found.pop() if found else None


def calibrate_engine(model_path: str, calibration_path: str, out_path: str, config: str, device: str = "cpu",
                     dtype: torch.dtype = torch.float32, observer: Optional[str] = None,
                     momentum: float = 0.01) -> str:
    """Calibrate K/V with the engine alone and write the scales file. `config` a --liteml-config YAML (the
    model loads in int8 mode as its rules say, and its K/V observer is used) or a KV-only name ("fp8-kv")."""
    import os

    from mlperf_llama2 import constants
    from mlperf_llama2.backends.hf_loading import check_model_dir, read_model_info
    from mlperf_llama2.data.dataset import load_dataset
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import build_model, read_config
    from mlperf_llama2.engine.quant_plan import int8_plan
    from mlperf_llama2.quant.yaml_config import load_rules

    rules = load_rules(config) if os.path.isfile(config) else None
    if rules is not None:  # every static quantizer of the config is calibrated, each with its rule's observer
        if not rules.needs_calibration:
            raise UserError(f"{config}: no rule has a static quantizer; nothing to calibrate")
        from_config = config_kv_observer(rules)
        if observer is not None and from_config is None:
            raise UserError(f"observer {observer} given, but {config} has no static K or V quantizer: each static "
                            "quantizer uses its own rule's observer; drop --observer")
        if observer not in (None, from_config):
            raise UserError(f"observer {observer} given, but {config} says {from_config} for K and V")
        observer = from_config
    check_model_dir(model_path)
    vocab = read_model_info(model_path).vocab_size
    prompts = load_dataset(calibration_path, total_sample_count=10**9, vocab_size=vocab).prompts  # before loading
    hf_config = read_config(model_path)
    plan = int8_plan(LlamaShape.from_hf_config(hf_config), rules) if rules is not None else {}
    model = build_model(hf_config, plan, torch.device(device), dtype, constants.INPUT_TOKEN_LIMIT,
                        model_path=model_path)
    if rules is not None:  # every static quantizer of the config, as int8 mode computes them (whole_config.py)
        from mlperf_llama2.engine import whole_config
        from mlperf_llama2.quant.config import QuantConfig

        qc = QuantConfig(liteml_config=config, quant_backend="open", quant_mode="int8", momentum=momentum)
        wc = whole_config.attach(model, rules, whole_config.engine_numerics(qc))
        rows = whole_config.calibrate(model, prompts)
        path = whole_config.write_scales(wc, dataclasses.replace(qc, calibration_path=calibration_path), model_path,
                                         rows, out_path)
        log.info("whole-config calibration of %s on %d prompts written to %s", model_path, rows, path)
        return path
    ranges = calibrate_kv_ranges(model, prompts, observer or "MinMax", momentum)
    path = write_kv_calibration(out_path, ranges, config, model_path, calibration_path, observer or "MinMax", momentum)
    log.info("K/V calibration of %s on %d prompts written to %s", model_path, ranges.samples, path)
    return path
