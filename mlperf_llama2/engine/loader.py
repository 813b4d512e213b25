"""Building the engine's model: one pipeline of passes for every weight format and tensor-parallel layout.

  1. shape     `LlamaShape` of the checkpoint's config, then this rank's shard of it (`shard_shape`)
  2. meta      the model on the meta device; each Linear swapped for the kind its format plan names
               (float `nn.Linear`, `Int8Linear`, `Fp8Linear`); nothing is allocated yet
  3. allocate  on the device: RMSNorm weights one, RoPE tables set
  4. stream    checkpoint tensors (or random ones under the same names) once; each destination takes its
               part (fused q/k/v and gate/up; this rank's rows or columns) and quantizes it. A weight
               scale is computed on the whole unsharded projection, so every rank holds exactly its
               slice of the single-GPU model
  5. finish    a tied lm_head, nothing missing, row-parallel Linears wrapped (all-reduce of the output and,
               for quantized ones, of each token's absmax, so TP=N computes what TP=1 computes)

The checkpoint-name mapping (`PROJECTIONS`) is defined here once. A checkpoint is checked by
`mlperf_llama2.checkpoint` (headers only) before any tensor is read; the passes raise `UserError` lines of
their own for what reaches them anyway (a tensor stream that is not a checkpoint on disk).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from mlperf_llama2.engine.llama import LlamaForCausalLM, LlamaShape, RMSNorm, rope_cos_sin
from mlperf_llama2.errors import UserError
from mlperf_llama2.parallel.tensor_parallel import RowParallel, shard_shape

log = logging.getLogger(__name__)

# checkpoint projection (under model.layers.i.) -> (engine Linear, part index within the fused Linear)
PROJECTIONS = {
    "self_attn.q_proj": ("qkv_proj", 0), "self_attn.k_proj": ("qkv_proj", 1), "self_attn.v_proj": ("qkv_proj", 2),
    "self_attn.o_proj": ("o_proj", 0),
    "mlp.gate_proj": ("gate_up_proj", 0), "mlp.up_proj": ("gate_up_proj", 1), "mlp.down_proj": ("down_proj", 0),
}
ENGINE_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
COLUMN_PARALLEL = ("qkv_proj", "gate_up_proj")  # output rows split over ranks
ROW_PARALLEL = ("o_proj", "down_proj")  # input columns split, outputs all-reduced

# RoPE types whose cos/sin tables do not depend on the sequence length (`rope_cos_sin` builds them once, with
# transformers' own initialisation); "dynamic" and "longrope" change with it in transformers
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

FORMATS = ("float", "int8", "int8_channel", "fp8")  # int8 = one weight scale per projection (tensor)


def hf_names(layer: int, engine_name: str) -> tuple[str, ...]:
    """The checkpoint module names an engine Linear stands for, in fused order."""
    parts = sorted((index, proj) for proj, (dest, index) in PROJECTIONS.items() if dest == engine_name)
    return tuple(f"model.layers.{layer}.{proj}" for _, proj in parts)


def split_sizes(shape: LlamaShape, engine_name: str) -> tuple[int, ...]:
    """Output rows of each part of an engine Linear (for the shape given: full or one rank's)."""
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return {"qkv_proj": (q, kv, kv), "o_proj": (shape.hidden_size,),
            "gate_up_proj": (shape.intermediate_size, shape.intermediate_size),
            "down_proj": (shape.hidden_size,), "lm_head": (shape.vocab_size,)}[engine_name]


def linear_names(shape: LlamaShape) -> list[str]:
    return [f"layers.{i}.{n}" for i in range(shape.num_layers) for n in ENGINE_LINEARS] + ["lm_head"]


@dataclass(frozen=True)
class Parallel:
    """This process's place in a tensor-parallel group (rank 0 of 1: no parallelism)."""

    rank: int = 0
    world: int = 1
    group: object = None  # torch.distributed group of the all-reduces (None: the default group)


# ---- pass 2: the model on the meta device, Linears swapped -------------------------------------------------


def _quantized_linear(fmt: str, n: int, k: int, bias: bool, dtype: torch.dtype, splits: tuple[int, ...]):
    bias_t = torch.empty(n, dtype=dtype) if bias else None
    if fmt == "fp8":
        from mlperf_llama2.quant.fp8 import FP8_DTYPE, Fp8Linear

        return Fp8Linear(torch.empty(n, k, dtype=FP8_DTYPE), torch.empty(n), bias_t, dtype, splits)
    from mlperf_llama2.quant.int8_linear import Int8Linear

    return Int8Linear(torch.empty(n, k, dtype=torch.int8), torch.empty(n), bias_t, dtype, splits)


def empty_model(hf_config, plan: dict[str, str], device: torch.device, dtype: torch.dtype, max_positions: int,
                parallel: Parallel = Parallel()) -> LlamaForCausalLM:
    """This rank's model with uninitialised weights in the formats `plan` names (missing names: float)."""
    local = shard_shape(LlamaShape.from_hf_config(hf_config), parallel.world)
    with torch.device("meta"):
        model = LlamaForCausalLM(local).to(dtype)
        for name, fmt in plan.items():
            if fmt not in FORMATS:
                raise ValueError(f"unknown weight format {fmt!r} for {name} (known: {', '.join(FORMATS)})")
            if fmt == "float":
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, attr)
            n, k = linear.weight.shape
            setattr(parent, attr, _quantized_linear(fmt, n, k, linear.bias is not None, dtype,
                                                    split_sizes(local, attr)))
    model = model.to_empty(device=device)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)
    model.set_rope(*rope_cos_sin(hf_config, max(max_positions, 1), dtype, device))
    return model.eval().requires_grad_(False)


