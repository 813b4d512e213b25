"""Data parallelism: requests spread by least outstanding tokens; every request answered once, same tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from parallel_fixtures import SMALL_ENGINE, RecordingSink
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.config import RunConfig
from mlperf_llama2.backends.parallel_engine import create_engine_backend
from mlperf_llama2.parallel.routing import LeastLoadedRouter
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams

NEW = 12
PROMPTS = [[1] + list(range(10 + i, 10 + i + 3 * i + 2)) for i in range(8)]


def test_router_sends_to_least_outstanding_tokens_and_releases():
    router = LeastLoadedRouter(2)
    assert router.assign(1, 100) == 0
    assert router.assign(2, 30) == 1
    assert router.assign(3, 30) == 1  # 30 < 100
    assert router.assign(4, 50) == 1  # 60 < 100
    assert router.outstanding_tokens == [100, 110]
    assert router.release(1) == 0 and router.release(1) is None  # a second release is ignored
    assert router.assign(5, 1) == 0
    assert router.outstanding_requests == [1, 3]


def test_dp2_answers_every_request_once_with_single_engine_tokens(tiny_model_dir):
    expected = LLMEngine.from_pretrained(str(tiny_model_dir), SMALL_ENGINE, "cpu", torch.float32).generate(
        PROMPTS, SamplingParams(max_new_tokens=NEW))
    config = RunConfig(backend="engine", model_path=str(tiny_model_dir), device="cpu", data_parallel=2,
                       engine=SMALL_ENGINE)
    backend = create_engine_backend(config)
    sink = RecordingSink()
    backend.start(sink)
    try:
        requests = [GenerationRequest(100 + i, i, p, NEW) for i, p in enumerate(PROMPTS)]
        backend.submit(requests[:5])  # an Offline-style query, then Server-style single requests
        for req in requests[5:]:
            backend.submit([req])
        sink.wait(len(PROMPTS))
    finally:
        backend.stop()
    assert not sink.failed
    assert sorted(sink.completed) == [100 + i for i in range(len(PROMPTS))]
    assert all(len(v) == 1 for v in sink.completed.values())  # exactly once
    assert [sink.completed[100 + i][0] for i in range(len(PROMPTS))] == expected
    assert all(sink.first[rid] == [outs[0][0]] for rid, outs in sink.completed.items())  # streamed first token
    assert len(backend.submitted) == 2 and min(backend.submitted) >= 2  # both replicas worked
    assert backend.router.outstanding_tokens == [0, 0]


def test_node_argv_rebuilds_the_replica_config():
    """DP x TP replicas are local node processes: their flags must rebuild this run's model settings."""
    import dataclasses

    from mlperf_llama2.config import EngineConfig, QuantConfig
    from mlperf_llama2.backends.local_nodes import (ENGINE_FLAGS, ENGINE_SWITCHES, ENGINE_TOOL_ONLY, QUANT_FLAGS,
                                                    QUANT_SWITCHES, node_argv)
    from mlperf_llama2.sut_node import build_node_parser

    # a new knob must be passed on to the nodes
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(ENGINE_FLAGS) | set(ENGINE_SWITCHES) | ENGINE_TOOL_ONLY == fields
    assert not ENGINE_TOOL_ONLY & set(vars(build_node_parser().parse_args(["--model-path", "m"])))  # no flag sets them
    assert set(QUANT_FLAGS) | set(QUANT_SWITCHES) == {f.name for f in dataclasses.fields(QuantConfig)}
    engine = EngineConfig(max_num_seqs=7, max_num_batched_tokens=99, block_size=8, kv_cache_memory_fraction=0.5,
                          num_kv_blocks=33, cuda_graphs=False)
    npm = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
    quant = QuantConfig(liteml_config=npm, quant_backend="open", quant_mode="int8", momentum=0.5,
                        rounding="half_away", narrow_range=False, batch_shared_scale=False, int8_rules="linear")
    cfg = RunConfig(backend="engine", model_path="/m", device="cpu", dtype="bfloat16", tensor_parallel=2,
                    data_parallel=3, scenario="Server", engine=engine, quant=quant)
    rebuilt = RunConfig.from_cli_args(build_node_parser().parse_args(node_argv(cfg, "cpu")))
    assert rebuilt.engine == engine and rebuilt.quant == quant
    assert (rebuilt.model_path, rebuilt.dtype, rebuilt.tensor_parallel, rebuilt.data_parallel, rebuilt.scenario) == \
        ("/m", "bfloat16", 2, 1, "Server")


def test_sut_nodes_flag_parses_and_rejects_local_parallelism():
    import pytest

    from mlperf_llama2.config import build_parser
    from mlperf_llama2.errors import UserError

    def parse(*argv):
        return RunConfig.from_cli_args(build_parser().parse_args(["--device", "cpu", *argv]))

    cfg = parse("--sut-nodes", "http://127.0.0.1:1,http://127.0.0.1:2/", "--sut-nodes", "http://10.0.0.3:8000")
    assert cfg.dist.sut_nodes == ("http://127.0.0.1:1", "http://127.0.0.1:2", "http://10.0.0.3:8000")
    with pytest.raises(UserError, match="give --tensor-parallel/--data-parallel to the nodes"):
        parse("--sut-nodes", "http://127.0.0.1:1", "--tensor-parallel", "2")
