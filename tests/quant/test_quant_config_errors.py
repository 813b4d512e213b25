"""Quantization configs fail loudly: an empty `custom_quantization`, a rule that reaches no module of the
model, and `dims` outside a tensor's rank are each one UserError naming the rule, before any weights
load; the shipped configs stay valid. The module names and ranks the check uses come from config.json
alone, so they are compared here with a slotted transformers Llama's own modules and tensors.
"""

from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.llama_slots import input_rank, install_slots, slot_names
from mlperf_llama2.quant.open_backend import slot_kind
from mlperf_llama2.quant.setup import check_rules_for_model
from mlperf_llama2.quant.yaml_config import load_rules
from reliability_fixtures import error_lines, run

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "liteml_configs").glob("*.yaml"))
HEADER = """\
QAT:
  data_quantization: {quantization_mode: dynamic}
  custom_quantization:
"""
LINEAR = "- {source_module: torch.nn.Linear, destination_module: LinearQuant, params: {weights_quantizer: {}}}\n"


def write(tmp_path: Path, rules: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(rules), "    "))
    return str(path)


def slotted_tiny_llama(model_dir):
    from transformers import LlamaForCausalLM

    return install_slots(LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval())


def test_module_names_from_the_layer_count_are_the_slotted_models(tiny_model_dir):
    model = slotted_tiny_llama(tiny_model_dir)
    actual = sorted((slot_kind(m), n) for n, m in model.named_modules() if slot_kind(m) is not None)
    assert sorted(slot_names(model.config.num_hidden_layers)) == actual


