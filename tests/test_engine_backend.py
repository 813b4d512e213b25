"""`--backend engine`: the Backend contract directly, and main.py runs under LoadGen (CPU, tiny models).

Directly: submit returns at once, each request gets its first token before its completion, outputs
equal per-sample `generate`. Under LoadGen (each run in its own process): Offline and Server
accuracy runs answer every sample once with the same greedy outputs as direct generate, and a
TEST06 audit run in Server passes verification.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch

from loadgen_fixtures import (
    REPO,
    SMALL_USER_CONF,
    direct_generate,
    finish,
    read_accuracy_log,
    run_main,
    start_main,
    summary,
    tokens,
    write_dataset,
)
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.backends.engine import EngineBackend
from mlperf_llama2.backends.registry import choices
from mlperf_llama2.config import EngineConfig, build_parser
from mlperf_llama2.errors import UserError
from mlperf_llama2.faults import FaultPlan, InjectedFault
from mlperf_llama2.postprocess import cut_after_first_eos

MAX_NEW = 8
EOS = 2
SMALL = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_kv_blocks=128)


class RecordingSink:
    def __init__(self, expected: int):
        self.events: list[tuple[str, int, object]] = []
        self.done = threading.Event()
        self.expected = expected
        self.lock = threading.Lock()

    def first_token(self, request_id, token):
        with self.lock:
            self.events.append(("first", request_id, token))

    def complete(self, request_id, tokens):
        with self.lock:
            self.events.append(("complete", request_id, list(tokens)))
            if sum(e[0] == "complete" for e in self.events) == self.expected:
                self.done.set()

    def fail(self, request_id, error):
        with self.lock:
            self.events.append(("fail", request_id, error))
        self.done.set()


def test_engine_is_registered():
    assert "engine" in choices()


def test_backend_streams_first_token_then_completes_with_generate_outputs(tiny_model_dir):
    prompts = [[1, 40, 50, 60, 70], [1, 9, 8], [1] + list(range(100, 130)), [1, 77]]
    backend = EngineBackend.from_pretrained(str(tiny_model_dir), SMALL)
    sink = RecordingSink(len(prompts))
    backend.start(sink)
    requests = [GenerationRequest(100 + i, i, p, MAX_NEW) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    backend.submit(requests[:2])
    backend.submit(requests[2:])  # arrives while the first two are in flight
    assert time.perf_counter() - t0 < 0.5  # submit only enqueues
    assert sink.done.wait(120)
    backend.stop()
    want = direct_generate(tiny_model_dir, prompts, MAX_NEW)
    for i, request in enumerate(requests):
        mine = [e for e in sink.events if e[1] == request.request_id]
        assert [e[0] for e in mine] == ["first", "complete"]
        assert mine[0][2] == mine[1][2][0]  # the streamed token is the response's first token
        assert cut_after_first_eos(mine[1][2], EOS) == want[i]


def test_forced_output_lengths_ignore_eos(eos_model_dir):
    backend = EngineBackend(EngineBackend.from_pretrained(str(eos_model_dir), SMALL).engine,
                            forced_output_lengths={0: 5, 1: 11})
    sink = RecordingSink(2)
    backend.start(sink)
    backend.submit([GenerationRequest(1, 0, [1, 40, 50], MAX_NEW), GenerationRequest(2, 1, [1, 60], MAX_NEW)])
    assert sink.done.wait(120)
    backend.stop()
    lengths = {e[1]: len(e[2]) for e in sink.events if e[0] == "complete"}
    assert lengths == {1: 5, 2: 11}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer_dir, tiny_model_dir, eos_model_dir):
    root = tmp_path_factory.mktemp("engine_loadgen")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    (root / "audit").mkdir()
    shutil.copy(REPO / "compliance" / "TEST06" / "audit.config", root / "audit")

    def args(model, out, *extra):
        return ["--backend", "engine", "--model-path", model, "--dataset-path", root / "data.pkl",
                "--user-conf", root / "user.conf", "--max-new-tokens", MAX_NEW, "--output-log-dir", out,
                "--num-kv-blocks", 256, "--max-num-batched-tokens", 32, "--no-progress", *extra]

    started = {
        "offline": start_main(args(tiny_model_dir, "offline", "--accuracy"), root),
        "server": start_main(args(tiny_model_dir, "server", "--scenario", "Server", "--accuracy"), root),
        "audit": start_main(args(eos_model_dir, "logs", "--scenario", "Server"), root / "audit"),
    }
    return root, {name: finish(proc) for name, proc in started.items()}


def test_loadgen_offline_and_server_match_direct_generate(runs, tiny_model_dir):
    from mlperf_llama2.data.dataset import load_dataset

    root, results = runs
    outputs = {}
    for name in ("offline", "server"):
        assert results[name].returncode == 0, results[name].stderr[-3000:]
        assert "No errors encountered during test" in summary(root / name)
        entries = read_accuracy_log(root / name)
        assert sorted(e["qsl_idx"] for e in entries) == list(range(6))
        for e in entries:
            assert e["token_count"] == len(tokens(e["data"])) >= 2
            if name == "server":
                assert tokens(e["token_data"]).tolist() == tokens(e["data"])[:1].tolist()
        outputs[name] = {e["qsl_idx"]: tokens(e["data"]).tolist() for e in entries}
    direct = dict(enumerate(direct_generate(tiny_model_dir, load_dataset(str(root / "data.pkl")).prompts, MAX_NEW)))
    assert outputs["offline"] == outputs["server"] == direct


def test_loadgen_server_audit_passes_test06(runs):
    root, results = runs
    assert results["audit"].returncode == 0, results["audit"].stderr[-3000:]
    audit = root / "audit"
    verify = run_main(["-c", audit / "logs", "-o", audit / "verified", "-s", "Server"], cwd=audit,
                      script=str(REPO / "compliance" / "TEST06" / "run_verification.py"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (audit / "verified" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    assert report[:3] == ["First token check pass: True", "EOS check pass: True", "Sample length check pass: True"]


def test_a_fault_plan_given_at_construction_fails_the_step_holding_its_sample(tiny_model_dir):
    engine = EngineBackend.from_pretrained(str(tiny_model_dir), SMALL).engine
    assert engine.before_step is None  # no plan: the engine's steps are untouched
    backend = EngineBackend(engine, faults=FaultPlan.parse("error@sample=7"))
    sink = RecordingSink(2)
    backend.start(sink)
    backend.submit([GenerationRequest(1, 3, [1, 40, 50], MAX_NEW), GenerationRequest(2, 7, [1, 60], MAX_NEW)])
    assert sink.done.wait(120)
    backend.stop()
    assert sorted(e[1] for e in sink.events if e[0] == "fail") == [1, 2]  # the loop fails every outstanding one
    assert all(isinstance(e[2], InjectedFault) for e in sink.events if e[0] == "fail")


def test_engine_ops_are_chosen_by_the_config():
    from mlperf_llama2.engine.ops import EagerOps, FusedOps, ops_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ops_for(cpu, "auto") is EagerOps and ops_for(cuda, "auto") is FusedOps
    assert ops_for(cuda, "eager") is EagerOps and ops_for(cpu, "fused") is FusedOps
    assert EngineConfig.from_cli_args(build_parser().parse_args(["--engine-ops", "eager"])).ops == "eager"
    with pytest.raises(UserError, match="--engine-ops must be one of auto, eager, fused, got 'triton'"):
        EngineConfig(ops="triton")
