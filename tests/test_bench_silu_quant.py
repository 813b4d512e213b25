"""tools/bench_silu_quant.py's CPU side: bad arguments are one line and exit 2 before any GPU work; the timing
itself needs a GPU (tools/gpu/verify_head.sh STEPS=silu)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_silu_quant  # noqa: E402
from mlperf_llama2.errors import run_cli  # noqa: E402


@pytest.mark.parametrize("argv,message", [
    (["--tokens", "256,x"], "--tokens must be comma-separated integers, got '256,x'"),
    (["--tokens", "0"], "--tokens, --intermediate, --calls and --reps must be >= 1"),
    (["--reps", "0"], "--tokens, --intermediate, --calls and --reps must be >= 1"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert run_cli(bench_silu_quant.main, argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not os.listdir(tmp_path)


def test_without_a_gpu_it_says_so(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_cli(bench_silu_quant.main, ["--out", str(tmp_path)]) == 2
    assert "bench_silu_quant: needs a CUDA GPU" in capsys.readouterr().err
