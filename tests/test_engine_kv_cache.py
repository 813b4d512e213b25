"""The 8-bit KV cache (`--kv-cache-dtype fp8|int8`): quantization, attention over it, and the engine's tokens.

Specification: the cache stores quant(x / scale) with static per-layer, per-KV-head scales and
attention reads stored * scale, so (1) quantize/dequantize round-trip representable values exactly
and bound the error of the others; (2) attention over an 8-bit cache equals attention over the
dequantized cache, for decodes and chunked prefills with a cached prefix, in every mix; (3) the
engine with an 8-bit cache generates exactly the tokens of the engine with a 16/32-bit cache whose
K and V are fake-quantized after RoPE, in several batch compositions; (4) the Triton kernels
(RoPE + store, paged decode) equal the torch reference, under TRITON_INTERPRET=1 on a CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlperf_llama2.config import EngineConfig, RunConfig, build_parser
from mlperf_llama2.engine import kv_cache
from mlperf_llama2.engine.attention import AttentionMetadata, attention
from mlperf_llama2.engine.kv_cache import KVCacheSpec, dequantize, fake_quantize, quantize
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.ops import EagerOps
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError

STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
QMAX = {"int8": kv_cache.INT8_MAX, "fp8": kv_cache.FP8_MAX}
NEW_TOKENS = 12
COMPOSITIONS = {
    "roomy": EngineConfig(max_num_seqs=16, max_num_batched_tokens=4096, block_size=16, num_kv_blocks=64),
    "chunked_prefill": EngineConfig(max_num_seqs=16, max_num_batched_tokens=7, block_size=4, num_kv_blocks=256),
    # 20 blocks of 4 hold the longest prompt with its new tokens (64 + 12) and little else: sequences are preempted
    "preemption": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=20),
}


# ---- quantize / dequantize --------------------------------------------------------------------------------------
def all_finite_e4m3() -> torch.Tensor:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    return codes[torch.isfinite(codes)]


@pytest.mark.parametrize("name", sorted(STORAGE))
def test_representable_values_round_trip_exactly_per_head(name):
    scale = torch.tensor([0.5, 2.0 ** -7, 4.0])  # powers of two: stored * scale is exact
    grid = torch.arange(-127, 128, dtype=torch.float32) if name == "int8" else all_finite_e4m3()
    x = grid[None, None, :] * scale[None, :, None]  # [1, KV, N]: head h holds the grid times its scale
    stored = quantize(x, scale, STORAGE[name])
    assert stored.dtype == STORAGE[name]
    assert torch.equal(stored.float(), grid.expand(1, 3, -1))
    assert torch.equal(dequantize(stored, scale, torch.float32), x)


def test_int8_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 300.0, -1e9])[None, None, :]
    stored = quantize(x, torch.tensor([1.0]), torch.int8)
    assert stored.flatten().tolist() == [0, 2, 2, 0, -2, 126, 127, -127]


def test_fp8_saturates_instead_of_nan():
    x = torch.tensor([1e6, -1e6, 449.0, 3.0])[None, None, :]
    assert dequantize(quantize(x, torch.tensor([1.0]), torch.float8_e4m3fn), torch.tensor([1.0]),
                      torch.float32).flatten().tolist() == [448.0, -448.0, 448.0, 3.0]


@pytest.mark.parametrize("name", sorted(STORAGE))
def test_error_is_bounded_inside_the_range(name):
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.013, 0.2])
    x = (torch.rand(64, 2, 32, generator=g) * 2 - 1) * QMAX[name] * scale[None, :, None]  # [T, KV, D] in range
    err = (fake_quantize(x, scale, STORAGE[name]) - x).abs()
    if name == "int8":
        bound = scale[None, :, None] / 2 * (1 + 1e-5)  # half a step
    else:  # E4M3: 3 mantissa bits -> half-ulp relative 2**-4 for normals; subnormal step 2**-9 below 2**-6
        bound = torch.maximum(x.abs() * 2.0 ** -4, 2.0 ** -10 * scale[None, :, None]) * (1 + 1e-5)
    assert bool((err <= bound).all()) and err.max() > 0


def test_spec_checks_its_scales():
    with pytest.raises(UserError, match="needs static K/V scales"):
        KVCacheSpec("int8", None)
    with pytest.raises(UserError, match=r"shape \[2, layers, kv_heads\]"):
        KVCacheSpec("fp8", torch.ones(3, 2))
    with pytest.raises(UserError, match="finite and > 0"):
        KVCacheSpec("int8", torch.zeros(2, 1, 1))
    with pytest.raises(UserError, match="--kv-cache-dtype must be one of"):
        EngineConfig(kv_cache_dtype="int4")
    spec = KVCacheSpec("int8", torch.arange(1, 17, dtype=torch.float32).view(2, 2, 4))
    with pytest.raises(UserError, match="for 2 layers x 4 KV heads; the model has 2 x 8"):
        spec.check_shape(2, 8)
    # tensor parallelism: rank r keeps its KV heads' scales
    assert spec.shard(1, 2).scales.tolist() == [[[3, 4], [7, 8]], [[11, 12], [15, 16]]]
    assert spec.layer_scales(torch.device("cpu"))[1].tolist() == [[5, 6, 7, 8], [13, 14, 15, 16]]  # [L, 2, KV]


def test_kv_cache_dtype_flag_without_scales_is_one_clear_error():
    ns = build_parser().parse_args(["--backend", "engine", "--kv-cache-dtype", "fp8"])
    from mlperf_llama2.backends.preflight import check_engine

    config = RunConfig.from_cli_args(ns)
    with pytest.raises(UserError, match="--kv-cache-dtype fp8 needs static K/V scales") as info:
        check_engine(config)
    assert "\n" not in str(info.value) and "--calibration-scales" in str(info.value)
    assert RunConfig.from_cli_args(build_parser().parse_args(["--backend", "engine"])).engine.kv_cache_dtype == "auto"


def test_an_8bit_cache_holds_twice_the_blocks_per_byte():
    scales = torch.ones(2, 1, 1)
    assert kv_cache.element_size(KVCacheSpec(), torch.float16) == 2
    assert kv_cache.element_size(KVCacheSpec("int8", scales), torch.float16) == 1
    assert kv_cache.element_size(KVCacheSpec("fp8", scales), torch.bfloat16) == 1


def test_kv_sizing_counts_the_memory_the_caching_allocator_holds(monkeypatch):
    """The engine sizes its cache from free GPU memory; memory torch's caching allocator still holds from the
    weight build must be returned first, or the cache comes out smaller (a 70B FP8 run sized 1,762 blocks where
    3,485 fit). Simulated: 8 GiB free of which the allocator caches 4."""
    from types import SimpleNamespace

    from mlperf_llama2.engine.model_runner import ModelRunner

    gib = 2**30
    state = {"free": 4 * gib, "cached": 4 * gib}

    def empty_cache():
        state["free"], state["cached"] = state["free"] + state["cached"], 0

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 80 * gib))
    runner = ModelRunner.__new__(ModelRunner)
    runner.config = EngineConfig(max_num_batched_tokens=256)
    runner.device, runner.dtype, runner.block_size, runner.max_blocks_per_seq = \
        torch.device("cuda", 0), torch.float16, 16, 1
    runner.model = SimpleNamespace(shape=SimpleNamespace(num_layers=2, num_kv_heads=2, head_dim=8,
                                                         intermediate_size=64, hidden_size=32))
    runner.kv_spec = KVCacheSpec()
    blocks = runner._count_kv_blocks()
    block_bytes = 2 * 2 * 16 * 2 * 8 * 2
    reserve = 256 * (4 * 64 + 8 * 32) * 2 + gib
    assert blocks == int((8 * gib * 0.9 - reserve) // block_bytes) - 1


# ---- attention over the cache ----------------------------------------------------------------------------------
def paged_step(decode_ctx, prefills, heads, kv_heads, d, bs, name, device="cpu", seed=0):
    """A step of `decode_ctx` decodes and `prefills` (cached, new) chunks over a scattered paged cache.

    Returns (q, k_new, v_new, 8-bit caches, dequantized caches, scales [2, KV], meta); k_new, v_new are
    the chunks' own keys/values as rope_store returns them (dequantized)."""
    g = torch.Generator().manual_seed(seed)
    ctx = list(decode_ctx) + [c + n for c, n in prefills]
    q_lens = [1] * len(decode_ctx) + [n for _, n in prefills]
    blocks = [-(-n // bs) for n in ctx]
    perm = torch.randperm(sum(blocks) + 2, generator=g).tolist()
    tables, start = [], 0
    for n in blocks:
        tables.append(perm[start:start + n])
        start += n
    slots = [[t[p // bs] * bs + p % bs for p in range(n)] for t, n in zip(tables, ctx)]
    scales = torch.rand(2, kv_heads, generator=g) * 0.05 + 0.01
    x = torch.randn(2, (sum(blocks) + 2) * bs, kv_heads, d, generator=g) * 2
    cache8 = [quantize(x[i], scales[i], STORAGE[name]) for i in range(2)]  # [S, KV, D]
    cache = [dequantize(cache8[i], scales[i], torch.float32) for i in range(2)]
    new = sum((s[c - n:] for s, c, n in zip(slots, ctx, q_lens)), [])
    q = torch.randn(sum(q_lens), heads, d, generator=g)
    nd, pre = len(decode_ctx), prefills
    lt = lambda v, dt=torch.int64: torch.tensor(v, dtype=dt, device=device)  # noqa: E731
    width = max(blocks)
    meta = AttentionMetadata(slot_mapping=lt(new), num_decodes=nd, block_size=bs)
    if nd:
        meta.block_tables = lt([t + [0] * (width - len(t)) for t in tables[:nd]], torch.int32)
        meta.context_lens = lt(ctx[:nd], torch.int32)
        meta.decode_context_slots = lt(sum(slots[:nd], []))
        meta.decode_context_lens = tuple(ctx[:nd])
    if pre:
        k_lens = ctx[nd:]
        meta.prefill_q_lens, meta.prefill_k_lens = tuple(q_lens[nd:]), tuple(k_lens)
        meta.cu_seqlens_q = lt([0] + torch.tensor(q_lens[nd:]).cumsum(0).tolist(), torch.int32)
        meta.cu_seqlens_k = lt([0] + torch.tensor(k_lens).cumsum(0).tolist(), torch.int32)
        meta.max_seqlen_q, meta.max_seqlen_k = max(q_lens[nd:]), max(k_lens)
        if any(c for c, _ in pre):
            meta.context_slots = lt(sum(slots[nd:], []))
    idx = torch.tensor(new)
    to = lambda t: t.to(device)  # noqa: E731
    return (to(q), to(cache[0][idx]), to(cache[1][idx]), [to(c) for c in cache8], [to(c) for c in cache],
            to(scales), meta)


STEPS = {  # (decode contexts, prefill (cached, new) chunks)
    "decodes": ([1, 7, 33], []),
    "fresh_prefills": ([], [(0, 5), (0, 9)]),
    "prefill_with_prefix": ([], [(8, 3), (0, 4), (21, 1)]),
    "mixed": ([5, 40], [(17, 6), (0, 2)]),
}


@pytest.mark.parametrize("name", sorted(STORAGE))
@pytest.mark.parametrize("step", sorted(STEPS))
def test_attention_over_8bit_cache_equals_attention_over_dequantized_cache(name, step):
    heads, kv_heads, d, bs = 8, 2, 16, 4
    q, k, v, cache8, cache, scales, meta = paged_step(*STEPS[step], heads, kv_heads, d, bs, name)
    got = attention(q, k, v, cache8[0], cache8[1], meta, d ** -0.5, scales)
    want = attention(q, k, v, cache[0], cache[1], meta, d ** -0.5)
    assert got.shape == q.shape and torch.equal(got, want)
    # and the quantization mattered: the full-precision cache would give something else
    assert not torch.equal(cache8[0].float(), cache[0])


# ---- the engine's tokens ---------------------------------------------------------------------------------------
def prompts():
    g = torch.Generator().manual_seed(3)
    return [[1] + torch.randint(3, 500, (n - 1,), generator=g).tolist() for n in (5, 17, 40, 2, 64, 9)]


class RecordKV(EagerOps):
    """Eager ops that record each layer's K/V absolute maxima per head (a calibration pass)."""

    def __init__(self, num_layers: int, kv_heads: int) -> None:
        self.amax = torch.zeros(2, num_layers, kv_heads)
        self.num_layers, self.calls = num_layers, 0

    def rope_store(self, *args, kv_scales=None):
        q, k, v = EagerOps.rope_store(*args)
        layer = self.calls % self.num_layers
        self.calls += 1
        for i, x in enumerate((k, v)):  # x: [T, KV, D]
            self.amax[i, layer] = torch.maximum(self.amax[i, layer], x.abs().amax(dim=(0, 2)))
        return q, k, v


class FakeQuantKV(RecordKV):
    """The reference: a model-dtype cache holding fake-quantized K and V, exactly what attention should see."""

    def __init__(self, scales: torch.Tensor, storage: torch.dtype) -> None:
        super().__init__(scales.shape[1], scales.shape[2])
        self.scales, self.storage = scales, storage

    def rope_store(self, qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, *shape, kv_scales=None):
        assert kv_scales is None  # the reference runs with an auto cache
        q, k, v = EagerOps.rope_store(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, *shape)
        s = self.scales[:, self.calls % self.num_layers]  # [2, KV]
        self.calls += 1
        k, v = fake_quantize(k, s[0], self.storage), fake_quantize(v, s[1], self.storage)
        k_cache.index_copy_(0, slot_mapping, k)
        v_cache.index_copy_(0, slot_mapping, v)
        return q, k, v


@pytest.fixture(scope="module")
def calibrated_scales(tiny_model_dir):
    """Per-head scales from the prompts' own K/V maxima (95% of the maximum: the largest values clamp)."""
    engine = LLMEngine.from_pretrained(tiny_model_dir, COMPOSITIONS["roomy"], "cpu", torch.float32)
    shape = engine.runner.model.shape
    recorder = engine.runner.model.ops = RecordKV(shape.num_layers, shape.num_kv_heads)
    engine.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    assert bool((recorder.amax > 0).all())
    return {name: recorder.amax * 0.95 / QMAX[name] for name in STORAGE}


@pytest.mark.parametrize("name", sorted(STORAGE))
@pytest.mark.parametrize("composition", sorted(COMPOSITIONS))
def test_engine_with_8bit_cache_equals_fake_quantized_kv_reference(tiny_model_dir, calibrated_scales, name,
                                                                   composition):
    config = COMPOSITIONS[composition]
    scales = calibrated_scales[name]
    ref = LLMEngine.from_pretrained(tiny_model_dir, config, "cpu", torch.float32)
    ref.runner.model.ops = FakeQuantKV(scales, STORAGE[name])
    want = ref.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))

    eight = LLMEngine.from_pretrained(tiny_model_dir, dataclasses.replace(config, kv_cache_dtype=name),
                                      "cpu", torch.float32, kv_scales=scales)
    assert eight.runner.kv_cache.dtype == STORAGE[name]
    got = eight.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    assert got == want and all(len(o) >= 2 for o in got)
    assert (eight.scheduler.num_preemptions > 0) == (composition == "preemption")  # the composition does its job
    # same schedule, same slots: the 8-bit cache dequantizes to exactly the reference's cache
    layer_scales = eight.runner.kv_scales  # [L, 2, KV]
    for layer in range(scales.shape[1]):
        for i in range(2):
            deq = dequantize(eight.runner.kv_cache[i, layer], layer_scales[layer, i], torch.float32)
            assert torch.equal(deq, ref.runner.kv_cache[i, layer])
    assert eight.runner.kv_cache.float().abs().sum() > 0


def test_engine_refuses_an_8bit_cache_without_scales_before_loading(tmp_path):
    with pytest.raises(UserError, match="--kv-cache-dtype int8 needs static K/V scales"):
        LLMEngine.from_pretrained(str(tmp_path / "no-such-model"), EngineConfig(kv_cache_dtype="int8"), "cpu")


# ---- Triton kernels: CUDA, or the interpreter on a CPU ---------------------------------------------------------
from triton_device import needs_triton, triton_device  # noqa: E402

KERNEL_DEVICE = triton_device()


@needs_triton
@pytest.mark.parametrize("name", sorted(STORAGE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fused_rope_store_8bit_is_bit_identical_to_eager(name, dtype):
    from mlperf_llama2.engine.ops import FusedOps

    dev, heads, kv_heads, d, t, max_pos, slots = KERNEL_DEVICE, 8, 2, 32, 9, 100, 30
    g = torch.Generator().manual_seed(4)
    qkv = (torch.randn(t, (heads + 2 * kv_heads) * d, generator=g) * 3).to(dtype).to(dev)
    positions = torch.randint(0, max_pos, (t,), generator=g).to(dev)
    angles = torch.rand(max_pos, d, generator=g) * 6.3
    cos, sin = angles.cos().to(dtype).to(dev), angles.sin().to(dtype).to(dev)
    slot_mapping = torch.randperm(slots, generator=g)[:t].to(dev)
    scales = (torch.rand(2, kv_heads, generator=g) * 0.03 + 0.004).to(dev)  # some values clamp, some are subnormal
    caches = [torch.zeros(slots, kv_heads, d, dtype=STORAGE[name], device=dev) for _ in range(4)]
    c, s = EagerOps.rope_tables(positions, cos, sin)
    want = EagerOps.rope_store(qkv, positions, c, s, caches[0], caches[1], slot_mapping, heads, kv_heads, d, scales)
    c, s = FusedOps.rope_tables(positions, cos, sin)
    got = FusedOps.rope_store(qkv, positions, c, s, caches[2], caches[3], slot_mapping, heads, kv_heads, d, scales)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == dtype and torch.equal(a, b)
    bits = [x.view(torch.uint8) for x in caches]
    assert torch.equal(bits[2], bits[0]) and torch.equal(bits[3], bits[1])
    assert bits[2].float().abs().sum() > 0 and bits[3].float().abs().sum() > 0


@needs_triton
@pytest.mark.parametrize("name", sorted(STORAGE))
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
def test_paged_decode_kernel_reads_the_8bit_cache(name, heads, kv_heads):
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    d, bs = 32, 4
    q, _, _, cache8, cache, scales, meta = paged_step([1, 6, 23], [], heads, kv_heads, d, bs, name,
                                                      device=KERNEL_DEVICE, seed=5)
    got = paged_decode_attention(q, cache8[0], cache8[1], meta.block_tables, meta.context_lens, d ** -0.5, bs,
                                 block_n=16, kv_scales=scales.contiguous())
    want = attention(q.cpu(), None, None, cache[0].cpu(), cache[1].cpu(),
                     AttentionMetadata(slot_mapping=meta.slot_mapping.cpu(), num_decodes=3, block_size=bs,
                                       decode_context_slots=meta.decode_context_slots.cpu(),
                                       decode_context_lens=meta.decode_context_lens), d ** -0.5)
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)


def test_tensor_parallel_ranks_hold_their_heads_scales_and_give_the_same_tokens(tiny_model_dir, calibrated_scales):
    """TP=2 on CPU (gloo): each rank stores its KV head with that head's scales; tokens equal one process's."""
    from mlperf_llama2.parallel.tp_group import ShardSpec, start_tp_engine

    config = dataclasses.replace(COMPOSITIONS["chunked_prefill"], kv_cache_dtype="int8", cuda_graphs=False)
    scales = calibrated_scales["int8"]  # [2, L, 2]: the two KV heads have different scales
    assert not torch.equal(scales[:, :, 0], scales[:, :, 1])
    single = LLMEngine.from_pretrained(tiny_model_dir, config, "cpu", torch.float32, kv_scales=scales)
    want = single.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    spec = ShardSpec(world=2, port=0, base_device="cpu", dtype="float32", engine=dataclasses.asdict(config),
                     model_path=str(tiny_model_dir), kv_scales=scales.tolist())
    engine, group = start_tp_engine(spec)
    try:
        assert torch.equal(engine.runner.local.kv_scales, scales[:, :, :1].transpose(0, 1))  # rank 0: head 0
        got = engine.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    finally:
        group.shutdown()
    assert got == want
