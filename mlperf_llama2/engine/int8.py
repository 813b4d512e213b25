"""W8A8 int8 mode of the engine's Llama: its Linears become the quant package's `Int8Linear`.

Which Linears, and how, follows a quantization config (`--liteml-config`, read by the quant
package's `load_rules`): each engine Linear is matched under the transformers names it stands for
(`qkv_proj` = model.layers.i.self_attn.{q,k,v}_proj, `gate_up_proj` = model.layers.i.mlp.{gate,up}_proj,
`o_proj`, `down_proj`, `lm_head`). A Linear whose rule is W8A8 as int8 mode computes it
(`open_backend.int8_capable`: int8 symmetric weights per tensor or per channel, int8 symmetric
dynamic per-token activations) becomes an `Int8Linear`; fused projections keep one weight scale per
projection, stored as the per-column scale vector. Everything else stays in float: the config's
non-Linear rules (RMSNorm, RoPE adds, Q.K^T, P.V, SiLU, mul, residual adds) are listed by
`left_out` and logged once at start-up.

`quantize_linears` converts a loaded float model in place; `random_int8_model` builds random int8
weights directly on the device (a 70B model never exists in fp16); `warm_up_gemms` runs each
distinct GEMM shape at every M bucket so the Triton autotuner never tunes mid-run or mid-capture.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.engine.llama import LlamaForCausalLM, LlamaShape
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.int8_linear import QMAX, Int8Linear
from mlperf_llama2.quant.open_backend import int8_capable
from mlperf_llama2.quant.yaml_config import QuantRules, Rule, load_rules

log = logging.getLogger(__name__)

ENGINE_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


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


def hf_names(shape: LlamaShape, layer: int, engine_name: str) -> tuple[str, ...]:
    """The transformers module names an engine Linear stands for, in fused order."""
    attn, mlp = f"model.layers.{layer}.self_attn.", f"model.layers.{layer}.mlp."
    return {"qkv_proj": (attn + "q_proj", attn + "k_proj", attn + "v_proj"), "o_proj": (attn + "o_proj",),
            "gate_up_proj": (mlp + "gate_proj", mlp + "up_proj"), "down_proj": (mlp + "down_proj",)}[engine_name]


def split_sizes(shape: LlamaShape, engine_name: str) -> tuple[int, ...]:
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return {"qkv_proj": (q, kv, kv), "o_proj": (shape.hidden_size,),
            "gate_up_proj": (shape.intermediate_size, shape.intermediate_size),
            "down_proj": (shape.hidden_size,), "lm_head": (shape.vocab_size,)}[engine_name]


def int8_plan(shape: LlamaShape, rules: QuantRules) -> dict[str, Optional[bool]]:
    """Engine Linear name ("layers.3.qkv_proj", "lm_head") -> per_channel, or None to keep it in float."""
    plan: dict[str, Optional[bool]] = {}
    targets = [(f"layers.{i}.{n}", hf_names(shape, i, n)) for i in range(shape.num_layers) for n in ENGINE_LINEARS]
    for name, parts in targets + [("lm_head", ("lm_head",))]:
        found = [rules.match("Linear", part) for part in parts]
        capable = [r is not None and int8_capable(r) for r in found]
        if not any(capable):
            plan[name] = None
            continue
        per_channel = {r.quantizer("weights_quantizer").dims in ((-1,), (1,)) for r in found if r is not None}
        if not all(capable) or len(per_channel) != 1:
            raise UserError(f"{rules.path}: the engine fuses {', '.join(parts)} into one Linear; give them the "
                            "same W8A8 rule (or use --backend reference)")
        plan[name] = per_channel.pop()
    return plan


def left_out(rules: QuantRules, plan: dict[str, Optional[bool]]) -> list[str]:
    """Each rule of the config that the engine's int8 mode does not compute, with what it does instead."""
    notes = [f"{_rule_label(r)}: not applied, the engine computes {r.source_kind} in float"
             for r in rules.rules if r.source_kind != "Linear"]
    kept = sorted(name for name, per_channel in plan.items() if per_channel is None)
    if kept:
        notes.append(f"{len(kept)} Linears kept in float (no int8-capable rule), e.g. {', '.join(kept[:3])}")
    return notes


