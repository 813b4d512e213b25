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
LOG_DIR=offline_accuracy_loadgen_logs

# What main.py will run with, read back with its own parser before it runs: an --output-log-dir, --model-path or
# --dataset-path among the extra arguments wins (argparse keeps the last), and the scorer must read this run's log
# with this run's tokenizer and data, not an earlier run's log left in $LOG_DIR. NUL-separated, so that every path
# comes back byte for byte. Nothing comes back for --help or a flag main.py rejects: main.py itself says so below.
ARGS=(--scenario Offline --accuracy --user-conf "$HERE/user.conf" --total-sample-count 24576 --output-log-dir "$LOG_DIR")
[[ -z "${CHECKPOINT_PATH:-}" ]] || ARGS+=(--model-path "$CHECKPOINT_PATH")
[[ -z "${DATASET_PATH:-}" ]] || ARGS+=(--dataset-path "$DATASET_PATH")
RAN=()
while IFS= read -r -d '' field; do RAN+=("$field"); done < <(
    PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON3" -c '
import sys
from mlperf_llama2.config import build_parser
ran = build_parser().parse_args(sys.argv[1:])
for value in (ran.output_log_dir, ran.model_path or "", ran.dataset_path or ""):
    sys.stdout.write(value + "\0")
' "${ARGS[@]}" "$@" 2>/dev/null || true)
if ((${#RAN[@]} != 3)); then exec "$PYTHON3" -u "$HERE/main.py" "${ARGS[@]}" "$@"; fi
LOG_DIR="${RAN[0]}" CHECKPOINT_PATH="${RAN[1]}" DATASET_PATH="${RAN[2]}"

# A model and its dataset go together (processorca.py tokenizes for one model): half a setting must not be
# completed with the demo's other half, which would run to the end and score garbage that looks like a result.
if [[ -n "$CHECKPOINT_PATH" && -z "$DATASET_PATH" ]]; then
    echo "run_accuracy.sh: error: a model is given (CHECKPOINT_PATH or --model-path: $CHECKPOINT_PATH) but no dataset: set DATASET_PATH (or --dataset-path) to the dataset processed for it, or neither for the demo" >&2
    exit 2
fi
if [[ -z "$CHECKPOINT_PATH" && -n "$DATASET_PATH" ]]; then
    echo "run_accuracy.sh: error: a dataset is given (DATASET_PATH or --dataset-path: $DATASET_PATH) but no model: set CHECKPOINT_PATH (or --model-path) to the model it was processed for, or neither for the demo" >&2
    exit 2
fi
# Neither: the embedded demo model and data (`make accuracy` prepares them; else one line saying how).
if [[ -z "$CHECKPOINT_PATH" ]]; then
    CHECKPOINT_PATH="$(cd "$HERE" && "$PYTHON3" -m mlperf_llama2.demo path model)"
    DATASET_PATH="$(cd "$HERE" && "$PYTHON3" -m mlperf_llama2.demo path dataset)"
    ARGS+=(--model-path "$CHECKPOINT_PATH" --dataset-path "$DATASET_PATH")
fi

# stderr goes through tee below, so the live progress bar is drawn on the terminal itself, if any.
if [ -t 2 ]; then export MLPERF_LLAMA2_PROGRESS_TTY=1; fi

"$PYTHON3" -u "$HERE/main.py" "${ARGS[@]}" "$@" 2>&1 | tee offline_accuracy_log.log

"$PYTHON3" "$HERE/evaluate-accuracy.py" --checkpoint-path "${CHECKPOINT_PATH}" \
    --mlperf-accuracy-file "$LOG_DIR/mlperf_log_accuracy.json" \
    --dataset-file "${DATASET_PATH}" \
    --dtype int32 | tee "$LOG_DIR/accuracy.txt"

# The run summary (with the ROUGE line) as a table and summary.json, and its plots; on stderr, so the
# reference's result line stays the last line of stdout (tools read it from there).
# (the package is found through the repository, whatever directory the script runs from)
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON3" -m mlperf_llama2.report "$LOG_DIR" >&2
