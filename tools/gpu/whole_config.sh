#!/bin/bash
# Issue #20 on the GPU, one call: the whole-config kernels' GPU tests, the engine's fused path against its eager
# path, main.py --quant-mode int8 on CUDA (nothing left out, accuracy log = direct tokens), then 70B int8 Offline
# (20 of its 80 layers by default: LAYERS=80 for the whole model) with the Linear rules only vs every rule, same int8 KV cache, same prompts, one after the other on one GPU.
# Device tool: run "bash tools/gpu/whole_config.sh" with carry [".whl"] (the mlcommons-loadgen wheel).
# The whole 70B (an H200: weights 65 GiB + the int8 KV cache): LAYERS=80 SAMPLES=1024 BENCH_TIMEOUT=240.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT"/gpu.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -x -m "gpu" tests/test_whole_config_triton.py \
    tests/test_whole_config_decode.py tests/test_whole_config_prefill.py 2>&1 | tail -15 | tee "$OUT"/gpu_kernel_tests.txt
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_engine_whole_config.py \
    "tests/test_engine_int8.py::test_main_engine_int8_under_loadgen_answers_with_the_int8_tokens" 2>&1 | tail -15 \
    | tee "$OUT"/gpu_engine_tests.txt
COMMON=(--shape 70b --layers "${LAYERS:-20}" --samples "${SAMPLES:-512}" --ref-samples 0 --fidelity-prompts 0 --weights int8 --kv-cache-dtype int8)
for rules in linear all; do
  timeout "${BENCH_TIMEOUT:-135}" python3 tools/bench.py "${COMMON[@]}" --int8-rules $rules --out "$OUT"/int8_$rules 2>&1 \
      | grep -v "^WARNING\|Warning" | tail -8
done
