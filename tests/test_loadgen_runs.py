"""main.py end to end under LoadGen, on CPU tiny models, each run in its own process.

Offline and Server, AccuracyOnly and PerformanceOnly: every sample is answered exactly once with
int32 data cut after the first EOS, n_tokens == len(data) >= 2, Server's first token is the first
token of the response, greedy outputs match a direct per-sample generate, TEST06 passes, a run
sized to be valid is VALID, and a failing backend ends the run with exit 1 instead of a hang.
The runs are independent, so they are started together and the tests read their results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadgen_fixtures import (
    REPO,
    SMALL_USER_CONF,
    VALID_SERVER_USER_CONF,
    direct_generate,
    finish,
    read_accuracy_log,
    run_main,
    start_main,
    summary,
    tokens,
    write_dataset,
)
from mlperf_llama2.submission.package import truncated

MAX_NEW = 8
EOS = 2
VOCAB = 512  # the tiny tokenizer's vocabulary (config.json vocab_size)
SAMPLES = 6

pytestmark = pytest.mark.tf_compat  # the LiteML wheel's transformers 4.46 too (make test-compat)

FAILING_DRIVER = """
import sys
from mlperf_llama2.backends import registry
from mlperf_llama2.backends.reference import create_reference_backend
from mlperf_llama2.errors import run_cli
from mlperf_llama2.harness import main

def failing(config):
    backend = create_reference_backend(config)
    real = backend.generate
    def generate(batch):
        if any(r.sample_index == 2 for r in batch):
            raise RuntimeError("injected failure")
        return real(batch)
    backend.generate = generate
    return backend

registry.register("reference", failing)
sys.exit(run_cli(main))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("loadgen")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    (root / "valid.conf").write_text(VALID_SERVER_USER_CONF)
    (root / "failing_main.py").write_text(FAILING_DRIVER)
    for name in ("audit_Offline", "audit_Server", "plain", "script"):
        (root / name).mkdir()
    for name in ("audit_Offline", "audit_Server"):
        shutil.copy(REPO / "compliance" / "TEST06" / "audit.config", root / name)
    return root


@pytest.fixture(scope="module")
def runs(workdir, tiny_model_dir, eos_model_dir):
    """Start every LoadGen run at once; name -> CompletedProcess."""
    def args(model, out, *extra, conf="user.conf", max_new=MAX_NEW):
        return ["--model-path", model, "--dataset-path", workdir / "data.pkl", "--user-conf", workdir / conf,
                "--max-new-tokens", max_new, "--output-log-dir", out, *extra]

    started = {
        # The Offline accuracy run is run_accuracy.sh as written: main.py, then evaluate-accuracy.py.
        "offline_acc": start_main(["--max-new-tokens", MAX_NEW, "--batch-size", 4, "--num-workers", 2,
                                   "--save-outputs", "offline_outputs.json"], workdir / "script",
                                  script="run_accuracy.sh",
                                  # no PYTHONPATH: a user runs the script from any directory, package not installed
                                  env={"CHECKPOINT_PATH": str(tiny_model_dir), "DATASET_PATH": str(workdir / "data.pkl"),
                                       "PYTHONPATH": ""}),
        "server_acc": start_main(args(tiny_model_dir, "server_acc", "--scenario", "Server", "--accuracy"), workdir),
        "audit_Offline": start_main(args(eos_model_dir, "logs", "--batch-size", 4), workdir / "audit_Offline"),
        "audit_Server": start_main(args(eos_model_dir, "logs", "--scenario", "Server"), workdir / "audit_Server"),
        "plain": start_main(args(tiny_model_dir, "logs", "--scenario", "Server", conf="valid.conf", max_new=4),
                            workdir / "plain"),
        "failing": start_main(args(tiny_model_dir, "fail_logs", "--scenario", "Server", "--accuracy", max_new=4),
                              workdir, script=str(workdir / "failing_main.py")),
    }
    return {name: finish(proc) for name, proc in started.items()}


def offline_logs(workdir):
    return workdir / "script" / "offline_accuracy_loadgen_logs"


def _ok(runs, name):
    result = runs[name]
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"


