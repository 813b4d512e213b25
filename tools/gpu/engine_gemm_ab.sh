#!/bin/bash
# --engine-gemm A/B end to end: the same 70B Offline benchmark (20 of 80 layers, PERF.md workload) with today's
# GEMMs (auto) and the warp-specialised Gluon GEMM (ws), one after the other on one GPU, for the int8 mode
# (Linear rules, int8 KV), the whole LiteML config (every rule) and FP8 (+ FP8 KV). Run tools/gpu/gemm_ws.sh
# first: its tests must pass before these numbers mean anything.
# Device tool: "bash tools/gpu/engine_gemm_ab.sh" with carry [".whl"]; MODES="int8 all fp8" by default.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT"/gpu.txt
COMMON=(--shape 70b --layers "${LAYERS:-20}" --samples "${SAMPLES:-512}" --ref-samples 0 --fidelity-prompts 0)
for mode in ${MODES:-int8 all fp8}; do
  case $mode in
    int8) ARGS=(--weights int8 --kv-cache-dtype int8 --int8-rules linear) ;;
    all)  ARGS=(--weights int8 --kv-cache-dtype int8 --int8-rules all) ;;
    fp8)  ARGS=(--weights fp8 --kv-cache-dtype fp8) ;;
  esac
  for gemm in auto ws; do
    timeout "${BENCH_TIMEOUT:-100}" python3 tools/bench.py "${COMMON[@]}" "${ARGS[@]}" --engine-gemm "$gemm" \
        --out "$OUT/${mode}_${gemm}" 2>&1 | grep -v "^WARNING\|Warning" | tail -4
  done
done
