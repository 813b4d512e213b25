"""The whole LiteML config in the engine's int8 mode: every non-Linear rule, per sequence, as simulate computes it.

`attach(model, rules, numerics)` gives the engine's `LlamaForCausalLM` a `WholeConfig`: per decoder layer a
`LayerSlots` holding the destination modules of simulate (`quant/destinations.py`) for each slot a rule names,
built by the same classes from the same rules under simulate's qualified names (`model.layers.3.self_attn.
matmul_qkt`, ...). The model's forward then runs the decoder in simulate's order (`llama_slots.py`): quantized
RMSNorm, the W8A8 Linears (the plan's int8 Linears, unchanged), RoPE through `rotary_mul_*` / `rotary_add_*`,
Q·Kᵀ with its Q and K quantizers, the mask add, softmax, P·V with its P, V and output quantizers, the residual
adds `add_1` / `add_2`, SiLU and `mul`, and `model.norm` before lm_head. A slot no rule names computes in float.

Layout. The engine flattens a step's tokens ([T, ...]); each module sees a tensor of simulate's rank with a
batch of one (`[1, T, N]` for norms, adds and the MLP; `[1, heads, T, D]` for RoPE; per sequence `[1, H, Lq, D]`
/ `[1, H, Lq, Lk]` in attention: simulate's axes, so a rule's dims name the same ones), so a static observer's range
has simulate's shape (the calibration file is shared) and a per-token scale is per sequence and position. A scale
whose dims span the batch (axis 0, as the Q and P rules' `[0, -1, -3]`) is therefore per sequence here: simulate's
`--quant-per-sample-scale`.

K and V. An int8 KV cache with the config's own per-tensor scales stores what the K and V quantizers compute;
attention reads it dequantized and the quantizers then reproduce those values exactly (a fake-quantized value
re-quantized with its own scale is itself). With a 16-bit cache the K and V quantizers act on the fly.

Speed. This module is the eager path (any device; CPU tests compare it with simulate). The Triton kernels of the
fused path compute the same steps with the scales `kernel_scales` extracts (engine/whole_config_*_triton.py).
Calibration: `WholeConfig` holds `FakeQuantizer`s; `quant.fake_quant.set_calibrating` switches the static ones
to observing, and `calibrate` runs each calibration prompt alone as one prefill (docs/quantization.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from mlperf_llama2.engine import kv_cache
from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.engine.calibration_prefill import prefill_each
from mlperf_llama2.engine.ops import rms_norm, rotate_half
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.destinations import DESTINATION_CLASSES
from mlperf_llama2.quant.fake_quant import Numerics, set_calibrating, symmetric_scale
from mlperf_llama2.quant.llama_slots import ATTENTION_SLOTS, AddSlot, MatmulSlot, MulSlot
from mlperf_llama2.quant.yaml_config import QuantRules

log = logging.getLogger(__name__)

_PLAIN = {"Add": AddSlot, "Mul": MulSlot, "Matmul": MatmulSlot}


def _attention_kind(slot: str) -> str:
    return "Matmul" if slot.startswith("matmul") else "Mul" if "_mul_" in slot else "Add"


class _EngineNorm(nn.Module):
    """The engine's RMSNorm where no rule names the norm (transformers' LlamaRMSNorm numerics)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.norm.weight, self.norm.eps)


def _slot(rules: QuantRules, numerics: Numerics, kind: str, name: str, source: nn.Module) -> tuple[nn.Module, bool]:
    """(module for the slot, whether a rule quantizes it): the rule's destination around `source`, or the float op
    (an engine RMSNorm `source` computes as `_EngineNorm`)."""
    rule = rules.match(kind, name)
    if rule is None:
        return (_EngineNorm(source) if kind == "RMSNorm" else source), False
    return DESTINATION_CLASSES[rule.destination](source, rule, numerics, name), True


