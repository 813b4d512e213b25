"""yaml_config: real LiteML files load (On/Off, !!python/tuple, `dim`), and every bad rule is one clear error."""

import textwrap
from pathlib import Path

import pytest

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.yaml_config import load_rules, read_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "liteml_configs"

HEADER = """\
QAT:
  fully_quantized: On
  device: cuda
  data_quantization: {status: On, bits: 8, symmetric: On, per_channel: Off, quantization_mode: static,
                      observer: MovingAverage}
  weights_quantization: {status: On, bits: 8, symmetric: On, per_channel: Off, quant_and_freeze: On}
  custom_quantization:
"""


def write(tmp_path, rules: str, header: str = HEADER) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(rules), "    "))
    return str(path)


def test_npm_config_says_what_quant_md_table_says():
    rules = load_rules(str(CONFIGS / "w8a8_npm_v1_3_4.yaml"))
    linear = rules.match("Linear", "model.layers.0.self_attn.q_proj")
    w, a = linear.quantizer("weights_quantizer"), linear.quantizer("act_quantizer")
    assert (w.bits, w.symmetric, w.dims) == (8, True, ())
    assert (a.bits, a.symmetric, a.dynamic, a.dims) == (8, True, True, (-1,))
    qkt = rules.match("Matmul", "model.layers.3.self_attn.matmul_qkt")
    assert qkt.quantizer("quantizer_in1").dims == (0, -1, -3) and qkt.quantizer("quantizer_in1").dynamic
    k = qkt.quantizer("quantizer_in2")
    assert (k.bits, k.dynamic, k.observer) == (8, False, "MovingAverage")
    pv = rules.match("Matmul", "model.layers.3.self_attn.matmul_pv")
    assert pv.destination == "QuantMatmulOutputQuant" and pv.quantizer("quantizer_out").bits == 16
    add = rules.match("Add", "model.layers.0.add_2")
    assert add.destination == "QuantAddCommonScalePerToken" and add.quantizer("quantizer").bits == 16
    assert rules.match("Add", "model.layers.0.self_attn.add_mask").destination == "QuantAddSoftmaxMask"
    assert rules.match("RMSNorm", "model.norm").quantizer("weights_quantizer").bits == 16
    assert rules.match("SiLU", "model.layers.0.mlp.act_fn").destination == "SingleInputQuantActivation"
    assert rules.needs_calibration and rules.quantization_mode == "static"


def test_variants_change_only_their_rule():
    base = load_rules(str(CONFIGS / "w8a8_npm_v1_3_4.yaml"))
    pv16 = load_rules(str(CONFIGS / "w8a8_npm_v1_3_4_pv16.yaml"))
    p = pv16.match("Matmul", "x.matmul_pv").quantizer("quantizer_in1")
    assert (p.bits, p.dynamic, p.dims) == (16, False, ())
    def others(rules):
        return [r for r in rules.rules if r.source_name != "matmul_pv"]

    assert others(pv16) == others(base)
    lm16 = load_rules(str(CONFIGS / "w8a8_npm_v1_3_4_lmhead16.yaml"))
    assert lm16.match("Linear", "lm_head").quantizer("act_quantizer").bits == 16
    assert lm16.match("Linear", "model.layers.0.mlp.up_proj").quantizer("act_quantizer").bits == 8


def test_real_liteml_quirks_on_off_tuple_and_dim(tmp_path):
    path = write(tmp_path, """\
        - source_module: LiteMLMatmul
          source_name: matmul_qkt
          destination_module: QuantMatmul
          params:
            quantizer_in1: {act_bits: 8, act_dynamic: On, dim: !!python/tuple [0, -1, -3]}
            quantizer_in2: {act_bits: 8, act_dynamic: Off, act_symmetric: Off, dims: [0, -1, -2, -3]}
        """)
    rule = load_rules(path).rules[0]
    assert rule.quantizer("quantizer_in1").dims == (0, -1, -3)
    assert rule.quantizer("quantizer_in1").dynamic is True
    k = rule.quantizer("quantizer_in2")
    assert (k.dynamic, k.symmetric, k.observer) == (False, False, "MovingAverage")


def test_safe_loader_refuses_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("QAT: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(str(path))


@pytest.mark.parametrize("rule, message", [
    ("- {source_module: torch.nn.Conv2d, destination_module: LinearQuant}", "rule 0 .*unknown source_module"),
    ("- {source_module: torch.nn.Linear, destination_module: LinearQuantX}", "rule 0 .*unknown destination_module"),
    ("- {source_module: torch.nn.Linear, destination_module: TrueQuantLinear}", "rule 0 .*cannot be simulated"),
    ("- {source_module: LiteMLAdd, destination_module: PWLAActivation}", "rule 0 .*cannot be simulated"),
    ("- {source_module: LiteMLAdd, destination_module: QuantMatmul}", "rule 0 .*QuantMatmul cannot replace"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_x: {act_bits: 8}}}",
     "rule 0 .*unknown parameter"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_in1: {act_bits: fp8_e4m3fn_npm}}}",
     "rule 0 .*cannot be simulated"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_in1: {act_bits: compFlow8}}}",
     "rule 0 .*cannot be simulated"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_in1: {act_bits: 8, foo: 1}}}",
     "rule 0 .*unknown key"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_in1: {act_bits: 40}}}",
     "rule 0 .*bits must be"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAdd, params: {quantizer_in1: {observer: Histogram}}}",
     "rule 0 .*observer"),
    ("- {source_module: LiteMLAdd, destination_module: QuantAddCommonScalePerToken}", "rule 0 .*needs parameter"),
])
def test_every_bad_rule_is_one_error_naming_it(tmp_path, rule, message):
    ok = "- {source_module: torch.nn.SiLU, destination_module: SingleInputQuantActivation}\n"
    with pytest.raises(UserError, match=message.replace("rule 0", "rule 1")):
        load_rules(write(tmp_path, ok + rule + "\n"))


def test_smoothquant_and_unknown_sections_are_refused(tmp_path):
    empty = HEADER.replace("custom_quantization:", "custom_quantization: []")
    with pytest.raises(UserError, match="SmoothQuant"):
        load_rules(write(tmp_path, "", "SmoothQuant: {alpha: 0.5}\n" + empty))
    with pytest.raises(UserError, match="unknown key"):
        load_rules(write(tmp_path, "", empty.replace("device: cuda", "device: cuda\n  pruning: On")))
    with pytest.raises(UserError, match="QAT.custom_quantization is empty, so nothing would be quantized"):
        load_rules(write(tmp_path, "", empty))


def test_first_matching_rule_wins(tmp_path):
    path = write(tmp_path, """\
        - {source_module: torch.nn.Linear, source_name: lm_head, destination_module: LinearQuant,
           params: {act_quantizer: {act_bits: 16, act_dynamic: On}}}
        - {source_module: torch.nn.Linear, destination_module: LinearQuant, params: {act_quantizer: {act_bits: 4}}}
        """)
    rules = load_rules(path)
    assert rules.match("Linear", "lm_head").index == 0
    assert rules.match("Linear", "model.layers.0.mlp.down_proj").index == 1
    assert rules.match("Add", "model.layers.0.add_1") is None
