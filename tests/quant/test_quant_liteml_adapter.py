"""LiteML adapter: a fake `liteml` on sys.path shows the real API is found and called as the fork calls it."""

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from mlperf_llama2.config import QuantConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant import liteml_adapter
from mlperf_llama2.quant.setup import apply_quantization, default_calibration_path, plan_quantization

pytestmark = pytest.mark.tf_compat  # the LiteML wheel's transformers 4.46 too

NPM = str(Path(__file__).resolve().parents[2] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")

RETRAINER = '''
CALLS = []

class RetrainerConfig:
    def __init__(self, conf):
        CALLS.append(("RetrainerConfig", conf))
        self.conf = conf

class RetrainerModel:
    def __init__(self, model, config):
        CALLS.append(("RetrainerModel", model, config))
        self.model, self.config = model, config
'''
LOAD_CONFIG = '''
import yaml
CALLS = []

def load_config(path):
    CALLS.append(path)
    with open(path) as f:
        return yaml.safe_load(f.read().replace("!!python/tuple", ""))
'''
LAYERS = '''
import torch

class LiteMLMatmul(torch.nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b)

class LiteMLAdd(torch.nn.Module):
    def forward(self, a, b):
        return a + b

class LiteMLMul(torch.nn.Module):
    def forward(self, a, b):
        return a * b
'''


def write_package(root: Path, files: dict) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def sys_path(tmp_path, monkeypatch):
    """A fresh import root; every liteml/ailabs_shared module imported during the test is forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.split(".")[0] in ("liteml", "ailabs_shared")]:
        del sys.modules[name]


def fake_liteml(root: Path) -> None:
    write_package(root, {
        "liteml/__init__.py": "", "liteml/ailabs_liteml/__init__.py": "",
        "liteml/ailabs_liteml/retrainer.py": RETRAINER, "liteml/ailabs_liteml/layers.py": LAYERS,
        "liteml/ailabs_shared/__init__.py": "", "liteml/ailabs_shared/load_config.py": LOAD_CONFIG,
    })


def calibration_pickle(folder: Path, prompts) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"tok_input": prompts}).to_pickle(folder / "open_orca_gpt4_tokenized_llama.calibration_3.pkl")
    (folder / "open_orca_gpt4_tokenized_llama.sampled_24576.pkl").write_bytes(b"")
    return str(folder / "open_orca_gpt4_tokenized_llama.sampled_24576.pkl")


def test_adapter_calls_the_liteml_api_as_the_fork_does(sys_path, tiny_model_dir):
    from transformers import LlamaForCausalLM

    fake_liteml(sys_path)
    dataset = calibration_pickle(sys_path / "data", [[1, 5, 6], [1, 7, 8, 9], [1, 10]])
    plan = plan_quantization(QuantConfig(liteml_config=NPM), dataset, "cpu")  # auto
    assert plan.backend == "liteml" and plan.calibration_path.endswith("calibration_3.pkl")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    wrapped, report = apply_quantization(model, plan, "cpu")

    from liteml.ailabs_liteml import layers, retrainer
    from liteml.ailabs_shared import load_config

    assert report is None and isinstance(wrapped, retrainer.RetrainerModel)
    assert load_config.CALLS == [NPM]
    (_, conf), (_, wrapped_model, config) = retrainer.CALLS
    assert wrapped_model is model and config.conf is conf
    data_q = conf["QAT"]["data_quantization"]
    samples = data_q["calibration_loader"]
    assert [s.tolist() for s in samples] == [[[1, 5, 6]], [[1, 7, 8, 9]], [[1, 10]]]
    seen = []
    data_q["calibration_loader_key"](lambda x: seen.append(x.device.type) or "out", samples[0])
    assert seen == ["cpu"]
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.matmul_qkt, layers.LiteMLMatmul) and isinstance(attn.rotary_add_q, layers.LiteMLAdd)
    assert isinstance(model.model.layers[1].mlp.mul, layers.LiteMLMul)
    assert isinstance(model.model.layers[1].mlp.act_fn, torch.nn.SiLU)
    with torch.no_grad():  # the slotted model still computes the Llama
        assert model(torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, 512)


def test_older_api_is_found(sys_path):
    write_package(sys_path, {
        "liteml/__init__.py": "", "liteml/retrainer.py": RETRAINER,
        "ailabs_shared/__init__.py": "", "ailabs_shared/load_config.py": LOAD_CONFIG,
    })
    assert liteml_adapter.find_liteml() == ("liteml.retrainer", "ailabs_shared.load_config")
    assert liteml_adapter.load_liteml().RetrainerModel.__module__ == "liteml.retrainer"


def test_unrelated_pypi_liteml_is_not_mistaken_for_cevas(sys_path, tmp_path):
    write_package(sys_path, {"liteml/__init__.py": "VERSION = '0.0.1'\n"})
    assert not liteml_adapter.liteml_available()
    with pytest.raises(UserError, match="not Ceva's LiteML"):
        plan_quantization(QuantConfig(liteml_config=NPM, quant_backend="liteml"), None, "cpu")


def test_auto_without_liteml_plans_the_open_backend_and_checks_early(sys_path, tmp_path):
    dataset = calibration_pickle(tmp_path / "d", [[1, 2, 3]])
    plan = plan_quantization(QuantConfig(liteml_config=NPM), dataset, "cpu")
    assert plan.backend == "open" and plan.rules is not None and plan.static
    with pytest.raises(UserError, match="calibration"):
        plan_quantization(QuantConfig(liteml_config=NPM), None, "cpu")
    with pytest.raises(UserError, match="CUDA"):
        plan_quantization(QuantConfig(liteml_config=NPM, quant_mode="int8"), dataset, "cpu")
    assert plan_quantization(QuantConfig(), dataset, "cpu") is None


def test_calibration_pickle_is_found_beside_the_dataset(tmp_path):
    assert default_calibration_path(str(tmp_path / "x.pkl")) is None
    dataset = calibration_pickle(tmp_path, [[1, 2]])
    assert default_calibration_path(dataset).endswith("calibration_3.pkl")
