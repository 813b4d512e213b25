"""user.conf and --audit-conf are checked line by line before the model loads (issue 17, item 2).

LoadGen keeps any `key = number` line and silently ignores what it does not look up; each such line
here is one error naming the file, the line number and the problem, exit 2, no traceback, and the
model is never loaded.
"""

from __future__ import annotations

import pytest

from loadgen_fixtures import SMALL_USER_CONF, VALID_SERVER_USER_CONF, write_dataset
from mlperf_llama2 import harness
from mlperf_llama2.errors import UserError, run_cli
from mlperf_llama2.loadgen.conf_file import CONF_KEYS, validate_conf_file
from reliability_fixtures import REPO, error_lines, run

# (name, the bad line, words the error must contain)
BAD_LINES = [
    ("typo_in_key", "*.Offline.min_querry_count = 10", ("LoadGen has no setting 'min_querry_count'", "a typo?")),
    ("interactive_scenario", "*.Interactive.target_qps = 2",
     ("no Interactive scenario", "llama2-70b-interactive.Server.target_qps")),
    ("unknown_scenario", "*.offline.min_duration = 0", ("unknown scenario 'offline'",)),
    ("other_model", "gptj-99.Offline.min_duration = 0", ("unknown model 'gptj-99'", "llama2-70b-interactive")),
    ("value_not_a_number", "*.Offline.min_query_count = many", ("a whole number >= 0 is expected",)),
    ("float_for_a_count", "*.Server.min_query_count = 1.5", ("min_query_count = 1.5", "whole number")),
    ("fraction_for_server_target_latency", "*.Server.target_latency = 2.5", ("target_latency = 2.5", "whole number")),
    ("negative_qps", "*.Server.target_qps = -1", ("must not be negative",)),
    ("zero_qps", "*.Server.target_qps = 0", ("target_qps = 0: must be > 0",)),
    ("zero_qps_for_every_scenario", "*.*.target_qps = 0.0", ("target_qps = 0.0: must be > 0",)),
    ("qps_beyond_a_double", "*.Offline.target_qps = 1e999", ("1e999: too large",)),
    ("qps_integer_beyond_a_double", "*.Server.target_qps = " + "9" * 400, ("too large",)),
    ("count_beyond_64_bits", "*.Offline.min_query_count = 18446744073709551616", ("too large", "64-bit")),
    ("percentile_above_100", "*.Server.target_latency_percentile = 150", ("percentile in (0, 100]",)),
    ("percentile_zero", "*.Server.target_latency_percentile = 0", ("percentile in (0, 100]",)),
    ("bool_not_0_or_1", "*.*.sample_concatenate_permutation = 2", ("0 or 1 is expected",)),
    ("octal", "*.Offline.min_duration = 0600000", ("leading 0 as octal",)),
    ("no_spaces_around_equals", "*.Offline.min_duration=0", ("spaces around '='", "silently ignores")),
    ("comment_after_value", "*.Offline.min_duration = 0 # ten minutes", ("comment after the value",)),
    ("two_values", "*.Offline.min_duration = 0 5", ("one value per line",)),
    ("no_value", "*.Offline.min_duration =", ("expected `model.scenario.key = value`",)),
    ("two_part_name", "Offline.min_duration = 0", ("expected model.scenario.key",)),
    ("key_of_another_scenario", "*.Offline.ttft_latency = 2000", ("ttft_latency applies to Server only",)),
    ("mlperf_conf_only_key", "*.*.qsl_rng_seed = 5", ("only from its built-in mlperf.conf",)),
    ("mode_in_user_conf", "*.*.mode = 2", ("main.py sets the test mode",)),
    ("free_text", "min_duration is ten minutes", ("expected `model.scenario.key = value`",)),
]


def _conf(tmp_path, bad: str, name: str = "user.conf"):
    """SMALL_USER_CONF with a comment on top and `bad` as its line 4."""
    lines = SMALL_USER_CONF.splitlines()
    path = tmp_path / name
    path.write_text("\n".join(["# a comment", "", lines[0], bad, *lines[1:]]) + "\n")
    return path


