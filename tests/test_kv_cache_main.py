"""The 8-bit KV cache through main.py: calibrate with tools/calibrate_kv.py, run, get the engine's own tokens.

Specification: `main.py --backend engine --kv-cache-dtype int8|fp8 --calibration-scales F` answers every
sample with the tokens `LLMEngine.from_pretrained(..., kv_scales=...)` gives for F's scales (per KV head
for an engine KV-only calibration; the config's per-tensor K/V scales with --liteml-config, which then
no longer counts K and V as left out); tensor parallel 2 gives the same tokens; misuse is one line, exit 2,
before any model loads; run_info.json records the cache's dtype.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pandas as pd
import pytest
import torch

from loadgen_fixtures import REPO, SMALL_USER_CONF, finish, read_accuracy_log, start_main, tokens, write_dataset
from mlperf_llama2 import constants
from mlperf_llama2.config import EngineConfig, QuantConfig
from mlperf_llama2.data.dataset import load_dataset
from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.quant_plan import int8_plan, kv_cache_honours, left_out
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.calibration_file import K_SLOT, V_SLOT, kv_granularity, kv_scales_from_file, write_scales
from mlperf_llama2.quant.yaml_config import load_rules
from mlperf_llama2.report.summary import build_summary, render_table
from reliability_fixtures import error_lines

NPM = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
MAX_NEW = 8
ENGINE_FLAGS = ["--max-num-seqs", 8, "--max-num-batched-tokens", 32, "--num-kv-blocks", 128, "--block-size", 4]
ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=32, num_kv_blocks=128, block_size=4)
QMAX = {"int8": 127.0, "fp8": 448.0}
pytestmark = pytest.mark.slow  # a dozen CPU processes, ~2 minutes on 2 shared cores


# ---- which scales, and what the log calls left out (no model) -----------------------------------------------
def _file(tmp_path, name, heads: bool) -> str:
    """A scales file of 2 layers x 2 KV heads: the K/V slots per tensor, and kv_heads.* when `heads`."""
    ranges = {template.format(layer=i): (torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 2.0))
              for template in (K_SLOT, V_SLOT) for i in range(2)}
    if heads:
        ranges["kv_heads"] = (-torch.ones(2, 2, 2), torch.tensor([1.0, 0.5]).expand(2, 2, 2))
    return write_scales(str(tmp_path / name), ranges, {"config_id": "x", "model_config_sha256": "",
                                                        "model_weights_sha256": ""})


def test_granularity_auto_is_per_head_when_held_and_the_configs_per_tensor_with_a_config(tmp_path):
    engine_file, simulate_file = _file(tmp_path, "engine.safetensors", True), _file(tmp_path, "sim.safetensors", False)
    assert kv_granularity(engine_file, "auto", with_config=False) == "head"
    assert kv_granularity(engine_file, "auto", with_config=True) == "tensor"
    assert kv_granularity(simulate_file, "auto", with_config=False) == "tensor"
    assert kv_granularity(engine_file, "tensor", with_config=False) == "tensor"
    with pytest.raises(UserError, match="holds no per-KV-head K/V ranges") as info:
        kv_granularity(simulate_file, "head", with_config=True)
    assert "\n" not in str(info.value)
    per_tensor = kv_scales_from_file(simulate_file, 2, 2, "tensor", 127.0)
    assert torch.allclose(per_tensor, torch.full((2, 2, 2), 2.0 / 127.0))
    per_head = kv_scales_from_file(engine_file, 2, 2, "head", 127.0)
    assert torch.allclose(per_head[0, 0], torch.tensor([1.0, 1.0]) / 127.0) and not torch.equal(per_head, per_tensor)


def test_an_int8_cache_with_the_configs_scales_is_no_longer_left_out(tmp_path):
    rules = load_rules(NPM)
    shape = LlamaShape(32000, 8192, 28672, 80, 64, 8, 128, 1e-5, 4096)
    plan = int8_plan(shape, rules)
    scales = _file(tmp_path, "s.safetensors", False)
    quant = QuantConfig(liteml_config=NPM, quant_mode="int8", calibration_scales=scales)
    int8_tensor = EngineConfig(kv_cache_dtype="int8", kv_scale_granularity="tensor")
    assert kv_cache_honours(rules, 80, quant, int8_tensor)
    for engine in (EngineConfig(), EngineConfig(kv_cache_dtype="fp8", kv_scale_granularity="tensor"),
                   EngineConfig(kv_cache_dtype="int8", kv_scale_granularity="head")):
        assert not kv_cache_honours(rules, 80, quant, engine)
    assert not kv_cache_honours(rules, 80, QuantConfig(liteml_config=NPM, quant_mode="int8"), int8_tensor)
    full_range = QuantConfig(liteml_config=NPM, quant_mode="int8", calibration_scales=scales, narrow_range=False)
    assert not kv_cache_honours(rules, 80, full_range, int8_tensor)

    before, after = left_out(rules, plan), left_out(rules, plan, kv_honoured=True)
    assert len(after) == len(before)  # Q and P (quantizer_in1) of both matmuls stay left out
    for matmul in ("matmul_qkt", "matmul_pv"):
        [was] = [n for n in before if matmul in n]
        [now] = [n for n in after if matmul in n]
        assert "quantizer_in2" in was and "quantizer_in1" in now
        assert "quantizer_in2 int8" not in now and "is the int8 KV cache" in now
    assert [n for n in after if "matmul" not in n] == [n for n in before if "matmul" not in n]


# ---- main.py end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_tokenizer_dir, tiny_model_dir):
    """data.pkl, cal.pkl, user.conf, and two calibrations by tools/calibrate_kv.py: KV-only and the NPM config's."""
    root = tmp_path_factory.mktemp("kv_main")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    pd.read_pickle(root / "data.pkl").iloc[:4].to_pickle(root / "cal.pkl")
    (root / "user.conf").write_text(SMALL_USER_CONF)
    common = ["--model-path", tiny_model_dir, "--calibration-path", root / "cal.pkl"]
    procs = [start_main([*common, "--out", root / "kv.safetensors", "--name", "kv-only"], root,
                        script="tools/calibrate_kv.py"),
             start_main([*common, "--out", root / "npm.safetensors", "--liteml-config", NPM], root,
                        script="tools/calibrate_kv.py")]
    for proc in procs:
        result = finish(proc)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def _args(root, model, out, *extra):
    return ["--backend", "engine", "--model-path", model, "--dataset-path", root / "data.pkl", "--user-conf",
            root / "user.conf", "--max-new-tokens", MAX_NEW, "--output-log-dir", root / out, "--no-progress",
            "--accuracy", "--device", "cpu", *ENGINE_FLAGS, *extra]


