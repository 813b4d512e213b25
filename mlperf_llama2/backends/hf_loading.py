"""Hugging Face checkpoints on disk: check a model directory, read its vocabulary/EOS, load the model.

`check_model_dir` and `read_model_info` touch only small JSON files, so main.py can reject a bad
directory before any weights load. A tokenizer with more ids than the model's embedding
(config.json vocab_size) belongs to another model and is an error; a smaller one is fine (Llama
checkpoints often pad the embedding), and so is a tokenizer whose BOS/EOS ids are not config.json's. What
transformers' `generate` takes from the checkpoint and the engine does not (several EOS ids, a
generation_config.json EOS or decoding setting) is refused for both backends (`check_generation_config`).
`load_causal_lm` is the one place the reference backend loads
weights; transformers' load report (MISSING, UNEXPECTED, mismatched tensors) is an error there, never a
warning. The quantization code wraps the model it returns.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass

from mlperf_llama2.checkpoint import check_load_report
from mlperf_llama2.errors import UserError
from mlperf_llama2.hf_compat import dtype_kwargs

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
GENERATION_CONFIG = "generation_config.json"
# generation_config.json settings that change which token greedy `generate` picks, or when it stops, with their
# neutral value (do_sample, num_beams, max/min_new_tokens are passed explicitly; sampling settings do not apply)
GREEDY_CHANGING = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "sequence_bias": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "min_length": 0, "guidance_scale": 1.0, "penalty_alpha": 0.0,
    "dola_layers": None, "watermarking_config": None, "stop_strings": None, "max_time": None, "token_healing": False,
}


@dataclass(frozen=True)
class ModelInfo:
    """What the harness needs to know about a checkpoint before loading it."""

    path: str
    vocab_size: int
    eos_token_id: int


def check_model_dir(path: str | None) -> None:
    """A loadable local checkpoint: config.json, weights and a tokenizer. One-line UserError otherwise."""
    if not path:
        raise UserError("no model given: pass --model-path DIR (a local Hugging Face checkpoint directory)")
    if not os.path.isdir(path):
        raise UserError(f"--model-path {path}: not a directory (expected a local Hugging Face checkpoint)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"--model-path {path}: no config.json (is this a Hugging Face checkpoint directory?)")
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_PATTERNS):
        raise UserError(f"--model-path {path}: no weights (*.safetensors or pytorch_model*.bin)")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise UserError(f"--model-path {path}: no tokenizer (tokenizer.json or tokenizer.model)")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc} (a truncated or corrupt file? copy the checkpoint again)") from None


def read_model_info(path: str) -> ModelInfo:
    """Vocabulary size and EOS id from config.json (EOS falls back to generation_config.json)."""
    config = _read_json(os.path.join(path, "config.json"))
    config = config.get("text_config", config)
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise UserError(f"{path}/config.json: no valid vocab_size")
    eos = config.get("eos_token_id")
    gen_path = os.path.join(path, GENERATION_CONFIG)
    check_generation_config(path)  # one EOS id, the same in both files; nothing that changes greedy decoding
    if eos is None and os.path.isfile(gen_path):
        eos = _read_json(gen_path).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None  # one distinct id (check_generation_config)
    if not isinstance(eos, int):
        raise UserError(f"{path}: config.json has no eos_token_id")
    tokens = tokenizer_size(path)
    if tokens is not None and tokens > vocab_size:
        raise UserError(
            f"--model-path {path}: the tokenizer has {tokens} tokens but the model's embedding only {vocab_size} "
            "(config.json vocab_size): tokenizer and weights come from different models; use the tokenizer "
            "saved with this checkpoint"
        )
    for role, model_id in (("eos", eos), ("bos", config.get("bos_token_id"))):
        token, token_id = tokenizer_special_id(path, role)
        if isinstance(model_id, int) and token_id is not None and token_id != model_id:
            raise UserError(f"--model-path {path}: the tokenizer's {role.upper()} {token!r} is id {token_id}, "
                            f"config.json's {role}_token_id is {model_id}: tokenizer and weights come from different "
                            "models (outputs would end, and decode, at different tokens); use the tokenizer saved "
                            "with this checkpoint")
    return ModelInfo(path=path, vocab_size=vocab_size, eos_token_id=eos)


def tokenizer_special_id(path: str, role: str) -> tuple[str | None, int | None]:
    """(text, id) of the tokenizer's `role` ("bos" | "eos") token, from tokenizer_config.json (else
    special_tokens_map.json) and tokenizer.json's ids; (text or None, None) when a file needed is absent."""
    token = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = os.path.join(path, name)
        if token is None and os.path.isfile(file):
            data = _read_json(file)
            token = data.get(f"{role}_token") if isinstance(data, dict) else None
    token = token.get("content") if isinstance(token, dict) else token
    json_path = os.path.join(path, "tokenizer.json")
    if not isinstance(token, str) or not os.path.isfile(json_path):
        return token if isinstance(token, str) else None, None
    data = _read_json(json_path)
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and added.get("content") == token and isinstance(added.get("id"), int):
            return token, added["id"]
    vocab = (data.get("model") or {}).get("vocab")
    found = vocab.get(token) if isinstance(vocab, dict) else None
    return token, found if isinstance(found, int) else None


