#!/usr/bin/env bash
# Offline accuracy run, then ROUGE scoring of its accuracy log (SPEC §6).
# Needs CHECKPOINT_PATH (local Llama-2-70b-chat-hf directory) and DATASET_PATH (processed .pkl) in the
# environment. dtype/device default to float16 on CUDA and float32 on CPU; no consolidate step: the
# scorer reads mlperf_log_accuracy.json directly. Extra arguments go to main.py (e.g. --batch-size 16).
set -euo pipefail
: "${CHECKPOINT_PATH:?set CHECKPOINT_PATH to the model checkpoint directory}"
: "${DATASET_PATH:?set DATASET_PATH to the processed dataset pickle}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python3 -u "$HERE/main.py" --scenario Offline --accuracy \
    --model-path "${CHECKPOINT_PATH}" \
    --dataset-path "${DATASET_PATH}" \
    --user-conf "$HERE/user.conf" \
    --total-sample-count 24576 \
    --output-log-dir offline_accuracy_loadgen_logs \
    "$@" \
    2>&1 | tee offline_accuracy_log.log

python3 "$HERE/evaluate-accuracy.py" --checkpoint-path "${CHECKPOINT_PATH}" \
    --mlperf-accuracy-file offline_accuracy_loadgen_logs/mlperf_log_accuracy.json \
    --dataset-file "${DATASET_PATH}" \
    --dtype int32
