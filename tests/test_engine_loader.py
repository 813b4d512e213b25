"""The engine's one model loader: every format and tensor-parallel rank built by the same passes.

Specs (CPU): a TP rank's int8 / FP8 weights and scales are exactly its slice of the single-process
model (scales computed on the whole projection); a row-parallel quantized Linear on 2 gloo ranks
computes what the unsplit one computes (its per-token scale spans the whole row); TP=2 int8 greedy
tokens equal TP=1's; random weights and a checkpoint go through the same loading function.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch

from mlperf_llama2.config import EngineConfig, QuantConfig
from mlperf_llama2.engine import loader
from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.loader import Parallel, build_model, read_config
from mlperf_llama2.engine.quant_plan import fp8_plan, int8_plan
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
CPU = torch.device("cpu")
ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=24, num_kv_blocks=64, cuda_graphs=False)
PROMPTS = [[1, 40, 41, 42, 300, 7], [1] + list(range(100, 140)), [1, 5], [1, 260, 261, 262, 263, 9, 9, 9, 12]]


def _plans(shape):
    return {"float": {}, "int8": int8_plan(shape, load_rules(NPM)), "fp8": fp8_plan(shape)}


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_every_rank_holds_exactly_its_slice_of_the_single_process_model(tiny_model_dir, fmt):
    cfg = read_config(str(tiny_model_dir))
    plan = _plans(LlamaShape.from_hf_config(cfg))[fmt]
    whole = build_model(cfg, plan, CPU, torch.float32, 64, model_path=str(tiny_model_dir))
    ranks = [build_model(cfg, plan, CPU, torch.float32, 64, model_path=str(tiny_model_dir), parallel=Parallel(r, 2))
             for r in range(2)]
    s, local = whole.shape, ranks[0].shape
    for i, layer in enumerate(whole.layers):
        q, kv, inter = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size
        for r, shard in enumerate(ranks):
            mine = shard.layers[i]
            lq, lkv, li = q // 2, kv // 2, inter // 2
            # column-parallel qkv: this rank's rows of q, of k and of v, with their scales
            rows = torch.cat([torch.arange(r * lq, (r + 1) * lq), q + torch.arange(r * lkv, (r + 1) * lkv),
                              q + kv + torch.arange(r * lkv, (r + 1) * lkv)])
            assert torch.equal(mine.qkv_proj.qweight.view(torch.uint8), layer.qkv_proj.qweight[rows].view(torch.uint8))
            assert torch.equal(mine.qkv_proj.weight_scale, layer.qkv_proj.weight_scale[rows])
            rows = torch.cat([torch.arange(r * li, (r + 1) * li), inter + torch.arange(r * li, (r + 1) * li)])
            assert torch.equal(mine.gate_up_proj.qweight.view(torch.uint8),
                               layer.gate_up_proj.qweight[rows].view(torch.uint8))
            # row-parallel down/o: this rank's columns, the whole projection's scales
            for name, k in (("down_proj", li), ("o_proj", lq)):
                w, m = getattr(layer, name), getattr(mine, name).linear
                assert torch.equal(m.qweight.view(torch.uint8), w.qweight[:, r * k:(r + 1) * k].view(torch.uint8))
                assert torch.equal(m.weight_scale, w.weight_scale)
                assert m.row_parallel  # its per-token scale spans the whole row
    assert local.num_heads == s.num_heads // 2 and local.intermediate_size == s.intermediate_size // 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _row_parallel_rank(rank: int, port: int, fmt: str, x: torch.Tensor, w: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    from mlperf_llama2.parallel.tensor_parallel import RowParallel

    # A forked child must not use the parent's OpenMP/MKL thread pool: a float32 matmul there deadlocks (the fp8
    # reference GEMM hung every time on a 2-core machine); one thread runs the tiny GEMM without it.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        linear = _linear(fmt, w)
        k = w.shape[1] // 2
        part = _linear(fmt, w)  # the whole projection's weight scales, then this rank's columns
        part.qweight = linear.qweight[:, rank * k:(rank + 1) * k].contiguous()
        part.in_features = k
        y = RowParallel(part)(x[:, rank * k:(rank + 1) * k])
        if rank == 0:
            torch.save(y, out)
    finally:
        dist.destroy_process_group()


def _linear(fmt: str, w: torch.Tensor):
    if fmt == "fp8":
        from mlperf_llama2.quant.fp8 import Fp8Linear

        return Fp8Linear.from_float(w)
    from mlperf_llama2.quant.int8_linear import Int8Linear

    return Int8Linear.from_float(w)


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_a_row_parallel_quantized_linear_computes_what_the_unsplit_one_computes(fmt, tmp_path):
    import multiprocessing

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=g)
    x[:, 40] *= 30  # the row's maximum sits in rank 1's half: rank 0 must learn it
    w = torch.randn(24, 64, generator=g) * 0.1
    expected = _linear(fmt, w)(x)
    ctx = multiprocessing.get_context("fork")  # two gloo ranks: one process each
    port, out = _free_port(), str(tmp_path / "y.pt")
    procs = [ctx.Process(target=_row_parallel_rank, args=(r, port, fmt, x, w, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:  # a hung rank fails the test instead of keeping pytest from exiting
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    torch.testing.assert_close(torch.load(out), expected, rtol=1e-5, atol=1e-5)
    # without the shared scale the halves quantize differently: the check above could fail
    k = 32
    alone = _linear(fmt, w)
    alone.qweight, alone.in_features = alone.qweight[:, :k].contiguous(), k
    half = alone(x[:, :k])
    alone.qweight = _linear(fmt, w).qweight[:, k:].contiguous()
    assert not torch.allclose(half + alone(x[:, k:]), expected, rtol=1e-5, atol=1e-5)


def test_tp2_int8_greedy_tokens_equal_tp1(tiny_model_dir):
    from mlperf_llama2.parallel.tp_group import ShardSpec, start_tp_engine

    quant = QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", int8_rules="linear")
    params = SamplingParams(max_new_tokens=12)
    single = LLMEngine.from_pretrained(str(tiny_model_dir), ENGINE, "cpu", torch.float32, quant).generate(PROMPTS,
                                                                                                         params)
    spec = ShardSpec(world=2, port=0, base_device="cpu", dtype="float32", engine=dataclasses.asdict(ENGINE),
                     model_path=str(tiny_model_dir), quant=dataclasses.asdict(quant))
    engine, group = start_tp_engine(spec)
    try:
        assert type(engine.runner.model.layers[0].qkv_proj).__name__ == "Int8Linear"
        split = engine.generate(PROMPTS, params)
    finally:
        group.shutdown()
    assert split == single


def test_random_weights_and_a_checkpoint_take_the_same_path(tiny_model_dir, monkeypatch):
    calls = []
    real = loader.load_weights
    monkeypatch.setattr(loader, "load_weights", lambda *a, **k: calls.append(k.get("source", a[-1])) or real(*a, **k))
    cfg = read_config(str(tiny_model_dir))
    plan = fp8_plan(LlamaShape.from_hf_config(cfg))
    random = build_model(cfg, plan, CPU, torch.float32, 64, init_std=0.05)
    loaded = build_model(cfg, plan, CPU, torch.float32, 64, model_path=str(tiny_model_dir))
    assert calls == ["random weights", str(tiny_model_dir)]
    assert type(random.layers[0].down_proj) is type(loaded.layers[0].down_proj)
    assert random.layers[0].down_proj.qweight.dtype == torch.float8_e4m3fn
    assert type(random.lm_head) is torch.nn.Linear  # lm_head stays in the model dtype in fp8 mode


def test_a_misshapen_tensor_is_one_line_naming_it(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(tiny_model_dir):
        if not f.endswith(".safetensors"):
            (bad / f).write_bytes((Path(tiny_model_dir) / f).read_bytes())
    tensors = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:-1].contiguous()
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(UserError, match=r"model.layers.1.mlp.up_proj.weight has shape \[127, 64\]"):
        LLMEngine.from_pretrained(str(bad), ENGINE, "cpu", torch.float32)