def _without_engine_flags(args: list) -> list:
    at = next(i for i in range(len(args)) if args[i:i + len(ENGINE_FLAGS)] == ENGINE_FLAGS)
    return args[:at] + args[at + len(ENGINE_FLAGS):]


@pytest.fixture(scope="module")
def runs(root, tiny_model_dir):
    kv, npm = root / "kv.safetensors", root / "npm.safetensors"
    started = {
        "int8": _args(root, tiny_model_dir, "int8", "--kv-cache-dtype", "int8", "--calibration-scales", kv),
        "fp8": _args(root, tiny_model_dir, "fp8", "--quantization", "fp8", "--kv-cache-dtype", "fp8",
                     "--calibration-scales", kv),
        "npm": _args(root, tiny_model_dir, "npm", "--liteml-config", NPM, "--quant-mode", "int8", "--int8-rules", "linear",
                     "--kv-cache-dtype", "int8", "--calibration-scales", npm),
        "tp2": _args(root, tiny_model_dir, "tp2", "--kv-cache-dtype", "int8", "--calibration-scales", kv,
                     "--tensor-parallel", 2),
    }
    procs = {name: start_main(args, root) for name, args in started.items()}
    return {name: finish(proc) for name, proc in procs.items()}


def _accuracy_tokens(root, name, result) -> dict[int, list[int]]:
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    entries = read_accuracy_log(root / name)
    assert sorted(e["qsl_idx"] for e in entries) == list(range(6))
    return {e["qsl_idx"]: tokens(e["data"]).tolist() for e in entries}


def _direct(root, model_dir, kv_dtype, scales, quant=None) -> dict[int, list[int]]:
    engine = LLMEngine.from_pretrained(str(model_dir), dataclasses.replace(ENGINE, kv_cache_dtype=kv_dtype), "cpu",
                                       torch.float32, quant, kv_scales=scales)
    prompts = load_dataset(str(root / "data.pkl")).prompts
    out = engine.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW, min_new_tokens=constants.MIN_NEW_TOKENS))
    return dict(enumerate(out))


