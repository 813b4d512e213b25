"""`main.py --vllm` end to end: LoadGen runs whose generation happens on a loopback server.

The server is `tests/api_fake_server.py` in this process (vLLM's token-id protocol, answering with
the tiny model's greedy `generate`); main.py runs in a subprocess. Offline and Server accuracy runs
must log exactly the direct greedy outputs, evaluate-accuracy.py must score them, a Server TEST06
audit run must pass verification, and a bad model name or a failing server must end the run cleanly.
"""

from __future__ import annotations

import shutil

import pytest

from api_fake_server import FakeVllmServer, model_generator
from loadgen_fixtures import (
    REPO,
    SMALL_USER_CONF,
    direct_generate,
    read_accuracy_log,
    run_main,
    tokens,
    write_dataset,
)

MAX_NEW = 8
EOS = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("api_main")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    return root


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with FakeVllmServer(model_generator(tiny_model_dir), model_name="tiny-llama") as fake:
        yield fake


def vllm_main(workdir, model_dir, url, out, *extra, model_name="tiny-llama", cwd=None):
    args = ["--vllm", "--api-server", url, "--api-model-name", model_name, "--api-concurrency", 2,
            "--api-backoff", 0.05, "--model-path", model_dir, "--dataset-path", workdir / "data.pkl",
            "--user-conf", workdir / "user.conf", "--max-new-tokens", MAX_NEW, "--output-log-dir", out, *extra]
    return run_main(args, cwd=cwd or workdir)


def logged_outputs(log_dir) -> dict[int, list[int]]:
    entries = read_accuracy_log(log_dir)
    for e in entries:
        assert e["token_count"] == len(tokens(e["data"])) >= 2
    return {e["qsl_idx"]: tokens(e["data"]).tolist() for e in entries}


@pytest.fixture(scope="module")
def expected(workdir, tiny_model_dir):
    import pandas as pd

    prompts = pd.read_pickle(workdir / "data.pkl")["tok_input"].tolist()
    return dict(enumerate(direct_generate(tiny_model_dir, prompts, MAX_NEW)))


@pytest.fixture(scope="module", params=["Offline", "Server"])
def accuracy_run(request, workdir, server, tiny_model_dir):
    out = workdir / f"acc_{request.param}"
    result = vllm_main(workdir, tiny_model_dir, server.url, out, "--scenario", request.param, "--accuracy")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_accuracy_run_logs_direct_greedy_outputs(accuracy_run, expected):
    assert logged_outputs(accuracy_run) == expected


def test_accuracy_run_is_scored_by_evaluate_accuracy(accuracy_run, workdir, tiny_model_dir, expected):
    if not (REPO / "evaluate-accuracy.py").exists():
        pytest.skip("evaluate-accuracy.py is not on this branch yet")
    scored = run_main(["--checkpoint-path", tiny_model_dir, "--mlperf-accuracy-file",
                       accuracy_run / "mlperf_log_accuracy.json", "--dataset-file", workdir / "data.pkl",
                       "--dtype", "int32"], cwd=workdir, script="evaluate-accuracy.py")
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = eval(scored.stdout.strip().splitlines()[-1], {"__builtins__": {}})
    assert scores["gen_num"] == len(expected)
    assert scores["gen_tok_len"] == sum(len(v) for v in expected.values())
    assert 0.0 <= scores["rouge1"] <= 100.0


def test_server_test06_audit_passes(workdir, eos_model_dir):
    audit_dir = workdir / "audit"
    audit_dir.mkdir()
    shutil.copy(REPO / "compliance" / "TEST06" / "audit.config", audit_dir)
    with FakeVllmServer(model_generator(eos_model_dir), model_name="eos-llama", include_eos=False) as fake:
        result = vllm_main(workdir, eos_model_dir, fake.url, "logs", "--scenario", "Server",
                           model_name="eos-llama", cwd=audit_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    datas = [tokens(e["data"]) for e in read_accuracy_log(audit_dir / "logs")]
    assert len(datas) >= 50 and any(d[-1] == EOS for d in datas)  # EOS appended by the client is checked
    verify = run_main(["-c", audit_dir / "logs", "-o", audit_dir / "verified", "-s", "Server"], cwd=audit_dir,
                      script=str(REPO / "compliance" / "TEST06" / "run_verification.py"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (audit_dir / "verified" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    assert report == ["First token check pass: True", "EOS check pass: True", "Sample length check pass: True",
                      "TEST06 verification complete"]


def test_wrong_model_name_stops_before_loadgen(workdir, server, tiny_model_dir):
    out = workdir / "wrong_name"
    result = vllm_main(workdir, tiny_model_dir, server.url, out, "--accuracy",
                       model_name="meta-llama/Llama-2-70b-chat-hf")
    assert result.returncode == 2
    assert "'meta-llama/Llama-2-70b-chat-hf' is not served by" in result.stderr.strip().splitlines()[-1]
    assert not (out / "mlperf_log_summary.txt").exists()


def test_server_failing_every_retry_ends_the_run_with_exit_1(workdir, tiny_model_dir):
    out = workdir / "failing"
    with FakeVllmServer(model_generator(tiny_model_dir), model_name="tiny-llama", faults=[503] * 1000) as fake:
        result = vllm_main(workdir, tiny_model_dir, fake.url, out, "--accuracy", "--api-retries", 1)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "503" in result.stderr
