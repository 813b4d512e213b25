"""The few transformers API differences between 4.46 (the LiteML wheel's) and 5.x, in one place.

- `from_pretrained`'s dtype keyword: `dtype` since 4.56, `torch_dtype` before.
- The fast tokenizer class that keeps tokenizer.json's own pipeline: `TokenizersBackend` in 5.x,
  `PreTrainedTokenizerFast` in 4.x.
"""

from __future__ import annotations

from typing import Any


def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """`from_pretrained(**dtype_kwargs(torch.float16))` on every supported transformers version."""
    return {"dtype": dtype} if _transformers_version() >= (4, 56) else {"torch_dtype": dtype}


def tokenizer_json_class():
    """The class that loads a tokenizer.json with its whole pipeline (normalizer, pre-tokenizer) kept."""
    try:
        from transformers import TokenizersBackend  # transformers >= 5

        return TokenizersBackend
    except ImportError:
        from transformers import PreTrainedTokenizerFast  # transformers 4.x

        return PreTrainedTokenizerFast
