"""Writes one checked result into a submission tree: the runs' LoadGen logs, accuracy.txt, the TEST06
output, user.conf, measurements.json and a README with the commands; a system description skeleton
when the tree has none. Checking happens first (`checks.py`); nothing is written when it finds errors.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from mlperf_llama2.submission.layout import (ACCURACY_FILES, ACCURACY_RESULT, MEASUREMENT_FIELDS, MEASUREMENTS,
                                             PERFORMANCE_FILES, README, SYSTEM_FIELDS, SYSTEM_FIELDS_MEANINGFUL,
                                             USER_CONF, ResultPaths)

DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class Inputs:
    performance_dir: str
    accuracy_dir: str
    accuracy_txt: str
    user_conf: str


def measurements(info: dict, overrides: dict[str, str]) -> dict[str, str]:
    """measurements.json from what the run recorded: token ids in, the weights' precision and transformation."""
    dtype = DTYPE_NAMES.get(str(info.get("dtype")), str(info.get("dtype")))
    quant = info.get("liteml_config")
    model = info.get("model_path")
    out = {
        "input_data_types": "int32",  # token ids
        "retraining": "no",
        "starting_weights_filename": os.path.basename(os.path.normpath(model)) if model else "",
        "weight_data_types": f"int8 ({dtype} embedding, norms and non-Linear ops)" if quant else dtype,
        "weight_transformations": (f"post-training W8A8 quantization by {os.path.basename(quant)} "
                                   f"({info.get('quant_backend')} backend, {info.get('quant_mode')} mode)"
                                   if quant else "none"),
    }
    out.update(overrides)
    return out


def system_skeleton(division: str, submitter: str, system: str) -> dict[str, str]:
    fields = dict.fromkeys(SYSTEM_FIELDS, "")
    fields.update(division=division, submitter=submitter, system_name=system, number_of_nodes="1",
                  framework="PyTorch, this harness (mlperf_llama2)")
    return fields


def empty_system_fields(path: str) -> list[str]:
    """The required keys of an existing systems/<system>.json that are missing or empty."""
    with open(path, encoding="utf-8") as f:
        system = json.load(f)
    return [k for k in SYSTEM_FIELDS_MEANINGFUL if not str(system.get(k, "")).strip()]


def readme(paths: ResultPaths, facts: dict) -> str:
    perf, acc = facts.get("performance_info") or {}, facts.get("accuracy_info") or {}
    rouge = facts.get("rouge") or {}
    lines = [
        f"# {paths.benchmark} {paths.scenario} on {paths.system}",
        "",
        f"Harness: mlperf_llama2 at commit {perf.get('harness_commit') or 'unknown'}; LoadGen "
        f"{facts.get('loadgen_version') or 'unknown'}; backend {perf.get('backend')}, {perf.get('dtype')} on "
        f"{perf.get('device')}" + (f", quantization {perf.get('liteml_config')} ({perf.get('quant_backend')}, "
                                   f"{perf.get('quant_mode')})" if perf.get("liteml_config") else "") + ".",
        "",
        "## Results",
        "",
        f"- Performance: {facts.get('tokens_per_s')} tokens/s, LoadGen {facts.get('verdict')}.",
        f"- Accuracy ({facts.get('accuracy_samples')} samples): ROUGE-1 {rouge.get('rouge1')}, ROUGE-2 "
        f"{rouge.get('rouge2')}, ROUGE-L {rouge.get('rougeL')}, tokens per sample {rouge.get('tokens_per_sample')}.",
        "",
        "## Commands",
        "",
        "```",
        "# performance",
        perf.get("command") or "(not recorded)",
        "# accuracy (then evaluate-accuracy.py on its mlperf_log_accuracy.json)",
        acc.get("command") or "(not recorded)",
        "# TEST06: docs/compliance.md (audit.config in a scratch directory, then run_verification.py)",
        "```",
        "",
    ]
    return "\n".join(lines)


def _copy_files(src_dir: str, names, dest_dir: str) -> list[str]:
    os.makedirs(dest_dir, exist_ok=True)
    written = []
    for name in names:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            written.append(shutil.copy2(src, os.path.join(dest_dir, name)))
    return written


def write_result(paths: ResultPaths, inputs: Inputs, facts: dict, overrides: dict[str, str]) -> list[str]:
    """Replace the result's directory with the checked runs; returns the files written."""
    if os.path.isdir(paths.scenario_dir):
        shutil.rmtree(paths.scenario_dir)
    written = _copy_files(inputs.performance_dir, PERFORMANCE_FILES + ("mlperf_log_accuracy.json",),
                          paths.performance_dir)
    written += _copy_files(inputs.accuracy_dir, ACCURACY_FILES, paths.accuracy_dir)
    written.append(shutil.copy2(inputs.accuracy_txt, os.path.join(paths.accuracy_dir, ACCURACY_RESULT)))
    if facts.get("test06_dir"):
        shutil.copytree(facts["test06_dir"], paths.test06_dir)
        written += [os.path.join(d, f) for d, _, files in os.walk(paths.test06_dir) for f in files]
    written.append(shutil.copy2(inputs.user_conf, os.path.join(paths.scenario_dir, USER_CONF)))
    meas = measurements(facts.get("performance_info") or {}, overrides)
    path = os.path.join(paths.scenario_dir, MEASUREMENTS)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meas, f, indent=2)
        f.write("\n")
    written.append(path)
    path = os.path.join(paths.scenario_dir, README)
    with open(path, "w", encoding="utf-8") as f:
        f.write(readme(paths, facts))
    written.append(path)
    if not os.path.isfile(paths.system_json):
        os.makedirs(os.path.dirname(paths.system_json), exist_ok=True)
        with open(paths.system_json, "w", encoding="utf-8") as f:
            json.dump(system_skeleton(paths.division, paths.submitter, paths.system), f, indent=2)
            f.write("\n")
        written.append(paths.system_json)
    return written


def empty_measurements(info: dict, overrides: dict[str, str]) -> list[str]:
    meas = measurements(info, overrides)
    return [k for k in MEASUREMENT_FIELDS if not str(meas.get(k, "")).strip()]
