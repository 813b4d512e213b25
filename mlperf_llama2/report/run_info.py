"""`run_info.json`: what a run was (model, dataset, scenario, output cap, quantization, command line, harness
commit), written beside LoadGen's logs.

LoadGen's logs do not say which model or dataset produced them, nor whether outputs were capped; the
summary and the plots need all three, so main.py records them here at the start of every run.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Optional

RUN_INFO_FILE = "run_info.json"


def write_run_info(run_dir: str, **fields: Any) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_INFO_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2, default=str)
    return path


def harness_commit() -> Optional[str]:
    """This checkout's git commit, with "-dirty" when tracked files differ from it; None outside git."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def read_run_info(run_dir: str) -> dict[str, Any]:
    """The recorded fields, or {} when the run has none (e.g. logs from another harness)."""
    try:
        with open(os.path.join(run_dir, RUN_INFO_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
