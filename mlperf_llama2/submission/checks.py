"""What must hold before a run goes into a submission: one function per input directory, each returning
the problems found (errors stop packaging; warnings are printed) and the facts the README reports.

The run-level rules (round, seeds, duration, sample counts, latency limits, ROUGE) are `rules.py`'s;
here they meet the files: the LoadGen logs, run_info.json, accuracy.txt and its `hash=` line (which
must be the SHA-256 of the accuracy log beside it), the TEST06 output (its checks re-run on the audit's log)
and the audit run it came from.
Both runs, and the audit, must come from the same model, precision and dataset: by the files' content where
run_info.json records it (`input_identity`), else by path with a warning that content cannot be confirmed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from mlperf_llama2 import constants
from mlperf_llama2.compliance import test06
from mlperf_llama2.compliance.test06 import AUDIT_MARKER
from mlperf_llama2.errors import UserError
from mlperf_llama2.file_hash import sha256_file
from mlperf_llama2.input_identity import InputIdentity, ModelIdentity, config_sha256, read_identity
from mlperf_llama2.report.run_info import RunInfo, read_run_info
from mlperf_llama2.report.summary import (ACCURACY_LOG, ACCURACY_RESULT_FILE, DETAIL_FILE, SUMMARY_FILE,
                                          is_llama2_70b, loadgen_verdict, parse_accuracy_result, parse_detail,
                                          parse_summary_text, stop_note)
from mlperf_llama2.submission.layout import TEST06_RESULT
from mlperf_llama2.submission.rounds import Round
from mlperf_llama2.submission.rules import (Findings, accuracy_rules, accuracy_samples_issued, loadgen_scenario,
                                            performance_rules, seeds)

# RunInfo fields that must agree between the performance, accuracy and audit runs.
SAME_SYSTEM_FIELDS = ("model_path", "dtype", "backend", "liteml_config", "quant_backend", "quant_mode",
                      "quantization", "kv_cache_dtype", "fp8_accumulation", "tensor_parallel")
# fields an older run_info.json lacks (None): compared only when both runs recorded them
RECORDED_SINCE_LATER = ("tensor_parallel",)
# one benchmark's scenarios: the same model and precision, each with the parallel layout that suits it
SAME_MODEL_FIELDS = tuple(f for f in SAME_SYSTEM_FIELDS if f != "tensor_parallel")
PATH_FIELDS = ("model_path", "liteml_config")
# verify_accuracy.txt's line of each TEST06 check -> its name in a message.
TEST06_CHECKS = {test06.FIRST_TOKEN_LINE: "first token check", test06.EOS_LINE: "EOS check",
                 test06.LENGTH_LINE: "sample length check"}
# truncate_accuracy_log.py's line in accuracy.txt: the SHA-256 of the full mlperf_log_accuracy.json.
HASH_LINE = re.compile(r"^hash=([\w\d]+)$", re.MULTILINE)


def _read_run(run_dir: str, flag: str, files: tuple[str, ...], out: Findings) -> Optional[tuple[dict, list, str]]:
    """(detail values, LoadGen errors, detail text) of `run_dir`, or None after recording what is missing."""
    if not os.path.isdir(run_dir):
        out.errors.append(f"{flag} {run_dir}: not a directory")
        return None
    missing = [name for name in files if not os.path.isfile(os.path.join(run_dir, name))]
    if missing:
        out.errors.append(f"{flag} {run_dir}: missing {', '.join(missing)}")
        return None
    path = os.path.join(run_dir, DETAIL_FILE)
    detail, errors = parse_detail(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return detail, errors, f.read()


def check_performance(run_dir: str, scenario: str, closed: bool, rnd: Round) -> Findings:
    out = Findings()
    read = _read_run(run_dir, "--performance-dir", (DETAIL_FILE, SUMMARY_FILE), out)
    if read is None:
        return out
    detail, loadgen_errors, text = read
    info = read_run_info(run_dir)
    label = f"performance run {run_dir}"
    # LoadGen's verdict as the summary report gives it: INVALID where its two logs disagree
    verdict, reason = loadgen_verdict(detail, parse_summary_text(os.path.join(run_dir, SUMMARY_FILE)))
    judged = dict(detail, result_validity=verdict, result_invalid_reason=reason)
    out.extend(performance_rules(judged, loadgen_errors, info, rnd, scenario, closed), label)
    out.rule(AUDIT_MARKER not in text, f"{label}: ran with an audit.config (a compliance run, not a result)")
    _not_stopped(run_dir, label, out)
    key = "result_completed_tokens_per_second" if loadgen_scenario(scenario) == "Server" else "result_tokens_per_second"
    out.facts.update(performance_info=info, performance_inputs=read_identity(run_dir), tokens_per_s=detail.get(key),
                     loadgen_version=detail.get("loadgen_version"), verdict=verdict)
    return out


def _not_stopped(run_dir: str, label: str, out: Findings) -> None:
    """A run stopped midway (a failed sample, a signal) answered its remaining samples empty; LoadGen's logs may
    still say VALID, so its RUN_STOPPED.txt decides."""
    note = stop_note(run_dir)
    out.rule(note is None, f"{label}: the run was stopped ({note}): its remaining samples were answered empty, "
             "so it is not a result")


def _accuracy_samples(run_dir: str) -> tuple[Optional[int], Optional[int]]:
    """(unique samples, their tokens) of the accuracy log, as evaluate-accuracy.py counts them (the first entry of
    each qsl_idx); tokens None when an entry has no whole token_count; (None, None) when it is no accuracy log."""
    try:
        with open(os.path.join(run_dir, ACCURACY_LOG), encoding="utf-8") as f:
            first = {}
            for entry in json.load(f):
                first.setdefault(entry["qsl_idx"], entry.get("token_count"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    counts = list(first.values())
    whole = all(isinstance(n, int) and not isinstance(n, bool) for n in counts)
    return len(first), sum(counts) if whole else None


def _check_score_file(txt: str, run_dir: str, samples: Optional[int], out: Findings,
                      tokens: Optional[int] = None) -> Optional[dict]:
    """The ROUGE line of accuracy.txt, its hash checked against the log beside it; None when unusable."""
    if not os.path.isfile(txt):
        out.errors.append(f"accuracy run {run_dir}: no {ACCURACY_RESULT_FILE}; save evaluate-accuracy.py's output "
                          f"there (run_accuracy.sh does) or pass --accuracy-txt")
        return None
    with open(txt, encoding="utf-8", errors="replace") as f:
        text = f.read()
    rouge = parse_accuracy_result(text)
    out.rule(rouge is not None, f"{txt}: no ROUGE result line ({{'rouge1': ...}}) from evaluate-accuracy.py")
    log_hash = sha256_file(os.path.join(run_dir, ACCURACY_LOG))
    hashes = HASH_LINE.findall(text)
    if not hashes:
        out.warnings.append(f"{txt}: no hash= line (an older evaluate-accuracy.py): the packager adds the hash "
                            f"of {ACCURACY_LOG} beside it")
    else:
        out.rule(hashes[-1] == log_hash, f"{txt}: hash= {hashes[-1][:12]}... is not the hash of {run_dir}/"
                 f"{ACCURACY_LOG} ({log_hash[:12]}...): it scores another log")
    if rouge is not None:
        gen_num = rouge.get("gen_num")
        out.rule(gen_num is None or samples is None or int(gen_num) == samples,
                 f"{txt}: scores {gen_num} samples but {ACCURACY_LOG} has {samples}: from another run?")
        gen_tok_len = rouge.get("gen_tok_len")
        out.rule(gen_tok_len is None or tokens is None or int(gen_tok_len) == tokens,
                 f"{txt}: scores {gen_tok_len} tokens but {ACCURACY_LOG} holds {tokens}: from another run?")
    out.facts.update(accuracy_log_sha256=log_hash, accuracy_txt_text=text)
    return rouge


def check_accuracy(run_dir: str, accuracy_txt: Optional[str], scenario: str, benchmark: str,
                   closed: bool) -> Findings:
    out = Findings()
    read = _read_run(run_dir, "--accuracy-dir", (DETAIL_FILE, SUMMARY_FILE, ACCURACY_LOG), out)
    if read is None:
        return out
    detail, loadgen_errors, _ = read
    info = read_run_info(run_dir)
    label = f"accuracy run {run_dir}"
    samples, tokens = _accuracy_samples(run_dir)
    out.rule(samples is not None, f"{label}: {ACCURACY_LOG} is not a LoadGen accuracy log")
    # LoadGen logs every sample it issued: a log with fewer (entries removed, or another run's) scores a subset.
    issued = accuracy_samples_issued(detail)
    out.rule(samples is None or issued is None or samples == issued,
             f"{label}: {ACCURACY_LOG} holds {samples} samples but the run issued {issued:.0f}: the log is not this "
             f"run's whole log")
    _not_stopped(run_dir, label, out)
    txt = accuracy_txt or os.path.join(run_dir, ACCURACY_RESULT_FILE)
    rouge = _check_score_file(txt, run_dir, samples, out, tokens)
    out.extend(accuracy_rules(detail, loadgen_errors, info, scenario, closed, rouge, benchmark), label)
    inputs = read_identity(run_dir)
    out.extend(check_model_shape(info.model_path, closed, inputs.model if inputs else None), label)
    out.facts.update(accuracy_info=info, accuracy_inputs=inputs, rouge=rouge, accuracy_samples=samples,
                     accuracy_txt=txt)
    return out


def check_model_shape(model: Optional[str], closed: bool, recorded: Optional[ModelIdentity] = None) -> Findings:
    """The run's model is Llama-2-70B by its config.json, which must still be the one the run recorded;
    closed: one that cannot be read is an error too."""
    out = Findings()
    if model and not os.path.isabs(model):  # an older run_info.json: relative to a working directory unknown here
        out.rule(False, f"model path {model} is recorded relative to the run's working directory: cannot read "
                        f"its config.json to confirm it is Llama-2-70B", closed)
    elif model and os.path.isfile(os.path.join(model, "config.json")):
        now = config_sha256(model)
        out.rule(recorded is None or now == recorded.config_sha256,
                 f"model {model}: config.json is not the one the run recorded (sha256 {now[:12]}... now, "
                 f"{(recorded.config_sha256 if recorded else '')[:12]}... then): the checkpoint changed", closed)
        out.rule(is_llama2_70b(model), f"model {model} is not Llama-2-70B (config.json shape)", closed)
    else:
        out.rule(False, f"cannot read the model's config.json ({model}) to confirm it is Llama-2-70B", closed)
    return out


def find_test06(path: str) -> Optional[str]:
    """The TEST06 directory: `path` itself or its TEST06/ (run_verification.py's -o directory)."""
    for candidate in (os.path.join(path, "TEST06"), path):
        if os.path.isfile(os.path.join(candidate, TEST06_RESULT)):
            return candidate
    return None


def _check_audit_run(found: str, scenario: str, rnd: Round, out: Findings) -> Optional[RunInfo]:
    """The audit run behind a TEST06 directory (its logs in TEST06/accuracy/): an audit.config run of
    this scenario, with the round's seeds and uncapped outputs."""
    logs = os.path.join(found, "accuracy")
    detail_path = os.path.join(logs, DETAIL_FILE)
    if not os.path.isfile(detail_path):
        out.errors.append(f"TEST06 {found}: no accuracy/{DETAIL_FILE}: cannot tell which run it audited")
        return None
    detail, _ = parse_detail(detail_path)
    with open(detail_path, encoding="utf-8", errors="replace") as f:
        out.rule(AUDIT_MARKER in f.read(), f"TEST06 {found}: its run did not use audit.config")
    out.rule(detail.get("effective_scenario") == loadgen_scenario(scenario),
             f"TEST06 {found}: audits a {detail.get('effective_scenario')} run, not {scenario}")
    out.extend(seeds(detail, rnd), f"TEST06 {found}")
    _not_stopped(logs, f"TEST06 {found}", out)
    info = read_run_info(logs)
    if not info.recorded:
        out.errors.append(f"TEST06 {found}: no run_info.json beside its logs (verify with this harness's "
                          f"run_verification.py) to show which model and precision it audited")
        return None
    if detail.get("effective_scenario") == "Server" and loadgen_scenario(scenario) == "Server":
        interactive = info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE
        out.rule(interactive == (scenario == "Interactive"), f"TEST06 {found}: audits a run under --lg-model-name "
                                                             f"{info.lg_model_name}, not the {scenario} scenario")
    cap = info.max_new_tokens
    out.rule(cap is None or int(cap) >= constants.MAX_NEW_TOKENS,
             f"TEST06 {found}: the audit run capped outputs at --max-new-tokens {cap}")
    out.facts.update(test06_inputs=read_identity(logs))
    return info


def read_test06_report(found: str) -> dict[str, str]:
    """verify_accuracy.txt's `name: value` lines (a line without a colon maps to '')."""
    with open(os.path.join(found, TEST06_RESULT), encoding="utf-8", errors="replace") as f:
        return {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in f)}


