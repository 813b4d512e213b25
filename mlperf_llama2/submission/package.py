"""Writes one checked result into a submission tree: the runs' LoadGen logs, accuracy.txt with its `hash=`
line and the accuracy log truncated as MLCommons' truncate_accuracy_log.py does (the full log stays in
the accuracy run's directory), the performance run's run_info.json (in performance/), the TEST06 output,
user.conf, measurements.json and a README with the commands. Checking happens first (`checks.py`); nothing
is written when it finds errors.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from mlperf_llama2.report.run_info import RUN_INFO_FILE, RunInfo
from mlperf_llama2.submission.layout import (ACCURACY_FILES, ACCURACY_LOG, ACCURACY_RESULT, MEASUREMENT_FIELDS,
                                             MEASUREMENTS, PERFORMANCE_FILES, README, USER_CONF, ResultPaths)
# truncate_accuracy_log.py: logs of at least VIEWABLE_SIZE bytes keep their first and last VIEWABLE_SIZE
# bytes around a marker; the checker wants the result under 10 KiB.
VIEWABLE_SIZE = 4096
TRUNCATION_MARKER = b"\n\n...\n\n"


@dataclass(frozen=True)
class Inputs:
    performance_dir: str
    accuracy_dir: str
    user_conf: str


def measurements(info: RunInfo, overrides: dict[str, str]) -> dict[str, str]:
    """measurements.json from what the run recorded: token ids in, the weights' format and transformation."""
    model = info.model_path
    quantized = info.weight_data_type in ("int8", "fp8")
    out = {
        "input_data_types": "int32",  # token ids
        "retraining": "no",
        "starting_weights_filename": os.path.basename(os.path.normpath(model)) if model else "",
        "weight_data_types": info.weight_data_type,
        "weight_transformations": (f"post-training {info.weight_data_type} quantization of the Linear layers"
                                   + (f" by {os.path.basename(info.liteml_config)}" if info.liteml_config else "")
                                   + f" ({info.quant_backend} backend, {info.quant_mode} mode)"
                                   if quantized else "none"),
    }
    out.update(overrides)
    return out


def empty_measurements(info: RunInfo, overrides: dict[str, str]) -> list[str]:
    meas = measurements(info, overrides)
    return [k for k in MEASUREMENT_FIELDS if not str(meas.get(k, "")).strip()]


def readme(paths: ResultPaths, facts: dict) -> str:
    perf, acc = facts["performance_info"], facts["accuracy_info"]
    rouge = facts.get("rouge") or {}
    quant = (f", quantization {perf.liteml_config or perf.weight_data_type} ({perf.quant_backend}, "
             f"{perf.quant_mode})" if perf.weight_data_type in ("int8", "fp8") else "")
    lines = [
        f"# {paths.benchmark} {paths.scenario} on {paths.system}",
        "",
        f"Harness: mlperf_llama2 at commit {perf.harness_commit or 'unknown (installed copy)'} (source in "
        f"src/); LoadGen {facts.get('loadgen_version') or 'unknown'}; backend {perf.backend}, {perf.dtype} on "
        f"{perf.device}{quant}.",
        "",
        "## Results",
        "",
        f"- Performance: {facts.get('tokens_per_s')} tokens/s, LoadGen {facts.get('verdict')}.",
        f"- Accuracy ({facts.get('accuracy_samples')} samples): ROUGE-1 {rouge.get('rouge1')}, ROUGE-2 "
        f"{rouge.get('rouge2')}, ROUGE-L {rouge.get('rougeL')}, tokens per sample {rouge.get('tokens_per_sample')}.",
        f"- Full accuracy log: SHA-256 {facts.get('accuracy_log_sha256')} (the tree holds it truncated).",
        "",
        "## Commands",
        "",
        "```",
        "# performance",
        perf.command or "(not recorded)",
        "# accuracy (then evaluate-accuracy.py on its mlperf_log_accuracy.json, output saved as accuracy.txt)",
        acc.command or "(not recorded)",
        "# TEST06: docs/compliance.md (audit.config in a scratch directory, then run_verification.py)",
        (facts.get("test06_info").command if facts.get("test06_info") else None) or "(not recorded)",
        "```",
        "",
    ]
    return "\n".join(lines)


def truncated(data: bytes) -> bytes:
    """The accuracy log as truncate_accuracy_log.py leaves it."""
    if len(data) < VIEWABLE_SIZE:
        return data
    return data[:VIEWABLE_SIZE] + TRUNCATION_MARKER + data[-VIEWABLE_SIZE:]


def accuracy_txt_with_hash(text: str, log_sha256: str) -> str:
    """accuracy.txt ending in truncate_accuracy_log.py's `hash=` line (added when evaluate-accuracy.py's
    output has none; checks.py has verified any that is there)."""
    if f"hash={log_sha256}" in text.splitlines():
        return text
    return text + f"\nhash={log_sha256}\n"


def _copy_files(src_dir: str, names, dest_dir: str) -> list[str]:
    os.makedirs(dest_dir, exist_ok=True)
    written = []
    for name in names:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            written.append(shutil.copy2(src, os.path.join(dest_dir, name)))
    return written


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_result(paths: ResultPaths, inputs: Inputs, facts: dict, overrides: dict[str, str]) -> list[str]:
    """Replace the result's directory with the checked runs; returns the files written."""
    if os.path.isdir(paths.scenario_dir):
        shutil.rmtree(paths.scenario_dir)
    written = _copy_files(inputs.performance_dir, PERFORMANCE_FILES, paths.performance_dir)
    run_info = os.path.join(inputs.performance_dir, RUN_INFO_FILE)
    if os.path.isfile(run_info):  # for the tree's check that every scenario ran the same model and precision
        written.append(shutil.copy2(run_info, paths.performance_run_info))
    written += _copy_files(inputs.accuracy_dir, ACCURACY_FILES, paths.accuracy_dir)
    with open(os.path.join(inputs.accuracy_dir, ACCURACY_LOG), "rb") as f:
        full_log = f.read()
    path = os.path.join(paths.accuracy_dir, ACCURACY_LOG)
    with open(path, "wb") as f:
        f.write(truncated(full_log))
    written.append(path)
    written.append(_write(os.path.join(paths.accuracy_dir, ACCURACY_RESULT),
                          accuracy_txt_with_hash(facts["accuracy_txt_text"], facts["accuracy_log_sha256"])))
    if facts.get("test06_dir"):
        shutil.copytree(facts["test06_dir"], paths.test06_dir)
        written += [os.path.join(d, f) for d, _, files in os.walk(paths.test06_dir) for f in files]
    written.append(shutil.copy2(inputs.user_conf, os.path.join(paths.scenario_dir, USER_CONF)))
    meas = measurements(facts["performance_info"], overrides)
    written.append(_write(os.path.join(paths.scenario_dir, MEASUREMENTS), json.dumps(meas, indent=2) + "\n"))
    written.append(_write(os.path.join(paths.scenario_dir, README), readme(paths, facts)))
    return written


def write_system(path: str, system: dict[str, str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _write(path, json.dumps(system, indent=2) + "\n")
