"""Which user.conf lines a run reads, and the settings LoadGen could not run (mlperf_llama2/loadgen/effective.py).

LoadGen takes a key from the first of model.scenario, *.scenario, model.*, *.*; a line it passes over is
warned of, never refused. Settings whose run LoadGen would never issue (it segfaults), not hold in memory
(std::bad_alloc) or not finish within days (target_qps 1e-9) are one line and exit 2, before the model
loads. The settings-level tests run FromConfig in a subprocess: LoadGen loads its built-in mlperf.conf only
on a process's first call.
"""

from __future__ import annotations

import pytest

from loadgen_fixtures import REPO, SMALL_USER_CONF, run_main, write_dataset
from mlperf_llama2.errors import UserError
from mlperf_llama2.loadgen.conf_file import read_conf_lines
from mlperf_llama2.loadgen.effective import (
    MAX_GENERATED_SAMPLES,
    MAX_RUN_S,
    EffectiveSettings,
    applied_lines,
    check_run_size,
    conf_warnings,
    offline_samples,
)
from reliability_fixtures import error_lines

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


LOOKUP_PROBE = """
import sys
import mlperf_loadgen as lg
for model in ("llama2-70b", "llama2-70b-interactive"):
    for scenario in ("Offline", "Server"):
        s = lg.TestSettings()
        s.FromConfig(sys.argv[1], model, scenario, 1)
        print(model, scenario, s.min_duration_ms)
"""


