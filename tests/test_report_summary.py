"""Run summary and plots (mlperf_llama2/report/summary.py, plots.py) on genuine LoadGen logs: each run is a
seconds-long LoadGen test against a fake SUT in its own process (tests/fake_loadgen_run.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_llama2 import constants
from mlperf_llama2.report.plots import write_plots
from mlperf_llama2.report.summary import (
    accuracy_targets,
    build_summary,
    loadgen_verdict,
    parse_accuracy_result,
    parse_detail,
    render_table,
    write_summary,
)
from mlperf_llama2.report.timings import read_timings

HERE = Path(__file__).resolve().parent
SAMPLES, TOKENS = 24, 6
ROUGE_LINE = ("\nResults\n\n{'rouge1': 44.5, 'rouge2': 22.1, 'rougeL': 28.7, 'rougeLsum': 42.0, 'gen_len': 100, "
              "'gen_num': 24, 'gen_tok_len': 7000, 'tokens_per_sample': 291.7}\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four real LoadGen runs (Offline/Server x accuracy/performance), started together."""
    root = tmp_path_factory.mktemp("lgruns")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    procs = {}
    for scenario in ("Offline", "Server"):
        for mode in ("accuracy", "performance"):
            out = root / f"{scenario}-{mode}"
            out.mkdir()
            procs[(scenario, mode)] = (out, subprocess.Popen(
                [sys.executable, str(HERE / "fake_loadgen_run.py"), str(out), scenario, mode,
                 "--samples", str(SAMPLES), "--tokens", str(TOKENS)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    dirs = {}
    for key, (out, proc) in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        dirs[key] = str(out)
    return dirs


def test_detail_log_parses_every_mllog_line(runs):
    detail, errors = parse_detail(os.path.join(runs[("Server", "performance")], "mlperf_log_detail.txt"))
    assert detail["effective_scenario"] == "Server" and detail["effective_test_mode"] == "PerformanceOnly"
    assert detail["result_validity"] in ("VALID", "INVALID")
    assert detail["result_first_token_99.00_percentile_latency_ns"] >= detail["result_first_token_50.00_percentile_latency_ns"]
    assert errors == []


def test_server_performance_summary_has_latencies_and_verdict(runs):
    s = build_summary(runs[("Server", "performance")])
    assert (s.scenario, s.mode, s.samples) == ("Server", "PerformanceOnly", SAMPLES)
    assert s.tokens_per_s > 0
    assert 0 < s.ttft_p50_ms <= s.ttft_p99_ms < 1000
    assert 0 < s.tpot_p50_ms <= s.tpot_p99_ms < 1000
    # 24 queries cannot satisfy early stopping at the 99th percentile: LoadGen says INVALID, and why.
    assert s.verdict == "INVALID" and "Early stopping" in s.reason
    table = render_table(s)
    assert "TTFT p50 / p99 (ms)" in table and "INVALID (Early stopping satisfied: NO)" in table


def test_verdict_is_invalid_when_loadgens_two_logs_disagree(runs, tmp_path):
    """LoadGen 6.0.17 with target_latency_percentile 150: the summary says INVALID, the detail log VALID."""
    import re
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("Server", "performance")], run_dir)
    summary = run_dir / "mlperf_log_summary.txt"
    assert "Result is : INVALID" in summary.read_text()
    with open(run_dir / "mlperf_log_detail.txt", "a") as f:  # the last value of a key wins
        f.write(':::MLLOG {"key": "result_validity", "value": "VALID", "metadata": {"is_error": false}}\n')
    s = build_summary(str(run_dir))
    assert s.verdict == "INVALID"
    assert s.reason.startswith("LoadGen's logs disagree: mlperf_log_summary.txt says INVALID, mlperf_log_detail.txt "
                               "says result_validity VALID") and "Early stopping satisfied: NO" in s.reason
    assert re.search(r"^LoadGen verdict +: INVALID \(LoadGen's logs disagree", render_table(s), re.M)
    assert s.submittable.startswith("submittable for v6.1 closed: no (LoadGen result INVALID (LoadGen's logs "
                                    "disagree"), s.submittable
    summary.write_text(summary.read_text().replace("Result is : INVALID", "Result is : VALID"))
    (run_dir / "mlperf_log_detail.txt").write_text((run_dir / "mlperf_log_detail.txt").read_text().replace(
        '"value": "VALID"', '"value": "INVALID"'))
    assert build_summary(str(run_dir)).verdict == "INVALID"  # the other way round too


def test_verdict_of_agreeing_or_single_logs():
    assert loadgen_verdict({"result_validity": "VALID"}, {"Result is": "VALID"}) == ("VALID", "")
    assert loadgen_verdict({}, {"Result is": "VALID"}) == ("VALID", "")
    assert loadgen_verdict({"result_validity": "INVALID"}, {"Min duration satisfied": "NO"}) == (
        "INVALID", "Min duration satisfied: NO")
    assert loadgen_verdict({}, {}) == ("?", "")


def test_offline_performance_summary_uses_loadgens_token_rate(runs):
    run_dir = runs[("Offline", "performance")]
    detail, _ = parse_detail(os.path.join(run_dir, "mlperf_log_detail.txt"))
    s = build_summary(run_dir)
    assert s.tokens_per_s == pytest.approx(detail["result_tokens_per_second"])
    assert s.ttft_p50_ms is None and "TTFT" not in render_table(s)
    assert s.samples == len(read_timings(run_dir)) >= SAMPLES


def test_accuracy_summary_counts_samples_reads_rouge_and_does_not_judge_a_stand_in(runs):
    run_dir = runs[("Offline", "accuracy")]
    s = build_summary(run_dir, accuracy_text=ROUGE_LINE)
    assert (s.mode, s.samples, s.verdict) == ("AccuracyOnly", SAMPLES, "n/a")
    assert s.rouge["rouge1"] == 44.5 and s.targets is None
    assert s.output_capped and "output cap" in render_table(s)  # the fake run recorded max_new_tokens=6
    path = write_summary(run_dir, s)
    saved = json.loads(Path(path).read_text())
    assert saved["rouge"]["tokens_per_sample"] == 291.7 and saved["samples"] == SAMPLES and saved["output_capped"]


def test_targets_are_judged_for_llama2_70b_only(runs, tmp_path):
    run_dir = runs[("Server", "accuracy")]
    model = tmp_path / "llama2-70b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(
        {"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "vocab_size": 32000}))
    info_path = Path(run_dir) / "run_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(dict(info, model_path=str(model))))
    s = build_summary(run_dir, accuracy_text=ROUGE_LINE)
    assert s.targets == {"99": True, "99.9": True, "tokens_per_sample": True}
    assert "llama2-70b-99.9" in render_table(s) and "PASS" in render_table(s)


def test_accuracy_targets_boundaries():
    ref = constants.ROUGE_REFERENCE
    at_99 = {k: round(v * 0.99, 4) + 1e-4 for k, v in ref.items()}
    assert accuracy_targets(dict(at_99, tokens_per_sample=294.0)) == {"99": True, "99.9": False, "tokens_per_sample": True}
    assert accuracy_targets(dict(ref, rouge2=21.0, tokens_per_sample=400.0)) == {
        "99": False, "99.9": False, "tokens_per_sample": False}


def test_rouge_line_parsing():
    assert parse_accuracy_result("noise\n" + ROUGE_LINE)["gen_num"] == 24
    assert parse_accuracy_result("no result here") is None


def test_plots_written_and_non_empty(runs, tmp_path):
    server = write_plots(runs[("Server", "performance")], out_dir=str(tmp_path / "server"))
    assert sorted(os.path.basename(p) for p in server) == ["throughput.png", "tpot.png", "ttft.png"]
    dataset = tmp_path / "ds.pkl"
    import pandas as pd

    pd.DataFrame({"tok_input": [[1, 2]] * SAMPLES, "tok_output_length": list(range(3, 3 + SAMPLES))}).to_pickle(dataset)
    accuracy = write_plots(runs[("Offline", "accuracy")], dataset_path=str(dataset), out_dir=str(tmp_path / "acc"))
    assert sorted(os.path.basename(p) for p in accuracy) == ["output_lengths.png", "throughput.png"]
    for path in server + accuracy:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_command_prints_table_and_writes_summary_and_plots(runs):
    run_dir = runs[("Server", "accuracy")]
    (Path(run_dir) / "accuracy.txt").write_text(ROUGE_LINE)
    out = subprocess.run([sys.executable, "-m", "mlperf_llama2.report", run_dir], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parent)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'rouge1': 44.5" in out.stdout and "LoadGen verdict" in out.stdout
    assert os.path.getsize(os.path.join(run_dir, "summary.json")) > 0
    assert os.path.getsize(os.path.join(run_dir, "plots", "ttft.png")) > 0


def test_report_command_rejects_a_directory_without_loadgen_logs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlperf_llama2.report", str(tmp_path)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)), timeout=60)
    assert out.returncode == 2 and "no mlperf_log_detail.txt" in out.stderr and out.stderr.count("\n") == 1


def test_summary_names_the_quantization_config_and_mode(runs, tmp_path):
    import re
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("Offline", "performance")], run_dir)
    info = json.loads((run_dir / "run_info.json").read_text())
    (run_dir / "run_info.json").write_text(json.dumps(dict(info, model_path="/m", quant_backend="open",
                                                           quant_mode="int8", liteml_config=None)))
    plain = build_summary(str(run_dir))
    assert (plain.quantization, plain.quant_mode) == (None, None)  # a mode without a config means nothing
    assert re.search(r"^quantization +: none$", render_table(plain), re.M)
    (run_dir / "run_info.json").write_text(json.dumps(dict(
        info, model_path="/m", quant_backend="open", quant_mode="int8",
        liteml_config="liteml_configs/w8a8_npm_v1_3_4.yaml")))
    s = build_summary(str(run_dir))
    assert "w8a8_npm_v1_3_4.yaml, int8 mode (open backend)" in render_table(s)
    saved = json.loads(Path(write_summary(str(run_dir), s)).read_text())
    assert (saved["quantization"], saved["quant_mode"], saved["quant_backend"]) == \
        ("liteml_configs/w8a8_npm_v1_3_4.yaml", "int8", "open")
