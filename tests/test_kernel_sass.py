"""tools/kernel_sass.py: a project kernel compiled for sm_90 on a machine without a GPU, its report read from the
SASS Triton's own ptxas/nvdisasm produce; bad input is one line. The compile needs triton importable and not in
interpreter mode (so it skips in the CPU-only CI venv and under TRITON_INTERPRET=1, and runs on the GPU machine
or any machine with the triton wheel)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import kernel_sass  # noqa: E402
from mlperf_llama2.errors import run_cli  # noqa: E402

COMPILES = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter compiles nothing")


def test_a_spec_without_a_kernel_name_is_one_line(capsys):
    assert run_cli(kernel_sass.main, ["mlperf_llama2.engine.fused_triton"]) == 2
    err = capsys.readouterr().err.strip()
    assert "kernel_sass:" in err and "\n" not in err  # no triton: says so; else: module:name


@COMPILES
def test_add_rms_norm_compiles_for_sm90_without_spills():
    pytest.importorskip("triton")
    from mlperf_llama2.engine import fused_triton

    result = kernel_sass.report(fused_triton._add_rms_norm_kernel, {"HAS_DELTA": True, "BLOCK": 8192,
                                                                    "INTERPRET": False}, {}, 90, 16, 2)
    assert result["arch"] == "sm_90" and 0 < result["registers"] <= 255
    assert result["stack_bytes"] == 0 and result["instructions"] > 50
    assert result["mix"].get("MUFU", 0) >= 1  # rsqrtf: the special-function unit
    assert "FFMA" in result["sass"]


@COMPILES
def test_missing_constexprs_and_unknown_parameters_are_named(capsys):
    pytest.importorskip("triton")
    spec = "mlperf_llama2.engine.fused_triton:_add_rms_norm_kernel"
    assert run_cli(kernel_sass.main, [spec, "--const", "HAS_DELTA=1"]) == 2
    assert "give every constexpr of _add_rms_norm_kernel with --const: ['BLOCK', 'INTERPRET']" in \
        capsys.readouterr().err
    assert run_cli(kernel_sass.main, [spec, "--const", "HAS_DELTA=1", "BLOCK=1024", "INTERPRET=0",
                                      "--ptr", "q_ptr=i8"]) == 2
    assert "has no parameter ['q_ptr']" in capsys.readouterr().err


@COMPILES
def test_whole_config_decode_stores_its_scores_in_16_byte_accesses():
    """The scores buffer holds whole tiles, so pass 1 stores without a mask along keys: a thread's scores in one
    16-byte store, not eight 2-byte ones. Pass 2 keeps masked synchronous loads (measured faster than the
    async copies an unmasked load becomes)."""
    pytest.importorskip("triton")
    import triton.language as tl

    from mlperf_llama2.engine import whole_config_decode_triton as wcd

    consts = {"GROUP": 8, "BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": 128, "HAS_MASK_Q": True,
              "DT": tl.float16, "INTERPRET": False, "VEC_TABLE": True, "SCORES": True}
    ptrs = {"q_ptr": "i8", "qs_ptr": "fp32", "k_cache_ptr": "i8", "v_cache_ptr": "i8", "block_tables_ptr": "i32",
            "context_lens_ptr": "i32", "scales_ptr": "fp32", "m_ptr": "fp32", "l_ptr": "fp32", "s_buf_ptr": "fp16",
            "out_ptr": "fp16"}
    stats = kernel_sass.report(wcd._stats_kernel, consts, {k: v for k, v in ptrs.items() if k in
                                                            {p.name for p in wcd._stats_kernel.params}}, 90, 4, 3)
    pv = kernel_sass.report(wcd._pv_kernel, {**consts, "BLOCK_H": 64, "HAS_OUT_Q": True}, ptrs, 90, 4, 3)
    assert "STG.E.U16" not in stats["sass"] and "STG.E.128" in stats["sass"]
    assert "LDG.E.U16" in pv["sass"]


_PTR = {"torch.int8": "i8", "torch.int32": "i32", "torch.int64": "i64", "torch.float32": "fp32",
        "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def _compile_specs(kernel, launches) -> list:
    """(kernel, constexprs, pointer dtypes, warps, stages) of each recorded launch (triton_device.record_launches),
    for kernel_sass.report."""
    specs = []
    for args, kwargs in launches:
        ptrs = {name: _PTR[str(a.dtype)] for name, a in zip(kernel.arg_names, args)
                if name.endswith("_ptr") and hasattr(a, "dtype")}
        consts = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        specs.append((kernel, consts, ptrs, kwargs.get("num_warps", 4), kwargs.get("num_stages", 2)))
    return specs


@COMPILES
def test_the_whole_config_attention_launches_of_the_cpu_tests_compile_for_sm90(monkeypatch):
    """The interpreter runs an int8 tl.dot of any size; sm_90 needs a reduction dimension K >= 32 (a GPU run of
    session 20 failed 12 decode tests written at head_dim 16 and tiles of 16 keys). So the shapes the CPU tests
    launch (head_dim 32, tiles of 32; prefill pads smaller heads and tiles to 32) must compile for sm_90, and
    head_dim 16 must not (that is why decode_q8 refuses it in one line)."""
    pytest.importorskip("triton")
    import torch
    from triton.compiler.errors import CompilationError

    from mlperf_llama2.engine import whole_config_decode_triton as wcd
    from mlperf_llama2.engine import whole_config_prefill_triton as wcp
    from triton_device import record_launches

    kernels = {k: getattr(wcd, k) for k in ("_stats_kernel", "_pv_kernel")}
    kernels.update({k: getattr(wcp, k) for k in ("_pass1_kernel", "_pass2_kernel")})
    seen = record_launches(monkeypatch, kernels)
    b, h, kv, d, block, width = 3, 6, 2, 32, 4, 10
    bt = torch.arange(b * width, dtype=torch.int32).view(b, width)
    args = (torch.zeros(b, h, d, dtype=torch.int8), torch.ones(b), torch.zeros(b * width * block, kv, d,
            dtype=torch.int8), torch.zeros(b * width * block, kv, d, dtype=torch.int8), bt,
            torch.tensor([1, 13, 40], dtype=torch.int32), d ** -0.5, block, torch.ones(2, kv))
    wcd.decode_q8(*args, 1e-3, 1e-4, torch.float32, block_n=32, config="base")
    wcd.decode_q8(*args, 1e-3, 1e-4, torch.float16)  # the engine's default variant
    for (h, kv, d), dt in (((4, 2, 16), torch.float16), ((3, 3, 8), torch.float32)):
        t = 9
        cu = torch.tensor([0, t], dtype=torch.int32)
        i8 = dict(dtype=torch.int8)
        wcp.prefill_q8(torch.zeros(t, h, d, **i8), torch.ones(t), torch.zeros(t, kv, d, **i8),
                       torch.zeros(t, kv, d, **i8), cu, cu, t, t, d ** -0.5, torch.ones(2, kv), 1e-3, 1e-4, dt,
                       block_m=8, block_n=16)
    launches = [spec for name, kernel in kernels.items() for spec in _compile_specs(kernel, seen[name])]
    assert len(launches) == 8
    for kernel, consts, ptrs, warps, stages in launches:
        assert min(consts.get("BLOCK_D", consts.get("HEAD_DIM")), consts["BLOCK_N"]) >= 32
        result = kernel_sass.report(kernel, consts, ptrs, 90, warps, stages)
        assert result["tensor_core_ops"] > 0 and "IMMA" in result["sass"], kernel.__name__  # the int8 dots
    kernel, consts, ptrs, warps, stages = next(spec for spec in launches if spec[0] is wcd._pv_kernel)
    # decode pass 2 at head_dim 16: no sm_90 int8 dot
    with pytest.raises(CompilationError):
        kernel_sass.report(kernel, {**consts, "HEAD_DIM": 16}, ptrs, 90, warps, stages)


@COMPILES
@pytest.mark.parametrize("cache", ["fp8e4nv", "i8", "fp16"])
def test_paged_rows_kernel_compiles_for_sm90_without_spills(cache):
    """The flat steps' attention at Llama-2-70B's shapes (GQA 8, head 128, 8 rows a program: a 64-row MMA tile)."""
    pytest.importorskip("triton")
    from mlperf_llama2.engine import paged_decode_triton as pd

    consts = dict(GROUP=8, ROWS=8, BLOCK_G=64, HEAD_DIM=128, BLOCK_SIZE=16,
                  BLOCK_N=pd.ROWS_BLOCK_N if cache == "fp16" else pd.ROWS_BLOCK_N_8BIT,
                  MAGIC=cache == "i8", IEEE=False, QUANT=cache != "fp16")
    ptrs = {"k_cache_ptr": cache, "v_cache_ptr": cache, "block_tables_ptr": "i32", "groups_ptr": "i32",
            "scales_ptr": "fp32"}
    result = kernel_sass.report(pd._paged_rows_kernel, consts, ptrs, 90, pd.ROWS_NUM_WARPS, pd.ROWS_NUM_STAGES)
    assert result["stack_bytes"] == 0 and result["local_bytes"] == 0 and 0 < result["registers"] <= 255
    assert result["tensor_core_ops"] > 0  # both dots on the tensor cores
