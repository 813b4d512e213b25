#!/usr/bin/env bash
# Offline performance run (SPEC §6). Needs CHECKPOINT_PATH and DATASET_PATH in the environment;
# extra arguments are passed to main.py (e.g. --batch-size 16 --backend engine).
set -euo pipefail
: "${CHECKPOINT_PATH:?set CHECKPOINT_PATH to the model checkpoint directory}"
: "${DATASET_PATH:?set DATASET_PATH to the processed dataset pickle}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python3 -u "$HERE/main.py" --scenario Offline \
    --model-path "${CHECKPOINT_PATH}" \
    --dataset-path "${DATASET_PATH}" \
    --user-conf "$HERE/user.conf" \
    --total-sample-count 24576 \
    --output-log-dir offline-logs \
    "$@" \
    2>&1 | tee offline_performance_log.log
