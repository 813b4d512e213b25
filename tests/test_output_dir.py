"""A run owns its output directory (issue 17, item 3): a second concurrent run is refused, an earlier
run's results are refused or, with --overwrite, moved intact into previous-<time>/; --save-outputs is
checked before the model loads; nothing the run did not write is touched."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from mlperf_llama2 import harness
from mlperf_llama2.errors import UserError, run_cli
from mlperf_llama2.run_dir import RESULT_FILES, check_save_outputs, claim_output_dir
from reliability_fixtures import REPO, child_env, error_lines, run

EARLIER = {  # an earlier (stopped) run's files, each with content of its own
    "mlperf_log_summary.txt": "Result is : VALID\n", "mlperf_log_detail.txt": "detail\n",
    "mlperf_log_accuracy.json": "[]\n", "RUN_STOPPED.txt": "This run was stopped\n", "summary.json": "{}\n",
    "run_info.json": '{"scenario": "Server"}\n', "ttft.png": "png", "throughput.png": "png2",
}
NOT_OURS = {"notes.txt": "my notes\n", "previous-20200101-000000/mlperf_log_summary.txt": "old\n"}


def _fill(d: Path, files: dict) -> dict:
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}


def _digests(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*") if p.is_file()}


def test_plot_and_report_file_names_are_all_listed():
    written = set(re.findall(r'"(\w+\.png)"', (REPO / "mlperf_llama2" / "report" / "plots.py").read_text()))
    assert written and written <= set(RESULT_FILES)
    from mlperf_llama2.loadgen.interrupt import STOP_NOTE
    from mlperf_llama2.report.run_info import RUN_INFO_FILE
    from mlperf_llama2.report.summary import ACCURACY_RESULT_FILE, DETAIL_FILE, SUMMARY_FILE, SUMMARY_JSON
    from mlperf_llama2.report.timings import TIMINGS_FILE

    assert {STOP_NOTE, RUN_INFO_FILE, ACCURACY_RESULT_FILE, DETAIL_FILE, SUMMARY_FILE, SUMMARY_JSON,
            TIMINGS_FILE} <= set(RESULT_FILES)


def test_earlier_results_are_refused_and_left_alone(tmp_path):
    before = {**_fill(tmp_path, EARLIER), **_fill(tmp_path, NOT_OURS)}
    with pytest.raises(UserError, match=r"holds an earlier run's results \(mlperf_log_summary.txt, .* and \d+ more\); "
                                        r"choose another directory or pass --overwrite"):
        claim_output_dir(str(tmp_path))
    assert _digests(tmp_path) == before
    with claim_output_dir(str(tmp_path / "fresh")) as claim:  # a new or empty directory is fine
        assert claim.moved_to is None


def test_overwrite_moves_exactly_the_results_intact(tmp_path):
    earlier = _fill(tmp_path, EARLIER)
    not_ours = _fill(tmp_path, NOT_OURS)
    with claim_output_dir(str(tmp_path), overwrite=True) as claim:
        moved = Path(claim.moved_to)
    assert moved.parent == tmp_path and re.fullmatch(r"previous-\d{8}-\d{6}", moved.name)
    assert _digests(moved) == earlier  # every earlier result, byte for byte
    assert {k: v for k, v in _digests(tmp_path).items() if not k.startswith(moved.name)} == not_ours
    _fill(tmp_path, {"summary.json": "{}\n"})
    with claim_output_dir(str(tmp_path), overwrite=True) as claim:  # same second: a second previous-* dir
        assert claim.moved_to != str(moved) and Path(claim.moved_to, "summary.json").exists()


def test_a_held_directory_is_refused_and_freed_on_release(tmp_path):
    claim = claim_output_dir(str(tmp_path))
    with pytest.raises(UserError, match="another run is writing into this directory now"):
        claim_output_dir(str(tmp_path))
    claim.release()
    claim_output_dir(str(tmp_path)).release()


def test_save_outputs_checks(tmp_path):
    with pytest.raises(UserError, match="is a directory; pass a file path such as"):
        check_save_outputs(str(tmp_path))
    (tmp_path / "out.json").write_text("earlier outputs")
    with pytest.raises(UserError, match="the file exists .*pass --overwrite to replace it"):
        check_save_outputs(str(tmp_path / "out.json"))
    check_save_outputs(str(tmp_path / "out.json"), overwrite=True)
    assert (tmp_path / "out.json").read_text() == "earlier outputs"  # checking never touches it
    with pytest.raises(UserError, match="out.json is a file, not a directory"):
        check_save_outputs(str(tmp_path / "out.json" / "x.json"))
    check_save_outputs(str(tmp_path / "new" / "sub" / "x.json"))


@pytest.fixture
def inputs(tmp_path, tiny_model_dir, tiny_tokenizer_dir, monkeypatch):
    """main.py's inputs, good; loading a model fails the test."""
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr("mlperf_llama2.backends.hf_loading.load_causal_lm", no_model)
    monkeypatch.setattr("mlperf_llama2.backends.registry.create_backend", no_model)
    monkeypatch.chdir(tmp_path)
    return ["--model-path", str(tiny_model_dir), "--dataset-path", str(tmp_path / "data.pkl"), "--device", "cpu",
            "--user-conf", str(tmp_path / "user.conf"), "--max-new-tokens", "4"]


