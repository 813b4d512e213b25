"""The engine's calibration runs (K/V ranges, kv_calibration.py; every static quantizer of a LiteML config,
whole_config.py) share one definition of what the observers see: each calibration prompt alone, as one prefill
with a KV cache of its own length, so no prompt's activations depend on another's."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.errors import UserError


def prefill_each(model, prompts: Iterable[Sequence[int]], forward, what: str) -> int:
    """Each prompt (token ids) alone as one prefill through `forward(ids, positions, kv_cache, meta)` (a cache of
    its own length, so calibration sees no other prompt); returns the count. `what`: the error's subject when
    there is none."""
    s = model.shape
    device, dtype = model.embed_tokens.weight.device, model.rope_cos.dtype
    n = 0
    for prompt in prompts:
        ids = torch.as_tensor(list(prompt), dtype=torch.long, device=device)  # [T]
        t = ids.shape[0]
        if t == 0:
            raise UserError(f"calibration prompt {n} is empty")
        kv_cache = torch.empty(2, s.num_layers, t, s.num_kv_heads, s.head_dim, dtype=dtype, device=device)
        forward(ids, torch.arange(t, device=device), kv_cache, AttentionMetadata.single_prefill(t, device))
        n += 1
    if n == 0:
        raise UserError(f"calibration data is empty; {what} cannot be calibrated")
    return n
