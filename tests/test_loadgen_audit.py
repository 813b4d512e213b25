"""LoadGen settings a careless or hostile submitter could pass, each refused in one line before the model loads.

- user.conf values LoadGen takes that change what a llama2-70b run measures (token latencies off, inferred
  token counts, equal-issue mode off): LoadGen can still print VALID for such a run;
- an accuracy run whose accuracy_sample_count_override exceeds the QSL: LoadGen answers every sample once
  yet logs the override as the count it covered (measured with LoadGen 6.0.17: override 100, QSL 6 ->
  effective_accuracy_sample_count 100, 6 responses);
- --lg-model-name llama2-70b-interactive with --scenario Offline: an Offline run under the Interactive
  model name (LoadGen's min_query_count 100, not 24576; the engine tuned for Interactive);
- --user-conf naming a pipe: named as such, not "file not found".
"""

from __future__ import annotations

import os

import pytest

from loadgen_fixtures import SMALL_USER_CONF, run_main
from mlperf_llama2 import constants
from mlperf_llama2.config import RunConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.harness import parse_config
from mlperf_llama2.loadgen.conf_file import check_conf_files, validate_conf_file
from mlperf_llama2.loadgen.effective import EffectiveSettings, check_accuracy_count, check_run_size


# --- user.conf values that make a run not comparable ---

@pytest.mark.parametrize("line,words", [
    ("*.*.use_token_latencies = 0", ("use_token_latencies = 0", "no TTFT/TPOT")),
    ("llama2-70b.Server.use_token_latencies = 0", ("use_token_latencies = 0",)),
    ("*.Offline.infer_token_latencies = 1", ("infer_token_latencies = 1", "inferred")),
    ("*.*.sample_concatenate_permutation = 0", ("sample_concatenate_permutation = 0", "equal-issue")),
], ids=["token_latencies_off", "token_latencies_off_server", "inferred_tokens", "equal_issue_off"])
def test_a_user_conf_value_that_changes_what_the_run_measures_is_refused(tmp_path, line, words):
    (tmp_path / "u.conf").write_text(SMALL_USER_CONF + line + "\n")
    with pytest.raises(UserError) as info:
        validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--user-conf {tmp_path / 'u.conf'}: line 7: ")
    assert all(word in message for word in words), message
    assert "remove the line" in message


def test_mlperf_confs_own_values_pass_and_an_audit_config_may_turn_equal_issue_off(tmp_path):
    (tmp_path / "u.conf").write_text("*.*.use_token_latencies = 1\n*.*.infer_token_latencies = 0\n"
                                     "*.*.sample_concatenate_permutation = 1\n")
    assert len(validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")) == 3
    (tmp_path / "audit.config").write_text("*.*.mode = 2\n*.*.sample_concatenate_permutation = 0\n")
    assert len(validate_conf_file(str(tmp_path / "audit.config"), "--audit-conf", audit=True)) == 2


# --- accuracy_sample_count_override beyond the QSL ---

def _acc(count: int, accuracy: bool = True, scenario: str = "Offline") -> EffectiveSettings:
    return EffectiveSettings(model=constants.LG_MODEL_NAME, scenario=scenario, accuracy=accuracy, min_duration_ms=0,
                             min_query_count=6, target_qps=50.0, accuracy_count=count,
                             sources={"accuracy_sample_count_override": "line 4"}, label="--user-conf u.conf")


def test_an_accuracy_count_beyond_the_qsl_is_refused_naming_both_counts():
    with pytest.raises(UserError) as info:
        check_accuracy_count(_acc(24576), 100)
    message = str(info.value)
    assert message.startswith("--user-conf u.conf: accuracy_sample_count_override 24576 (line 4) exceeds the 100 "
                              "samples of this llama2-70b Offline accuracy run"), message
    with pytest.raises(UserError, match="exceeds the 6 samples"):
        check_run_size(_acc(7, scenario="Server"), samples=6)  # run_test's check, with the dataset's own size


def test_an_accuracy_count_within_the_qsl_or_a_performance_run_passes():
    check_accuracy_count(_acc(0), 6)  # LoadGen's default: every sample
    check_accuracy_count(_acc(6), 6)
    check_accuracy_count(_acc(3), 6)  # a subset: the submission rules name it (covers 3 samples)
    check_accuracy_count(_acc(24576, accuracy=False), 6)  # a performance run does not read it
    check_run_size(_acc(6), samples=6)


PROBE = """
import sys
from mlperf_llama2.config import RunConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.loadgen.settings import build_test_settings
try:
    build_test_settings(RunConfig(scenario="Offline", accuracy=True, total_sample_count=int(sys.argv[1]),
                                  user_conf="u.conf"))
    print("OK")
except UserError as exc:
    print("ERROR", exc)
"""


def test_main_settings_refuse_an_accuracy_count_beyond_total_sample_count(tmp_path):
    """FromConfig's value (mlperf.conf under the user.conf), checked before the model loads."""
    (tmp_path / "u.conf").write_text("*.*.accuracy_sample_count_override = 24576\n")
    (tmp_path / "probe.py").write_text(PROBE)
    for total, expected in (("100", "ERROR --user-conf u.conf: accuracy_sample_count_override 24576 (line 1) "
                                    "exceeds the 100 samples"), ("24576", "OK")):
        result = run_main([total], cwd=tmp_path, script=str(tmp_path / "probe.py"), timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().startswith(expected), result.stdout


# --- scenario flags ---

def test_the_interactive_model_name_with_offline_is_refused():
    with pytest.raises(UserError) as info:
        parse_config(["--scenario", "Offline", "--lg-model-name", constants.LG_MODEL_NAME_INTERACTIVE,
                      "--device", "cpu"])
    message = str(info.value)
    assert "\n" not in message and "--lg-model-name llama2-70b-interactive" in message
    assert "--scenario Offline" in message and "--scenario Interactive" in message
    with pytest.raises(UserError, match="Server setting"):
        RunConfig(scenario="Offline", lg_model_name=constants.LG_MODEL_NAME_INTERACTIVE)
    assert parse_config(["--scenario", "Server", "--lg-model-name", constants.LG_MODEL_NAME_INTERACTIVE,
                         "--device", "cpu"]).interactive
    assert parse_config(["--scenario", "Interactive", "--device", "cpu"]).scenario == "Server"


# --- --user-conf path ---

def test_a_user_conf_that_is_a_pipe_is_named_as_one(tmp_path):
    fifo = tmp_path / "conf.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError) as info:
        check_conf_files(str(fifo), str(tmp_path / "audit.config"))
    message = str(info.value)
    assert message.startswith(f"--user-conf {fifo}: not a regular file") and "file not found" not in message
    with pytest.raises(UserError, match="file not found"):
        check_conf_files(str(tmp_path / "missing.conf"), str(tmp_path / "audit.config"))


def test_a_fractional_target_latency_for_every_scenario_is_refused_as_server_truncates_it(tmp_path):
    """A Server run reads a `*.*` target_latency as Server's whole number of ms too (2.5 -> 2)."""
    (tmp_path / "u.conf").write_text("*.*.target_latency = 2.5\n")
    with pytest.raises(UserError, match="line 1: target_latency = 2.5: a whole number >= 0 is expected"):
        validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")
    (tmp_path / "u.conf").write_text("*.*.target_latency = 2\n*.Offline.min_duration = 0\n")
    assert validate_conf_file(str(tmp_path / "u.conf"), "--user-conf")[("*", "*", "target_latency")] == 2