# ---- pass 4: each destination places its part -------------------------------------------------------------


@dataclass(frozen=True)
class _Destination:
    module: str  # engine module name ("layers.3.qkv_proj", "lm_head", "embed_tokens", "layers.3.input_layernorm")
    part: int  # index within a fused Linear (0 otherwise)
    kind: str  # "weight" | "bias"


def destination(name: str) -> Optional[_Destination]:
    """Where a checkpoint tensor goes in the engine's model; None for benign extras (RoPE inv_freq)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    parts = name.removeprefix("model.").split(".")
    kind = parts[-1]
    if len(parts) == 5 and parts[0] == "layers":
        proj = f"{parts[2]}.{parts[3]}"
        if proj in PROJECTIONS:
            dest, index = PROJECTIONS[proj]
            return _Destination(f"layers.{parts[1]}.{dest}", index, kind)
    if len(parts) == 4 and parts[0] == "layers" and parts[2].endswith("layernorm"):
        return _Destination(f"layers.{parts[1]}.{parts[2]}", 0, kind)
    if len(parts) == 2 and parts[0] in ("embed_tokens", "norm", "lm_head"):
        return _Destination(parts[0], 0, kind)
    return _Destination(".".join(parts[:-1]), -1, kind)  # unknown: reported as unexpected


def expected_destinations(model: LlamaForCausalLM) -> set[_Destination]:
    s = model.shape
    out = {_Destination("embed_tokens", 0, "weight"), _Destination("norm", 0, "weight")}
    if not s.tie_word_embeddings:
        out.add(_Destination("lm_head", 0, "weight"))
    for i in range(s.num_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out.add(_Destination(f"layers.{i}.{norm}", 0, "weight"))
        for dest, index in PROJECTIONS.values():
            out.add(_Destination(f"layers.{i}.{dest}", index, "weight"))
            has_bias = s.attention_bias if dest in ("qkv_proj", "o_proj") else s.mlp_bias
            if has_bias:
                out.add(_Destination(f"layers.{i}.{dest}", index, "bias"))
    return out


def _local_slice(engine_name: str, kind: str, tensor: torch.Tensor, full: LlamaShape, part: int,
                 parallel: Parallel) -> torch.Tensor:
    """This rank's slice of one part's tensor (weight [n_part, K] or bias [n_part])."""
    if parallel.world == 1:
        return tensor
    leaf = engine_name.rpartition(".")[2]
    r, w = parallel.rank, parallel.world
    if leaf in COLUMN_PARALLEL:
        n = split_sizes(full, leaf)[part] // w
        return tensor[r * n:(r + 1) * n]
    if leaf in ROW_PARALLEL:
        if kind == "bias":
            return tensor if r == 0 else torch.zeros_like(tensor)  # added once, after the all-reduce
        k = tensor.shape[1] // w
        return tensor[:, r * k:(r + 1) * k]
    return tensor  # replicated: embedding, norms, lm_head


def _quantize_weight(fmt: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantized [N, K], float32 scale [N]) of a whole unsharded projection."""
    if fmt == "fp8":
        from mlperf_llama2.quant.fp8 import quantize_weight_fp8

        return quantize_weight_fp8(weight)
    from mlperf_llama2.quant.int8_linear import quantize_weight

    return quantize_weight(weight, per_channel=fmt == "int8_channel")


