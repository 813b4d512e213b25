"""Launching kept Triton kernels without Triton's per-call binding (engine/launch_cache.py).

On the CPU: the key is at least as fine as Triton's specialisation (what would pick another compiled kernel
picks another key), and `launch` with a stand-in kernel: the first launch of a signature goes through
`fn[grid]`, later ones call the kept kernel's launcher with every parameter in the signature's order, and the
cases that must not take the short path (disabled, hooks, callable grid, unknown argument) do not. On a GPU:
the real kernels write the same bits both ways, and an engine's tokens are the same."""

from __future__ import annotations

import pytest
import torch

from mlperf_llama2.engine import launch_cache
from mlperf_llama2.engine.launch_cache import arg_key, launch


@pytest.fixture
def cache():
    before = launch_cache.enabled()
    launch_cache.clear()
    yield launch_cache
    launch_cache.set_enabled(before)
    launch_cache.clear()


def test_tensor_keys_follow_dtype_and_16_byte_alignment():
    x = torch.zeros(64, dtype=torch.int8)
    assert arg_key(x) == arg_key(torch.zeros(32, dtype=torch.int8))
    assert arg_key(x) != arg_key(x.to(torch.float16))
    assert arg_key(x[1:]) != arg_key(x)  # one byte off: Triton drops the alignment hint, so must we
    assert arg_key(x[16:]) == arg_key(x)


@pytest.mark.parametrize("a,b", [(16, 17), (1, 2), (2 ** 31 - 16, 2 ** 31), (-16, 2 ** 63), (0, None), (True, False),
                                 (3, True)])
def test_values_triton_specialises_on_get_different_keys(a, b):
    assert arg_key(a) != arg_key(b)


def test_values_in_one_class_share_a_key():
    assert arg_key(32) == arg_key(4096) and arg_key(3) == arg_key(1001) and arg_key(0.5) == arg_key(1e-6)


class Desc:  # the attributes a host tensor descriptor carries
    def __init__(self, base, block, layout="L"):
        self.base, self.block_shape, self.layout, self.padding, self.shape = base, block, layout, "zero", base.shape


def test_descriptor_keys_follow_dtype_block_and_layout():
    x = torch.zeros(128, 128, dtype=torch.int8)
    assert arg_key(Desc(x, [64, 128])) == arg_key(Desc(torch.zeros(256, 128, dtype=torch.int8), [64, 128]))
    assert arg_key(Desc(x, [64, 128])) != arg_key(Desc(x, [128, 128]))
    assert arg_key(Desc(x, [64, 128])) != arg_key(Desc(x, [64, 128], layout="other"))
    assert arg_key(Desc(x, [64, 128])) != arg_key(Desc(x.to(torch.float16), [64, 128]))


def test_an_unknown_argument_has_no_key():
    with pytest.raises(launch_cache._NoKey):
        arg_key(object())


class FakeKernel:
    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.runs = []

    def run(self, *args):
        self.runs.append(args)


