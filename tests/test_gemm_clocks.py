"""tools/gemm_clocks.py's and tools/gpu_clock.py's CPU side: nvidia-smi sample parsing, the clock-event reasons, the point grammar and
its errors, and the arithmetic of the two peak fractions. The sustained load itself needs a GPU
(tools/gpu/verify_head.sh, step clocks)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import gemm_clocks  # noqa: E402
import gpu_clock  # noqa: E402
from mlperf_llama2.errors import UserError  # noqa: E402


def test_parse_sample_reads_hex_reasons_and_rejects_non_samples():
    s = gpu_clock.parse_sample("1755, 699.12, 61, 0x0000000000000004, 700.00\n")
    assert s == {"mhz": 1755.0, "watts": 699.12, "celsius": 61.0, "reasons": 4, "watts_limit": 700.0}
    assert gpu_clock.parse_sample("1980, 120.5, 40, 0, 1000.00\n")["reasons"] == 0
    # a card that does not report its limit still gives a sample, its limit unknown
    assert gpu_clock.parse_sample("1980, 120.5, 40, 0x0, [N/A]")["watts_limit"] is None
    for line in ("", "\n", "[N/A], 100, 40, 0x0, 700", "Field \"clocks_event_reasons.active\" is not a valid field",
                 "1980, 120.5, 40, 0x0", "1980, 120.5, 40"):
        assert gpu_clock.parse_sample(line) is None


def test_reason_names_decodes_bits_and_keeps_unknown_ones():
    assert gpu_clock.reason_names(0) == []
    assert gpu_clock.reason_names(0x4) == ["SwPowerCap"]
    assert gpu_clock.reason_names(0x4 | 0x20) == ["SwPowerCap", "SwThermalSlowdown"]
    assert gpu_clock.reason_names(0x4 | 0x1000) == ["SwPowerCap", "0x1000"]


def test_spec_clock_reproduces_the_1979_tops_peak():
    # the constant the fractions rest on: 132 SMs x 8,192 8-bit ops a clock x SPEC_MHZ = the datasheet's 1,979
    spec = 132 * gemm_clocks.OPS_PER_CLOCK["8bit"] * gemm_clocks.SPEC_MHZ * 1e6 / 1e12
    assert spec == pytest.approx(gemm_clocks.bench_gemm.PEAK_8BIT_TOPS, rel=1e-3)


def test_summarize_fractions_follow_the_measured_clock():
    samples = [{"mhz": 1500.0, "watts": 690.0, "celsius": 60.0, "reasons": 0x4},
               {"mhz": 1600.0, "watts": 700.0, "celsius": 62.0, "reasons": 0x0},
               {"mhz": 1700.0, "watts": 695.0, "celsius": 61.0, "reasons": 0x4}]
    ops = 1.2e15  # 1,200 TOPS over one second
    row = gemm_clocks.summarize(samples, ops, 1.0, sms=132, ops_per_clock=8192)
    assert row["tops"] == pytest.approx(1200.0)
    assert row["mhz_median"] == 1600.0 and row["mhz_min"] == 1500.0 and row["mhz_max"] == 1700.0
    assert row["watts_median"] == 695.0 and row["reasons"] == ["SwPowerCap"]
    at_clock = 132 * 8192 * 1600e6 / 1e12
    assert row["peak_at_clock_tops"] == pytest.approx(at_clock)
    assert row["frac_clock_peak"] == pytest.approx(1200.0 / at_clock)
    assert row["frac_spec_peak"] == pytest.approx(1200.0 / (132 * 8192 * 1830e6 / 1e12))
    # below the spec clock the clock fraction is the larger one; without samples only the spec fraction exists
    assert row["frac_clock_peak"] > row["frac_spec_peak"]
    bare = gemm_clocks.summarize([], ops, 1.0, sms=132, ops_per_clock=8192)
    assert "frac_clock_peak" not in bare and bare["samples"] == 0


def test_points_parse_and_bad_ones_are_one_line():
    assert gemm_clocks.parse_points("ws_fp8:gate_up:4096, fp16:o:512:outlier") == [
        ("ws_fp8", "gate_up", 4096, "gauss"), ("fp16", "o", 512, "outlier")]
    assert gemm_clocks.parse_points("ws_fp8@128x128s6p1w2d2:down:256")[0][0] == "ws_fp8@128x128s6p1w2d2"
    assert gemm_clocks.parse_points("ws_int8:o:64:zeros")[0][3] == "zeros"
    for bad in ("ws_fp8:gate_up", "ws_fp8:mlp:4096", "ws_fp8:gate_up:0", "nope:gate_up:64", "fp16@128x128s5p1:o:64",
                "ws_fp8:o:64:uniform", "ws_fp8:o:64:gauss:x", ""):
        with pytest.raises(UserError):
            gemm_clocks.parse_points(bad)
    with pytest.raises(UserError, match=r"^--points 'nope:o:4': unknown nope; choose from"):
        gemm_clocks.parse_points("nope:o:4")
    default = gemm_clocks.parse_points(gemm_clocks.DEFAULT_POINTS)
    assert len(default) >= 3


def test_args_bounds():
    for argv in (["--seconds", "0.5"], ["--seconds", "500"], ["--interval-ms", "5"]):
        with pytest.raises(UserError):
            gemm_clocks.parse_args(argv + ["--out", "x"])


def test_format_table_names_the_clock_or_its_absence():
    row = {"kernel": "ws_fp8", "shape": "gate_up", "M": 4096, **gemm_clocks.summarize(
        [{"mhz": 1755.0, "watts": 700.0, "celsius": 60.0, "reasons": 4}], 1.4e15, 1.0, 132, 8192)}
    bare = {"kernel": "fp16", "shape": "o", "M": 64, **gemm_clocks.summarize([], 1e14, 1.0, 132, 4096)}
    err = {"kernel": "ws_int8", "shape": "o", "M": 64, "error": "RuntimeError: x"}
    table = gemm_clocks.format_table([row, bare, err])
    assert "1755" in table and "SwPowerCap" in table and "no nvidia-smi samples" in table and "error: Runtime" in table
    limited = {"kernel": "ws_fp8", "shape": "o", "M": 64, "data": "outlier", **gemm_clocks.summarize(
        [{"mhz": 1500.0, "watts": 998.0, "celsius": 60.0, "reasons": 4, "watts_limit": 1000.0}], 1e15, 1.0, 132, 8192)}
    line = gemm_clocks.format_table([limited]).splitlines()[-1]
    assert " outlier " in line and " 998  1000 " in line


def test_clock_stats_and_line():
    assert gpu_clock.clock_stats([]) == {} and gpu_clock.stats_line({}) == ""
    stats = gpu_clock.clock_stats([{"mhz": 1980.0, "watts": 400.0, "celsius": 50.0, "reasons": 0},
                                   {"mhz": 1455.0, "watts": 699.0, "celsius": 58.0, "reasons": 0x4},
                                   {"mhz": 1650.0, "watts": 640.0, "celsius": 55.0, "reasons": 0x4}])
    assert stats["mhz_median"] == 1650.0 and stats["mhz_min"] == 1455.0 and stats["mhz_max"] == 1980.0
    assert stats["watts_median"] == 640.0 and stats["celsius_max"] == 58.0 and stats["reasons"] == ["SwPowerCap"]
    assert stats["watts_limit"] is None  # samples without a limit (older callers' stand-ins) name none
    assert gpu_clock.stats_line(stats) == ("SM clock median 1,650 MHz (1,455-1,980), power median 640 W, "
                                           "SwPowerCap")
    capped = gpu_clock.clock_stats([
        {"mhz": 1230.0, "watts": 699.0, "celsius": 60.0, "reasons": 4, "watts_limit": 700.0},
        {"mhz": 1260.0, "watts": 698.0, "celsius": 61.0, "reasons": 4, "watts_limit": None}])
    assert capped["watts_limit"] == 700.0
    assert gpu_clock.stats_line(capped) == ("SM clock median 1,245 MHz (1,230-1,260), power median 698 W of a 700 W "
                                            "limit, SwPowerCap")


def test_point_operands_shape_the_activations_codes():
    # outlier: the per-token scale follows the few large columns, so the other columns' codes shrink ~50x; zeros:
    # every code of x is 0 while the weights and scales stay as gauss made them
    import torch

    g = torch.Generator().manual_seed(0)
    x16 = torch.randn(64, 4096, generator=g).half()
    w16 = (torch.randn(256, 4096, generator=g) * 0.02).half()
    x_before = x16.clone()
    for kernel in ("ws_fp8", "ws_int8"):
        gauss = gemm_clocks.point_operands(kernel, x16, w16, "gauss")
        outlier = gemm_clocks.point_operands(kernel, x16, w16, "outlier")
        zeros = gemm_clocks.point_operands(kernel, x16, w16, "zeros")
        rest = torch.ones(4096, dtype=torch.bool)
        rest[::gemm_clocks.OUTLIER_EVERY] = False
        typical = {name: ops["x"].float()[:, rest].abs().mean().item() for name, ops in
                   (("gauss", gauss), ("outlier", outlier))}
        assert typical["outlier"] < typical["gauss"] / 20, (kernel, typical)
        assert torch.equal(x16, x_before)  # the caller's activations are not scaled in place
        assert zeros["x"].dtype == gauss["x"].dtype and not zeros["x"].float().any()
        assert torch.equal(zeros["w"].float(), gauss["w"].float()) and torch.equal(zeros["sx"], gauss["sx"])


def test_sampler_start_is_none_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(gpu_clock.shutil, "which", lambda name: None)
    assert gpu_clock.Sampler.start() is None


def test_sampler_reads_stamped_lines_from_a_fake_nvidia_smi(tmp_path, monkeypatch):
    # a stand-in nvidia-smi that prints two samples and one error line: the sampler stamps and parses them
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '1980, 120.0, 40, 0x0, 700.00'\necho '1230, 699.0, 60, 0x4, 700.00'\n"
                    "echo 'oops'\nsleep 5\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    import time
    t0 = time.monotonic()
    sampler = gpu_clock.Sampler.start(interval_ms=100)
    assert sampler is not None
    deadline = time.monotonic() + 5
    while len(sampler.lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    samples = sampler.between(t0, time.monotonic())
    assert [s["mhz"] for s in samples] == [1980.0, 1230.0] and {s["watts_limit"] for s in samples} == {700.0}
    assert sampler.close() == "oops"


def test_nvidia_smi_id_follows_cuda_visible_devices():
    assert gpu_clock.nvidia_smi_id(0, "") == "0" and gpu_clock.nvidia_smi_id(1, "") == "1"
    assert gpu_clock.nvidia_smi_id(0, "3,5") == "3" and gpu_clock.nvidia_smi_id(1, "3, 5") == "5"
    assert gpu_clock.nvidia_smi_id(0, "GPU-1234abcd") == "GPU-1234abcd"
