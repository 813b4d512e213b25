"""The fixtures behave like the artefacts they stand in for (offline Llama tokenizer, greedy model)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.tf_compat  # the fixtures must also build and load under transformers 4.46


def test_tokenizer_is_llama_like_and_offline(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = tok("What is 2 + 2?")["input_ids"]
    assert ids[0] == 1 and tok.eos_token_id == 2 and tok.unk_token_id == 0
    assert tok.decode(ids, skip_special_tokens=True) == "What is 2 + 2?"
    # byte fallback: characters outside the corpus still round-trip
    assert tok.decode(tok("café ☕")["input_ids"], skip_special_tokens=True) == "café ☕"


def test_eos_model_stops_early_and_tiny_model_does_not(tiny_model_dir, eos_model_dir):
    prompt = torch.tensor([[1, 40, 50, 60, 70]])
    for path, expect_short in ((eos_model_dir, True), (tiny_model_dir, False)):
        model = AutoModelForCausalLM.from_pretrained(path)
        out = model.generate(prompt, max_new_tokens=16, min_new_tokens=1, do_sample=False, pad_token_id=2)
        gen = out[0, prompt.shape[1]:].tolist()
        stopped = 2 in gen and gen.index(2) <= 4
        assert stopped == expect_short, gen
