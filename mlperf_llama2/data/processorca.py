"""OpenOrca GPT-4 parquet -> the benchmark's processed pickles (SPEC §5), one pure function per step.

The steps run in the reference's order: load + rename, prompt, tokenize, origin, ASCII filter, length
filter, short-output filter, system-prompt filter; then the full frame and one frame per origin are
written, `num_total_samples / origins` rows are sampled per origin (seed 1337, origins sorted) and a
calibration subset is drawn from the sample (seed 12345). Only `generate` touches files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

from mlperf_llama2 import constants
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

PARQUET_COLUMNS = ("id", "system_prompt", "question", "response")
OUTPUT_COLUMNS = (
    "id", "system_prompt", "question", "output", "input", "tok_input", "tok_output", "origin",
    "tok_input_length", "tok_output_length",
)
PROMPT_WITH_SYSTEM = "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{question} [/INST]"
PROMPT_NO_SYSTEM = "<s>[INST] {question} [/INST]"
# Non-ASCII characters the reference still accepts (curly quotes and dashes).
ALLOWED_NON_ASCII = frozenset("\u2019\u2013\u201c\u201d\u2014")
MIN_OUTPUT_TOKENS = 3
# System prompts whose niv / t0 rows the reference drops.
DROPPED_ORIGINS = ("niv", "t0")
DROPPED_SYSTEM_PROMPTS = (
    "",
    "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
    "You are an AI assistant. Provide a detailed answer so user don\u2019t need to search outside "
    "to understand the answer.",
    "You are an AI assistant. Provide a detailed answer so user don't need to search outside "
    "to understand the answer.",
    "User will you give you a task with some instruction. Your job is follow the instructions as "
    "faithfully as you can. While answering think step-by-step and justify your answer.",
    "Explain how you used the definition to come up with the answer.",
)
SAMPLE_SEED = 1337
CALIBRATION_SEED = 12345
WORD_START_SENTENCEPIECE = "\u2581"  # "▁"
WORD_START_BYTE_LEVEL = "\u0120"  # "Ġ"
TOKENIZE_CHUNK = 4096


# --- steps 1-4: load, prompt, tokenize, origin -------------------------------------------------------


def load_parquet(path: str):
    """Step 1: the parquet's four columns, `response` renamed to `output`."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UserError(f"OpenOrca parquet not found: {path} (fix --dataset_pq_path)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user problem
        raise UserError(f"cannot read parquet {path}: {type(exc).__name__}: {exc}") from None
    missing = [c for c in PARQUET_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns))})")
    if "output" in frame.columns:  # the rename would make two 'output' columns
        raise UserError(f"{path}: has both 'response' and 'output' columns; the OpenOrca parquet has only 'response'")
    check_parquet_rows(frame, path)
    return frame.rename(columns={"response": "output"})


def check_parquet_rows(frame, path: str) -> None:
    """Every id and question is text, a system prompt is text or missing, ids are unique: else one line.

    A null question would become the prompt "<s>[INST] nan [/INST]" and a null id the origin "nan" (a fifth
    origin in the sampling). A non-text `response` is the reference's "[]" (dropped by the short-output rule).
    """
    for column, allow_missing in (("id", False), ("question", False), ("system_prompt", True)):
        bad = [i for i, v in enumerate(frame[column].tolist())
               if not isinstance(v, str) and not (allow_missing and _missing(v))]
        if bad:
            raise UserError(f"{path}: {len(bad)} row(s) with no text in '{column}' (first: row {bad[0]}, id "
                            f"{frame['id'].iloc[bad[0]]}, value {frame[column].iloc[bad[0]]!r}); is this the "
                            "OpenOrca GPT-4 parquet, undamaged?")
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise UserError(f"{path}: {len(duplicated)} duplicate id(s): {', '.join(map(str, duplicated.iloc[:3]))}"
                        f"{' ...' if len(duplicated) > 3 else ''}; each OpenOrca id is unique (a file joined twice?)")


def _missing(value) -> bool:
    """A parquet null as pandas reads it: None, NaN (pandas >= 3 reads a null string as NaN) or pd.NA."""
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def has_system_prompt(system_prompt) -> bool:
    """A non-empty system prompt. A missing one is empty: NaN is truthy, and would put "nan" in the prompt
    (pandas < 3, which the reference ran, read a null as the falsy None)."""
    return not _missing(system_prompt) and bool(system_prompt)


def llama2_prompt(system_prompt, question) -> str:
    """Step 2: the reference's Llama-2 chat template (system block only for a non-empty system prompt)."""
    if has_system_prompt(system_prompt):
        return PROMPT_WITH_SYSTEM.format(system=system_prompt, question=question)
    return PROMPT_NO_SYSTEM.format(question=question)


