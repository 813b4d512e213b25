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
