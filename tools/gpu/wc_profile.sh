#!/bin/bash
# Issue #20: where the whole-config int8 step's time goes, against the Linear-only int8 mode on the same int8 KV
# cache: the whole-config decode attention variants (tools/bench_kv_decode.py --whole-config) and step profiles
# of both modes (tools/profile_step.py, 70B widths at LAYERS of its 80 layers, 256 decodes at context 740).
# Device tool: run "bash tools/gpu/wc_profile.sh" (fits an H100 at LAYERS=20).
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT"/gpu.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_exact_div_gpu.py tests/test_whole_config_decode.py \
    tests/test_whole_config_prefill.py tests/test_whole_config_triton.py tests/test_fused_quant_producers.py \
    tests/quant/test_quant_int8_linear.py tests/test_engine_fp8.py tests/test_engine_kernels_gpu.py 2>&1 \
    | tee "$OUT"/gpu_tests.txt | tail -12
timeout 120 python3 tools/bench_kv_decode.py --whole-config --batches 256,512 --out "$OUT"/wc_decode.json 2>&1 \
    | grep -v '^{"device' | tail -16
for rules in linear all; do
  timeout 150 python3 tools/profile_step.py --shape 70b --layers "${LAYERS:-20}" --weights int8 --kv-cache-dtype int8 \
      --int8-rules $rules --reps 10 --out "$OUT"/prof_$rules 2>&1 | grep -v "WARNING\|Warning\|INFO" | tail -26
done
