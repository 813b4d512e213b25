#!/bin/bash
# The H200 measurements issues #19 and #20 still owe, one part per device call (each under the 10-minute limit).
# Device tool: run "PART=<part> bash tools/gpu/owed_h200.sh" with carry [".whl"] and needs_h200 true (the whole
# 70B: 65 GiB of 8-bit weights plus a KV cache worth measuring do not fit an 80 GB H100). Copy each part's $OUT
# into docs/results/ (the Server/Interactive parts read the Offline JSON from there: OFFLINE_JSON).
# Before anything is built it checks OUT, the card (an H200: ANY_GPU=1 runs on another), LoadGen's import and the
# Offline JSON a part reads (same build); DRY_RUN=1 prints each command instead (tools/gpu/common.sh).
#   PART=first            the most an H200 gives in one call when it may be the only one (~8 min): PART=clocks's
#                         default points (its clock and power limit under FP8/int8/fp16 load), then a 2,048-sample
#                         FP8 + FP8 KV Offline (512 sequences) with its steady state
#   PART=fp8_offline      70B FP8 + FP8 KV, 4,096 samples, 512 sequences (#19's Offline row), + steady state
#   PART=fp8fast_offline  the same with --fp8-accumulation fast (Hopper's unpromoted accumulation; a named option)
#   PART=fp8_server       Server, auto QPS points from OFFLINE_JSON (default: docs/results/bench_engine_70b_fp8_fp8kv_h200_4096.json),
#                         each >= 60 s and >= 500 queries (LoadGen's early stopping wants ~460 for VALID)
#   PART=fp8_interactive  Interactive (450 ms / 40 ms), 128 sequences (the Interactive default), 1,024-token chunks,
#                         from OFFLINE_JSON. The load sets the concurrency, not the cap: from the FP8 Offline run's
#                         step log (decode-only ~29 ms a step at <= 64 sequences, ~35 at 64-128) plus each step's
#                         share of the prompts (~0.13 ms a prompt token), 40 ms holds ~40-64 running sequences
#   PART=fp8_interactive_flat  fp8_interactive with --graph-mixed-tokens 512, main.py's Interactive default (steps
#                         with prompt chunks replay the decode graphs; fp8_interactive passes 0): the end-to-end A/B
#                         behind that default (docs/engine.md)
#   PART=fp8_interactive_ab  both of the above on one engine: every automatic point eager, then through the graphs
#                         (bench.py --graph-mixed-ab 512), 2 points each (one call instead of two builds)
#   PART=fp8_server_ab    Server (256 sequences, main.py's default) with every automatic point eager, then with steps of up
#                         to 1,024 tokens through the graphs (bench.py --graph-mixed-ab 1024): whether Server should
#                         default to --graph-mixed-tokens too (eager 80-layer steps cost 80-180 ms of host time)
#   PART=fp8_profile      where an FP8 step's time goes (tools/profile_step.py), 256 decodes
#   PART=fp8_profile_small  the same at 64 decodes: the Interactive step (weight-read floor 13.5 ms on an H200)
#   PART=fp8_interactive_grid  Interactive: one automatic point per --seq-caps x --token-budgets setting (45 s each),
#                         the measurement behind the Interactive defaults (#19 item 4); SEQ_CAPS, TOKEN_BUDGETS
#   PART=wc80_all         #20: the whole LiteML config in int8 mode, all 80 layers, 2,048 samples, 512 sequences
#   PART=wc80_linear      the same with the Linear rules only (the baseline of the row above, same card)
#   PART=clocks           sustained GEMMs against the SM clock the H200 holds at its power limit (tools/gemm_clocks.py,
#                         ~1 min; the H100 held ~1,230 MHz under FP8: docs/engine.md "The clock under load"), the
#                         card's power limit (700 W as shipped, 1,000 W with a custom thermal solution), then the same
#                         load with outlier-shaped and zero activations (~1 min)
#   PART=wc80_server      #20's Server row (>= 0.9 of the whole-config Offline, VALID): auto QPS points from
#                         docs/results/bench_engine_70b_int8_wholeconfig_int8kv_h200_2048.json (WC_OFFLINE_JSON)
case "$PART" in
  fp8_offline|fp8fast_offline|fp8_server|fp8_interactive|fp8_interactive_grid|fp8_profile|wc80_all|wc80_linear) ;;
  fp8_interactive_flat|fp8_interactive_ab|fp8_server_ab) ;;
  fp8_profile_small) ;;
  wc80_server|clocks|first) ;;
  *) echo "owed_h200.sh: PART must be one of fp8_offline fp8fast_offline fp8_server fp8_interactive fp8_interactive_grid" \
          "fp8_profile fp8_profile_small fp8_interactive_flat fp8_interactive_ab fp8_server_ab wc80_all wc80_linear" \
          "wc80_server clocks first" \
        "(got '${PART}')" >&2; exit 2 ;;
esac
# shellcheck source=tools/gpu/common.sh
source "$(dirname "$0")"/common.sh
require_out owed_h200.sh
OFFLINE_JSON=${OFFLINE_JSON:-docs/results/bench_engine_70b_fp8_fp8kv_h200_4096.json}
WC_OFFLINE_JSON=${WC_OFFLINE_JSON:-docs/results/bench_engine_70b_int8_wholeconfig_int8kv_h200_2048.json}
case "$PART" in  # what the part reads, before anything is built
  fp8_server|fp8_interactive|fp8_interactive_flat|fp8_server_ab|fp8_interactive_ab|fp8_interactive_grid)
    check_offline_json owed_h200.sh OFFLINE_JSON "$OFFLINE_JSON" fp8 fp8 linear ;;
  wc80_server) check_offline_json owed_h200.sh WC_OFFLINE_JSON "$WC_OFFLINE_JSON" int8 int8 all ;;
