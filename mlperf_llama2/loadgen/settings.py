"""LoadGen settings from a `RunConfig` (SPEC §1): TestSettings via user.conf, log output, trace.

Built before the model loads, so a bad user.conf fails in the first second. `FromConfig`'s return
code is checked: 0 is success, a negative errno (missing or unparsable file) is a UserError. The
settings FromConfig leaves (and an audit.config's lines over them) are then checked as the run will
use them (`effective.check_run_size`), and the user.conf lines this run does not read are warned of.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Optional

import mlperf_loadgen as lg

from mlperf_llama2.config import RunConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.loadgen.conf_file import ANY, check_conf_path, read_conf_lines
from mlperf_llama2.loadgen.effective import (EffectiveSettings, applied_lines, check_accuracy_count,
                                             check_run_size, conf_warnings)

log = logging.getLogger(__name__)

SCENARIOS = {"Offline": lg.TestScenario.Offline, "Server": lg.TestScenario.Server}
USER_CONF_TYPE = 1  # FromConfig conf_type: 1 = a user.conf (the built-in mlperf.conf is loaded first)


@dataclass
class LoadGenSettings:
    test: lg.TestSettings
    log: lg.LogSettings
    output_dir: str
    effective: Optional[EffectiveSettings] = None  # for the checks that need the dataset's size (runner)


def build_test_settings(config: RunConfig) -> lg.TestSettings:
    """Scenario, then FromConfig(user_conf, lg_model_name, scenario), then the mode (as the reference)."""
    return _test_settings(config)[0]


def build_test_settings_checked(config: RunConfig) -> tuple[lg.TestSettings, EffectiveSettings]:
    """TestSettings and the effective values they were checked on, for `build_settings(config, tested)`: a
    run builds them once, before it claims its output directory. FromConfig loads LoadGen's built-in
    mlperf.conf on a process's first call only, so a process must not build a run's settings twice."""
    return _test_settings(config)


def _test_settings(config: RunConfig) -> tuple[lg.TestSettings, EffectiveSettings]:
    check_conf_path(config.user_conf)
    if not os.access(config.user_conf, os.R_OK):
        raise UserError(f"--user-conf {config.user_conf}: file is not readable")
    lines = read_conf_lines(config.user_conf, "--user-conf")
    for warning in conf_warnings(lines, config.lg_model_name, config.scenario, f"--user-conf {config.user_conf}"):
        log.warning("%s", warning)
    settings = lg.TestSettings()
    settings.scenario = SCENARIOS[config.scenario]
    rc = settings.FromConfig(config.user_conf, config.lg_model_name, config.scenario, USER_CONF_TYPE)
    if rc != 0:
        reason = os.strerror(-rc) if rc < 0 else f"code {rc}"
        hint = "malformed line" if rc == -errno.EINVAL else "cannot read it"
        raise UserError(f"--user-conf {config.user_conf}: LoadGen rejected it ({reason}: {hint}); "
                        "lines must read `model.scenario.key = value`")
    settings.mode = lg.TestMode.AccuracyOnly if config.accuracy else lg.TestMode.PerformanceOnly
    audit = read_conf_lines(config.audit_conf, "--audit-conf", audit=True) if os.path.isfile(config.audit_conf) else {}
    effective = effective_settings(settings, config, lines, audit)
    check_run_size(effective)
    check_accuracy_count(effective, config.total_sample_count)  # the dataset may hold fewer: run_test checks again
    return settings, effective


def effective_settings(settings: lg.TestSettings, config: RunConfig, lines: dict, audit: dict) -> EffectiveSettings:
    """The values StartTest will use: FromConfig's, with the audit.config lines LoadGen applies over them."""
    server = config.scenario == "Server"
    values = {"min_duration": settings.min_duration_ms, "min_query_count": settings.min_query_count,
              "target_qps": settings.server_target_qps if server else settings.offline_expected_qps,
              "performance_issue_unique": int(settings.performance_issue_unique),
              "accuracy_sample_count_override": settings.accuracy_sample_count_override,
              "mode": 1 if config.accuracy else 2}
    applied = applied_lines(lines, config.lg_model_name, config.scenario)
    sources = {key: f"line {line.number}" for key, line in applied.items()}
    for key, line in applied_lines(audit, ANY, config.scenario).items():  # LoadGen reads it for model * only
        if key in values:
            values[key] = line.value
            sources[key] = f"{config.audit_conf} line {line.number}"
    return EffectiveSettings(
        model=config.lg_model_name, scenario=config.scenario, accuracy=values["mode"] == 1,
        min_duration_ms=int(values["min_duration"]), min_query_count=int(values["min_query_count"]),
        target_qps=float(values["target_qps"]), issue_unique=bool(values["performance_issue_unique"]),
        accuracy_count=int(values["accuracy_sample_count_override"]),
        sources=sources, label=f"--user-conf {config.user_conf}")


def prepare_output_dir(path: str) -> str:
    """Create the LoadGen log directory if missing and check it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output-log-dir {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"--output-log-dir {path}: not writable")
    return path


def build_settings(config: RunConfig, tested: Optional[tuple] = None) -> LoadGenSettings:
    """TestSettings (`tested`, from build_test_settings_checked, else built here), LogOutputSettings(outdir,
    copy_summary_to_stdout=True), LogSettings(enable_trace)."""
    test, effective = tested if tested is not None else _test_settings(config)
    output_dir = prepare_output_dir(config.output_log_dir)
    output = lg.LogOutputSettings()
    output.outdir = output_dir
    output.copy_summary_to_stdout = True
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    log_settings.enable_trace = config.enable_log_trace
    if os.path.isfile(config.audit_conf):
        log.warning("%s exists in the working directory: LoadGen will apply it (compliance audit run)",
                    config.audit_conf)
    return LoadGenSettings(test=test, log=log_settings, output_dir=output_dir, effective=effective)
