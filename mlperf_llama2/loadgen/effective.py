"""Which user.conf lines a run reads, and whether the settings they give make a run LoadGen can finish.

Contract: LoadGen 6.0.17's `FromConfig` looks a key up as `model.scenario`, `*.scenario`, `model.*`,
`*.*` and takes the first line it finds (else its built-in mlperf.conf, else its default).
`applied_lines` is that lookup for one run's model name and scenario; `conf_warnings` names, one line
each, the lines such a run does not read although they look as if it should: a line overridden by a
more specific one, and lines for the other model name or another scenario whose keys the run then
takes from LoadGen's defaults. `check_run_size(EffectiveSettings)` refuses, in one line, effective
settings for which LoadGen would issue no query (it crashes), generate more queries than memory holds,
or run for longer than `MAX_RUN_DAYS`; `check_accuracy_count` an accuracy run whose
accuracy_sample_count_override exceeds the QSL (LoadGen would log a count it never issued). No LoadGen
import: settings.py reads the effective values from the `TestSettings` that `FromConfig` filled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

from mlperf_llama2.errors import UserError
from mlperf_llama2.loadgen.conf_file import ANY, CONF_KEYS, ConfLine

# A run expected to last longer than this is a wrong setting (a valid run lasts 10 minutes).
MAX_RUN_DAYS = 7
MAX_RUN_S = MAX_RUN_DAYS * 86400
# LoadGen generates every query of a performance run before the first is issued, about 200 bytes a
# sample (measured: +203 MiB at 10^6 Offline samples); 10^7 is ~2 GB and hundreds of times any real run.
MAX_GENERATED_SAMPLES = 10**7
OFFLINE_SLACK = 1.1  # LoadGen's Offline query holds max(min_query_count, 1.1 x min_duration x target_qps) samples
SHOWN_LINES = 3  # lines named in one warning before "and N more"


@dataclass(frozen=True)
class EffectiveSettings:
    """What LoadGen runs with: user.conf over its built-in mlperf.conf, an audit.config over both."""

    model: str  # LoadGen model name (llama2-70b | llama2-70b-interactive)
    scenario: str  # LoadGen scenario: Offline | Server
    accuracy: bool
    min_duration_ms: int
    min_query_count: int
    target_qps: float
    issue_unique: bool = False  # performance_issue_unique: Offline issues the performance sample set once
    accuracy_count: int = 0  # accuracy_sample_count_override; 0: every sample of the QSL
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> where it was set ("line 3"); else default
    label: str = "--user-conf"  # how messages name the settings' file ("--user-conf PATH")

    def show(self, key: str, value) -> str:
        return f"{key} {value} ({self.sources.get(key, 'LoadGen default')})"

    @property
    def run(self) -> str:
        return f"{self.model} {self.scenario} {'accuracy' if self.accuracy else 'performance'} run"


def lookup_order(model: str, scenario: str) -> tuple:
    """(model, scenario) pairs in the order FromConfig tries them for a key."""
    return (model, scenario), (ANY, scenario), (model, ANY), (ANY, ANY)


def keys_read(scenario: str) -> list[str]:
    """The user.conf keys a run of `scenario` reads."""
    return [key for key, spec in CONF_KEYS.items() if scenario in spec.scenarios]


def _candidates(lines: Mapping[tuple, ConfLine], model: str, scenario: str, key: str) -> list[ConfLine]:
    """The lines that set `key` for a run of (model, scenario), in FromConfig's order: the first wins."""
    return [lines[(m, s, key)] for m, s in lookup_order(model, scenario) if (m, s, key) in lines]


def applied_lines(lines: Mapping[tuple, ConfLine], model: str, scenario: str) -> dict[str, ConfLine]:
    """key -> the line FromConfig takes for a run of (model, scenario); keys no line sets are absent."""
    found = {key: _candidates(lines, model, scenario, key) for key in keys_read(scenario)}
    return {key: candidates[0] for key, candidates in found.items() if candidates}


def overridden_lines(lines: Mapping[tuple, ConfLine], model: str, scenario: str) -> list[tuple[ConfLine, ConfLine]]:
    """(line, the line that wins over it) for each line the run would read but for a more specific one."""
    out = []
    for key in keys_read(scenario):
        found = _candidates(lines, model, scenario, key)
        out += [(loser, found[0]) for loser in found[1:]]
    return sorted(out, key=lambda pair: pair[0].number)