def assert_well_formed(entries, server: bool) -> dict[int, list[int]]:
    """Every sample once; int32 token ids; n_tokens == len >= 2; only a final EOS; Server first token."""
    indices = [e["qsl_idx"] for e in entries]
    assert sorted(indices) == list(range(SAMPLES)), indices
    outputs = {}
    for entry in entries:
        assert len(entry["data"]) % 8 == 0  # 4 bytes per token
        data = tokens(entry["data"])
        assert ((0 <= data) & (data < VOCAB)).all(), data  # int64 data would read as ids and zeros
        assert entry["token_count"] == len(data) >= 2
        assert EOS not in data[:-1].tolist(), data  # cut after the first EOS: at most one, at the end
        if server:
            assert tokens(entry["token_data"]).tolist() == data[:1].tolist()
        else:
            assert "token_data" not in entry
        outputs[entry["qsl_idx"]] = data.tolist()
    return outputs


def test_offline_accuracy_run_answers_each_sample_once(runs, workdir):
    _ok(runs, "offline_acc")
    assert_well_formed(read_accuracy_log(offline_logs(workdir)), server=False)
    assert "No errors encountered during test" in summary(offline_logs(workdir))


def test_server_accuracy_run_sends_first_token_then_response(runs, workdir):
    _ok(runs, "server_acc")
    assert_well_formed(read_accuracy_log(workdir / "server_acc"), server=True)
    # LoadGen logs an error for a response recorded before its first token, or for n_tokens <= 1.
    assert "No errors encountered during test" in summary(workdir / "server_acc")


