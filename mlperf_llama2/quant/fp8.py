"""FP8 (E4M3) numerics of `--quantization fp8`, shared by the engine (real FP8 GEMMs) and the simulate path.

    weights:     qw = e4m3(w / s_w[n]),   s_w[n] = absmax(w[n, :]) / 448   (per output channel, at load)
    activations: qx = e4m3(x / s_x[m]),   s_x[m] = absmax(x[m, :]) / 448   (per token, dynamic)
    y[m, n] = (sum_k qx[m, k] * qw[n, k]) * s_x[m] * s_w[n]  (+ bias[n]), accumulated in float32

Division is float32 and correctly rounded; the cast to e4m3 rounds to nearest even and saturates at
±448 (the clamp comes first, so no value becomes NaN). Products of two e4m3 values are exact in
float32, so the only differences between the engine's GEMM and `fake_quant_linear` (simulate:
dequantize, then a float32 matmul) are float32 summation order and the place of the rescale.

`Fp8Linear` is the engine's drop-in for nn.Linear. Its GEMM (`gemm`):
  * "scaled_mm": cuBLASLt through `torch._scaled_mm` with row-wise scales (CUDA);
  * "scaled_mm_fast_accum": the same with Hopper's reduced-precision accumulation (`--fp8-accumulation fast`);
  * "gemm8": the project's persistent Triton GEMM (quant/gemm8_triton.py), promoting to float32 every 128 of K;
  * "gemm8_ws": its warp-specialised Gluon form (quant/gemm8_ws.py, sm_90; `--engine-gemm auto` there): its tile
    depends on M (gemm8_ws.TILES), and every tile gives gemm8's numbers bit for bit (tests/test_gemm8_ws_gpu.py),
    so a sequence's numbers do not depend on the batch it runs in;
  * "gemm8_fast" / "gemm8_ws_fast": gemm8 / gemm8_ws without promotion (`--fp8-accumulation fast`: the tensor
    cores' own accumulation over all of K; a named option, its accuracy cost measured);
  * "reference": the float32 matmul of the e4m3 values, then the rescale (CPU, and any device).
On CUDA the activations are quantized by one Triton pass per row (int8_kernels.quantize_rows_fp8).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.quant.activation import Quant8Linear

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
_TINY = torch.finfo(torch.float32).tiny


def fp8_scale(absmax: torch.Tensor) -> torch.Tensor:
    """float32 scale = absmax / 448, never zero (an all-zero row quantizes to zeros)."""
    divisor = torch.full((), FP8_MAX, dtype=torch.float32, device=absmax.device)
    return (absmax.float() / divisor).clamp_min(_TINY)


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3(x / scale) with saturation; `scale` broadcasts against x."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_weight_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight [N, K] -> (e4m3 [N, K], float32 scale [N]), one scale per output channel."""
    w = weight.detach().float()
    scale = fp8_scale(w.abs().amax(dim=1))  # [N]
    return to_fp8(w, scale[:, None]), scale.contiguous()


def quantize_rows_fp8(x: torch.Tensor, absmax: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scale [M]), one dynamic scale per token.

    `absmax` [M]: each row's absolute maximum when it spans more than x (a row split over ranks)."""
    xf = x.float()
    scale = fp8_scale(xf.abs().amax(dim=1) if absmax is None else absmax)  # [M]
    return to_fp8(xf, scale[:, None]), scale


