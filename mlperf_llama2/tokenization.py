"""One tokenizer loader for scoring and decoding: text <-> token ids exactly as the reference decodes them.

The reference loads its tokenizer with `use_fast=False`, i.e. the sentencepiece model `tokenizer.model`.
transformers 5.x ignores `use_fast` (`AutoTokenizer.from_pretrained` always builds the `tokenizers`
backend), and that backend's byte-fallback decoder differs from sentencepiece: a run of byte pieces that
is not valid UTF-8 becomes one U+FFFD per byte, where sentencepiece keeps the valid bytes. So when the
checkpoint carries `tokenizer.model` (and `sentencepiece` is installed), `decode` uses that model
directly, the way the reference's slow tokenizer did; otherwise it uses the Hugging Face tokenizer.
Encoding always uses the Hugging Face (fast) tokenizer, as the reference's preprocessing does.
Offline only: nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from mlperf_llama2.errors import UserError
from mlperf_llama2.hf_compat import tokenizer_json_class

log = logging.getLogger(__name__)

SENTENCEPIECE_MODEL_FILE = "tokenizer.model"
TOKENIZER_JSON_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WORD_START = "\u2581"  # sentencepiece's "▁"

DECODE_SENTENCEPIECE = "sentencepiece"
DECODE_HF = "hf"


def _tokenizer_config(path: str) -> dict:
    config_file = os.path.join(path, TOKENIZER_CONFIG_FILE)
    if not os.path.isfile(config_file):
        return {}
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {config_file}: {exc}") from None
    return config if isinstance(config, dict) else {}


def load_hf_tokenizer(path: str):
    """The Hugging Face fast tokenizer of a local directory, encoding as transformers 4.x's fast one did.

    transformers 5.x rebuilds a `LlamaTokenizer` from tokenizer.json's vocabulary with its own Metaspace
    pre-tokenizer (prepend "first" unless legacy), dropping Llama-2's published normalizer: "<s>[INST]"
    then encodes "[" where the reference got "▁[" (518). So a directory with tokenizer.json is loaded as
    `TokenizersBackend`, which keeps the file's whole pipeline, as 4.x's LlamaTokenizerFast did. Without
    tokenizer.json, tokenizer.model is converted (needs protobuf), legacy unless the config says otherwise
    (4.x's default). Offline; a failure is one UserError line.
    """
    from transformers import AutoTokenizer

    if not path or not os.path.isdir(path):
        raise UserError(f"tokenizer directory not found: {path} (pass a local checkpoint directory)")
    if not any(os.path.isfile(os.path.join(path, name)) for name in (TOKENIZER_JSON_FILE, "tokenizer.model")):
        raise UserError(f"cannot load a tokenizer from {path}: no tokenizer.json or tokenizer.model there "
                        "(pass the checkpoint directory that holds the tokenizer)")
    config = _tokenizer_config(path)
    try:
        if os.path.isfile(os.path.join(path, TOKENIZER_JSON_FILE)):
            return tokenizer_json_class().from_pretrained(path, local_files_only=True)
        kwargs = {}
        if str(config.get("tokenizer_class", "")).startswith("LlamaTokenizer") and "legacy" not in config:
            kwargs["legacy"] = True
        return AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the same user problem
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {path}: {first_line}") from None


def _sentencepiece_processor(path: str):
    model_file = os.path.join(path, SENTENCEPIECE_MODEL_FILE)
    if not os.path.isfile(model_file):
        return None
    try:
        import sentencepiece
    except ImportError:
        log.warning("%s exists but sentencepiece is not installed: decoding with the fast tokenizer", model_file)
        return None
    try:
        return sentencepiece.SentencePieceProcessor(model_file=model_file)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read the sentencepiece model {model_file}: {exc}") from None


@dataclass
class TextTokenizer:
    """A Hugging Face tokenizer for encoding plus, when available, the sentencepiece model for decoding."""

    path: str
    hf: Any
    sp: Any = None

    @property
    def decode_backend(self) -> str:
        return DECODE_SENTENCEPIECE if self.sp is not None else DECODE_HF

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        """Ids 0..vocab_size-1 decode: the sentencepiece model's pieces, else the HF tokenizer's (added included)."""
        return int(self.sp.get_piece_size()) if self.sp is not None else len(self.hf)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.hf.all_special_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self.sp is None:
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._decode_sentencepiece(ids, skip_special_tokens)

    def batch_decode(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def _decode_sentencepiece(self, ids: list[int], skip_special_tokens: bool) -> str:
        """The slow Llama tokenizer's decode: drop specials, strip the first piece's "▁", sentencepiece-decode."""
        size = self.sp.get_piece_size()
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise UserError(
                f"token id {bad[0]} is outside the tokenizer's vocabulary [0, {size}) of {self.path} "
                "(were the outputs produced by another model?)"
            )
        if skip_special_tokens:
            special = self.special_ids
            ids = [i for i in ids if i not in special]
        if not ids:
            return ""
        pieces = [self.sp.id_to_piece(i) for i in ids]
        if pieces[0].startswith(WORD_START):
            pieces[0] = pieces[0][len(WORD_START):]
        text = self.sp.decode_pieces(pieces)
        if getattr(self.hf, "clean_up_tokenization_spaces", False):
            text = self.hf.clean_up_tokenization(text)
        return text


def load_tokenizer(path: str, prefer_sentencepiece: bool = True) -> TextTokenizer:
    """Load the tokenizer of a local checkpoint directory; decode with its sentencepiece model if it has one."""
    hf = load_hf_tokenizer(path)
    sp = _sentencepiece_processor(path) if prefer_sentencepiece else None
    if sp is not None and sp.get_piece_size() > len(hf):
        raise UserError(
            f"{path}: tokenizer.model has {sp.get_piece_size()} pieces, more than the tokenizer's {len(hf)}"
        )
    tokenizer = TextTokenizer(path=path, hf=hf, sp=sp)
    log.info("tokenizer %s: %s, decoding with %s", path, type(hf).__name__, tokenizer.decode_backend)
    return tokenizer
