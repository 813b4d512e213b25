"""tools/bench.py's pre-flight, audited: a combination that would fail (or be ignored) only once the model is built is
refused in one line before it. Each test replaces the model builders with one that fails the test if it is reached,
so a refusal is proven to come first (a GPU session lost a built 70B to each of these)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from loadgen_fixtures import REPO, run_main
from mlperf_llama2.errors import UserError

sys.path.insert(0, str(REPO / "tools"))

import bench  # noqa: E402
import bench_paths  # noqa: E402


class Built(Exception):
    """The run got past its pre-flight to the model build."""


@pytest.fixture
def no_build(monkeypatch):
    def built(*_args, **_kwargs):
        raise Built

    for module in (bench, bench_paths):
        monkeypatch.setattr(module, "bench_model", built)
        monkeypatch.setattr(module, "build_hf", built)


SERVER = ["--shape", "tiny", "--device", "cpu", "--samples", 0, "--ref-samples", 0, "--fidelity-prompts", 0,
          "--server-qps", 2]


def _main(tmp_path, *argv):
    return bench.main([str(a) for a in [*argv, "--out", tmp_path / "out"]])


def _json(tmp_path, data, name="offline.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


ROW = {"backend": "engine", "tokens_per_s": 1000.0}
THIS_BUILD = {"shape": "tiny", "layers": None, "weights": "fp16", "kv_cache_dtype": "auto", "int8_rules": "linear"}


@pytest.mark.parametrize("content,message", [
    (None, "cannot read it as a tools/bench.py bench.json"),  # no such file
    ("{not json", "cannot read it as a tools/bench.py bench.json"),
    ("[1, 2]", "cannot read it as a tools/bench.py bench.json"),
    ({"rows": ["engine"]}, "cannot read it as a tools/bench.py bench.json"),
    ({"rows": []}, "has no engine Offline row with tokens/s"),
    ({"rows": [{"backend": "reference", "tokens_per_s": 10.0}]}, "has no engine Offline row with tokens/s"),
    ({"rows": [{"backend": "engine", "tokens_per_s": None}]}, "has no engine Offline row with tokens/s"),
    ({"args": {**THIS_BUILD, "weights": "fp8"}, "rows": [ROW]}, "ran --weights fp8, this run fp16"),
    ({"args": {**THIS_BUILD, "kv_cache_dtype": "fp8"}, "rows": [ROW]}, "ran --kv-cache-dtype fp8, this run auto"),
    ({"args": {**THIS_BUILD, "int8_rules": "all"}, "rows": [ROW]}, "ran --int8-rules all, this run linear"),
    ({"args": {**THIS_BUILD, "layers": 20}, "rows": [ROW]}, "ran --layers 20, this run all"),
    ({"args": {**THIS_BUILD, "shape": "70b"}, "rows": [ROW]}, "ran --shape 70b, this run tiny"),
])
def test_an_offline_json_it_cannot_use_is_refused_before_the_model(tmp_path, no_build, content, message):
    path = tmp_path / "missing.json" if content is None else _json(tmp_path, content)
    with pytest.raises(UserError) as exc:
        _main(tmp_path, *SERVER, "--offline-json", path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_an_offline_json_of_this_build_passes_to_the_build(tmp_path, no_build):
    path = _json(tmp_path, {"args": THIS_BUILD, "rows": [ROW]})
    with pytest.raises(Built):
        _main(tmp_path, *SERVER, "--offline-json", path)
    # and the Server sweep reads the same row the pre-flight accepted
    args = bench.argparse.Namespace(offline_json=str(path), **THIS_BUILD)
    assert bench.offline_reference(args, {"rows": []})[:2] == (1000.0, str(path))


def test_an_offline_json_refusal_is_one_line_and_exit_2(tmp_path):
    proc = run_main([*SERVER, "--offline-json", tmp_path / "missing.json", "--out", tmp_path / "out"], tmp_path,
                    timeout=120, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "--offline-json" in line and "missing.json" in line


@pytest.mark.parametrize("flags,message", [
    (["--samples", 4, "--offline-json", "X"], "with --samples 4 the run's own Offline is used"),
    (["--server-qps", "", "--samples", 4, "--offline-json", "X"], "with --samples 4"),
])
def test_an_offline_json_the_run_would_ignore_is_refused(tmp_path, no_build, flags, message):
    """With this run's Offline the file was never read (the ratio and points silently came from this run)."""
    path = _json(tmp_path, {"rows": [ROW]})
    flags = [path if f == "X" else f for f in flags]
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path, *SERVER, *flags)
    assert message in str(exc.value.code)


def test_a_missing_loadgen_is_refused_before_the_model(tmp_path, no_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # import mlperf_loadgen -> ImportError
    with pytest.raises(UserError) as exc:
        _main(tmp_path, "--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0,
              "--fidelity-prompts", 0)
    assert "mlperf_loadgen" in str(exc.value) and ".whl/" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_loadgen_present_passes_to_the_build(tmp_path, no_build):
    pytest.importorskip("mlperf_loadgen")
    with pytest.raises(Built):
        _main(tmp_path, "--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0,
              "--fidelity-prompts", 0)


def _gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


MULTI = ["--shape", "tiny", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts", 0]


@pytest.mark.parametrize("flags,gpus,message", [
    (["--tensor-parallel", 2], 1, "needs cuda:0..cuda:1, torch sees 1 GPU(s)"),
    (["--data-parallel", 4], 2, "needs cuda:0..cuda:3, torch sees 2 GPU(s)"),
    (["--tensor-parallel", 2, "--device", "cuda:1"], 2, "needs cuda:1..cuda:2, torch sees 2 GPU(s)"),
    (["--tensor-parallel", 2, "--device", "cuda:x"], 2, "--device cuda:x"),
    (["--tensor-parallel", 2, "--data-parallel", 2], 8, "give only one of them"),
    (["--device", "cuda:1"], 1, "--device cuda:1 but torch sees 1 GPU(s)"),
])
def test_more_devices_than_visible_are_one_line_before_the_model(tmp_path, no_build, monkeypatch, flags, gpus,
                                                                   message):
    import bench_scaling

    def built(*_args, **_kwargs):
        raise Built

    monkeypatch.setattr(bench_scaling, "build_engines", built)
    monkeypatch.setattr(bench_scaling, "bench_model", built)
    _gpus(monkeypatch, gpus)
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path, *MULTI, *flags)
    assert message in str(exc.value.code) and "\n" not in str(exc.value.code)
    assert not (tmp_path / "out").exists()


def test_enough_devices_pass_the_count_check(tmp_path, no_build, monkeypatch):
    import bench_scaling

    def built(*_args, **_kwargs):
        raise Built

    monkeypatch.setattr(bench_scaling, "run_scaling", built)
    monkeypatch.setattr(bench, "kernel_bench", built)
    monkeypatch.setattr(bench, "device_name", lambda device: "fake GPU")
    _gpus(monkeypatch, 2)
    with pytest.raises(Built):
        _main(tmp_path, *MULTI, "--tensor-parallel", 2)


def test_a_quant_config_the_weights_ignore_is_refused(tmp_path, no_build):
    config = _json(tmp_path, "rules: []\n", name="other.yaml")
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path, "--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0,
              "--fidelity-prompts", 0, "--weights", "fp8", "--liteml-config", config)
    assert "--liteml-config" in str(exc.value.code) and "--weights fp8 would ignore it" in str(exc.value.code)
