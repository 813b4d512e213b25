"""A tiny Llama-2-style sentencepiece checkpoint tokenizer, trained offline in a fixture.

Like Llama-2's `tokenizer.model`: BPE with byte fallback, <unk>=0 <s>=1 </s>=2, a dummy-prefix "▁",
no whitespace normalisation, digits split. Saved with a Llama `tokenizer_config.json` and no
`tokenizer.json`, so transformers converts it to its fast tokenizer (this needs protobuf).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was a sunny day in the park.",
    "Dr. Smith went to Washington, D.C. in the U.S. to meet Mr. Jones at 3 p.m.",
    "What is the capital of France? The capital of France is Paris, a large city.",
    "Explain how you used the definition to come up with the answer step by step.",
    "Pi is about 3.14, e.g. the ratio of a circle's circumference to its diameter.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation ; : , . ! ? ( ) [ ] - ' \" are common.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "Summarize the article: the team won the final match after a long season of games.",
]


def build_sentencepiece_tokenizer(out_dir, vocab_size: int = 420) -> Path:
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True, minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "legacy": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


# Llama-2's published tokenizer.json: no pre-tokenizer, a normalizer that prepends "▁" to every text segment
# (also the one after a leading "<s>") and turns spaces into "▁".
LLAMA2_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ],
}


def build_llama2_style_tokenizer(out_dir) -> Path:
    """The sentencepiece tokenizer plus a Llama-2-style tokenizer.json, config `legacy: false`, as published."""
    from transformers import AutoTokenizer

    out = build_sentencepiece_tokenizer(out_dir)
    converted = json.loads(AutoTokenizer.from_pretrained(str(out)).backend_tokenizer.to_str())
    converted["normalizer"] = LLAMA2_NORMALIZER
    converted["pre_tokenizer"] = None
    (out / "tokenizer.json").write_text(json.dumps(converted))
    return out
