"""Every elementwise Triton kernel that claims eager torch's roundings is launched with enable_fp_fusion=False.

By default Triton lets the compiler contract a product and a sum into one fma (FFMA, or HFMA2 in fp16): one
rounding fewer than torch's two ops. Compiled for sm_90 (tools/kernel_sass.py), the fp32 RoPE had 8 contracted
FFMA and the fp16 whole-config add+RMSNorm 80; run whole on CUDA their bit-for-bit tests failed. This records each
wrapper's launch options instead of running the kernel, so it needs triton importable but neither a GPU nor the
interpreter.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlperf_llama2.engine import fused_quant_triton, fused_triton, whole_config_triton  # noqa: E402
from triton_device import record_launches  # noqa: E402


def _launch_options(monkeypatch, kernels: dict, call) -> dict:
    """{name: launch kwargs} of each kernel in `kernels` ({name: JITFunction}) that `call` launches."""
    seen = record_launches(monkeypatch, kernels)
    call()
    return {name: launches[0][1] for name, launches in seen.items() if launches}


T, N, H, KV, D = 3, 64, 4, 2, 16


def _scales(n):
    return torch.ones(n, dtype=torch.float32)


CASES = {
    "add_rms_norm": (fused_triton, "_add_rms_norm_kernel",
                     lambda: fused_triton.add_rms_norm(torch.randn(T, N), torch.randn(T, N), torch.ones(N), 1e-5)),
    "rope_store": (fused_triton, "_rope_store_kernel",
                   lambda: fused_triton.rope_store(torch.randn(T, (H + 2 * KV) * D), torch.arange(T),
                                                   torch.ones(8, D), torch.zeros(8, D), torch.zeros(10, KV, D),
                                                   torch.zeros(10, KV, D), torch.arange(T), H, KV, D)),
    "silu_mul": (fused_triton, "_silu_mul_kernel", lambda: fused_triton.silu_mul(torch.randn(T, 2 * N))),
    "add_rms_norm_quant": (fused_quant_triton, "_add_rms_norm_quant_kernel",
                           lambda: fused_quant_triton.add_rms_norm_quant(torch.randn(T, N), None, torch.ones(N),
                                                                         1e-5, "int8")),
    "silu_mul_quant": (fused_quant_triton, "_silu_mul_values_kernel _quant_values_kernel",
                       lambda: fused_quant_triton.silu_mul_quant(torch.randn(T, 2 * N), "fp8")),
    "add_rms_norm_q8": (whole_config_triton, "_add_rms_norm_q8_kernel",
                        lambda: whole_config_triton.add_rms_norm_q8(torch.randn(T, N), torch.randn(T, N),
                                                                    torch.ones(N), 1e-5)),
    "rope_store_q8": (whole_config_triton, "_rope_store_q8_kernel",
                      lambda: whole_config_triton.rope_store_q8(
                          torch.randn(T, (H + 2 * KV) * D), torch.arange(T), torch.ones(8, D), torch.zeros(8, D),
                          torch.zeros(10, KV, D, dtype=torch.int8), torch.zeros(10, KV, D, dtype=torch.int8),
                          torch.arange(T), H, KV, D, _scales(4), _scales(2 * KV))),
    "silu_mul_q8": (fused_quant_triton, "_silu_mul_values_kernel _quant_values_kernel",
                    lambda: whole_config_triton.silu_mul_q8(torch.randn(T, 2 * N), _scales(1), _scales(2))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_kernels_are_launched_without_fp_contraction(monkeypatch, name):
    module, kernel_names, call = CASES[name]
    kernels = {k: getattr(module, k) for k in kernel_names.split()}
    options = _launch_options(monkeypatch, kernels, call)
    assert sorted(options) == sorted(kernels), f"{name} launched {sorted(options)}"
    for kernel_name, kwargs in options.items():
        assert kwargs.get("enable_fp_fusion") is False, f"{name} launches {kernel_name} with {sorted(kwargs)}"
