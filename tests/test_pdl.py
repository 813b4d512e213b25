"""Programmatic dependent launch (engine/pdl.py, an experiment for the benchmark tools): the switch, which kernels
get it, and what each compiles to. A kernel launched with PDL must wait (`griddepcontrol.wait`, SASS ACQBULK)
before it reads what an earlier kernel wrote; with the switch off the kernels compile exactly as before (no
griddepcontrol at all). The compile tests need triton, not in interpreter mode (they skip in the CI venv); the
GPU test checks tokens and graph capture with it on."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

from mlperf_llama2.engine import pdl  # noqa: E402
from mlperf_llama2.engine.config import EngineConfig  # noqa: E402
from mlperf_llama2.engine.llm_engine import LLMEngine  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams  # noqa: E402

COMPILES = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter compiles nothing")


@pytest.fixture
def switch():
    before = pdl.enabled()
    yield pdl
    pdl.set_enabled(before)


def test_the_switch_adds_the_launch_attribute_only_when_on(switch):
    switch.set_enabled(False)
    assert switch.launch_options() == {} and not switch.enabled()
    switch.set_enabled(True)
    assert switch.launch_options() == {"launch_pdl": True} and switch.enabled()


def test_a_cpu_engine_never_turns_it_on(tiny_model_dir, switch):
    switch.set_enabled(False)
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), EngineConfig(num_kv_blocks=16, pdl=True), "cpu",
                                       torch.float32)
    assert engine.generate([[1, 5, 6]], SamplingParams(3))[0]
    assert not switch.enabled()


def _sass(kernel, consts, ptrs, warps):
    import kernel_sass

    return kernel_sass.report(kernel, consts, ptrs, 90, warps, 2)["sass"]


@COMPILES
@pytest.mark.parametrize("name", ["add_rms_norm_quant", "quant_values", "paged_decode_split", "quant_rows"])
def test_triton_kernels_wait_for_the_kernel_before_only_with_pdl(name):
    pytest.importorskip("triton")
    from mlperf_llama2.engine import fused_quant_triton as fq, paged_decode_triton as pd
    from mlperf_llama2.quant import int8_kernels

    kernel, consts, ptrs, warps = {
        "add_rms_norm_quant": (fq._add_rms_norm_quant_kernel, dict(HAS_DELTA=True, IS_FP8=True, BLOCK=8192,
                                                                   INTERPRET=False), {"s_ptr": "fp32"}, 16),
        "quant_values": (fq._quant_values_kernel, dict(N_COLS=28672, SPLITS=28, BLOCK_S=32, IS_FP8=True, BLOCK=1024,
                                                       INTERPRET=False), {"amax_ptr": "fp32", "s_ptr": "fp32"}, 4),
        "paged_decode_split": (pd._paged_decode_split_kernel, dict(
            GROUP=8, BLOCK_G=16, HEAD_DIM=128, BLOCK_SIZE=16, BLOCK_N=16, SPLITS=1, VEC_TABLE=True, MAGIC=False,
            IEEE=False, QUANT=True), {"k_cache_ptr": "fp8e4nv", "v_cache_ptr": "fp8e4nv", "block_tables_ptr": "i32",
                                      "context_lens_ptr": "i32", "part_ptr": "fp32", "ml_ptr": "fp32",
                                      "scales_ptr": "fp32"}, 1),
        "quant_rows": (int8_kernels._quant_rows_kernel, dict(K=8192, BLOCK=4096, FP8=True), {"s_ptr": "fp32"}, 8),
    }[name]
    off = _sass(kernel, {**consts, "PDL": False}, ptrs, warps)
    on = _sass(kernel, {**consts, "PDL": True}, ptrs, warps)
    assert "ACQBULK" not in off and "PREEXIT" not in off
    assert "ACQBULK" in on and "PREEXIT" in on
    lines = [line for line in on.splitlines() if "/*" in line]
    wait = next(i for i, line in enumerate(lines) if "ACQBULK" in line)
    first_load = next((i for i, line in enumerate(lines) if "LDG" in line), len(lines))
    assert wait < first_load  # nothing is read before the kernel before has finished
    trigger = next(i for i, line in enumerate(lines) if "PREEXIT" in line)
    assert wait < trigger  # the next kernel launches only once this one runs: one kernel ahead, not the chain


@COMPILES
@pytest.mark.parametrize("kind,promote,m", [("fp8", True, 64), ("int8", False, 64), ("fp8", False, 64),
                                            ("fp8", True, 4096), ("int8", False, 4096)])
def test_the_gemm_loads_weights_before_the_wait_and_activations_after(kind, promote, m):
    """The decode step's one-partition tile (M 64) and the large-M tiles (FP8: two MMA partitions, the loader a
    worker that reads PDL from the barrier array's extra slot)."""
    pytest.importorskip("triton.experimental.gluon")
    import re
    import subprocess
    import tempfile

    import triton

    from mlperf_llama2.quant import gemm8_ws as ws

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    cfg = ws.default_config(m, kind, promote)
    assert (cfg.wgs == 2) == (kind == "fp8" and m == 4096)
    sass = {}
    for flag in (False, True):
        k = ws.compile_offline(cfg, kind, promote, pdl=flag)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "k.cubin")
            with open(cubin, "wb") as fh:
                fh.write(k.asm["cubin"])
            sass[flag] = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", cubin], capture_output=True,
                                        text=True, check=True).stdout
    assert "ACQBULK" not in sass[False] and "PREEXIT" not in sass[False]
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass[True], re.M)
    waits = [i for i, op in enumerate(ops) if op == "ACQBULK"]  # ptxas may give each branch (prefetch or not) one
    tma = [i for i, op in enumerate(ops) if op.startswith("UTMALDG")]
    assert waits and "PREEXIT" in ops
    assert tma and tma[0] < waits[0] and waits[-1] < tma[-1]  # weight tiles before the wait, activations after
    assert ops.index("PREEXIT") > waits[-1]  # the next kernel launches only once this one is past its wait


def test_every_gemm_tile_takes_the_switch(switch):
    pytest.importorskip("triton.experimental.gluon")
    from mlperf_llama2.quant import gemm8_ws as ws

    switch.set_enabled(True)
    for cfg in (ws.WsConfig(64, 128, 6, 1), ws.WsConfig(128, 128, 6, 1, wgs=2)):
        assert ws._pdl_launch(cfg) == {"PDL": True, "launch_pdl": True}
    switch.set_enabled(False)
    assert ws._pdl_launch(ws.WsConfig(64, 128, 6, 1)) == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs an sm_90 GPU")
@pytest.mark.parametrize("quantization", [None, "fp8"])
def test_tokens_are_the_same_with_pdl(tiny_model_dir, switch, quantization):
    from mlperf_llama2.quant.config import QuantConfig

    quant = QuantConfig(quantization=quantization) if quantization else None
    prompts = [[1] + list(range(3, 3 + n)) for n in (4, 11, 30, 2, 57)]
    outs = []
    for flag in (False, True):
        config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=16, num_kv_blocks=64,
                              graph_mixed_tokens=32, pdl=flag)
        engine = LLMEngine.from_pretrained(str(tiny_model_dir), config, "cuda", torch.float16, quant)
        assert switch.enabled() == flag and engine.runner.graphs
        outs.append(engine.generate(prompts, SamplingParams(12)))
    assert outs[0] == outs[1]
