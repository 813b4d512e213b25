"""W8A8 Linear computed for real: int8 weights, per-token dynamic int8 activations, exact int32 matmul.

    y[m, n] = (sum_k qx[m, k] * qw[n, k]) * s_x[m] * s_w[n]  (+ bias[n])

qx = round_half_even(x / s_x) clamped to [-127, 127] with s_x = absmax(x[m, :]) / 127 (float32), the
same arithmetic as simulate mode's FakeQuantizer, so the two modes differ only by the float
rounding of the final rescale. `s_w` is a per-output-column vector: a per-tensor weight scale
repeated, or, for fused projections (QKV, gate/up), each projection's own scale over its columns.

On CUDA: a Triton kernel quantizes the rows (one read of x, one int8 write), then by default
(`Int8Linear.gemm = "fused"`) one Triton int8 GEMM accumulates in int32 and applies s_x * s_w (+ bias)
in its epilogue while casting to the output dtype; `gemm = "int_mm"` runs `torch._int_mm` (M > 16: pad;
K, N multiples of 8) and a second Triton kernel for the rescale. Without Triton: `torch._int_mm` and the
rescale in torch.
On CPU the GEMM is an exact int64 matmul. API for the engine: `Int8Linear.from_float`,
`Int8Linear.fuse`, `Int8Linear.random` (docs/quantization.md).
"""

from __future__ import annotations

import functools
import logging
from typing import Optional, Sequence

import torch

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.activation import Quant8Linear
from mlperf_llama2.quant.fake_quant import symmetric_scale

logger = logging.getLogger(__name__)

QMAX = 127
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA needs M > 16


@functools.lru_cache(maxsize=1)
def triton_kernels():
    """The Triton kernel module on a CUDA machine that has Triton, else None (torch path)."""
    if not torch.cuda.is_available():
        return None
    try:
        from mlperf_llama2.quant import int8_kernels
    except Exception as exc:  # noqa: BLE001 - any Triton import failure means: use the torch path
        logger.warning("Triton kernels unavailable (%s); int8 Linear quantizes in eager torch", exc)
        return None
    return int8_kernels


