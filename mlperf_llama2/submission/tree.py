"""The tree-level check of a submission root: what no single result shows. Benchmarks and scenarios the
round knows, the closed division's scenario set (Offline plus one of Server or Interactive), every
system described with its required fields, `src/` present, each result's files complete (accuracy log
truncated with its hash in accuracy.txt, TEST06 in closed), its LoadGen seeds the round's and its TEST06
report what the checks give on the audit's log, and every scenario of one SYSTEM/BENCHMARK run on the same
model, precision and dataset (by the performance runs' run_info.json the packager keeps in performance/).

`check_tree` returns Findings; a closed result still missing a scenario is `incomplete` (a warning while
results are being added one by one, an error under `--check`).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from mlperf_llama2.input_identity import InputIdentity, read_identity
from mlperf_llama2.report.run_info import RunInfo, read_run_info
from mlperf_llama2.report.summary import parse_detail
from mlperf_llama2.submission.checks import SAME_MODEL_FIELDS, check_same_system, read_test06_report, reverify_test06
from mlperf_llama2.submission.layout import (ACCURACY_LOG, ACCURACY_RESULT, DIVISIONS, MEASUREMENTS,
                                             PERFORMANCE_RUN_INFO, README, TEST06_RESULT, USER_CONF)
from mlperf_llama2.submission.rounds import MIN_DURATION_MS, STATUSES, SYSTEM_TYPES, Round
from mlperf_llama2.submission.rules import Findings, seeds
from mlperf_llama2.submission.sysinfo import empty_required

MAX_ACCURACY_LOG_BYTES = 10 * 1024  # the checker's limit on a (truncated) accuracy log


def _dirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) if os.path.isdir(path) else []


def check_system(path: str, division: str, submitter: str) -> Findings:
    out = Findings()
    try:
        with open(path, encoding="utf-8") as f:
            system = json.load(f)
    except (OSError, ValueError) as e:
        out.errors.append(f"{path}: not a readable system description ({e.__class__.__name__})")
        return out
    empty = empty_required(system)
    out.rule(not empty, f"{path}: fill in {', '.join(empty)} (--system-field KEY=VALUE)")
    out.rule(str(system.get("status", "")).lower() in STATUSES,
             f"{path}: status {system.get('status')!r}, expected one of {', '.join(STATUSES)} (--status)")
    out.rule(system.get("system_type") in SYSTEM_TYPES, f"{path}: system_type {system.get('system_type')!r}, "
                                                        f"expected {' or '.join(SYSTEM_TYPES)}")
    out.rule(str(system.get("division", "")).lower() == division, f"{path}: division {system.get('division')!r} "
                                                                  f"in the {division} tree")
    out.rule(str(system.get("submitter", "")).lower() == submitter.lower(),
             f"{path}: submitter {system.get('submitter')!r} under {submitter}/")
    return out


# One scenario's performance run: (scenario, its RunInfo, its input identity or None).
ScenarioRun = tuple[str, RunInfo, Optional[InputIdentity]]


def recorded_run(bench_dir: str, scenario: str) -> ScenarioRun:
    """The performance run of `bench_dir`/`scenario` as the copy of its run_info.json in performance/ records it;
    RunInfo(recorded=False) for a result packaged before the packager kept it."""
    run = os.path.dirname(os.path.join(bench_dir, scenario, PERFORMANCE_RUN_INFO))
    return scenario, read_run_info(run), read_identity(run)


def check_same_model(bench_dir: str, runs: list[ScenarioRun]) -> Findings:
    """Every scenario of one SYSTEM/BENCHMARK ran the same model (input_identity's hashes, or the path for
    older runs), precision, backend and quantization (SAME_SYSTEM_FIELDS, the quantization files by content)
    and the same dataset by content, as the first of `runs`. Runtime settings (batch size, user.conf, target
    QPS, LoadGen model name) are not compared. An error in both divisions; a run recorded without
    input_identity, or without run_info.json, is a warning (cannot be confirmed)."""
    out = Findings()
    if len(runs) < 2:
        return out
    for scenario, _, _ in (run for run in runs if not run[1].recorded):
        out.warnings.append(f"{os.path.join(bench_dir, scenario)}: no run_info.json of its performance run (an older "
                            f"harness, or a result packaged before the packager kept {PERFORMANCE_RUN_INFO}): cannot "
                            f"confirm it used the same model, precision and dataset as the other scenarios'")
    recorded = [run for run in runs if run[1].recorded]
    for scenario, info, inputs in recorded[1:]:
        base, base_info, base_inputs = recorded[0]
        out.extend(check_same_system(base_info, info, f"{scenario} performance run", base_inputs, inputs,
                                     first=f"{base} performance run", fields=SAME_MODEL_FIELDS), bench_dir)
    return out


def check_result(scenario_dir: str, closed: bool, rnd: Round) -> Findings:
    out = Findings()
    need = [MEASUREMENTS, USER_CONF, README, "performance/run_1/mlperf_log_detail.txt",
            "performance/run_1/mlperf_log_summary.txt", "accuracy/mlperf_log_detail.txt",
            f"accuracy/{ACCURACY_RESULT}", f"accuracy/{ACCURACY_LOG}"] + ([f"TEST06/{TEST06_RESULT}"] if closed else [])
    missing = [n for n in need if not os.path.isfile(os.path.join(scenario_dir, n))]
    out.rule(not missing, f"{scenario_dir}: missing {', '.join(missing)}")
    test06_dir = os.path.join(scenario_dir, "TEST06")
    if os.path.isfile(os.path.join(test06_dir, TEST06_RESULT)):  # its report is what its log gives
        out.extend(reverify_test06(test06_dir, os.path.basename(scenario_dir), read_test06_report(test06_dir)))
    acc_log = os.path.join(scenario_dir, "accuracy", ACCURACY_LOG)
    if os.path.isfile(acc_log):
        out.rule(os.path.getsize(acc_log) <= MAX_ACCURACY_LOG_BYTES, f"{acc_log}: not truncated")
    acc_txt = os.path.join(scenario_dir, "accuracy", ACCURACY_RESULT)
    if os.path.isfile(acc_txt):
        with open(acc_txt, encoding="utf-8", errors="replace") as f:
            out.rule(any(line.startswith("hash=") for line in f), f"{acc_txt}: no hash= line")
    detail_path = os.path.join(scenario_dir, "performance", "run_1", "mlperf_log_detail.txt")
    if os.path.isfile(detail_path):
        detail, _ = parse_detail(detail_path)
        out.extend(seeds(detail, rnd), detail_path)
        min_ms = detail.get("effective_min_duration_ms")
        out.rule(min_ms is not None and float(min_ms) >= MIN_DURATION_MS,
                 f"{detail_path}: min_duration {min_ms} ms < {MIN_DURATION_MS} ms")
    return out


def check_tree(root: str, rnd: Round) -> tuple[Findings, list[str]]:
    """(findings, incomplete): every problem of the tree under `root`, and the closed results that
    still miss a scenario the round requires."""
    out, incomplete = Findings(), []
    if os.path.exists(root) and not os.path.isdir(root):
        out.errors.append(f"--root {root} is a file, not a directory")
        return out, incomplete
    if not os.path.isdir(root):
        out.errors.append(f"--root {root}: no such directory (a typo? nothing to check)")
        return out, incomplete
    results = 0
    for division in (d for d in _dirs(root) if d in DIVISIONS):
        closed = division == "closed"
        for submitter in _dirs(os.path.join(root, division)):
            base = os.path.join(root, division, submitter)
            src = os.path.join(base, "src")
            out.rule(bool(_dirs(src)), f"{src}: missing or empty (the harness source)")
            for system in _dirs(os.path.join(base, "results")):
                system_json = os.path.join(base, "systems", f"{system}.json")
                if os.path.isfile(system_json):
                    out.extend(check_system(system_json, division, submitter))
                else:
                    out.errors.append(f"{system_json}: missing (results/{system}/ needs its description)")
                for benchmark in _dirs(os.path.join(base, "results", system)):
                    bench_dir = os.path.join(base, "results", system, benchmark)
                    if benchmark not in rnd.benchmarks:
                        out.errors.append(f"{bench_dir}: {benchmark} is not a {rnd.name} benchmark "
                                          f"({', '.join(rnd.benchmarks)})")
                        continue
                    scenarios = _dirs(bench_dir)
                    unknown = [s for s in scenarios if s not in rnd.scenarios]
                    out.rule(not unknown, f"{bench_dir}: unknown scenario(s) {', '.join(unknown)}")
                    for scenario in (s for s in scenarios if s in rnd.scenarios):
                        out.extend(check_result(os.path.join(bench_dir, scenario), closed, rnd))
                        results += 1
                    out.extend(check_same_model(bench_dir, [recorded_run(bench_dir, s) for s in scenarios
                                                            if s in rnd.scenarios]))
                    if closed:
                        missing = [s for s in rnd.required_scenarios if s not in scenarios]
                        if not any(s in scenarios for s in rnd.optional_scenarios):
                            missing.append(f"one of {' or '.join(rnd.optional_scenarios)}")
                        if missing:
                            incomplete.append(f"{bench_dir}: a closed result needs {', '.join(missing)} too")
    out.rule(results > 0, f"--root {root}: holds no result ({' or '.join(DIVISIONS)}/SUBMITTER/results/SYSTEM/"
                          f"BENCHMARK/SCENARIO/); is it the submission's root?")
    return out, incomplete
