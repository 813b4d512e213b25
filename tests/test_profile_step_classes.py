"""tools/profile_step.py's kernel classes: every Triton/Gluon kernel the engine defines lands in the class of the
work it does, so a step profile's GEMM / attention / elementwise split counts a new kernel where it belongs."""

from __future__ import annotations

import re
import sys

import pytest

from loadgen_fixtures import REPO

sys.path.insert(0, str(REPO / "tools"))
import profile_step  # noqa: E402

# the engine's kernel modules by the class of their kernels
MODULE_CLASSES = {
    "engine/paged_decode_triton.py": "attention",
    "engine/whole_config_decode_triton.py": "attention",
    "engine/whole_config_prefill_triton.py": "attention",
    "engine/fused_triton.py": "elementwise",
    "engine/fused_quant_triton.py": "elementwise",
    "engine/whole_config_triton.py": "elementwise",
    "quant/gemm8_triton.py": "gemm",
    "quant/gemm8_ws.py": "gemm",
}


def kernels_of(path):
    """Names of the functions under @triton.jit / @gluon.jit that end in _kernel (what the profiler shows)."""
    src = path.read_text()
    return re.findall(r"@(?:triton|gluon)\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+_kernel)\(", src)


@pytest.mark.parametrize("module", sorted(MODULE_CLASSES))
def test_each_engine_kernel_is_counted_in_its_class(module):
    names = kernels_of(REPO / "mlperf_llama2" / module)
    assert names, f"no kernel found in {module}"
    wrong = {n: profile_step.kernel_class(n) for n in names if profile_step.kernel_class(n) != MODULE_CLASSES[module]}
    assert not wrong, f"{module}: {wrong} (expected {MODULE_CLASSES[module]})"


def test_int8_kernels_split_between_gemm_and_its_quantizers():
    names = set(kernels_of(REPO / "mlperf_llama2" / "quant" / "int8_kernels.py"))
    assert {"_int8_gemm_kernel", "_quant_rows_kernel"} <= names
    assert profile_step.kernel_class("_int8_gemm_kernel") == "gemm"
    assert profile_step.kernel_class("_quant_rows_kernel") == "elementwise"


def test_library_kernels_by_name():
    assert profile_step.kernel_class("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>") == \
        "attention"
    assert profile_step.kernel_class("nvjet_sm90_hsh_256x128_64x4_1x2_h_bz_coopA_TNT") == "gemm"
    assert profile_step.kernel_class("Memcpy HtoD (Pinned -> Device)") == "other"