def quantize_weight(weight: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight [N, K] -> (int8 [N, K], float32 scale [N]); per tensor unless per_channel."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.shape[0])
    scale = symmetric_scale(absmax, 8)  # [N]
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale.contiguous()


def quantize_rows_reference(x: torch.Tensor, absmax: Optional[torch.Tensor] = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (int8 [M, K], float32 scale [M]): per-token symmetric int8, round half to even.

    `absmax` [M]: each row's absolute maximum when it spans more than x (a row split over ranks)."""
    xf = x.float()
    scale = symmetric_scale(xf.abs().amax(dim=1) if absmax is None else absmax, 8)  # [M]
    q = torch.round(xf / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def int_matmul(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [N, K] -> exact int32 [M, N]."""
    if qx.is_cuda:
        m = qx.shape[0]
        if m < INT_MM_MIN_ROWS:
            qx = torch.nn.functional.pad(qx, (0, 0, 0, INT_MM_MIN_ROWS - m))
        return torch._int_mm(qx, qw.t())[:m]
    return (qx.to(torch.int64) @ qw.to(torch.int64).t()).to(torch.int32)  # exact: |sum| < K * 127^2


def rescale_reference(acc: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: Optional[torch.Tensor],
                      dtype: torch.dtype) -> torch.Tensor:
    """int32 [M, N] * s_x [M, 1] * s_w [1, N] (+ bias), in float32, cast to dtype."""
    y = acc.float() * s_x[:, None] * s_w[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


GEMM_PATHS = ("int_mm", "fused", "gemm8", "gemm8_ws")


class Int8Linear(Quant8Linear):
    """Drop-in for nn.Linear (y = x W^T + b) with int8 weights and per-token dynamic int8 activations.

    `gemm` (CUDA with Triton): "int_mm" = torch._int_mm then the Triton rescale; "fused" = one Triton
    int8 GEMM with the rescale in its epilogue; "gemm8" = the persistent, TMA-fed 8-bit GEMM
    (quant/gemm8_triton.py); "gemm8_ws" = its warp-specialised Gluon form (quant/gemm8_ws.py, sm_90). All give
    the same numbers (exact int32 sums, same float32 epilogue)."""

    act_kind = "int8"
    weight_dtype = torch.int8
    gemm: str = "fused"  # measured faster than "int_mm" at every 7B/70B shape and M (docs/quantization.md)

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 out_dtype: torch.dtype = torch.float16, split_sizes: Optional[Sequence[int]] = None) -> None:
        super().__init__(qweight, weight_scale, bias, out_dtype, split_sizes)
        if qweight.is_cuda and (self.out_features % 8 or self.in_features % 8):
            raise UserError(f"int8 Linear on CUDA needs in/out features that are multiples of 8, got "
                            f"{self.in_features}x{self.out_features}")

    @staticmethod
    def quantize_rows(x: torch.Tensor, absmax: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, K] float -> (int8 [M, K], scale [M]): one Triton pass per row on CUDA, torch elsewhere and when
        the row absmax is given (tensor parallel)."""
        kernels = triton_kernels() if x.is_cuda and absmax is None else None
        return kernels.quantize_rows(x) if kernels else quantize_rows_reference(x, absmax)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, per_channel: bool = False,
                   out_dtype: Optional[torch.dtype] = None) -> "Int8Linear":
        """Quantize a float weight [N, K] (per tensor, or per output channel)."""
        qweight, scale = quantize_weight(weight, per_channel)
        return cls(qweight, scale, bias, out_dtype or weight.dtype)

    @classmethod
    def fuse(cls, weights: Sequence[torch.Tensor], biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
             per_channel: bool = False, out_dtype: Optional[torch.dtype] = None) -> "Int8Linear":
        """Several projections of the same input (q/k/v, gate/up) as one GEMM; each keeps its own scale.

        The output is the projections' outputs concatenated along the last axis (`split_sizes`)."""
        parts = [quantize_weight(w, per_channel) for w in weights]
        bias = None
        if biases is not None and any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
                              for b, w in zip(biases, weights)])
        return cls(torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts]), bias,
                   out_dtype or weights[0].dtype, split_sizes=[w.shape[0] for w in weights])

    @classmethod
    def random(cls, in_features: int, out_features: int, device="cuda", out_dtype: torch.dtype = torch.float16,
               std: float = 0.02, generator: Optional[torch.Generator] = None) -> "Int8Linear":
        """Random int8 weights built in int8 directly (a 70B model never exists in fp16)."""
        qweight = torch.randint(-QMAX, QMAX + 1, (out_features, in_features), dtype=torch.int8, device=device,
                                generator=generator)
        scale = torch.full((out_features,), std * 3 ** 0.5 / QMAX, dtype=torch.float32, device=device)  # uniform std
        return cls(qweight, scale, None, out_dtype)

    def forward(self, x) -> torch.Tensor:
        """x: float [..., K], or a QuantizedActivation (int8 [M, K], scale [M]) from a quantizing producer."""
        lead, qx, s_x = self.quantized_input(x)
        kernels = triton_kernels() if qx.is_cuda else None
        if kernels and self.gemm == "gemm8":
            from mlperf_llama2.quant.gemm8_triton import gemm8

            y = gemm8(qx, self.qweight, s_x, self.weight_scale, self.bias, self.out_dtype, kind="int8")
            return y.reshape(*lead, self.out_features)
        if kernels and self.gemm == "gemm8_ws":
            from mlperf_llama2.quant.gemm8_ws import gemm8_ws

            y = gemm8_ws(qx, self.qweight, s_x, self.weight_scale, self.bias, self.out_dtype, kind="int8")
            return y.reshape(*lead, self.out_features)
        if kernels and self.gemm == "fused":
            y = kernels.fused_int8_matmul(qx, self.qweight, s_x, self.weight_scale, self.bias, self.out_dtype)
            return y.reshape(*lead, self.out_features)
        acc = int_matmul(qx, self.qweight)  # [M, N] int32
        if kernels:
            y = kernels.rescale(acc, s_x, self.weight_scale, self.bias, self.out_dtype)
        else:
            y = rescale_reference(acc, s_x, self.weight_scale, self.bias, self.out_dtype)
        return y.reshape(*lead, self.out_features)
