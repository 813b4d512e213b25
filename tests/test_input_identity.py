"""run_info.json says which files a run used, whatever the paths it was given: absolute paths, and the content
identity of the dataset, the model, user.conf and the audit.config (mlperf_llama2/input_identity.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from loadgen_fixtures import SMALL_USER_CONF, run_main, write_dataset
from mlperf_llama2 import input_identity
from mlperf_llama2.input_identity import FileIdentity, InputIdentity, read_identity
from mlperf_llama2.quant.calibration_file import model_identity
from mlperf_llama2.report.run_info import RunInfo, write_run_info


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_tokenizer_dir, tiny_model_dir, eos_model_dir):
    """One Offline run in each of two directories, each given the relative paths `m` and `data.pkl`; `m` is a
    symlink to a different checkpoint in each. The second runs with an audit.config in its directory."""
    root = tmp_path_factory.mktemp("identity")
    done = {}
    for name, model in (("a", tiny_model_dir), ("b", eos_model_dir)):
        d = root / name
        d.mkdir()
        os.symlink(model, d / "m")
        write_dataset(d / "data.pkl", tiny_tokenizer_dir)
        (d / "user.conf").write_text(SMALL_USER_CONF)
        if name == "b":
            (d / "audit.config").write_text("*.*.mode = 2\n*.*.min_query_count = 6\n")
        out = run_main(["--model-path", "m", "--dataset-path", "data.pkl", "--user-conf", "user.conf",
                        "--max-new-tokens", 2, "--batch-size", 6, "--output-log-dir", "logs"], d)
        assert out.returncode == 0, out.stderr[-3000:]
        done[name] = d
    return done


def test_run_info_records_absolute_paths_and_what_the_files_held(two_runs, tiny_model_dir):
    d = two_runs["a"]
    info = json.loads((d / "logs" / "run_info.json").read_text())
    assert info["model_path"] == str(d / "m") and info["dataset_path"] == str(d / "data.pkl")
    found = read_identity(str(d / "logs"))
    assert found.dataset == FileIdentity(str(d / "data.pkl"), (d / "data.pkl").stat().st_size, sha256(d / "data.pkl"))
    assert found.user_conf == FileIdentity(str(d / "user.conf"), len(SMALL_USER_CONF), sha256(d / "user.conf"))
    assert found.audit_conf is None  # no audit.config in the working directory
    assert found.model.path == os.path.realpath(tiny_model_dir)  # the symlink's target at run time
    hashes = model_identity(str(tiny_model_dir))
    assert (found.model.config_sha256, found.model.weights_sha256) == \
        (hashes["model_config_sha256"], hashes["model_weights_sha256"])
    # the tokenizer the scorer will decode with, by content (evaluate-accuracy.py refuses another one)
    from mlperf_llama2.input_identity import tokenizer_sha256
    assert found.model.tokenizer_sha256 == tokenizer_sha256(str(tiny_model_dir)) is not None
    audited = read_identity(str(two_runs["b"] / "logs"))
    assert audited.audit_conf.sha256 == sha256(two_runs["b"] / "audit.config")


def test_run_info_records_the_loadgen_settings_and_where_each_came_from(two_runs):
    """run_info.json named the user.conf, not what LoadGen took from it, nor that an audit.config overrode it."""
    plain = json.loads((two_runs["a"] / "logs" / "run_info.json").read_text())["loadgen_settings"]
    assert (plain["min_duration_ms"], plain["min_query_count"], plain["performance_issue_unique"]) == (0, 6, False)
    assert plain["sources"]["min_query_count"] == "line 2"  # SMALL_USER_CONF's *.Offline.min_query_count
    assert "target_qps" not in plain["sources"]  # Offline's expected qps is LoadGen's (mlperf.conf's) value
    audited = json.loads((two_runs["b"] / "logs" / "run_info.json").read_text())["loadgen_settings"]
    assert audited["sources"]["min_query_count"].startswith("audit.config")


def test_the_same_relative_path_to_different_checkpoints_is_told_apart(two_runs):
    a, b = (read_identity(str(two_runs[n] / "logs")) for n in ("a", "b"))
    assert a.dataset.same_content(b.dataset)  # the same dataset written in both directories
    # Two random Llamas of one shape: config.json and the weights' names and shapes cannot tell them apart
    # (nor a fine-tune from its base); the checkpoint's real path at run time, recorded beside them, can.
    assert a.model.same_model(b.model)
    assert a.model.path != b.model.path
    infos = [json.loads((two_runs[n] / "logs" / "run_info.json").read_text()) for n in ("a", "b")]
    assert infos[0]["model_path"] != infos[1]["model_path"]  # both 'm' before


def test_a_run_info_without_identity_or_with_a_corrupt_one_reads_as_none(tmp_path):
    write_run_info(str(tmp_path), RunInfo(model_path="/m"))
    assert read_identity(str(tmp_path)) is None
    input_identity.record(str(tmp_path), InputIdentity())
    assert read_identity(str(tmp_path)) == InputIdentity()
    raw = json.loads((tmp_path / "run_info.json").read_text())
    assert raw["model_path"] == "/m"  # RunInfo's keys kept
    raw["input_identity"] = {"dataset": {"path": "/d"}}  # fields missing
    (tmp_path / "run_info.json").write_text(json.dumps(raw))
    assert read_identity(str(tmp_path)) is None
    assert read_identity(str(tmp_path / "missing")) is None


def test_mismatch_names_what_the_file_holds_now(tmp_path):
    f = tmp_path / "user.conf"
    f.write_text("a = 1\n")
    recorded = input_identity.file_identity(str(f))
    assert input_identity.mismatch(recorded, str(f)) is None
    f.write_text("a = 2\n")  # same size, other content
    assert input_identity.mismatch(recorded, str(f)).startswith("6 bytes, sha256 ")
    f.write_text("a = 10\n")
    assert input_identity.mismatch(recorded, str(f)) == "7 bytes"
    f.unlink()
    assert input_identity.mismatch(recorded, str(f)) == "no such file"
