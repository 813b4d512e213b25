"""tools/host_profile.py: the host-time profile of an eagerly launched step (profile_step.py --host-profile)."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from loadgen_fixtures import REPO

sys.path.insert(0, str(REPO / "tools"))
import host_profile  # noqa: E402

from mlperf_llama2.engine.config import EngineConfig  # noqa: E402
from mlperf_llama2.engine.llm_engine import LLMEngine  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams  # noqa: E402


def test_it_finds_the_function_that_takes_the_time():
    calls = []

    def slow_part():
        t = 0
        for i in range(20000):
            t += i
        return t

    def launch():
        calls.append(1)
        return [slow_part() for _ in range(3)]

    waits = []
    prof = host_profile.host_profile(launch, reps=4, sync=lambda: (waits.append(1), time.sleep(0.05)), top=5)
    assert len(waits) == 1 + 4 + 4
    assert prof["profiled_ms"] < 50  # the 50 ms waits after each launch are not the launch's host time
    assert len(calls) == 1 + 4 + 4  # warm-up, timed, profiled
    top = prof["functions"][0]
    assert "slow_part" in top["function"] and top["calls_per_step"] == 3
    assert top["own_us_per_step"] > 0.5 * prof["profiled_own_us_per_step"]
    assert prof["launch_ms"] > 0 and len(prof["functions"]) <= 5
    text = "\n".join(host_profile.lines(prof, "fake step"))
    assert "host time of one fake step" in text and "slow_part" in text
    with pytest.raises(ValueError, match="reps must be >= 1"):
        host_profile.host_profile(launch, 0, lambda: None)


def test_the_ab_interleaves_the_switch_and_times_each_way():
    state, order = {"on": None}, []

    def launch():
        order.append(state["on"])
        time.sleep(0.002 if state["on"] else 0.012)  # the switch makes the launch faster

    ab = host_profile.launch_ab(launch, reps=3, sync=lambda: None, switch=lambda flag: state.update(on=flag))
    assert order == [False, True] * 4  # a warm-up each way, then off/on interleaved
    assert state["on"] is True and ab["reps"] == 3
    assert 10 <= ab["off_ms"] < 50 and 1.5 <= ab["on_ms"] < ab["off_ms"] - 5
    with pytest.raises(ValueError, match="reps must be >= 1"):
        host_profile.launch_ab(launch, 0, lambda: None, lambda flag: None)


def test_an_engine_step_names_the_model_forward(tiny_model_dir):
    """On the CPU an engine step runs synchronously, but the profile still says which of our functions the host
    spends a step in: the model's forward and its layers appear with one call per layer."""
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), EngineConfig(num_kv_blocks=64), "cpu", torch.float32)
    engine.add_request(0, [1, 5, 6, 7, 8], SamplingParams(40, ignore_eos=True))
    prof = host_profile.host_profile(engine.step, reps=3, sync=lambda: None, top=200)  # 7 steps of one sequence
    layers = engine.runner.model.shape.num_layers
    forward = [r for r in prof["functions"] if r["function"].startswith("mlperf_llama2/engine/llama.py")
               and "(forward)" in r["function"]]
    assert forward and layers in {round(r["calls_per_step"]) for r in forward}  # DecoderLayer.forward, per layer
