"""What a run's input files held when it started: the dataset (size and sha256), the model (sha256 of
config.json and of its weights' names and shapes, as calibration scales identify it), user.conf and the
audit.config LoadGen applied. Recorded in run_info.json under "input_identity", so the packager and the
scorer can tell that the performance, accuracy and audit runs used the same files and that a file read
later (user.conf to package, the dataset to score against) is still the one that ran; a path alone
cannot (relative, reused, repointed symlink).

RunInfo (report/run_info.py) ignores this key; `record` adds it to the run_info.json `write_run_info`
wrote, `read_identity` returns it, or None for a file written before it existed (the caller then says it
cannot confirm). No torch here except `collect`'s model hash, which runs inside main.py's run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

from mlperf_llama2.file_hash import sha256_file
from mlperf_llama2.report.run_info import RUN_INFO_FILE

KEY = "input_identity"


@dataclass(frozen=True)
class FileIdentity:
    path: str  # absolute
    size: int
    sha256: str

    def describe(self) -> str:
        return f"{self.path} ({self.size} bytes, sha256 {self.sha256[:12]}...)"

    def same_content(self, other: "FileIdentity") -> bool:
        return self.size == other.size and self.sha256 == other.sha256


@dataclass(frozen=True)
class ModelIdentity:
    path: str  # realpath of the checkpoint directory at run time
    config_sha256: str
    weights_sha256: str  # of the sorted "name shape" lines of the weights (not their values)
    # of the tokenizer files the scorer decodes with (TOKENIZER_FILES; None: recorded before it existed)
    tokenizer_sha256: Optional[str] = None

    def same_model(self, other: "ModelIdentity") -> bool:
        return (self.config_sha256, self.weights_sha256) == (other.config_sha256, other.weights_sha256)


@dataclass(frozen=True)
class InputIdentity:
    dataset: Optional[FileIdentity] = None
    model: Optional[ModelIdentity] = None  # None: no local checkpoint (an API server or SUT nodes hold it)
    user_conf: Optional[FileIdentity] = None
    audit_conf: Optional[FileIdentity] = None  # None: no audit.config in the run's working directory
    # The quantization files the numerics depend on (None: not given): a path alone does not say what it held.
    liteml_config: Optional[FileIdentity] = None
    calibration_scales: Optional[FileIdentity] = None


def file_identity(path: Optional[str]) -> Optional[FileIdentity]:
    """The file's absolute path, size and sha256; None when `path` is not a file."""
    if not path or not os.path.isfile(path):
        return None
    return FileIdentity(os.path.abspath(path), os.path.getsize(path), sha256_file(path))


def config_sha256(model_path: Optional[str]) -> Optional[str]:
    """sha256 of the checkpoint's config.json; None when it has none (no torch needed, unlike `collect`)."""
    path = os.path.join(model_path, "config.json") if model_path else ""
    return sha256_file(path) if path and os.path.isfile(path) else None


# The files a checkpoint's tokenizer is built from (tokenization.load_tokenizer reads these and no others).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def tokenizer_sha256(model_path: Optional[str]) -> Optional[str]:
    """sha256 over the names and contents of the checkpoint's TOKENIZER_FILES that exist (None: none does), so
    the same tokenizer at another path has the same hash and any edited or other one another."""
    if not model_path or not os.path.isdir(model_path):
        return None
    digest, found = hashlib.sha256(), False
    for name in TOKENIZER_FILES:
        path = os.path.join(model_path, name)
        if os.path.isfile(path):
            digest.update(f"{name} {sha256_file(path)}\n".encode())
            found = True
    return digest.hexdigest() if found else None


def model_identity(model_path: Optional[str]) -> Optional[ModelIdentity]:
    """The checkpoint's identity as calibration scales record it; None without a local config.json."""
    if not model_path or not os.path.isfile(os.path.join(model_path, "config.json")):
        return None
    from mlperf_llama2.quant.calibration_file import model_identity as hashes  # torch: at run time only

    found = hashes(model_path)
    return ModelIdentity(os.path.realpath(model_path), found["model_config_sha256"], found["model_weights_sha256"],
                         tokenizer_sha256(model_path))


def collect(dataset_path: Optional[str], model_path: Optional[str], user_conf: Optional[str],
            audit_conf: Optional[str], liteml_config: Optional[str] = None,
            calibration_scales: Optional[str] = None) -> InputIdentity:
    return InputIdentity(file_identity(dataset_path), model_identity(model_path), file_identity(user_conf),
                         file_identity(audit_conf), file_identity(liteml_config), file_identity(calibration_scales))


def record(run_dir: str, identity: InputIdentity) -> str:
    """Add `identity` to the run_info.json in `run_dir` (written by report.run_info.write_run_info)."""
    path = os.path.join(run_dir, RUN_INFO_FILE)
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    fields[KEY] = asdict(identity)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2, default=str)
    return path


def _part(cls, raw):
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, got {type(raw).__name__}")
    return cls(**raw)


def read_identity(run_dir: str) -> Optional[InputIdentity]:
    """The identity recorded in `run_dir`/run_info.json; None when there is none or it cannot be read."""
    try:
        with open(os.path.join(run_dir, RUN_INFO_FILE), encoding="utf-8") as f:
            raw = json.load(f)
        found = raw.get(KEY) if isinstance(raw, dict) else None
        if not isinstance(found, dict):
            return None
        return InputIdentity(_part(FileIdentity, found.get("dataset")), _part(ModelIdentity, found.get("model")),
                             _part(FileIdentity, found.get("user_conf")), _part(FileIdentity, found.get("audit_conf")),
                             _part(FileIdentity, found.get("liteml_config")),
                             _part(FileIdentity, found.get("calibration_scales")))
    except (OSError, ValueError, TypeError):
        return None


def mismatch(recorded: FileIdentity, path: str) -> Optional[str]:
    """None when the file at `path` has the recorded content, else what it holds instead (for a message)."""
    if not os.path.isfile(path):
        return "no such file"
    size = os.path.getsize(path)
    if size == recorded.size:
        digest = sha256_file(path)
        if digest == recorded.sha256:
            return None
        return f"{size} bytes, sha256 {digest[:12]}..."
    return f"{size} bytes"
