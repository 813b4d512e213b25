"""tools/step_timer.py: per-step gap, launch time and wait for tokens, timed from outside the engine."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from loadgen_fixtures import REPO

sys.path.insert(0, str(REPO / "tools"))
from step_timer import StepTimer  # noqa: E402

from mlperf_llama2.engine.config import EngineConfig  # noqa: E402
from mlperf_llama2.engine.llm_engine import LLMEngine  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams  # noqa: E402

PROMPTS = [[1] + list(range(3, 3 + n)) for n in (4, 11, 30, 2)]


@pytest.mark.parametrize("overlap", [True, False])
def test_an_engine_run_is_logged_step_by_step_and_unchanged(tiny_model_dir, overlap):
    def engine():
        config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, block_size=4, num_kv_blocks=64,
                              overlap_steps=overlap)
        return LLMEngine.from_pretrained(str(tiny_model_dir), config, "cpu", torch.float32)

    want = engine().generate(PROMPTS, SamplingParams(6))
    eng = engine()
    name = "launch" if overlap else "run"
    with StepTimer(eng) as timer:
        assert name in vars(eng.runner)
        got = eng.generate(PROMPTS, SamplingParams(6))
    assert got == want
    assert name not in vars(eng.runner) and "step" not in vars(eng)  # the classes' methods again
    rows = timer.rows
    assert len(rows) == eng.num_steps - 1  # the last launched step has no next launch to end its gap
    for decode_only, seqs, tokens, gap, decodes, launch, wait in rows:
        assert 1 <= seqs <= 4 and decodes <= seqs and decodes <= tokens <= 16
        assert decode_only == int(tokens == decodes) and 0 <= launch <= gap and 0 <= wait <= gap
        assert wait == 0 or overlap  # without overlapped steps run() includes the GPU's time
    assert rows[0][0] == 0 and rows[0][2] == 16  # the first step: prompt chunks filling the budget
    s = timer.summary()
    assert s["steps"] == len(rows) and s["step_ms_mean"] == pytest.approx(sum(r[3] for r in rows) / len(rows),
                                                                          abs=1e-3)
    assert (s["host_bound_steps"] is None) != overlap
    assert 0 < s["busy_ms_mean"] and 0 <= s["wait_share"] <= 1


class Output:
    def __init__(self, wait_s):
        self.wait_s = wait_s

    def tokens(self):
        time.sleep(self.wait_s)
        return [0]


class Runner:
    def __init__(self, launch_s, wait_s):
        self.launch_s, self.wait_s = launch_s, wait_s

    def launch(self, batch):
        time.sleep(self.launch_s)
        return Output(self.wait_s)


class Batch:
    is_decode_only, items, num_tokens, num_decodes = True, [1, 2], 2, 2


class Engine:
    overlap = True

    def __init__(self, launch_s, wait_s):
        self.runner = Runner(launch_s, wait_s)
        self.pending = None

    def step(self):
        """The overlapped loop's order: launch step N, then read back step N-1's tokens."""
        out = self.runner.launch(Batch())
        if self.pending is not None:
            self.pending.tokens()
        self.pending = out


@pytest.mark.parametrize("launch_s,wait_s,bound", [(0.012, 0.0, 1.0), (0.001, 0.015, 0.0)])
def test_the_summary_says_whether_steps_waited_on_the_gpu(launch_s, wait_s, bound):
    eng = Engine(launch_s, wait_s)
    with StepTimer(eng) as timer:
        for _ in range(6):
            eng.step()
            time.sleep(0.02)  # the loop idle between steps (Server between arrivals): not the host's work
    assert "step" not in vars(eng) and "launch" not in vars(eng.runner)
    s = timer.summary()
    assert s["steps"] == 5 and s["host_bound_steps"] == bound
    assert (s["wait_share"] > 0.5) == (bound == 0.0)  # of the busy time: the idle 20 ms do not dilute it
    assert s["launch_ms_mean"] >= launch_s * 1e3
    assert s["step_ms_mean"] >= s["busy_ms_mean"] + 15  # the gaps hold the idle time, busy time does not