def _ids(value) -> list[int]:
    """An eos_token_id field (int, list or None) as its distinct ids, in order."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    return list(dict.fromkeys(values))


def check_generation_config(path: str) -> None:
    """What transformers' `generate` takes from the checkpoint and the engine does not: refused, one line each.

    `generate` stops at every id of generation_config.json's eos_token_id (config.json's without that file); the
    engine and the reference backend's padding stop at one, config.json's. And generation_config.json settings
    that change the greedy pick (GREEDY_CHANGING) would be applied by the reference backend's `generate` only."""
    config = _read_json(os.path.join(path, "config.json"))
    config = config.get("text_config", config)
    config_ids = _ids(config.get("eos_token_id"))
    if len(config_ids) > 1:
        raise UserError(f"{path}/config.json: eos_token_id lists {len(config_ids)} ids {config_ids}; transformers' "
                        f"generate stops at any of them, the engine at {config_ids[0]} only: keep one")
    gen_path = os.path.join(path, GENERATION_CONFIG)
    if not os.path.isfile(gen_path):
        return
    gen = _read_json(gen_path)
    if not isinstance(gen, dict):
        raise UserError(f"{gen_path}: expected a JSON object, got {type(gen).__name__}")
    gen_ids = _ids(gen.get("eos_token_id"))
    if len(gen_ids) > 1 or (gen_ids and config_ids and gen_ids != config_ids):
        raise UserError(f"{gen_path}: eos_token_id {gen.get('eos_token_id')!r} is not config.json's "
                        f"{config.get('eos_token_id')!r}; transformers' generate (the reference backend) would stop "
                        "at the former, the engine at config.json's one id: make the two files name the same one id")
    for key, neutral in GREEDY_CHANGING.items():
        value = gen.get(key)
        if value not in (None, neutral, False):
            raise UserError(f"{gen_path}: {key} {value!r} changes greedy decoding; the reference backend's generate "
                            f"would apply it and the engine would not: remove it (or set it to {neutral!r})")


def tokenizer_size(path: str) -> int | None:
    """Number of token ids the checkpoint's tokenizer can produce (highest id + 1); None if unknown."""
    json_path = os.path.join(path, "tokenizer.json")
    if os.path.isfile(json_path):
        data = _read_json(json_path)
        vocab = (data.get("model") or {}).get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # BPE dict, Unigram list
        ids += [t.get("id", -1) for t in data.get("added_tokens") or [] if isinstance(t, dict)]
        ids = [i for i in ids if isinstance(i, int)]
        if not ids:
            raise UserError(f"{json_path}: no vocabulary (a corrupt or unsupported tokenizer.json)")
        return max(ids) + 1
    model_path = os.path.join(path, "tokenizer.model")
    if os.path.isfile(model_path):
        try:
            import sentencepiece
        except ImportError:
            return None
        try:
            size = sentencepiece.SentencePieceProcessor(model_file=model_path).get_piece_size()
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
            raise UserError(f"cannot read {model_path}: {exc} (a corrupt sentencepiece model?)") from None
        added_path = os.path.join(path, "added_tokens.json")
        if os.path.isfile(added_path):
            added = _read_json(added_path)
            size = max([size, *(i + 1 for i in added.values() if isinstance(i, int))])
        return size
    return None


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_causal_lm(path: str, dtype: str, device: str):
    """from_pretrained on `device` with low_cpu_mem_usage, in eval mode.

    cpu and cuda:N place the whole model there; plain `cuda` spreads the layers over every visible GPU
    (device_map="auto", as the reference does), which is how Llama-2-70B in fp16 fits across GPUs.
    """
    from transformers import AutoModelForCausalLM

    log.info("loading %s (%s on %s)", path, dtype, device)
    try:
        model, report = AutoModelForCausalLM.from_pretrained(
            path,
            device_map="auto" if device == "cuda" else device,
            low_cpu_mem_usage=True,
            local_files_only=True,
            output_loading_info=True,
            **dtype_kwargs(torch_dtype(dtype)),
        )
    except RuntimeError as exc:  # a shape mismatch: transformers 5.x and 4.x raise it, each in its own words
        if "mismatch" not in str(exc):
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                      "see the report above")
        raise UserError(f"{path}: transformers' load report: mismatched tensor shapes ({detail}); the weights "
                        "do not match config.json") from None
    check_load_report(path, report, bool(getattr(model.config, "tie_word_embeddings", False)))
    model.eval()
    return model
