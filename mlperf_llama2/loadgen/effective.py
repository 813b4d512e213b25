"""Which user.conf lines a run reads.

Contract: LoadGen 6.0.17's `FromConfig` looks a key up as `model.scenario`, `*.scenario`, `model.*`,
`*.*` and takes the first line it finds (else its built-in mlperf.conf, else its default).
`applied_lines` is that lookup for one run's model name and scenario; `conf_warnings` names, one line
each, the lines such a run does not read although they look as if it should: a line overridden by a
more specific one, and lines for the other model name or another scenario whose keys the run then
takes from LoadGen's defaults. No LoadGen import.
"""

from __future__ import annotations

from typing import Mapping

from mlperf_llama2.loadgen.conf_file import ANY, CONF_KEYS, ConfLine

SHOWN_LINES = 3  # lines named in one warning before "and N more"


def lookup_order(model: str, scenario: str) -> tuple:
    """(model, scenario) pairs in the order FromConfig tries them for a key."""
    return (model, scenario), (ANY, scenario), (model, ANY), (ANY, ANY)


def keys_read(scenario: str) -> list[str]:
    """The user.conf keys a run of `scenario` reads."""
    return [key for key, spec in CONF_KEYS.items() if scenario in spec.scenarios]


def applied_lines(lines: Mapping[tuple, ConfLine], model: str, scenario: str) -> dict[str, ConfLine]:
    """key -> the line FromConfig takes for a run of (model, scenario); keys no line sets are absent."""
    out = {}
    for key in keys_read(scenario):
        found = [lines[(m, s, key)] for m, s in lookup_order(model, scenario) if (m, s, key) in lines]
        if found:
            out[key] = found[0]
    return out


def overridden_lines(lines: Mapping[tuple, ConfLine], model: str, scenario: str) -> list[tuple[ConfLine, ConfLine]]:
    """(line, the line that wins over it) for each line the run would read but for a more specific one."""
    out = []
    for key in keys_read(scenario):
        found = [lines[(m, s, key)] for m, s in lookup_order(model, scenario) if (m, s, key) in lines]
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
