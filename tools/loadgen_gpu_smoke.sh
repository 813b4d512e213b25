#!/usr/bin/env bash
# GPU smoke test of the LoadGen runner on a tiny random Llama (no downloads): the GPU-marked tests,
# then main.py Offline and Server accuracy runs with the defaults (float16 on cuda:0) and TEST06's
# checks on the Server log. Usage: tools/loadgen_gpu_smoke.sh [WORKDIR]   (run from the repo root)
set -euo pipefail
WORK="${1:-/tmp/loadgen_gpu_smoke}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
mkdir -p "$WORK"

python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_reference_backend.py

python3 - "$WORK" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_models import build_tiny_llama, build_tokenizer
from loadgen_fixtures import SMALL_USER_CONF, write_dataset
work = Path(sys.argv[1])
tok = build_tokenizer(work / "tok")
build_tiny_llama(work / "model", tok, seed=0)
write_dataset(work / "data.pkl", tok)
(work / "user.conf").write_text(SMALL_USER_CONF)
PY

for SCENARIO in Offline Server; do
    python3 main.py --scenario "$SCENARIO" --accuracy --model-path "$WORK/model" --dataset-path "$WORK/data.pkl" \
        --user-conf "$WORK/user.conf" --batch-size 4 --max-new-tokens 16 \
        --output-log-dir "$WORK/logs_$SCENARIO" --save-outputs "$WORK/outputs_$SCENARIO.json"
done
python3 compliance/TEST06/run_verification.py -c "$WORK/logs_Server" -o "$WORK/verify" -s Server
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
o, s = (json.load(open(f"{w}/outputs_{x}.json"))["outputs"] for x in ("Offline", "Server"))
print("offline == server outputs:", o == s, "samples:", len(o))
PY
