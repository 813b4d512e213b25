#!/bin/bash
# 70B on two H100s at tensor parallel 2, for when no H200 comes (device kind nvidia-h100-x2, carry [".whl"]):
# 65 GiB of 8-bit weights leave one 80 GB H100 no KV cache worth measuring, two hold ~33 GiB of weights each.
# The multi-GPU benchmark (tools/bench_scaling.py) runs Offline through LoadGen and Server points straight into
# the engine (Poisson arrivals, p99 TTFT/TPOT; not LoadGen). Per-GPU figures compare with one H200 only loosely
# (two H100s have 2 x 3.35 TB/s and twice the tensor cores, plus the all-reduces).
#   PART=fp8    FP8 + FP8 KV cache, 2,048 samples, 512 sequences, Server at SERVER_QPS (default 6,7)
#   PART=int8   int8 Linear rules + int8 KV cache, the same
# Before anything is built it checks OUT, two GPUs (H100s; ANY_GPU=1 takes others) and LoadGen's import; DRY_RUN=1
# prints each command instead (tools/gpu/common.sh).
case "$PART" in fp8|int8) ;; *) echo "tp2_h100.sh: PART must be fp8 or int8 (got '${PART}')" >&2; exit 2 ;; esac
# shellcheck source=tools/gpu/common.sh
source "$(dirname "$0")"/common.sh
require_out tp2_h100.sh
export PYTHONUNBUFFERED=1
run python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
run nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT"/gpu.txt
require_gpus tp2_h100.sh H100 2
require_loadgen tp2_h100.sh
run timeout 560 python3 tools/bench.py --shape 70b --weights "$PART" --kv-cache-dtype "$PART" --tensor-parallel 2 \
    --samples 2048 --max-num-seqs 512 --ref-samples 0 --fidelity-prompts 0 --server-qps "${SERVER_QPS:-6,7}" \
    --server-seconds 60 --out "$OUT"/tp2_"$PART" 2>&1 | grep -v "WARNING\|Warning" | tail -12
finish
