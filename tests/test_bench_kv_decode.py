"""tools/bench_kv_decode.py's CPU side: variant names and their errors, and (under TRITON_INTERPRET=1) one tiny
run whose JSON holds a timed, checked row per (cache dtype, batch, variant) and suggests defaults that exist.
The timing itself needs a GPU (run by hand, docs/engine.md)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_kv_decode  # noqa: E402
from mlperf_llama2.errors import run_cli  # noqa: E402

TINY = ["--device", "cpu", "--batches", "1,2", "--context", "21", "--heads", "8", "--kv-heads", "2",
        "--head-dim", "16", "--iters", "1"]


@pytest.mark.parametrize("configs,message", [
    ("base,n999", "unknown decode kernel config 'n999'; choose from base,"),
    ("64x3", "num_warps must be a power of 2"),
    ("8x4", "block_n must be >= 16"),
])
def test_bad_variants_are_one_line_errors(configs, message, capsys, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert run_cli(bench_kv_decode.main, TINY + ["--configs", configs]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="a CPU run needs TRITON_INTERPRET=1")
def test_a_tiny_run_times_and_checks_every_named_variant(tmp_path, capsys):
    pytest.importorskip("triton")
    out = tmp_path / "kv.json"
    names = ["base", "n64w4s3v_split4", "32x4"]
    assert run_cli(bench_kv_decode.main, TINY + ["--configs", ",".join(names), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["kv_cache_dtype"], r["batch"], r["config"]) for r in rows) == sorted(
        (d, b, n) for d in ("auto", "fp8", "int8") for b in (1, 2) for n in names)
    assert all("error" not in r and r["ms"] > 0 for r in rows)
    for r in rows:  # every variant agrees with the base kernel over the dequantized fp16 cache
        assert r["max_abs_diff_vs_base_fp16"] < 5e-3, r
    assert {r["kernel"]["splits"] for r in rows if r["config"] == "n64w4s3v_split4"} == {4}
    assert {r["kernel"]["block_n"] for r in rows if r["config"] == "32x4"} == {32}
    suggested = [line.split("'")[1] for line in capsys.readouterr().out.splitlines() if line.startswith("suggested")]
    assert len(suggested) == 2 and all(s in names for s in suggested)


def test_the_default_cuda_device_without_a_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal is for a machine without CUDA")
    assert run_cli(bench_kv_decode.main, ["--batches", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda but torch sees no CUDA GPU" in err and "\n" not in err


@pytest.mark.parametrize("flags,message", [
    (["--flat", "3:0:5"], "--flat must be D:C:P[:N]"),
    (["--flat", "0:0:0"], "--flat must be D:C:P[:N]"),
    (["--flat", "a:b:c"], "--flat must be D:C:P[:N]"),
    (["--flat", "2:8:4", "--row-configs", "8x32"], "is not ROWSrBLOCK_NnWARPSwSTAGESs"),
])
def test_bad_flat_specs_are_one_line(flags, message, capsys, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert run_cli(bench_kv_decode.main, TINY + flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="a CPU run needs TRITON_INTERPRET=1")
def test_a_tiny_flat_run_checks_grouped_rows_against_the_per_row_kernel(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "flat.json"
    assert run_cli(bench_kv_decode.main, TINY + ["--flat", "3:20:11:2", "--row-configs", "8r32n4w2s,2r16n1w8s",
                                                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["rows"] for r in rows} == {3 + 2 * 11}
    assert run_cli(bench_kv_decode.main, TINY + ["--flat", "0:0:9", "--row-configs", "8r32n4w2s", "--out",
                                                 str(out)]) == 0  # fresh prompts, no decodes
    fresh = json.loads(out.read_text())["rows"]
    assert {r["rows"] for r in fresh} == {9} and all(r["max_abs_diff_vs_per_row"] < 5e-3 for r in fresh)
    assert sorted((r["kv_cache_dtype"], r["kernel"]) for r in rows) == sorted(
        (d, k) for d in ("auto", "fp8", "int8") for k in ("per row (decode kernel)", "rows 8r32n4w2s",
                                                          "rows 2r16n1w8s"))
    assert all("error" not in r and r["ms"] > 0 and r["max_abs_diff_vs_per_row"] < 5e-3 for r in rows)
    # a launch that cannot run is its row's error, not the end of the sweep
    assert run_cli(bench_kv_decode.main, TINY + ["--flat", "2:8:4", "--row-configs", "8r32n3w2s", "--out",
                                                 str(out)]) == 0
    bad = [r for r in json.loads(out.read_text())["rows"] if r["kernel"] == "rows 8r32n3w2s"]
    assert len(bad) == 3 and all("num_warps must be a power of 2" in r["error"] for r in bad)
