"""The device scripts of tools/gpu/ (owed_h200.sh, h100_scenarios.sh, tp2_h100.sh), every PART dry-run on CPU.

Those scripts run on a scarce GPU machine (10 minutes a command, ~30 minutes a session): a flag renamed or a check
added since they were written fails there only after the 70B has been built, and costs a whole call. With DRY_RUN=1
(tools/gpu/common.sh) a script prints each command instead of running it; here every printed tools/*.py command goes
through that tool's own argparse and the pre-flight checks it makes before building anything (bench.py up to its
"no CUDA GPU" line; profile_step.py up to its model build; gemm_clocks.py's point grammar), its Server settings
through the LoadGen TestSettings bench_server builds after the model, its --offline-json through the reader bench.py
uses after the model, and main.py commands through the harness's RunConfig. Outputs must go under $OUT, inputs exist
or come from an earlier command of the same part, and a part's timeouts fit the 600-s command limit.

The real-mode refusals (wrong card, too few GPUs, no LoadGen, no OUT, another build's Offline JSON) run the scripts
with a fake nvidia-smi and python3 on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

PARTS = {
    "tools/gpu/owed_h200.sh": ("first", "fp8_offline", "fp8fast_offline", "fp8_server", "fp8_server_ab",
                               "fp8_interactive", "fp8_interactive_flat", "fp8_interactive_ab", "fp8_interactive_grid",
                               "fp8_profile", "fp8_profile_small", "wc80_all", "wc80_linear", "wc80_server", "clocks"),
    "tools/gpu/h100_scenarios.sh": ("server", "interactive", "wc_server"),
    "tools/gpu/tp2_h100.sh": ("fp8", "int8"),
}
CASES = [(script, part) for script, parts in PARTS.items() for part in parts]
COMMAND_LIMIT_S = 600
SETUP_MARGIN_S = 30  # pip, nvidia-smi, steady_state.py: what runs outside the timeouts
CLEAN_ENV = {"DRY_RUN", "OUT", "PART", "ANY_GPU", "OFFLINE_JSON", "WC_OFFLINE_JSON", "SERVER_QPS", "SEQ_CAPS",
             "TOKEN_BUDGETS"}


def _script(script: str, tmp_path: Path, path_first: Path | None = None, **env_over: str):
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    # python3 is the project's interpreter (the Offline-JSON check runs it); a fake one first where given
    env["PATH"] = os.pathsep.join([*([str(path_first)] if path_first else []), str(VENV_BIN), env["PATH"]])
    env.update(env_over)
    return subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def _out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


def _commands(stdout: str) -> list[tuple[int | None, str, list[str]]]:
    """(timeout seconds or None, tool path, its arguments) of every python command a dry run printed."""
    found = []
    for line in stdout.splitlines():
        words = shlex.split(line)
        limit = int(words[1]) if len(words) > 1 and words[0] == "timeout" else None
        for i, word in enumerate(words[:-1]):
            if os.path.basename(word).startswith("python") and words[i + 1].endswith(".py"):
                found.append((limit, words[i + 1], words[i + 2:]))
                break
    return found


def _dry_run(script: str, part: str, tmp_path: Path, **env_over: str):
    out = _out(tmp_path)
    proc = _script(script, tmp_path, DRY_RUN="1", OUT=str(out), PART=part, **env_over)
    return proc, out, _commands(proc.stdout)


# ---------------------------------------------------------------- each tool's own checks, in this process


class _Stop(Exception):
    """Raised where a tool would start building or running something: its checks have all passed."""


def _tools_path(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    monkeypatch.chdir(REPO)  # the scripts run in the repository root: their relative paths are from there


def _recording_parser(monkeypatch, stop: bool) -> list[argparse.Namespace]:
    """Every Namespace an ArgumentParser returns; with stop, the tool stops right after parsing."""
    seen: list[argparse.Namespace] = []
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        ns = original(self, args, namespace)
        seen.append(ns)
        if stop:
            raise _Stop
        return ns

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    return seen


def _check_bench(argv: list[str], tmp_path: Path, monkeypatch) -> argparse.Namespace:
    """tools/bench.py's checks all pass (they all come before its CUDA check); its Server points' LoadGen settings
    build; its --offline-json reads as bench.py reads it."""
    _tools_path(monkeypatch)
    import bench
    import bench_server
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = _recording_parser(monkeypatch, stop=False)
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert "torch sees no CUDA GPU" in str(exc.value.code), f"bench.py {' '.join(argv)}: {exc.value.code}"
    (args,) = seen
    monkeypatch.undo()
    _tools_path(monkeypatch)
    if args.offline_json:
        tokens_per_s, source, _ = bench.offline_reference(args, {"rows": []})
        assert tokens_per_s and tokens_per_s > 0 and source == args.offline_json
    if (args.server_qps or args.server_auto) and args.tensor_parallel == 1 and args.data_parallel == 1:
        pytest.importorskip("mlperf_loadgen")
        limits = bench_server.INTERACTIVE if args.interactive else bench_server.SERVER
        runs = bench_server.ServerRuns(None, types.SimpleNamespace(total_sample_count=args.server_samples), limits,
                                       args.server_seconds, str(tmp_path / "server"), args.server_min_queries)
        assert runs.settings.test is not None
    return args


def _check_profile_step(argv: list[str], monkeypatch) -> argparse.Namespace:
    """tools/profile_step.py up to its model build (its numerics checks come after its CUDA check)."""
    _tools_path(monkeypatch)
    import profile_step
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def stop(*_a, **_k):
        raise _Stop

    monkeypatch.setattr(profile_step, "bench_model", stop)
    seen = _recording_parser(monkeypatch, stop=False)
    with pytest.raises(_Stop):
        profile_step.main(argv)
    return seen[0]


def _check_gemm_clocks(argv: list[str], monkeypatch) -> argparse.Namespace:
    _tools_path(monkeypatch)
    import gemm_clocks

    args = gemm_clocks.parse_args(argv)  # the point grammar and ranges
    assert args.point_list
    return args


def _check_steady_state(argv: list[str], monkeypatch) -> argparse.Namespace:
    _tools_path(monkeypatch)
    import steady_state

    seen = _recording_parser(monkeypatch, stop=True)
    with pytest.raises(_Stop):
        steady_state.main(argv)
    return seen[0]


def _check_main(argv: list[str], monkeypatch):
    """main.py: its parser and the harness's RunConfig (the refusals of flags outside their backend)."""
    _tools_path(monkeypatch)
    from mlperf_llama2.harness import parse_config

    return parse_config(argv)


