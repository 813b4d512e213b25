"""Building the engine's Llama: from a transformers checkpoint (safetensors) or with random weights.

`load_checkpoint` reads config.json with transformers' AutoConfig and streams the safetensors
shards into the fused model on the target device. `random_model` builds real shapes directly on
the device (benchmarks; no checkpoint needed).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Callable, Optional

import torch

from mlperf_llama2.engine.llama import LlamaForCausalLM, LlamaShape, RMSNorm, load_hf_weights, rope_cos_sin

log = logging.getLogger(__name__)


def empty_model(hf_config, device: torch.device, dtype: torch.dtype, max_positions: int,
                before_allocation: Optional[Callable[[LlamaForCausalLM], None]] = None) -> LlamaForCausalLM:
    """The model in the config's shapes, uninitialised on `device` (RMSNorm weights one), RoPE tables set.

    `before_allocation(model)` may swap modules while the model is still on the meta device (int8 mode)."""
    shape = LlamaShape.from_hf_config(hf_config)
    with torch.device("meta"):
        model = LlamaForCausalLM(shape).to(dtype)
        if before_allocation is not None:
            before_allocation(model)
    model = model.to_empty(device=device)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)
    model.set_rope(*rope_cos_sin(hf_config, max(max_positions, 1), dtype, device))
    return model.eval().requires_grad_(False)


def load_checkpoint(model_path: str, device: torch.device, dtype: torch.dtype, max_positions: int,
                    quant_rules=None):
    """Returns (model, hf_config) for a local transformers Llama checkpoint in safetensors.

    With `quant_rules` (int8 mode) the loaded Linears become Int8Linears as the rules say (`int8.py`)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path)
    if hf_config.model_type != "llama":
        raise ValueError(f"{model_path}: model_type {hf_config.model_type!r}; the engine runs Llama checkpoints only")
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise ValueError(f"{model_path}: no *.safetensors files; the engine loads safetensors checkpoints only")

    def tensors():
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)

    if quant_rules is None:
        model = empty_model(hf_config, device, dtype, max_positions)
        load_hf_weights(model, tensors())
    else:
        from mlperf_llama2.engine.int8 import empty_int8_model, quantizing_stream, tie_int8_lm_head

        model, plan = empty_int8_model(hf_config, device, dtype, max_positions, quant_rules)
        load_hf_weights(model, quantizing_stream(model, plan, tensors()))
        tie_int8_lm_head(model, plan)
    log.info("loaded %s (%d layers, %s) on %s", model_path, model.shape.num_layers, dtype, device)
    return model, hf_config


def random_model(hf_config, device: torch.device, dtype: torch.dtype, max_positions: int,
                 init_std: float = 0.02, seed: int = 0) -> LlamaForCausalLM:
    """Random weights N(0, init_std) in the config's shapes, made on `device` (RMSNorm weights one)."""
    model = empty_model(hf_config, device, dtype, max_positions)
    fill_random_(model, init_std, torch.Generator(device=device).manual_seed(seed))
    return model


def fill_random_(model: torch.nn.Module, init_std: float, gen: torch.Generator) -> None:
    """Every float matrix N(0, init_std) from `gen`, biases zero; other vectors (RMSNorm weights) kept."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.data.normal_(0.0, init_std, generator=gen)
        elif name.endswith("bias"):
            p.data.zero_()
