"""The run-level rules of an MLPerf llama2-70b result, on one run's LoadGen detail values and its RunInfo.

Pure functions, no files: `performance_rules` and `accuracy_rules` return `Findings` (errors stop
packaging, warnings are printed). Each rule is an error where MLCommons' submission checker errors
(in both divisions unless it says closed only), a warning where it warns; the rules it lacks but a
reviewer applies (user.conf loosening the limits, output caps, Interactive's own latency limits) are
errors in the closed division and warnings in the open one. `submittable` puts them in one line for
the end-of-run summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from mlperf_llama2 import constants
from mlperf_llama2.report.numbers import fmt_vs_limits
from mlperf_llama2.report.run_info import RunInfo
from mlperf_llama2.submission import rounds
from mlperf_llama2.submission.rounds import Round


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def rule(self, ok: bool, message: str, strict: bool = True) -> None:
        """Record `message` unless `ok`: as an error when `strict`, else as a warning."""
        if not ok:
            (self.errors if strict else self.warnings).append(message)

    def extend(self, other: "Findings", label: str = "") -> None:
        prefix = f"{label}: " if label else ""
        self.errors += [prefix + m for m in other.errors]
        self.warnings += [prefix + m for m in other.warnings]
        self.facts.update(other.facts)


def loadgen_scenario(scenario: str) -> str:
    """Interactive is LoadGen's Server scenario under the llama2-70b-interactive limits."""
    return "Server" if scenario == "Interactive" else scenario


def _num(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)


def accuracy_samples_issued(detail: dict) -> Optional[float]:
    """How many samples an accuracy run issued: every sample of its QSL unless accuracy_sample_count_override is
    smaller. LoadGen logs the override as effective_accuracy_sample_count even when it exceeds the QSL (then it
    issues the QSL's samples only), so the override alone cannot be taken for the count."""
    override = _num(detail.get("effective_accuracy_sample_count"))
    total = _num(detail.get("qsl_reported_total_count"))
    if override and total is not None:
        return min(override, total)
    return override or total


def mode_and_scenario(detail: dict, info: RunInfo, mode: str, scenario: str) -> Findings:
    out = Findings()
    got_mode = detail.get("effective_test_mode")
    out.rule(got_mode == mode, f"test mode {got_mode}, expected {mode}")
    got, want = detail.get("effective_scenario"), loadgen_scenario(scenario)
    out.rule(got == want, f"LoadGen scenario {got}, expected {want}")
    if scenario in ("Server", "Interactive") and got == "Server":
        if not info.recorded:
            out.warnings.append("no run_info.json, so Server and Interactive limits cannot be told apart")
        else:
            interactive = info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE
            out.rule(interactive == (scenario == "Interactive"),
                     f"run under --lg-model-name {info.lg_model_name}, which is not the {scenario} scenario")
    return out


def seeds(detail: dict, rnd: Round) -> Findings:
    """LoadGen's RNG seeds must be the round's; one line says which LoadGen wrote them."""
    out = Findings()
    found = {k: detail.get(f"effective_{k}") for k in rounds.LOADGEN_SEED_KEYS}
    if found == rnd.seeds:
        return out
    wrong = ", ".join(k for k in rounds.LOADGEN_SEED_KEYS if found[k] != rnd.seeds[k])
    other = rounds.round_of_seeds(found)
    version = detail.get("loadgen_version") or "?"
    use = f"LoadGen {rnd.loadgen}" if rnd.loadgen else f"the LoadGen release of round {rnd.name}"
    out.errors.append(f"{wrong} wrong for {rnd.name}: LoadGen {version} wrote "
                      + (f"{other.name}'s seeds" if other else "unknown seeds")
                      + f"; rerun with {use}" + (f" or package with --round {other.name}" if other else ""))
    return out


def output_cap(info: RunInfo, closed: bool) -> Findings:
    out = Findings()
    cap = info.max_new_tokens
    out.rule(cap is None or int(cap) >= constants.MAX_NEW_TOKENS,
             f"outputs capped at --max-new-tokens {cap} (< {constants.MAX_NEW_TOKENS})", closed)
    return out


