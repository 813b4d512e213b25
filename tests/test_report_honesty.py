"""What a finished run says about itself must not be better than the run: a stopped run, an audit.config run,
rounded latencies, LoadGen's failed checks and --overwrite's earlier results (mlperf_llama2/report/summary.py,
mlperf_llama2/run_dir.py). Genuine LoadGen logs of a fake SUT (tests/fake_loadgen_run.py), edited where a
tiny run cannot reach the state (a VALID verdict)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_llama2.report.summary import RunSummary, build_summary, render_table
from mlperf_llama2.run_dir import claim_output_dir

HERE = Path(__file__).resolve().parent
TEST06_AUDIT = "*.*.mode = 2\n*.*.accuracy_log_sampling_target = 100\n*.*.accuracy_log_rng_seed = 720381539243781796\n"


def _fake_run(out: Path, scenario: str, mode: str, cwd: Path, *extra: str) -> subprocess.Popen:
    out.mkdir(parents=True)
    return subprocess.Popen([sys.executable, str(HERE / "fake_loadgen_run.py"), str(out), scenario, mode,
                             "--samples", "24", "--tokens", "6", *extra], cwd=cwd,
                            env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("honesty")
    audit_cwd = root / "audit_cwd"
    audit_cwd.mkdir()
    # fake_loadgen_run.py names its audit file "no-audit.config": here it exists, so LoadGen applies it
    (audit_cwd / "no-audit.config").write_text(TEST06_AUDIT)
    procs = {
        # a 10-minute min_duration: INVALID by "Min duration satisfied : NO" however slow the machine is
        "offline": _fake_run(root / "offline", "Offline", "performance", root, "--min-duration-ms", "600000"),
        "server": _fake_run(root / "server", "Server", "performance", root),
        "audit": _fake_run(audit_cwd / "logs", "Offline", "performance", audit_cwd),
    }
    dirs = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        dirs[name] = root / name if name != "audit" else audit_cwd / "logs"
    return dirs


def _as_valid(src: Path, dst: Path) -> Path:
    """A copy of a run whose LoadGen logs say VALID (as a long enough run's would)."""
    shutil.copytree(src, dst)
    summary = dst / "mlperf_log_summary.txt"
    summary.write_text(re.sub(r"Result is : INVALID", "Result is : VALID", summary.read_text())
                       .replace("satisfied : NO", "satisfied : Yes").replace("satisfied: NO", "satisfied: Yes"))
    detail = dst / "mlperf_log_detail.txt"
    text = detail.read_text().replace('"key": "result_validity", "value": "INVALID"',
                                      '"key": "result_validity", "value": "VALID"')
    text = re.sub(r'("key": "result_invalid_reason", "value": )"[^"]*"', r'\1""', text)
    text = re.sub(r'("key": "(result_\w+_met|early_stopping_met)", "value": )false', r'\1true', text)
    detail.write_text(text)
    assert build_summary(str(dst)).verdict == "VALID"
    return dst


def test_a_stopped_run_is_not_reported_valid(runs, tmp_path):
    """A run stopped by a failed sample or a signal: LoadGen got an (empty) answer for every sample, so its own
    summary may read VALID, and RUN_STOPPED.txt says it is not a result. The summary must say so too."""
    run_dir = _as_valid(runs["offline"], tmp_path / "run")
    (run_dir / "RUN_STOPPED.txt").write_text("This run was stopped before completion (sample 3 could not be "
                                             "generated); LoadGen's summary is not a result.\n")
    s = build_summary(str(run_dir))
    table = render_table(s)
    assert s.verdict != "VALID", table
    assert "stopped" in s.reason and "sample 3 could not be generated" in s.reason
    assert re.search(r"^LoadGen verdict +: INVALID \(.*stopped", table, re.M), table
    assert ": no (" in s.submittable and "stopped" in s.submittable


def test_an_audit_config_run_is_not_reported_as_a_performance_result(runs, tmp_path):
    run_dir = _as_valid(runs["audit"], tmp_path / "run")
    assert "Found Audit Config file" in (run_dir / "mlperf_log_detail.txt").read_text()
    s = build_summary(str(run_dir))
    table = render_table(s)
    assert "audit.config" in table and "not a performance result" in table, table
    assert ": no (" in s.submittable and "audit.config" in s.submittable
    plain = build_summary(str(_as_valid(runs["offline"], tmp_path / "plain")))
    assert "audit.config" not in render_table(plain)


def test_an_invalid_offline_run_names_the_check_loadgen_failed(runs):
    """LoadGen's result_invalid_reason is a recommendation ("Increase expected QPS ..."); the check that failed
    (its summary's "Min duration satisfied : NO") must be named too."""
    text = (runs["offline"] / "mlperf_log_summary.txt").read_text()
    assert "Min duration satisfied : NO" in text
    s = build_summary(str(runs["offline"]))
    assert s.verdict == "INVALID" and "Min duration satisfied: NO" in s.reason, s.reason


def test_a_run_without_a_verdict_says_so(runs, tmp_path):
    """A run killed before LoadGen wrote its result: no summary, no result_validity in the detail log."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["server"], run_dir)
    (run_dir / "mlperf_log_summary.txt").unlink()
    detail = run_dir / "mlperf_log_detail.txt"
    detail.write_text("".join(line for line in detail.read_text().splitlines(keepends=True)
                              if '"key": "result_' not in line and '"key": "early_stopping' not in line))
    s = build_summary(str(run_dir))
    assert s.verdict == "INVALID" and "no verdict" in s.reason, (s.verdict, s.reason)


def _server_summary(**latencies) -> RunSummary:
    base = dict(scenario="Server", mode="PerformanceOnly", samples=100, tokens_per_s=1.0, ttft_p50_ms=1.0,
                ttft_p99_ms=1.0, tpot_p50_ms=1.0, tpot_p99_ms=1.0, verdict="VALID", reason="", loadgen_errors=0,
                max_new_tokens=1024, rouge=None, targets=None, model=None)
    return RunSummary(**{**base, **latencies})


@pytest.mark.parametrize("field, value, limit", [
    ("tpot_p99_ms", 39.97, 40.0),      # Interactive TPOT: under the limit, must not print as 40.0
    ("tpot_p99_ms", 40.04, 40.0),      # over it, must not print as 40.0
    ("ttft_p99_ms", 449.96, 450.0),    # Interactive TTFT
    ("ttft_p99_ms", 1999.97, 2000.0),  # Server TTFT
    ("tpot_p99_ms", 200.01, 200.0),    # Server TPOT
])
def test_latency_rounding_never_crosses_a_limit(field, value, limit):
    table = render_table(_server_summary(**{field: value}))
    row = "TTFT" if field.startswith("ttft") else "TPOT"
    shown = float(re.search(rf"^{row} p50 / p99 \(ms\) +: \S+ / (\S+)", table, re.M).group(1))
    assert (shown < limit) == (value < limit) and shown != limit, table
    assert "1.0 / 1.0" in table  # values far from a limit keep one decimal


def test_overwrite_moves_the_earlier_runs_plots_too(tmp_path):
    """`python -m mlperf_llama2.report` writes RUN_DIR/plots/; a later run into the directory must not sit beside
    the earlier run's plots (e.g. a Server run's ttft.png beside a new Offline run's plots)."""
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "ttft.png").write_bytes(b"old")
    (tmp_path / "summary.json").write_text("{}")
    with claim_output_dir(str(tmp_path), overwrite=True) as claim:
        assert claim.moved_to is not None
    assert not (tmp_path / "plots").exists()
    assert (Path(claim.moved_to) / "plots" / "ttft.png").read_bytes() == b"old"
    only_plots = tmp_path / "only_plots"
    (only_plots / "plots").mkdir(parents=True)
    from mlperf_llama2.errors import UserError

    with pytest.raises(UserError, match="earlier run's results"):
        claim_output_dir(str(only_plots))


