#!/usr/bin/env bash
# Offline accuracy run, then ROUGE scoring of its accuracy log (SPEC §6).
# CHECKPOINT_PATH (local Llama-2-70b-chat-hf directory) and DATASET_PATH (processed .pkl) come from the
# environment; unset, they default to the embedded demo model and data (`make accuracy` prepares them).
# Extra arguments go to main.py (e.g. --max-new-tokens 128 --batch-size 16). dtype/device default to
# float16 on CUDA and float32 on CPU; no consolidate step: the scorer reads mlperf_log_accuracy.json.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Python: an activated environment's python3 (VIRTUAL_ENV; the container's /opt/venv), else the project's
# .venv (`make venv` or `make test` creates it), else python3 on PATH.
PYTHON3=python3
if [[ -z "${VIRTUAL_ENV:-}" && -x "$HERE/.venv/bin/python3" ]]; then PYTHON3="$HERE/.venv/bin/python3"; fi
CHECKPOINT_PATH="${CHECKPOINT_PATH:-$(cd "$HERE" && "$PYTHON3" -m mlperf_llama2.demo path model)}"
DATASET_PATH="${DATASET_PATH:-$(cd "$HERE" && "$PYTHON3" -m mlperf_llama2.demo path dataset)}"
LOG_DIR=offline_accuracy_loadgen_logs
# stderr goes through tee below, so the live progress bar is drawn on the terminal itself, if any.
if [ -t 2 ]; then export MLPERF_LLAMA2_PROGRESS_TTY=1; fi

"$PYTHON3" -u "$HERE/main.py" --scenario Offline --accuracy \
    --model-path "${CHECKPOINT_PATH}" \
    --dataset-path "${DATASET_PATH}" \
    --user-conf "$HERE/user.conf" \
    --total-sample-count 24576 \
    --output-log-dir "$LOG_DIR" \
    "$@" 2>&1 | tee offline_accuracy_log.log

# Score the run just made: an --output-log-dir, --model-path or --dataset-path among the extra arguments wins in
# main.py (argparse keeps the last), so read them back with its own parser; else an earlier run's log in
# $LOG_DIR would be scored as this run's.
RAN="$(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON3" -c '
import sys
from mlperf_llama2.config import build_parser
ran = build_parser().parse_args(sys.argv[1:])
print(ran.output_log_dir, ran.model_path, ran.dataset_path, sep="\n")
' --output-log-dir "$LOG_DIR" --model-path "${CHECKPOINT_PATH}" --dataset-path "${DATASET_PATH}" "$@")"
{ read -r LOG_DIR; read -r CHECKPOINT_PATH; read -r DATASET_PATH; } <<< "$RAN"

"$PYTHON3" "$HERE/evaluate-accuracy.py" --checkpoint-path "${CHECKPOINT_PATH}" \
    --mlperf-accuracy-file "$LOG_DIR/mlperf_log_accuracy.json" \
    --dataset-file "${DATASET_PATH}" \
    --dtype int32 | tee "$LOG_DIR/accuracy.txt"

# The run summary (with the ROUGE line) as a table and summary.json, and its plots; on stderr, so the
# reference's result line stays the last line of stdout (tools read it from there).
# (the package is found through the repository, whatever directory the script runs from)
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON3" -m mlperf_llama2.report "$LOG_DIR" >&2
