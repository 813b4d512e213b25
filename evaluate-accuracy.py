#!/usr/bin/env python3
"""Score an accuracy run: ROUGE of the logged outputs against the dataset's answers (SPEC §4).

Prints the accuracy log's `hash=<sha256>` line (as MLCommons' truncate_accuracy_log.py writes it into
accuracy.txt), then "\\nResults\\n" and the reference's one dict line on stdout (the checker parses both);
whether the llama2-70b-99 / -99.9 targets are met goes to stderr and, with --output-json, to a file.
The logic lives in mlperf_llama2.data.{accuracy_log, scoring, sentences} and mlperf_llama2.tokenization.

The PASS/FAIL lines are the run summary's (one check); a checkpoint that is not Llama-2-70B is not judged.
A stopped run (RUN_STOPPED.txt beside the log) is named in the first line of stdout and of the log.
Output paths, and the token ids (in the tokenizer's vocabulary, of the --dtype the log was written with),
are checked before scoring. With main.py's run_info.json beside the log, --dataset-file must be the
dataset the run read (by content where the run recorded it): another one is one line and exit 2. The
reference takes --checkpoint-path only for its tokenizer, so another checkpoint than the run's is a
warning (the scores hold if it carries the same tokenizer), not an error.
"""

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mlperf_llama2.data import scoring  # noqa: E402
from mlperf_llama2.data.accuracy_log import DTYPES, check_token_ids, load_predictions  # noqa: E402
from mlperf_llama2.data.dataset import TARGET_COLUMN, check_target, read_frame  # noqa: E402
from mlperf_llama2.errors import UserError, configure_logging, run_cli  # noqa: E402
from mlperf_llama2.file_hash import sha256_file  # noqa: E402
from mlperf_llama2.input_identity import config_sha256, mismatch, read_identity, tokenizer_sha256  # noqa: E402
from mlperf_llama2.loadgen.interrupt import STOP_NOTE  # noqa: E402
from mlperf_llama2.report.run_info import RUN_INFO_FILE, read_run_info  # noqa: E402
from mlperf_llama2.report.summary import is_llama2_70b  # noqa: E402
from mlperf_llama2.tokenization import load_tokenizer  # noqa: E402
from mlperf_llama2.writable import check_writable_file  # noqa: E402

log = logging.getLogger("evaluate-accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ROUGE scoring of a llama2-70b accuracy run.")
    parser.add_argument("--checkpoint-path", required=True, help="local checkpoint dir (its tokenizer decodes)")
    parser.add_argument("--mlperf-accuracy-file", required=True, help="mlperf_log_accuracy.json")
    parser.add_argument("--dataset-file", required=True, help="processed dataset pickle (column 'output')")
    parser.add_argument("--dtype", default="int32", choices=list(DTYPES), help="element type of the logged data")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--output-json", default=None, help="also write the results and target checks here")
    parser.add_argument("--workers", type=int, default=None, help="scoring processes (default: all CPU cores)")
    return parser


def read_targets(path: str) -> list[str]:
    frame = read_frame(path)
    if TARGET_COLUMN not in frame.columns:
        raise UserError(f"{path}: no '{TARGET_COLUMN}' column with the reference answers")
    return frame[TARGET_COLUMN].tolist()


def stopped_run_line(accuracy_file: str) -> str | None:
    """The warning for a run that was stopped (RUN_STOPPED.txt beside its accuracy log), else None."""
    note = os.path.join(os.path.dirname(os.path.abspath(accuracy_file)), STOP_NOTE)
    if not os.path.isfile(note):
        return None
    return (f"STOPPED RUN: {note} says this run was stopped before completion; its unanswered samples are "
            "empty and these scores are not a result")