def chat_template_prompt(tokenizer) -> Callable:
    """Option for non-Llama-2 models: the tokenizer's own chat template, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("--use_chat_template: the tokenizer in --model_dir has no chat template")

    def prompt(system_prompt, question) -> str:
        messages = ([{"role": "system", "content": system_prompt}] if has_system_prompt(system_prompt) else []) + [
            {"role": "user", "content": question}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return prompt


def add_prompts(frame, prompt: Callable = llama2_prompt):
    frame = frame.copy()
    frame["input"] = [prompt(s, q) for s, q in zip(frame["system_prompt"], frame["question"])]
    return frame


def response_init_token(tokenizer) -> tuple[Optional[int], str]:
    """The token appended to every prompt, and why (SPEC §0, §5).

    Llama-2: 29871, its lone "▁". Another sentencepiece-style (Metaspace) tokenizer: its own lone "▁"
    piece, which such models also emit first. Byte-level BPE ("Ġ", GPT-2 / SmolLM2): nothing, since the
    space is merged into the following word's token, so no free lone-space first token exists to block
    and a lone "Ġ" would put the prompt off-distribution. No lone word-start piece: nothing.
    """
    llama2_id = constants.LLAMA2_RESPONSE_INIT_TOKEN
    if llama2_id < len(tokenizer) and tokenizer.convert_ids_to_tokens(llama2_id) == WORD_START_SENTENCEPIECE:
        return llama2_id, f"Llama-2 response-init token {llama2_id} (lone '\u2581')"
    vocab = tokenizer.get_vocab()
    if WORD_START_SENTENCEPIECE in vocab:
        token_id = vocab[WORD_START_SENTENCEPIECE]
        return token_id, f"this tokenizer's lone '\u2581' piece, id {token_id} (not Llama-2's 29871)"
    if WORD_START_BYTE_LEVEL in vocab:
        return None, "none: byte-level BPE tokenizer (its 'Ġ' merges into the next word, no free first token)"
    return None, "none: the tokenizer has no lone word-start piece"


def tokenize_texts(tokenizer, texts, add_special_tokens: bool = True) -> list[list[int]]:
    """`tokenizer(text)["input_ids"]` per text (batched for speed; same ids); a non-string gives []."""
    out: list[list[int]] = [[] for _ in texts]
    positions = [i for i, t in enumerate(texts) if isinstance(t, str)]
    for start in range(0, len(positions), TOKENIZE_CHUNK):
        chunk = positions[start:start + TOKENIZE_CHUNK]
        ids = tokenizer([texts[i] for i in chunk], add_special_tokens=add_special_tokens)["input_ids"]
        for i, row in zip(chunk, ids):
            out[i] = list(row)
    return out


def add_tokens(frame, tokenizer, init_token: Optional[int], add_special_tokens: bool = True):
    """Step 3: tok_input (+ the response-init token) and tok_output."""
    frame = frame.copy()
    suffix = [] if init_token is None else [init_token]
    inputs = tokenize_texts(tokenizer, frame["input"].tolist(), add_special_tokens)
    frame["tok_input"] = [ids + suffix for ids in inputs]
    frame["tok_output"] = tokenize_texts(tokenizer, frame["output"].tolist())
    return frame


def add_origin(frame):
    """Step 4: origin = the id's prefix before the first '.' (cot, flan, niv, t0)."""
    frame = frame.copy()
    frame["origin"] = [str(i).split(".")[0] for i in frame["id"]]
    return frame


# --- steps 5-8: filters ----------------------------------------------------------------------------


def is_english(text) -> bool:
    """ASCII or one of the allowed curly quotes / dashes. A non-string has no characters: kept here
    (the reference would crash on it), dropped by the short-output rule since it tokenizes to []."""
    if not isinstance(text, str):
        return True
    return all(c.isascii() or c in ALLOWED_NON_ASCII for c in text)


def filter_english(frame):
    """Step 5 (the reference resets the index after this step only)."""
    keep = [is_english(i) and is_english(o) for i, o in zip(frame["input"], frame["output"])]
    return frame[keep].reset_index(drop=True)


def filter_seqlen(frame, seqlen_limit: int = constants.INPUT_TOKEN_LIMIT):
    """Step 6: add token lengths; keep input and output both shorter than the limit."""
    frame = frame.copy()
    frame["tok_input_length"] = [len(x) for x in frame["tok_input"]]
    frame["tok_output_length"] = [len(x) for x in frame["tok_output"]]
    return frame[(frame["tok_input_length"] < seqlen_limit) & (frame["tok_output_length"] < seqlen_limit)]


def filter_short_outputs(frame):
    """Step 7: keep reference answers of at least MIN_OUTPUT_TOKENS tokens."""
    return frame[frame["tok_output_length"] >= MIN_OUTPUT_TOKENS]


