#!/bin/bash
# The whole 70B (all 80 layers) in FP8 + FP8 KV on ONE H100, through LoadGen, for when no H200 comes (device kind
# nvidia-h100-x1, carry [".whl"]): 64.8 GiB of FP8 weights leave ~9 GiB of KV cache, about 40 live sequences of
# PERF.md's workload, so these are latency-scenario figures of a KV-capped card, not #19's H200 rows. One part
# per call (each under the 10-minute limit):
#   PART=server       Offline (256 samples: the capacity the automatic point is taken from), then one automatic
#                     Server point (0.9 of that capacity) of >= 500 queries, 2 s / 200 ms, main.py's Server defaults
#   PART=interactive  one automatic Interactive point (450 / 40 ms; 0.5 of the Offline capacity in OFFLINE_JSON,
#                     default the server part's bench.json copied to docs/results), >= 500 queries, main.py's
#                     Interactive defaults (--graph-mixed-tokens 512)
#   PART=wc_server    #20 on the same card: the whole LiteML config in int8 mode (--int8-rules all, int8 KV with the
#                     config's scales; int8 weights are as large as FP8's), Offline 256 samples, then one automatic
#                     Server point (0.9 of that capacity, >= 500 queries): the whole-config Server-to-Offline ratio
#                     #20 asks for (>= 0.9), never measured before, on a KV-capped card
# Copy $OUT into docs/results/ (bench.json as bench_engine_70b_fp8_fp8kv_h100_scenarios_<part>.json).
# Before anything is built it checks OUT, the card (an H100: ANY_GPU=1 runs on another), LoadGen's import and the
# interactive part's OFFLINE_JSON (same build); DRY_RUN=1 prints each command instead (tools/gpu/common.sh).
case "$PART" in server|interactive|wc_server) ;; *)
  echo "h100_scenarios.sh: PART must be server, interactive or wc_server (got '${PART}')" >&2; exit 2 ;; esac
# shellcheck source=tools/gpu/common.sh
source "$(dirname "$0")"/common.sh
require_out h100_scenarios.sh
OFFLINE_JSON=${OFFLINE_JSON:-docs/results/bench_engine_70b_fp8_fp8kv_h100_scenarios_server.json}
[ "$PART" = interactive ] && check_offline_json h100_scenarios.sh OFFLINE_JSON "$OFFLINE_JSON" fp8 fp8 linear
export PYTHONUNBUFFERED=1
run python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
run nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | tee "$OUT"/gpu.txt
require_gpus h100_scenarios.sh H100 1
require_loadgen h100_scenarios.sh
if [ "$PART" = wc_server ]; then NUMERICS=(--weights int8 --kv-cache-dtype int8 --int8-rules all)
else NUMERICS=(--weights fp8 --kv-cache-dtype fp8); fi
BENCH=(python3 tools/bench.py --shape 70b --ref-samples 0 --fidelity-prompts 0 "${NUMERICS[@]}"
       --server-auto 1 --server-seconds 60 --server-min-queries 500)
filter() { grep -v "^WARNING\|Warning" | tail -"${1:-24}"; }
case "$PART" in
  server|wc_server)
    run timeout 560 "${BENCH[@]}" --samples 256 --max-num-seqs 64 --out "$OUT"/"$PART" 2>&1 | filter 30
    run python3 tools/steady_state.py "$OUT"/"$PART"/bench.json ;;
  interactive)
    run timeout 560 "${BENCH[@]}" --samples 0 --interactive --max-num-seqs 64 --max-num-batched-tokens 1024 \
        --graph-mixed-tokens 512 --offline-json "$OFFLINE_JSON" \
        --out "$OUT"/interactive 2>&1 | filter 30 ;;
esac
finish
