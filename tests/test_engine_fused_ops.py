"""The fused Triton elementwise kernels equal the eager ops they replace (RoPE + KV store and SiLU-gate bit for
bit, RMSNorm to one rounding step), and a whole engine model gives the same output either way.

Runs on CUDA; on a CPU machine it runs under Triton's interpreter when TRITON_INTERPRET=1 and triton is
importable, and is skipped otherwise.
"""


import pytest
import torch

from mlperf_llama2.engine.ops import EagerOps

from triton_device import module_device  # noqa: E402

DEVICE = module_device()

from mlperf_llama2.engine.ops import FusedOps  # noqa: E402

DTYPES = [torch.float16, torch.float32]


def _gen(seed=0):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
def test_rope_store_is_bit_identical(dtype, heads, kv_heads):
    d, t, max_pos, slots = 64, 11, 300, 40
    g = _gen(1)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * d, generator=g, device=DEVICE).to(dtype) * 3
    positions = torch.randint(0, max_pos, (t,), generator=g, device=DEVICE)
    angles = torch.rand(max_pos, d, generator=g, device=DEVICE) * 6.3
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    slot_mapping = torch.randperm(slots, generator=g, device=DEVICE)[:t]
    caches = [torch.zeros(slots, kv_heads, d, dtype=dtype, device=DEVICE) for _ in range(4)]
    c, s = EagerOps.rope_tables(positions, cos, sin)
    want = EagerOps.rope_store(qkv, positions, c, s, caches[0], caches[1], slot_mapping, heads, kv_heads, d)
    c, s = FusedOps.rope_tables(positions, cos, sin)
    got = FusedOps.rope_store(qkv, positions, c, s, caches[2], caches[3], slot_mapping, heads, kv_heads, d)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)
    assert torch.equal(caches[2], caches[0]) and torch.equal(caches[3], caches[1])
    assert caches[2].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_is_bit_identical(dtype):
    x = torch.randn(7, 2 * 1500, generator=_gen(2), device=DEVICE).to(dtype) * 4
    got, want = FusedOps.silu_mul(x), EagerOps.silu_mul(x)
    if DEVICE == "cuda":  # same expf and IEEE division as ATen's CUDA silu
        assert torch.equal(got, want)
    else:  # the interpreter's numpy exp against torch's vectorised CPU exp: an ulp here and there
        assert torch.allclose(got.float(), want.float(), rtol=1e-3 if dtype == torch.float16 else 1e-6, atol=0)
        assert (got != want).float().mean() < (0.001 if dtype == torch.float16 else 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rms_norm_matches_to_one_rounding(dtype, with_delta):
    g = _gen(3)
    n = 1000  # not a power of two: the kernel masks the tail
    h = torch.randn(9, n, generator=g, device=DEVICE).to(dtype)
    delta = torch.randn(9, n, generator=g, device=DEVICE).to(dtype) if with_delta else None
    w = (torch.rand(n, generator=g, device=DEVICE) + 0.5).to(dtype)
    h_want, x_want = EagerOps.add_rms_norm(h, delta, w, 1e-5)
    h_got, x_got = FusedOps.add_rms_norm(h, delta, w, 1e-5)
    assert torch.equal(h_got, h_want)
    ulp = 1e-3 if dtype == torch.float16 else 1e-6
    assert torch.allclose(x_got.float(), x_want.float(), rtol=2 * ulp, atol=2 * ulp)
    if dtype == torch.float16:  # the fp32 mean's summation order flips at most a few roundings
        assert (x_got != x_want).float().mean() < 0.01


def test_engine_tokens_equal_with_fused_and_eager_ops(tiny_model_dir):
    """The whole engine (fp32, tiny GQA model): fused kernels give the eager ops' greedy tokens, prefill chunked."""
    from mlperf_llama2.config import EngineConfig
    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.engine.sequence import SamplingParams

    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, 500, (n - 1,), generator=g).tolist() for n in (5, 17, 40, 2)]
    outs = {}
    for name, ops in (("eager", EagerOps), ("fused", FusedOps)):
        conf = EngineConfig(max_num_seqs=8, max_num_batched_tokens=16, block_size=4, num_kv_blocks=128,
                            cuda_graphs=False, ops=name)
        engine = LLMEngine.from_pretrained(tiny_model_dir, conf, device=DEVICE, dtype=torch.float32)
        assert engine.runner.model.ops is ops  # chosen by the config, on any device
        outs[name] = engine.generate(prompts, SamplingParams(max_new_tokens=8))
    assert outs["fused"] == outs["eager"]
    assert len({tuple(o) for o in outs["eager"]}) > 1