def filter_bad_system_prompts(frame):
    """Step 8: drop niv / t0 rows whose system prompt is exactly one of DROPPED_SYSTEM_PROMPTS."""
    bad = frame["system_prompt"].isin(DROPPED_SYSTEM_PROMPTS) & frame["origin"].isin(DROPPED_ORIGINS)
    return frame[~bad]


FILTERS = (
    ("ASCII / allowed punctuation", filter_english),
    ("token lengths < seqlen_limit", filter_seqlen),
    (f"output >= {MIN_OUTPUT_TOKENS} tokens", filter_short_outputs),
    ("niv/t0 system prompts", filter_bad_system_prompts),
)


def apply_filters(frame, seqlen_limit: int = constants.INPUT_TOKEN_LIMIT):
    """Steps 5-8 in order, logging the row count after each; returns the frame with OUTPUT_COLUMNS."""
    for name, step in FILTERS:
        frame = step(frame, seqlen_limit) if step is filter_seqlen else step(frame)
        log.info("after filter %-30s %d rows", name + ":", len(frame))
    return frame[list(OUTPUT_COLUMNS)]


# --- steps 10-11: sampling --------------------------------------------------------------------------


def split_by_origin(frame) -> dict:
    """One frame per origin, in order of first appearance (as `unique()` gives them)."""
    return {origin: frame[frame["origin"] == origin] for origin in frame["origin"].unique()}


def sample_per_origin(by_origin: dict, num_total_samples: int):
    """Step 10: the same number of rows from each origin (sorted), seed 1337, concatenated, index reset."""
    import pandas as pd

    if not by_origin:
        raise UserError("no rows left after filtering: nothing to sample")
    if num_total_samples % len(by_origin):
        raise UserError(
            f"--num_total_samples {num_total_samples} does not divide evenly by the {len(by_origin)} origins "
            f"present ({', '.join(sorted(by_origin))})"
        )
    per_origin = num_total_samples // len(by_origin)
    for origin in sorted(by_origin):
        if len(by_origin[origin]) < per_origin:
            raise UserError(
                f"origin '{origin}' has {len(by_origin[origin])} rows after filtering, fewer than the "
                f"{per_origin} to sample from it (lower --num_total_samples)"
            )
    parts = [by_origin[o].sample(per_origin, random_state=SAMPLE_SEED) for o in sorted(by_origin)]
    return pd.concat(parts).reset_index(drop=True)


def calibration_subset(sampled, size: int):
    """Step 11: `size` rows of the sample, seed 12345, index reset."""
    if size > len(sampled):
        raise UserError(f"--calibration_subset_size {size} is larger than the {len(sampled)} sampled rows")
    return sampled.sample(n=size, random_state=CALIBRATION_SEED).reset_index(drop=True)


# --- the pipeline with its files ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessConfig:
    dataset_pq_path: str
    model_dir: str
    export_dir: str
    seqlen_limit: int = constants.INPUT_TOKEN_LIMIT
    num_total_samples: int = constants.TOTAL_SAMPLE_COUNT
    calibration_subset_size: int = 1000
    use_chat_template: bool = False

    def __post_init__(self):
        for name in ("seqlen_limit", "num_total_samples", "calibration_subset_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")


def output_path(export_dir: str, part: str) -> str:
    return os.path.join(export_dir, f"{constants.PROCESSED_PREFIX}.{part}.pkl")


def load_tokenizer_for_preprocessing(model_dir: str):
    """The checkpoint's fast tokenizer, as the reference's LlamaTokenizerFast.from_pretrained(model_dir)."""
    from mlperf_llama2.tokenization import load_hf_tokenizer

    return load_hf_tokenizer(model_dir)


def build_full_frame(config: ProcessConfig):
    """Steps 1-8 from the parquet."""
    frame = load_parquet(config.dataset_pq_path)
    log.info("loaded %s: %d rows", config.dataset_pq_path, len(frame))
    tokenizer = load_tokenizer_for_preprocessing(config.model_dir)
    prompt = chat_template_prompt(tokenizer) if config.use_chat_template else llama2_prompt
    init_token, why = response_init_token(tokenizer)
    log.info("prompt template: %s; appended response-init token: %s",
             "tokenizer chat template" if config.use_chat_template else "Llama-2 reference", why)
    frame = add_prompts(frame, prompt)
    # A chat template writes its own special tokens (BOS included); the reference template also gets the
    # tokenizer's BOS in front of its literal "<s>", hence prompts starting 1, 1.
    frame = add_tokens(frame, tokenizer, init_token, add_special_tokens=not config.use_chat_template)
    frame = add_origin(frame)
    return apply_filters(frame, config.seqlen_limit)


