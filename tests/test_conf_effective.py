"""Which user.conf lines a run reads (mlperf_llama2/loadgen/effective.py).

LoadGen takes a key from the first of model.scenario, *.scenario, model.*, *.*; a line it passes over is
warned of, never refused. The settings-level tests run FromConfig in a subprocess: LoadGen loads its built-in
mlperf.conf only on a process's first call.
"""

from __future__ import annotations

import pytest

from loadgen_fixtures import REPO, SMALL_USER_CONF, run_main
from mlperf_llama2.loadgen.conf_file import read_conf_lines
from mlperf_llama2.loadgen.effective import applied_lines, conf_warnings

L70, LI = "llama2-70b", "llama2-70b-interactive"


def _lines(tmp_path, text: str) -> dict:
    (tmp_path / "u.conf").write_text(text)
    return read_conf_lines(str(tmp_path / "u.conf"), "--user-conf")


def _warnings(tmp_path, text: str, model: str, scenario: str) -> list[str]:
    return conf_warnings(_lines(tmp_path, text), model, scenario, "--user-conf u.conf")


# --- which line LoadGen takes ---

def test_lookup_takes_model_scenario_then_star_scenario_then_model_star_then_star_star(tmp_path):
    lines = _lines(tmp_path, "*.*.min_duration = 1\nllama2-70b.*.min_duration = 2\n*.Offline.min_duration = 3\n"
                             "llama2-70b.Offline.min_duration = 4\n")
    assert applied_lines(lines, L70, "Offline")["min_duration"].value == 4
    assert applied_lines(lines, LI, "Offline")["min_duration"].value == 3  # *.Offline over the other model's
    assert applied_lines(lines, L70, "Server")["min_duration"].value == 2  # llama2-70b.* over *.*
    assert applied_lines(lines, LI, "Server")["min_duration"].value == 1


@pytest.mark.parametrize("text", [
    "llama2-70b.Offline.min_duration = 0\n*.Offline.min_duration = 600000\n",
    "*.Offline.min_duration = 600000\nllama2-70b.Offline.min_duration = 0\n",
], ids=["specific_first", "star_first"])
def test_a_star_line_overridden_by_a_specific_one_is_one_warning_naming_both(tmp_path, text):
    warnings = _warnings(tmp_path, text, L70, "Offline")
    star = 2 if text.startswith("llama2") else 1
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"--user-conf u.conf: line {star} '*.Offline.min_duration = 600000' is "
                                  f"overridden by line {3 - star} 'llama2-70b.Offline.min_duration = 0'")
    # the other model name reads the * line: nothing is overridden there, and nothing is refused anywhere
    assert _warnings(tmp_path, text, LI, "Offline") == []


def test_a_star_scenario_line_wins_over_a_model_star_line_and_that_is_warned(tmp_path):
    warnings = _warnings(tmp_path, "llama2-70b.*.min_duration = 0\n*.Offline.min_duration = 600000\n", L70, "Offline")
    assert len(warnings) == 1
    assert "line 1 'llama2-70b.*.min_duration = 0' is overridden by line 2 '*.Offline.min_duration = 600000'" \
        in warnings[0]
    assert "llama2-70b.Offline, *.Offline, llama2-70b.*, *.*" in warnings[0]


def test_interactive_run_warns_of_llama2_70b_server_lines_it_ignores(tmp_path):
    text = "llama2-70b.Server.target_qps = 5\nllama2-70b.Server.min_duration = 0\n*.Server.min_query_count = 6\n"
    warnings = _warnings(tmp_path, text, LI, "Server")
    assert len(warnings) == 1 and "\n" not in warnings[0]
    w = warnings[0]
    assert "line 1 'llama2-70b.Server.target_qps = 5'" in w and "line 2 'llama2-70b.Server.min_duration = 0'" in w
    assert "line 3" not in w  # the * line is read
    assert f"this run reads {LI}" in w and "target_qps, min_duration come from LoadGen's defaults" in w
    assert f"{LI}.Server.<key>" in w
    assert _warnings(tmp_path, text, L70, "Server") == []  # the run those lines are for


def test_a_line_for_the_other_model_is_not_warned_when_this_run_sets_the_key(tmp_path):
    both = "llama2-70b.Server.target_qps = 5\nllama2-70b-interactive.Server.target_qps = 2\n*.Server.min_duration = 0\n"
    assert _warnings(tmp_path, both, LI, "Server") == [] and _warnings(tmp_path, both, L70, "Server") == []
    star = "llama2-70b.Server.target_qps = 5\n*.Server.target_qps = 2\n"
    assert _warnings(tmp_path, star, LI, "Server") == []


def test_a_run_of_a_scenario_no_line_names_warns_of_the_other_scenarios_lines(tmp_path):
    text = "*.Offline.min_duration = 0\n*.Offline.min_query_count = 6\n*.*.performance_sample_count_override = 6\n"
    warnings = _warnings(tmp_path, text, L70, "Server")
    assert len(warnings) == 1
    assert "line 1 '*.Offline.min_duration = 0', line 2 '*.Offline.min_query_count = 6' in this Server run" \
        in warnings[0]
    assert "no line names Server" in warnings[0] and "min_duration, min_query_count come from" in warnings[0]
    assert _warnings(tmp_path, text, L70, "Offline") == []


@pytest.mark.parametrize("model,scenario", [(L70, "Offline"), (L70, "Server"), (LI, "Server")])
def test_shipped_and_test_user_confs_give_no_warning(tmp_path, model, scenario):
    for text in ((REPO / "user.conf").read_text(), SMALL_USER_CONF):
        assert _warnings(tmp_path, text, model, scenario) == []


# --- the settings a run of main.py gets (FromConfig in a subprocess) ---

PROBE = """
import logging, sys
from mlperf_llama2.config import RunConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.loadgen.settings import build_test_settings
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stdout)
try:
    build_test_settings(RunConfig(scenario=sys.argv[1], lg_model_name=sys.argv[2], user_conf="u.conf"))
    print("OK")
except UserError as exc:
    print("ERROR", exc)
"""


def _probe(tmp_path, text: str, scenario: str, model: str) -> list[str]:
    (tmp_path / "u.conf").write_text(text)
    (tmp_path / "probe.py").write_text(PROBE)
    result = run_main([scenario, model], cwd=tmp_path, script=str(tmp_path / "probe.py"), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_warnings_come_one_line_each_before_the_run(tmp_path):
    out = _probe(tmp_path, "llama2-70b.Server.target_qps = 50\n*.Server.min_duration = 0\n"
                           "*.Server.min_query_count = 6\n", "Server", LI)
    assert out[-1] == "OK" and len(out) == 2
    assert out[0].startswith("WARNING --user-conf u.conf: LoadGen ignores line 1 'llama2-70b.Server.target_qps = 50'")
