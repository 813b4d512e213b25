#!/bin/bash
# 70B FP8 (weights + KV) and 70B int8 through LoadGen -> SUT -> engine (random weights, PERF.md workload).
# Device tool: run "bash tools/gpu/bench_70b.sh" with carry [".whl"] (the mlcommons-loadgen wheel).
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
COMMON=(--shape 70b --samples 1024 --ref-samples 0 --fidelity-prompts 0)
timeout 290 python3 tools/bench.py "${COMMON[@]}" --weights fp8 --kv-cache-dtype fp8 --max-num-seqs 512 --out "$OUT"/fp8 2>&1 | grep -v "^WARNING\|Warning" | tail -22
timeout 290 python3 tools/bench.py "${COMMON[@]}" --weights int8 --out "$OUT"/int8_new 2>&1 | tail -14