def test_a_bench_flag_it_lacks_or_refuses_is_caught(tmp_path, monkeypatch):
    """The checker must fail where the GPU machine would: an unknown flag, and a pair bench.py refuses."""
    base = ["--shape", "70b", "--ref-samples", "0", "--fidelity-prompts", "0", "--out", str(tmp_path / "b")]
    with pytest.raises(AssertionError, match="--no-such-flag"):
        _check_bench([*base, "--no-such-flag"], tmp_path, monkeypatch)
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="prompt attention runs its own kernels"):
        _check_bench([*base, "--weights", "int8", "--kv-cache-dtype", "int8", "--int8-rules", "all",
                      "--graph-mixed-tokens", "512"], tmp_path, monkeypatch)


# ---------------------------------------------------------------- every PART, dry-run


def test_every_part_of_the_scripts_is_listed_here():
    """A PART added to a script without being added here would never be dry-run."""
    for script, parts in PARTS.items():
        text = (REPO / script).read_text()
        labels = set()
        for group in re.findall(r"(?:^[ \t]+|\bin[ \t]+)([a-z0-9_]+(?:\|[a-z0-9_]+)*)\)", text, re.M):
            labels.update(group.split("|"))
        assert labels == set(parts), f"{script}: case labels {sorted(labels)} vs {sorted(parts)}"


@pytest.mark.parametrize("script", sorted(PARTS))
def test_an_unknown_part_is_one_line_and_exit_2(script, tmp_path):
    proc = _script(script, tmp_path, DRY_RUN="1", OUT=str(_out(tmp_path)), PART="no_such_part")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no_such_part" in proc.stderr
    for part in PARTS[script]:
        assert re.search(rf"\b{part}\b", proc.stderr), (part, proc.stderr)