def reverify_test06(found: str, scenario: str, reported: dict[str, str]) -> Findings:
    """TEST06's checks (compliance/test06.py's, one pass) re-run on the audit's accuracy log, copied beside its
    detail log, with Llama-2's EOS id and this result's scenario: each must pass, and verify_accuracy.txt must
    say what they give (a report verified with another -e or -s, stale, or edited is refused, both divisions)."""
    out = Findings()
    where, log = f"TEST06 {found}", os.path.join("accuracy", test06.ACCURACY_LOG)
    path = os.path.join(found, log)
    if not os.path.isfile(path):
        out.errors.append(f"{where}: no {log} beside the audit run's logs: cannot re-run the TEST06 checks "
                          f"(run_verification.py copies it there)")
        return out
    try:
        entries = test06.read_accuracy_log(os.path.dirname(path))
        test06.check_dtype(entries, constants.OUTPUT_DTYPE, path)  # the harness logs int32 tokens
    except UserError as exc:
        out.errors.append(f"{where}: cannot re-run the TEST06 checks (on {constants.OUTPUT_DTYPE} tokens, as this "
                          f"harness logs them): {exc}")
        return out
    eos = constants.LLAMA2_EOS_TOKEN
    result = test06.verify(entries, scenario, eos, constants.OUTPUT_DTYPE)
    if not entries:
        out.errors.append(f"{where}: {log}: {result.problems[-1]}")
        return out
    for name, ours in result.verdicts().items():
        theirs, check = reported.get(name), TEST06_CHECKS[name]
        if ours == "False":
            problems = result.failures[name]
            more = f" (+{len(problems) - 1} more samples)" if len(problems) > 1 else ""
            out.errors.append(f"{where}: the {check} fails on {log} re-run with Llama-2's EOS id {eos} ({scenario}): "
                              f"{problems[0]}{more}" + ("" if theirs == "False" else
                                                        f"; {TEST06_RESULT} says {theirs}: it was verified with "
                                                        f"another -e or -s, or it is stale or edited"))
        elif theirs != ours and not (ours == "Skipped" and theirs == "True"):  # Offline: either is a pass
            out.errors.append(f"{where}: {TEST06_RESULT} says {name}: {theirs}, but its {log} gives {ours} (re-run "
                              f"with Llama-2's EOS id {eos}, {scenario}): it is stale or edited")
    return out


