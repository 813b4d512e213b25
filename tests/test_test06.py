"""TEST06 verification flags exactly the samples the reference verifier would (SPEC §7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlperf_llama2.compliance.test06 import main, verify


def entry(data, token_data=None, count=None, dtype=np.int32, idx=0):
    e = {"seq_id": idx, "qsl_idx": idx, "data": np.asarray(data, dtype).tobytes().hex().upper(),
         "token_count": len(data) if count is None else count}
    if token_data is not None:
        e["token_data"] = np.asarray(token_data, dtype).tobytes().hex().upper()
    return e


def test_good_samples_pass_all_checks():
    entries = [entry([5, 6, 2], [5]), entry([7, 8], [7], idx=1)]
    result = verify(entries, "Server", 2)
    assert result.passed and result.report_lines()[0] == "First token check pass: True"
    assert verify(entries, "Offline", 2).report_lines()[0] == "First token check pass: Skipped"


@pytest.mark.parametrize("bad,which", [
    (entry([5, 6, 2], [6]), "first"),  # first token differs from data[0]
    (entry([5, 6, 2]), "first"),  # token_data missing (no FirstTokenComplete)
    (entry([5, 6, 2, 2], [5]), "eos"),  # batch padding left after the EOS
    (entry([5, 6, 2], [5], count=4), "length"),  # n_tokens inflated
])
def test_each_defect_fails_its_check(bad, which):
    result = verify([entry([1, 2], [1], idx=9), bad], "Server", 2)
    flags = {"first": result.first_token_pass, "eos": result.eos_pass, "length": result.length_pass}
    assert flags.pop(which) is False and all(flags.values()) and not result.passed


def test_one_pass_decodes_each_sample_once_and_keeps_each_checks_problems(monkeypatch):
    """The packager re-runs verify on audit logs of up to 24,576 samples: data decoded once a sample (plus
    token_data where the first-token check runs), and each failing check's samples kept apart to be named."""
    from mlperf_llama2.compliance import test06

    decoded = []
    real = test06._tokens
    monkeypatch.setattr(test06, "_tokens", lambda e, key, dtype: decoded.append(key) or real(e, key, dtype))
    entries = [entry([5, 6, 2, 2], [5]), entry([7, 8], [8], idx=1), entry([1], [1], count=3, idx=2)]
    offline = verify(entries, "Offline", 2)
    assert decoded == ["data"] * 3
    assert offline.failures == {"EOS check pass": ["qsl_idx 0: 2 EOS tokens at the end of data"],
                                "Sample length check pass": ["qsl_idx 2: len(data) 1 != token_count 3"]}
    decoded.clear()
    server = verify(entries, "Server", 2)
    assert sorted(decoded) == ["data"] * 3 + ["token_data"] * 3
    assert server.failures["First token check pass"] == ["qsl_idx 1: token_data [8] is not the start of data"]
    assert server.verdicts() == {"First token check pass": "False", "EOS check pass": "False",
                                 "Sample length check pass": "False"}
    assert verify(GOOD, "Server", 2).failures == {}


def test_int64_data_read_as_int32_fails_length():
    result = verify([entry([5, 6, 2], [5], dtype=np.int64)], "Server", 2, "int32")
    assert not result.length_pass
    assert verify([entry([5, 6, 2], [5], dtype=np.int64)], "Server", 2, "int64").passed


def test_an_empty_log_does_not_pass():
    assert not verify([], "Offline", 2).passed


def detail_log(scenario: str | None = "Server", audited: bool = True) -> str:
    """The lines of a LoadGen detail log the verifier reads: the scenario and the audit.config marker."""
    lines = [':::MLLOG {"key": "loadgen_version", "value": "6.0.17"}']
    if scenario is not None:
        lines.append(f':::MLLOG {{"key": "effective_scenario", "value": "{scenario}"}}')
    if audited:
        lines.append(':::MLLOG {"key": "generic_message", "value": "Found Audit Config file"}')
    return "\n".join(lines) + "\n"


