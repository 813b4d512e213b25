"""The submission packager's rules on synthetic LoadGen logs (the end-to-end run through real LoadGen runs is
in test_loadgen_runs.py): what a closed result needs, what the open division relaxes, and where files go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlperf_llama2 import constants
from mlperf_llama2.submission.__main__ import main
from mlperf_llama2.submission.checks import check_accuracy, check_performance, check_same_system, check_test06
from mlperf_llama2.submission.package import measurements

FULL = constants.TOTAL_SAMPLE_COUNT
PASSING = {"rouge1": 44.5, "rouge2": 22.1, "rougeL": 28.7, "rougeLsum": 42.0, "gen_len": 1, "gen_num": FULL,
           "gen_tok_len": 1, "tokens_per_sample": 294.0}


def write_detail(run_dir: Path, audit: bool = False, **values) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f':::MLLOG {json.dumps({"key": k, "value": v, "metadata": {}})}' for k, v in values.items()]
    if audit:
        lines.append(':::MLLOG {"key": "generic_message", "value": "Found Audit Config file", "metadata": {}}')
    (run_dir / "mlperf_log_detail.txt").write_text("\n".join(lines) + "\n")
    (run_dir / "mlperf_log_summary.txt").write_text("Result is : " + str(values.get("result_validity")) + "\n")


def write_info(run_dir: Path, **fields) -> None:
    (run_dir / "run_info.json").write_text(json.dumps(fields))


@pytest.fixture
def model_70b(tmp_path) -> Path:
    d = tmp_path / "Llama-2-70b-chat-hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192,
                                               "vocab_size": constants.LLAMA2_VOCAB_SIZE}))
    return d


@pytest.fixture
def result(tmp_path, model_70b):
    """A closed-division Offline result that passes every rule: perf, accuracy (24,576 samples), TEST06."""
    info = dict(model_path=str(model_70b), dtype="float16", backend="engine", liteml_config=None,
                quant_backend="auto", quant_mode="simulate", max_new_tokens=1024, lg_model_name="llama2-70b",
                user_conf=str(tmp_path / "user.conf"), command="python3 main.py --scenario Offline")
    (tmp_path / "user.conf").write_text("llama2-70b.Offline.target_qps = 1\n")
    perf = tmp_path / "perf"
    write_detail(perf, effective_test_mode="PerformanceOnly", effective_scenario="Offline", result_validity="VALID",
                 effective_min_duration_ms=600000, result_tokens_per_second=1886.0, loadgen_version="6.0.17")
    write_info(perf, **info)
    acc = tmp_path / "acc"
    write_detail(acc, effective_test_mode="AccuracyOnly", effective_scenario="Offline", effective_min_duration_ms=0)
    write_info(acc, **{**info, "accuracy": True, "command": "python3 main.py --scenario Offline --accuracy"})
    (acc / "mlperf_log_accuracy.json").write_text(json.dumps([{"qsl_idx": i, "data": "02000000", "token_count": 1}
                                                              for i in range(FULL)]))
    (acc / "accuracy.txt").write_text("Results\n\n" + repr(PASSING) + "\n")
    t06 = tmp_path / "t06" / "TEST06"
    t06.mkdir(parents=True)
    (t06 / "verify_accuracy.txt").write_text("First token check pass: Skipped\nEOS check pass: True\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    return {"perf": perf, "acc": acc, "t06": tmp_path / "t06", "root": tmp_path / "submission"}


def argv(r, *extra, scenario="Offline", division="closed"):
    return ["--root", str(r["root"]), "--division", division, "--submitter", "Acme", "--system", "h200_x1",
            "--scenario", scenario, "--performance-dir", str(r["perf"]), "--accuracy-dir", str(r["acc"]),
            "--test06-dir", str(r["t06"]), *extra]


def test_a_passing_closed_result_is_written_in_the_v6_layout(result, capsys):
    assert main(argv(result)) == 0
    scenario = result["root"] / "closed" / "Acme" / "results" / "h200_x1" / "llama2-70b-99" / "Offline"
    assert (scenario / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()
    assert (scenario / "accuracy" / "accuracy.txt").read_text().endswith(repr(PASSING) + "\n")
    assert (scenario / "TEST06" / "verify_accuracy.txt").is_file()
    assert (scenario / "user.conf").read_text() == "llama2-70b.Offline.target_qps = 1\n"
    assert json.loads((scenario / "measurements.json").read_text())["starting_weights_filename"] == \
        "Llama-2-70b-chat-hf"
    assert "1886.0 tokens/s" in (scenario / "README.md").read_text()
    assert (result["root"] / "closed" / "Acme" / "systems" / "h200_x1.json").is_file()
    assert "error" not in capsys.readouterr().err


def test_the_99_9_benchmark_needs_more_rouge_than_the_99(result, capsys):
    # PASSING meets 99.9% of every ROUGE; ROUGE-2 22.0 is above 99% (21.81) and below 99.9% (22.01).
    text = "Results\n\n" + repr({**PASSING, "rouge2": 22.0}) + "\n"
    (result["acc"] / "accuracy.txt").write_text(text)
    assert main(argv(result, "--benchmark", "llama2-70b-99", "--check-only")) == 0
    assert main(argv(result, "--benchmark", "llama2-70b-99.9", "--check-only")) == 2
    assert "below the llama2-70b-99.9 target" in capsys.readouterr().err


def test_an_invalid_or_audited_performance_run_is_refused(tmp_path):
    run = tmp_path / "p"
    write_detail(run, audit=True, effective_test_mode="PerformanceOnly", effective_scenario="Offline",
                 result_validity="INVALID", result_invalid_reason="Min queries not met",
                 effective_min_duration_ms=600000)
    errors = check_performance(str(run), "Offline", closed=False).errors
    assert any("LoadGen result INVALID (Min queries not met)" in e for e in errors)
    assert any("audit.config" in e for e in errors)


def test_runs_must_be_the_right_mode_and_scenario(result):
    errors = check_performance(str(result["acc"]), "Offline", closed=True).errors
    assert any("test mode AccuracyOnly, expected PerformanceOnly" in e for e in errors)
    errors = check_performance(str(result["perf"]), "Server", closed=True).errors
    assert any("LoadGen scenario Offline, expected Server" in e for e in errors)


def test_interactive_is_told_from_server_by_the_loadgen_model_name(tmp_path):
    run = tmp_path / "p"
    write_detail(run, effective_test_mode="PerformanceOnly", effective_scenario="Server", result_validity="VALID",
                 effective_min_duration_ms=600000)
    write_info(run, lg_model_name="llama2-70b", max_new_tokens=1024)
    assert any("not the Interactive scenario" in e for e in check_performance(str(run), "Interactive", True).errors)
    assert check_performance(str(run), "Server", True).errors == []
    write_info(run, lg_model_name="llama2-70b-interactive", max_new_tokens=1024)
    assert check_performance(str(run), "Interactive", True).errors == []


def test_test06_rules(tmp_path, result):
    assert check_test06(str(result["t06"]), "Offline", True).errors == []
    server = check_test06(str(result["t06"]), "Server", True).errors  # Server must check the first token
    assert server and "first token check Skipped" in server[0]
    assert check_test06(None, "Offline", closed=True).errors
    missing = check_test06(None, "Offline", closed=False)
    assert not missing.errors and missing.warnings
    (result["t06"] / "TEST06" / "verify_accuracy.txt").write_text(
        "First token check pass: Skipped\nEOS check pass: False\nSample length check pass: True\n"
        "TEST06 verification complete\n")
    assert any("eos check pass: False" in e for e in check_test06(str(result["t06"]), "Offline", True).errors)


def test_accuracy_txt_from_another_run_is_caught(result):
    (result["acc"] / "accuracy.txt").write_text(repr({**PASSING, "gen_num": 100}))
    errors = check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99", closed=True).errors
    assert any("scores 100 samples but mlperf_log_accuracy.json has 24576" in e for e in errors)


def test_performance_and_accuracy_runs_must_match(result):
    perf = json.loads((result["perf"] / "run_info.json").read_text())
    assert check_same_system(perf, dict(perf)).errors == []
    errors = check_same_system(perf, {**perf, "dtype": "float32"}).errors
    assert errors == ["performance and accuracy runs differ in dtype: float16 vs float32"]


def test_nothing_is_written_when_a_rule_fails(result):
    (result["acc"] / "accuracy.txt").unlink()
    assert main(argv(result)) == 2
    assert not result["root"].exists()


def test_measurements_describe_the_quantized_model():
    info = dict(model_path="/models/Llama-2-70b-chat-hf/", dtype="float16",
                liteml_config="liteml_configs/w8a8_npm_v1_3_4.yaml", quant_backend="open", quant_mode="int8")
    m = measurements(info, {})
    assert m["starting_weights_filename"] == "Llama-2-70b-chat-hf"
    assert m["weight_data_types"].startswith("int8") and "w8a8_npm_v1_3_4.yaml" in m["weight_transformations"]


def test_measurement_overrides_reach_measurements_json_and_unknown_keys_are_refused(result, capsys):
    assert main(argv(result, "--measurement", "retraining=no; calibration on the MLPerf calibration set")) == 0
    scenario = result["root"] / "closed" / "Acme" / "results" / "h200_x1" / "llama2-70b-99" / "Offline"
    assert json.loads((scenario / "measurements.json").read_text())["retraining"] == \
        "no; calibration on the MLPerf calibration set"
    with pytest.raises(SystemExit) as exc:
        main(argv(result, "--measurement", "weights=int8"))
    assert exc.value.code == 2 and "KEY one of" in capsys.readouterr().err
