"""Numeric edge cases of the open backend's quantizers (simulate path and int8/fp8 CPU references)."""

import pytest
import torch
from torch import nn

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant import fp8
from mlperf_llama2.quant.fake_quant import FakeQuantizer, Numerics, fake_quant, round_ints
from mlperf_llama2.quant.int8_linear import quantize_rows_reference
from mlperf_llama2.quant.open_backend import calibrate
from mlperf_llama2.quant.yaml_config import QuantizerSpec

BELOW_HALF = 0.49999997  # the largest float32 below 0.5


def test_half_away_rounds_the_float_just_below_half_to_zero():
    x = torch.tensor([BELOW_HALF, -BELOW_HALF, 0.5, -0.5, -1.5, -2.5, 2.5, 1.4999999], dtype=torch.float32)
    assert float(x[0]) < 0.5
    assert round_ints(x, "half_away").tolist() == [0.0, 0.0, 1.0, -1.0, -2.0, -3.0, 3.0, 1.0]
    assert round_ints(x, "half_even").tolist() == [0.0, 0.0, 0.0, 0.0, -2.0, -2.0, 2.0, 1.0]


def test_asymmetric_range_wider_than_float32_gives_no_nan():
    x = torch.tensor([-3e38, 3e38, 1.0, -2e38], dtype=torch.float32)
    y = fake_quant(x, x.amin(), x.amax(), 8, False, Numerics())
    assert torch.isfinite(y).all()
    step = 6e38 / 255
    assert ((y - x).abs() <= step).all()  # within one step (zero point rounding), as on ordinary ranges


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_zero_and_one_sided_tensors_quantize_without_nan(symmetric, dtype):
    for x in (torch.zeros(3, 5), -torch.rand(3, 5) - 0.1, torch.rand(3, 5) + 0.1):
        x = x.to(dtype)
        y = fake_quant(x, x.float().amin(1, keepdim=True), x.float().amax(1, keepdim=True), 8, symmetric, Numerics())
        assert torch.isfinite(y.float()).all()
        assert (y.float() - x.float()).abs().max() <= x.float().abs().max() / 100 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_rows_codes_match_simulate_for_every_dtype(dtype):
    x = torch.randn(6, 32).to(dtype)
    x[2] = 0  # an all-zero row: scale never 0, codes 0
    q, s = quantize_rows_reference(x)
    assert torch.isfinite(s).all() and (s > 0).all() and (q[2] == 0).all()
    sim = fake_quant(x, x.float().amin(1, keepdim=True), x.float().amax(1, keepdim=True), 8, True, Numerics())
    assert torch.equal((q.float() * s[:, None]).to(dtype), sim)


def test_fp8_saturates_at_448_and_zero_rows_stay_zero():
    assert fp8.to_fp8(torch.tensor([1000.0, -1000.0]), torch.tensor(1.0)).float().tolist() == [448.0, -448.0]
    y = fp8.fake_quant_rows_fp8(torch.tensor([[0.0, 0.0], [3e38, -1.0]]))
    assert torch.isfinite(y).all() and y[0].tolist() == [0.0, 0.0] and y[1, 0].item() == pytest.approx(3e38)


class _Probe(nn.Module):
    """A 'model' whose only slot is one static quantizer, fed the calibration ids scaled by `factor`."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.q = FakeQuantizer(QuantizerSpec(bits=8, symmetric=True, dynamic=False, dims=(), observer="MovingAverage"),
                               Numerics(), "model.probe.quantizer", "custom_quantization[0]")
        self.factor = factor

    def forward(self, ids):
        return self.q(ids.float() * self.factor)


@pytest.mark.parametrize("factor, word", [(float("inf"), "not finite"), (0.0, "zero")])
def test_calibration_refuses_a_non_finite_or_zero_range(factor, word):
    model = _Probe(factor)
    with pytest.raises(UserError, match=f"model.probe.quantizer .*{word}"):
        calibrate(model, [torch.ones(1, 4, dtype=torch.long)], torch.device("cpu"))


def test_moving_average_first_update_initialises_then_averages():
    model = _Probe(1.0)
    calibrate(model, [torch.tensor([[1, -2]]), torch.tensor([[3, -1]])], torch.device("cpu"))
    assert model.q.running_min.item() == pytest.approx(-2 + 0.01 * 1)
    assert model.q.running_max.item() == pytest.approx(1 + 0.01 * 2)