class FakeFn:
    """A stand-in for a JITFunction: its signature, and `fn[grid](...)` recording Triton's own launches."""

    def __init__(self):
        import inspect

        def kernel(x_ptr, n, eps, BLOCK=64, FLAG=False, MODE=0):  # noqa: ARG001
            pass

        self.signature = inspect.signature(kernel)
        self.kernel = FakeKernel()
        self.calls = []

    def __getitem__(self, grid):
        def go(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.kernel
        return go


class Chain:  # triton.knobs.HookChain's shape: the hooks in `calls`
    def __init__(self, calls):
        self.calls = calls


class FakeRuntime:
    launch_enter_hook = launch_exit_hook = None

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234 + device


@pytest.fixture
def fake(cache, monkeypatch):
    rt = FakeRuntime()
    monkeypatch.setattr(launch_cache, "_runtime", lambda: (rt, rt))
    cache.set_enabled(True)
    return FakeFn(), rt


def test_a_signature_seen_before_calls_the_kept_launcher(fake):
    fn, _ = fake
    x = torch.zeros(32)
    launch(fn, (4,), x, 128, 1e-5, FLAG=True, num_warps=4)
    assert len(fn.calls) == 1 and fn.kernel.runs == []
    launch(fn, (7, 2), x, 256, 3e-5, FLAG=True, num_warps=4)
    assert len(fn.calls) == 1
    # grid padded to 3, the stream, no launch metadata or hooks, then every parameter in order: the keyword
    # FLAG and the defaults BLOCK and MODE (num_warps is an option, not a parameter)
    assert fn.kernel.runs == [(7, 2, 1, 1234, "function", "packed", None, None, None, x, 256, 3e-5, 64, True, 0)]


@pytest.mark.parametrize("change", ["dtype", "misaligned", "int class", "keyword", "option"])
def test_another_specialisation_goes_through_triton(fake, change):
    fn, _ = fake
    x = torch.zeros(32)
    launch(fn, (4,), x, 128, 1e-5, FLAG=True, num_warps=4)
    args, kwargs = [x, 128, 1e-5], dict(FLAG=True, num_warps=4)
    if change == "dtype":
        args[0] = x.half()
    elif change == "misaligned":
        args[0] = x[1:]
    elif change == "int class":
        args[1] = 129
    elif change == "keyword":
        kwargs["FLAG"] = False
    else:
        kwargs["num_warps"] = 8
    launch(fn, (4,), *args, **kwargs)
    assert len(fn.calls) == 2 and fn.kernel.runs == []


def test_a_constexpr_given_positionally_keys_by_value(fake):
    fn, _ = fake
    fn.constexprs = [3]  # BLOCK, as Triton lists constexpr parameters by position
    x = torch.zeros(32)
    launch(fn, (4,), x, 128, 1e-5, 64)
    launch(fn, (4,), x, 128, 1e-5, 128)  # same class of int, another constexpr value: another kernel
    assert len(fn.calls) == 2 and fn.kernel.runs == []
    launch(fn, (4,), x, 256, 1e-5, 128)
    assert len(fn.calls) == 2 and fn.kernel.runs[0][9:] == (x, 256, 1e-5, 128, False, 0)


def test_the_kept_signatures_are_bounded(fake, cache, monkeypatch):
    fn, _ = fake
    monkeypatch.setattr(cache, "MAX_KEPT", 2)
    x = torch.zeros(32)
    for n in (16, 17, 1, 16, 1):  # three classes of n; only the first two are kept
        launch(fn, (4,), x, n, 1e-5)
    assert len(fn.calls) == 4 and len(fn.kernel.runs) == 1


def test_cases_that_must_not_take_the_short_path(fake, cache):
    fn, rt = fake
    x = torch.zeros(32)
    launch(fn, (4,), x, 128, 1e-5)
    launch(fn, lambda meta: (4,), x, 128, 1e-5)  # a grid computed from the bound arguments
    launch(fn, (4,), object(), 128, 1e-5)  # an argument the key does not know
    rt.launch_enter_hook = print  # a profiler reads launch metadata
    launch(fn, (4,), x, 128, 1e-5)
    rt.launch_enter_hook = Chain([print])  # Triton 3.6: a chain of hooks, here with one
    launch(fn, (4,), x, 128, 1e-5)
    rt.launch_enter_hook = Chain([])
    cache.set_enabled(False)
    launch(fn, (4,), x, 128, 1e-5)
    assert len(fn.calls) == 6 and fn.kernel.runs == []
    cache.set_enabled(True)
    launch(fn, (4,), x, 128, 1e-5)  # an empty chain of hooks is no hook
    assert len(fn.calls) == 6 and len(fn.kernel.runs) == 1


def test_without_an_active_driver_every_launch_goes_through_triton(fake, monkeypatch):
    fn, _ = fake
    monkeypatch.setattr(launch_cache, "_runtime", lambda: None)  # what _runtime says where Triton finds no GPU
    for _ in range(3):
        launch(fn, (4,), torch.zeros(32), 128, 1e-5)
    assert len(fn.calls) == 3 and fn.kernel.runs == []


def test_off_under_the_interpreter_and_by_environment(monkeypatch):
    import importlib

    for env, want in ((("TRITON_INTERPRET", "1"), False), ((launch_cache.ENV, "0"), False),
                      ((launch_cache.ENV, "Off"), False), ((launch_cache.ENV, "1"), True), (("X_UNSET", "1"), True)):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.delenv(launch_cache.ENV, raising=False)
        monkeypatch.setenv(*env)
        assert importlib.reload(launch_cache).enabled() is want, env
    monkeypatch.undo()
    importlib.reload(launch_cache)


# --- GPU: the real kernels, both ways -------------------------------------------------------------------------------

def _both_ways(cache, fn):
    """fn() with the short path off, then on (twice: the first on-launch keeps the kernel, the second uses it)."""
    cache.set_enabled(False)
    want = fn()
    cache.set_enabled(True)
    fn()
    before = cache.counts["fast"]
    got = fn()
    assert cache.counts["fast"] > before, "the second launch did not take the short path"
    return want, got


def _same_bits(want, got):
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(w.view(torch.uint8) if w.dtype.is_floating_point and w.element_size() == 1 else w,
                           g.view(torch.uint8) if g.dtype.is_floating_point and g.element_size() == 1 else g)


@pytest.mark.gpu
def test_fused_producers_write_the_same_bits(cache):
    from mlperf_llama2.engine.fused_quant_triton import add_rms_norm_quant, silu_mul_split
    from mlperf_llama2.quant.int8_kernels import _quantize_rows

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(37, 1024, device="cuda", dtype=torch.float16, generator=g)
    d = torch.randn_like(h)
    w = torch.rand(1024, device="cuda", dtype=torch.float16, generator=g)
    gu = torch.randn(37, 2 * 1536, device="cuda", dtype=torch.float16, generator=g)
    for kind in ("fp8", "int8"):
        _same_bits(*_both_ways(cache, lambda: add_rms_norm_quant(h, d, w, 1e-5, kind)))
        _same_bits(*_both_ways(cache, lambda: silu_mul_split(gu, kind)))
    _same_bits(*_both_ways(cache, lambda: _quantize_rows(h, torch.float8_e4m3fn)))


@pytest.mark.gpu
def test_paged_decode_writes_the_same_bits(cache):
    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    g = torch.Generator(device="cuda").manual_seed(1)
    bs, kv, d = 16, 8, 128
    k_cache = torch.randn(64 * bs, kv, d, device="cuda", dtype=torch.float16, generator=g)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(5, 64, d, device="cuda", dtype=torch.float16, generator=g)
    tables = torch.randperm(64, device="cuda", generator=g)[:40].view(5, 8).to(torch.int32)
    ctx = torch.tensor([1, 17, 60, 100, 128], dtype=torch.int32, device="cuda")
    _same_bits(*_both_ways(cache, lambda: paged_decode_attention(q, k_cache, v_cache, tables, ctx, d ** -0.5, bs)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="needs an sm_90 GPU")
@pytest.mark.parametrize("m", [8, 200])
def test_the_8bit_gemm_writes_the_same_bits(cache, m):
    from mlperf_llama2.quant.gemm8_ws import gemm8_ws

    g = torch.Generator(device="cuda").manual_seed(2)
    qx = torch.randn(m, 1024, device="cuda", generator=g).clamp(-400, 400).to(torch.float8_e4m3fn)
    qw = torch.randn(768, 1024, device="cuda", generator=g).clamp(-400, 400).to(torch.float8_e4m3fn)
    s_x = torch.rand(m, device="cuda", generator=g) + 0.5
    s_w = torch.rand(768, device="cuda", generator=g) + 0.5
    _same_bits(*_both_ways(cache, lambda: gemm8_ws(qx, qw, s_x, s_w, None, torch.float16)))


@pytest.mark.gpu
def test_direct_flash_call_equals_varlen_attn():
    from mlperf_llama2.engine import attention as att

    if att._flash_forward is None or att._varlen_attn is None:
        pytest.skip("this torch has no varlen_attn or no windowed FlashAttention op")
    g = torch.Generator(device="cuda").manual_seed(3)
    lens_q, lens_k = [30, 12, 1], [80, 12, 40]
    q = torch.randn(sum(lens_q), 64, 128, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(sum(lens_k), 8, 128, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn_like(k)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    meta = att.AttentionMetadata(slot_mapping=torch.zeros(0, device="cuda"), num_decodes=0, block_size=16,
                                 cu_seqlens_q=cu(lens_q), cu_seqlens_k=cu(lens_k), max_seqlen_q=max(lens_q),
                                 max_seqlen_k=max(lens_k))
    got = att._prefill(q, k, v, None, None, meta, 128 ** -0.5)
    extra = {"enable_gqa": True} if att._VARLEN_GQA else {}
    want = att._varlen_attn(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k,
                            scale=128 ** -0.5, window_size=(-1, 0), **extra)
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "fp8"])
@pytest.mark.parametrize("graphs", [False, True])
def test_tokens_are_the_same_without_the_short_path(tiny_model_dir, cache, quantization, graphs):
    from mlperf_llama2.engine.config import EngineConfig
    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.engine.sequence import SamplingParams
    from mlperf_llama2.quant.config import QuantConfig

    if quantization and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("fp8 needs sm_89+ (the engine's FP8 GEMM: sm_90)")
    quant = QuantConfig(quantization=quantization) if quantization else None
    prompts = [[1] + list(range(3, 3 + n)) for n in (4, 11, 30, 2, 57)]
    outs = []
    for flag in (False, True):
        cache.set_enabled(flag)
        # without CUDA graphs every step launches eagerly, so the short path is what the tokens come from; with
        # them (and flat steps up to 32 tokens), the graphs are captured through it after the warm-up launch
        config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=16, num_kv_blocks=64,
                              cuda_graphs=graphs, graph_mixed_tokens=32 if graphs else 0)
        before = cache.counts["fast"]
        engine = LLMEngine.from_pretrained(str(tiny_model_dir), config, "cuda", torch.float16, quant)
        outs.append(engine.generate(prompts, SamplingParams(12)))
        assert (cache.counts["fast"] > before) == flag
    assert outs[0] == outs[1]