@torch.no_grad()
def test_input_ranks_are_the_ranks_each_module_sees(tiny_model_dir):
    model = slotted_tiny_llama(tiny_model_dir)
    seen: dict[tuple[str, str, str], int] = {}

    def record(name, kind):
        def hook(module, args):
            roles = {"Linear": ("act_quantizer",), "RMSNorm": ("act_quantizer",), "SiLU": ("quantizer",)}
            for role, arg in zip(roles.get(kind, ("quantizer_in1", "quantizer_in2")), args):
                seen[(kind, name, role)] = arg.dim()
            if hasattr(module, "weight"):
                seen[(kind, name, "weights_quantizer")] = module.weight.dim()
        return hook

    for name, module in model.named_modules():
        if slot_kind(module) is not None:
            module.register_forward_pre_hook(record(name, slot_kind(module)))
    model(torch.tensor([[1, 5, 9, 100]]), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    assert len(seen) > len(slot_names(2))
    assert {key: input_rank(*key) for key in seen} == seen


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
@pytest.mark.parametrize("num_layers", [2, 80])
def test_shipped_configs_stay_valid(config, num_layers):
    check_rules_for_model(load_rules(str(config)), num_layers)


@pytest.mark.parametrize("body", ["", "[]"])
def test_empty_custom_quantization_is_refused(tmp_path, body):
    path = tmp_path / "empty.yaml"
    path.write_text(f"QAT:\n  data_quantization: {{quantization_mode: dynamic}}\n  custom_quantization: {body}\n")
    with pytest.raises(UserError, match=f"--liteml-config {path}: QAT.custom_quantization is empty"):
        load_rules(str(path))


@pytest.mark.parametrize("rules, message", [
    (LINEAR + "- {source_module: LiteMLMatmul, source_name: matmul_qk, destination_module: QuantMatmul}",
     r"rule 1 \(LiteMLMatmul, source_name=matmul_qk -> QuantMatmul\): matches no module of the model; "
     r"LiteMLMatmul modules are named matmul_pv, matmul_qkt"),
    ("- {source_module: torch.nn.Linear, source_name: score, destination_module: LinearQuant}",
     r"rule 0 \(torch.nn.Linear, source_name=score -> LinearQuant\): matches no module"),
    (LINEAR + "- {source_module: torch.nn.Linear, source_name: lm_head, destination_module: LinearQuant}",
     r"rule 1 \(torch.nn.Linear, source_name=lm_head -> LinearQuant\): every module it matches is taken by "
     r"the earlier custom_quantization rule 0 \(torch.nn.Linear -> LinearQuant\)"),
    ("- {source_module: LiteMLMul, source_name: mul, destination_module: QuantMul,\n"
     "   params: {quantizer_in1: {dims: [0, -4]}}}",
     r"rule 0 \(LiteMLMul, source_name=mul -> QuantMul\): quantizer_in1 dims \[0, -4\]: axis -4 is outside the "
     r"rank-3 tensor it quantizes at model.layers.0.mlp.mul \(axes -3..2\)"),
    ("- {source_module: torch.nn.Linear, destination_module: LinearQuant, params: {weights_quantizer: {dims: [2]}}}",
     r"rule 0 .*weights_quantizer dims \[2\]: axis 2 is outside the rank-2 tensor it quantizes at "
     r"model.layers.0.self_attn.q_proj"),
    ("- {source_module: LiteMLMatmul, source_name: matmul_qkt, destination_module: QuantMatmul,\n"
     "   params: {quantizer_in2: {dims: [4]}}}",
     r"rule 0 .*quantizer_in2 dims \[4\]: axis 4 is outside the rank-4 tensor"),
])
def test_rule_that_cannot_apply_to_the_model_is_refused_by_name(tmp_path, rules, message):
    parsed = load_rules(write(tmp_path, rules))
    with pytest.raises(UserError, match=message):
        check_rules_for_model(parsed, 2)


def test_rule_reaching_its_modules_with_dims_in_range_passes(tmp_path):
    rules = load_rules(write(tmp_path, LINEAR + "- {source_module: LiteMLAdd, source_name: add_mask, "
                             "destination_module: QuantAddSoftmaxMask, params: {quantizer_in1: {dims: [-1, -4]}}}"))
    check_rules_for_model(rules, 2)


# --- main.py: refused before the model loads, with either backend ---------------------------------------------

NO_MODULE = ("- {source_module: LiteMLMatmul, source_name: matmul_qk, destination_module: QuantMatmul, "
             "params: {quantizer_in1: {dims: [-1]}}}")
E2E = [  # (name, config body, extra flags, words of the one error line)
    ("no_module_reference", LINEAR + NO_MODULE, ["--quant-backend", "open"], ("rule 1", "matches no module")),
    ("no_module_engine", LINEAR + NO_MODULE, ["--backend", "engine", "--quant-mode", "int8"],
     ("rule 1", "matches no module")),
    ("dims_reference", "- {source_module: torch.nn.SiLU, destination_module: SingleInputQuantActivation, "
                       "params: {quantizer: {dims: [3]}}}", ["--quant-backend", "open"],
     ("rule 0 (torch.nn.SiLU -> SingleInputQuantActivation)", "axis 3 is outside the rank-3 tensor")),
    ("empty_engine", "[]", ["--backend", "engine", "--quant-mode", "int8"], ("custom_quantization is empty",)),
]


@pytest.fixture(scope="module")
def e2e_results(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    w = tmp_path_factory.mktemp("quant_e2e")
    write_dataset(w / "data.pkl", tiny_tokenizer_dir)
    (w / "user.conf").write_text(SMALL_USER_CONF)

    def one(case):
        name, body, extra, _ = case
        config = w / f"{name}.yaml"
        config.write_text(HEADER.replace("custom_quantization:\n", "custom_quantization: []\n") if body == "[]"
                          else HEADER + textwrap.indent(body + "\n", "    "))
        cwd = w / f"cwd_{name}"
        cwd.mkdir()
        args = ["--model-path", tiny_model_dir, "--dataset-path", w / "data.pkl", "--user-conf", w / "user.conf",
                "--output-log-dir", cwd / "logs", "--device", "cpu", "--max-new-tokens", 4, "--liteml-config", config,
                *extra]
        return name, run(args, cwd, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, E2E))


@pytest.mark.parametrize("case", E2E, ids=[c[0] for c in E2E])
def test_main_refuses_a_config_that_would_run_in_float(e2e_results, case):
    name, _, _, words = case
    proc = e2e_results[name]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("main.py: error: --liteml-config "), proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    for loader_line in ("Loading weights", "hf_loading: loading", "engine.loader: built", "backend: "):
        assert loader_line not in proc.stderr, proc.stderr[-3000:]
    print(f"{name}: {lines[0]}")
