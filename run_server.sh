#!/usr/bin/env bash
# Server performance run (SPEC §6). Needs CHECKPOINT_PATH and DATASET_PATH in the environment;
# extra arguments are passed to main.py (e.g. --scenario Interactive: Server with --lg-model-name
# llama2-70b-interactive; add --output-log-dir interactive-logs to keep both runs).
set -euo pipefail
need() { [[ -n "${!1:-}" ]] || { echo "$(basename "$0"): error: $1 is not set: $2" >&2; exit 2; }; }
need CHECKPOINT_PATH "export CHECKPOINT_PATH=/path/to/the/model/checkpoint/directory"
need DATASET_PATH "export DATASET_PATH=/path/to/the/processed/dataset.pkl"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Python: an activated environment's python3 (VIRTUAL_ENV; the container's /opt/venv), else the project's
# .venv (`make venv` or `make test` creates it), else python3 on PATH.
PYTHON3=python3
if [[ -z "${VIRTUAL_ENV:-}" && -x "$HERE/.venv/bin/python3" ]]; then PYTHON3="$HERE/.venv/bin/python3"; fi

"$PYTHON3" -u "$HERE/main.py" --scenario Server \
    --model-path "${CHECKPOINT_PATH}" \
    --dataset-path "${DATASET_PATH}" \
    --user-conf "$HERE/user.conf" \
    --total-sample-count 24576 \
    --output-log-dir server-logs \
    "$@" \
    2>&1 | tee server_performance_log.log