def test_cli_writes_report_and_copies_the_log(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mlperf_log_accuracy.json").write_text(json.dumps([entry([5, 6, 2, 2], [5])]))
    (logs / "mlperf_log_detail.txt").write_text(detail_log("Server"))
    assert main(["-c", str(logs), "-o", str(tmp_path / "out"), "-s", "Server", "-e", "2", "-d", "int32"]) == 1
    report = (tmp_path / "out" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    assert report == ["First token check pass: True", "EOS check pass: False", "Sample length check pass: True",
                      "TEST06 verification failed"]  # the reference's last line when a check fails
    assert (tmp_path / "out" / "TEST06" / "accuracy" / "mlperf_log_accuracy.json").is_file()
    assert "2 EOS tokens at the end" in capsys.readouterr().out


# --- strict CLI (issue 17, item 5): one line, exit 2, no traceback, nothing written -------------------------
SCRIPT = Path(__file__).resolve().parents[1] / "compliance" / "TEST06" / "run_verification.py"


def audit_logs(root: Path, entries, audited: bool = True, scenario: str = "Server",
               lg_model_name: str | None = None) -> Path:
    logs = root / "logs"
    logs.mkdir()
    (logs / "mlperf_log_accuracy.json").write_text(entries if isinstance(entries, str) else json.dumps(entries))
    (logs / "mlperf_log_detail.txt").write_text(detail_log(scenario, audited))
    if lg_model_name is not None:  # main.py's run_info.json beside the logs
        (logs / "run_info.json").write_text(json.dumps({"scenario": scenario, "lg_model_name": lg_model_name}))
    return logs


def verify_cli(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    return proc, errors


GOOD = [entry([5, 6, 2], [5]), entry([7, 8], [7], idx=1)]


@pytest.mark.parametrize("name, make, out, expected", [
    ("not_audited", lambda r: audit_logs(r, GOOD, audited=False), "out",
     "not made with compliance/TEST06/audit.config"),
    ("o_is_a_file", lambda r: audit_logs(r, GOOD), "afile", "-o {o} is a file, not a directory"),
    ("o_under_a_file", lambda r: audit_logs(r, GOOD), "afile/sub", "cannot create it"),
    ("int64_log_read_as_int32", lambda r: audit_logs(r, [entry([5, 6, 2], [5], dtype=np.int64)]), "out",
     "8 bytes a token (int64), not 4 (int32): pass -d int64"),
    ("truncated_log", lambda r: audit_logs(r, '[{"qsl_idx": 0, "data": "05'), "out", "not valid JSON"),
    ("entry_without_data", lambda r: audit_logs(r, [{"qsl_idx": 0}]), "out", "expected an object with hex 'data'"),
    ("bad_hex", lambda r: audit_logs(r, [dict(GOOD[0], data="zz")]), "out", "'data' is not valid hex"),
    ("log_not_a_list", lambda r: audit_logs(r, {"qsl_idx": 0}), "out", "expected a list of entries"),
    ("no_log_dir", lambda r: r / "missing", "out", "not a directory"),
    ("offline_log_as_server", lambda r: audit_logs(r, GOOD, scenario="Offline"), "out",
     "-s Server, but {c}/mlperf_log_detail.txt logs the Offline scenario: pass -s Offline"),
    ("interactive_run_as_server", lambda r: audit_logs(r, GOOD, lg_model_name="llama2-70b-interactive"), "out",
     "-s Server, but the audit run ran under --lg-model-name llama2-70b-interactive: pass -s Interactive"),
    ("no_scenario_logged", lambda r: audit_logs(r, GOOD, scenario=None), "out", "no effective_scenario"),
])
def test_bad_runs_and_arguments_are_one_line_and_exit_2(tmp_path, name, make, out, expected):
    logs = make(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    o = tmp_path / out
    proc, errors = verify_cli("-c", logs, "-o", o, "-s", "Server")
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and expected.format(o=o, c=logs) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out" / "TEST06").exists()  # nothing written for a refused run
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("logged, lg_model_name, flag, expected", [
    ("Server", None, "Offline", "-s Offline, but {c}/mlperf_log_detail.txt logs the Server scenario: pass "
                                "-s Server (or -s Interactive for a --lg-model-name llama2-70b-interactive run)"),
    ("Server", "llama2-70b", "Interactive", "-s Interactive, but the audit run ran under --lg-model-name llama2-70b: "
                                            "pass -s Server"),
    ("Server", "gptj", "Server", "run under --lg-model-name gptj, not a llama2-70b run"),
])
def test_a_log_checked_as_another_scenario_is_refused(tmp_path, logged, lg_model_name, flag, expected):
    """A Server audit checked with -s Offline would skip the first-token check and pass: one line, exit 2."""
    logs = audit_logs(tmp_path, [entry([5, 6, 2], [6])], scenario=logged, lg_model_name=lg_model_name)
    proc, errors = verify_cli("-c", logs, "-o", tmp_path / "out", "-s", flag)
    assert proc.returncode == 2 and len(errors) == 1 and expected.format(c=logs) in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scenario, lg_model_name", [("Offline", "llama2-70b"), ("Server", "llama2-70b"),
                                                     ("Interactive", "llama2-70b-interactive"), ("Server", None)])
def test_the_matching_scenario_is_verified(tmp_path, scenario, lg_model_name):
    logs = audit_logs(tmp_path, GOOD, scenario="Offline" if scenario == "Offline" else "Server",
                      lg_model_name=lg_model_name)
    proc, errors = verify_cli("-c", logs, "-o", tmp_path / "out", "-s", scenario)
    assert proc.returncode == 0 and not errors, proc.stderr
    assert ("cannot tell an Interactive run from a Server run" in proc.stderr) == (lg_model_name is None)


OFFICIAL_DIR = os.environ.get("MLPERF_INFERENCE_DIR")


@pytest.mark.skipif(not OFFICIAL_DIR, reason="MLPERF_INFERENCE_DIR is not set (MLCommons' inference repository)")
@pytest.mark.parametrize("entries, scenario", [
    (GOOD, "Server"), (GOOD, "Offline"),
    ([entry([5, 6, 2], [6]), entry([7, 2], [7], idx=1)], "Server"),  # first token differs
    ([entry([5, 6, 2, 2], [5])], "Server"),  # two EOS at the end
    ([entry([5, 6, 2], [5], count=4), *GOOD], "Offline"),  # length
    ([entry([5, 6, 2, 2], [6], count=5), *GOOD], "Interactive"),  # everything wrong
])
def test_the_report_is_the_official_verifiers(tmp_path, entries, scenario):
    logs = audit_logs(tmp_path, entries, scenario="Offline" if scenario == "Offline" else "Server")
    script = Path(OFFICIAL_DIR) / "compliance" / "TEST06" / "run_verification.py"
    official = subprocess.run([sys.executable, str(script), "-c", str(logs), "-o", str(tmp_path / "official"),
                               "-s", scenario], capture_output=True, text=True, timeout=120)
    assert official.returncode == 0, official.stderr
    ours, _ = verify_cli("-c", logs, "-o", tmp_path / "ours", "-s", scenario)
    assert ours.returncode == (0 if "complete" in official.stdout else 1), ours.stderr
    assert (tmp_path / "ours" / "TEST06" / "verify_accuracy.txt").read_text() == \
        (tmp_path / "official" / "TEST06" / "verify_accuracy.txt").read_text()


def test_int32_log_read_as_int64_is_named(tmp_path):
    logs = audit_logs(tmp_path, [entry([5, 6, 2, 2], [5, 6]), entry([7, 2], [7], idx=1)])
    proc, errors = verify_cli("-c", logs, "-o", tmp_path / "out", "-s", "Server", "-d", "int64")
    assert proc.returncode == 2 and len(errors) == 1 and "pass -d int32" in errors[0], proc.stderr
    (tmp_path / "odd").mkdir()
    odd = audit_logs(tmp_path / "odd", [entry([5, 6, 2], [5], count=5), entry([7, 2], [7], idx=1)])
    proc, errors = verify_cli("-c", odd, "-o", tmp_path / "out", "-s", "Server", "-d", "int64")
    assert proc.returncode == 2 and len(errors) == 1 and "not whole int64 values" in errors[0], proc.stderr


def test_read_only_output_dir_is_one_line(tmp_path, monkeypatch, capsys):
    """A directory that takes no files (read-only mount, no permission: root ignores chmod, so the refusal
    of the write probe is simulated); the check writes nothing and says which flag."""
    import tempfile

    from mlperf_llama2.errors import run_cli

    logs = audit_logs(tmp_path, GOOD, scenario="Offline")
    (tmp_path / "ro").mkdir()

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert run_cli(main, ["-c", str(logs), "-o", str(tmp_path / "ro"), "-s", "Offline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"-o {tmp_path / 'ro'}: cannot write in" in err[0] and "Permission denied" in err[0]
    assert list((tmp_path / "ro").iterdir()) == []


def test_audited_good_run_still_passes_through_the_script(tmp_path):
    logs = audit_logs(tmp_path, GOOD)
    proc, errors = verify_cli("-c", logs, "-o", tmp_path / "out", "-s", "Server")
    assert proc.returncode == 0 and not errors, proc.stderr
    assert (tmp_path / "out" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()[:3] == [
        "First token check pass: True", "EOS check pass: True", "Sample length check pass: True"]


def test_the_copied_logs_can_be_verified_again_into_the_same_output(tmp_path):
    """-c OUT/TEST06/accuracy -o OUT: the copy is the run's logs already; no SameFileError traceback."""
    logs = audit_logs(tmp_path, GOOD)
    assert verify_cli("-c", logs, "-o", tmp_path / "out", "-s", "Server")[0].returncode == 0
    copy = tmp_path / "out" / "TEST06" / "accuracy"
    proc, errors = verify_cli("-c", copy, "-o", tmp_path / "out", "-s", "Server")
    assert proc.returncode == 0 and not errors and "Traceback" not in proc.stderr, proc.stderr
    assert (copy / "mlperf_log_accuracy.json").read_text() == (logs / "mlperf_log_accuracy.json").read_text()


def test_a_run_verified_into_an_earlier_output_leaves_none_of_the_earlier_runs_files(tmp_path):
    """The packager reads TEST06/accuracy/run_info.json as the audited run's: an earlier run's must not stay."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = audit_logs(tmp_path / "a", GOOD, lg_model_name="llama2-70b")
    (first / "mlperf_log_trace.json").write_text("[]")
    assert verify_cli("-c", first, "-o", tmp_path / "out", "-s", "Server")[0].returncode == 0
    second = audit_logs(tmp_path / "b", GOOD)  # no run_info.json, no trace (another harness's run)
    assert verify_cli("-c", second, "-o", tmp_path / "out", "-s", "Server")[0].returncode == 0
    assert sorted(p.name for p in (tmp_path / "out" / "TEST06" / "accuracy").iterdir()) == [
        "mlperf_log_accuracy.json", "mlperf_log_detail.txt"]


def test_a_negative_eos_id_is_one_line(tmp_path):
    logs = audit_logs(tmp_path, GOOD)
    proc, errors = verify_cli("-c", logs, "-o", tmp_path / "out", "-s", "Server", "-e", "-1")
    assert proc.returncode == 2 and len(errors) == 1 and "-e -1: an EOS token id is >= 0" in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()