def _rule_label(rule: Rule) -> str:
    specs = "; ".join(f"{role} {spec.describe()}" for role, spec in rule.quantizers)
    return f"{rule.label} [{specs}]"


def log_plan(rules: QuantRules, plan: dict[str, Optional[bool]]) -> None:
    count = sum(p is not None for p in plan.values())
    log.info("int8 mode (%s): %d of %d Linears int8 W8A8 (weights per %s)", rules.path, count, len(plan),
             "channel" if any(plan.values()) else "tensor")
    for note in left_out(rules, plan):
        log.warning("int8 mode leaves out %s", note)


@torch.no_grad()
def quantize_linears(model: LlamaForCausalLM, rules: QuantRules) -> dict[str, Optional[bool]]:
    """Replace the float Linears of a loaded model by Int8Linears, in place, as `rules` say; returns the plan."""
    s = model.shape
    plan = int8_plan(s, rules)
    log_plan(rules, plan)
    for name, per_channel in plan.items():
        if per_channel is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear: nn.Linear = getattr(parent, attr)
        sizes = split_sizes(s, attr)
        weights = list(torch.split(linear.weight, sizes, dim=0))  # [N_i, K] each
        biases = None if linear.bias is None else list(torch.split(linear.bias, sizes, dim=0))
        setattr(parent, attr, Int8Linear.fuse(weights, biases, per_channel=per_channel, out_dtype=linear.weight.dtype))
        del linear, weights, biases
    return plan


@torch.no_grad()
def random_int8_model(hf_config, device: torch.device, dtype: torch.dtype, max_positions: int, rules: QuantRules,
                      init_std: float = 0.02, seed: int = 0) -> LlamaForCausalLM:
    """Random weights of std `init_std`, the int8 Linears made in int8 on `device` (never in float)."""
    from mlperf_llama2.engine.weights import empty_model

    shape = LlamaShape.from_hf_config(hf_config)
    plan = int8_plan(shape, rules)
    log_plan(rules, plan)

    def swap(model: LlamaForCausalLM) -> None:  # on the meta device: nothing is allocated yet
        for name, per_channel in plan.items():
            if per_channel is None:
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, attr)
            n, k = linear.weight.shape
            has_bias = linear.bias is not None
            setattr(parent, attr, Int8Linear(torch.empty(n, k, dtype=torch.int8), torch.empty(n),
                                             torch.empty(n, dtype=dtype) if has_bias else None, dtype,
                                             split_sizes(shape, attr)))

    model = empty_model(hf_config, device, dtype, max_positions, before_allocation=swap)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.qweight.random_(-QMAX, QMAX + 1, generator=gen)  # uniform: std QMAX / sqrt(3)
            module.weight_scale.fill_(init_std * 3 ** 0.5 / QMAX)
            if module.bias is not None:
                module.bias.zero_()
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.data.normal_(0.0, init_std, generator=gen)
        elif name.endswith("bias"):
            p.data.zero_()
    return model


@torch.inference_mode()
def warm_up_gemms(model: nn.Module, max_rows: int, dtype: torch.dtype) -> int:
    """Call each distinct Int8Linear shape at every power-of-two M up to `max_rows`; returns the calls made.

    The Triton GEMM is autotuned per (M bucket, N, K): doing it here keeps tuning (host syncs, seconds)
    out of CUDA graph capture and out of timed runs. M - 1 rows as well from 32 on: Triton compiles
    separately for M divisible by 16 or not, and mixed steps have any M."""
    seen: dict[tuple[int, int], Int8Linear] = {}
    for module in model.modules():
        if isinstance(module, Int8Linear):
            seen.setdefault((module.in_features, module.out_features), module)
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
