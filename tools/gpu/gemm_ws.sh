#!/bin/bash
# The warp-specialised Gluon GEMM (quant/gemm8_ws.py), first time on a GPU: its bit-for-bit tests against the
# Triton kernel, then every candidate tile beside the kernels the engine uses today, at the 70B shapes.
# Device tool (H100 or H200, ~6 min): run "bash tools/gpu/gemm_ws.sh"; copy $OUT/ws into docs/results/.
# If the tests fail, the table is still written (a failing kernel's cells read "err") but means nothing.
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT"/gpu.txt
mkdir -p "$OUT"/ws
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -x tests/test_gemm8_ws_gpu.py 2>&1 \
    | tee "$OUT"/ws/gpu_tests.txt | tail -15
WS=$(python3 -c "
from mlperf_llama2.quant.gemm8_ws import CONFIGS
tile = lambda c: f'{c.bm}x{c.bn}s{c.stages}p{c.split}' + ('w2' if c.wgs == 2 else '')
print(','.join([f'ws_fp8@{tile(c)}' for c in CONFIGS['fp8_promote']]
               + [f'ws_{k}@{tile(c)}' for k in ('fp8_fast', 'int8') for c in CONFIGS['fast']]))")
timeout "${BENCH_S:-400}" python3 tools/bench_gemm.py --m-list "${M_LIST:-256,1024,4096}" \
    --kernels scaled_mm_row,scaled_mm_row_fast,gemm8_fp8,gemm8_fp8_fast,gemm8_int8,"$WS" --out "$OUT"/ws 2>&1 | tail -40
