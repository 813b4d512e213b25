"""Random Llama checkpoints for tools/bench_fidelity.py: a `decisive` construction and the `plain` one.

Both are built on the device in float32, rounded to fp16 and written as a safetensors checkpoint
(config.json + shards + index), so transformers (fp32 and fp16) and the engine load exactly the same
numbers, each through its own loader. The weights are fp16-representable: the fp32 model differs
from the fp16 ones only in arithmetic.

`plain`: every matrix N(0, init_std) (transformers' init), RMSNorm weights one. At the 7B shape this
is chaotic: fp16 rounding flips greedy tokens within a few steps (docs/engine.md).

`decisive`: the same, except
  * the embedding is N(0, 1), so each token's own direction is a large part of the residual stream;
  * o_proj ~ N(0, (attn_gain / (sqrt(layers) * init_std * hidden))^2) and down_proj ~
    N(0, (init_std * mlp_gain / sqrt(layers))^2): each layer adds a small branch to the stream, so the
    layer map stays close to the identity and rounding errors are not amplified with depth, while
    the attention branches together carry about attn_gain times the (unit-RMS) embedding (a value
    row has RMS ~init_std * sqrt(hidden), so o_proj's output per layer is ~attn_gain / sqrt(layers));
    the output depends on the context, not only on the last token;
  * lm_head = N(0, init_std) + two permuted copies of the unit-RMS embeddings times `lead / hidden`:
    for a last token x, the rows pi_1(x) and pi_2(x) lead the other 31,998 logits by about `lead`
    standard deviations of the random part, so every step is a two-way decision (top-2 gap of order
    one logit std instead of ~0.2 std among 32,000 Gaussian logits) made by the random part of lm_head
    on the final hidden state, which carries the attention output.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch

log = logging.getLogger(__name__)

DECISIVE_DEFAULTS = {"attn_gain": 1.0, "mlp_gain": 0.28, "lead": 12.0, "candidates": 2}
LAYERS_PER_SHARD = 8


def layer_tensor_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """transformers' names and shapes of one decoder layer's weights."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    return {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
            "self_attn.o_proj.weight": (d, q), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
            "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}


def _normal(shape, std: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.empty(shape, device=device, dtype=torch.float32).normal_(0.0, std, generator=gen)


def build_state_dict(cfg, construction: str, device, seed: int, init_std: float = 0.02, **knobs):
    """Yields (shard tensors {name: fp16 CPU tensor}) one shard at a time: embeddings/head, then layer groups."""
    if construction not in ("plain", "decisive"):
        raise ValueError(f"construction must be plain or decisive, got {construction!r}")
    k = {**DECISIVE_DEFAULTS, **knobs}
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    gen = torch.Generator(device=device).manual_seed(seed)
    decisive = construction == "decisive"
    embed = _normal((cfg.vocab_size, d), 1.0 if decisive else init_std, gen, device)  # [V, d]
    head = _normal((cfg.vocab_size, d), init_std, gen, device)  # [V, d]
    if decisive:
        unit = embed / embed.pow(2).mean(-1, keepdim=True).sqrt()  # unit-RMS rows
        # a logit lead of `lead` standard deviations of the random part (init_std * sqrt(d))
        scale = k["lead"] * init_std * math.sqrt(d) / d
        for _ in range(int(k["candidates"])):
            perm = torch.randperm(cfg.vocab_size, generator=gen, device=device)
            head[perm] += scale * unit  # row perm[x] points along token x's embedding
        del unit
    yield {"model.embed_tokens.weight": embed.half().cpu(), "lm_head.weight": head.half().cpu(),
           "model.norm.weight": torch.ones(d, dtype=torch.float16)}
    del embed, head
    stds = {"self_attn.o_proj.weight": k["attn_gain"] / (math.sqrt(layers) * init_std * d),
            "mlp.down_proj.weight": init_std * k["mlp_gain"] / math.sqrt(layers)} if decisive else {}
    shapes = layer_tensor_shapes(cfg)
    for first in range(0, layers, LAYERS_PER_SHARD):
        shard = {}
        for i in range(first, min(first + LAYERS_PER_SHARD, layers)):
            for name, shape in shapes.items():
                if len(shape) == 1:
                    t = torch.ones(shape, dtype=torch.float16)
                else:
                    t = _normal(shape, stds.get(name, init_std), gen, device).half().cpu()
                shard[f"model.layers.{i}.{name}"] = t
        yield shard


def write_checkpoint(cfg, out_dir: str, construction: str, device, seed: int, init_std: float = 0.02,
                     **knobs) -> str:
    """Writes config.json, model-0000N.safetensors shards and their index into `out_dir`; returns it."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg.dtype = "float16"
    cfg.save_pretrained(out_dir)
    weight_map, total = {}, 0
    for n, shard in enumerate(build_state_dict(cfg, construction, device, seed, init_std, **knobs)):
        name = f"model-{n:05d}.safetensors"
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
    log.info("wrote %s checkpoint (%.2f GiB fp16) to %s", construction, total / 2**30, out_dir)
    return out_dir