@torch.no_grad()
def load_weights(model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor]], plan: dict[str, str],
                 full: LlamaShape, parallel: Parallel = Parallel(), source: str = "checkpoint") -> None:
    """Stream (name, tensor) of a transformers Llama state dict into `model`, each part to its destination.

    Raises UserError naming the first unexpected, misshapen or missing tensor."""
    local = model.shape
    expected = expected_destinations(model)
    pending = set(expected)
    for name, tensor in weights:
        dest = destination(name)
        if dest is None or (local.tie_word_embeddings and dest == _Destination("lm_head", 0, "weight")):
            continue  # RoPE's inv_freq; a tied lm_head saved beside its embedding
        if dest not in expected:
            raise UserError(f"{source}: unexpected tensor {name} (not part of a Llama model of this config)")
        module = model.get_submodule(dest.module)
        fmt = plan.get(dest.module, "float")
        leaf = dest.module.rpartition(".")[2]
        if leaf in ENGINE_LINEARS or dest.module == "lm_head":
            full_rows = split_sizes(full, leaf)[dest.part]
            local_rows = split_sizes(local, leaf)
            offset = sum(local_rows[:dest.part])
            rows = slice(offset, offset + local_rows[dest.part])
            if dest.kind == "weight":
                in_features = {"down_proj": full.intermediate_size,
                               "o_proj": full.num_heads * full.head_dim}.get(leaf, full.hidden_size)
                _check_shape(name, tensor, (full_rows, in_features), source)
                tensor = tensor.to(module.weight.device if fmt == "float" else module.qweight.device)
                if fmt == "float":
                    module.weight[rows].copy_(_local_slice(dest.module, "weight", tensor, full, dest.part, parallel))
                else:
                    q, scale = _quantize_weight(fmt, tensor)  # scales of the whole projection
                    q = _local_slice(dest.module, "weight", q, full, dest.part, parallel)
                    if leaf in COLUMN_PARALLEL:  # one scale per output row: the rank's rows
                        scale = _local_slice(dest.module, "weight", scale, full, dest.part, parallel)
                    module.qweight[rows].copy_(q)
                    module.weight_scale[rows].copy_(scale)
            else:
                _check_shape(name, tensor, (full_rows,), source)
                module.bias[rows].copy_(_local_slice(dest.module, "bias", tensor.to(module.bias.device), full,
                                                     dest.part, parallel))
        else:
            param = getattr(module, dest.kind)
            _check_shape(name, tensor, tuple(param.shape), source)
            param.copy_(tensor)
        pending.discard(dest)
    if pending:
        missing = sorted(f"{d.module}.{d.kind}" + (f" (part {d.part})" if d.part else "") for d in pending)
        raise UserError(f"{source}: lacks {len(missing)} tensor(s) the model needs, e.g. {', '.join(missing[:3])}")
    if local.tie_word_embeddings:
        _tie_lm_head(model, plan.get("lm_head", "float"))


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], source: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise UserError(f"{source}: tensor {name} has shape {list(tensor.shape)}, the config needs {list(expected)}")


def _tie_lm_head(model: LlamaForCausalLM, fmt: str) -> None:
    if fmt == "float":
        model.lm_head.weight = model.embed_tokens.weight
        return
    q, scale = _quantize_weight(fmt, model.embed_tokens.weight)  # the embedding itself stays in float
    model.lm_head.qweight.copy_(q)
    model.lm_head.weight_scale.copy_(scale)


# ---- sources: a checkpoint, or random tensors under the same names -----------------------------------------


