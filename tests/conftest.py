"""Shared fixtures: tiny offline tokenizer and random Llama checkpoints, built once per session."""

from __future__ import annotations

import os

import pytest

from tiny_models import build_tiny_llama, build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch means no GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A Llama-style byte-fallback BPE tokenizer (<unk>=0, <s>=1, </s>=2, BOS prepended)."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random fp32 Llama (GQA, 2 layers) with decisive logits, plus its tokenizer, in one directory."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer_dir, seed=0)


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny Llama biased towards EOS: greedy outputs end within a few tokens (soak and fault tests)."""
    return build_tiny_llama(tmp_path_factory.mktemp("eos_llama"), tiny_tokenizer_dir, seed=1, eos_bias=40.0)


# --- data helper: sentencepiece tokenizer (tokenization and scoring tests) ---
@pytest.fixture(scope="session")
def sp_tokenizer_dir(tmp_path_factory):
    """A Llama-2-style sentencepiece `tokenizer.model` (byte fallback) with a Llama tokenizer_config."""
    from tiny_sentencepiece import build_sentencepiece_tokenizer

    return build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sp_tokenizer"))


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(tmp_path_factory):
    """Like a published Llama-2 checkpoint: tokenizer.model + legacy-normalizer tokenizer.json + LlamaTokenizer config."""
    from tiny_sentencepiece import build_llama2_style_tokenizer

    return build_llama2_style_tokenizer(tmp_path_factory.mktemp("llama2_tokenizer"))