class LayerSlots(nn.Module):
    """One decoder layer's slots (simulate's names without the `model.layers.N.` prefix)."""

    def __init__(self, layer: nn.Module, index: int, rules: QuantRules, numerics: Numerics) -> None:
        super().__init__()
        prefix = f"model.layers.{index}."
        self.quantized: list[str] = []

        def make(kind, name, source):
            module, quantized = _slot(rules, numerics, kind, prefix + name, source)
            if quantized:
                self.quantized.append(prefix + name)
            return module

        self.input_layernorm = make("RMSNorm", "input_layernorm", layer.input_layernorm)
        self.post_attention_layernorm = make("RMSNorm", "post_attention_layernorm",
                                             layer.post_attention_layernorm)
        self.add_1 = make("Add", "add_1", AddSlot())
        self.add_2 = make("Add", "add_2", AddSlot())
        self.attn = nn.ModuleDict({slot: make(_attention_kind(slot), f"self_attn.{slot}",
                                              _PLAIN[_attention_kind(slot)]()) for slot in ATTENTION_SLOTS})
        self.act_fn = make("SiLU", "mlp.act_fn", nn.SiLU())
        self.mul = make("Mul", "mlp.mul", MulSlot())

    def forward(self, layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, kv_scales: Optional[torch.Tensor]) -> torch.Tensor:
        """h: residual stream [T, hidden] (the previous layer's add_2 done); cos, sin: [T, D]. Returns the next."""
        s = layer.s
        t = h.shape[0]
        x = self.input_layernorm(h[None])  # [1, T, hidden]
        q, k, v = layer.qkv_proj(x[0]).split(
            [s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim], dim=-1)
        q = self._rope(q.view(t, s.num_heads, s.head_dim), cos, sin, "q")  # [T, H, D]
        k = self._rope(k.view(t, s.num_kv_heads, s.head_dim), cos, sin, "k")  # [T, KV, D]
        v = v.view(t, s.num_kv_heads, s.head_dim)
        k, v = _store(k, v, k_cache, v_cache, meta.slot_mapping, kv_scales)
        o = self._attention(q, k, v, k_cache, v_cache, meta, layer.scale, kv_scales)  # [T, H, D]
        h = self.add_1(h[None], layer.o_proj(o.reshape(t, -1))[None])  # [1, T, hidden]
        x = self.post_attention_layernorm(h)
        gate, up = layer.gate_up_proj(x[0]).chunk(2, dim=-1)  # [T, I] each
        m = self.mul(self.act_fn(gate[None]), up[None])[0]
        return self.add_2(h, layer.down_proj(m)[None])[0]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, which: str) -> torch.Tensor:
        """x [T, heads, D] -> x*cos + rotate_half(x)*sin through the rotary slots (cos, sin [T, D]). The slots see
        simulate's layout, [1, heads, T, D] and [1, 1, T, D], so a quantizer's dims name the same axes as there."""
        a = self.attn
        x4 = x.transpose(0, 1)[None]  # [1, heads, T, D]
        c, sn = cos[None, None], sin[None, None]  # [1, 1, T, D]
        out = a[f"rotary_add_{which}"](a[f"rotary_mul_{which}_cos"](x4, c),
                                       a[f"rotary_mul_{which}_sin"](rotate_half(x4), sn))
        return out[0].transpose(0, 1)  # [T, heads, D]

    def _attention(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                   kv_scales: Optional[torch.Tensor]) -> torch.Tensor:
        """Each sequence alone: decode rows first (their context from the cache), then prefill chunks."""
        outs = []
        nd = meta.num_decodes
        if nd:
            k_all, v_all = _read(k_cache, meta.decode_context_slots, kv_scales, 0, q.dtype), \
                _read(v_cache, meta.decode_context_slots, kv_scales, 1, q.dtype)
            start = 0
            for i, n in enumerate(meta.decode_context_lens):
                outs.append(self._one(q[i:i + 1], k_all[start:start + n], v_all[start:start + n], scale))
                start += n
        if nd < q.shape[0]:
            if meta.context_slots is not None:  # a chunk with a cached prefix attends to its whole context
                k = _read(k_cache, meta.context_slots, kv_scales, 0, q.dtype)
                v = _read(v_cache, meta.context_slots, kv_scales, 1, q.dtype)
            else:
                k, v = k[nd:], v[nd:]
            qs, ks = nd, 0
            for q_len, k_len in zip(meta.prefill_q_lens, meta.prefill_k_lens):
                outs.append(self._one(q[qs:qs + q_len], k[ks:ks + k_len], v[ks:ks + k_len], scale))
                qs += q_len
                ks += k_len
        return torch.cat(outs)

    def _one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """One sequence as simulate's eager attention: q [Lq, H, D] (the last Lq of Lk positions); k, v [Lk, KV, D]."""
        a = self.attn
        groups = q.shape[1] // k.shape[1]
        q4 = q.transpose(0, 1)[None]  # [1, H, Lq, D]
        k4 = k.transpose(0, 1)[None].repeat_interleave(groups, dim=1)  # [1, H, Lk, D]
        v4 = v.transpose(0, 1)[None].repeat_interleave(groups, dim=1)
        scores = a["matmul_qkt"](q4, k4.transpose(2, 3)) * scale  # [1, H, Lq, Lk]
        lq, lk = q.shape[0], k.shape[0]
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        mask = torch.zeros(lq, lk, dtype=scores.dtype, device=q.device).masked_fill(
            ~allowed, torch.finfo(scores.dtype).min)[None, None]  # additive, as transformers' eager mask
        probs = torch.softmax(a["add_mask"](scores, mask), dim=-1, dtype=torch.float32).to(q.dtype)
        return a["matmul_pv"](probs, v4)[0].transpose(0, 1)  # [Lq, H, D]