@pytest.mark.parametrize("what", ["earlier_results", "save_outputs_is_a_dir", "save_outputs_exists"])
def test_main_refuses_before_the_model_loads(inputs, tmp_path, capsys, what):
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "out.json").write_text("earlier outputs")
    if what == "earlier_results":
        _fill(logs, EARLIER)
        argv, words = ["--output-log-dir", str(logs)], "holds an earlier run's results"
    elif what == "save_outputs_is_a_dir":
        argv, words = ["--output-log-dir", str(logs), "--save-outputs", str(tmp_path)], "is a directory"
    else:
        argv, words = ["--output-log-dir", str(logs), "--save-outputs", str(tmp_path / "out.json")], "the file exists"
    before = _digests(tmp_path)
    assert run_cli(harness.main, inputs + argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and words in lines[0], lines
    assert _digests(tmp_path) == before


def test_second_concurrent_run_is_refused_with_one_line(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    """Another process holds the directory: main.py exits 2 with one line before loading the model."""
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    logs = tmp_path / "logs"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mlperf_llama2.run_dir import claim_output_dir; "
         f"c = claim_output_dir({str(logs)!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                    tmp_path / "user.conf", "--device", "cpu", "--output-log-dir", logs], tmp_path)
    finally:
        holder.communicate("")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"main.py: error: --output-log-dir {logs}: another run is writing into this "
                                        "directory now; wait for it to finish or choose another directory"]
    assert "mlperf_llama2.backends.hf_loading: loading" not in proc.stderr and "starting LoadGen" not in proc.stderr
    assert list(logs.iterdir()) == []


def test_overwrite_run_keeps_the_earlier_run_under_previous_and_nothing_stale_beside_its_own(
        tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    logs = tmp_path / "logs"
    logs.mkdir()
    earlier, not_ours = _fill(logs, EARLIER), _fill(logs, NOT_OURS)
    proc = run(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                tmp_path / "user.conf", "--device", "cpu", "--output-log-dir", logs, "--max-new-tokens", 4,
                "--accuracy", "--no-progress", "--overwrite"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    previous = [p for p in logs.iterdir() if p.name.startswith("previous-") and p.name not in
                {Path(n).parts[0] for n in NOT_OURS}]
    assert len(previous) == 1 and _digests(previous[0]) == earlier
    assert f"moved the earlier run's {len(EARLIER)} file(s) to {previous[0]}" in proc.stderr
    now = {p.name for p in logs.iterdir() if p.is_file()}
    assert {"mlperf_log_summary.txt", "mlperf_log_accuracy.json", "summary.json", "run_info.json"} <= now
    assert not {"RUN_STOPPED.txt", "ttft.png", "throughput.png"} & now  # nothing stale beside the new run
    assert (logs / "mlperf_log_summary.txt").read_text() != EARLIER["mlperf_log_summary.txt"]
    assert {k: v for k, v in _digests(logs).items() if k in NOT_OURS} == not_ours


def test_a_filesystem_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr("mlperf_llama2.run_dir.fcntl.flock", no_flock)
    _fill(tmp_path, {"summary.json": "{}\n"})
    with pytest.raises(UserError, match="holds an earlier run's results"):  # the results check still applies
        claim_output_dir(str(tmp_path))
    with caplog.at_level("WARNING"), claim_output_dir(str(tmp_path / "new")):
        pass
    assert "cannot lock it (Bad file descriptor); a second run into it would not be detected" in caplog.text
