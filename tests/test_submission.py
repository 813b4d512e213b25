"""The submission packager's rules on synthetic LoadGen logs (the end-to-end run through real LoadGen runs is
in test_loadgen_runs.py): what a closed result needs, what the open division relaxes, and where files go."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from loadgen_fixtures import REPO
from mlperf_llama2 import constants, input_identity
from mlperf_llama2.compliance import test06
from mlperf_llama2.input_identity import InputIdentity
from mlperf_llama2.report.run_info import RunInfo, read_run_info
from mlperf_llama2.report.summary import parse_detail
from mlperf_llama2.submission.__main__ import main
from mlperf_llama2.submission.checks import check_accuracy, check_performance, check_same_system, check_test06
from mlperf_llama2.submission.package import measurements, truncated
from mlperf_llama2.submission.rounds import ROUNDS
from mlperf_llama2.submission.rules import submittable

FULL = constants.TOTAL_SAMPLE_COUNT
V61 = ROUNDS["v6.1"]
SEEDS = {f"effective_{k}": v for k, v in V61.seeds.items()}
# What a VALID closed Offline run logs beyond mode and scenario.
GOOD_OFFLINE = dict(effective_performance_sample_count=FULL, effective_samples_per_query=FULL,
                    requested_performance_sample_count_override=FULL, qsl_reported_total_count=FULL,
                    requested_use_token_latencies=True, **SEEDS)

PASSING = {"rouge1": 44.5, "rouge2": 22.1, "rougeL": 28.7, "rougeLsum": 42.0, "gen_len": 1, "gen_num": FULL,
           "gen_tok_len": FULL, "tokens_per_sample": 294.0}  # the fixture's log: one token a sample


def write_detail(run_dir: Path, audit: bool = False, **values) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f':::MLLOG {json.dumps({"key": k, "value": v, "metadata": {}})}' for k, v in values.items()]
    if audit:
        lines.append(':::MLLOG {"key": "generic_message", "value": "Found Audit Config file", "metadata": {}}')
    (run_dir / "mlperf_log_detail.txt").write_text("\n".join(lines) + "\n")
    (run_dir / "mlperf_log_summary.txt").write_text("Result is : " + str(values.get("result_validity")) + "\n")


def write_info(run_dir: Path, **fields) -> None:
    (run_dir / "run_info.json").write_text(json.dumps(fields))


def record_inputs(run_dir: Path, inputs: InputIdentity) -> None:
    """What main.py adds to run_info.json: the content identity of the run's input files."""
    input_identity.record(str(run_dir), inputs)


def audit_entry(idx: int, data: list[int], first: list[int] | None = None, count: int | None = None) -> dict:
    """An accuracy-log entry of an audit run: int32 tokens as hex, token_data the first token (Server)."""
    e = {"seq_id": idx, "qsl_idx": idx, "data": b"".join(t.to_bytes(4, "little") for t in data).hex().upper(),
         "token_count": len(data) if count is None else count}
    if first is not None:
        e["token_data"] = b"".join(t.to_bytes(4, "little") for t in first).hex().upper()
    return e


# An audit run's samples that pass every TEST06 check in every scenario (one EOS at most, at the end).
AUDITED = [audit_entry(0, [5, 6, constants.LLAMA2_EOS_TOKEN], [5]), audit_entry(1, [7, 8], [7])]


