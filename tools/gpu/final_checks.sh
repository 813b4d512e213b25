#!/bin/bash
# Every gpu-marked test, the 8-bit decode kernel variants, and FP8 / 8-bit KV fidelity at 70B width (4 layers).
# Device tool: run "bash tools/gpu/final_checks.sh" with carry [".whl"] (the mlcommons-loadgen wheel).
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p "$OUT"/d
timeout 230 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT"/d/gpu_tests.txt | tail -15
timeout 100 python3 tools/bench_kv_decode.py --out "$OUT"/d/kv_decode.json 2>&1 | tail -12
timeout 200 python3 tools/bench_fidelity.py --shape 70b --layers 4 --variants fp8,kv-head,kv-tensor,fp8+kv-head \
    --prompts 16 --out "$OUT"/d/fid70 2>&1 | tail -25
