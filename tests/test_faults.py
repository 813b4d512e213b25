"""Faults during a run: an error or CUDA out-of-memory in a generate step is retried (smaller batch,
then the sample alone) and changes no output; a sample that can never be generated ends the run
with exit 1 and one clear line, and LoadGen still finishes (bounded by a timeout: no hang).

Faults are injected with MLPERF_LLAMA2_FAULTS (mlperf_llama2.faults), parsed once per process.
"""

from __future__ import annotations

import pytest

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.backends.retry import GenerationStopped, generate_with_retry
from mlperf_llama2.errors import UserError
from mlperf_llama2.faults import FaultPlan, InjectedFault, is_out_of_memory, parse_rule
from reliability_fixtures import accuracy_by_index, error_lines, finish, start

SAMPLES = 6
MAX_NEW = 8
RUN_TIMEOUT_S = 240


# --- the fault plan -------------------------------------------------------------------------------

def test_spec_parses_every_kind_and_target():
    plan = FaultPlan.parse("oom@batch=2, error@sample=5,always@sample=7,sleep@sample=*:0.5")
    assert [str(r) for r in plan.rules] == ["oom@batch=2", "error@sample=5", "always@sample=7", "sleep@sample=*:0.5"]
    assert not FaultPlan.parse("")


@pytest.mark.parametrize("bad", ["oom", "oom@batch", "crash@batch=1", "oom@row=1", "oom@batch=0", "error@sample=x",
                                 "error@sample=1:2", "sleep@batch=1:soon"])
def test_bad_spec_is_one_line_user_error(bad):
    with pytest.raises(UserError) as info:
        parse_rule(bad)
    assert "MLPERF_LLAMA2_FAULTS" in str(info.value) and "\n" not in str(info.value)


def test_once_rules_fire_once_and_always_rules_every_time():
    plan = FaultPlan.parse("oom@batch=2,error@sample=5,always@sample=7")
    plan.check([0, 1])  # call 1: nothing
    with pytest.raises(Exception) as oom:
        plan.check([2, 3])  # call 2: oom
    assert is_out_of_memory(oom.value) and type(oom.value).__name__ == "OutOfMemoryError"
    with pytest.raises(InjectedFault):
        plan.check([4, 5])
    plan.check([5])  # error@sample=5 already fired
    for _ in range(3):
        with pytest.raises(InjectedFault):
            plan.check([7])


# --- retry ----------------------------------------------------------------------------------------

def _requests(n):
    return [GenerationRequest(request_id=100 + i, sample_index=i, prompt=(1, 5 + i), max_new_tokens=4)
            for i in range(n)]


def _model(batch):
    """A deterministic 'model': each sample's output depends only on its own prompt."""
    return [[r.sample_index, r.sample_index + 1, 2] for r in batch]


def test_retry_halves_then_isolates_and_outputs_equal_a_clean_step():
    plan = FaultPlan.parse("oom@batch=1,error@sample=5")
    calls = []
    freed = []

    def generate(batch):
        calls.append([r.sample_index for r in batch])
        plan.check(r.sample_index for r in batch)
        return _model(batch)

    batch = _requests(8)
    outcomes = generate_with_retry(generate, batch, on_out_of_memory=lambda: freed.append(True))
    assert [o.request for o in outcomes] == batch
    assert [o.tokens for o in outcomes] == _model(batch)
    assert all(o.error is None for o in outcomes)
    assert freed == [True]  # the out-of-memory hook ran once, for the oom
    # [0..7] oom -> [0..3] ok, [4..7] error at sample 5 -> [4, 5] ok (once-rule spent), [6, 7] ok
    assert calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [6, 7]]


def test_a_sample_that_always_fails_is_reported_and_the_others_complete():
    plan = FaultPlan.parse("always@sample=2")

    def generate(batch):
        plan.check(r.sample_index for r in batch)
        return _model(batch)

    outcomes = generate_with_retry(generate, _requests(4))
    failed = [o.request.sample_index for o in outcomes if o.error is not None]
    assert failed == [2]
    assert isinstance(outcomes[2].error, InjectedFault)
    assert [o.tokens for o in outcomes if o.error is None] == _model([_requests(4)[i] for i in (0, 1, 3)])


