"""A Llama decoder for the engine: fused QKV and gate/up Linears, RoPE as the checkpoint's config says.

Numerically it follows transformers' LlamaForCausalLM step by step (RMSNorm in fp32 then cast,
rotate-half RoPE with cos/sin cast to the model dtype, SiLU-gated MLP) so greedy tokens match
`generate`. Token rows are flattened across sequences ([T, hidden]); attention goes through the
paged KV cache (`attention.py`). The Linears are plain `nn.Linear`s here; the loader (`loader.py`)
swaps them for int8 or FP8 ones and fills every weight from a checkpoint. When `qkv_proj`, `gate_up_proj`
or `down_proj` is 8-bit (and not row-parallel), the op before it quantizes its output per token for it
(`ops.add_rms_norm_quant`, `ops.silu_mul_quant`): the same numbers, without a 16-bit round trip.
`o_proj` quantizes its own input (its per-token scale spans all heads). `model.fused_quant = False` turns
the quantizing producers off (for A/B timing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.engine.attention import AttentionMetadata, attention
from mlperf_llama2.engine.ops import EagerOps, rms_norm
from mlperf_llama2.quant.activation import QuantizedActivation, prequantized_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf_config(cls, cfg) -> "LlamaShape":
        heads = cfg.num_attention_heads
        return cls(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers, num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(cfg, "attention_bias", False)),
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        )


def rope_cos_sin(hf_config, max_positions: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_positions, head_dim] in `dtype`, from transformers' own RoPE initialisation.

    Using transformers' `LlamaRotaryEmbedding` for inv_freq and attention scaling makes every
    static scaling type (linear, llama3, yarn, ...) match the checkpoint's config exactly.
    """
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config=hf_config)
    if rotary.rope_type == "dynamic":
        raise ValueError("rope_scaling type 'dynamic' changes with sequence length; the engine does not support it")
    inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)  # [D/2]
    positions = torch.arange(max_positions, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # [P, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [P, D]
    return (emb.cos() * rotary.attention_scaling).to(dtype), (emb.sin() * rotary.attention_scaling).to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.s = s
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.qkv_proj = nn.Linear(s.hidden_size, (s.num_heads + 2 * s.num_kv_heads) * s.head_dim, bias=s.attention_bias)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=s.attention_bias)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.gate_up_proj = nn.Linear(s.hidden_size, 2 * s.intermediate_size, bias=s.mlp_bias)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=s.mlp_bias)
        self.scale = s.head_dim ** -0.5

    def forward(self, h: torch.Tensor, delta: Optional[torch.Tensor], positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                ops=EagerOps, kv_scales: Optional[torch.Tensor] = None,
                fused_quant: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """h: the residual stream [T, hidden], still without `delta` (the previous layer's MLP output, or
        None). Returns this layer's (residual stream, MLP output): the add is fused into the next norm.
        kv_scales: [2, KV] float32, this layer's K and V scales when the cache is 8-bit (kv_cache.py).
        fused_quant: 8-bit Linears get their input quantized by the op that produces it."""
        s = self.s
        t = h.shape[0]
        h, x = self._add_norm(ops, h, delta, self.input_layernorm, self.qkv_proj, fused_quant)
        q, k, v = ops.rope_store(self.qkv_proj(x), positions, cos, sin, k_cache, v_cache, meta.slot_mapping,
                                 s.num_heads, s.num_kv_heads, s.head_dim,
                                 kv_scales=kv_scales)  # q [T, H, D]; k, v [T, KV, D]
        o = attention(q, k, v, k_cache, v_cache, meta, self.scale, kv_scales)  # [T, H, D]
        h, x = self._add_norm(ops, h, self.o_proj(o.reshape(t, s.num_heads * s.head_dim)),
                              self.post_attention_layernorm, self.gate_up_proj, fused_quant)
        gate_up = self.gate_up_proj(x)  # [T, 2 I]
        kind = prequantized_kind(self.down_proj) if fused_quant else None
        act = QuantizedActivation(*ops.silu_mul_quant(gate_up, kind)) if kind else ops.silu_mul(gate_up)
        return h, self.down_proj(act)

    @staticmethod
    def _add_norm(ops, h: torch.Tensor, delta: Optional[torch.Tensor], norm: RMSNorm, consumer: nn.Module,
                  fused_quant: bool):
        """(h + delta, RMSNorm(h + delta)), the latter quantized per token when `consumer` takes it so."""
        kind = prequantized_kind(consumer) if fused_quant else None
        if kind is None:
            return ops.add_rms_norm(h, delta, norm.weight, norm.eps)
        h, q, scale = ops.add_rms_norm_quant(h, delta, norm.weight, norm.eps, kind)
        return h, QuantizedActivation(q, scale)


class LlamaForCausalLM(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.shape = s
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.ops = EagerOps  # the runner sets ops_for(device)
        self.fused_quant = True  # 8-bit inputs written by their producers (False: each Linear quantizes; A/B)
        self.whole_config = None  # a whole_config.WholeConfig: every rule of a LiteML config (int8 mode)

    def set_rope(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.rope_cos, self.rope_sin = cos, sin

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, kv_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids, positions: [T]; kv_cache: [2, L, S, KV, D]; kv_scales: [L, 2, KV] float32 for an 8-bit
        cache, else None. Returns final hidden states [T, hidden]."""
        if self.whole_config is not None:
            return self.whole_config(self, input_ids, positions, kv_cache, meta, kv_scales)
        h = self.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.ops.rope_tables(positions, self.rope_cos, self.rope_sin)
        delta = None
        for i, layer in enumerate(self.layers):
            h, delta = layer(h, delta, positions, cos, sin, kv_cache[0, i], kv_cache[1, i], meta, self.ops,
                             None if kv_scales is None else kv_scales[i], self.fused_quant)
        return h + delta

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in the model dtype (what transformers' generate argmaxes)."""
        if self.whole_config is not None:
            return self.whole_config.logits(self, hidden)
        return self.lm_head(self.norm(hidden))