@pytest.mark.parametrize("name,bad,words", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_each_bad_line_is_one_error_naming_file_and_line(tmp_path, name, bad, words):
    path = _conf(tmp_path, bad)
    with pytest.raises(UserError) as info:
        validate_conf_file(str(path), "--user-conf")
    message = str(info.value)
    assert message.startswith(f"--user-conf {path}: line 4: "), message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_byte_order_mark_is_named_not_shown_as_an_unknown_model(tmp_path):
    """An editor's UTF-8 BOM: LoadGen reads it as part of line 1's name and ignores that line."""
    path = tmp_path / "user.conf"
    path.write_bytes(b"\xef\xbb\xbf" + SMALL_USER_CONF.encode())
    with pytest.raises(UserError) as info:
        validate_conf_file(str(path), "--user-conf")
    assert str(info.value).startswith(f"--user-conf {path}: line 1: starts with a UTF-8 byte-order mark"), info.value
    assert "unknown model" not in str(info.value)


def test_good_files_pass_and_give_their_settings(tmp_path):
    for text in (SMALL_USER_CONF, VALID_SERVER_USER_CONF, (REPO / "user.conf").read_text()):
        (tmp_path / "u.conf").write_text(text)
        settings = validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")
        assert len(settings) == sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))
    (tmp_path / "u.conf").write_text("llama2-70b.Server.target_qps = 0x10\nllama2-70b-interactive.Server.target_qps = 2.5e0"
                                     "\n*.SingleStream.target_latency = 10\n")
    assert validate_conf_file(str(tmp_path / "u.conf"), "--user-conf") == {
        ("llama2-70b", "Server", "target_qps"): 16.0,
        ("llama2-70b-interactive", "Server", "target_qps"): 2.5,
        ("*", "SingleStream", "target_latency"): 10.0,
    }


def test_the_shipped_test06_audit_config_passes_and_audit_lines_must_be_for_model_star(tmp_path):
    settings = validate_conf_file(str(REPO / "compliance" / "TEST06" / "audit.config"), "--audit-conf", audit=True)
    assert settings[("*", "*", "mode")] == 2 and settings[("*", "*", "accuracy_log_sampling_target")] == 100
    (tmp_path / "audit.config").write_text("llama2-70b.*.accuracy_log_sampling_target = 100\n")
    with pytest.raises(UserError, match=r"line 1: .*audit config for model '\*' only.*\*\.\*\.accuracy_log"):
        validate_conf_file(str(tmp_path / "audit.config"), "--audit-conf", audit=True)


def test_boundary_values_pass(tmp_path):
    (tmp_path / "u.conf").write_text("*.Server.target_latency_percentile = 100\n*.Server.target_qps = 1e-3\n"
                                     "*.Offline.min_query_count = 18446744073709551615\n")
    assert validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")[("*", "Server", "target_qps")] == 0.001


def test_a_repeated_key_names_both_lines(tmp_path):
    (tmp_path / "u.conf").write_text("*.Server.target_qps = 1\n# x\n*.Server.target_qps = 2\n")
    with pytest.raises(UserError, match="line 3: '\\*.Server.target_qps' is already set on line 1"):
        validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")


def test_key_list_is_loadgens():
    """The keys FromConfig of LoadGen 6.0.17 reads from a user.conf: spot checks both ways."""
    for key in ("min_duration", "target_qps", "ttft_latency", "tpot_latency", "accuracy_sample_count_override",
                "sample_concatenate_permutation", "performance_sample_count_override"):
        assert key in CONF_KEYS
    for key in ("qsl_rng_seed", "schedule_rng_seed", "test05", "min_querry_count", "target_latency_ns"):
        assert key not in CONF_KEYS


@pytest.fixture
def inputs(tmp_path, tiny_model_dir, tiny_tokenizer_dir, monkeypatch):
    """Good inputs for harness.main in this process; loading a model fails the test."""
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before user.conf was checked")

    monkeypatch.setattr("mlperf_llama2.backends.hf_loading.load_causal_lm", no_model)
    monkeypatch.setattr("mlperf_llama2.backends.registry.create_backend", no_model)
    monkeypatch.chdir(tmp_path)
    return ["--model-path", str(tiny_model_dir), "--dataset-path", str(tmp_path / "data.pkl"), "--device", "cpu",
            "--output-log-dir", str(tmp_path / "logs")]


def test_main_refuses_a_bad_user_conf_before_the_model_loads(inputs, tmp_path, capsys):
    path = _conf(tmp_path, "*.Interactive.target_qps = 2")
    assert run_cli(harness.main, inputs + ["--user-conf", str(path)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "line 4" in lines[0] and "llama2-70b-interactive.Server.target_qps" in lines[0]
    assert not (tmp_path / "logs").exists()  # refused before the log directory was even made


def test_main_refuses_a_bad_audit_config_in_the_working_directory(inputs, tmp_path, capsys):
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    (tmp_path / "audit.config").write_text("*.*.mode = 2\n*.*.accuracy_log_sampling_tagret = 100\n")
    assert run_cli(harness.main, inputs + ["--user-conf", str(tmp_path / "user.conf")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--audit-conf audit.config: line 2" in lines[0], lines
    assert "accuracy_log_sampling_tagret" in lines[0]


def test_main_py_subprocess_one_line_exit_2_no_traceback(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    path = _conf(tmp_path, "*.Offline.min_querry_count = 10")
    proc = run(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf", path,
                "--device", "cpu", "--output-log-dir", tmp_path / "logs"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert lines == [f"main.py: error: --user-conf {path}: line 4: '*.Offline.min_querry_count': LoadGen has no "
                     "setting 'min_querry_count' (a typo?) and would ignore this line"], proc.stderr[-2000:]
    assert "mlperf_llama2.backends.hf_loading: loading" not in proc.stderr and "starting LoadGen" not in proc.stderr