def check_run_inputs(accuracy_file: str, dataset_file: str, checkpoint_path: str) -> None:
    """--dataset-file and --checkpoint-path against the run_info.json beside the log, when there is one."""
    run_dir = os.path.dirname(os.path.abspath(accuracy_file))
    info = read_run_info(run_dir)
    if not info.recorded or not os.path.isfile(dataset_file):  # a missing dataset is read_targets' one line
        return
    recorded = read_identity(run_dir)
    where = os.path.join(run_dir, RUN_INFO_FILE)
    if recorded is not None and recorded.dataset is not None:
        differs = mismatch(recorded.dataset, dataset_file)
        if differs is not None:
            raise UserError(f"--dataset-file {dataset_file} ({differs}) is not the dataset the run read: {where} "
                            f"records {recorded.dataset.describe()}; score against that file")
    elif info.dataset_path and (not os.path.isabs(info.dataset_path)  # an older run_info.json: path as given
                                or os.path.realpath(dataset_file) != os.path.realpath(info.dataset_path)):
        log.warning("--dataset-file %s: %s records the dataset %s and no content hash: cannot confirm the "
                    "answers are the run's dataset", dataset_file, where, info.dataset_path)
    model = recorded.model if recorded is not None else None
    if model is not None and model.tokenizer_sha256 is not None:  # the tokenizer itself, wherever it is now
        if tokenizer_sha256(checkpoint_path) != model.tokenizer_sha256:
            raise UserError(f"--checkpoint-path {checkpoint_path}: its tokenizer files are not those of the "
                            f"checkpoint the run used ({model.path}, recorded in {where}): decoding the outputs "
                            f"with another tokenizer gives wrong scores; pass that checkpoint's directory")
        return
    run_model = model.path if model is not None else info.model_path
    if not run_model or (model is None and not os.path.isabs(run_model)):
        return
    same_path = os.path.realpath(checkpoint_path) == os.path.realpath(run_model)
    same_config = model is not None and config_sha256(checkpoint_path) == model.config_sha256
    if not (same_path or same_config):
        log.warning("--checkpoint-path %s is not the checkpoint the run used (%s): its tokenizer decodes the "
                    "outputs, so the scores hold only if it is the same tokenizer", checkpoint_path, run_model)


def report_targets(result: dict, judged: bool) -> dict:
    checks = dict(scoring.check_targets(result), judged=judged)
    if not checks["full_dataset"]:
        log.info("only %d samples scored: a submission's accuracy run scores all of them", result["gen_num"])
    if not judged:
        log.info("accuracy targets not judged: the checkpoint is not Llama-2-70B (a stand-in)")
        return checks
    for name in ("llama2-70b-99", "llama2-70b-99.9"):
        c = checks[name]
        log.info("%s: %s (ROUGE %s thresholds %s; tokens/sample %s in %s: %s)", name,
                 "PASS" if c["passed"] else "FAIL", "ok" if c["rouge_ok"] else "below", c["thresholds"],
                 result["tokens_per_sample"], checks["tokens_per_sample_range"], checks["tokens_per_sample_ok"])
    return checks


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    stopped = stopped_run_line(args.mlperf_accuracy_file)
    if stopped:
        log.warning("%s", stopped)
    if args.output_json:
        check_writable_file(args.output_json, "--output-json")
    check_run_inputs(args.mlperf_accuracy_file, args.dataset_file, args.checkpoint_path)
    targets = read_targets(args.dataset_file)
    predictions = load_predictions(args.mlperf_accuracy_file, args.dtype, len(targets))
    wanted = [check_target(targets[p.qsl_idx], f"{args.dataset_file}: qsl_idx {p.qsl_idx}") for p in predictions]
    tokenizer = load_tokenizer(args.checkpoint_path)
    check_token_ids(predictions, tokenizer.vocab_size, args.dtype, args.mlperf_accuracy_file)
    if stopped:
        print(stopped, flush=True)
    texts = tokenizer.batch_decode([p.tokens for p in predictions], skip_special_tokens=True)
    result = scoring.evaluate(texts, wanted, (len(p.tokens) for p in predictions), args.workers)
    # truncate_accuracy_log.py's line (it appends "\\nhash={0}\\n"; any line of accuracy.txt is read), printed
    # first so the result dict stays the last line of stdout, where tools read it.
    print(f"hash={sha256_file(args.mlperf_accuracy_file)}")
    print("\nResults\n")
    print(scoring.format_result_line(result), flush=True)
    checks = report_targets(result, is_llama2_70b(args.checkpoint_path))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump({"results": result, "targets": checks, "decode_backend": tokenizer.decode_backend,
                       "run_stopped": stopped is not None,
                       "accuracy_file": args.mlperf_accuracy_file, "dataset_file": args.dataset_file}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