def latency_limits(detail: dict, scenario: str, closed: bool) -> Findings:
    """p99 TTFT/TPOT under the fixed limits, early stopping met, and user.conf not loosening them."""
    out = Findings()
    ttft_limit, tpot_limit = rounds.LATENCY_LIMITS_NS[scenario]
    # The checker holds every Server-logged run (Interactive too) to the Server limits, in both divisions;
    # Interactive's own, tighter limits are ours (closed: error).
    checker_ttft, checker_tpot = rounds.LATENCY_LIMITS_NS["Server"]
    out.rule(bool(detail.get("early_stopping_met")), f"early stopping not met: {detail.get('early_stopping_result')}")
    ttft = _num(detail.get("result_first_token_99.00_percentile_latency_ns"))
    tpot = _num(detail.get("result_time_per_output_token_99.00_percentile_ns"))
    if ttft is None or tpot is None:
        out.errors.append("no p99 TTFT/TPOT in the detail log")
        return out
    def p99(limit_ttft: float, limit_tpot: float) -> str:  # never rounded onto the limit it is over
        return (f"p99 TTFT {fmt_vs_limits(ttft / 1e6, [limit_ttft / 1e6], 0)} ms / TPOT "
                f"{fmt_vs_limits(tpot / 1e6, [limit_tpot / 1e6])} ms")

    out.rule(ttft < checker_ttft and tpot < checker_tpot,
             f"{p99(checker_ttft, checker_tpot)} over the Server limits "
             f"{checker_ttft / 1e6:.0f} / {checker_tpot / 1e6:.0f} ms")
    if scenario == "Interactive":
        out.rule(ttft < ttft_limit and tpot < tpot_limit,
                 f"{p99(ttft_limit, tpot_limit)} over the Interactive limits "
                 f"{ttft_limit / 1e6:.0f} / {tpot_limit / 1e6:.0f} ms", closed)
    asked_ttft = _num(detail.get("requested_server_ttft_latency"))
    asked_tpot = _num(detail.get("requested_server_tpot_latency"))
    out.rule(asked_ttft is None or asked_ttft <= ttft_limit,
             f"user.conf loosened ttft_latency to {(asked_ttft or 0) / 1e6:.0f} ms "
             f"(limit {ttft_limit / 1e6:.0f} ms)", closed)
    out.rule(asked_tpot is None or asked_tpot <= tpot_limit,
             f"user.conf loosened tpot_latency to {(asked_tpot or 0) / 1e6:.0f} ms "
             f"(limit {tpot_limit / 1e6:.0f} ms)", closed)
    # Exactly the rule's: LoadGen takes any value (a user.conf 150 logs 1.5) and judges the run by it.
    percentile = _num(detail.get("effective_target_latency_percentile"))
    out.rule(percentile is not None and abs(percentile - rounds.TARGET_LATENCY_PERCENTILE) < 1e-9,
             "no target_latency_percentile in the detail log" if percentile is None else
             f"user.conf set target_latency_percentile {percentile * 100:g} (rule: "
             f"{rounds.TARGET_LATENCY_PERCENTILE * 100:g})", closed)
    return out


def performance_rules(detail: dict, loadgen_errors: list, info: RunInfo, rnd: Round, scenario: str,
                      closed: bool) -> Findings:
    """Everything a performance run of `scenario` must satisfy in round `rnd`."""
    out = mode_and_scenario(detail, info, "PerformanceOnly", scenario)
    verdict = detail.get("result_validity")
    reason = str(detail.get("result_invalid_reason") or "").strip()
    out.rule(verdict == "VALID", f"LoadGen result {verdict}" + (f" ({reason})" if reason else ""))
    out.rule(not loadgen_errors, f"LoadGen logged {len(loadgen_errors)} error(s), first: "
             f"{loadgen_errors[0] if loadgen_errors else ''}")
    out.extend(seeds(detail, rnd))
    # LoadGen logs mlperf.conf's performance_sample_count 24576 whatever the QSL holds: only
    # qsl_reported_total_count shows a QSL cut by --total-sample-count or a smaller dataset file.
    qsl_total = _num(detail.get("qsl_reported_total_count"))
    out.rule(qsl_total == rounds.DATASET_SIZE,
             f"QSL of {_int(qsl_total)} samples, not the dataset's {rounds.DATASET_SIZE} "
             f"(--total-sample-count or a smaller dataset file)")
    count = _num(detail.get("effective_performance_sample_count"))
    out.rule(count is not None and count >= rounds.PERFORMANCE_SAMPLE_COUNT,
             f"performance_sample_count {_int(count)} < {rounds.PERFORMANCE_SAMPLE_COUNT}")
    override = _num(detail.get("requested_performance_sample_count_override"))
    out.rule(override in (None, 0, rounds.PERFORMANCE_SAMPLE_COUNT),
             f"user.conf set performance_sample_count_override {_int(override)}", closed)
    # The checker's llm_check, every scenario: without token latencies Offline logs no tokens per second.
    out.rule(bool(detail.get("requested_use_token_latencies")), "use_token_latencies is off (LLM runs need it)")
    # Compliance-test issue modes: the run measures one sample repeated, or each sample once, not the benchmark.
    for mode in ("performance_issue_same", "performance_issue_unique"):
        out.rule(not detail.get(f"effective_{mode}"), f"user.conf set {mode} = 1 (a compliance-test setting, "
                                                      f"not a benchmark run)", closed)
    min_ms = _num(detail.get("effective_min_duration_ms"))
    out.rule(min_ms is not None and min_ms >= rounds.MIN_DURATION_MS,
             f"min_duration {_int(min_ms)} ms < {rounds.MIN_DURATION_MS} ms")
    if scenario == "Offline":
        per_query = _num(detail.get("effective_samples_per_query"))
        out.rule(per_query is not None and per_query >= rounds.OFFLINE_MIN_SAMPLES_PER_QUERY,
                 f"{_int(per_query)} samples per query < {rounds.OFFLINE_MIN_SAMPLES_PER_QUERY}", closed)
    else:
        out.extend(latency_limits(detail, scenario, closed))
    out.extend(output_cap(info, closed))
    return out


