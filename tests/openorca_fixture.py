"""A synthetic OpenOrca parquet whose rows exercise every filter of processorca (SPEC §5).

Each row carries why it is there and whether the pipeline must keep it; the tests compare the
pipeline's output with this list, so a filter that keeps or drops the wrong rows fails.
"""

from __future__ import annotations

from mlperf_llama2.data.processorca import DROPPED_SYSTEM_PROMPTS

SEQLEN_LIMIT = 192  # small, so "too long" rows stay cheap to tokenize
PLAIN_SYSTEM = "You are a helpful assistant."
ORIGINS = ("cot", "flan", "niv", "t0")
ROWS_PER_ORIGIN = 5


def _row(rid, system, question, response, keep, why):
    return {"id": rid, "system_prompt": system, "question": question, "response": response, "keep": keep, "why": why}


def openorca_rows() -> list[dict]:
    rows = []
    for origin in ORIGINS:
        for k in range(ROWS_PER_ORIGIN):
            system = PLAIN_SYSTEM if k % 2 else ""  # "" is dropped only for niv/t0
            keep = bool(system) or origin in ("cot", "flan")
            rows.append(_row(f"{origin}.{k}", system, f"What is {k} + {k}?", f"The answer is {2 * k}.", keep,
                             "plain" if keep else "empty system prompt (niv/t0)"))
    rows += [
        _row("flan.na1", PLAIN_SYSTEM, "Caf\u00e9 au lait?", "It is coffee with milk.", False, "non-ASCII input"),
        _row("cot.na2", PLAIN_SYSTEM, "What is a dog?", "A na\u00efve animal.", False, "non-ASCII output"),
        _row("niv.na3", "Sys \u00fc", "Question?", "An answer here.", False, "non-ASCII system prompt (in input)"),
        _row("t0.quotes", PLAIN_SYSTEM, "Say \u201chi\u201d \u2013 now\u2019s the time \u2014 ok?",
             "He said \u201chi\u201d \u2013 it\u2019s fine \u2014 yes.", True, "allowed curly quotes and dashes"),
        _row("cot.long_in", PLAIN_SYSTEM, "word " * 200, "A short answer.", False, "input too long"),
        _row("flan.long_out", PLAIN_SYSTEM, "Write a lot.", "word " * 200, False, "output too long"),
        _row("niv.short", PLAIN_SYSTEM, "Yes or no?", "", False, "output shorter than 3 tokens"),
        _row("t0.none", PLAIN_SYSTEM, "No response?", None, False, "non-string response -> []"),
    ]
    for j, system in enumerate(DROPPED_SYSTEM_PROMPTS[1:]):
        for origin in ORIGINS:
            keep = origin in ("cot", "flan")
            rows.append(_row(f"{origin}.sys{j}", system, "Tell me about the sun.", "The sun is a star.", keep,
                             "listed system prompt, " + ("kept (cot/flan)" if keep else "dropped (niv/t0)")))
    return rows


def write_openorca_parquet(path) -> list[dict]:
    import pandas as pd

    rows = openorca_rows()
    frame = pd.DataFrame([{k: r[k] for k in ("id", "system_prompt", "question", "response")} for r in rows])
    frame.to_parquet(path)
    return rows
