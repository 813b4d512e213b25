#!/bin/bash
# GPU kernels: the gpu-marked tests of the loader, FP8, 8-bit KV cache and GEMM, then the KV-decode and GEMM benchmarks.
# Device tool: run "bash tools/gpu/kernels.sh" with carry [".whl"] (the mlcommons-loadgen wheel).
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
python3 -c "import torch,triton,transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
mkdir -p "$OUT"/a
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_engine_fp8.py tests/test_gemm8.py tests/test_engine_kv_cache.py tests/test_fused_quant_producers.py tests/test_engine_loader.py tests/test_engine_int8.py 2>&1 | tee "$OUT"/a/gpu_tests.txt | tail -25
timeout 60 python3 tools/bench_kv_decode.py --out "$OUT"/a/kv_decode.json 2>&1 | tail -14
timeout 230 python3 tools/bench_gemm.py --m-list 64,256,1024,4096 --out "$OUT"/a/gemm 2>&1 | tail -45