@pytest.mark.parametrize("name,kv_dtype", [("int8", "int8"), ("fp8", "fp8")])
def test_main_with_an_8bit_cache_gives_the_engines_direct_tokens(root, runs, tiny_model_dir, name, kv_dtype):
    scales = kv_scales_from_file(str(root / "kv.safetensors"), 2, 2, "head", QMAX[kv_dtype])  # [2, L, KV]
    assert not torch.equal(scales[:, :, 0], scales[:, :, 1])  # per KV head: the heads' scales differ
    quant = QuantConfig(quantization="fp8") if name == "fp8" else None
    got = _accuracy_tokens(root, name, runs[name])
    assert got == _direct(root, tiny_model_dir, kv_dtype, scales, quant)
    assert f"{kv_dtype} KV cache: static K/V scales per KV head" in runs[name].stderr
    info = json.loads((root / name / "run_info.json").read_text())
    assert info["kv_cache_dtype"] == kv_dtype
    summary = build_summary(str(root / name))
    assert summary.kv_cache_dtype == kv_dtype and re.search(rf"^KV cache +: {kv_dtype}$", render_table(summary), re.M)


def test_whole_config_int8_cache_uses_the_configs_per_tensor_scales(root, runs, tiny_model_dir):
    scales = kv_scales_from_file(str(root / "npm.safetensors"), 2, 2, "tensor", 127.0)
    assert torch.equal(scales[:, :, 0], scales[:, :, 1])
    quant = QuantConfig(liteml_config=NPM, quant_mode="int8", int8_rules="linear")
    assert _accuracy_tokens(root, "npm", runs["npm"]) == _direct(root, tiny_model_dir, "int8", scales, quant)
    log = runs["npm"].stderr
    assert "int8 KV cache: static K/V scales per tensor (one per layer)" in log
    assert "int8 in the KV cache with the config's static per-tensor scales" in log
    left = [line for line in log.splitlines() if "int8 mode leaves out" in line and "matmul_" in line]
    assert len(left) == 2 and all("quantizer_in2 int8" not in line and "quantizer_in1 int8" in line for line in left)


def test_tensor_parallel_2_with_an_int8_cache_gives_the_single_engine_tokens(root, runs):
    assert _accuracy_tokens(root, "tp2", runs["tp2"]) == _accuracy_tokens(root, "int8", runs["int8"])
    assert "tensor parallel: 2 ranks" in runs["tp2"].stderr


def _other_model(root, model_dir) -> str:
    """The tiny model with another config.json (rms_norm_eps): the scales' model identity no longer matches."""
    other = root / "other_model"
    if not other.exists():
        shutil.copytree(model_dir, other)
        config = json.loads((other / "config.json").read_text())
        config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 2
        (other / "config.json").write_text(json.dumps(config))
    return str(other)


def test_misuse_is_one_line_and_exit_2_before_the_model_loads(root, tiny_model_dir):
    kv = root / "kv.safetensors"
    eos_model_dir = _other_model(root, tiny_model_dir)
    cases = {
        "no scales": (_args(root, tiny_model_dir, "bad1", "--kv-cache-dtype", "int8"),
                      "--kv-cache-dtype int8 needs static K/V scales"),
        "another model": (_args(root, eos_model_dir, "bad2", "--kv-cache-dtype", "int8", "--calibration-scales", kv),
                          "calibrated for another model"),
        "LiteML file without its config": (_args(root, tiny_model_dir, "bad3", "--kv-cache-dtype", "int8",
                                                 "--calibration-scales", root / "npm.safetensors"),
                                           "made for a LiteML config; give that --liteml-config too"),
        # without the engine's flags, which the reference backend refuses first
        "reference backend": (_without_engine_flags(_args(root, tiny_model_dir, "bad4", "--kv-cache-dtype", "int8",
                                                          "--calibration-scales", kv, "--backend", "reference")),
                              "is the engine's 8-bit KV cache: use --backend engine"),
        "per head from a per-tensor file": (_args(root, tiny_model_dir, "bad5", "--liteml-config", NPM, "--quant-mode",
                                                  "int8", "--kv-cache-dtype", "int8", "--kv-scale-granularity",
                                                  "head", "--calibration-scales", _simulate_like(root)),
                                            "holds no per-KV-head K/V ranges"),
    }
    procs = {name: start_main(args, root) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        result, expected = finish(proc), cases[name][1]
        assert result.returncode == 2, f"{name}: {result.stderr[-2000:]}"
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and expected in lines[0], f"{name}: {result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr and "backend: engine" not in result.stderr  # nothing was built


def _simulate_like(root) -> str:
    """The NPM engine calibration without its kv_heads ranges: what a LiteML simulate calibration holds."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mlperf_llama2.quant.calibration_file import tensors_digest

    out = root / "npm_per_tensor.safetensors"
    with safe_open(str(root / "npm.safetensors"), "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("kv_heads.")}
        save_file(kept, str(out), metadata={**f.metadata(), "tensors_sha256": tensors_digest(kept)})
    return str(out)
