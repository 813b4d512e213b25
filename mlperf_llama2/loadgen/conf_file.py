"""user.conf and audit.config checked line by line before LoadGen (and the model) start.

Contract: `validate_conf_file(path, flag, ...)` returns the file's settings as
`{(model, scenario, key): value}` or raises `UserError` naming the file, the line number and what is
wrong; `read_conf_lines` returns the same settings as `ConfLine`s (line number and text kept), for
the checks of which lines a run reads (`effective.py`). LoadGen's own parser
(`TestSettings::FromConfig`, LoadGen 6.0.17) keeps any `key = number` line and then looks up only the
keys below, so a typo, an unknown scenario or a key given for a scenario that never reads it is
silently ignored there; here each is an error. `CONF_KEYS` is the one list of the keys LoadGen reads
from a user.conf or audit.config, with the scenarios that read them and the kind of number each takes.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from mlperf_llama2 import constants
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

LOADGEN_SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
ANY = "*"
ALL_SCENARIOS = frozenset(LOADGEN_SCENARIOS)


@dataclass(frozen=True)
class ConfKey:
    """A key FromConfig looks up: the scenarios that read it and the number it takes."""

    scenarios: frozenset = ALL_SCENARIOS
    kind: str = "int"  # int: whole number >= 0 | float | bool: 0 or 1


_SERVER = frozenset({"Server"})
# TestSettings::FromConfig of LoadGen 6.0.17 with conf_type 1 (user.conf) or 2 (audit.config).
CONF_KEYS = {
    "mode": ConfKey(),
    "use_token_latencies": ConfKey(kind="bool"),
    "infer_token_latencies": ConfKey(kind="bool"),
    "token_latency_scaling_factor": ConfKey(),
    "performance_issue_unique": ConfKey(kind="bool"),
    "performance_issue_same": ConfKey(kind="bool"),
    "performance_issue_same_index": ConfKey(),
    "sample_concatenate_permutation": ConfKey(kind="bool"),
    "min_duration": ConfKey(),
    "max_duration": ConfKey(),
    "min_query_count": ConfKey(),
    "max_query_count": ConfKey(),
    "performance_sample_count_override": ConfKey(),
    "accuracy_sample_count_override": ConfKey(),
    "print_timestamps": ConfKey(kind="bool"),
    "accuracy_log_rng_seed": ConfKey(),
    "accuracy_log_sampling_target": ConfKey(),
    "target_latency_percentile": ConfKey(frozenset({"SingleStream", "MultiStream", "Server"}), "float"),
    "target_latency": ConfKey(frozenset({"SingleStream", "MultiStream", "Server"}), "float"),  # Server: int
    "samples_per_query": ConfKey(frozenset({"MultiStream"})),
    "ttft_latency": ConfKey(_SERVER),
    "tpot_latency": ConfKey(_SERVER),
    "coalesce_queries": ConfKey(_SERVER, "bool"),
    "max_async_queries": ConfKey(_SERVER),
    "target_qps": ConfKey(frozenset({"Server", "Offline"}), "float"),
}
# Read only from LoadGen's built-in mlperf.conf (conf_type 0): ignored in a user.conf or audit.config.
MLPERF_CONF_ONLY_KEYS = frozenset({
    "qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_probability",
    "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed",
})
# user.conf values LoadGen takes that change what a llama2-70b run measures, whatever the rest of the file says:
# mlperf.conf fixes them (a compliance audit.config may set them; TEST06's sets sample_concatenate_permutation 0).
NOT_COMPARABLE = {
    ("use_token_latencies", 0): "the run would record no TTFT/TPOT and no tokens per second (LoadGen may still "
                                "print VALID; the submission checker refuses it)",
    ("infer_token_latencies", 1): "LoadGen would report tokens per second inferred as samples/s x "
                                  "token_latency_scaling_factor, not the tokens the SUT returned",
    ("sample_concatenate_permutation", 0): "llama2-70b runs issue samples in equal-issue mode (mlperf.conf's 1); "
                                           "without it the sample mix, and so the result, is not comparable",
}
AUDIT_MODES = frozenset({0, 1, 2, 3})  # SubmissionRun, AccuracyOnly, PerformanceOnly, FindPeakPerformance

UINT64_MAX = 2**64 - 1
_INT = re.compile(r"[+]?(0[xX][0-9a-fA-F]+|[1-9][0-9]*|0)")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class _LineError(Exception):
    """What is wrong with one line; `validate_conf_file` adds the file and line number."""


def _parse_value(text: str, key: str, spec: ConfKey):
    """The number LoadGen would read for `key`, or _LineError when it would misread or reject it."""
    if re.fullmatch(r"[+]?0[0-7]+", text):
        raise _LineError(f"{key} = {text}: LoadGen reads a leading 0 as octal; write the number without it")
    if spec.kind == "float":
        if not _FLOAT.fullmatch(text) and not _INT.fullmatch(text):
            raise _LineError(f"{key} = {text}: a number is expected")
        try:
            value = float(int(text, 0)) if _INT.fullmatch(text) else float(text)
        except OverflowError:
            value = math.inf
        if value < 0:
            raise _LineError(f"{key} = {text}: must not be negative")
        if not math.isfinite(value):
            raise _LineError(f"{key} = {text}: too large for a number LoadGen reads")
        return value
    if not _INT.fullmatch(text):
        what = "0 or 1" if spec.kind == "bool" else "a whole number >= 0"
        raise _LineError(f"{key} = {text}: {what} is expected")
    value = int(text, 0)
    if value > UINT64_MAX:
        raise _LineError(f"{key} = {text}: too large (LoadGen reads a 64-bit count)")
    if spec.kind == "bool" and value not in (0, 1):
        raise _LineError(f"{key} = {text}: 0 or 1 is expected")
    return value


def parse_line(line: str, *, audit: bool, lg_model_names=constants.LG_MODEL_NAMES) -> Optional[tuple]:
    """One line -> None (blank or comment) or (model, scenario, key, value); _LineError when wrong."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    words = text.split()
    if "=" not in words:
        if "=" in text:
            raise _LineError(f"'{text}': LoadGen needs spaces around '=' (`model.scenario.key = value`) "
                             "and silently ignores this line")
        raise _LineError(f"'{text}': expected `model.scenario.key = value`")
    if words.index("=") != 1 or len(words) < 3:
        raise _LineError(f"'{text}': expected `model.scenario.key = value`")
    if len(words) > 3:
        if words[3].startswith("#"):
            raise _LineError(f"'{text}': LoadGen rejects a comment after the value; put it on its own line")
        raise _LineError(f"'{text}': one value per line")
    name, _, value_text = words
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        raise _LineError(f"'{name}': expected model.scenario.key (three parts separated by dots)")
    model, scenario, key = parts
    if scenario == "Interactive":
        raise _LineError(f"'{name}': LoadGen has no Interactive scenario; write "
                         f"{constants.LG_MODEL_NAME_INTERACTIVE}.Server.{key} (Interactive is that model's Server)")
    if scenario != ANY and scenario not in LOADGEN_SCENARIOS:
        raise _LineError(f"'{name}': unknown scenario '{scenario}' (LoadGen knows "
                         f"{', '.join(LOADGEN_SCENARIOS)} and *)")
    if audit and model != ANY:
        raise _LineError(f"'{name}': LoadGen reads an audit config for model '*' only and ignores this line; "
                         f"write *.{scenario}.{key}")
    if model != ANY and model not in lg_model_names:
        raise _LineError(f"'{name}': unknown model '{model}' (use * or {', '.join(lg_model_names)})")
    if key in MLPERF_CONF_ONLY_KEYS:
        raise _LineError(f"'{name}': LoadGen reads {key} only from its built-in mlperf.conf and ignores it here")
    spec = CONF_KEYS.get(key)
    if spec is None:
        raise _LineError(f"'{name}': LoadGen has no setting '{key}' (a typo?) and would ignore this line")
    if scenario != ANY and scenario not in spec.scenarios:
        raise _LineError(f"'{name}': {key} applies to {', '.join(sorted(spec.scenarios))} only; "
                         f"LoadGen ignores it for {scenario}")
    if key == "target_latency" and scenario in ("Server", ANY):
        # LoadGen reads Server's target_latency as a whole number of ms (2.5 -> 2), a * line's too
        spec = ConfKey(spec.scenarios, "int")
    value = _parse_value(value_text, key, spec)
    if key == "mode" and value not in AUDIT_MODES:
        raise _LineError(f"{key} = {value_text}: LoadGen knows modes 0-3")
    if key == "mode" and not audit:
        raise _LineError(f"'{name}': main.py sets the test mode (--accuracy); remove this line")
    if not audit and (key, value) in NOT_COMPARABLE:
        raise _LineError(f"{key} = {value_text}: {NOT_COMPARABLE[key, value]}; remove the line (mlperf.conf's "
                         "value applies)")
    if key == "target_qps" and value == 0:
        raise _LineError(f"{key} = {value_text}: must be > 0 (LoadGen's Server schedule at 0 queries/s never "
                         "ends; Offline sizes its query from it)")
    if key == "target_latency_percentile" and not 0 < value <= 100:
        raise _LineError(f"{key} = {value_text}: a percentile in (0, 100] is expected (99 means p99)")
    return model, scenario, key, value