def _named(lines: list[ConfLine]) -> str:
    shown = ", ".join(str(line) for line in lines[:SHOWN_LINES])
    return shown + (f" and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else "")


def _keys(lines: list[ConfLine]) -> str:
    return ", ".join(dict.fromkeys(line.key for line in lines))


def conf_warnings(lines: Mapping[tuple, ConfLine], model: str, scenario: str, label: str) -> list[str]:
    """One line for each override, one for lines of another model name and one for lines of another
    scenario that the run ignores while taking their keys from LoadGen's defaults."""
    order = ", ".join(f"{m}.{s}" for m, s in lookup_order(model, scenario))
    warnings = [f"{label}: {loser} is overridden by {winner} in this {model} {scenario} run (LoadGen takes the "
                f"first of {order})" for loser, winner in overridden_lines(lines, model, scenario)]
    applied = applied_lines(lines, model, scenario)
    unset = [line for line in lines.values() if line.key in keys_read(scenario) and line.key not in applied]
    other_model = [line for line in unset if line.model not in (ANY, model) and line.scenario in (ANY, scenario)]
    if other_model:
        others = ", ".join(dict.fromkeys(line.model for line in other_model))
        warnings.append(f"{label}: LoadGen ignores {_named(other_model)}: they name model {others}, this run reads "
                        f"{model} and * lines only, so {_keys(other_model)} come from LoadGen's defaults "
                        f"(write {model}.{scenario}.<key> or *.{scenario}.<key>)")
    names_scenario = any(line.scenario == scenario and line.model in (ANY, model) for line in lines.values())
    other_scenario = [line for line in unset if line.model in (ANY, model) and line.scenario not in (ANY, scenario)]
    if other_scenario and not names_scenario:
        others = ", ".join(dict.fromkeys(line.scenario for line in other_scenario))
        warnings.append(f"{label}: LoadGen ignores {_named(other_scenario)} in this {scenario} run: they name "
                        f"{others} and no line names {scenario}, so {_keys(other_scenario)} come from LoadGen's "
                        "defaults")
    return warnings


def offline_samples(s: EffectiveSettings) -> float:
    """Samples in LoadGen's one Offline performance query (before it pads to whole performance sets)."""
    by_duration = OFFLINE_SLACK * s.min_duration_ms / 1000 * s.target_qps
    return max(s.min_query_count, math.floor(by_duration) if math.isfinite(by_duration) else by_duration)


def server_queries(s: EffectiveSettings) -> float:
    """At least this many queries LoadGen generates for a Server performance run."""
    return max(s.min_query_count, s.target_qps * s.min_duration_ms / 1000)


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:,.{0 if days >= 100 else 1}f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def check_accuracy_count(s: EffectiveSettings, samples: int) -> None:
    """UserError when an accuracy run's accuracy_sample_count_override exceeds the `samples` the QSL holds at
    most: LoadGen then issues each sample once but logs the override as the run's accuracy sample count."""
    if s.accuracy and s.accuracy_count > samples:
        raise UserError(f"{s.label}: {s.show('accuracy_sample_count_override', s.accuracy_count)} exceeds the "
                        f"{samples} samples of this {s.run}: LoadGen would answer {samples} yet log "
                        f"{s.accuracy_count} as the samples it covered; remove the line (every sample is the default)")


def check_run_size(s: EffectiveSettings, samples: Optional[int] = None) -> None:
    """UserError when LoadGen would issue no query, generate more than MAX_GENERATED_SAMPLES or run longer
    than MAX_RUN_DAYS. `samples` (the dataset's count) enables the Server accuracy check."""
    label = s.label
    duration, qps = s.show("min_duration", f"{s.min_duration_ms} ms"), s.show("target_qps", f"{s.target_qps:g}")
    count = s.show("min_query_count", s.min_query_count)
    if s.target_qps <= 0:
        raise UserError(f"{label}: {qps} in this {s.run}: it must be > 0")
    if s.accuracy:
        if samples is not None:
            check_accuracy_count(s, samples)
        if s.scenario == "Server" and samples is not None and samples / s.target_qps > MAX_RUN_S:
            raise UserError(f"{label}: this {s.run} would last {_days(samples / s.target_qps)} ({samples} samples at "
                            f"{qps}), beyond the {MAX_RUN_DAYS}-day bound; raise target_qps")
        return
    if s.scenario == "Offline":
        if s.issue_unique:
            return  # one pass over the performance sample set
        n = offline_samples(s)
        if n == 0:
            raise UserError(f"{label}: LoadGen would issue no sample in this {s.run} ({count}, {duration}, {qps}: "
                            "max(min_query_count, 1.1 x min_duration x target_qps) is 0) and crash; "
                            "set min_query_count >= 1")
        if n > MAX_GENERATED_SAMPLES:
            raise UserError(f"{label}: this {s.run} would put {n:.3g} samples in LoadGen's query "
                            f"(max({count}, 1.1 x {duration} x {qps})), beyond the bound of "
                            f"{MAX_GENERATED_SAMPLES:,} that memory holds; lower target_qps or min_duration")
        return
    if s.min_duration_ms == 0 and s.min_query_count == 0:
        raise UserError(f"{label}: LoadGen would issue no query in this {s.run} ({duration}, {count}) and crash; "
                        "set min_query_count >= 1")
    seconds = max(s.min_duration_ms / 1000, s.min_query_count / s.target_qps)
    if seconds > MAX_RUN_S:
        raise UserError(f"{label}: this {s.run} would last at least {_days(seconds)} (max({duration}, {count} / "
                        f"{qps})), beyond the {MAX_RUN_DAYS}-day bound; raise target_qps or lower min_duration or "
                        "min_query_count")
    if server_queries(s) > MAX_GENERATED_SAMPLES:
        raise UserError(f"{label}: this {s.run} would generate {server_queries(s):.3g} queries up front "
                        f"(max({count}, {qps} x {duration})), beyond the bound of {MAX_GENERATED_SAMPLES:,} that "
                        "memory holds; lower target_qps or min_duration")
