"""calibration_scales.safetensors: simulate's calibration writes it, --calibration-scales reuses it (no second
calibration, same outputs), and a file made for another config or model, or a corrupt one, is one line, exit 2,
before the model loads."""

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from loadgen_fixtures import REPO, SMALL_USER_CONF, read_accuracy_log, run_main, write_dataset
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant import calibration_file as cf
from mlperf_llama2.quant.open_backend import quantize_model
from mlperf_llama2.quant.yaml_config import load_rules

pytestmark = pytest.mark.tf_compat

NPM = REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml"
PV16 = REPO / "liteml_configs" / "w8a8_npm_v1_3_4_pv16.yaml"
PROMPTS = torch.tensor([[1, 5, 9, 100, 200, 300, 7, 8]])  # [1, 8]


def load(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def calibration():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 500, (1, n), generator=g) for n in (6, 11, 17)]


def npm_scales_file(model_dir, path):
    model = load(model_dir)
    quantize_model(model, load_rules(str(NPM)), "simulate", calibration=calibration())
    metadata = {"config_id": cf.config_id(str(NPM)), **cf.model_identity(str(model_dir)),
                **cf.calibration_metadata(None, 3), "observer": "MovingAverage momentum=0.01"}
    return model, cf.write_scales(str(path), cf.static_ranges(model), metadata)


@torch.no_grad()
def test_round_trip_gives_every_static_quantizer_its_range_and_the_same_logits(tiny_model_dir, tmp_path):
    calibrated, path = npm_scales_file(tiny_model_dir, tmp_path / cf.FILE_NAME)
    scales = cf.read_scales(path)
    assert len(scales.tensors) == 2 * 22  # min and max of the 22 static quantizers of two layers
    k_min, k_max = scales.slot_range("model.layers.1.self_attn.matmul_qkt.quantizer_in2")
    q = calibrated.model.layers[1].self_attn.matmul_qkt.quantizer_in2
    assert torch.equal(k_min, q.running_min) and torch.equal(k_max, q.running_max)
    assert scales.metadata["config_id"] == "sha256:" + hashlib.sha256(NPM.read_bytes()).hexdigest()
    assert scales.metadata["format"] == cf.FORMAT and scales.metadata["harness_version"].startswith("0.")
    reused = load(tiny_model_dir)
    report = quantize_model(reused, load_rules(str(NPM)), "simulate", calibration=None, scales=scales)
    assert report.calibration_samples == 0 and report.scales_file == path
    assert torch.equal(reused(PROMPTS).logits, calibrated(PROMPTS).logits)
    lacking = dict(cf.static_ranges(calibrated))
    del lacking["model.layers.0.mlp.act_fn.quantizer"]
    short = cf.write_scales(str(tmp_path / "short.safetensors"), lacking, dict(scales.metadata))
    with pytest.raises(UserError, match="no scale for model.layers.0.mlp.act_fn.quantizer"):
        quantize_model(load(tiny_model_dir), load_rules(str(NPM)), "simulate", scales=cf.read_scales(short))


def test_kv_scales_from_a_simulate_file_are_the_k_and_v_slots(tiny_model_dir, tmp_path):
    model, path = npm_scales_file(tiny_model_dir, tmp_path / cf.FILE_NAME)
    scales = cf.kv_scales_from_file(path, 2, 2, "tensor", 127.0)  # [2, L, KV]
    v = model.model.layers[0].self_attn.matmul_pv.quantizer_in2
    assert torch.allclose(scales[1, 0], torch.maximum(v.running_min.abs(), v.running_max.abs()).reshape(()) / 127)
    with pytest.raises(UserError, match="no scale for kv_heads"):
        cf.kv_scales_from_file(path, 2, 2, "head", 127.0)  # simulate keeps K/V per tensor only


def test_mismatches_and_corruption_are_one_line(tiny_model_dir, tiny_tokenizer_dir, tmp_path):
    from tiny_models import build_tiny_llama

    _, path = npm_scales_file(tiny_model_dir, tmp_path / cf.FILE_NAME)
    assert cf.check_scales_file(path, cf.config_id(str(NPM)), str(tiny_model_dir))["calibration_rows"] == "3"
    with pytest.raises(UserError, match="calibrated for config .* not this run's"):
        cf.check_scales_file(path, cf.config_id(str(PV16)), str(tiny_model_dir))
    deeper = build_tiny_llama(tmp_path / "deeper", tiny_tokenizer_dir, num_layers=3)
    with pytest.raises(UserError, match=r"another model \(config.json differs"):
        cf.check_scales_file(path, cf.config_id(str(NPM)), str(deeper))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(path).read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        cf.check_scales_file(str(truncated), cf.config_id(str(NPM)), str(tiny_model_dir))
    weights = next(Path(tiny_model_dir).glob("*.safetensors"))
    with pytest.raises(UserError, match="not a calibration scales file"):
        cf.check_scales_file(str(weights), cf.config_id(str(NPM)), str(tiny_model_dir))


# --- through main.py -------------------------------------------------------------------------------------------
def workdir(tmp_path, tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tokenizer_dir)
    calibration = tmp_path / "open_orca_gpt4_tokenized_llama.calibration_3.pkl"
    pd.read_pickle(tmp_path / "data.pkl").iloc[:3].to_pickle(calibration)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    return tmp_path


def args(root, model_dir, logs, *extra, config=NPM):
    return ["--model-path", model_dir, "--dataset-path", root / "data.pkl", "--user-conf", root / "user.conf",
            "--max-new-tokens", 6, "--device", "cpu", "--accuracy", "--output-log-dir", logs,
            "--liteml-config", config, *extra]


def outputs(log_dir):
    return {e["qsl_idx"]: e["data"] for e in read_accuracy_log(log_dir)}


def test_calibration_writes_the_file_and_a_second_run_reuses_it(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    root = workdir(tmp_path, tiny_tokenizer_dir)
    first = run_main(args(root, tiny_model_dir, "logs1"), root)
    assert first.returncode == 0, first.stderr[-3000:]
    written = root / "logs1" / cf.FILE_NAME
    assert "calibrated 22 static quantizers on 3 samples" in first.stderr
    assert f"calibration scales written to {written.resolve()}" in first.stderr or \
        f"calibration scales written to logs1/{cf.FILE_NAME}" in first.stderr
    meta = cf.read_metadata(str(written))
    assert meta["calibration_rows"] == "3" and meta["calibration_path"].endswith("calibration_3.pkl")
    assert meta["quant_mode"] == "simulate" and meta["writer"] == "reference"

    second = run_main(args(root, tiny_model_dir, "logs2", "--calibration-scales", written), root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "calibrated 22 static quantizers" not in second.stderr
    assert "static scales of 22 quantizers read from" in second.stderr
    assert not (root / "logs2" / cf.FILE_NAME).exists()
    assert outputs(root / "logs2") == outputs(root / "logs1") and len(outputs(root / "logs1")) == 6

    other_config = run_main(args(root, tiny_model_dir, "logs3", "--calibration-scales", written, config=PV16), root,
                            120)
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(written.read_bytes()[:-10])
    truncated = run_main(args(root, tiny_model_dir, "logs4", "--calibration-scales", corrupt), root, 120)
    for result, what in ((other_config, "not this run's"), (truncated, "truncated or corrupt")):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and what in lines[-1], result.stderr[-2000:]
        assert sum("calibration-scales" in line for line in lines) == 1
        assert "loading" not in result.stderr