@dataclass(frozen=True)
class ConfLine:
    """One setting of a conf file: where it is, what it names and the value LoadGen reads."""

    number: int
    model: str
    scenario: str
    key: str
    value: float
    text: str  # the line as written, stripped

    def __str__(self) -> str:
        return f"line {self.number} '{self.text}'"


def read_conf_lines(path: str, flag: str, *, audit: bool = False) -> dict:
    """Every line of a user.conf (audit=False) or audit.config (audit=True) as `{(model, scenario, key):
    ConfLine}`; UserError on the first bad one."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path}: not a text file") from None
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if lines and lines[0].startswith("\ufeff"):  # LoadGen reads the mark as part of the first line's name
        raise UserError(f"{flag} {path}: line 1: starts with a UTF-8 byte-order mark, which LoadGen reads as part of "
                        "the setting's name and so ignores the line; save the file without it")
    settings: dict = {}
    for number, line in enumerate(lines, start=1):
        try:
            parsed = parse_line(line, audit=audit)
        except _LineError as exc:
            raise UserError(f"{flag} {path}: line {number}: {exc}") from None
        if parsed is None:
            continue
        *where, value = parsed
        where = tuple(where)
        if where in settings:
            raise UserError(f"{flag} {path}: line {number}: '{'.'.join(where)}' is already set on line "
                            f"{settings[where].number}; keep one")
        settings[where] = ConfLine(number, *where, value, line.strip())
    log.debug("%s %s: %d setting(s) checked", flag, path, len(settings))
    return settings


def validate_conf_file(path: str, flag: str, *, audit: bool = False) -> dict:
    """Every line of a user.conf (audit=False) or audit.config (audit=True) as `{(model, scenario, key):
    value}`; UserError on the first bad one."""
    return {where: line.value for where, line in read_conf_lines(path, flag, audit=audit).items()}


def check_conf_path(user_conf: str) -> None:
    """UserError unless `user_conf` is a regular file: LoadGen reads nothing from a directory, and a pipe
    (`<(...)`, /dev/stdin) would be used up by the checks before LoadGen reads it."""
    if os.path.isdir(user_conf):
        raise UserError(f"--user-conf {user_conf}: is a directory; pass the user.conf file inside it")
    if os.path.exists(user_conf) and not os.path.isfile(user_conf):
        raise UserError(f"--user-conf {user_conf}: not a regular file (a pipe or device is read once, and LoadGen "
                        "reads the file after these checks); write the settings to a file and pass its path")
    if not os.path.isfile(user_conf):
        raise UserError(f"--user-conf {user_conf}: file not found (copy the repo's user.conf or pass a path)")


def check_conf_files(user_conf: str, audit_conf: str) -> None:
    """main.py's pre-flight: user.conf must exist and be valid; audit.config is checked when it exists."""
    check_conf_path(user_conf)
    validate_conf_file(user_conf, "--user-conf")
    if os.path.isfile(audit_conf):
        validate_conf_file(audit_conf, "--audit-conf", audit=True)
