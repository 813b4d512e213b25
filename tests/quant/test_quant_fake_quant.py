"""fake_quant: each quantizer does exactly what its spec and the documented Numerics say."""

import pytest
import torch

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fake_quant import FakeQuantizer, Numerics, fake_quant, reduce_axes
from mlperf_llama2.quant.yaml_config import QuantizerSpec


def spec(bits=8, symmetric=True, dynamic=True, dims=(), observer="MinMax"):
    return QuantizerSpec(bits=bits, symmetric=symmetric, dynamic=dynamic, dims=dims, observer=observer)


def quantizer(numerics=Numerics(), **kw):
    return FakeQuantizer(spec(**kw), numerics, "slot", "rule 0")


def test_symmetric_rounds_half_to_even_by_default_and_half_away_on_request():
    x = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -126.5])  # absmax 127 -> scale exactly 1
    assert quantizer()(x).tolist() == [127.0, 0.0, 2.0, 2.0, -2.0, -126.0]
    away = quantizer(Numerics(rounding="half_away"))(x)
    assert away.tolist() == [127.0, 1.0, 2.0, 3.0, -3.0, -127.0]


def test_static_range_clamps_to_narrow_or_full_int8():
    for narrow, low in ((True, -127.0), (False, -128.0)):
        q = quantizer(Numerics(narrow_range=narrow), dynamic=False)
        q.calibrating = True
        q(torch.tensor([-127.0, 127.0]))
        q.calibrating = False
        assert q(torch.tensor([-300.0, 300.0])).tolist() == [low, 127.0]


def test_per_token_q_scale_spans_the_batch_axis_unless_asked_not_to():
    q = torch.zeros(2, 3, 4, 5)  # [B, H, S, D]
    q[0, :, 1] = 0.3
    q[1, :, 1] = 100.0  # the same position of another sample is far larger
    shared = quantizer(dims=(0, -1, -3))(q)
    separate = quantizer(Numerics(batch_shared_scale=False), dims=(0, -1, -3))(q)
    assert shared[0, 0, 1, 0] == 0.0  # 0.3 < half a step of 100/127
    assert separate[0, 0, 1, 0] == pytest.approx(0.3)
    assert reduce_axes(4, (0, -1, -3), True) == (0, 1, 3)
    assert reduce_axes(4, (0, -1, -3), False) == (1, 3)
    assert reduce_axes(4, (0, -1, -2, -3), False) == (0, 1, 2, 3)  # per tensor stays per tensor


def test_dims_empty_means_one_scale_for_the_tensor_and_minus_one_means_per_row():
    x = torch.tensor([[1.0, 0.6], [127.0, 0.0]])
    per_tensor = quantizer(dims=())(x)
    per_row = quantizer(dims=(-1,))(x)
    assert per_tensor[0].tolist() == [1.0, 1.0]  # steps of 1.0 everywhere
    assert torch.allclose(per_row[0], torch.tensor([1.0, 0.6]), atol=1 / 127 / 2)


def test_moving_average_and_minmax_observers():
    ma = quantizer(Numerics(momentum=0.25), dynamic=False, observer="MovingAverage")
    mm = quantizer(dynamic=False)
    for q in (ma, mm):
        q.calibrating = True
        q(torch.tensor([-1.0, 2.0]))
        q(torch.tensor([-5.0, 10.0]))
        q.calibrating = False
    assert ma.running_min.item() == pytest.approx(-1.0 + 0.25 * (-5.0 + 1.0))
    assert ma.running_max.item() == pytest.approx(2.0 + 0.25 * (10.0 - 2.0))
    assert (mm.running_min.item(), mm.running_max.item()) == (-5.0, 10.0)


def test_calibration_passes_float_through_and_uncalibrated_static_is_an_error():
    q = quantizer(dynamic=False)
    with pytest.raises(UserError, match="never calibrated"):
        q(torch.ones(3))
    q.calibrating = True
    x = torch.tensor([0.123, 1.0])
    assert torch.equal(q(x), x)


def test_asymmetric_keeps_zero_exact_and_error_below_half_a_step():
    torch.manual_seed(0)
    x = torch.rand(1000) * 3 + 0.5  # all positive
    x[0] = 0.0
    y = fake_quant(x, x.min(), x.max(), 8, False, Numerics())
    step = (x.max() - 0) / 255
    assert y[0] == 0.0
    assert (y - x).abs().max() <= step / 2 + 1e-6


def test_sixteen_bit_quantization_is_computed_in_float32_on_half_models():
    x = torch.linspace(-3, 3, 101, dtype=torch.float16)
    y = quantizer(bits=16)(x)
    assert y.dtype == torch.float16
    expected = (torch.round(x.float() / (3.0 / 32767)) * (3.0 / 32767)).half()
    assert torch.equal(y, expected)