def test_a_stopping_backend_is_not_retried():
    calls = []

    def generate(batch):
        calls.append(len(batch))
        raise GenerationStopped("stopping")

    outcomes = generate_with_retry(generate, _requests(4))
    assert calls == [4]
    assert all(isinstance(o.error, GenerationStopped) for o in outcomes)


# --- whole runs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("faults")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)

    def args(out, *extra):
        return ["--model-path", tiny_model_dir, "--dataset-path", root / "data.pkl", "--user-conf", root / "user.conf",
                "--max-new-tokens", MAX_NEW, "--device", "cpu", "--accuracy", "--output-log-dir", root / out, *extra]

    started = {
        "clean": start(args("clean", "--batch-size", 4), root),
        "offline_faults": start(args("offline_faults", "--batch-size", 4), root,
                                env={"MLPERF_LLAMA2_FAULTS": "oom@batch=1,error@sample=5,oom@sample=4"}),
        "server_faults": start(args("server_faults", "--scenario", "Server"), root,
                               env={"MLPERF_LLAMA2_FAULTS": "error@sample=1,oom@sample=3"}),
        "always": start(args("always", "--batch-size", 2), root, env={"MLPERF_LLAMA2_FAULTS": "always@sample=3"}),
        # The engine does not retry a step: an injected error fails the run, cleanly.
        "engine_step_fails": start(args("engine_step_fails", "--backend", "engine"), root,
                                   env={"MLPERF_LLAMA2_FAULTS": "error@sample=2"}),
    }
    results = {name: finish(proc, RUN_TIMEOUT_S) for name, proc in started.items()}
    return root, results


@pytest.mark.parametrize("name", ["offline_faults", "server_faults"])
def test_injected_faults_are_retried_and_the_accuracy_log_equals_a_clean_run(runs, name):
    root, results = runs
    assert results["clean"].returncode == 0, results["clean"].stderr[-3000:]
    result = results[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected" in result.stderr and "retry" in result.stderr
    clean = accuracy_by_index(root / "clean")
    assert sorted(clean) == list(range(SAMPLES))
    assert accuracy_by_index(root / name) == clean
    assert "No errors encountered during test" in (root / name / "mlperf_log_summary.txt").read_text()
    assert not (root / name / "RUN_STOPPED.txt").exists()


def test_a_sample_that_never_generates_ends_the_run_with_exit_1_and_one_line(runs):
    root, results = runs
    result = results["always"]
    assert result.returncode == 1, result.stderr[-3000:]  # not -9: LoadGen finished, no hang
    failed = [line for line in result.stderr.splitlines() if "failed to generate" in line]
    assert len(failed) == 1, result.stderr[-3000:]
    assert "QSL index 3" in failed[0] and "the run is invalid" in failed[0]
    assert "Traceback" not in result.stderr
    answered = accuracy_by_index(root / "always")
    assert sorted(answered) == list(range(SAMPLES))  # every sample got exactly one answer: LoadGen returned
    assert answered[3] == ""  # the failed sample was answered empty
    assert (root / "always" / "mlperf_log_summary.txt").is_file()
    assert "sample 3 could not be generated" in (root / "always" / "RUN_STOPPED.txt").read_text()
    assert not error_lines(result.stderr)  # a run failure, not a bad-input error


def test_a_failing_engine_step_ends_the_run_with_exit_1_not_a_hang(runs):
    root, results = runs
    result = results["engine_step_fails"]
    assert result.returncode == 1, result.stderr[-3000:]
    failed = [line for line in result.stderr.splitlines() if "failed to generate" in line]
    assert len(failed) == 1 and "injected error@sample=2" in failed[0], result.stderr[-3000:]
    assert sorted(accuracy_by_index(root / "engine_step_fails")) == list(range(SAMPLES))
