"""main.py --liteml-config: the reference backend's loaded model runs quantized (simulate, CPU) under LoadGen,
and a quantization request that cannot be honoured fails in the first second with one line."""

import json
import shutil

import pandas as pd

from loadgen_fixtures import REPO, SMALL_USER_CONF, read_accuracy_log, run_main, tokens, write_dataset

NPM = REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml"


def workdir(tmp_path, tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tokenizer_dir)
    frame = pd.read_pickle(tmp_path / "data.pkl")
    calibration = tmp_path / "open_orca_gpt4_tokenized_llama.calibration_3.pkl"
    frame.iloc[:3].to_pickle(calibration)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    return tmp_path


def args(root, model_dir, *extra):
    return ["--model-path", model_dir, "--dataset-path", root / "data.pkl", "--user-conf", root / "user.conf",
            "--max-new-tokens", 6, "--device", "cpu", "--accuracy", "--output-log-dir", "logs", *extra]


def test_offline_run_with_liteml_config_runs_the_open_backend_in_simulate_mode(tmp_path, tiny_model_dir,
                                                                               tiny_tokenizer_dir):
    root = workdir(tmp_path, tiny_tokenizer_dir)
    result = run_main(args(root, tiny_model_dir, "--liteml-config", NPM, "--save-outputs", "q.json"), root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--quant-backend auto: Ceva LiteML not installed, using the open W8A8 backend" in result.stderr
    assert "calibrated 22 static quantizers on 3 samples" in result.stderr
    assert "quantization (simulate): LinearQuant x15" in result.stderr
    entries = read_accuracy_log(root / "logs")
    assert sorted(e["qsl_idx"] for e in entries) == list(range(6))
    assert all(len(tokens(e["data"])) >= 1 for e in entries)
    assert json.loads((root / "q.json").read_text())


def test_unhonourable_requests_fail_before_the_model_loads(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    root = workdir(tmp_path, tiny_tokenizer_dir)
    liteml = run_main(args(root, tiny_model_dir, "--liteml-config", NPM, "--quant-backend", "liteml"), root, 120)
    assert liteml.returncode == 2 and "Ceva's LiteML is not installed" in liteml.stderr
    int8 = run_main(args(root, tiny_model_dir, "--liteml-config", NPM, "--quant-mode", "int8"), root, 120)
    assert int8.returncode == 2 and "needs a CUDA device" in int8.stderr
    bad = root / "bad.yaml"
    bad.write_text(NPM.read_text().replace("destination_module: QuantRMSNorm", "destination_module: TrueQuantRMSNorm"))
    refused = run_main(args(root, tiny_model_dir, "--liteml-config", bad), root, 120)
    assert refused.returncode == 2 and "rule 10" in refused.stderr and "TrueQuantRMSNorm" in refused.stderr
    for result in (liteml, int8, refused):
        assert "loading" not in result.stderr  # refused before any weights load
    shutil.rmtree(root / "logs", ignore_errors=True)