def check_test06(path: Optional[str], scenario: str, closed: bool, rnd: Round) -> Findings:
    out = Findings()
    if path is None:
        out.rule(False, "no --test06-dir: llama2-70b results need a passing TEST06 audit "
                        "(docs/compliance.md)", closed)
        return out
    found = find_test06(path)
    if found is None:
        out.errors.append(f"--test06-dir {path}: no {TEST06_RESULT} in it or in its TEST06/")
        return out
    lines = read_test06_report(found)
    first = lines.get("First token check pass")
    wanted_first = ("True", "Skipped") if scenario == "Offline" else ("True",)
    out.rule(first in wanted_first, f"TEST06 {found}: first token check {first}, needs {' or '.join(wanted_first)} "
             f"for {scenario}")
    for name in ("EOS check pass", "Sample length check pass"):
        out.rule(lines.get(name) == "True", f"TEST06 {found}: {name.lower()}: {lines.get(name)}")
    out.rule("TEST06 verification complete" in lines, f"TEST06 {found}: verification did not complete")
    out.extend(reverify_test06(found, scenario, lines))
    out.facts.update(test06_dir=found, test06_info=_check_audit_run(found, scenario, rnd, out))
    return out


def check_same_system(perf: RunInfo, other: RunInfo, what: str = "accuracy run",
                      perf_inputs: Optional[InputIdentity] = None,
                      other_inputs: Optional[InputIdentity] = None, first: str = "performance run",
                      fields: tuple[str, ...] = SAME_SYSTEM_FIELDS) -> Findings:
    """The performance run (`first` names it) and `other` must be the same model, precision, backend and dataset
    (`fields`). Only these: runtime settings (batch size, user.conf, LoadGen model name) may differ."""
    out = Findings()
    if not perf.recorded or not other.recorded:
        out.warnings.append(f"run_info.json missing: cannot check the {first} and the {what} used the "
                            f"same model and precision")
        return out
    # With both identities, the checkpoint's path at run time (below) replaces the path as resolved today.
    by_identity = bool(perf_inputs and other_inputs and perf_inputs.model and other_inputs.model)
    for name in fields:
        if name == "model_path" and by_identity:
            continue
        a, b = getattr(perf, name), getattr(other, name)
        if name in RECORDED_SINCE_LATER and (a is None or b is None):
            continue
        if name in PATH_FIELDS and a and b:
            a, b = os.path.realpath(a), os.path.realpath(b)
        out.rule(a == b, f"{first} and {what} differ in {name}: {getattr(perf, name)} vs "
                         f"{getattr(other, name)}")
    out.extend(check_same_inputs(perf_inputs, other_inputs, what, first))
    return out