def build_args(config: ProcessConfig) -> dict:
    """The arguments (and input contents) the cached full and per-origin pickles depend on, as recorded beside
    them: a parquet or tokenizer replaced at the same path is not served from the cache."""
    from mlperf_llama2.file_hash import sha256_file
    from mlperf_llama2.input_identity import tokenizer_sha256

    return {"dataset_pq_path": os.path.abspath(config.dataset_pq_path), "model_dir": os.path.abspath(config.model_dir),
            "seqlen_limit": config.seqlen_limit, "use_chat_template": config.use_chat_template,
            "dataset_pq_sha256": sha256_file(config.dataset_pq_path),
            "tokenizer_sha256": tokenizer_sha256(config.model_dir)}


RECORD_LABELS = {"dataset_pq_sha256": "the content of --dataset_pq_path",
                 "tokenizer_sha256": "the tokenizer files in --model_dir"}


def args_record_path(export_dir: str) -> str:
    return os.path.join(export_dir, f"{constants.PROCESSED_PREFIX}.args.json")


def cache_matches(export_dir: str, wanted: dict) -> bool:
    """True when the cached pickles in `export_dir` were built with `wanted`; logs why not when they exist."""
    full = output_path(export_dir, "full")
    if not os.path.exists(full):
        return False
    record = args_record_path(export_dir)
    try:
        with open(record, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        log.warning("%s has no readable record of the arguments it was built with (%s): rebuilding it", full,
                    os.path.basename(record))
        return False
    if not isinstance(recorded, dict):
        recorded = {}
    differ = [f"{RECORD_LABELS.get(k, '--' + k)} {recorded.get(k)!r} -> {v!r}" for k, v in wanted.items()
              if recorded.get(k) != v]
    if differ:
        log.warning("the cached pickles in %s were built with other arguments (%s): rebuilding them", export_dir,
                    "; ".join(differ))
        return False
    return True


def write_args_record(export_dir: str, wanted: dict) -> None:
    """Written after the cached pickles, so an interrupted build leaves none and is rebuilt next time."""
    path = args_record_path(export_dir)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _read_or_build(path: str, build: Callable, reuse: bool):
    import pandas as pd

    if reuse and os.path.exists(path):
        try:
            frame = pd.read_pickle(path)
            log.info("reusing existing %s (built with the same arguments)", path)
            return frame
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not ours: rebuild it
            log.warning("cannot read the cached %s (%s: %s): rebuilding it", path, type(exc).__name__, exc)
    frame = build()
    frame.to_pickle(path)
    log.info("wrote %s (%d rows)", path, len(frame))
    return frame


def generate(config: ProcessConfig) -> dict:
    """Run every step and write every file; returns {part name: path}.

    The full and per-origin pickles are reused only when the arguments recorded beside them
    (`*.args.json`) equal this run's; otherwise they are rebuilt (and the record rewritten).
    """
    # Checked even when cached files would make them unused: a wrong path should not pass silently.
    if not os.path.isfile(config.dataset_pq_path):
        raise UserError(f"OpenOrca parquet not found: {config.dataset_pq_path} (fix --dataset_pq_path)")
    if not os.path.isdir(config.model_dir):
        raise UserError(f"--model_dir is not a directory: {config.model_dir}")
    try:
        os.makedirs(config.export_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --export_dir {config.export_dir}: {exc.strerror}") from None
    wanted = build_args(config)
    reuse = cache_matches(config.export_dir, wanted)
    if not reuse and os.path.exists(args_record_path(config.export_dir)):
        # the old record must not outlive the pickles it vouched for: a rebuild stopped midway would leave
        # pickles of these arguments beside a record of the old ones, reused as theirs on the next run
        os.remove(args_record_path(config.export_dir))
    paths = {"full": output_path(config.export_dir, "full")}
    full = _read_or_build(paths["full"], lambda: build_full_frame(config), reuse)
    by_origin = {}
    for origin, part in split_by_origin(full).items():
        paths[origin] = output_path(config.export_dir, origin)
        by_origin[origin] = _read_or_build(paths[origin], lambda part=part: part, reuse)
    write_args_record(config.export_dir, wanted)
    sampled = sample_per_origin(by_origin, config.num_total_samples)
    paths["sampled"] = output_path(config.export_dir, f"sampled_{config.num_total_samples}")
    sampled.to_pickle(paths["sampled"])
    log.info("wrote %s (%d rows)", paths["sampled"], len(sampled))
    calibration = calibration_subset(sampled, config.calibration_subset_size)
    paths["calibration"] = output_path(config.export_dir, f"calibration_{config.calibration_subset_size}")
    calibration.to_pickle(paths["calibration"])
    log.info("wrote %s (%d rows)", paths["calibration"], len(calibration))
    return paths
