"""The user's path matches the docs (issue 17, item 7): --scenario Interactive, help texts that agree with
README and the code, and run scripts that find the project's .venv themselves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_llama2 import constants, harness
from mlperf_llama2.config import build_parser
from mlperf_llama2.errors import UserError, run_cli
from reliability_fixtures import REPO, error_lines


def _config(*argv):
    return harness.parse_config(["--device", "cpu", *argv])


def test_scenario_interactive_is_server_with_the_interactive_model_name():
    c = _config("--scenario", "Interactive")
    assert (c.scenario, c.lg_model_name, c.interactive) == ("Server", constants.LG_MODEL_NAME_INTERACTIVE, True)
    same = _config("--scenario", "Interactive", "--lg-model-name", constants.LG_MODEL_NAME_INTERACTIVE)
    assert (same.scenario, same.lg_model_name) == ("Server", constants.LG_MODEL_NAME_INTERACTIVE)
    plain = _config()
    assert (plain.scenario, plain.lg_model_name) == ("Offline", constants.LG_MODEL_NAME)
    server = _config("--scenario", "Server")
    assert (server.scenario, server.lg_model_name, server.interactive) == ("Server", constants.LG_MODEL_NAME, False)


def test_interactive_with_the_other_model_name_is_one_line_exit_2(capsys):
    with pytest.raises(UserError, match="--scenario Interactive means --scenario Server --lg-model-name "
                                        "llama2-70b-interactive; it conflicts with --lg-model-name llama2-70b"):
        _config("--scenario", "Interactive", "--lg-model-name", "llama2-70b")
    assert run_cli(harness.main, ["--scenario", "Interactive", "--lg-model-name", "llama2-70b", "--device",
                                  "cpu"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "conflicts with --lg-model-name llama2-70b" in lines[0]


def _help(flag: str) -> str:
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    return " ".join(action.help.split())


def test_backend_speedup_in_help_is_the_one_readme_states():
    readme = (REPO / "README.md").read_text()
    claimed = re.search(r"~(\d+)× the reference backend", readme).group(1)
    assert f"~{claimed}x the reference backend" in _help("--backend")
    assert not re.search(r"\b(?!" + claimed + r")\d+x faster", _help("--backend"))


def test_quant_mode_help_names_the_gemm_int8_mode_really_uses():
    from mlperf_llama2.quant.int8_linear import Int8Linear

    assert Int8Linear.gemm == "fused"  # the default the help describes
    text = _help("--quant-mode")
    assert "fused Triton int8 GEMM" in text and "torch._int_mm where Triton is missing" in text


def test_readme_says_how_the_environment_is_activated():
    section = (REPO / "README.md").read_text().split("## Running the real benchmark", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in section and "make venv" in section
    assert "--scenario Interactive" in section


def _script_copy(tmp_path: Path, name: str, venv: bool) -> Path:
    """The run script beside a main.py that reports which interpreter ran it (and a .venv when asked)."""
    root = tmp_path / "clone"
    root.mkdir()
    shutil.copy(REPO / name, root / name)
    (root / "main.py").write_text("import sys\nprint('MAIN', sys.executable, ' '.join(sys.argv[1:]))\n")
    if venv:
        bin_dir = root / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python3").write_text('#!/bin/sh\necho VENV_PYTHON\nexec python3 "$@"\n')
        (bin_dir / "python3").chmod(0o755)
    return root


@pytest.mark.parametrize("name", ["run_offline.sh", "run_server.sh"])
def test_run_scripts_use_the_project_venv_unless_an_environment_is_active(tmp_path, name):
    root = _script_copy(tmp_path, name, venv=True)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(CHECKPOINT_PATH="/m", DATASET_PATH="/d.pkl")
    proc = subprocess.run(["bash", str(root / name), "--scenario", "Interactive"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "VENV_PYTHON"
    assert proc.stdout.splitlines()[1].endswith("--scenario Interactive")  # extra flags reach main.py, last wins
    active = subprocess.run(["bash", str(root / name)], cwd=tmp_path, env=dict(env, VIRTUAL_ENV="/opt/venv"),
                            capture_output=True, text=True, timeout=60)
    assert active.returncode == 0 and "VENV_PYTHON" not in active.stdout and "MAIN" in active.stdout


def test_run_accuracy_scores_the_run_its_extra_arguments_made(tmp_path):
    """`run_accuracy.sh --output-log-dir mine --model-path /other`: main.py writes into mine/, so the scorer reads
    mine/'s log with /other's tokenizer, not an earlier run's log left in offline_accuracy_loadgen_logs/."""
    root = _script_copy(tmp_path, "run_accuracy.sh", venv=False)
    (root / "evaluate-accuracy.py").write_text("import sys\nprint('SCORED', ' '.join(sys.argv[1:]))\n")
    stale = tmp_path / "offline_accuracy_loadgen_logs"
    stale.mkdir()
    (stale / "mlperf_log_accuracy.json").write_text("[]")  # an earlier run's log
    (tmp_path / "mine").mkdir()
    bin_dir = Path(sys.executable).parent  # the project's environment: the script's parser needs the package
    env = dict(os.environ, VIRTUAL_ENV=str(bin_dir.parent), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               CHECKPOINT_PATH="/m", DATASET_PATH="/d.pkl")
    for extra in (["--output-log-dir", "mine", "--model-path", "/other"],
                  ["--output-log-dir=mine", "--model-path=/other"]):
        proc = subprocess.run(["bash", str(root / "run_accuracy.sh"), *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        scored = [line for line in proc.stdout.splitlines() if line.startswith("SCORED")]
        assert len(scored) == 1, proc.stdout + proc.stderr  # (the report step after it fails on the fake logs)
        assert "--checkpoint-path /other --mlperf-accuracy-file mine/mlperf_log_accuracy.json --dataset-file " \
               "/d.pkl" in scored[0]
