"""`--graph-mixed-tokens N`: steps that prefill prompt chunks, up to N tokens with the decodes, run as rows of the
decode path (CUDA: they replay the decode graphs). The row layout (`ModelRunner._flat_rows`), the flag's
checks and its way to SUT nodes; the tokens against `generate` are in test_engine_fidelity.py (compositions
flat_rows*) and against the simulate paths in the quantized-mode tests (quant_engine_fixtures: flat_rows)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch

from mlperf_llama2.backends import preflight
from mlperf_llama2.config import RunConfig
from mlperf_llama2.engine.config import EngineConfig
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.scheduler import ScheduledBatch
from mlperf_llama2.engine.sequence import SamplingParams, Sequence, Status
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.config import QuantConfig
from reliability_fixtures import REPO

NPM = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")


def test_flag_parses_defaults_by_scenario_and_reaches_nodes():
    from mlperf_llama2.backends.local_nodes import node_argv

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    assert EngineConfig.from_cli_args(parser.parse_args([])).graph_mixed_tokens == 0
    for scenario, graphs, argv, want in [
        ("Offline", True, [], 0), ("Server", True, [], 0), ("Interactive", True, [], 512),
        ("Interactive", False, [], 0),  # no decode graphs to replay: the default is off, not refused
        ("Interactive", True, ["--no-cuda-graphs"], 0),
        ("Interactive", True, ["--graph-mixed-tokens", "0"], 0), ("Offline", True, ["--graph-mixed-tokens", "64"], 64),
    ]:
        got = EngineConfig.from_cli_args(parser.parse_args(argv), scenario, graphs).graph_mixed_tokens
        assert got == want, (scenario, graphs, argv)
    assert EngineConfig.from_cli_args(parser.parse_args(["--graph-mixed-tokens", "512"])).graph_mixed_tokens == 512
    for bad in (-1, 1025):
        with pytest.raises(UserError, match=rf"--graph-mixed-tokens must be 0-1024 \(0: mixed steps .*got {bad}$"):
            EngineConfig(graph_mixed_tokens=bad)
    assert EngineConfig(graph_mixed_tokens=1024).graph_mixed_tokens == 1024
    argv = node_argv(RunConfig(backend="engine", model_path="m", engine=EngineConfig(graph_mixed_tokens=256)),
                     "cuda:0")
    assert argv[argv.index("--graph-mixed-tokens") + 1] == "256"


@pytest.mark.parametrize("backend,device,config,rules,want", [
    ("engine", "cuda", None, "all", True), ("engine", "cuda:1", None, "all", True),
    ("engine", "cpu", None, "all", False), ("reference", "cuda", None, "all", False),
    ("api", "cpu", None, "all", False),
    ("engine", "cuda", NPM, "all", False),  # the whole config runs its own prompt attention
    ("engine", "cuda", NPM, "linear", True),
])
def test_which_runs_can_replay_mixed_steps(backend, device, config, rules, want):
    from mlperf_llama2.engine.config import mixed_steps_can_use_graphs

    assert mixed_steps_can_use_graphs(backend, device, config, rules) is want


@pytest.mark.parametrize("argv,backend,want", [
    (["--scenario", "Interactive"], "reference", 0),  # CPU: the reference backend by default, the flag not refused
    (["--scenario", "Interactive", "--backend", "engine"], "engine", 0),  # an engine on the CPU: no graphs
    (["--scenario", "Server", "--lg-model-name", "llama2-70b-interactive", "--backend", "engine"], "engine", 0),
])
def test_main_py_interactive_on_a_cpu_passes_preflight(argv, backend, want, tiny_model_dir):
    """The Interactive default is off wherever there are no CUDA graphs, so a CPU run is not refused by it."""
    from mlperf_llama2.backends import registry
    from mlperf_llama2.config import build_parser

    ns = build_parser().parse_args(["--model-path", str(tiny_model_dir), "--device", "cpu", *argv])
    cfg = RunConfig.from_cli_args(ns)
    assert (cfg.backend, cfg.engine.graph_mixed_tokens) == (backend, want)
    assert registry.check(cfg) is not None  # the pre-flight checks pass (they would refuse a non-zero value here)


@pytest.mark.parametrize("backend,check", [("reference", preflight.check_reference), ("api", preflight.check_api)])
def test_other_backends_refuse_the_flag_in_one_line(backend, check):
    cfg = RunConfig(backend=backend, model_path="m", engine=EngineConfig(graph_mixed_tokens=64))
    cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, api_servers=("http://localhost:1",)))
    with pytest.raises(UserError) as info:
        check(cfg)
    message = str(info.value)
    assert f"--graph-mixed-tokens 64 is how the engine runs its steps: use --backend engine (--backend {backend}" \
        in message and "\n" not in message


@pytest.mark.parametrize("device,graphs,message", [
    ("cpu", True, "--graph-mixed-tokens 64 replays CUDA graphs: --device cpu has none (leave it at 0)"),
    ("cuda", False, "--graph-mixed-tokens 64 replays the decode CUDA graphs, which --no-cuda-graphs turns off"),
])
def test_without_graphs_the_flag_is_one_line(device, graphs, message):
    cfg = RunConfig(backend="engine", device=device, model_path="m",
                    engine=EngineConfig(graph_mixed_tokens=64, cuda_graphs=graphs))
    with pytest.raises(UserError) as info:
        preflight.check_engine(cfg)
    assert str(info.value) == message


def test_the_whole_config_refuses_the_flag_before_loading(tiny_model_dir):
    cfg = RunConfig(backend="engine", device="cuda", model_path=str(tiny_model_dir),
                    engine=EngineConfig(graph_mixed_tokens=64),
                    quant=QuantConfig(liteml_config=NPM, quant_mode="int8", int8_rules="all"))
    with pytest.raises(UserError) as info:
        preflight.check_engine(cfg)
    assert "--graph-mixed-tokens 64 with --int8-rules all" in str(info.value) and "\n" not in str(info.value)


def _running(engine, request_id: int, prompt: list[int], computed: int, output: list[int] = ()) -> Sequence:
    seq = Sequence.create(request_id, prompt, SamplingParams(8, min_new_tokens=2))
    seq.status = Status.RUNNING
    seq.output = list(output)
    engine.scheduler.block_manager.allocate(seq, len(prompt) + len(output) + 1)
    seq.num_computed_tokens = computed
    return seq


def test_rows_lay_out_decodes_then_prompt_chunks_with_causal_contexts(tiny_model_dir):
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_kv_blocks=64,
                          graph_mixed_tokens=64)
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), config, "cpu", torch.float32)
    runner = engine.runner
    # a decode whose input token is in flight (sampled by the last step, row 3 of its output), a decode whose
    # input is known, and a prompt's second chunk (positions 5..10 after a 5-token prefix)
    inflight = _running(engine, 0, [1, 7, 8], computed=3)
    inflight.num_inflight, inflight.inflight_row = 1, 3
    known = _running(engine, 1, [1, 9], computed=3, output=[11, 12])
    chunk = _running(engine, 2, list(range(1, 15)), computed=5)
    batch = ScheduledBatch(items=[(inflight, 1), (known, 1), (chunk, 6)])
    rows = runner._flat_rows(batch, 12)

    assert rows["ids"].tolist() == [0, 12, 6, 7, 8, 9, 10, 11] + [0] * 4
    assert rows["fix_rows"].tolist() == [0] and rows["fix_src"].tolist() == [3]
    assert rows["pos"][:8].tolist() == [3, 3, 5, 6, 7, 8, 9, 10]
    assert rows["ctx"].tolist() == [4, 4, 6, 7, 8, 9, 10, 11] + [1] * 4  # each row sees itself and what precedes it
    assert rows["last_rows"].tolist() == [0, 1, 7]
    assert rows["suppress"][:8].tolist() == [1, 0] + [1] * 6  # below min_new_tokens 2 / not / no output yet
    for r, (seq, p) in enumerate([(inflight, 3), (known, 3)] + [(chunk, p) for p in range(5, 11)]):
        table = seq.block_table
        assert rows["tables"][r, :len(table)].tolist() == table
        assert rows["slots"][r] == table[p // 4] * 4 + p % 4
    scratch = runner.scratch_block
    assert (rows["tables"][8:] == scratch).all() and (rows["slots"][8:] == scratch * 4).all()  # padded rows
    # the rows' groups for the CUDA kernel (flat_row_groups on CUDA only): each decode alone, the chunk's six rows
    # in one group (at most 8), the four padded rows (context 1 each, unrelated) alone; the rest empty
    assert "groups" not in rows
    runner.flat_row_groups, runner.device = True, torch.device("cuda")  # the layout only: nothing runs on it
    rows = runner._flat_rows(batch, 12)
    runner.flat_row_groups, runner.device = False, torch.device("cpu")
    assert [tuple(g) for g in rows["groups"][:7]] == [(0, 1, 4), (1, 1, 4), (2, 6, 6), (8, 1, 1), (9, 1, 1),
                                                       (10, 1, 1), (11, 1, 1)]
    assert not rows["groups"][7:].any() and rows["groups"].dtype == np.int32


def test_a_step_with_a_prompt_runs_flat_only_up_to_the_flag(tiny_model_dir):
    """The same prompts under flags 0 / 10 / 16 (steps of up to 16 tokens): tokens equal; the flag decides how
    many steps with prompt chunks ran flat (decode-only steps never: they have their own graphs)."""
    prompts = [[1] + list(range(3, 3 + n)) for n in (4, 11, 30)]
    counts, outs = [], []
    for n in (0, 10, 16):
        config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=16, block_size=4, num_kv_blocks=64,
                              graph_mixed_tokens=n)
        engine = LLMEngine.from_pretrained(str(tiny_model_dir), config, "cpu", torch.float32)
        outs.append(engine.generate(prompts, SamplingParams(6)))
        counts.append(engine.runner.flat_steps)
    assert outs[0] == outs[1] == outs[2]
    assert counts[0] == 0 < counts[1] < counts[2]
    assert np.all(np.asarray([len(o) for o in outs[0]]) >= 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_main_py_interactive_on_cuda_defaults_to_flat_steps(tiny_model_dir):
    from mlperf_llama2.config import build_parser

    def engine_of(*argv):
        ns = build_parser().parse_args(["--model-path", str(tiny_model_dir), "--device", "cuda", *argv])
        return RunConfig.from_cli_args(ns).engine

    assert engine_of("--scenario", "Interactive").graph_mixed_tokens == 512
    assert engine_of("--scenario", "Server", "--lg-model-name", "llama2-70b-interactive").graph_mixed_tokens == 512
    assert engine_of("--scenario", "Server").graph_mixed_tokens == 0
    assert engine_of("--scenario", "Offline").graph_mixed_tokens == 0
    assert engine_of("--scenario", "Interactive", "--no-cuda-graphs").graph_mixed_tokens == 0
    assert engine_of("--scenario", "Interactive", "--graph-mixed-tokens", "128").graph_mixed_tokens == 128