def checkpoint_tensors(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of a safetensors checkpoint, one at a time, on the CPU."""
    from safetensors import safe_open

    from mlperf_llama2.checkpoint import safetensors_files

    files = safetensors_files(model_path)  # what transformers loads: never a stale shard beside them
    if not files:
        raise UserError(f"{model_path}: no model.safetensors or model.safetensors.index.json; the engine loads "
                        "safetensors checkpoints only (convert the pytorch_model*.bin weights to safetensors)")
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def checkpoint_names(shape: LlamaShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a transformers Llama checkpoint of `shape` holds."""
    s = shape
    q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    yield "model.embed_tokens.weight", (s.vocab_size, s.hidden_size)
    for i in range(s.num_layers):
        p = f"model.layers.{i}."
        for name, out, inp, bias in (
                ("self_attn.q_proj", q, s.hidden_size, s.attention_bias),
                ("self_attn.k_proj", kv, s.hidden_size, s.attention_bias),
                ("self_attn.v_proj", kv, s.hidden_size, s.attention_bias),
                ("self_attn.o_proj", s.hidden_size, q, s.attention_bias),
                ("mlp.gate_proj", s.intermediate_size, s.hidden_size, s.mlp_bias),
                ("mlp.up_proj", s.intermediate_size, s.hidden_size, s.mlp_bias),
                ("mlp.down_proj", s.hidden_size, s.intermediate_size, s.mlp_bias)):
            yield p + name + ".weight", (out, inp)
            if bias:
                yield p + name + ".bias", (out,)
        yield p + "input_layernorm.weight", (s.hidden_size,)
        yield p + "post_attention_layernorm.weight", (s.hidden_size,)
    yield "model.norm.weight", (s.hidden_size,)
    if not s.tie_word_embeddings:
        yield "lm_head.weight", (s.vocab_size, s.hidden_size)


def random_tensors(shape: LlamaShape, device: torch.device, dtype: torch.dtype, init_std: float = 0.02,
                   seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """A random checkpoint, one tensor at a time on `device`: matrices N(0, init_std), norms one, biases zero.

    Every rank of a tensor-parallel group draws the same full tensors (same seed, same order)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, dims in checkpoint_names(shape):
        if len(dims) == 2:
            yield name, torch.empty(dims, device=device, dtype=dtype).normal_(0.0, init_std, generator=gen)
        elif name.endswith("bias"):
            yield name, torch.zeros(dims, device=device, dtype=dtype)
        else:
            yield name, torch.ones(dims, device=device, dtype=dtype)


# ---- the pipeline ------------------------------------------------------------------------------------------


def build_model(hf_config, plan: dict[str, str], device: torch.device, dtype: torch.dtype, max_positions: int,
                model_path: Optional[str] = None, parallel: Parallel = Parallel(), init_std: float = 0.02,
                seed: int = 0) -> LlamaForCausalLM:
    """The engine's model: from `model_path` (safetensors) or, without one, random weights — same passes."""
    full = LlamaShape.from_hf_config(hf_config)
    model = empty_model(hf_config, plan, device, dtype, max_positions, parallel)
    if model_path is not None:
        from mlperf_llama2.checkpoint import check_checkpoint

        check_checkpoint(model_path)  # config and weight headers agree: one line, before any tensor is read
        source, weights = model_path, checkpoint_tensors(model_path)
    else:
        source, weights = "random weights", random_tensors(full, device, dtype, init_std, seed)
    load_weights(model, weights, plan, full, parallel, source)
    if parallel.world > 1:
        for layer in model.layers:
            layer.o_proj = RowParallel(layer.o_proj, parallel.group)
            layer.down_proj = RowParallel(layer.down_proj, parallel.group)
    counts = {fmt: sum(1 for f in plan.values() if f == fmt) for fmt in FORMATS}
    counts["float"] = len(linear_names(full)) - sum(counts[f] for f in FORMATS if f != "float")
    log.info("built %s: %d layers, %s on %s, Linears %s%s", source, full.num_layers, dtype, device,
             ", ".join(f"{n} {f}" for f, n in counts.items() if n),
             f", rank {parallel.rank} of {parallel.world}" if parallel.world > 1 else "")
    return model


def read_config(model_path: str):
    """transformers' config of a local Llama checkpoint; anything else is one UserError line."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_path}: cannot read config.json ({exc})") from None
    if hf_config.model_type != "llama":
        raise UserError(f"{model_path}: model_type {hf_config.model_type!r}; the engine runs Llama checkpoints only")
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in STATIC_ROPE_TYPES:
        raise UserError(f"{model_path}/config.json: rope_scaling type {rope_type!r}; the engine's RoPE tables are "
                        f"fixed at load ({', '.join(STATIC_ROPE_TYPES)}), while transformers changes a "
                        f"{rope_type!r} RoPE with the sequence length; use --backend reference")
    from mlperf_llama2.backends.hf_loading import check_generation_config
    from mlperf_llama2.checkpoint import safetensors_files

    check_generation_config(model_path)  # EOS ids and decoding settings transformers' generate would apply
    if not safetensors_files(model_path):  # before any tensor is allocated
        raise UserError(f"{model_path}: no model.safetensors or model.safetensors.index.json; the engine loads "
                        "safetensors checkpoints only (convert the pytorch_model*.bin weights to safetensors)")
    return hf_config


def eos_id(hf_config, where: str) -> int:
    eos = hf_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is None:
        raise UserError(f"{where}: config.json has no eos_token_id; the engine needs one to stop")
    return int(eos)