def test_the_lookup_is_loadgens(tmp_path):
    text = "*.*.min_duration = 1\nllama2-70b.*.min_duration = 2\n*.Offline.min_duration = 3\n"
    (tmp_path / "probe.py").write_text(LOOKUP_PROBE)
    (tmp_path / "u.conf").write_text(text)
    result = run_main([tmp_path / "u.conf"], cwd=tmp_path, script=str(tmp_path / "probe.py"), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = _lines(tmp_path, text)
    ours = [f"{m} {s} {applied_lines(lines, m, s)['min_duration'].value}"
            for m in (L70, LI) for s in ("Offline", "Server")]
    assert result.stdout.split("\n")[:4] == ours == [
        "llama2-70b Offline 3", "llama2-70b Server 2", "llama2-70b-interactive Offline 3",
        "llama2-70b-interactive Server 1"]


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


# --- settings LoadGen could not run ---

def _settings(scenario="Server", accuracy=False, min_duration_ms=0, min_query_count=6, target_qps=1.0, **kw):
    return EffectiveSettings(model=L70, scenario=scenario, accuracy=accuracy, min_duration_ms=min_duration_ms,
                             min_query_count=min_query_count, target_qps=target_qps, label="--user-conf u.conf", **kw)


def _refusal(settings, samples=None) -> str:
    with pytest.raises(UserError) as info:
        check_run_size(settings, samples)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--user-conf u.conf: ")
    return message


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_loadgens_built_in_values_and_small_test_runs_pass(scenario):
    check_run_size(_settings(scenario, min_duration_ms=600000, min_query_count=24576, target_qps=1.0))
    check_run_size(_settings(scenario, min_duration_ms=0, min_query_count=6, target_qps=50.0))
    check_run_size(_settings(scenario, accuracy=True, min_duration_ms=0, min_query_count=0), samples=24576)


def test_server_target_qps_tiny_is_refused_naming_the_values_and_their_lines():
    message = _refusal(_settings(target_qps=1e-9, sources={"target_qps": "line 3", "min_query_count": "line 5"}))
    assert "llama2-70b Server performance run would last at least 69,444 days" in message
    assert "min_query_count 6 (line 5) / target_qps 1e-09 (line 3)" in message
    assert "min_duration 0 ms (LoadGen default)" in message and "7-day bound" in message


def test_the_duration_bound_is_max_of_min_duration_and_queries_over_qps():
    check_run_size(_settings(min_query_count=int(MAX_RUN_S), target_qps=1.0))  # exactly 7 days
    assert "would last at least 7.0 days" in _refusal(_settings(min_query_count=int(MAX_RUN_S) + 3600))
    assert "8.0 days" in _refusal(_settings(min_duration_ms=8 * 86400 * 1000, min_query_count=1, target_qps=1.0))


def test_target_qps_zero_is_refused():
    assert "target_qps 0 (LoadGen default) in this llama2-70b Server performance run: it must be > 0" \
        in _refusal(_settings(target_qps=0.0))


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_no_query_at_all_is_refused(scenario):
    message = _refusal(_settings(scenario, min_duration_ms=0, min_query_count=0))
    assert "would issue no" in message and "min_query_count 0" in message and "min_duration 0 ms" in message
    assert "crash" in message


def test_no_query_is_judged_on_loadgens_offline_formula():
    # 1.1 x 1 s x 0.5 qps = 0.55 samples: LoadGen truncates to 0 and crashes
    assert offline_samples(_settings("Offline", min_duration_ms=1000, min_query_count=0, target_qps=0.5)) == 0
    _refusal(_settings("Offline", min_duration_ms=1000, min_query_count=0, target_qps=0.5))
    check_run_size(_settings("Offline", min_duration_ms=1000, min_query_count=0, target_qps=1.0))  # 1 sample
    check_run_size(_settings("Offline", min_duration_ms=0, min_query_count=0, issue_unique=True))  # the sample set
    check_run_size(_settings("Server", min_duration_ms=1, min_query_count=0))  # the first query is always issued


def test_offline_query_larger_than_memory_is_refused():
    message = _refusal(_settings("Offline", min_duration_ms=1000, min_query_count=6, target_qps=1e12))
    assert "would put 1.1e+12 samples in LoadGen's query" in message and "target_qps 1e+12" in message
    assert f"{MAX_GENERATED_SAMPLES:,}" in message
    check_run_size(_settings("Offline", min_query_count=MAX_GENERATED_SAMPLES))


def test_server_queries_larger_than_memory_are_refused():
    assert "would generate 6e+14 queries up front" in _refusal(
        _settings(min_duration_ms=600000, target_qps=1e12))


def test_server_accuracy_run_length_uses_the_dataset_size():
    tiny = _settings(accuracy=True, target_qps=1e-9)
    check_run_size(tiny)  # the sample count is not known yet
    check_run_size(tiny, samples=0)
    message = _refusal(tiny, samples=6)
    assert "accuracy run would last" in message and "6 samples at target_qps 1e-09" in message
    check_run_size(_settings("Offline", accuracy=True, min_duration_ms=0, min_query_count=0), samples=6)


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


def _probe(tmp_path, text: str, scenario: str, model: str, audit: str | None = None) -> list[str]:
    (tmp_path / "u.conf").write_text(text)
    (tmp_path / "probe.py").write_text(PROBE)
    if audit is not None:
        (tmp_path / "audit.config").write_text(audit)
    result = run_main([scenario, model], cwd=tmp_path, script=str(tmp_path / "probe.py"), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_the_checks_apply_to_the_settings_of_the_active_model_name(tmp_path):
    text = ("*.Server.min_duration = 0\n*.Server.min_query_count = 0\n"
            "llama2-70b-interactive.Server.min_query_count = 6\n")
    out = _probe(tmp_path, text, "Server", L70)
    assert len(out) == 1 and out[0].startswith("ERROR --user-conf u.conf: LoadGen would issue no query")
    assert "min_query_count 0 (line 2)" in out[0]
    out = _probe(tmp_path, text, "Server", LI)  # reads its own min_query_count 6 over the * line's 0
    assert out[-1] == "OK" and "line 2 '*.Server.min_query_count = 0' is overridden by line 3" in out[0]


def test_loadgens_built_in_values_count_where_no_line_sets_a_key(tmp_path):
    # only target_qps is set: mlperf.conf's min_duration 600000 ms x 1e12 samples/s is far beyond memory
    out = _probe(tmp_path, "*.Offline.target_qps = 1000000000000\n", "Offline", L70)
    assert out[-1].startswith("ERROR") and "min_duration 600000 ms (LoadGen default)" in out[-1]
    assert "min_query_count 24576 (LoadGen default)" in out[-1]  # mlperf.conf's llama2-70b.Offline value


def test_an_audit_config_is_applied_over_the_user_conf(tmp_path):
    out = _probe(tmp_path, SMALL_USER_CONF, "Offline", L70, audit="*.Offline.min_query_count = 0\n")
    assert out[-1].startswith("ERROR") and "min_query_count 0 (audit.config line 1)" in out[-1]


def test_warnings_come_one_line_each_before_the_run(tmp_path):
    out = _probe(tmp_path, "llama2-70b.Server.target_qps = 50\n*.Server.min_duration = 0\n"
                           "*.Server.min_query_count = 6\n", "Server", LI)
    assert out[-1] == "OK" and len(out) == 2
    assert out[0].startswith("WARNING --user-conf u.conf: LoadGen ignores line 1 'llama2-70b.Server.target_qps = 50'")


# --- main.py end to end: one line, exit 2, the model never loaded ---

@pytest.mark.parametrize("scenario,conf,words", [
    ("Server", "*.Server.target_qps = 1e-9\n*.Server.min_duration = 0\n*.Server.min_query_count = 6\n",
     "would last at least"),
    ("Offline", "*.Offline.min_query_count = 0\n*.Offline.min_duration = 0\n", "would issue no sample"),
    ("Server", "*.Server.min_query_count = 0\n*.Server.min_duration = 0\n", "would issue no query"),
    ("Offline", "*.Offline.target_qps = 1000000000000\n*.Offline.min_duration = 1000\n", "samples in LoadGen's query"),
    ("Interactive", "llama2-70b-interactive.Server.target_qps = 1e-9\nllama2-70b.Server.target_qps = 50\n",
     "llama2-70b-interactive Server performance run would last"),
], ids=["server_qps_tiny", "offline_no_query", "server_no_query", "offline_too_many", "interactive_qps_tiny"])
def test_main_refuses_before_the_model_loads(tmp_path, tiny_model_dir, tiny_tokenizer_dir, scenario, conf, words):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "u.conf").write_text(conf)
    result = run_main(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                       tmp_path / "u.conf", "--device", "cpu", "--no-progress", "--scenario", scenario,
                       "--output-log-dir", tmp_path / "logs"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "loading model" not in result.stderr
    assert "starting LoadGen" not in result.stderr


def test_main_server_accuracy_run_at_a_tiny_rate_is_refused_before_loadgen_starts(tmp_path, tiny_model_dir,
                                                                                  tiny_tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "u.conf").write_text("*.Server.target_qps = 1e-9\n")
    result = run_main(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                       tmp_path / "u.conf", "--device", "cpu", "--no-progress", "--scenario", "Server", "--accuracy",
                       "--output-log-dir", tmp_path / "logs"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "6 samples at target_qps 1e-09 (line 1)" in lines[0], result.stderr[-2000:]
    assert "starting LoadGen" not in result.stderr and "Traceback" not in result.stderr


# --- LoadGen out of memory all the same: one line, exit 2 ---

OUT_OF_MEMORY = """
import sys
import mlperf_loadgen as lg
from mlperf_llama2.backends.base import Backend
from mlperf_llama2.data.dataset import Dataset
from mlperf_llama2.loadgen.runner import run_test
from mlperf_llama2.loadgen.settings import LoadGenSettings


class Answers(Backend):
    name = "answers"

    @property
    def eos_token_id(self):
        return 2

    def start(self, sink):
        self.sink = sink

    def submit(self, requests):
        for r in requests:
            self.sink.complete(r.request_id, [5, 2])

    def stop(self):
        pass


test = lg.TestSettings()  # no user.conf and no checks: 1.1e12 samples in the one Offline query
test.scenario, test.mode = lg.TestScenario.Offline, lg.TestMode.PerformanceOnly
test.offline_expected_qps, test.min_duration_ms, test.min_query_count = 1e12, 1000, 6
out = lg.LogOutputSettings()
out.outdir = sys.argv[1]
log = lg.LogSettings()
log.log_output = out
dataset = Dataset(path="-", prompts=((1, 5, 6),) * 6, targets=None)
run_test("Offline", Answers(), dataset, LoadGenSettings(test=test, log=log, output_dir=sys.argv[1]), max_new_tokens=4)
print("run_test returned")
"""


def test_loadgen_out_of_memory_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "oom.py").write_text(OUT_OF_MEMORY)
    (tmp_path / "logs").mkdir()
    result = run_main([tmp_path / "logs"], cwd=tmp_path, script=str(tmp_path / "oom.py"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]  # was a traceback, then SIGSEGV / SIGABRT at exit
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "LoadGen ran out of memory during the test (std::bad_alloc)" in lines[0]
    assert "lower target_qps, min_duration or min_query_count" in lines[0]
    assert "Traceback" not in result.stderr and "run_test returned" not in result.stdout
    assert "out of memory" in (tmp_path / "logs" / "RUN_STOPPED.txt").read_text()


def test_a_run_builds_loadgens_settings_once_so_the_built_in_conf_is_read(tmp_path, tiny_model_dir,
                                                                          tiny_tokenizer_dir):
    """main.py checks the effective settings before it claims --output-log-dir and runs with those same
    TestSettings: a second FromConfig in the process would not read LoadGen's built-in mlperf.conf (its
    llama2-70b lines, token latencies among them, would be lost)."""
    from mlperf_llama2.report.summary import parse_detail

    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "u.conf").write_text(SMALL_USER_CONF)
    result = run_main(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                       tmp_path / "u.conf", "--device", "cpu", "--no-progress", "--max-new-tokens", "4",
                       "--output-log-dir", tmp_path / "logs"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    detail, _ = parse_detail(str(tmp_path / "logs" / "mlperf_log_detail.txt"))
    assert detail["requested_use_token_latencies"] is True  # llama2-70b.*.use_token_latencies = 1 (mlperf.conf)
    assert detail["effective_qsl_rng_seed"] != 0  # the round's seeds come from mlperf.conf too
    assert detail["effective_min_duration_ms"] == 0  # and the user.conf's own line


def test_refused_settings_leave_an_earlier_runs_logs_in_place_with_overwrite(tmp_path, tiny_model_dir,
                                                                            tiny_tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "u.conf").write_text("*.Offline.min_duration = 0\n*.Offline.min_query_count = 0\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mlperf_log_summary.txt").write_text("an earlier run\n")
    result = run_main(["--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl", "--user-conf",
                       tmp_path / "u.conf", "--device", "cpu", "--no-progress", "--overwrite",
                       "--output-log-dir", logs], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "would issue no sample" in error_lines(result.stderr)[0]
    assert sorted(p.name for p in logs.iterdir()) == ["mlperf_log_summary.txt"]  # nothing moved, nothing written