def test_rouge_of_another_run_is_not_judged_as_this_runs(tmp_path):
    """accuracy.txt (or --accuracy-file) scored another accuracy log: its gen_num is not this log's sample count,
    so its PASS must not be printed as this run's."""
    import json

    run_dir = tmp_path / "acc"
    proc = _fake_run(run_dir, "Offline", "accuracy", tmp_path)
    assert proc.wait(timeout=120) == 0
    model = tmp_path / "llama2-70b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(
        {"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "vocab_size": 32000}))
    info = json.loads((run_dir / "run_info.json").read_text())
    (run_dir / "run_info.json").write_text(json.dumps(dict(info, model_path=str(model))))
    other = ("{'rouge1': 44.5, 'rouge2': 22.1, 'rougeL': 28.7, 'rougeLsum': 42.0, 'gen_len': 100, "
             "'gen_num': 24576, 'gen_tok_len': 7000000, 'tokens_per_sample': 291.7}")
    s = build_summary(str(run_dir), accuracy_text=other)
    table = render_table(s)
    assert s.targets is None and "PASS" not in table, table
    assert "not this run's" in table and "24576" in table
    assert "not this run's" in s.submittable
    same = other.replace("'gen_num': 24576", "'gen_num': 24")
    assert build_summary(str(run_dir), accuracy_text=same).targets is not None


def test_an_interactive_run_is_not_reported_as_a_server_run(runs, tmp_path):
    import json

    run_dir = tmp_path / "run"
    shutil.copytree(runs["server"], run_dir)
    assert re.search(r"^scenario +: Server$", render_table(build_summary(str(run_dir))), re.M)
    info = json.loads((run_dir / "run_info.json").read_text())
    (run_dir / "run_info.json").write_text(json.dumps(dict(info, lg_model_name="llama2-70b-interactive")))
    table = render_table(build_summary(str(run_dir)))
    assert re.search(r"^scenario +: Interactive \(LoadGen's Server scenario", table, re.M), table
    assert "TTFT p50 / p99 (ms)" in table