def rouge_rules(rouge: dict, benchmark: str, closed: bool) -> Findings:
    """ROUGE-1/2/L at the benchmark's fraction of the reference; tokens per sample within 90-110%."""
    out = Findings()
    fraction = rounds.TARGET_FRACTION[benchmark]
    low = [m for m, ref in constants.ROUGE_REFERENCE.items() if float(rouge.get(m, 0.0)) < fraction * ref]
    out.rule(not low, f"{'/'.join(low)} {'/'.join(str(rouge.get(m)) for m in low)} below the {benchmark} target "
             f"({fraction * 100:g}% of {'/'.join(str(constants.ROUGE_REFERENCE[m]) for m in low)})", closed)
    lo, hi = (f * constants.TOKENS_PER_SAMPLE_REFERENCE for f in constants.TOKENS_PER_SAMPLE_TOLERANCE)
    tps = _num(rouge.get("tokens_per_sample"))
    out.rule(tps is not None and lo <= tps <= hi,
             f"tokens per sample {tps} outside 90-110% of {constants.TOKENS_PER_SAMPLE_REFERENCE}", closed)
    return out


def accuracy_rules(detail: dict, loadgen_errors: list, info: RunInfo, scenario: str, closed: bool,
                   rouge: Optional[dict], benchmark: str) -> Findings:
    """Everything an accuracy run must satisfy; `rouge` None when it is not scored yet."""
    out = mode_and_scenario(detail, info, "AccuracyOnly", scenario)
    out.rule(not loadgen_errors, f"LoadGen logged {len(loadgen_errors)} error(s)")
    total = accuracy_samples_issued(detail)
    out.rule(total == rounds.DATASET_SIZE,
             f"covers {_int(total)} samples, the dataset has {rounds.DATASET_SIZE}")
    out.extend(output_cap(info, closed))
    if rouge is not None:
        out.extend(rouge_rules(rouge, benchmark, closed))
    return out


def submittable(detail: dict, loadgen_errors: list, info: RunInfo, rouge: Optional[dict]) -> str:
    """'submittable for v6.1 closed: yes' or ': no (first reasons)' for one run, by its own rules."""
    rnd = rounds.ROUNDS[rounds.DEFAULT_ROUND]
    scenario = "Interactive" if (detail.get("effective_scenario") == "Server"
                                 and info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE) \
        else str(detail.get("effective_scenario"))
    if detail.get("effective_test_mode") == "AccuracyOnly":
        found = accuracy_rules(detail, loadgen_errors, info, scenario, True, rouge, rnd.default_benchmark)
    else:
        found = performance_rules(detail, loadgen_errors, info, rnd, scenario, True)
    head = f"submittable for {rnd.name} closed"
    if not found.errors:
        return f"{head}: yes" + ("" if rouge is not None or detail.get("effective_test_mode") != "AccuracyOnly"
                                 else " (once its ROUGE meets the target)")
    more = f"; +{len(found.errors) - 3} more" if len(found.errors) > 3 else ""
    return f"{head}: no ({'; '.join(found.errors[:3])}{more})"
