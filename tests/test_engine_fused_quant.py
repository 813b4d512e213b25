"""Quantizing producers in the decoder: add+RMSNorm and SiLU·up hand the next 8-bit Linear its per-token
quantized input, and the model's output is the same, bit for bit, as when each Linear quantizes its own input.

Eager ops run everywhere; the fused Triton producers run on CUDA, or on CPU under Triton's interpreter when
TRITON_INTERPRET=1 and triton is importable (skipped otherwise). Row-parallel Linears (tensor parallelism:
their scale spans ranks) and o_proj keep quantizing themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mlperf_llama2.config import EngineConfig, QuantConfig
from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.ops import EagerOps, quantize_tokens
from mlperf_llama2.errors import UserError
from mlperf_llama2.parallel.tensor_parallel import RowParallel
from mlperf_llama2.quant import activation
from mlperf_llama2.quant.activation import QuantizedActivation, prequantized_kind
from mlperf_llama2.quant.fp8 import Fp8Linear
from mlperf_llama2.quant.int8_linear import Int8Linear

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
QUANT = {"int8": QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", int8_rules="linear"),
         "fp8": QuantConfig(quantization="fp8")}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _fused_ops_or_skip():
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("fused producers need a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")
    pytest.importorskip("triton")
    from mlperf_llama2.engine.ops import FusedOps

    return FusedOps


class Counting:
    """The model's ops, counting calls of the quantizing producers."""

    def __init__(self, base) -> None:
        self.base, self.calls = base, {"add_rms_norm_quant": 0, "silu_mul_quant": 0}

    def __getattr__(self, name):
        return getattr(self.base, name)

    def add_rms_norm_quant(self, *args):
        self.calls["add_rms_norm_quant"] += 1
        return self.base.add_rms_norm_quant(*args)

    def silu_mul_quant(self, *args):
        self.calls["silu_mul_quant"] += 1
        return self.base.silu_mul_quant(*args)


@pytest.fixture(scope="module", params=sorted(QUANT))
def quantized_model(request, tiny_model_dir):
    conf = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=16, num_kv_blocks=8,
                        cuda_graphs=False)
    engine = LLMEngine.from_pretrained(tiny_model_dir, conf, DEVICE, torch.float32, QUANT[request.param])
    return request.param, engine.runner.model


def prefill(model, ops, fused_quant: bool) -> tuple[torch.Tensor, dict]:
    """One 23-token prompt through the model: final hidden states [T, hidden] and the producer calls."""
    s = model.shape
    t = 23
    ids = torch.randint(3, 500, (t,), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    cu = torch.tensor([0, t], dtype=torch.int32, device=DEVICE)
    meta = AttentionMetadata(slot_mapping=torch.arange(t, device=DEVICE), num_decodes=0, block_size=t,
                             cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=t, max_seqlen_k=t,
                             prefill_q_lens=(t,), prefill_k_lens=(t,))
    kv_cache = torch.zeros(2, s.num_layers, t, s.num_kv_heads, s.head_dim, device=DEVICE)
    counting = Counting(ops)
    model.ops, model.fused_quant = counting, fused_quant
    try:
        with torch.inference_mode():
            return model(ids, torch.arange(t, device=DEVICE), kv_cache, meta), counting.calls
    finally:
        model.ops, model.fused_quant = EagerOps, True


def assert_producers_change_nothing(model, ops):
    want, calls = prefill(model, ops, fused_quant=False)
    assert calls == {"add_rms_norm_quant": 0, "silu_mul_quant": 0}
    got, calls = prefill(model, ops, fused_quant=True)
    layers = model.shape.num_layers
    assert calls == {"add_rms_norm_quant": 2 * layers, "silu_mul_quant": layers}  # qkv, gate_up; down
    assert torch.equal(got, want)
    assert got.abs().sum() > 0


def test_eager_producers_give_the_unfused_output_bit_for_bit(quantized_model):
    assert_producers_change_nothing(quantized_model[1], EagerOps)


def test_fused_producers_give_the_unfused_output_bit_for_bit(quantized_model):
    assert_producers_change_nothing(quantized_model[1], _fused_ops_or_skip())


def test_row_parallel_down_proj_quantizes_its_own_input(quantized_model, monkeypatch):
    """A row-parallel Linear's scale is the absmax over all ranks' slices; one rank here, so the same numbers."""
    kind, model = quantized_model
    monkeypatch.setattr(activation, "row_absmax", lambda x, group: x.float().abs().amax(dim=1))
    want, _ = prefill(model, EagerOps, fused_quant=False)
    for layer in model.layers:
        monkeypatch.setattr(layer.down_proj, "row_parallel", True, raising=False)
    got, calls = prefill(model, EagerOps, fused_quant=True)
    assert calls == {"add_rms_norm_quant": 2 * model.shape.num_layers, "silu_mul_quant": 0}
    assert torch.equal(got, want)


def test_which_linears_take_a_quantized_input():
    lin8 = Int8Linear.from_float(torch.randn(16, 32))
    lin_fp8 = Fp8Linear.from_float(torch.randn(16, 32))
    assert (prequantized_kind(lin8), prequantized_kind(lin_fp8)) == ("int8", "fp8")
    assert prequantized_kind(torch.nn.Linear(32, 16)) is None
    wrapper = RowParallel(lin8)  # how tensor parallelism splits o_proj and down_proj along K
    assert lin8.row_parallel and prequantized_kind(lin8) is None and prequantized_kind(wrapper) is None


@pytest.mark.parametrize("kind,cls", [("int8", Int8Linear), ("fp8", Fp8Linear)])
def test_linear_takes_a_quantized_input_as_its_own(kind, cls):
    g = torch.Generator().manual_seed(2)
    linear = cls.from_float(torch.randn(24, 40, generator=g))
    x = torch.randn(7, 40, generator=g) * 3
    act = QuantizedActivation(*quantize_tokens(x, kind))
    assert act.q.shape == (7, 40) and act.scale.shape == (7,)
    assert torch.equal(linear(act), linear(x))
    other = "fp8" if kind == "int8" else "int8"
    with pytest.raises(ValueError, match="QuantizedActivation"):
        linear(QuantizedActivation(*quantize_tokens(x, other)))


def test_bad_kind_is_one_clear_line():
    with pytest.raises(UserError, match="kind must be one of fp8, int8, got 'int4'"):
        EagerOps.silu_mul_quant(torch.zeros(2, 8), "int4")