def check_same_inputs(perf: Optional[InputIdentity], other: Optional[InputIdentity], what: str,
                      first: str = "performance run") -> Findings:
    """The dataset and the model the two runs read, by content: what input_identity recorded at run time."""
    out = Findings()
    if perf is None or other is None:
        older = " and ".join(n for n, i in ((first, perf), (what, other)) if i is None)
        out.warnings.append(f"{older}: run_info.json has no input_identity (an older harness): cannot confirm the "
                            f"{first} and the {what} read the same dataset and model files")
        return out
    if perf.dataset is None or other.dataset is None:
        out.warnings.append(f"{first} and {what}: a dataset identity is missing: cannot confirm they "
                            f"read the same dataset")
    else:
        out.rule(perf.dataset.same_content(other.dataset), f"{first} and {what} read different datasets: "
                 f"{perf.dataset.describe()} vs {other.dataset.describe()}")
    for name, flag in (("liteml_config", "--liteml-config"), ("calibration_scales", "--calibration-scales")):
        a, b = getattr(perf, name), getattr(other, name)
        out.rule((a is None and b is None) or (a is not None and b is not None and a.same_content(b)),
                 f"{first} and {what} ran with different {flag} files: "
                 f"{a.describe() if a else 'none'} vs {b.describe() if b else 'none'}")
    if perf.model is not None and other.model is not None:
        out.rule(perf.model.same_model(other.model), f"{first} and {what} ran different models (config.json "
                 f"or weight names/shapes differ): {perf.model.path} vs {other.model.path}")
        out.rule(perf.model.path == other.model.path,
                 f"{first} and {what} ran different checkpoints: {perf.model.path} vs {other.model.path}")
    elif (perf.model is None) != (other.model is None):
        out.warnings.append(f"{first} and {what}: only one recorded a local checkpoint: cannot confirm "
                            f"they ran the same model")
    return out
