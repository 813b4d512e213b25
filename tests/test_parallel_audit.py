"""Hostile inputs and failing ranks for tensor/data parallelism: one line before anything starts, and a rank that
dies or hangs mid-run fails the step with a line naming it instead of leaving rank 0 waiting on a collective."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from parallel_fixtures import SMALL_ENGINE
from mlperf_llama2.config import RunConfig
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.parallel import tp_group
from mlperf_llama2.parallel.tp_group import ShardSpec, start_tp_engine

PROMPT = [[1, 40, 41, 42, 300, 7]]


def _spec(model_dir) -> ShardSpec:
    return ShardSpec(world=2, port=0, base_device="cpu", dtype="float32", engine=dataclasses.asdict(SMALL_ENGINE),
                     model_path=str(model_dir))


@pytest.mark.parametrize("tp,dp", [(3, 2), (4, 1), (3, 1)])
def test_a_split_the_model_cannot_take_is_refused_before_any_process_starts(tiny_model_dir, monkeypatch, tp, dp):
    """The tiny model has 4 heads, 2 KV heads: --tensor-parallel 3 with --data-parallel 2 used to start two node
    processes that each exited 2, then main.py died with a RuntimeError traceback."""
    from mlperf_llama2.backends import local_nodes, parallel_engine

    def no_process(*args, **kwargs):
        raise AssertionError("a worker or node process was started for a split the model cannot take")

    monkeypatch.setattr(local_nodes.subprocess, "Popen", no_process)
    monkeypatch.setattr(tp_group, "spawn_workers", no_process)
    cfg = RunConfig(backend="engine", model_path=str(tiny_model_dir), device="cpu", tensor_parallel=tp,
                    data_parallel=dp, engine=SMALL_ENGINE)
    with pytest.raises(UserError, match=rf"--tensor-parallel {tp}: the model has .*: 1, 2$"):
        parallel_engine.create_engine_backend(cfg)


def test_a_node_that_refuses_its_flags_is_one_line_naming_the_replica():
    from mlperf_llama2.backends.local_nodes import _wait_ready

    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(2)"], stdout=subprocess.PIPE, text=True)
    with pytest.raises(UserError, match=r"replica1 .* exited with code 2 before it was ready"):
        _wait_ready(proc, 30.0, "local SUT node replica1 (--tensor-parallel 2 from cpu)")


def test_a_killed_worker_fails_the_next_step_with_a_line_naming_its_rank(tiny_model_dir):
    engine, group = start_tp_engine(_spec(tiny_model_dir))
    worker = group.procs[0]
    try:
        worker.kill()
        worker.wait(timeout=30)
        with pytest.raises(RuntimeError, match=rf"tensor-parallel rank 1 \(pid {worker.pid}\) exited with code -9"):
            engine.generate(PROMPT, SamplingParams(max_new_tokens=4))
    finally:
        group.shutdown()


def test_a_hung_worker_fails_the_step_after_the_step_timeout_instead_of_waiting(tiny_model_dir, monkeypatch):
    """A stopped worker (SIGSTOP: alive, never answering) used to hold rank 0 in a collective for its 30-minute
    timeout; the watchdog kills the workers after STEP_TIMEOUT_S and the step fails naming them."""
    monkeypatch.setattr(tp_group, "STEP_TIMEOUT_S", 3.0)
    engine, group = start_tp_engine(_spec(tiny_model_dir))
    worker = group.procs[0]
    # without the watchdog the step would never return: end the test's wait after 60 s (and fail below)
    rescue = threading.Timer(60.0, lambda: worker.poll() is None and os.kill(worker.pid, signal.SIGKILL))
    rescue.start()
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"did not finish within 3 s: a rank hangs \(workers: rank 1 pid "
                                               rf"{worker.pid}\)"):
            engine.generate(PROMPT, SamplingParams(max_new_tokens=4))
        assert time.monotonic() - t0 < 30
    finally:
        rescue.cancel()
        group.shutdown()


def test_a_clean_shutdown_is_not_reported_as_a_dead_rank(tiny_model_dir, caplog):
    engine, group = start_tp_engine(_spec(tiny_model_dir))
    workers = list(group.procs)
    try:
        assert engine.generate(PROMPT, SamplingParams(max_new_tokens=4))
    finally:
        group.shutdown()
    time.sleep(tp_group.WATCH_INTERVAL_S * 2)  # the watchdog had the chance to look at the exited workers
    assert [p.returncode for p in workers] == [0]
    assert group.failure is None and "exited with code" not in caplog.text


def test_a_worker_that_fails_to_load_is_one_line_naming_its_rank(tiny_model_dir, monkeypatch):
    """Rank 1 cannot load its shard (here: its checkpoint is missing): rank 0's first collective broke with gloo's
    "Connection closed by peer" and main.py printed a traceback naming no rank."""
    spawn = tp_group.spawn_workers
    monkeypatch.setattr(tp_group, "spawn_workers",
                        lambda spec: spawn(dataclasses.replace(spec, model_path=str(tiny_model_dir) + "-missing")))
    with pytest.raises(UserError, match=r"^tensor-parallel rank 1 \(pid \d+\) exited with code 1 while the "
                                        r"tensor-parallel group started \(2 ranks from cpu\)"):
        start_tp_engine(_spec(tiny_model_dir))
