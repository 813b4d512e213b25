"""TEST06 verification flags exactly the samples the reference verifier would (SPEC §7)."""

from __future__ import annotations

import json
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


def test_int64_data_read_as_int32_fails_length():
    result = verify([entry([5, 6, 2], [5], dtype=np.int64)], "Server", 2, "int32")
    assert not result.length_pass
    assert verify([entry([5, 6, 2], [5], dtype=np.int64)], "Server", 2, "int64").passed


def test_an_empty_log_does_not_pass():
    assert not verify([], "Offline", 2).passed


def test_cli_writes_report_and_copies_the_log(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mlperf_log_accuracy.json").write_text(json.dumps([entry([5, 6, 2, 2], [5])]))
    (logs / "mlperf_log_detail.txt").write_text("Found Audit Config file\n")
    assert main(["-c", str(logs), "-o", str(tmp_path / "out"), "-s", "Server", "-e", "2", "-d", "int32"]) == 1
    report = (tmp_path / "out" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    assert report == ["First token check pass: True", "EOS check pass: False", "Sample length check pass: True",
                      "TEST06 verification complete"]
    assert (tmp_path / "out" / "TEST06" / "accuracy" / "mlperf_log_accuracy.json").is_file()
    assert "2 EOS tokens at the end" in capsys.readouterr().out


# --- strict CLI (issue 17, item 5): one line, exit 2, no traceback, nothing written -------------------------
SCRIPT = Path(__file__).resolve().parents[1] / "compliance" / "TEST06" / "run_verification.py"


def audit_logs(root: Path, entries, audited: bool = True) -> Path:
    logs = root / "logs"
    logs.mkdir()
    (logs / "mlperf_log_accuracy.json").write_text(entries if isinstance(entries, str) else json.dumps(entries))
    (logs / "mlperf_log_detail.txt").write_text(
        ':::MLLOG {"key": "loadgen_version"}\n' + ("Found Audit Config file\n" if audited else ""))
    return logs


def verify_cli(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    return proc, errors


GOOD = [entry([5, 6, 2], [5]), entry([7, 8], [7], idx=1)]


@pytest.mark.parametrize("name, make, out, expected", [
    ("not_audited", lambda r: audit_logs(r, GOOD, audited=False), "out", "not made with compliance/TEST06/audit.config"),
    ("o_is_a_file", lambda r: audit_logs(r, GOOD), "afile", "-o {o} is a file, not a directory"),
    ("o_under_a_file", lambda r: audit_logs(r, GOOD), "afile/sub", "cannot create it"),
    ("int64_log_read_as_int32", lambda r: audit_logs(r, [entry([5, 6, 2], [5], dtype=np.int64)]), "out",
     "8 bytes a token (int64), not 4 (int32): pass -d int64"),
    ("truncated_log", lambda r: audit_logs(r, '[{"qsl_idx": 0, "data": "05'), "out", "not valid JSON"),
    ("entry_without_data", lambda r: audit_logs(r, [{"qsl_idx": 0}]), "out", "expected an object with hex 'data'"),
    ("bad_hex", lambda r: audit_logs(r, [dict(GOOD[0], data="zz")]), "out", "'data' is not valid hex"),
    ("log_not_a_list", lambda r: audit_logs(r, {"qsl_idx": 0}), "out", "expected a list of entries"),
    ("no_log_dir", lambda r: r / "missing", "out", "not a directory"),
])
def test_bad_runs_and_arguments_are_one_line_and_exit_2(tmp_path, name, make, out, expected):
    logs = make(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    o = tmp_path / out
    proc, errors = verify_cli("-c", logs, "-o", o, "-s", "Server")
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and expected.format(o=o) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out" / "TEST06").exists()  # nothing written for a refused run
    assert (tmp_path / "afile").read_text() == "keep me"


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

    logs = audit_logs(tmp_path, GOOD)
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