def test_greedy_outputs_equal_across_offline_batches_server_and_direct_generate(runs, workdir, tiny_model_dir):
    from mlperf_llama2.data.dataset import load_dataset

    _ok(runs, "offline_acc")
    _ok(runs, "server_acc")
    offline = assert_well_formed(read_accuracy_log(offline_logs(workdir)), server=False)
    server = assert_well_formed(read_accuracy_log(workdir / "server_acc"), server=True)
    prompts = load_dataset(str(workdir / "data.pkl")).prompts
    direct = dict(enumerate(direct_generate(tiny_model_dir, prompts, MAX_NEW)))
    assert offline == server == direct
    saved = json.loads((workdir / "script" / "offline_outputs.json").read_text())["outputs"]
    assert {int(k): v for k, v in saved.items()} == direct


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_test06_audit_run_passes_verification(runs, workdir, scenario):
    _ok(runs, f"audit_{scenario}")
    audit_dir = workdir / f"audit_{scenario}"
    logs = audit_dir / "logs"
    assert "Found Audit Config file" in (logs / "mlperf_log_detail.txt").read_text()
    entries = read_accuracy_log(logs)
    assert len(entries) >= 50  # the audit logs about 100 samples
    assert any(tokens(e["data"])[-1] == EOS for e in entries)  # the EOS model ends early: EOS check exercised
    verify = run_main(["-c", logs, "-o", audit_dir / "verified", "-s", scenario],
                      cwd=audit_dir, script=str(REPO / "compliance" / "TEST06" / "run_verification.py"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (audit_dir / "verified" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    first = "Skipped" if scenario == "Offline" else "True"
    assert report == [f"First token check pass: {first}", "EOS check pass: True", "Sample length check pass: True",
                      "TEST06 verification complete"]
    assert (audit_dir / "verified" / "TEST06" / "accuracy" / "mlperf_log_accuracy.json").is_file()


def test_plain_server_performance_run_is_valid_and_not_audited(runs, workdir):
    _ok(runs, "plain")
    logs = workdir / "plain" / "logs"
    assert "Result is : VALID" in summary(logs), summary(logs)
    assert "Result is : VALID" in runs["plain"].stdout  # copy_summary_to_stdout
    assert "Found Audit Config file" not in (logs / "mlperf_log_detail.txt").read_text()


def test_run_accuracy_sh_runs_as_written_and_scores(runs, workdir):
    _ok(runs, "offline_acc")
    script_dir = workdir / "script"
    assert "No errors encountered during test" in (script_dir / "offline_accuracy_log.log").read_text()
    stdout = runs["offline_acc"].stdout
    assert "\nResults\n" in stdout
    scores = eval(stdout.strip().splitlines()[-1], {"__builtins__": {}})  # the reference's one dict line
    outputs = assert_well_formed(read_accuracy_log(offline_logs(workdir)), server=False)
    assert scores["gen_num"] == SAMPLES
    assert scores["gen_tok_len"] == sum(len(v) for v in outputs.values())
    assert 0.0 <= scores["rouge1"] <= 100.0


def test_failed_generation_ends_the_run_with_exit_1_not_a_hang(runs, workdir):
    result = runs["failing"]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 sample(s) failed to generate (first: QSL index 2: RuntimeError: injected failure)" in result.stderr
    answered = {e["qsl_idx"] for e in read_accuracy_log(workdir / "fail_logs")}
    assert answered == set(range(SAMPLES))  # LoadGen got an answer for every sample and finished


def test_server_result_packs_into_a_submission_tree(runs, workdir, tiny_model_dir):
    """The runs above as one Server result: closed refuses it; open refuses what the checker would reject
    in any division and, with --force, writes it in the v6.1 layout."""
    for name in ("plain", "server_acc", "audit_Server"):
        _ok(runs, name)
    acc_dir = workdir / "server_acc"
    scored = run_main(["--checkpoint-path", tiny_model_dir, "--dataset-file", workdir / "data.pkl", "--dtype", "int32",
                       "--mlperf-accuracy-file", acc_dir / "mlperf_log_accuracy.json"], workdir,
                      script="evaluate-accuracy.py")
    assert scored.returncode == 0, scored.stderr[-2000:]
    (acc_dir / "accuracy.txt").write_text(scored.stdout)
    audit_dir = workdir / "audit_Server"
    verify = run_main(["-c", audit_dir / "logs", "-o", audit_dir / "for_submission", "-s", "Server"], cwd=audit_dir,
                      script=str(REPO / "compliance" / "TEST06" / "run_verification.py"))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    def pack(division, root, *extra):
        return run_main(["--root", root, "--division", division, "--submitter", "Acme", "--system", "tiny_cpu",
                         "--scenario", "Server", "--performance-dir", workdir / "plain" / "logs",
                         "--accuracy-dir", acc_dir, "--test06-dir", audit_dir / "for_submission",
                         "--status", "available", "--allow-modified-source", *extra,
                         *[a for f in ("cooling=air", "host_networking=none", "host_networking_topology=none",
                                       "host_memory_configuration=unknown") for a in ("--system-field", f)]],
                        workdir, script=str(REPO / "mlperf_llama2" / "submission" / "__main__.py"))

    closed = pack("closed", workdir / "sub_closed")
    assert closed.returncode == 2 and not (workdir / "sub_closed").exists()
    for problem in ("min_duration 0 ms < 600000 ms", f"covers {SAMPLES} samples, the dataset has 24576",
                    "below the llama2-70b-99.9 target", "outputs capped at --max-new-tokens",
                    "user.conf loosened ttft_latency to 60000 ms", "target_latency_percentile 50 (rule: 99)"):
        assert problem in closed.stderr, closed.stderr

    opened = pack("open", workdir / "sub_open")  # duration and sample counts are errors in open too
    assert opened.returncode == 2 and "performance_sample_count 6 < 24576" in opened.stderr
    opened = pack("open", workdir / "sub_open", "--force")
    assert opened.returncode == 0, opened.stderr
    result = workdir / "sub_open" / "open" / "Acme" / "results" / "tiny_cpu" / "llama2-70b-99.9" / "Server"
    for path in ("performance/run_1/mlperf_log_detail.txt", "performance/run_1/mlperf_log_summary.txt",
                 "accuracy/mlperf_log_detail.txt", "accuracy/mlperf_log_accuracy.json", "accuracy/accuracy.txt",
                 "TEST06/verify_accuracy.txt", "TEST06/accuracy/mlperf_log_accuracy.json", "user.conf", "README.md"):
        assert (result / path).is_file(), path
    assert (result / "user.conf").read_text() == VALID_SERVER_USER_CONF
    assert (result / "accuracy" / "mlperf_log_accuracy.json").read_bytes() == \
        truncated((acc_dir / "mlperf_log_accuracy.json").read_bytes())
    measurements = json.loads((result / "measurements.json").read_text())
    assert measurements["weight_data_types"] == "fp32" and measurements["weight_transformations"] == "none"
    assert measurements["starting_weights_filename"] == Path(tiny_model_dir).name
    readme = (result / "README.md").read_text()
    assert "--scenario Server" in readme and "--accuracy" in readme  # both runs' command lines
    system = json.loads((workdir / "sub_open" / "open" / "Acme" / "systems" / "tiny_cpu.json").read_text())
    assert system["division"] == "open" and system["submitter"] == "Acme" and system["accelerator_model_name"] == "N/A"