def _store(k, v, k_cache, v_cache, slots, kv_scales):
    """Store k, v [T, KV, D] at their slots; return them as attention reads them back (dequantized if 8-bit)."""
    if kv_scales is None:
        k_cache.index_copy_(0, slots, k)
        v_cache.index_copy_(0, slots, v)
        return k, v
    k8, v8 = kv_cache.quantize(k, kv_scales[0], k_cache.dtype), kv_cache.quantize(v, kv_scales[1], v_cache.dtype)
    kv_cache.store(k_cache, slots, k8)
    kv_cache.store(v_cache, slots, v8)
    return kv_cache.dequantize(k8, kv_scales[0], k.dtype), kv_cache.dequantize(v8, kv_scales[1], v.dtype)


def _read(cache, slots, kv_scales, which: int, dtype):
    rows = kv_cache.gather(cache, slots)
    return rows if kv_scales is None else kv_cache.dequantize(rows, kv_scales[which], dtype)


class WholeConfig(nn.Module):
    """Every layer's slots plus `model.norm`; `forward` / `logits` replace the model's when attached."""

    def __init__(self, model: nn.Module, rules: QuantRules, numerics: Numerics) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LayerSlots(layer, i, rules, numerics) for i, layer in enumerate(model.layers))
        self.norm, quantized = _slot(rules, numerics, "RMSNorm", "model.norm", model.norm)
        self.quantized = [n for slots in self.layers for n in slots.quantized] + (["model.norm"] if quantized else [])
        self.fused = False  # the Triton path (`use_kernels`); False: this module's eager ops
        self.num_kv_heads = model.shape.num_kv_heads
        self.kernel_args: list = []  # LayerKernelArgs per layer, when fused

    def forward(self, model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache_: torch.Tensor,
                meta: AttentionMetadata, kv_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fused:  # calibration runs before the runner turns this on
            return forward_fused(self, model, input_ids, positions, kv_cache_, meta, kv_scales)
        h = model.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = model.rope_cos[positions], model.rope_sin[positions]  # [T, D]
        for i, (layer, slots) in enumerate(zip(model.layers, self.layers)):
            h = slots(layer, h, cos, sin, kv_cache_[0, i], kv_cache_[1, i], meta,
                      None if kv_scales is None else kv_scales[i])
        return h

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.lm_head(self.norm(hidden[None])[0])


def attach(model: nn.Module, rules: QuantRules, numerics: Numerics) -> WholeConfig:
    """Give `model` (weights loaded: the norms' weight quantizers freeze now) the config's slots."""
    wc = WholeConfig(model, rules, numerics).to(model.embed_tokens.weight.device)
    model.whole_config = wc
    log.info("int8 mode: %d slots quantized as the config says (norms, RoPE adds, Q/K/V/P, mask add, P.V "
             "output, SiLU, mul, residual adds); per-token scales per sequence (simulate's "
             "--quant-per-sample-scale)", len(wc.quantized))
    return wc


@torch.inference_mode()
def calibrate(model: nn.Module, prompts: Iterable[Sequence[int]]) -> int:
    """Each prompt alone, one prefill, static quantizers observing (one update per prompt); returns the count."""
    wc = model.whole_config
    count = set_calibrating(wc, True)
    try:
        n = prefill_each(model, prompts, lambda *args: wc(model, *args), "static quantizers")
    finally:
        set_calibrating(wc, False)
    log.info("calibrated %d static quantizers on %d prompts (engine, int8 mode)", count, n)
    return n


def config_kv_scales(wc: WholeConfig) -> Optional[torch.Tensor]:
    """[2, L, KV] float32 K and V scales when every layer's K and V quantizer (quantizer_in2 of Q·Kᵀ and P·V) is
    what an int8 KV cache computes (8-bit, symmetric, static, per tensor, round half to even, ±127), else None."""
    rows = []
    for slots in wc.layers:
        layer = []
        for slot in ("matmul_qkt", "matmul_pv"):
            q = getattr(slots.attn[slot], "quantizer_in2", None)
            if q is None or q.spec.dynamic or q.spec.bits != 8 or not q.spec.symmetric or not q.calibrated or \
                    q.running_min.numel() != 1 or q.numerics.rounding != "half_even" or not q.numerics.narrow_range:
                return None
            layer.append(_static_scale(q))
        rows.append(layer)
    kv_heads = wc.num_kv_heads
    return torch.tensor(rows, dtype=torch.float32).T[:, :, None].expand(2, len(rows), kv_heads).contiguous()


def engine_numerics(quant_config) -> Numerics:
    """The run's open-backend numerics, per sequence (the engine has no padded batch to share a scale over)."""
    qc = quant_config
    return Numerics(momentum=qc.momentum, rounding=qc.rounding, narrow_range=qc.narrow_range, batch_shared_scale=False)


def setup(model: nn.Module, quant_config, model_path: str, output_dir: Optional[str] = None) -> WholeConfig:
    """Attach the config's slots to a loaded engine model and give its static quantizers their ranges: from
    `--calibration-scales`, else by calibrating on `quant_config.calibration_path` (written to output_dir)."""
    from mlperf_llama2.quant import calibration_file as cf
    from mlperf_llama2.quant.yaml_config import load_rules

    qc = quant_config
    rules = load_rules(qc.liteml_config)
    if qc.batch_shared_scale:
        log.info("int8 mode computes per-token scales per sequence: simulate's equal is --quant-per-sample-scale")
    wc = attach(model, rules, engine_numerics(qc))
    if not cf.static_quantizers(wc):
        return wc
    device = model.embed_tokens.weight.device
    if qc.calibration_scales:
        cf.load_static_ranges(wc, cf.read_scales(qc.calibration_scales), device)
        return wc
    if not qc.calibration_path:
        raise UserError(f"{qc.liteml_config} has static quantizers: pass --calibration-scales FILE or "
                        "--calibration-path (the processorca calibration_*.pkl)")
    from mlperf_llama2.data.dataset import load_dataset

    prompts = load_dataset(qc.calibration_path, total_sample_count=10**9, vocab_size=model.shape.vocab_size).prompts
    rows = calibrate(model, prompts)
    if output_dir is not None:
        import os

        path = write_scales(wc, qc, model_path, rows, os.path.join(output_dir, cf.FILE_NAME))
        log.info("calibration scales written to %s (reuse with --calibration-scales %s)", path, path)
    return wc


def write_scales(wc: WholeConfig, quant_config, model_path: str, rows: int, path: str) -> str:
    """The engine's calibrated static ranges -> `path` (a calibration_scales.safetensors, simulate's format)."""
    import os

    from mlperf_llama2.quant import calibration_file as cf

    qc = quant_config
    observers = sorted({q.spec.observer for q in cf.static_quantizers(wc).values()})
    metadata = {
        "config_id": cf.config_id(qc.liteml_config), "config_name": os.path.basename(qc.liteml_config),
        **cf.model_identity(model_path), **cf.calibration_metadata(qc.calibration_path, rows),
        **cf.numerics_metadata(qc.momentum, qc.rounding, qc.narrow_range),
        "observer": f"{'+'.join(observers)} momentum={qc.momentum}, one update per sample (1, len)",
        "quant_mode": "int8", "writer": "engine-whole-config",
    }
    return cf.write_scales(path, cf.static_ranges(wc), metadata)


# ---- the fused path: the same steps in Triton kernels (CUDA, or the Triton interpreter in tests) ----------------

@dataclass
class LayerKernelArgs:
    """What one layer's kernels take: norm weights (already fake-quantized), quantizer widths, static scales."""

    w_in: torch.Tensor  # [N] input_layernorm weight
    w_post: torch.Tensor  # [N] post_attention_layernorm weight
    norm_in_bits: Optional[int]
    norm_post_bits: Optional[int]
    add_1_bits: Optional[int]
    add_2_bits: Optional[int]
    rope: torch.Tensor  # [4] float32: s_qc, s_qs, s_kc, s_ks (<= 0: absent)
    s_mask: Optional[float]
    s_out: Optional[float]
    silu: Optional[torch.Tensor]  # float32 scalar
    mul: Optional[torch.Tensor]  # [2] float32


def _static_scale(q) -> float:
    return float(symmetric_scale(torch.maximum(q.running_min.abs(), q.running_max.abs()), q.spec.bits).reshape(()))


def _dims_per_token_all_heads(spec) -> bool:
    """dims of a [B, H, S, X] Q or P quantizer that reduce heads and X per (sequence, position): {0, 1, 3} or {1, 3}."""
    return {d % 4 for d in spec.dims} in ({0, 1, 3}, {1, 3})


class _Unsupported(Exception):
    pass


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Unsupported(what)


def _absent_or(q, check) -> None:
    if q is not None:
        check(q)


def _static16(q, where: str) -> float:
    s = q.spec
    _need(not s.dynamic and s.symmetric and s.bits == 16 and q.running_min is not None and q.running_min.numel() == 1,
          f"{where}: a static 16-bit per-tensor quantizer")
    return _static_scale(q)


def _norm_args(module, where: str) -> tuple[torch.Tensor, Optional[int]]:
    if isinstance(module, _EngineNorm):
        return module.norm.weight, None
    a = module.act_quantizer
    _need(module.quantizer_out is None, f"{where}: no output quantizer")
    if a is None:
        return module.weight, None
    s = a.spec
    _need(s.dynamic and s.symmetric and tuple(d % 3 for d in s.dims) == (2,), f"{where}: input per token, dynamic")
    return module.weight, s.bits


def _add_bits(module, where: str) -> Optional[int]:
    if isinstance(module, AddSlot):
        return None
    q = getattr(module, "quantizer", None)
    _need(type(module).__name__ == "QuantAddCommonScalePerToken" and q is not None and module.quantizer_out is None,
          f"{where}: a common-scale per-token add")
    s = q.spec
    _need(s.dynamic and s.symmetric and tuple(d % 3 for d in s.dims) == (2,), f"{where}: per token, dynamic")
    return s.bits


def _binary(module, where: str):
    """(in1, in2, out) of a QuantBinary-like slot, or (None, None, None) for a plain op."""
    if isinstance(module, (AddSlot, MulSlot, MatmulSlot)):
        return None, None, None
    return (getattr(module, "quantizer_in1", None), getattr(module, "quantizer_in2", None),
            getattr(module, "quantizer_out", None))


def layer_kernel_args(slots: LayerSlots, kv_scales: Optional[torch.Tensor], device) -> LayerKernelArgs:
    """The kernels' arguments for one layer, or _Unsupported naming the first slot they cannot compute."""
    prefix = "int8 kernels: "
    w_in, norm_in = _norm_args(slots.input_layernorm, prefix + "input_layernorm")
    w_post, norm_post = _norm_args(slots.post_attention_layernorm, prefix + "post_attention_layernorm")
    a = slots.attn
    rope = []
    for which in ("q", "k"):
        for part in ("cos", "sin"):
            _need(isinstance(a[f"rotary_mul_{which}_{part}"], MulSlot), f"{prefix}rotary_mul_{which}_{part} in float")
        in1, in2, out = _binary(a[f"rotary_add_{which}"], f"rotary_add_{which}")
        _need(out is None, f"{prefix}rotary_add_{which} without an output quantizer")
        rope += [_static16(q, f"rotary_add_{which}") if q is not None else 0.0 for q in (in1, in2)]
    q_in, k_in, qk_out = _binary(a["matmul_qkt"], "matmul_qkt")
    p_in, v_in, pv_out = _binary(a["matmul_pv"], "matmul_pv")
    _need(qk_out is None, prefix + "matmul_qkt without an output quantizer")
    for q, name in ((q_in, "matmul_qkt Q"), (p_in, "matmul_pv P")):
        _need(q is not None and q.spec.dynamic and q.spec.symmetric and q.spec.bits == 8 and
              _dims_per_token_all_heads(q.spec), f"{prefix}{name}: int8 per token over all heads, dynamic")
    _need(kv_scales is not None, prefix + "an int8 KV cache with the config's K and V scales (--kv-cache-dtype int8)")
    for q, which, name in ((k_in, 0, "K"), (v_in, 1, "V")):
        _need(q is not None and not q.spec.dynamic and q.spec.bits == 8 and q.spec.symmetric and
              q.running_min.numel() == 1, f"{prefix}{name}: int8 symmetric static per tensor")
        _need(torch.allclose(kv_scales[which].float().cpu(), torch.tensor(_static_scale(q)), rtol=1e-6, atol=0),
              f"{prefix}the KV cache's {name} scale is the config's")
    mask_in, mask_q, mask_out = _binary(a["add_mask"], "add_mask")
    _need(mask_out is None and mask_q is None, prefix + "add_mask without a mask or output quantizer")
    silu = slots.act_fn
    if isinstance(silu, nn.SiLU):
        s_silu = None
    else:
        _need(silu.quantizer_out is None and silu.quantizer is not None, prefix + "SiLU: input quantizer only")
        s_silu = torch.tensor(_static16(silu.quantizer, "SiLU"), dtype=torch.float32, device=device)
    m1, m2, m_out = _binary(slots.mul, "mul")
    _need(m_out is None and (m1 is None) == (m2 is None), prefix + "mul: both inputs or neither, no output quantizer")
    mul = None if m1 is None else torch.tensor([_static16(m1, "mul"), _static16(m2, "mul")], dtype=torch.float32,
                                               device=device)
    return LayerKernelArgs(
        w_in=w_in, w_post=w_post, norm_in_bits=norm_in, norm_post_bits=norm_post,
        add_1_bits=_add_bits(slots.add_1, prefix + "add_1"), add_2_bits=_add_bits(slots.add_2, prefix + "add_2"),
        rope=torch.tensor(rope, dtype=torch.float32, device=device),
        s_mask=None if mask_in is None else _static16(mask_in, "add_mask"),
        s_out=None if pv_out is None else _static16(pv_out, "matmul_pv output"), silu=s_silu, mul=mul)


def use_kernels(model: nn.Module, kv_scales: Optional[torch.Tensor]) -> bool:
    """Switch `model.whole_config` to the Triton path when every layer's slots are what the kernels compute (the
    shipped configs, with an int8 KV cache holding the config's K and V scales) and every Linear but lm_head is
    int8; otherwise keep the eager path and say why in one line. kv_scales: the runner's [L, 2, KV]."""
    from mlperf_llama2.quant.int8_linear import Int8Linear

    wc = model.whole_config
    device = model.embed_tokens.weight.device
    try:
        _need(all(q.numerics.rounding == "half_even" and q.numerics.narrow_range for q in _quantizers(wc)),
              "int8 kernels: round half to even, narrow range")
        d = model.shape.head_dim
        _need(d & (d - 1) == 0 and d >= 32,  # on every device: the interpreter would take less, a GPU does not
              f"int8 kernels: a head_dim that is a power of two >= 32 (int8 tensor-core dots), not {d}")
        for layer in model.layers:
            for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                _need(isinstance(getattr(layer, name), Int8Linear), f"int8 kernels: {name} int8")
        args = [layer_kernel_args(slots, None if kv_scales is None else kv_scales[i], device)
                for i, slots in enumerate(wc.layers)]
    except _Unsupported as why:
        log.warning("int8 mode computes the whole config with eager torch ops (slow: no CUDA graphs); the Triton "
                    "kernels need %s", str(why).removeprefix("int8 kernels: "))
        wc.fused = False
        return False
    wc.kernel_args = args
    wc.fused = True
    log.info("int8 mode: the whole config in Triton kernels (norms, adds, RoPE, Q/P, mask, P.V output, SiLU, mul)")
    return True


def _quantizers(wc: nn.Module) -> list:
    from mlperf_llama2.quant.fake_quant import FakeQuantizer

    return [m for m in wc.modules() if isinstance(m, FakeQuantizer)]


def forward_fused(wc: WholeConfig, model: nn.Module, input_ids, positions, kv_cache_, meta: AttentionMetadata,
                  kv_scales: torch.Tensor) -> torch.Tensor:
    """The decoder in the whole-config kernels (whole_config_triton, _decode_triton, _prefill_triton)."""
    from mlperf_llama2.engine.whole_config_triton import add_rms_norm_q8, rope_store_q8, silu_mul_q8
    from mlperf_llama2.quant.activation import QuantizedActivation

    s = model.shape
    h = model.embed_tokens(input_ids)  # [T, hidden]
    t = h.shape[0]
    delta, delta_bits = None, None
    for i, (layer, slots, ka) in enumerate(zip(model.layers, wc.layers, wc.kernel_args)):
        kc, vc, kvs = kv_cache_[0, i], kv_cache_[1, i], kv_scales[i]
        h, x8, xs = add_rms_norm_q8(h, delta, ka.w_in, layer.input_layernorm.eps, delta_bits, ka.norm_in_bits)
        qkv = layer.qkv_proj(QuantizedActivation(x8, xs))
        q8, qs, k8, v8 = rope_store_q8(qkv, positions, model.rope_cos, model.rope_sin, kc, vc, meta.slot_mapping,
                                       s.num_heads, s.num_kv_heads, s.head_dim, ka.rope, kvs)
        o = _attention_fused(q8, qs, k8, v8, kc, vc, meta, layer.scale, kvs, ka, h.dtype)  # [T, H, D]
        h, x8, xs = add_rms_norm_q8(h, layer.o_proj(o.reshape(t, -1)), ka.w_post, layer.post_attention_layernorm.eps,
                                    ka.add_1_bits, ka.norm_post_bits)
        m8, ms = silu_mul_q8(layer.gate_up_proj(QuantizedActivation(x8, xs)), ka.silu, ka.mul)
        delta, delta_bits = layer.down_proj(QuantizedActivation(m8, ms)), ka.add_2_bits
    return wc.layers[-1].add_2(h[None], delta[None])[0]


def _attention_fused(q8, qs, k8, v8, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales,
                     ka: LayerKernelArgs, dtype) -> torch.Tensor:
    from mlperf_llama2.engine.whole_config_decode_triton import decode_q8
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    nd = meta.num_decodes
    outs = []
    if nd:
        outs.append(decode_q8(q8[:nd], qs[:nd], k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                              meta.block_size, kv_scales, ka.s_mask, ka.s_out, dtype))
    if nd < q8.shape[0]:
        if meta.context_slots is not None:  # a chunk with a cached prefix: its whole context from the cache
            k8, v8 = kv_cache.gather(k_cache, meta.context_slots), kv_cache.gather(v_cache, meta.context_slots)
        else:
            k8, v8 = k8[nd:], v8[nd:]
        outs.append(prefill_q8(q8[nd:], qs[nd:], k8, v8, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q,
                               meta.max_seqlen_k, scale, kv_scales, ka.s_mask, ka.s_out, dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
