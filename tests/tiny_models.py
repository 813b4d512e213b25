"""Builders for the tiny offline artefacts the tests run on: a Llama-style tokenizer and random Llamas.

Nothing is downloaded. The tokenizer is a byte-fallback BPE over a Metaspace ("▁") pre-tokenizer,
trained with `tokenizers` on a small built-in corpus, saved with `save_pretrained` so that
`AutoTokenizer.from_pretrained(dir)` loads it offline; like Llama-2's it has <unk>=0, <s>=1, </s>=2
and prepends BOS. Models are random `LlamaForCausalLM`s whose weights are scaled up so greedy
logits are decisive (float-rounding near-ties cannot flip the argmax).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question as well as you can.",
    "What is the capital of France? The capital of France is Paris.",
    "Translate the sentence into French: I like apples.",
    "Explain how you used the definition to come up with the answer.",
    "Dr. Smith went to Washington, D.C. in the U.S. on 3.5 days' notice.",
    "Q: What is 2 + 2? A: 4. Q: What is 10 - 3? A: 7.",
    "Summarize the article in one sentence. The team won the final match.",
    "Classify the review as positive or negative: The film was wonderful!",
    "Step 1: read the task. Step 2: think step-by-step. Step 3: justify your answer.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000, and punctuation: ; : , . ! ? ( ) [ ] - ' \"",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
TINY_VOCAB_SIZE = 256  # learned pieces; the full vocabulary adds 3 specials and 256 bytes


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Train and save a tiny Llama-style fast tokenizer; returns the directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=["▁"], show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    # Like Llama-2's sentencepiece model, byte pieces <0x00>..<0xFF> are ordinary vocabulary entries
    # right after the specials (ids 3..258), so byte-fallback ids decode even with skip_special_tokens.
    trained = json.loads(tok.to_str())["model"]
    learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in SPECIAL_TOKENS]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)] + learned)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok.model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    return out


def build_tiny_llama(
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    seed: int = 0,
    init_scale: float = 4.0,
    eos_bias: float = 0.0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
) -> Path:
    """Save a random fp32 LlamaForCausalLM (GQA, safetensors) plus the tokenizer; returns the directory.

    `init_scale` multiplies the default initialisation so logits are decisive; `eos_bias` > 0 adds
    a bias towards EOS to the output layer so greedy outputs end within a few tokens.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.02 * init_scale,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, config.initializer_range)
        if eos_bias:
            # lm_head has no bias: push the EOS row along the mean final hidden state direction.
            model.lm_head.weight[config.eos_token_id] += eos_bias * model.model.norm.weight / hidden_size**0.5
    model.generation_config.pad_token_id = config.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), out / name)
    return out