def fake_quant_rows_fp8(x: torch.Tensor) -> torch.Tensor:
    """Per-token quantize -> dequantize over the last axis, in float32 (any leading shape)."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = quantize_rows_fp8(x2)
    return (q.float() * s[:, None]).reshape(x.shape)


def fake_quant_linear(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                      bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """The simulate path: dequantized activations and weights, a float32 matmul, cast to out_dtype."""
    w = qweight.float() * weight_scale[:, None]  # [N, K]
    y = fake_quant_rows_fp8(x) @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def reference_gemm(qx: torch.Tensor, s_x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """float32 GEMM of the e4m3 values [M, K] x [N, K], then * s_x[m] * s_w[n] (+ bias), cast to out_dtype."""
    y = (qx.float() @ qweight.float().t()) * s_x[:, None] * weight_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def scaled_mm_gemm(qx: torch.Tensor, s_x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: Optional[torch.Tensor], out_dtype: torch.dtype, fast_accum: bool = False) -> torch.Tensor:
    """cuBLASLt FP8 GEMM with row-wise scales (float32 accumulation unless `fast_accum`)."""
    y = torch._scaled_mm(qx, qweight.t(), scale_a=s_x[:, None].contiguous(), scale_b=weight_scale[None, :],
                         out_dtype=out_dtype, use_fast_accum=fast_accum)
    return y if bias is None else y + bias


GEMM_PATHS = ("scaled_mm", "scaled_mm_fast_accum", "gemm8", "gemm8_fast", "gemm8_ws", "gemm8_ws_fast",
              "reference")
FAST_PATHS = {"scaled_mm": "scaled_mm_fast_accum", "gemm8": "gemm8_fast", "gemm8_ws": "gemm8_ws_fast"}


def _triton_kernels():
    """The Triton quantizer on a CUDA machine with Triton (one pass per token row), else None (torch)."""
    from mlperf_llama2.quant.int8_linear import triton_kernels

    return triton_kernels()


class Fp8Linear(Quant8Linear):
    """Drop-in for nn.Linear (y = x W^T + b) with e4m3 weights per channel and per-token e4m3 activations."""

    act_kind = "fp8"
    weight_dtype = FP8_DTYPE
    gemm: str = "scaled_mm"  # on CUDA; CPU always runs "reference"

    @staticmethod
    def quantize_rows(x: torch.Tensor, absmax: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, K] float -> (e4m3 [M, K], scale [M]): one Triton pass per row on CUDA, torch elsewhere and when
        the row absmax is given (tensor parallel)."""
        kernels = _triton_kernels() if x.is_cuda and absmax is None else None
        return kernels.quantize_rows_fp8(x) if kernels is not None else quantize_rows_fp8(x, absmax)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   out_dtype: Optional[torch.dtype] = None) -> "Fp8Linear":
        qweight, scale = quantize_weight_fp8(weight)
        return cls(qweight, scale, bias, out_dtype or weight.dtype)

    def forward(self, x) -> torch.Tensor:
        """x: float [..., K], or a QuantizedActivation (e4m3 [M, K], scale [M]) from a quantizing producer."""
        lead, qx, s_x = self.quantized_input(x)
        if qx.is_cuda and self.gemm in ("gemm8", "gemm8_fast"):
            from mlperf_llama2.quant.gemm8_triton import MAX_PROMOTE, gemm8

            y = gemm8(qx, self.qweight, s_x, self.weight_scale, self.bias, self.out_dtype, kind="fp8",
                      promote_every=0 if self.gemm == "gemm8_fast" else MAX_PROMOTE)
        elif qx.is_cuda and self.gemm in ("gemm8_ws", "gemm8_ws_fast"):
            from mlperf_llama2.quant.gemm8_ws import MAX_PROMOTE, gemm8_ws

            y = gemm8_ws(qx, self.qweight, s_x, self.weight_scale, self.bias, self.out_dtype, kind="fp8",
                         promote_every=0 if self.gemm == "gemm8_ws_fast" else MAX_PROMOTE)
        elif qx.is_cuda and self.gemm != "reference":
            y = scaled_mm_gemm(qx, s_x, self.qweight, self.weight_scale, self.bias, self.out_dtype,
                               fast_accum=self.gemm == "scaled_mm_fast_accum")
        else:
            y = reference_gemm(qx, s_x, self.qweight, self.weight_scale, self.bias, self.out_dtype)
        return y.reshape(*lead, self.out_features)


class Fp8SimulatedLinear(nn.Module):
    """Simulate path (`--quantization fp8 --backend reference`): `fake_quant_linear` in place of an nn.Linear."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        qweight, scale = quantize_weight_fp8(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", qweight)  # [N, K] e4m3
        self.register_buffer("weight_scale", scale)  # [N]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_linear(x, self.qweight, self.weight_scale, self.bias, self.out_dtype)


@torch.no_grad()
def simulate_fp8(model: nn.Module, keep: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every nn.Linear of a transformers model but those named `keep` by its FP8 simulation."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rpartition(".")[2] not in keep]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Fp8SimulatedLinear(linear))
    log.info("fp8 simulate: %d Linears fake-quantized to E4M3 (weights per channel, activations per token); "
             "%s in the model dtype", len(targets), ", ".join(keep))
    return len(targets)
