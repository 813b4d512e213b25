"""TEST06 verification flags exactly the samples the reference verifier would (SPEC §7)."""

from __future__ import annotations

import json

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