@pytest.mark.parametrize("script,part", CASES, ids=[f"{os.path.basename(s)}:{p}" for s, p in CASES])
def test_every_command_of_a_part_passes_its_tools_checks(script, part, tmp_path, monkeypatch):
    proc, out, commands = _dry_run(script, part, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr
    assert commands, proc.stdout
    assert not any(out.glob("*/")), "a dry run made an output folder: something ran"
    budget = sum(limit or 0 for limit, _, _ in commands)
    assert budget <= COMMAND_LIMIT_S - SETUP_MARGIN_S, f"{part}: timeouts add up to {budget} s"
    written: list[str] = []
    for limit, tool, argv in commands:
        monkeypatch.undo()
        if tool == "tools/steady_state.py":
            args = _check_steady_state(argv, monkeypatch)
            for path in args.bench_json:  # read from a bench.py run earlier in this part
                assert os.path.dirname(path) in written, f"{part}: steady_state reads {path}; written: {written}"
            continue
        assert limit is not None, f"{part}: {tool} runs without a timeout"
        if tool == "tools/bench.py":
            args = _check_bench(argv, tmp_path, monkeypatch)
        elif tool == "tools/profile_step.py":
            args = _check_profile_step(argv, monkeypatch)
        elif tool == "tools/gemm_clocks.py":
            args = _check_gemm_clocks(argv, monkeypatch)
        elif tool == "main.py":
            _check_main(argv, monkeypatch)
            continue
        else:
            pytest.fail(f"{script} PART={part} runs {tool}: add a checker for it to this test")
        assert args.out.startswith(f"{out}/") and args.out not in written, (part, args.out)
        written.append(args.out)


def test_a_dry_run_follows_the_parts_variables(tmp_path, monkeypatch):
    proc, _, commands = _dry_run("tools/gpu/owed_h200.sh", "fp8_interactive_grid", tmp_path, SEQ_CAPS="64,96",
                                 TOKEN_BUDGETS="1024")
    ((_, _, argv),) = commands
    assert argv[argv.index("--seq-caps") + 1] == "64,96" and argv[argv.index("--token-budgets") + 1] == "1024"
    proc, _, commands = _dry_run("tools/gpu/tp2_h100.sh", "int8", tmp_path, SERVER_QPS="3.5")
    ((_, _, argv),) = commands
    args = _check_bench(argv, tmp_path, monkeypatch)
    assert (args.server_qps, args.weights, args.kv_cache_dtype, args.tensor_parallel) == ("3.5", "int8", "int8", 2)


# ---------------------------------------------------------------- refusals before anything is built


@pytest.mark.parametrize("script", sorted(PARTS))
def test_no_out_folder_is_refused(script, tmp_path):
    """Without OUT every output went to /fp8, /gpu.txt...: one line, nothing run."""
    proc = _script(script, tmp_path, DRY_RUN="1", PART=PARTS[script][0])
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "OUT" in line


@pytest.mark.parametrize("script,part,var,value,named", [
    ("tools/gpu/owed_h200.sh", "fp8_server", "OFFLINE_JSON", "docs/results/no_such_run.json", "no_such_run.json"),
    ("tools/gpu/owed_h200.sh", "fp8_interactive_ab", "OFFLINE_JSON",
     "docs/results/bench_engine_70b_int8_wholeconfig_int8kv_h200_2048.json", "--weights int8"),
    ("tools/gpu/owed_h200.sh", "wc80_server", "WC_OFFLINE_JSON",
     "docs/results/bench_engine_70b_int8_linear_int8kv_h200_2048.json", "--int8-rules linear"),
    ("tools/gpu/owed_h200.sh", "fp8_server", "OFFLINE_JSON",
     "docs/results/bench_engine_70b_20layers_fp8_depth1_h100.json", "--layers 20"),
    ("tools/gpu/h100_scenarios.sh", "interactive", "OFFLINE_JSON", "docs/results/bench_gemm_70b_h200.json",
     "no engine Offline row"),
])
def test_an_offline_json_it_cannot_use_is_refused_before_the_model(script, part, var, value, named, tmp_path):
    """bench.py reads --offline-json only after the 70B is built (a missing file was a traceback then), and takes
    any run's tokens/s as this build's capacity: the automatic QPS points and the Offline ratio of another build."""
    proc, _, commands = _dry_run(script, part, tmp_path, **{var: value})
    assert proc.returncode == 2 and commands == [], proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert var in line and named in line, line


def _fakes(tmp_path: Path, gpus: list[str], loadgen: bool = True, failing_tool: str = "") -> Path:
    """nvidia-smi listing `gpus`; a python3 that logs its arguments (and fails for `failing_tool`)."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f"echo '{g}'\n" for g in gpus))
    (fake / "python3").write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> '{tmp_path}/ran.log'\n"
        f"case \"$*\" in *mlperf_loadgen*) exit {0 if loadgen else 1};; esac\n"
        + (f"case \"$*\" in *{failing_tool}*) echo 'Traceback: boom'; exit 3;; esac\n" if failing_tool else "")
        + "exit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    return fake


def _ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return [ln for ln in log.read_text().splitlines() if "tools/" in ln] if log.exists() else []


@pytest.mark.parametrize("script,part,gpus,named", [
    ("tools/gpu/owed_h200.sh", "fp8_offline", ["NVIDIA H100 80GB HBM3"], "H200"),
    ("tools/gpu/owed_h200.sh", "first", [], "needs 1 GPU"),
    ("tools/gpu/h100_scenarios.sh", "server", ["NVIDIA H200, 143771 MiB, 700.00 W"], "H100"),
    ("tools/gpu/tp2_h100.sh", "fp8", ["NVIDIA H100 80GB HBM3, 81559 MiB"], "needs 2 GPU"),
])
def test_the_wrong_machine_is_refused_before_anything_runs(script, part, gpus, named, tmp_path):
    """needs_h200 forgotten gives an H100: the owed H200 rows would be measured on it and filed as the H200's."""
    fake = _fakes(tmp_path, gpus)
    proc = _script(script, tmp_path, fake, OUT=str(_out(tmp_path)), PART=part)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert named in line, line
    assert _ran(tmp_path) == []


def test_any_gpu_runs_on_another_card(tmp_path):
    fake = _fakes(tmp_path, ["NVIDIA H100 80GB HBM3"])
    out = _out(tmp_path)
    proc = _script("tools/gpu/owed_h200.sh", tmp_path, fake, OUT=str(out), PART="fp8_offline", ANY_GPU="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln.split()[0] for ln in _ran(tmp_path)] == ["tools/bench.py", "tools/steady_state.py"]


@pytest.mark.parametrize("script,part,gpu", [
    ("tools/gpu/owed_h200.sh", "fp8_server", "NVIDIA H200"),
    ("tools/gpu/h100_scenarios.sh", "server", "NVIDIA H100 80GB HBM3, 81559 MiB, 700.00 W"),
    ("tools/gpu/tp2_h100.sh", "int8", "NVIDIA H100 80GB HBM3, 81559 MiB"),
])
def test_no_loadgen_is_refused_before_the_model_is_built(script, part, gpu, tmp_path):
    """.whl not carried: LoadGen is imported only after the model is built; one line naming the wheel instead."""
    fake = _fakes(tmp_path, [gpu, gpu], loadgen=False)
    proc = _script(script, tmp_path, fake, OUT=str(_out(tmp_path)), PART=part)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "mlperf_loadgen" in line and ".whl" in line
    assert _ran(tmp_path) == []


@pytest.mark.parametrize("script,part,gpu", [
    ("tools/gpu/owed_h200.sh", "fp8_server", "NVIDIA H200"),
    ("tools/gpu/owed_h200.sh", "clocks", "NVIDIA H200"),
    ("tools/gpu/h100_scenarios.sh", "interactive", "NVIDIA H100 80GB HBM3, 81559 MiB, 700.00 W"),
    ("tools/gpu/tp2_h100.sh", "fp8", "NVIDIA H100 80GB HBM3, 81559 MiB"),
])
def test_a_failed_tool_fails_the_part(script, part, gpu, tmp_path):
    """The tool's status, not that of the `| tail` after it: a part that crashed ended with exit 0."""
    tool = "tools/gemm_clocks.py" if part == "clocks" else "tools/bench.py"
    fake = _fakes(tmp_path, [gpu, gpu], failing_tool=tool)
    proc = _script(script, tmp_path, fake, OUT=str(_out(tmp_path)), PART=part)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert any(ln.startswith(tool) for ln in _ran(tmp_path))
