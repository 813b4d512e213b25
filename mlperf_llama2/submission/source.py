"""The submission's `src/`: the harness source at the commit its runs recorded in run_info.json.

`git archive` of that commit from the harness checkout, so `src/` is what ran, not what the checkout
holds now. A run whose tracked harness files (anything but user.conf, which users edit) were modified
is refused unless the caller allows it. Without git metadata (an installed copy, a container) the
installed tree is copied and the caller warns.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from typing import Optional

from mlperf_llama2.report.run_info import HARNESS_ROOT, GitState
from mlperf_llama2.submission.layout import USER_CONF

# What an installed tree holds of the harness (no git metadata to ask).
INSTALLED_ENTRIES = ("mlperf_llama2", "compliance", "liteml_configs", "docs", "tools", "main.py", "SUT.py",
                     "dataset.py", "evaluate-accuracy.py", "processorca.py", "run_accuracy.sh", "run_offline.sh",
                     "run_server.sh", "user.conf", "build.sh", "launch.sh", "Dockerfile", "Makefile",
                     "pyproject.toml", "constraints.txt", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
SOURCE_NAME = "mlperf_llama2"


def modified_harness_files(state: GitState) -> list[str]:
    """Tracked files modified at run time, user.conf (the users' own settings) excepted."""
    return [p for p in state.changed_paths if os.path.basename(p) != USER_CONF]


def source_dir_name(commit: Optional[str]) -> str:
    return f"{SOURCE_NAME}-{commit[:12]}" if commit else f"{SOURCE_NAME}-installed"


def export_commit(commit: str, dest: str, repo: str = HARNESS_ROOT) -> None:
    """Write the tracked files of `commit` under `dest`; RuntimeError with git's last line if it cannot."""
    done = subprocess.run(["git", "-C", repo, "archive", "--format=tar", commit], capture_output=True, timeout=120)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else "git archive failed")
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(dest, filter="data")


def export_installed(dest: str, root: str = HARNESS_ROOT) -> None:
    os.makedirs(dest, exist_ok=True)
    for name in INSTALLED_ENTRIES:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dest, name), ignore=IGNORED, dirs_exist_ok=True)
        elif os.path.isfile(path):
            shutil.copy2(path, os.path.join(dest, name))


def commit_known(commit: str, repo: str = HARNESS_ROOT) -> bool:
    try:
        done = subprocess.run(["git", "-C", repo, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def write_source(src_dir: str, commit: Optional[str]) -> str:
    """src/<mlperf_llama2-commit>/ (kept when already there); returns the directory."""
    dest = os.path.join(src_dir, source_dir_name(commit))
    if os.path.isdir(dest) and os.listdir(dest):
        return dest
    if commit:
        export_commit(commit, dest)
    else:
        export_installed(dest)
    return dest
