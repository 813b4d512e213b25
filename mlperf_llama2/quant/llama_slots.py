"""Give a loaded transformers `LlamaForCausalLM` the named quantization slots of the fork's model.

`install_slots(model)` keeps every weight and module of the loaded model and adds, per layer, the
op modules a LiteML config names: attention `matmul_qkt`, `matmul_pv`, `add_mask`,
`rotary_mul_{q,k}_{cos,sin}`, `rotary_add_q`, `rotary_add_k`; MLP `mul` with the SiLU as an
`nn.SiLU` module (`act_fn`); decoder residual adds `add_1`, `add_2`. It rebinds the attention, MLP
and decoder-layer forwards to route through those slots (eager attention); transformers 4.46 (the
LiteML wheel's) and 5.x are both handled. With plain slots the
model computes what transformers' eager Llama computes, so `model.generate` works unchanged; the
quantization backends then swap slots for quantized ones by name. `slot_names(num_layers)` lists
those names without a model, for checking a config before the weights load.
"""

from __future__ import annotations

import logging
import types
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.errors import UserError

logger = logging.getLogger(__name__)

ATTENTION_SLOTS = ("matmul_qkt", "matmul_pv", "add_mask", "rotary_mul_q_cos", "rotary_mul_q_sin",
                   "rotary_mul_k_cos", "rotary_mul_k_sin", "rotary_add_q", "rotary_add_k")


class MatmulSlot(nn.Module):
    """a @ b (LiteML's LiteMLMatmul slot)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class AddSlot(nn.Module):
    """a + b (LiteML's LiteMLAdd slot)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MulSlot(nn.Module):
    """a * b (LiteML's LiteMLMul slot)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


DEFAULT_SLOT_CLASSES = {"Matmul": MatmulSlot, "Add": AddSlot, "Mul": MulSlot}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _pop_cache(kwargs: dict):
    """The KV cache under its name in each transformers: `cache` (>= 5.2x), `past_key_values` (5.x),
    `past_key_value` (4.x)."""
    found = [kwargs.pop(name, None) for name in ("cache", "past_key_values", "past_key_value")]
    return next((c for c in found if c is not None), None)


def _layers_return_tuples() -> bool:
    """transformers 4.x decoder layers return (hidden, [attn weights], [cache]); 5.x return the tensor."""
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    # x: [B, Hkv, T, D] -> [B, Hkv * groups, T, D]
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def attention_forward(self, hidden_states: torch.Tensor, position_embeddings=None,
                      attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """LlamaAttention.forward through the slots; eager softmax attention, as transformers' eager."""
    cache = _pop_cache(kwargs)
    input_shape = hidden_states.shape[:-1]  # [B, S]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, H, S, D]
    k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, Hkv, S, D]
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, Hkv, S, D]
    cos, sin = position_embeddings  # [B, S, D] each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = self.rotary_add_q(self.rotary_mul_q_cos(q, cos), self.rotary_mul_q_sin(_rotate_half(q), sin))
    k = self.rotary_add_k(self.rotary_mul_k_cos(k, cos), self.rotary_mul_k_sin(_rotate_half(k), sin))
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, T, D]
    k = _repeat_kv(k, self.num_key_value_groups)
    v = _repeat_kv(v, self.num_key_value_groups)
    scores = self.matmul_qkt(q, k.transpose(2, 3)) * getattr(self, "scaling", self.head_dim**-0.5)  # [B, H, S, T]
    if attention_mask is not None:
        scores = self.add_mask(scores, attention_mask[..., : k.shape[-2]])
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = self.matmul_pv(probs, v)  # [B, H, S, D]
    out = out.transpose(1, 2).reshape(*input_shape, -1).contiguous()  # [B, S, H*D]
    return self.o_proj(out), probs


def mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.mul(self.act_fn(self.gate_proj(x)), self.up_proj(x)))


def decoder_forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                    position_embeddings=None, **kwargs) -> torch.Tensor:
    cache = _pop_cache(kwargs)
    use_cache = kwargs.pop("use_cache", False)
    output_attentions = kwargs.pop("output_attentions", False)
    residual = hidden_states
    attn_out, probs = self.self_attn(self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
                                     attention_mask=attention_mask, cache=cache, **kwargs)
    hidden_states = self.add_1(residual, attn_out)
    residual = hidden_states
    hidden_states = self.add_2(residual, self.mlp(self.post_attention_layernorm(hidden_states)))
    if not self._slots_return_tuple:
        return hidden_states
    return (hidden_states,) + ((probs,) if output_attentions else ()) + ((cache,) if use_cache else ())


LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def slot_names(num_layers: int) -> list[tuple[str, str]]:
    """(source kind, qualified name) of every module a rule can name in a slotted LlamaForCausalLM.

    Computed from the layer count alone, so a config can be checked before any weights load; it
    lists what `install_slots` leaves in a transformers Llama (tests compare the two)."""
    names: list[tuple[str, str]] = []
    for i in range(num_layers):
        layer = f"model.layers.{i}."
        names += [("Linear", layer + n) for n in LINEAR_NAMES]
        names += [("Matmul" if n.startswith("matmul") else "Mul" if "_mul_" in n else "Add", f"{layer}self_attn.{n}")
                  for n in ATTENTION_SLOTS]
        names += [("Mul", layer + "mlp.mul"), ("SiLU", layer + "mlp.act_fn"), ("Add", layer + "add_1"),
                  ("Add", layer + "add_2"), ("RMSNorm", layer + "input_layernorm"),
                  ("RMSNorm", layer + "post_attention_layernorm")]
    return names + [("RMSNorm", "model.norm"), ("Linear", "lm_head")]


def input_rank(kind: str, qualified_name: str, role: str) -> int:
    """Rank of the tensor a quantizer `role` of that module sees: weights [N, K] / [H], activations
    [B, S, H], attention tensors (scores, Q, K, V, the mask, RoPE halves) [B, heads, S, D or T]."""
    if role == "weights_quantizer":
        return 1 if kind == "RMSNorm" else 2
    if kind == "Matmul" or (kind in ("Mul", "Add") and ".self_attn." in qualified_name):
        return 4
    return 3


def sequence_axes(kind: str, qualified_name: str, role: str) -> tuple[int, ...]:
    """Axes of the tensor a quantizer `role` of that module sees whose size is a sequence length (positions,
    queries or keys): [B, S, H] -> (1,); Q, V, RoPE halves, P.V's output [B, H, S, D] -> (2,); K^T [B, H, D, Lk]
    -> (3,); scores, mask, P [B, H, Lq, Lk] -> (2, 3); weights -> (). A static scale must reduce them."""
    if role == "weights_quantizer":
        return ()
    if input_rank(kind, qualified_name, role) == 3:
        return (1,)
    slot = qualified_name.rsplit(".", 1)[-1]
    if slot == "add_mask" or (slot == "matmul_qkt" and role == "quantizer_out") or \
            (slot == "matmul_pv" and role == "quantizer_in1"):
        return (2, 3)
    if slot == "matmul_qkt" and role == "quantizer_in2":
        return (3,)
    return (2,)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        raise UserError("quantization needs a Llama causal LM (model.model.layers, lm_head); "
                        f"got {type(model).__name__}")
    return layers


def install_slots(model: nn.Module, slot_classes: Optional[dict] = None) -> nn.Module:
    """Add the named slots to every layer and route the forwards through them (in place; returns model)."""
    classes = dict(DEFAULT_SLOT_CLASSES, **(slot_classes or {}))
    layers = decoder_layers(model)
    hidden_act = getattr(model.config, "hidden_act", "silu")
    if hidden_act != "silu":
        raise UserError(f"quantization slots expect a SiLU MLP (Llama); this model uses {hidden_act!r}")
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # the slots compute eager attention; masks must be additive
    else:
        model.config._attn_implementation = "eager"
    return_tuple = _layers_return_tuples()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ATTENTION_SLOTS:
            kind = "Matmul" if name.startswith("matmul") else "Mul" if "_mul_" in name else "Add"
            setattr(attn, name, classes[kind]())
        attn.forward = types.MethodType(attention_forward, attn)
        mlp.mul = classes["Mul"]()
        mlp.act_fn = nn.SiLU()
        mlp.forward = types.MethodType(mlp_forward, mlp)
        layer.add_1 = classes["Add"]()
        layer.add_2 = classes["Add"]()
        layer._slots_return_tuple = return_tuple
        layer.forward = types.MethodType(decoder_forward, layer)
    logger.info("quantization slots installed in %d decoder layers (eager attention)", len(layers))
    return model
