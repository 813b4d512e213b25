"""`run_info.json`: what a run was (model, dataset, scenario, output cap, quantization, command line, harness
commit and whether its tracked files were modified), written beside LoadGen's logs.

LoadGen's logs do not say which model or dataset produced them, nor whether outputs were capped; the
summary, the plots and the submission packager need them, so main.py records a `RunInfo` at the start
of every run. This module is the only one that knows the file's keys: `write_run_info` and
`read_run_info` are its two ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Optional

RUN_INFO_FILE = "run_info.json"
# The harness checkout: mlperf_llama2/report/ -> repository root.
HARNESS_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class GitState:
    """The harness checkout at run time: commit, and `git status --porcelain` of its tracked files."""

    commit: Optional[str] = None
    changed: tuple[str, ...] = ()  # porcelain lines, e.g. " M user.conf"

    @property
    def changed_paths(self) -> tuple[str, ...]:
        return tuple(line[3:].split(" -> ")[-1] for line in self.changed)


@dataclass(frozen=True)
class RunInfo:
    scenario: Optional[str] = None
    accuracy: bool = False
    lg_model_name: Optional[str] = None
    model_path: Optional[str] = None
    dataset_path: Optional[str] = None
    max_new_tokens: Optional[int] = None
    backend: Optional[str] = None
    batch_size: Optional[int] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    user_conf: Optional[str] = None
    liteml_config: Optional[str] = None
    quantization: Optional[str] = None  # --quantization (fp8), exclusive with liteml_config
    quant_backend: Optional[str] = None
    quant_mode: Optional[str] = None
    kv_cache_dtype: Optional[str] = None  # engine --kv-cache-dtype (auto | fp8 | int8); None: not the engine
    fp8_accumulation: Optional[str] = None  # engine --fp8-accumulation with --quantization fp8; None: not that
    tensor_parallel: Optional[int] = None  # GPUs per engine replica; None: not recorded, or the model runs elsewhere
    data_parallel: Optional[int] = None  # engine replicas
    devices: tuple[str, ...] = ()  # every device the run's model ran on (replica by replica, rank by rank)
    # What LoadGen was given (user.conf over its built-in mlperf.conf, audit.config over both): min_duration_ms,
    # min_query_count, target_qps, performance_issue_unique, accuracy_sample_count_override, and `sources`
    # (key -> "line N" of the file that set it; absent: LoadGen's default)
    loadgen_settings: Optional[dict] = None
    command: Optional[str] = None
    harness_commit: Optional[str] = None  # commit, "-dirty" appended when tracked files were modified
    harness_changes: tuple[str, ...] = ()  # `git status --porcelain --untracked-files=no` lines at run time
    recorded: bool = True  # False: the run directory had no (readable) run_info.json

    @property
    def weight_data_type(self) -> str:
        """The Linear weights' format as MLPerf's measurements.json names it: fp16/bf16/fp32, int8 or fp8."""
        if self.quantization == "fp8":
            return "fp8"
        if self.liteml_config is not None or (self.quant_mode or "").startswith("fp8"):
            return "fp8" if "fp8" in (self.quant_mode or "") else "int8"
        return DTYPE_NAMES.get(str(self.dtype), str(self.dtype))

    @property
    def git(self) -> GitState:
        commit = self.harness_commit[:-len("-dirty")] if (self.harness_commit or "").endswith("-dirty") \
            else self.harness_commit
        return GitState(commit, self.harness_changes)


def git_state(repo: str = HARNESS_ROOT) -> GitState:
    """The checkout's commit and modified tracked files; GitState() outside git (e.g. an installed copy)."""
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return GitState()
        status = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return GitState()
    return GitState(head.stdout.strip(), tuple(line for line in status.stdout.splitlines() if line.strip()))


def with_git_state(info: RunInfo, state: GitState) -> RunInfo:
    commit = None if state.commit is None else state.commit + ("-dirty" if state.changed else "")
    return dataclasses.replace(info, harness_commit=commit, harness_changes=state.changed)


def write_run_info(run_dir: str, info: RunInfo) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_INFO_FILE)
    fields = dataclasses.asdict(info)
    del fields["recorded"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2, default=str)
    return path


def read_run_info(run_dir: str) -> RunInfo:
    """The recorded run, or RunInfo(recorded=False) when the run has none (e.g. logs from another harness).
    Keys this version does not know are ignored, so older and newer files both read."""
    try:
        with open(os.path.join(run_dir, RUN_INFO_FILE), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return RunInfo(recorded=False)
    if not isinstance(raw, dict):
        return RunInfo(recorded=False)
    known = {f.name for f in dataclasses.fields(RunInfo)} - {"recorded"}
    values = {k: v for k, v in raw.items() if k in known}
    values["harness_changes"] = tuple(values.get("harness_changes") or ())
    values["devices"] = tuple(values.get("devices") or ())
    return RunInfo(**values)
