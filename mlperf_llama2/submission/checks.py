"""What must hold before a run goes into a submission: one function per input directory, each returning
the problems found (errors stop packaging; warnings are printed) and the facts the README reports.

The rules are MLPerf's for llama2-70b as LoadGen and the submission checker apply them: a VALID
PerformanceOnly run of at least 600 s without an audit config; an AccuracyOnly run over all 24,576
samples whose ROUGE meets the benchmark's target (99% or 99.9% of the FP16 reference, SPEC §8) with
tokens per sample within 90-110%; a passing TEST06. The open division turns the accuracy and duration
rules into warnings. Both runs must come from the same model and precision.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from mlperf_llama2 import constants
from mlperf_llama2.compliance.test06 import AUDIT_MARKER
from mlperf_llama2.report.run_info import read_run_info
from mlperf_llama2.report.summary import (ACCURACY_LOG, ACCURACY_RESULT_FILE, DETAIL_FILE, SUMMARY_FILE,
                                          accuracy_targets, is_llama2_70b, parse_accuracy_result, parse_detail)
from mlperf_llama2.submission.layout import BENCHMARKS, TEST06_RESULT

MIN_DURATION_MS = 600_000  # every datacenter scenario runs at least 10 minutes
# run_info.json keys that must agree between the performance and the accuracy run.
SAME_SYSTEM_KEYS = ("model_path", "dtype", "backend", "liteml_config", "quant_backend", "quant_mode")
PATH_KEYS = ("model_path", "liteml_config")


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def rule(self, ok: bool, message: str, strict: bool = True) -> None:
        """Record `message` unless `ok`: as an error when `strict`, else as a warning."""
        if not ok:
            (self.errors if strict else self.warnings).append(message)

    def extend(self, other: "Findings") -> None:
        self.errors += other.errors
        self.warnings += other.warnings
        self.facts.update(other.facts)


def loadgen_scenario(scenario: str) -> str:
    """Interactive is LoadGen's Server scenario under the llama2-70b-interactive limits."""
    return "Server" if scenario == "Interactive" else scenario


