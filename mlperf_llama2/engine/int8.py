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

`empty_int8_model` allocates the Int8Linears in int8 only; `quantizing_stream` fills them from a
checkpoint one projection at a time (a 70B checkpoint loads on one 141 GB GPU: no float copy of the
quantized Linears is ever held); `random_int8_model` fills them at random (benchmarks); `warm_up_gemms` runs each
distinct GEMM shape at every M bucket so the Triton autotuner never tunes mid-run or mid-capture.
"""

from __future__ import annotations

import functools
import logging
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from mlperf_llama2.engine.llama import LlamaForCausalLM, LlamaShape
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.int8_linear import QMAX, Int8Linear, quantize_weight
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


def hf_names(layer: int, engine_name: str) -> tuple[str, ...]:
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
    targets = [(f"layers.{i}.{n}", hf_names(i, n)) for i in range(shape.num_layers) for n in ENGINE_LINEARS]
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


def empty_int8_model(hf_config, device: torch.device, dtype: torch.dtype, max_positions: int,
                     rules: QuantRules) -> tuple[LlamaForCausalLM, dict[str, Optional[bool]]]:
    """The model with uninitialised Int8Linears where `rules` say (allocated in int8 only); returns (model, plan)."""
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
            bias = torch.empty(n, dtype=dtype) if linear.bias is not None else None
            setattr(parent, attr, Int8Linear(torch.empty(n, k, dtype=torch.int8), torch.empty(n), bias, dtype,
                                             split_sizes(shape, attr)))

    return empty_model(hf_config, device, dtype, max_positions, before_allocation=swap), plan


_PROJECTIONS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                "o_proj": ("o_proj", 0), "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
                "down_proj": ("down_proj", 0)}


def quantizing_stream(model: LlamaForCausalLM, plan: dict[str, Optional[bool]],
                      weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Quantize each projection of a transformers state dict into its Int8Linear as it arrives; yield the rest.

    Each projection gets its own scale from its own weight (`quantize_weight`), so quantizing one
    tensor at a time gives exactly the quant package's numbers while no float copy of a quantized
    Linear is ever held. Raises when the stream ends without some projection."""
    pending = {(name, i, "weight") for name, pc in plan.items() if pc is not None
               for i in range(len(model.get_submodule(name).split_sizes))}
    pending |= {(name, i, "bias") for name, i, _ in pending if model.get_submodule(name).bias is not None}
    with torch.no_grad():
        for name, tensor in weights:
            parts = name.removeprefix("model.").split(".")
            if parts[0] == "lm_head":
                target, index = "lm_head", 0
            elif len(parts) == 5 and parts[0] == "layers" and parts[3] in _PROJECTIONS:
                dest, index = _PROJECTIONS[parts[3]]
                target = f"layers.{parts[1]}.{dest}"
            else:
                yield name, tensor
                continue
            if plan.get(target) is None:
                yield name, tensor
                continue
            module: Int8Linear = model.get_submodule(target)
            offset = sum(module.split_sizes[:index])
            rows = slice(offset, offset + module.split_sizes[index])
            if parts[-1] == "weight":
                q, scale = quantize_weight(tensor.to(module.qweight.device), plan[target])  # [N_i, K], [N_i]
                module.qweight[rows].copy_(q)
                module.weight_scale[rows].copy_(scale)
            elif parts[-1] == "bias" and module.bias is not None:
                module.bias[rows].copy_(tensor)
            else:
                raise ValueError(f"unexpected weight in checkpoint: {name}")
            pending.discard((target, index, parts[-1]))
    if "lm_head" in plan and plan["lm_head"] is not None and model.shape.tie_word_embeddings:
        pending = {p for p in pending if p[0] != "lm_head"}  # quantized from the embedding by `tie_int8_lm_head`
    if pending:
        raise ValueError(f"checkpoint lacks {len(pending)} weights, e.g. {sorted(pending)[:3]}")


@torch.no_grad()
def tie_int8_lm_head(model: LlamaForCausalLM, plan: dict[str, Optional[bool]]) -> None:
    """A tied lm_head in int8: the quantized embedding matrix (the embedding itself stays in float)."""
    if plan.get("lm_head") is not None and model.shape.tie_word_embeddings:
        q, scale = quantize_weight(model.embed_tokens.weight, plan["lm_head"])
        model.lm_head.qweight.copy_(q)
        model.lm_head.weight_scale.copy_(scale)


@torch.no_grad()
def random_int8_model(hf_config, device: torch.device, dtype: torch.dtype, max_positions: int, rules: QuantRules,
                      init_std: float = 0.02, seed: int = 0) -> LlamaForCausalLM:
    """Random weights of std `init_std`, the int8 Linears made in int8 on `device` (never in float)."""
    model, _ = empty_int8_model(hf_config, device, dtype, max_positions, rules)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.qweight.random_(-QMAX, QMAX + 1, generator=gen)  # uniform: std QMAX / sqrt(3)
            module.weight_scale.fill_(init_std * 3 ** 0.5 / QMAX)
            if module.bias is not None:
                module.bias.zero_()
    from mlperf_llama2.engine.weights import fill_random_

    fill_random_(model, init_std, gen)
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
