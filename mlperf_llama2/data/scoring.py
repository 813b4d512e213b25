"""ROUGE scoring of decoded predictions against the dataset's reference answers (SPEC §4, §8).

The numbers are the reference's: both texts are `strip()`ed and re-joined one sentence a line (nltk's
English punkt splitter), every pair is scored with `RougeScorer(["rouge1", "rouge2", "rougeL",
"rougeLsum"], use_stemmer=True).score(target, prediction)` (what `evaluate`'s "rouge" returns with
use_aggregator=False), each metric is `round(np.mean(fmeasures) * 100, 4)`. Pairs are scored in
worker processes; every pair's score depends on that pair alone, so the result equals a serial run.
Everything returned is a plain Python number, so the printed dict matches the submission checker's regex.
Workers ignore SIGINT (Ctrl-C is the parent's to handle) and die silently on SIGTERM: the entry point's
SIGTERM handler, inherited through fork, would otherwise print a worker's traceback when the pool ends
(`Pool.terminate()` sends SIGTERM); a normal end closes the pool instead of terminating it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from typing import Iterable, Optional, Sequence

import numpy as np

from mlperf_llama2 import constants
from mlperf_llama2.data.sentences import split_sentences

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
CHECKER_REGEX = r"'rouge1':\s+'?([\d.]+)'?"
TARGET_FRACTIONS = {"99": 0.99, "99.9": 0.999}

_scorer = None


def postprocess_text(text: str) -> str:
    """strip(), then one sentence a line (rougeLsum splits summaries on newlines)."""
    return "\n".join(split_sentences(text.strip()))


def _get_scorer():
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _scorer


def score_pair(pair: tuple[str, str]) -> tuple[int, tuple[float, ...]]:
    """(prediction, target) raw texts -> (chars of the post-processed prediction, fmeasure per ROUGE type)."""
    prediction, target = (postprocess_text(t) for t in pair)
    scores = _get_scorer().score(target, prediction)
    return len(prediction), tuple(scores[t].fmeasure for t in ROUGE_TYPES)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _quiet_worker() -> None:
    """Pool initializer: the parent owns Ctrl-C; `Pool.terminate()`'s SIGTERM just ends the worker.
    The stop signals arrive blocked (see `_start_pool`) and are unblocked once these handlers are set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _start_pool(workers: int):
    """A pool whose workers never run the parent's handlers: SIGINT/SIGTERM are blocked while they fork
    (a signal arriving then is held, not lost, and reaches this process as soon as the pool exists)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return multiprocessing.get_context().Pool(workers, initializer=_quiet_worker)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def score_pairs(
    predictions: Sequence[str], targets: Sequence[str], workers: Optional[int] = None
) -> list[tuple[int, tuple[float, ...]]]:
    """Score every (prediction, target) pair, in order; `workers` processes (1 = in this process)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    pairs = list(zip(predictions, targets))
    workers = min(default_workers() if workers is None else max(1, workers), max(1, len(pairs)))
    if workers == 1:
        return [score_pair(p) for p in pairs]
    chunksize = max(1, len(pairs) // (workers * 8))
    log.info("scoring %d samples on %d processes", len(pairs), workers)
    pool = None
    try:
        pool = _start_pool(workers)
        scored = pool.map(score_pair, pairs, chunksize=chunksize)
    except BaseException:
        if pool is not None:
            pool.terminate()  # Ctrl-C or an error: end the workers (silently, see _quiet_worker)
            pool.join()
        raise
    pool.close()  # normal end: the workers leave on their own, no signal sent
    pool.join()
    return scored


def aggregate(scored: Sequence[tuple[int, tuple[float, ...]]], gen_tok_len: int) -> dict:
    """The reference's result dict, in its key order, with plain Python numbers."""
    if not scored:
        raise ValueError("nothing to aggregate")
    result = {}
    for k, rouge_type in enumerate(ROUGE_TYPES):
        # np.mean then numpy's round, as the reference computes it; float() only changes the type.
        result[rouge_type] = float(round(np.mean([s[1][k] for s in scored]) * 100, 4))
    gen_num = len(scored)
    result["gen_len"] = int(np.sum([s[0] for s in scored]))
    result["gen_num"] = gen_num
    result["gen_tok_len"] = int(gen_tok_len)
    result["tokens_per_sample"] = round(gen_tok_len / gen_num, 1)
    return result


def evaluate(
    predictions: Sequence[str], targets: Sequence[str], token_counts: Iterable[int], workers: Optional[int] = None
) -> dict:
    """Decoded predictions + reference answers + generated token counts -> the reference's result dict."""
    return aggregate(score_pairs(predictions, targets, workers), sum(int(n) for n in token_counts))


def check_targets(result: dict) -> dict:
    """Whether the llama2-70b-99 / -99.9 accuracy targets (SPEC §8) are met by `result`."""
    low, high = (constants.TOKENS_PER_SAMPLE_REFERENCE * f for f in constants.TOKENS_PER_SAMPLE_TOLERANCE)
    tps = result["tokens_per_sample"]
    report = {
        "full_dataset": result["gen_num"] == constants.TOTAL_SAMPLE_COUNT,
        "tokens_per_sample_range": [round(low, 2), round(high, 2)],
        "tokens_per_sample_ok": bool(low <= tps <= high),
    }
    for name, fraction in TARGET_FRACTIONS.items():
        thresholds = {k: v * fraction for k, v in constants.ROUGE_REFERENCE.items()}
        rouge_ok = all(result[k] >= t for k, t in thresholds.items())
        report[f"llama2-70b-{name}"] = {
            "thresholds": {k: round(t, 4) for k, t in thresholds.items()},
            "rouge_ok": rouge_ok,
            "passed": rouge_ok and report["tokens_per_sample_ok"],
        }
    return report


def format_result_line(result: dict) -> str:
    """The reference's one result line (a Python dict repr)."""
    return str(result)