def _read_run(run_dir: str, label: str, files: tuple[str, ...], out: Findings) -> Optional[tuple[dict, list, str]]:
    """(detail values, LoadGen errors, detail text) of `run_dir`, or None after recording what is missing."""
    if not os.path.isdir(run_dir):
        out.errors.append(f"{label} {run_dir}: not a directory")
        return None
    missing = [name for name in files if not os.path.isfile(os.path.join(run_dir, name))]
    if missing:
        out.errors.append(f"{label} {run_dir}: missing {', '.join(missing)}")
        return None
    path = os.path.join(run_dir, DETAIL_FILE)
    detail, errors = parse_detail(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return detail, errors, f.read()


def _check_mode_and_scenario(detail: dict, info: dict, label: str, mode: str, scenario: str, out: Findings) -> None:
    got_mode = detail.get("effective_test_mode")
    out.rule(got_mode == mode, f"{label}: test mode {got_mode}, expected {mode}")
    got = detail.get("effective_scenario")
    want = loadgen_scenario(scenario)
    out.rule(got == want, f"{label}: LoadGen scenario {got}, expected {want}")
    if scenario in ("Server", "Interactive") and got == "Server":
        lg_name = info.get("lg_model_name")
        if lg_name is None:
            out.warnings.append(f"{label}: no run_info.json, so Server and Interactive limits cannot be told apart")
        else:
            interactive = lg_name == constants.LG_MODEL_NAME_INTERACTIVE
            out.rule(interactive == (scenario == "Interactive"),
                     f"{label}: run under --lg-model-name {lg_name}, which is not the {scenario} scenario")


def _check_output_cap(info: dict, label: str, strict: bool, out: Findings) -> None:
    cap = info.get("max_new_tokens")
    out.rule(cap is None or int(cap) >= constants.MAX_NEW_TOKENS,
             f"{label}: outputs capped at --max-new-tokens {cap} (< {constants.MAX_NEW_TOKENS})", strict)


def check_performance(run_dir: str, scenario: str, closed: bool) -> Findings:
    out = Findings()
    label = f"performance run {run_dir}"
    read = _read_run(run_dir, "--performance-dir", (DETAIL_FILE, SUMMARY_FILE), out)
    if read is None:
        return out
    detail, loadgen_errors, text = read
    info = read_run_info(run_dir)
    _check_mode_and_scenario(detail, info, label, "PerformanceOnly", scenario, out)
    verdict = detail.get("result_validity")
    reason = str(detail.get("result_invalid_reason") or "").strip()
    out.rule(verdict == "VALID", f"{label}: LoadGen result {verdict}" + (f" ({reason})" if reason else ""))
    out.rule(AUDIT_MARKER not in text, f"{label}: ran with an audit.config (a compliance run, not a result)")
    out.rule(not loadgen_errors, f"{label}: LoadGen logged {len(loadgen_errors)} error(s), first: "
             f"{loadgen_errors[0] if loadgen_errors else ''}")
    min_ms = detail.get("effective_min_duration_ms")
    out.rule(min_ms is not None and float(min_ms) >= MIN_DURATION_MS,
             f"{label}: min_duration {min_ms} ms < {MIN_DURATION_MS} ms", closed)
    _check_output_cap(info, label, closed, out)
    key = "result_completed_tokens_per_second" if loadgen_scenario(scenario) == "Server" else "result_tokens_per_second"
    out.facts.update(performance_info=info, tokens_per_s=detail.get(key),
                     result_scheduled_qps=detail.get("result_scheduled_samples_per_sec"),
                     loadgen_version=detail.get("loadgen_version"), verdict=verdict)
    return out


def _accuracy_samples(run_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(run_dir, ACCURACY_LOG), encoding="utf-8") as f:
            return len({entry["qsl_idx"] for entry in json.load(f)})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_accuracy(run_dir: str, accuracy_txt: Optional[str], scenario: str, benchmark: str,
                   closed: bool) -> Findings:
    out = Findings()
    label = f"accuracy run {run_dir}"
    read = _read_run(run_dir, "--accuracy-dir", (DETAIL_FILE, SUMMARY_FILE, ACCURACY_LOG), out)
    if read is None:
        return out
    detail, loadgen_errors, _ = read
    info = read_run_info(run_dir)
    _check_mode_and_scenario(detail, info, label, "AccuracyOnly", scenario, out)
    out.rule(not loadgen_errors, f"{label}: LoadGen logged {len(loadgen_errors)} error(s)")
    _check_output_cap(info, label, closed, out)

    samples = _accuracy_samples(run_dir)
    out.rule(samples is not None, f"{label}: {ACCURACY_LOG} is not a LoadGen accuracy log")
    out.rule(samples is None or samples >= constants.TOTAL_SAMPLE_COUNT,
             f"{label}: {samples} samples scored, a submission scores all {constants.TOTAL_SAMPLE_COUNT}", closed)
    model = info.get("model_path")
    if model and os.path.isfile(os.path.join(model, "config.json")):
        out.rule(is_llama2_70b(model), f"{label}: model {model} is not Llama-2-70B (config.json shape)", closed)
    else:
        out.warnings.append(f"{label}: cannot read the model's config.json ({model}) to confirm it is Llama-2-70B")

    txt = accuracy_txt or os.path.join(run_dir, ACCURACY_RESULT_FILE)
    rouge = None
    if not os.path.isfile(txt):
        out.errors.append(f"{label}: no {ACCURACY_RESULT_FILE}; save evaluate-accuracy.py's output there "
                          f"(run_accuracy.sh does) or pass --accuracy-txt")
    else:
        with open(txt, encoding="utf-8", errors="replace") as f:
            rouge = parse_accuracy_result(f.read())
        out.rule(rouge is not None, f"{txt}: no ROUGE result line ({{'rouge1': ...}}) from evaluate-accuracy.py")
    if rouge is not None:
        gen_num = rouge.get("gen_num")
        out.rule(gen_num is None or samples is None or int(gen_num) == samples,
                 f"{txt}: scores {gen_num} samples but {ACCURACY_LOG} has {samples}: from another run?")
        targets = accuracy_targets(rouge)
        target = BENCHMARKS[benchmark]
        out.rule(targets[target], f"{label}: ROUGE-1/2/L {rouge.get('rouge1')}/{rouge.get('rouge2')}/"
                 f"{rouge.get('rougeL')} below the {benchmark} target ({target}% of "
                 f"{'/'.join(str(v) for v in constants.ROUGE_REFERENCE.values())})", closed)
        out.rule(targets["tokens_per_sample"], f"{label}: tokens per sample {rouge.get('tokens_per_sample')} "
                 f"outside 90-110% of {constants.TOKENS_PER_SAMPLE_REFERENCE}", closed)
    out.facts.update(accuracy_info=info, rouge=rouge, accuracy_samples=samples, accuracy_txt=txt)
    return out


def find_test06(path: str) -> Optional[str]:
    """The TEST06 directory: `path` itself or its TEST06/ (run_verification.py's -o directory)."""
    for candidate in (os.path.join(path, "TEST06"), path):
        if os.path.isfile(os.path.join(candidate, TEST06_RESULT)):
            return candidate
    return None


def check_test06(path: Optional[str], scenario: str, closed: bool) -> Findings:
    out = Findings()
    if path is None:
        out.rule(False, "no --test06-dir: llama2-70b results need a passing TEST06 audit "
                        "(docs/compliance.md)", closed)
        return out
    found = find_test06(path)
    if found is None:
        out.errors.append(f"--test06-dir {path}: no {TEST06_RESULT} in it or in its TEST06/")
        return out
    with open(os.path.join(found, TEST06_RESULT), encoding="utf-8", errors="replace") as f:
        lines = {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in f)}
    first = lines.get("First token check pass")
    wanted_first = ("True", "Skipped") if scenario == "Offline" else ("True",)
    out.rule(first in wanted_first, f"TEST06 {found}: first token check {first}, needs {' or '.join(wanted_first)} "
             f"for {scenario}")
    for name in ("EOS check pass", "Sample length check pass"):
        out.rule(lines.get(name) == "True", f"TEST06 {found}: {name.lower()}: {lines.get(name)}")
    out.rule("TEST06 verification complete" in lines, f"TEST06 {found}: verification did not complete")
    out.facts["test06_dir"] = found
    return out


def check_same_system(perf: dict, acc: dict) -> Findings:
    """The performance and accuracy runs must be the same model, precision and backend."""
    out = Findings()
    if not perf or not acc:
        out.warnings.append("run_info.json missing from a run: cannot check both runs used the same model "
                            "and precision")
        return out
    for key in SAME_SYSTEM_KEYS:
        a, b = perf.get(key), acc.get(key)
        if key in PATH_KEYS and a and b:
            a, b = os.path.realpath(a), os.path.realpath(b)
        out.rule(a == b, f"performance and accuracy runs differ in {key}: {perf.get(key)} vs {acc.get(key)}")
    return out