esac
export PYTHONUNBUFFERED=1
run python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
run nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT"/gpu.txt
require_gpus owed_h200.sh H200 1
case "$PART" in clocks|fp8_profile|fp8_profile_small) ;; *) require_loadgen owed_h200.sh ;; esac
BENCH=(python3 tools/bench.py --shape 70b --ref-samples 0 --fidelity-prompts 0)
FP8=(--weights fp8 --kv-cache-dtype fp8)
filter() { grep -v "^WARNING\|Warning" | tail -"${1:-20}"; }
case "$PART" in
  fp8_offline)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 4096 --max-num-seqs 512 --out "$OUT"/fp8 2>&1 | filter 24
    run python3 tools/steady_state.py "$OUT"/fp8/bench.json ;;
  fp8fast_offline)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --fp8-accumulation fast --samples 4096 --max-num-seqs 512 \
        --out "$OUT"/fp8fast 2>&1 | filter 24
    run python3 tools/steady_state.py "$OUT"/fp8fast/bench.json ;;
  fp8_server)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 0 --max-num-seqs 512 --offline-json "$OFFLINE_JSON" \
        --server-auto 2 --server-seconds 60 --server-min-queries 500 --out "$OUT"/fp8_server 2>&1 | filter 24 ;;
  fp8_interactive|fp8_interactive_flat)
    flat=0; [ "$PART" = fp8_interactive_flat ] && flat=512
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 0 --interactive --max-num-seqs 128 --max-num-batched-tokens 1024 \
        --graph-mixed-tokens $flat --offline-json "$OFFLINE_JSON" --server-auto 2 --server-seconds 60 \
        --server-min-queries 500 --out "$OUT/$PART" 2>&1 | filter 24 ;;
  fp8_server_ab)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 0 --max-num-seqs 256 --graph-mixed-ab 1024 \
        --offline-json "$OFFLINE_JSON" --server-auto 2 --server-seconds 60 --out "$OUT/$PART" 2>&1 | filter 24 ;;
  fp8_interactive_ab)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 0 --interactive --max-num-seqs 128 --max-num-batched-tokens 1024 \
        --graph-mixed-ab 512 --offline-json "$OFFLINE_JSON" --server-auto 2 --server-seconds 60 \
        --out "$OUT/$PART" 2>&1 | filter 24 ;;
  fp8_interactive_grid)
    run timeout 560 "${BENCH[@]}" "${FP8[@]}" --samples 0 --interactive --seq-caps "${SEQ_CAPS:-96,160}" \
        --token-budgets "${TOKEN_BUDGETS:-512,2048}" --offline-json "$OFFLINE_JSON" --server-auto 1 \
        --server-seconds 45 --out "$OUT"/fp8_interactive_grid 2>&1 | filter 16 ;;
  first)
    run nvidia-smi --query-gpu=name,enforced.power.limit,power.max_limit,clocks.max.sm --format=csv | tee -a "$OUT"/gpu.txt
    run timeout 120 python3 tools/gemm_clocks.py --out "$OUT"/clocks 2>&1 | grep -A12 "^sustained"
    run timeout 400 "${BENCH[@]}" "${FP8[@]}" --samples 2048 --max-num-seqs 512 --out "$OUT"/fp8_2048 2>&1 | filter 12
    run python3 tools/steady_state.py "$OUT"/fp8_2048/bench.json ;;
  clocks)
    run timeout 150 python3 tools/gemm_clocks.py --out "$OUT"/clocks 2>&1 | grep -A12 "^sustained"
    run timeout 150 python3 tools/gemm_clocks.py --out "$OUT"/clocksdata --points ws_fp8:gate_up:4096:gauss,\
ws_fp8:gate_up:4096:outlier,ws_fp8:gate_up:4096:zeros,ws_int8:gate_up:4096:gauss,ws_int8:gate_up:4096:outlier 2>&1 \
      | grep -A12 "^sustained" ;;
  fp8_profile)
    run timeout 500 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --out "$OUT"/prof_fp8 2>&1 \
        | grep -v "WARNING\|Warning\|INFO" | tail -40 ;;
  fp8_profile_small)
    run timeout 500 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --batch 64 --context 600 \
        --out "$OUT"/prof_fp8_64 2>&1 | grep -v "WARNING\|Warning\|INFO" | tail -40 ;;
  wc80_all|wc80_linear)
    run timeout 560 "${BENCH[@]}" --weights int8 --kv-cache-dtype int8 --int8-rules "${PART#wc80_}" --samples 2048 \
        --max-num-seqs 512 --out "$OUT"/int8_"${PART#wc80_}" 2>&1 | filter 12
    run python3 tools/steady_state.py "$OUT"/int8_"${PART#wc80_}"/bench.json ;;
  wc80_server)
    run timeout 560 "${BENCH[@]}" --weights int8 --kv-cache-dtype int8 --int8-rules all --samples 0 --max-num-seqs 512 \
        --offline-json "$WC_OFFLINE_JSON" \
        --server-auto 2 --server-seconds 60 --server-min-queries 500 --out "$OUT"/wc_server 2>&1 | filter 24 ;;
esac
finish
