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
