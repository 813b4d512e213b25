"""The engine's int8 mode with every rule of the LiteML config (`engine/whole_config.py`) against simulate.

Reference: transformers' Llama quantized by the open backend in simulate mode with the whole of
w8a8_npm_v1_3_4 and `--quant-per-sample-scale` (the engine computes per-token scales per sequence).
Same static scales (the file simulate writes, read by the engine): greedy tokens are equal in every batch
composition and with the int8 KV cache; teacher-forced logits agree to float rounding (the engine's int8
GEMMs are exact integer products, simulate's fake-quant matmuls are float). The engine's own calibration
writes the same ranges as simulate's. The fixture is decisive: the Linear-only mode gives other tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from quant_engine_fixtures import COMPOSITIONS, NEW_TOKENS, greedy_reference, prompts
from triton_device import needs_triton, triton_device
from mlperf_llama2.config import EngineConfig, QuantConfig
from mlperf_llama2.engine import whole_config
from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant import calibration_file as cf
from mlperf_llama2.quant.fake_quant import Numerics
from mlperf_llama2.quant.setup import check_scales_cover, static_slots
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
PER_SAMPLE = Numerics(batch_shared_scale=False)


def calibration_prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [[1] + torch.randint(3, 500, (n,), generator=g).tolist() for n in (12, 30, 7, 50)]


def simulate(model_dir, rules=None):
    from transformers import LlamaForCausalLM

    from mlperf_llama2.quant.open_backend import quantize_model

    from mlperf_llama2.hf_compat import dtype_kwargs

    model = LlamaForCausalLM.from_pretrained(model_dir, **dtype_kwargs(torch.float32)).eval()
    samples = [torch.tensor([p]) for p in calibration_prompts()]
    quantize_model(model, rules or load_rules(NPM), "simulate", PER_SAMPLE, samples)
    return model


def identity(model_dir) -> dict[str, str]:
    return {"config_id": cf.config_id(NPM), **cf.model_identity(str(model_dir)), "writer": "reference"}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """(simulate model, its greedy tokens, its scales file)."""
    model = simulate(tiny_model_dir)
    path = str(tmp_path_factory.mktemp("scales") / cf.FILE_NAME)
    cf.write_scales(path, cf.static_ranges(model), identity(tiny_model_dir))
    return model, greedy_reference(model), path


def engine(model_dir, scales: str, composition: EngineConfig, kv_scales=None) -> LLMEngine:
    quant = QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", calibration_scales=scales,
                        batch_shared_scale=False)
    return LLMEngine.from_pretrained(model_dir, composition, "cpu", torch.float32, quant=quant, kv_scales=kv_scales)


@pytest.mark.parametrize("composition", [pytest.param("chunked_prefill", marks=pytest.mark.tf_compat), "preemption",
                                         "roomy"])  # tf_compat: simulate under the LiteML wheel's transformers 4.46
def test_whole_config_engine_tokens_equal_simulate_in_every_composition(tiny_model_dir, reference, composition):
    _, expected, scales = reference
    eng = engine(tiny_model_dir, scales, COMPOSITIONS[composition])
    assert len(eng.runner.model.whole_config.quantized) == 2 * 11 + 1  # norms, adds, Q·Kᵀ, P·V, mask, RoPE adds, SiLU, mul; model.norm
    assert eng.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


def test_the_fixture_is_decisive_linear_rules_alone_give_other_tokens(tiny_model_dir, reference):
    rules = load_rules(NPM)
    linear_only = dataclasses.replace(rules, rules=tuple(r for r in rules.rules if r.source_kind == "Linear"))
    assert greedy_reference(simulate(tiny_model_dir, linear_only)) != reference[1]


def test_whole_config_with_the_int8_kv_cache_gives_the_same_tokens(tiny_model_dir, reference):
    _, expected, scales = reference
    kv = cf.kv_scales_from_file(scales, 2, 2, "tensor", 127.0)  # the config's own K and V scales
    composition = dataclasses.replace(COMPOSITIONS["preemption"], kv_cache_dtype="int8")
    eng = engine(tiny_model_dir, scales, composition, kv_scales=kv)
    assert eng.runner.kv_cache.dtype == torch.int8
    assert eng.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


def test_teacher_forced_logits_agree_to_float_rounding(tiny_model_dir, reference):
    """Float rounding (the engine's exact integer GEMMs vs simulate's float matmuls, ~1e-7) is all that differs,
    until a value sits within that rounding of an int8 rounding boundary: then one quantized value differs by a
    step and, through K and V, moves the later positions of that prompt (measured: 1e-6 of the logit std for
    four of the six prompts, up to 6e-2 after such a flip). The argmax agrees at every position."""
    sim, _, scales = reference
    model = engine(tiny_model_dir, scales, COMPOSITIONS["roomy"]).runner.model
    exact = 0
    for p in prompts():
        ids = torch.tensor(p)
        t = len(p)
        cache = torch.zeros(2, model.shape.num_layers, t, model.shape.num_kv_heads, model.shape.head_dim)
        meta = AttentionMetadata.single_prefill(t, "cpu")
        with torch.no_grad():
            ours = model.logits(model(ids, torch.arange(t), cache, meta))  # [T, vocab]
            theirs = sim(ids[None]).logits[0]
        err = (ours - theirs).abs().max() / theirs.std()
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
        assert err <= 0.1
        exact += bool(err <= 1e-4)
    assert exact >= 4


@pytest.mark.tf_compat
def test_engine_calibration_writes_simulates_ranges(tiny_model_dir, reference, tmp_path):
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import build_model, read_config
    from mlperf_llama2.engine.quant_plan import int8_plan

    sim = reference[0]
    rules = load_rules(NPM)
    hf_config = read_config(str(tiny_model_dir))
    model = build_model(hf_config, int8_plan(LlamaShape.from_hf_config(hf_config), rules), torch.device("cpu"),
                        torch.float32, 512, model_path=str(tiny_model_dir))
    whole_config.attach(model, rules, PER_SAMPLE)
    assert whole_config.calibrate(model, calibration_prompts()) == 4
    ours, theirs = cf.static_ranges(model), cf.static_ranges(sim)
    assert sorted(ours) == sorted(theirs) == sorted(static_slots(rules, 2))
    for name, (lo, hi) in theirs.items():
        assert ours[name][0].shape == lo.shape  # the same observer shapes: one file serves both backends
        torch.testing.assert_close(ours[name][0], lo, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours[name][1], hi, rtol=1e-4, atol=1e-6)


def test_a_scales_file_without_every_static_quantizer_is_one_line(tiny_model_dir, reference, tmp_path):
    ranges = cf.static_ranges(reference[0])
    kv_only = {k: v for k, v in ranges.items() if k.endswith("quantizer_in2") and ".matmul_" in k}
    path = str(tmp_path / "kv.safetensors")
    cf.write_scales(path, kv_only, identity(tiny_model_dir))
    check_scales_cover(reference[2], load_rules(NPM), 2)
    with pytest.raises(UserError, match=r"holds no range for 18 static quantizer\(s\) of w8a8_npm_v1_3_4.yaml, "
                                        r"e.g. model.layers.0.self_attn.matmul_pv.quantizer_out"):
        check_scales_cover(path, load_rules(NPM), 2)


@pytest.fixture(scope="module")
def wide_heads(tiny_tokenizer_dir, tmp_path_factory):
    """(model dir, scales file of simulate's calibration, simulate's greedy tokens) of a tiny Llama with head_dim 32:
    the kernels' int8 tensor-core dots need it (head_dim 16 runs the eager path, on every device). init_scale 8:
    decisive at this width (at 4 one prompt in three seeds of five is a near-tie)."""
    from tiny_models import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("wide_heads"), tiny_tokenizer_dir, seed=1, hidden_size=128,
                                 init_scale=8.0)
    path = str(tmp_path_factory.mktemp("wide_scales") / cf.FILE_NAME)
    sim = simulate(model_dir)
    cf.write_scales(path, cf.static_ranges(sim), identity(model_dir))
    return model_dir, path, greedy_reference(sim)


def wide_engine(wide_heads, composition: str, device: str, ops: str) -> LLMEngine:
    model_dir, scales = wide_heads[:2]
    kv = cf.kv_scales_from_file(scales, 2, 2, "tensor", 127.0)
    config = dataclasses.replace(COMPOSITIONS[composition], kv_cache_dtype="int8", ops=ops, cuda_graphs=False)
    quant = QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", calibration_scales=scales)
    return LLMEngine.from_pretrained(model_dir, config, device, torch.float32, quant=quant, kv_scales=kv)


@needs_triton
@pytest.mark.parametrize("composition", ["roomy", "chunked_prefill", "preemption"])
def test_the_kernels_give_the_eager_paths_tokens(wide_heads, composition):
    """--engine-ops fused runs the whole config in the Triton kernels (int8 KV cache with the config's K/V scales):
    the same greedy tokens as the eager path (simulate's modules) on the same device, and as simulate."""
    device = triton_device()
    eager = wide_engine(wide_heads, "roomy", device, "eager")
    fused = wide_engine(wide_heads, composition, device, "fused")
    assert fused.runner.model.whole_config.fused and not eager.runner.model.whole_config.fused
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    assert fused.generate(prompts(), params) == eager.generate(prompts(), params) == wide_heads[2]


def test_kv_cache_auto_in_int8_mode_is_the_configs_int8_cache(tiny_model_dir, reference):
    """--kv-cache-dtype auto with a whole config: the cache stores the config's K and V quantizers (int8, its own
    per-tensor scales, which the kernels need); the tokens stay simulate's."""
    _, expected, scales = reference
    eng = engine(tiny_model_dir, scales, COMPOSITIONS["chunked_prefill"])
    assert eng.runner.kv_cache.dtype == torch.int8 and eng.runner.kv_spec.dtype == "int8"
    assert torch.equal(eng.runner.kv_spec.scales, cf.kv_scales_from_file(scales, 2, 2, "tensor", 127.0))
    assert eng.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


@pytest.mark.parametrize("extra, line", [
    (["--kv-cache-dtype", "fp8"], "main.py: error: --kv-cache-dtype fp8 with --int8-rules all: the config quantizes K "
                                  "and V to int8 itself; use --kv-cache-dtype int8 or auto (the config's own scales)"),
    (["--tensor-parallel", "2"], "main.py: error: --tensor-parallel 2 with --int8-rules all: the config's Q and P "
                                 "scales span every head"),
    ([], "main.py: error: " + NPM + " has static quantizers and needs calibration data: pass --calibration-scales "
         "FILE or --calibration-path"),
])
def test_settings_the_whole_config_cannot_honour_are_one_line_before_loading(tmp_path, tiny_model_dir,
                                                                             tiny_tokenizer_dir, reference, extra,
                                                                             line):
    from loadgen_fixtures import SMALL_USER_CONF, run_main, write_dataset

    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)  # no calibration pickle beside it
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    scales = ["--calibration-scales", reference[2]] if extra else []
    result = run_main(["--backend", "engine", "--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl",
                       "--user-conf", tmp_path / "user.conf", "--output-log-dir", "out", "--accuracy",
                       "--liteml-config", NPM, "--quant-backend", "open", "--quant-mode", "int8", *scales, *extra],
                      tmp_path, 120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(line)
    assert "Loading weights" not in result.stderr


def test_int8_rules_outside_the_engines_int8_mode_is_one_line():
    with pytest.raises(UserError, match=r"--int8-rules linear chooses what the engine's int8 mode computes: it needs "
                                        r"--liteml-config and --quant-mode int8"):
        QuantConfig(liteml_config=NPM, quant_mode="simulate", int8_rules="linear")
    with pytest.raises(UserError, match="--int8-rules linear chooses"):
        QuantConfig(int8_rules="linear")
    with pytest.raises(UserError, match="--int8-rules must be one of all, linear, got 'some'"):
        QuantConfig(liteml_config=NPM, quant_mode="int8", int8_rules="some")