def write_audit_log(logs: Path, entries: list[dict]) -> None:
    (logs / "mlperf_log_accuracy.json").write_text(json.dumps(entries))


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
    (tmp_path / "data.pkl").write_bytes(b"the 24576 samples")
    inputs = input_identity.collect(str(tmp_path / "data.pkl"), str(model_70b), str(tmp_path / "user.conf"), None)
    perf = tmp_path / "perf"
    write_detail(perf, effective_test_mode="PerformanceOnly", effective_scenario="Offline", result_validity="VALID",
                 effective_min_duration_ms=600000, result_tokens_per_second=1886.0, loadgen_version="6.0.17",
                 **GOOD_OFFLINE)
    write_info(perf, **info)
    record_inputs(perf, inputs)
    acc = tmp_path / "acc"
    write_detail(acc, effective_test_mode="AccuracyOnly", effective_scenario="Offline", effective_min_duration_ms=0,
                 qsl_reported_total_count=FULL, **SEEDS)
    write_info(acc, **{**info, "accuracy": True, "command": "python3 main.py --scenario Offline --accuracy"})
    record_inputs(acc, inputs)
    (acc / "mlperf_log_accuracy.json").write_text(json.dumps([{"qsl_idx": i, "data": "02000000", "token_count": 1}
                                                              for i in range(FULL)]))
    (acc / "accuracy.txt").write_text("Results\n\n" + repr(PASSING) + "\n")
    t06 = tmp_path / "t06" / "TEST06"
    t06.mkdir(parents=True)
    (t06 / "verify_accuracy.txt").write_text("First token check pass: Skipped\nEOS check pass: True\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    write_detail(t06 / "accuracy", audit=True, effective_scenario="Offline", **SEEDS)
    write_audit_log(t06 / "accuracy", AUDITED)
    write_info(t06 / "accuracy", **{**info, "command": "python3 main.py --scenario Offline  # audit"})
    audit_conf = tmp_path / "audit.config"
    audit_conf.write_text("*.*.mode = 2\n")
    audited = dataclasses.replace(inputs, audit_conf=input_identity.file_identity(str(audit_conf)))
    record_inputs(t06 / "accuracy", audited)
    return {"perf": perf, "acc": acc, "t06": tmp_path / "t06", "root": tmp_path / "submission", "inputs": inputs,
            "model": model_70b}


SYSTEM = ["--status", "available", "--system-field", "host_memory_configuration=16x 64 GB DDR5", "--system-field",
          "host_networking=Ethernet", "--system-field", "host_networking_topology=single node", "--system-field",
          "cooling=air", "--allow-modified-source"]


def argv(r, *extra, scenario="Offline", division="closed"):
    return ["--root", str(r["root"]), "--division", division, "--submitter", "Acme", "--system", "h200_x1",
            "--scenario", scenario, "--performance-dir", str(r["perf"]), "--accuracy-dir", str(r["acc"]),
            "--test06-dir", str(r["t06"]), *SYSTEM, *extra]


def test_a_passing_closed_result_is_written_in_the_v6_1_layout(result, capsys):
    assert main(argv(result)) == 0
    scenario = result["root"] / "closed" / "Acme" / "results" / "h200_x1" / "llama2-70b-99.9" / "Offline"
    assert (scenario / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()
    log = (result["acc"] / "mlperf_log_accuracy.json").read_bytes()
    assert (scenario / "accuracy" / "accuracy.txt").read_text() == \
        "Results\n\n" + repr(PASSING) + f"\n\nhash={hashlib.sha256(log).hexdigest()}\n"  # as truncate_accuracy_log.py
    assert (scenario / "accuracy" / "mlperf_log_accuracy.json").read_bytes() == truncated(log)
    assert len(truncated(log)) < 10 * 1024 < len(log)
    assert (scenario / "TEST06" / "verify_accuracy.txt").is_file()
    assert (scenario / "user.conf").read_text() == "llama2-70b.Offline.target_qps = 1\n"
    assert json.loads((scenario / "measurements.json").read_text())["starting_weights_filename"] == \
        "Llama-2-70b-chat-hf"
    assert "1886.0 tokens/s" in (scenario / "README.md").read_text()
    system = json.loads((result["root"] / "closed" / "Acme" / "systems" / "h200_x1.json").read_text())
    assert system["status"] == "available" and system["cooling"] == "air"
    assert list((result["root"] / "closed" / "Acme" / "src").iterdir())
    captured = capsys.readouterr()
    assert "error" not in captured.err
    assert "needs one of Interactive or Server too" in captured.err  # Offline alone: the tree is incomplete
    assert main(["--root", str(result["root"]), "--check"]) == 2


def test_checking_a_root_without_results_does_not_pass(tmp_path, capsys):
    """`--check` on a mistyped --root, an empty directory or one whose division is misspelt: nothing was checked."""
    assert main(["--root", str(tmp_path / "no-such-tree"), "--check"]) == 2
    assert f"--root {tmp_path / 'no-such-tree'}: no such directory" in capsys.readouterr().err
    (tmp_path / "tree" / "Closed" / "Acme" / "results").mkdir(parents=True)
    assert main(["--root", str(tmp_path / "tree"), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"--root {tmp_path / 'tree'}: holds no result" in err and "passes" not in err


def test_the_99_9_benchmark_needs_more_rouge_than_the_99(result, capsys):
    # PASSING meets 99.9% of every ROUGE; ROUGE-2 22.0 is above 99% (21.81) and below 99.9% (22.01).
    text = "Results\n\n" + repr({**PASSING, "rouge2": 22.0}) + "\n"
    (result["acc"] / "accuracy.txt").write_text(text)
    assert main(argv(result, "--round", "v6.0", "--benchmark", "llama2-70b-99", "--check-only")) == 2
    err = capsys.readouterr().err  # v6.1 seeds fail v6.0's check, with the LoadGen version to use
    assert "qsl_rng_seed, sample_index_rng_seed, schedule_rng_seed wrong for v6.0: LoadGen 6.0.17 wrote v6.1's" \
           " seeds" in err and "--round v6.1" in err
    assert main(argv(result, "--benchmark", "llama2-70b-99.9", "--check-only")) == 2
    assert "below the llama2-70b-99.9 target" in capsys.readouterr().err
    assert main(argv(result, "--benchmark", "llama2-70b-99", "--check-only")) == 2  # gone from v6.1
    assert "llama2-70b-99 is not a v6.1 benchmark" in capsys.readouterr().err


def test_an_invalid_or_audited_performance_run_is_refused(tmp_path):
    run = tmp_path / "p"
    write_detail(run, audit=True, effective_test_mode="PerformanceOnly", effective_scenario="Offline",
                 result_validity="INVALID", result_invalid_reason="Min queries not met",
                 effective_min_duration_ms=600000)
    errors = check_performance(str(run), "Offline", False, V61).errors
    assert any("LoadGen result INVALID (Min queries not met)" in e for e in errors)
    assert any("audit.config" in e for e in errors)


def test_a_run_whose_two_loadgen_logs_disagree_is_refused(result):
    """LoadGen 6.0.17 can write VALID in the detail log and INVALID in the summary (a target latency percentile
    above 100): the packager takes the summary report's verdict, INVALID."""
    detail = dict(effective_test_mode="PerformanceOnly", effective_scenario="Offline", result_validity="VALID",
                  effective_min_duration_ms=600000, **GOOD_OFFLINE)
    write_detail(result["perf"], **detail)
    assert check_performance(str(result["perf"]), "Offline", True, V61).errors == []
    (result["perf"] / "mlperf_log_summary.txt").write_text("Result is : INVALID\n")
    found = check_performance(str(result["perf"]), "Offline", True, V61)
    errors = found.errors
    assert len(errors) == 1 and "LoadGen result INVALID (LoadGen's logs disagree: mlperf_log_summary.txt says " \
        "INVALID, mlperf_log_detail.txt says result_validity VALID)" in errors[0], errors
    assert found.facts["verdict"] == "INVALID"  # what a --force package's README states


def test_a_performance_run_on_part_of_the_dataset_is_refused_in_both_divisions(result, capsys):
    # --total-sample-count 2: LoadGen still logs mlperf.conf's performance_sample_count 24576, and VALID.
    detail = dict(effective_test_mode="PerformanceOnly", effective_scenario="Offline", result_validity="VALID",
                  effective_min_duration_ms=600000, **{**GOOD_OFFLINE, "qsl_reported_total_count": 2})
    write_detail(result["perf"], **detail)
    for closed in (True, False):
        errors = check_performance(str(result["perf"]), "Offline", closed, V61).errors
        assert [e.split(": ", 1)[1] for e in errors] == [
            "QSL of 2 samples, not the dataset's 24576 (--total-sample-count or a smaller dataset file)"]
    info = read_run_info(str(result["perf"]))
    assert submittable(detail, [], info, None).startswith("submittable for v6.1 closed: no (QSL of 2 samples")
    assert submittable({**detail, "qsl_reported_total_count": FULL}, [], info, None) == \
        "submittable for v6.1 closed: yes"
    assert main(argv(result, "--check-only")) == 2
    assert "QSL of 2 samples" in capsys.readouterr().err


def test_an_accuracy_override_above_the_qsl_does_not_count_as_the_whole_dataset(result):
    """accuracy_sample_count_override 24576 on a 100-sample QSL: LoadGen answers 100 but logs 24576 as
    effective_accuracy_sample_count, which the accuracy rules took for the samples covered ("submittable: yes")."""
    detail = dict(effective_test_mode="AccuracyOnly", effective_scenario="Offline", qsl_reported_total_count=100,
                  effective_accuracy_sample_count=FULL)
    info = read_run_info(str(result["perf"]))
    assert "covers 100 samples, the dataset has 24576" in submittable(detail, [], info, None)
    assert submittable({**detail, "qsl_reported_total_count": FULL}, [], info, None) == \
        "submittable for v6.1 closed: yes (once its ROUGE meets the target)"
    # an override below the QSL is what LoadGen issues
    assert "covers 10 samples" in submittable({**detail, "qsl_reported_total_count": FULL,
                                               "effective_accuracy_sample_count": 10}, [], info, None)


def test_runs_must_be_the_right_mode_and_scenario(result):
    errors = check_performance(str(result["acc"]), "Offline", True, V61).errors
    assert any("test mode AccuracyOnly, expected PerformanceOnly" in e for e in errors)
    errors = check_performance(str(result["perf"]), "Server", True, V61).errors
    assert any("LoadGen scenario Offline, expected Server" in e for e in errors)


def server_run(run, ttft_ms=400, tpot_ms=30, **extra):
    """A VALID closed Server run's detail log; an `extra` value of None leaves that key out."""
    values = dict(effective_test_mode="PerformanceOnly", effective_scenario="Server", result_validity="VALID",
                  effective_min_duration_ms=600000, effective_performance_sample_count=FULL, early_stopping_met=True,
                  qsl_reported_total_count=FULL, requested_use_token_latencies=True,
                  effective_target_latency_percentile=0.99,
                  **{"result_first_token_99.00_percentile_latency_ns": ttft_ms * 1e6,
                     "result_time_per_output_token_99.00_percentile_ns": tpot_ms * 1e6, **SEEDS})
    values.update(extra)
    write_detail(run, **{k: v for k, v in values.items() if v is not None})


def test_interactive_is_told_from_server_by_the_loadgen_model_name(tmp_path):
    run = tmp_path / "p"
    server_run(run)
    write_info(run, lg_model_name="llama2-70b", max_new_tokens=1024)
    errors = check_performance(str(run), "Interactive", True, V61).errors
    assert any("not the Interactive scenario" in e for e in errors)
    assert check_performance(str(run), "Server", True, V61).errors == []
    write_info(run, lg_model_name="llama2-70b-interactive", max_new_tokens=1024)
    assert check_performance(str(run), "Interactive", True, V61).errors == []


def test_latency_limits_are_the_rules_whatever_user_conf_said(tmp_path):
    run = tmp_path / "p"
    # VALID for LoadGen because user.conf loosened TTFT to 60 s: the checker misses it, the packager does not.
    server_run(run, ttft_ms=1500, requested_server_ttft_latency=60_000 * 1e6, requested_server_tpot_latency=200e6)
    write_info(run, lg_model_name="llama2-70b", max_new_tokens=1024)
    closed = check_performance(str(run), "Server", True, V61)
    assert [e.split(": ", 1)[1] for e in closed.errors] == [
        "user.conf loosened ttft_latency to 60000 ms (limit 2000 ms)"]
    assert check_performance(str(run), "Server", False, V61).errors == []  # open: a warning
    write_info(run, lg_model_name="llama2-70b-interactive", max_new_tokens=1024)
    errors = check_performance(str(run), "Interactive", True, V61).errors
    assert any("over the Interactive limits 450 / 40 ms" in e for e in errors)
    server_run(run, ttft_ms=2500)  # over the Server limit: the checker errors in both divisions
    assert any("over the Server limits 2000 / 200 ms" in e for e in check_performance(str(run), "Server", False,
                                                                                        V61).errors)


def test_a_latency_over_its_limit_is_never_printed_as_the_limit(tmp_path):
    run = tmp_path / "p"
    server_run(run, ttft_ms=450.3, tpot_ms=40.04)
    write_info(run, lg_model_name="llama2-70b-interactive", max_new_tokens=1024)
    [error] = check_performance(str(run), "Interactive", True, V61).errors
    assert "p99 TTFT 450.3 ms / TPOT 40.04 ms over the Interactive limits 450 / 40 ms" in error, error


@pytest.mark.parametrize("which", ["perf", "acc", "t06"])
def test_a_stopped_run_is_refused_whatever_loadgen_said(result, capsys, which):
    """A run stopped midway (RUN_STOPPED.txt: a failed sample or a signal) answered its remaining samples empty;
    LoadGen's logs can still say VALID, and the accuracy log still scores."""
    assert main(argv(result, "--check-only")) == 0
    capsys.readouterr()
    logs = result["t06"] / "TEST06" / "accuracy" if which == "t06" else result[which]
    (logs / "RUN_STOPPED.txt").write_text("run stopped: sample 17 failed: CUDA out of memory\n")
    assert main(argv(result, "--check-only")) == 2
    err = capsys.readouterr().err
    assert "the run was stopped (run stopped: sample 17 failed: CUDA out of memory)" in err, err


@pytest.mark.parametrize("percentile", [1.5, 0.5, 0.999, None])
def test_the_latency_percentile_must_be_the_rules_99(tmp_path, percentile):
    run = tmp_path / "p"
    server_run(run, effective_target_latency_percentile=percentile)  # user.conf 150 logs 1.5
    write_info(run, lg_model_name="llama2-70b", max_new_tokens=1024)
    closed = [e.split(": ", 1)[1] for e in check_performance(str(run), "Server", True, V61).errors]
    assert closed == ["no target_latency_percentile in the detail log" if percentile is None else
                      f"user.conf set target_latency_percentile {percentile * 100:g} (rule: 99)"]
    assert submittable(parse_detail(str(run / "mlperf_log_detail.txt"))[0], [], read_run_info(str(run)),
                       None).startswith("submittable for v6.1 closed: no (")
    opened = check_performance(str(run), "Server", False, V61)
    assert opened.errors == [] and len(opened.warnings) == 1
    server_run(run)
    assert check_performance(str(run), "Server", True, V61).errors == []


def test_test06_rules(tmp_path, result):
    assert check_test06(str(result["t06"]), "Offline", True, V61).errors == []
    server = check_test06(str(result["t06"]), "Server", True, V61).errors  # Server must check the first token
    assert server and "first token check Skipped" in server[0]
    assert any("audits a Offline run, not Server" in e for e in server)
    assert check_test06(None, "Offline", True, V61).errors
    missing = check_test06(None, "Offline", False, V61)
    assert not missing.errors and missing.warnings
    (result["t06"] / "TEST06" / "verify_accuracy.txt").write_text(
        "First token check pass: Skipped\nEOS check pass: False\nSample length check pass: True\n"
        "TEST06 verification complete\n")
    assert any("eos check pass: False" in e for e in check_test06(str(result["t06"]), "Offline", True, V61).errors)


def test_a_server_audit_is_not_an_interactive_one(result):
    t06 = result["t06"] / "TEST06"
    (t06 / "verify_accuracy.txt").write_text("First token check pass: True\nEOS check pass: True\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    write_detail(t06 / "accuracy", audit=True, effective_scenario="Server", **SEEDS)
    info = json.loads((t06 / "accuracy" / "run_info.json").read_text())
    assert check_test06(str(result["t06"]), "Server", True, V61).errors == []
    errors = check_test06(str(result["t06"]), "Interactive", True, V61).errors
    assert errors == [f"TEST06 {t06}: audits a run under --lg-model-name llama2-70b, not the Interactive scenario"]
    write_info(t06 / "accuracy", **{**info, "lg_model_name": "llama2-70b-interactive"})
    assert check_test06(str(result["t06"]), "Interactive", True, V61).errors == []
    assert len(check_test06(str(result["t06"]), "Server", True, V61).errors) == 1


def test_a_test06_verified_with_a_wrong_eos_id_is_refused_in_both_divisions(result, capsys):
    """run_verification.py -e 5 on Llama-2 outputs (EOS 2): no token is 5, so the EOS check passes whatever
    the outputs end with. The packager re-runs the checks on the audit's log with EOS 2 and refuses it."""
    t06 = result["t06"] / "TEST06"
    assert check_test06(str(result["t06"]), "Offline", True, V61).errors == []  # the fixture's good audit
    eos = constants.LLAMA2_EOS_TOKEN
    write_audit_log(t06 / "accuracy", [*AUDITED, audit_entry(7, [5, 6, eos, eos], [5])])  # padding after EOS
    assert test06.main(["-c", str(t06 / "accuracy"), "-o", str(result["t06"]), "-s", "Offline", "-e", "5"]) == 0
    assert (t06 / "verify_accuracy.txt").read_text().splitlines()[1] == "EOS check pass: True"
    expected = (f"TEST06 {t06}: the EOS check fails on accuracy/mlperf_log_accuracy.json re-run with Llama-2's EOS "
                f"id {eos} (Offline): qsl_idx 7: 2 EOS tokens at the end of data; verify_accuracy.txt says True: "
                f"it was verified with another -e or -s, or it is stale or edited")
    for closed in (True, False):
        assert check_test06(str(result["t06"]), "Offline", closed, V61).errors == [expected]
    assert main(argv(result, "--check-only")) == 2
    assert f"submission: error: {expected}" in capsys.readouterr().err.splitlines()
    assert main(argv(result, "--check-only", division="open")) == 2
    assert test06.main(["-c", str(t06 / "accuracy"), "-o", str(result["t06"]), "-s", "Offline"]) == 1  # -e 2
    errors = check_test06(str(result["t06"]), "Offline", True, V61).errors
    assert f"TEST06 {t06}: eos check pass: False" in errors
    assert (f"TEST06 {t06}: the EOS check fails on accuracy/mlperf_log_accuracy.json re-run with Llama-2's EOS id "
            f"{eos} (Offline): qsl_idx 7: 2 EOS tokens at the end of data") in errors


def test_a_verify_accuracy_txt_that_its_logs_contradict_is_refused(result):
    """A stale or hand-edited report next to the real logs: its lines must be what the logs give."""
    t06 = result["t06"] / "TEST06"
    write_audit_log(t06 / "accuracy", [*AUDITED, audit_entry(3, [5, 6], [5], count=9)])  # the fixture's report: pass
    errors = check_test06(str(result["t06"]), "Offline", False, V61).errors
    assert errors == [f"TEST06 {t06}: the sample length check fails on accuracy/mlperf_log_accuracy.json re-run "
                      f"with Llama-2's EOS id 2 (Offline): qsl_idx 3: len(data) 2 != token_count 9; "
                      f"verify_accuracy.txt says True: it was verified with another -e or -s, or it is stale or edited"]
    write_audit_log(t06 / "accuracy", AUDITED)
    (t06 / "verify_accuracy.txt").write_text("First token check pass: Skipped\nEOS check pass: False\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    errors = check_test06(str(result["t06"]), "Offline", True, V61).errors
    assert errors == [f"TEST06 {t06}: eos check pass: False",
                      f"TEST06 {t06}: verify_accuracy.txt says EOS check pass: False, but its "
                      f"accuracy/mlperf_log_accuracy.json gives True (re-run with Llama-2's EOS id 2, Offline): "
                      f"it is stale or edited"]


def test_a_server_audit_without_first_tokens_is_refused_whatever_its_report_says(result):
    t06 = result["t06"] / "TEST06"
    write_detail(t06 / "accuracy", audit=True, effective_scenario="Server", **SEEDS)
    (t06 / "verify_accuracy.txt").write_text("First token check pass: True\nEOS check pass: True\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    assert check_test06(str(result["t06"]), "Server", True, V61).errors == []
    write_audit_log(t06 / "accuracy", [*AUDITED, audit_entry(4, [9, 2])])  # never called FirstTokenComplete
    errors = check_test06(str(result["t06"]), "Server", True, V61).errors
    assert errors == [f"TEST06 {t06}: the first token check fails on accuracy/mlperf_log_accuracy.json re-run with "
                      f"Llama-2's EOS id 2 (Server): qsl_idx 4: no token_data (FirstTokenComplete never called); "
                      f"verify_accuracy.txt says True: it was verified with another -e or -s, or it is stale or edited"]


def test_the_tree_check_re_verifies_each_test06_too(result, server, capsys):
    """A verify_accuracy.txt edited in the tree after packaging: `--check` re-runs the checks on the log beside it."""
    assert main(argv(result)) == 0 and main(argv(server, scenario="Server")) == 0
    assert main(["--root", str(result["root"]), "--check"]) == 0
    t06 = benchmark_dir(result) / "Server" / "TEST06"
    write_audit_log(t06 / "accuracy", [*AUDITED, audit_entry(5, [5, 6], [6])])  # the first token is not data's
    capsys.readouterr()
    assert main(["--root", str(result["root"]), "--check"]) == 2
    assert (f"submission: error: tree: TEST06 {t06}: the first token check fails on accuracy/mlperf_log_accuracy.json "
            f"re-run with Llama-2's EOS id 2 (Server): qsl_idx 5: token_data [6] is not the start of data; "
            f"verify_accuracy.txt says True: it was verified with another -e or -s, or it is stale or edited") in \
        capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("log, expected", [
    (None, "no accuracy/mlperf_log_accuracy.json beside the audit run's logs: cannot re-run the TEST06 checks"),
    ("[]", "the accuracy log is empty"),
    ('[{"qsl_idx": 0, "data": "05', "not valid JSON"),
    (json.dumps([{"qsl_idx": 0, "data": "0500000000000000", "token_count": 1}]), "8 bytes a token (int64), not 4"),
])
def test_a_test06_whose_log_cannot_be_re_verified_is_refused(result, log, expected):
    path = result["t06"] / "TEST06" / "accuracy" / "mlperf_log_accuracy.json"
    if log is None:
        path.unlink()
    else:
        path.write_text(log)
    for closed in (True, False):
        errors = check_test06(str(result["t06"]), "Offline", closed, V61).errors
        assert errors and all(e.startswith(f"TEST06 {result['t06'] / 'TEST06'}: ") for e in errors), errors
        assert any(expected in e for e in errors), errors


def test_a_test06_of_another_model_or_capped_outputs_is_refused(result, capsys):
    info = json.loads((result["t06"] / "TEST06" / "accuracy" / "run_info.json").read_text())
    write_info(result["t06"] / "TEST06" / "accuracy", **{**info, "max_new_tokens": 128, "dtype": "float32"})
    assert main(argv(result, "--check-only")) == 2
    err = capsys.readouterr().err
    assert "the audit run capped outputs at --max-new-tokens 128" in err
    assert "performance run and TEST06 audit run differ in dtype: float16 vs float32" in err


def test_accuracy_txt_from_another_run_is_caught(result):
    (result["acc"] / "accuracy.txt").write_text(repr({**PASSING, "gen_num": 100}))
    errors = check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99.9", closed=True).errors
    assert any("scores 100 samples but mlperf_log_accuracy.json has 24576" in e for e in errors)
    (result["acc"] / "accuracy.txt").write_text(repr(PASSING) + "\nhash=" + "0" * 64 + "\n")
    errors = check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99.9", closed=True).errors
    assert any("hash= 000000000000... is not the hash of" in e and "it scores another log" in e for e in errors)


def test_a_model_whose_config_json_cannot_be_read_is_an_error_in_closed(result, model_70b):
    def findings(closed):
        return check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99.9", closed=closed)

    assert findings(True).errors == [] and not any("config.json" in w for w in findings(True).warnings)
    (model_70b / "config.json").unlink()
    closed, opened = findings(True), findings(False)
    assert len(closed.errors) == 1 and "cannot read the model's config.json" in closed.errors[0]
    assert opened.errors == [] and any("cannot read the model's config.json" in w for w in opened.warnings)
    info = json.loads((result["acc"] / "run_info.json").read_text())
    write_info(result["acc"], **{**info, "model_path": "m"})  # an older run_info.json: the path as given
    errors = findings(True).errors
    assert len(errors) == 1 and "model path m is recorded relative to the run's working directory" in errors[0]


def test_the_runs_must_have_read_the_same_dataset_whatever_its_path(result, tmp_path, capsys):
    assert main(argv(result, "--check-only")) == 0
    other = tmp_path / "elsewhere" / "data.pkl"  # another copy of the same file: the same dataset
    other.parent.mkdir()
    other.write_bytes((tmp_path / "data.pkl").read_bytes())
    moved = dataclasses.replace(result["inputs"], dataset=input_identity.file_identity(str(other)))
    record_inputs(result["acc"], moved)
    assert main(argv(result, "--check-only")) == 0
    other.write_bytes(b"24576 other samples")  # the same name and path, other content
    record_inputs(result["t06"] / "TEST06" / "accuracy",
                  dataclasses.replace(result["inputs"], dataset=input_identity.file_identity(str(other))))
    assert main(argv(result, "--check-only")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err[0] == (f"submission: error: performance run and TEST06 audit run read different datasets: "
                      f"{tmp_path / 'data.pkl'} (17 bytes, sha256 {result['inputs'].dataset.sha256[:12]}...) vs "
                      f"{other} (19 bytes, sha256 {hashlib.sha256(b'24576 other samples').hexdigest()[:12]}...)")


def test_the_same_model_path_naming_other_checkpoints_is_refused(result, tmp_path, capsys):
    # Two runs given the same 'm', each a symlink to another checkpoint: their recorded real paths differ.
    elsewhere = dataclasses.replace(result["inputs"].model, path=str(tmp_path / "other-checkpoint"))
    record_inputs(result["acc"], dataclasses.replace(result["inputs"], model=elsewhere))
    assert main(argv(result, "--check-only")) == 2
    assert (f"performance run and accuracy run ran different checkpoints: {result['model']} vs "
            f"{tmp_path / 'other-checkpoint'}") in capsys.readouterr().err
    retrained = dataclasses.replace(result["inputs"].model, weights_sha256="0" * 64)
    record_inputs(result["acc"], dataclasses.replace(result["inputs"], model=retrained))
    assert main(argv(result, "--check-only")) == 2
    assert "ran different models (config.json or weight names/shapes differ)" in capsys.readouterr().err


def test_a_checkpoint_changed_since_the_run_is_refused_in_closed(result, model_70b):
    config = json.loads((model_70b / "config.json").read_text())
    (model_70b / "config.json").write_text(json.dumps({**config, "rope_theta": 1}))  # still 70B-shaped
    closed = check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99.9", closed=True).errors
    assert len(closed) == 1 and "config.json is not the one the run recorded" in closed[0]
    assert check_accuracy(str(result["acc"]), None, "Offline", "llama2-70b-99.9", closed=False).errors == []


@pytest.fixture
def server(result, tmp_path):
    """A Server result of the same system as `result` (same model, precision, dataset): its own runs, user.conf
    and batch size, as a Server result legitimately has."""
    info = {**json.loads((result["perf"] / "run_info.json").read_text()), "batch_size": 64, "scenario": "Server",
            "user_conf": str(tmp_path / "server.conf")}
    del info["input_identity"]
    (tmp_path / "server.conf").write_text("llama2-70b.Server.target_qps = 5\n")
    conf = input_identity.file_identity(str(tmp_path / "server.conf"))
    inputs = dataclasses.replace(result["inputs"], user_conf=conf)
    perf, acc, t06 = tmp_path / "server_perf", tmp_path / "server_acc", tmp_path / "server_t06" / "TEST06"
    server_run(perf)
    write_detail(acc, effective_test_mode="AccuracyOnly", effective_scenario="Server", qsl_reported_total_count=FULL,
                 **SEEDS)
    for name in ("mlperf_log_accuracy.json", "accuracy.txt"):
        (acc / name).write_bytes((result["acc"] / name).read_bytes())
    write_detail(t06 / "accuracy", audit=True, effective_scenario="Server", **SEEDS)
    write_audit_log(t06 / "accuracy", AUDITED)
    (t06 / "verify_accuracy.txt").write_text("First token check pass: True\nEOS check pass: True\n"
                                             "Sample length check pass: True\nTEST06 verification complete\n")
    for run, extra in ((perf, {}), (acc, {"accuracy": True}), (t06 / "accuracy", {})):
        write_info(run, **info, **extra)
        record_inputs(run, inputs)
    return {**result, "perf": perf, "acc": acc, "t06": t06.parent, "inputs": inputs}


def benchmark_dir(r, division="closed") -> Path:
    return r["root"] / division / "Acme" / "results" / "h200_x1" / "llama2-70b-99.9"


def rewrite_run(run: Path, inputs: InputIdentity | None = None, **fields) -> None:
    """Change what run_info.json records: its fields, and (given) its input_identity."""
    info = json.loads((run / "run_info.json").read_text())
    write_info(run, **{**info, **fields})
    if inputs is not None:
        record_inputs(run, inputs)


def test_offline_and_server_of_one_system_and_model_make_a_complete_tree(result, server, capsys):
    """Batch size, user.conf and the LoadGen model name differ between scenarios: that is not another system."""
    assert main(argv(result)) == 0 and main(argv(server, scenario="Server")) == 0
    assert main(["--root", str(result["root"]), "--check"]) == 0
    assert "differ" not in capsys.readouterr().err
    kept = benchmark_dir(result) / "Server" / "performance" / "run_info.json"
    assert json.loads(kept.read_text())["batch_size"] == 64  # the performance run's, kept for this check


@pytest.mark.parametrize("field, value", [("dtype", "bfloat16"), ("quantization", "fp8"), ("kv_cache_dtype", "fp8"),
                                          ("fp8_accumulation", "fast"), ("backend", "reference")])
@pytest.mark.parametrize("division", ["closed", "open"])
def test_a_scenario_of_other_numerics_is_not_added_beside_the_others(result, server, capsys, field, value, division):
    """A Server result whose three runs agree with each other, but not with the tree's Offline result."""
    assert main(argv(result, division=division)) == 0
    for run in (server["perf"], server["acc"], server["t06"] / "TEST06" / "accuracy"):
        rewrite_run(run, **{field: value})
    assert main(argv(server, scenario="Server", division=division)) == 2
    err = capsys.readouterr().err
    assert (f"submission: error: {benchmark_dir(result, division)}: Server performance run and Offline performance run "
            f"differ in {field}: {value} vs {getattr(read_run_info(str(result['perf'])), field)}") in err.splitlines()
    assert not (benchmark_dir(result, division) / "Server").exists()  # refused before anything is written


def other_model(r, tmp_path):
    return dataclasses.replace(r["inputs"], model=dataclasses.replace(r["inputs"].model, weights_sha256="0" * 64))


def other_dataset(r, tmp_path):
    (tmp_path / "other.pkl").write_bytes(b"24576 other samples")
    return dataclasses.replace(r["inputs"], dataset=input_identity.file_identity(str(tmp_path / "other.pkl")))


def other_scales(r, tmp_path):
    (tmp_path / "scales.pt").write_bytes(b"per-channel scales")
    return dataclasses.replace(r["inputs"], calibration_scales=input_identity.file_identity(str(tmp_path /
                                                                                                "scales.pt")))


@pytest.mark.parametrize("change, expected", [
    (other_model, "Offline performance run and Server performance run ran different models (config.json or weight "
                  "names/shapes differ)"),
    (other_dataset, "Offline performance run and Server performance run read different datasets: "),
    (other_scales, "Offline performance run and Server performance run ran with different --calibration-scales "
                   "files: none vs "),
])
def test_a_tree_whose_scenarios_ran_other_models_or_data_fails_the_check(result, server, tmp_path, capsys, change,
                                                                         expected):
    """Both results packaged, then one's recorded identity differs (a tree assembled by hand, or a result
    replaced from another machine): `--check` compares every scenario's performance run."""
    assert main(argv(result)) == 0 and main(argv(server, scenario="Server")) == 0
    assert main(["--root", str(result["root"]), "--check"]) == 0
    rewrite_run(benchmark_dir(result) / "Server" / "performance", change(server, tmp_path))
    capsys.readouterr()
    assert main(["--root", str(result["root"]), "--check"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert any(line.startswith(f"submission: error: tree: {benchmark_dir(result)}: {expected}") for line in errors), \
        errors


def test_scenarios_without_a_recorded_identity_are_a_warning(result, server, capsys):
    """An older run (no input_identity) and an older tree (no performance/run_info.json): cannot be confirmed."""
    assert main(argv(result)) == 0
    perf = benchmark_dir(result) / "Offline" / "performance" / "run_info.json"
    info = json.loads(perf.read_text())
    del info["input_identity"]
    perf.write_text(json.dumps(info))
    assert main(argv(server, "--check-only", scenario="Server")) == 0
    assert (f"{benchmark_dir(result)}: Offline performance run: run_info.json has no input_identity (an older "
            f"harness): cannot confirm the Server performance run and the Offline performance run read the same "
            f"dataset and model files") in capsys.readouterr().err
    perf.unlink()  # packaged before the packager kept the performance run's run_info.json
    assert main(argv(server, scenario="Server")) == 0
    assert (f"{benchmark_dir(result)}/Offline: no run_info.json of its performance run (an older harness, or a "
            f"result packaged before the packager kept performance/run_info.json): cannot confirm it used the same "
            f"model, precision and dataset as the other scenarios'") in capsys.readouterr().err


def test_runs_without_input_identity_are_packaged_with_a_warning(result, capsys):
    for run in (result["perf"], result["acc"], result["t06"] / "TEST06" / "accuracy"):
        info = json.loads((run / "run_info.json").read_text())
        del info["input_identity"]  # written by an older harness
        write_info(run, **info)
    assert main(argv(result, "--check-only")) == 0
    err = capsys.readouterr().err
    assert ("performance run and accuracy run: run_info.json has no input_identity (an older harness): cannot "
            "confirm the performance run and the accuracy run read the same dataset and model files") in err
    assert f"performance run {result['perf']} recorded no user.conf hash (an older harness)" in err


def test_a_user_conf_edited_after_the_run_is_not_packaged(result, tmp_path, capsys):
    conf = tmp_path / "user.conf"
    recorded = result["inputs"].user_conf
    conf.write_text("llama2-70b.Offline.target_qps = 9\n")  # edited after the run
    for extra in ("--check-only", "--force"):
        assert main(argv(result, extra)) == 2
        err = capsys.readouterr().err
        assert (f"submission: error: user.conf {conf} is not the one performance run {result['perf']} read (34 bytes, "
                f"sha256 {hashlib.sha256(conf.read_bytes()).hexdigest()[:12]}... now; it ran with "
                f"{recorded.describe()}): restore it or pass --user-conf") in err.splitlines()
    assert not result["root"].exists()  # not even --force writes it
    kept = tmp_path / "kept.conf"
    kept.write_text("llama2-70b.Offline.target_qps = 1\n")  # the run's file, kept elsewhere
    assert main(argv(result, "--user-conf", str(kept))) == 0
    scenario = result["root"] / "closed" / "Acme" / "results" / "h200_x1" / "llama2-70b-99.9" / "Offline"
    assert (scenario / "user.conf").read_text() == "llama2-70b.Offline.target_qps = 1\n"


def test_performance_and_accuracy_runs_must_match(result):
    perf = read_run_info(str(result["perf"]))
    assert check_same_system(perf, perf).errors == []
    errors = check_same_system(perf, dataclasses.replace(perf, dtype="float32")).errors
    assert errors == ["performance run and accuracy run differ in dtype: float16 vs float32"]
    # tensor parallelism changes the all-reduce's summation order, so the numbers: one system is one layout
    tp8, tp4 = (dataclasses.replace(perf, tensor_parallel=n) for n in (8, 4))
    assert check_same_system(tp8, tp4).errors == ["performance run and accuracy run differ in tensor_parallel: 8 "
                                                  "vs 4"]
    assert check_same_system(tp8, perf).errors == []  # a run_info.json of before the field: not comparable
    from mlperf_llama2.submission.checks import SAME_MODEL_FIELDS
    assert check_same_system(tp8, tp4, fields=SAME_MODEL_FIELDS).errors == []  # scenarios may differ in layout


@pytest.mark.parametrize("field, value", [("quantization", "fp8"), ("kv_cache_dtype", "int8"),
                                          ("fp8_accumulation", "fast")])
def test_runs_of_other_numerics_are_refused(result, capsys, field, value):
    """A fast FP8 (or 8-bit KV cache) performance run beside a 16-bit accuracy run is not one system."""
    info = json.loads((result["perf"] / "run_info.json").read_text())
    write_info(result["perf"], **{**info, field: value})
    assert main(argv(result, "--check-only")) == 2
    err = capsys.readouterr().err
    assert f"performance run and accuracy run differ in {field}: {value} vs None" in err
    assert f"performance run and TEST06 audit run differ in {field}: {value} vs None" in err


@pytest.mark.parametrize("name, flag", [("liteml_config", "--liteml-config"),
                                        ("calibration_scales", "--calibration-scales")])
def test_quantization_files_edited_between_the_runs_are_refused(result, tmp_path, capsys, name, flag):
    """The same --liteml-config path (so run_info.json's paths agree) holding another config in the accuracy run."""
    quant = tmp_path / "w8a8.yaml"
    quant.write_text("rules: aggressive\n")
    fast = dataclasses.replace(result["inputs"], **{name: input_identity.file_identity(str(quant))})
    for run in (result["perf"], result["t06"] / "TEST06" / "accuracy"):
        record_inputs(run, fast)
    record_inputs(result["acc"], fast)
    assert main(argv(result, "--check-only")) == 0
    quant.write_text("rules: careful\n")  # edited in place before the accuracy run
    record_inputs(result["acc"], dataclasses.replace(result["inputs"],
                                                     **{name: input_identity.file_identity(str(quant))}))
    assert main(argv(result, "--check-only")) == 2
    assert f"performance run and accuracy run ran with different {flag} files: {quant} (18 bytes" in \
        capsys.readouterr().err
    record_inputs(result["acc"], result["inputs"])  # the accuracy run without the file at all
    assert main(argv(result, "--check-only")) == 2
    assert f"ran with different {flag} files: {quant} (18 bytes" in capsys.readouterr().err


def test_an_accuracy_log_missing_samples_is_refused(result, capsys):
    """Entries dropped from the log (its worst samples, say) and the rest rescored: the run issued 24,576."""
    kept = [{"qsl_idx": i, "data": "02000000", "token_count": 1} for i in range(FULL - 100)]
    (result["acc"] / "mlperf_log_accuracy.json").write_text(json.dumps(kept))
    (result["acc"] / "accuracy.txt").write_text(repr({**PASSING, "gen_num": FULL - 100, "gen_tok_len": FULL - 100}))
    assert main(argv(result, "--check-only")) == 2
    assert (f"accuracy run {result['acc']}: mlperf_log_accuracy.json holds {FULL - 100} samples but the run issued "
            f"{FULL}") in capsys.readouterr().err


def test_accuracy_txt_without_hash_must_count_the_logs_tokens(result, capsys):
    """No hash= line (an older scorer): the same sample count is not enough, the token count must be the log's."""
    assert main(argv(result, "--check-only")) == 0
    (result["acc"] / "accuracy.txt").write_text("Results\n\n" + repr({**PASSING, "gen_tok_len": 7_236_000}) + "\n")
    assert main(argv(result, "--check-only")) == 2
    assert f"scores 7236000 tokens but mlperf_log_accuracy.json holds {FULL}: from another run?" in \
        capsys.readouterr().err


def test_offline_without_token_latencies_or_in_an_issue_mode_is_refused(result):
    base = dict(effective_test_mode="PerformanceOnly", effective_scenario="Offline", result_validity="VALID",
                effective_min_duration_ms=600000, **GOOD_OFFLINE)
    write_detail(result["perf"], **{**base, "requested_use_token_latencies": False})
    for closed in (True, False):  # the checker's llm_check, every scenario
        errors = check_performance(str(result["perf"]), "Offline", closed, V61).errors
        assert [e.split(": ", 1)[1] for e in errors] == ["use_token_latencies is off (LLM runs need it)"]
    for mode in ("performance_issue_same", "performance_issue_unique"):
        write_detail(result["perf"], **{**base, f"effective_{mode}": True})
        closed = check_performance(str(result["perf"]), "Offline", True, V61)
        assert [e.split(": ", 1)[1] for e in closed.errors] == [
            f"user.conf set {mode} = 1 (a compliance-test setting, not a benchmark run)"]
        opened = check_performance(str(result["perf"]), "Offline", False, V61)
        assert opened.errors == [] and len(opened.warnings) == 1


def test_modified_harness_files_are_refused_but_user_conf_is_not(result, capsys):
    info = json.loads((result["perf"] / "run_info.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    write_info(result["perf"], **{**info, "harness_commit": head + "-dirty", "harness_changes": [" M user.conf"]})
    args = [a for a in argv(result, "--check-only") if a != "--allow-modified-source"]
    assert main(args) == 0
    write_info(result["perf"], **{**info, "harness_commit": head + "-dirty",
                                  "harness_changes": [" M user.conf", " M mlperf_llama2/engine/scheduler.py"]})
    assert main(args) == 2
    assert "performance run: harness files were modified during the run (mlperf_llama2/engine/scheduler.py)" \
        in capsys.readouterr().err


def test_an_output_root_that_is_a_file_is_one_line(result, capsys):
    result["root"].write_text("not a directory")
    assert main(argv(result)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"submission: error: --root {result['root']} is a file, not a directory"]


def test_nothing_is_written_when_a_rule_fails(result):
    (result["acc"] / "accuracy.txt").unlink()
    assert main(argv(result)) == 2
    assert not result["root"].exists()


def test_measurements_take_the_data_types_from_the_recorded_quantization():
    info = RunInfo(model_path="/models/Llama-2-70b-chat-hf/", dtype="float16",
                   liteml_config="liteml_configs/w8a8_npm_v1_3_4.yaml", quant_backend="open", quant_mode="int8")
    m = measurements(info, {})
    assert m["starting_weights_filename"] == "Llama-2-70b-chat-hf"
    assert m["weight_data_types"] == "int8" and "w8a8_npm_v1_3_4.yaml" in m["weight_transformations"]
    assert measurements(RunInfo(dtype="float16", quant_mode="fp8"), {})["weight_data_types"] == "fp8"
    plain = measurements(RunInfo(dtype="bfloat16", quant_mode="simulate"), {})
    assert plain["weight_data_types"] == "bf16" and plain["weight_transformations"] == "none"


def test_measurement_overrides_reach_measurements_json_and_unknown_keys_are_refused(result, capsys):
    assert main(argv(result, "--measurement", "retraining=no; calibration on the MLPerf calibration set")) == 0
    scenario = result["root"] / "closed" / "Acme" / "results" / "h200_x1" / "llama2-70b-99.9" / "Offline"
    assert json.loads((scenario / "measurements.json").read_text())["retraining"] == \
        "no; calibration on the MLPerf calibration set"
    with pytest.raises(SystemExit) as exc:
        main(argv(result, "--measurement", "weights=int8"))
    assert exc.value.code == 2 and "KEY one of" in capsys.readouterr().err
