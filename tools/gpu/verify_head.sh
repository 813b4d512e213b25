#!/bin/bash
# What the CPU cannot check at HEAD (H100 or H200; carry [".whl"]; one log, $OUT/log.txt). STEPS picks the steps
# (default "gemm w2 elementwise profile engine", ~8 min: split it over two calls):
#   gemm         the Gluon GEMM's bit-for-bit tests (both partition modes) and the Triton GEMM's
#   w2           two-partition (wgs=2) tiles beside cuBLASLt and the one-partition ones, M 256 and 4,096
#   elementwise  the elementwise and whole-config attention kernels' tests, whole on CUDA (bit for bit where exact)
#   silu         SiLU·up quantized per token: the two-pass kernels against silu_mul + the Linear's quantizer
#                (tools/bench_silu_quant.py, T 256-4,096; ~40 s)
#   profile      the whole-config step profile (silu_mul_q8's scratch row)
#   engine       every --engine-gemm path's tokens
#   smallm       FP8 kernels at M 16-192 (cuBLASLt, Triton gemm8, the 64-row gemm8_ws tile)
#   tiles        gemm8_ws's default tiles (TILES) against the candidates, M 16-2,048, FP8 and int8
#   depth2       promoted FP8 with two MMA groups in flight per partition (WsConfig.depth 2: the next chunk's MMA
#                issued before the previous one is waited for): its bit-for-bit GPU tests, then against the default
#                tiles and unpromoted fp8 at M 64-4,096, three rounds, then the 20-layer FP8 step profile with the
#                large-M tile at depth 1 and 2 (~5 min on an H100; the 2026-12-06 run also timed d2e, an L1 prefetch
#                of the scales since removed)
#   depth2ab     the depth-2 defaults: GEMM tests and FP8 engine tokens on the GPU, GROUP_M 4 / 8 at depth 2 against
#                depth 1 at M 2,048-8,192 (three rounds), then FP8 end to end (bench.py, 20 of 80 layers, 512
#                samples) with the large-M tile at depth 1 and 2 at every M (~7 min on an H100)
#   clocks       sustained GEMM load against the SM clock (tools/gemm_clocks.py: FP8 promoted/fast, cuBLASLt, fp16 at
#                gate_up M 4,096 and FP8 at 512, 6 s each): the clock the card holds under tensor-core load, its power
#                and clock-event reasons, each kernel's fraction of the peak at that clock (~1 min)
#   clocksdata   the same sustained load with other activations (gemm_clocks DATA: gauss, outlier, zeros), FP8 and
#                int8 at gate_up M 4,096: whether a card at its power limit runs real-looking data at another clock than
#                the benchmarks' random operands (~1 min)
#   t256         the promoted FP8 256 x 128 tile (two 128-row partitions) against the default and cuBLASLt,
#                M 256-8,192 (~60 s; its bit-for-bit test is in the gemm step)
#   t128x256     the promoted FP8 128 x 256 tile (two 64-row partitions, 64 x 128 pieces one at a time: 25% fewer
#                L2 bytes per flop than 128 x 128, 3 stages): its bit-for-bit GPU tests, then against the default,
#                M 512-4,096, two rounds (~2 min)
#   fastacc      --fp8-accumulation fast: its GPU error bound, its accuracy cost at the 70B width (4 layers,
#                bench_fidelity fp8-ws vs fp8-ws-fast) and its FP8 step profile against promoted (~5 min)
#   fasttiles    unpromoted fp8 (--fp8-accumulation fast): gemm8_ws's candidate tiles against its default, the
#                promoted default and cuBLASLt fast, M 64-4,096, then the fast FP8 step profile with a 128 x 128
#                two-partition tile (~2 min)
#   attnncu      Nsight Compute on the paged decode kernel, fp16 vs fp8 vs int8 cache (tools/decode_attn_once.py):
#                why the 8-bit caches read at ~2.4 TB/s where fp16 reads at ~2.9 (speed of light, warp stalls)
#   kvdecode     the paged decode kernel's 8-bit default (16 keys, 1 warp, 8 stages) against the former one and
#                base, fp16/fp8/int8 caches, B 256 and 512 (~20 s; re-time on an H200)
#   wcsmall      the whole-config decode passes with small tiles (32 keys, 1-2 warps, 6-8 stages) against the
#                default 128-key one (bench_kv_decode --whole-config; ~30 s)
#   groupm       GROUP_M (tile rows that sweep the N tiles together) 4 / 16 / 32 against the default 8 at M 1,024-8,192:
#                per row, the default FP8 tile is ~20% slower on gate_up at M 4,096 than at 1,024 (~40 s)
#   groupm2      GROUP_M 1 / 2 / 4 / 8 of the large-M tiles (fp8 promoted and fast, int8) at M 512-8,192 (the groupm step's
#                g4 beat g8 from M 2,048 on gate_up/down, g16/g32 lost), then the FP8 step profile (20 layers) with
#                the promoted tile at g8 / g4 / g2 (~3 min)
#   groupm3      GROUP_M 4 against the default 8 (fp8 promoted and fast, int8) at M 1,024-8,192, three rounds in rotated
#                order (bench_gemm --rounds): groupm2 timed the same tile twice and got up to 10% apart (~2 min)
#   groupmprof   the engine's A/B of GROUP_M 8 / 4 (fp8 promoted, int8) in the 20-layer step profile with a mixed step of
#                256 decodes + 1,220 prompt tokens (the Offline run's mean mixed step), fp8 twice (~4 min)
#   flatmixed    --graph-mixed-tokens: the GPU tests of steps with prompt chunks replaying the decode graphs (tokens
#                against generate), then the FP8 step profile (20 layers) of the mixed step eager and through the
#                graphs at 64 + 128, 64 + 448 and 256 + 460 tokens (~4 min)
#   pdl          programmatic dependent launch (engine/pdl.py, an experiment): its GPU tests (tokens, graph capture),
#                then the FP8 step profile (20 layers) at 64 and 256 decodes with and without it (~4 min)
#   i80          Interactive (450 / 40 ms) at all 80 layers of the 70B in FP8 + FP8 KV on an H100 (the weights fit
#                with ~8.7 GiB of KV: --max-num-seqs 64): each QPS point eager and through the decode graphs
#                (bench.py --graph-mixed-ab 512, main.py's Interactive default), back to back, 60 s each
#                (I80_QPS, default 2.5,3.5; ~6 min). Not VALID-sized (LoadGen wants ~460 queries): an A/B
#   rows         the flat steps' attention in groups of a sequence's consecutive rows (paged_rows_attention,
#                EngineConfig.flat_row_groups, on since it passed on an H100): its kernel tests and the flat compositions'
#                tokens on CUDA, the kernel alone against the per-row one (bench_kv_decode --flat, its launch
#                sweep, one layer), then the 80-layer FP8 step profile with --graph-mixed (per row and grouped,
#                one call) at 64 + 128 and 128 + 448 tokens (per row on 2026-12-06: 45.1 / 112.9 ms through the graphs,
#                attention 4.83 / 9.95 ms; eager 165.6 / 114.5) (~4 min on an H100)
#   launch       engine/launch_cache.py (kept Triton kernels relaunched without Triton's binding) and the direct
#                FlashAttention call: their bit-for-bit GPU tests, the flat steps' (row groups on by default) and the
#                FP8 / int8 / PDL token tests, gemm8_ws's GPU tests (its host descriptors), the fidelity
#                compositions with flat steps (~4 min)
#   hostprof2    the eager step's host profile and its launch time with Triton's launch path and with the short one
#                (engine/launch_cache.py), interleaved in one process; then the 80-layer step profile at 64 + 128
#                tokens (eager overlapped 55.7 ms on an H100 with both host changes, 102.0 before) (~3 min)
#   hostprof     where an eager 80-layer step's host time goes (80-180 ms on the H100 machine against ~30-110 ms of
#                GPU work): profile_step.py --host-profile, 70B FP8 + FP8 KV, 64 decodes + 128 prompt tokens (~90 s)
#   align        --prefill-align 128 against off, FP8 Offline at 20 of 80 layers, 1,024 samples, twice each (~6 min on
#                an H100): whether whole GEMM row tiles per step show end to end
#   smalln       the 64 x 64 candidate tile (promoted FP8, unpromoted FP8, int8) against the 64 x 128 default and
#                cuBLASLt at M 16-128: the Interactive decode step's GEMMs (~30 s; its bits: the gemm step)
#   fp8ab        FP8 end to end (bench.py + profile_step.py, 20 of 80 layers), --engine-gemm auto and cublas
#   fp8prof      fp8ab's step profiles only (~80 s)
#   wcab         the whole-config step profile with int8's default gemm8_ws tile and with two partitions (~60 s)
#   reserve      the admission-reserve A/B on a KV-bound 70B FP8 run (GR="0.5 0"; ~5 min each on an H100)
# GEMM tables land in $OUT/<step>/.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
L="$OUT"/log.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$L"
T0=$(date +%s)
step() { echo "=== $* ($(( $(date +%s) - T0 )) s)" | tee -a "$L"; }
PYTEST=(python3 -m pytest -q -p no:cacheprovider)
CLOCKS_DATA_POINTS=ws_fp8:gate_up:4096:gauss,ws_fp8:gate_up:4096:outlier,ws_fp8:gate_up:4096:zeros,\
ws_int8:gate_up:4096:gauss,ws_int8:gate_up:4096:outlier,ws_fp8:gate_up:4096:gauss
e2e_tiles() {  # FP8 end to end (bench.py, 20 of 80 layers, 512 samples) with each promoted tile at every M
  for t in "$@"; do
    timeout 140 python3 tools/bench.py --shape 70b --layers 20 --samples 512 --ref-samples 0 --fidelity-prompts 0 \
      --weights fp8 --kv-cache-dtype fp8 --ws-tile fp8_promote="$t" --out "$OUT/e2e_$t" 2>&1 \
      | grep -v "WARNING\|Warning" | tail -3 >> "$L"
  done
}
for s in ${STEPS:-gemm w2 elementwise profile engine}; do
  step "$s"
  case $s in
    gemm) timeout 190 "${PYTEST[@]}" tests/test_gemm8_ws_gpu.py tests/test_gemm8.py 2>&1 | tail -25 >> "$L" ;;
    w2) timeout 150 python3 tools/bench_gemm.py --m-list 256,4096 --kernels scaled_mm_row,ws_fp8@128x128s5p1,\
ws_fp8@128x128s6p1w2,ws_fp8@128x128s6p2w2,ws_int8@128x128s6p1,ws_int8@128x256s3p1w2,ws_int8@128x128s6p1w2 \
          --out "$OUT"/w2 2>&1 | tail -30 >> "$L" ;;
    elementwise) timeout 200 "${PYTEST[@]}" tests/test_engine_fused_ops.py tests/test_whole_config_triton.py \
          tests/test_engine_fused_quant.py tests/test_fused_quant_producers.py tests/test_exact_launch_options.py \
          tests/test_whole_config_decode.py tests/test_whole_config_prefill.py 2>&1 | tail -40 >> "$L" ;;
    silu) peak=3.35; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && peak=4.8
          timeout 120 python3 tools/bench_silu_quant.py --peak-tbs $peak --out "$OUT"/silu 2>&1 | tail -25 >> "$L" ;;
    profile) timeout 170 python3 tools/profile_step.py --shape 70b --layers 20 --weights int8 --kv-cache-dtype int8 \
          --int8-rules all --reps 10 --out "$OUT"/prof_all 2>&1 | grep -v "WARNING\|Warning\|INFO" | tail -26 >> "$L" ;;
    engine) timeout 110 "${PYTEST[@]}" -m gpu tests/test_engine_gemm_choice.py 2>&1 | tail -15 >> "$L" ;;
    smallm) timeout 150 python3 tools/bench_gemm.py --m-list 16,64,96,128,192 \
          --kernels scaled_mm_row,gemm8_fp8,ws_fp8@64x128s6p1 --out "$OUT"/smallm 2>&1 | tail -30 >> "$L" ;;
    tiles) timeout 170 python3 tools/bench_gemm.py --m-list 16,64,128,192,512,1024,2048 --kernels scaled_mm_row,ws_fp8,\
ws_fp8@64x128s6p1,ws_fp8@128x128s6p1w2,ws_int8,ws_int8@128x128s6p1w2,ws_int8@64x128s6p1 \
          --out "$OUT"/tiles 2>&1 | grep -A40 "^TOPS" >> "$L" ;;
    t128x256) timeout 60 "${PYTEST[@]}" -m gpu tests/test_gemm8_ws_gpu.py -k "128x256s3p2w2" 2>&1 | tail -3 >> "$L"
          timeout 120 python3 tools/bench_gemm.py --m-list 512,1024,2048,4096 --rounds 2 \
          --kernels ws_fp8,ws_fp8@128x256s3p2w2 --out "$OUT"/t128x256 2>&1 | grep -A30 "^TOPS" >> "$L" ;;
    depth2) timeout 120 "${PYTEST[@]}" -m gpu tests/test_gemm8_ws_gpu.py -k "d2" 2>&1 | tail -3 >> "$L"
          timeout 150 python3 tools/bench_gemm.py --m-list 64,128,256,512,1024,2048,4096 --rounds 3 --kernels ws_fp8,\
ws_fp8@64x128s6p1d2,ws_fp8@128x128s6p1w2d2,ws_fp8@128x128s6p1w2g4d2,ws_fp8_fast \
          --out "$OUT"/depth2 2>&1 | grep -A60 "^TOPS" >> "$L"
        for t in 128x128s6p1w2 128x128s6p1w2d2; do
          timeout 110 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --ws-tile fp8_promote=$t --reps 10 --out "$OUT"/prof_$t 2>&1 | grep "^|\|bounds" >> "$L"
        done ;;
    depth2ab) timeout 150 "${PYTEST[@]}" -m gpu tests/test_gemm8_ws_gpu.py tests/test_engine_fp8.py 2>&1 | tail -3 >> "$L"
          timeout 100 python3 tools/bench_gemm.py --m-list 2048,4096,8192 --rounds 3 --kernels ws_fp8,\
ws_fp8@128x128s6p1w2d2,ws_fp8@128x128s6p1w2g4 --out "$OUT"/depth2ab 2>&1 | grep -A30 "^TOPS" >> "$L"
        e2e_tiles 128x128s6p1w2 128x128s6p1w2d2 ;;
    clocks) timeout 150 python3 tools/gemm_clocks.py --out "$OUT"/clocks 2>&1 | grep -A12 "^sustained" >> "$L" ;;
    clocksdata) timeout 150 python3 tools/gemm_clocks.py --points "$CLOCKS_DATA_POINTS" --out "$OUT"/clocksdata 2>&1 \
          | grep -A12 "^sustained" >> "$L" ;;
    t256) timeout 150 python3 tools/bench_gemm.py --m-list 256,512,1024,2048,4096,8192 \
          --kernels scaled_mm_row,ws_fp8,ws_fp8@256x128s3p2w2 --out "$OUT"/t256 2>&1 | grep -A40 "^TOPS" >> "$L" ;;
    fastacc) timeout 90 "${PYTEST[@]}" -m gpu tests/test_engine_fp8.py 2>&1 | tail -6 >> "$L"
          timeout 170 python3 tools/bench_fidelity.py --shape 70b --layers 4 --variants fp8-ws,fp8-ws-fast \
            --prompts 16 --out "$OUT"/fid_fast 2>&1 | tail -12 >> "$L"
          for a in promoted fast; do
            timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
              --fp8-accumulation $a --reps 10 --out "$OUT"/fastprof_$a 2>&1 | grep "^|\|bounds" >> "$L"
          done ;;
    fasttiles) timeout 170 python3 tools/bench_gemm.py --m-list 64,128,256,512,1024,2048,4096 \
          --kernels scaled_mm_row_fast,ws_fp8,ws_fp8_fast,ws_fp8_fast@128x128s6p1w2,ws_fp8_fast@128x128s6p1,\
ws_fp8_fast@64x128s6p1,ws_fp8_fast@128x256s3p1w2 --out "$OUT"/fasttiles 2>&1 | grep -A48 "^TOPS" >> "$L"
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --fp8-accumulation fast --ws-tile fp8_fast=128x128s6p1w2 --reps 10 --out "$OUT"/fastprof_w2 2>&1 \
            | grep "^|\|bounds" >> "$L" ;;
    attnncu) if ! command -v ncu >/dev/null; then echo "attnncu: no ncu on this machine" >> "$L"; else
          timeout 200 ncu --profile-from-start off --kernel-name regex:paged_decode --section SpeedOfLight \
            --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \
            python3 tools/decode_attn_once.py 2>&1 | grep -v "^==PROF==" | tee "$OUT"/attnncu.txt | tail -150 >> "$L"
        fi ;;
    kvdecode) timeout 150 python3 tools/bench_kv_decode.py --batches 256,512 --configs base,n64w2s3vm,n16w1s8vm,\
n32w2s6vm --out "$OUT"/kvdecode.json 2>&1 | grep -A12 "^ms per variant" >> "$L" ;;
    wcsmall) timeout 150 python3 tools/bench_kv_decode.py --whole-config --batches 256,512 \
          --configs n128w4s3v_scores,n32w1s8v_scores,n32w2s6v_scores,n64w1s6v_scores --out "$OUT"/wcsmall.json 2>&1 \
          | grep -A12 "^ms per variant" >> "$L" ;;
    groupm) timeout 170 python3 tools/bench_gemm.py --m-list 1024,2048,4096,8192 --kernels scaled_mm_row,ws_fp8,\
ws_fp8@128x128s6p1w2g4,ws_fp8@128x128s6p1w2g16,ws_fp8@128x128s6p1w2g32,ws_int8,ws_int8@128x128s6p1g16 \
          --out "$OUT"/groupm 2>&1 | grep -A40 "^TOPS" >> "$L" ;;
    groupm2) timeout 200 python3 tools/bench_gemm.py --m-list 512,1024,1536,2048,4096,8192 --kernels ws_fp8,\
ws_fp8@128x128s6p1w2g1,ws_fp8@128x128s6p1w2g2,ws_fp8@128x128s6p1w2g4,ws_fp8@128x128s6p1w2g8,ws_int8,\
ws_int8@128x128s6p1g2,ws_int8@128x128s6p1g4,ws_fp8_fast,ws_fp8_fast@128x128s6p1w2g4,scaled_mm_row \
          --out "$OUT"/groupm2 2>&1 | grep -B2 -A40 "^TOPS" >> "$L"
        for g in 8 4 2; do
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --ws-tile fp8_promote=128x128s6p1w2g$g --reps 10 --out "$OUT"/prof_g$g 2>&1 | grep "^|\|bounds" >> "$L"
        done ;;
    groupm3) timeout 300 python3 tools/bench_gemm.py --rounds 3 --m-list 1024,2048,4096,8192 --kernels ws_fp8,\
ws_fp8@128x128s6p1w2g4,ws_int8,ws_int8@128x128s6p1g4,ws_fp8_fast,ws_fp8_fast@128x128s6p1w2g4,scaled_mm_row \
          --out "$OUT"/groupm3 2>&1 | grep -A40 "^TOPS" >> "$L" ;;
    groupmprof) for v in fp8:8 fp8:4 int8:8 int8:4 fp8:8 fp8:4; do  # engine A/B, mixed step of 256 + 1,220 tokens
          w=${v%:*}; g=${v#*:}; fam=fp8_promote; tile=128x128s6p1w2g$g; extra=()
          if [ "$w" = int8 ]; then fam=int8; tile=128x128s6p1g$g; extra=(--kv-cache-dtype int8); else extra=(--kv-cache-dtype fp8); fi
          echo "--- $w GROUP_M $g" >> "$L"
          timeout 90 python3 tools/profile_step.py --shape 70b --layers 20 --weights "$w" "${extra[@]}" --prefill 1220 \
            --ws-tile "$fam=$tile" --reps 10 --out "$OUT/gprof_${w}_g$g" 2>&1 | grep "^| fused ops |" >> "$L"
        done ;;
    flatmixed) timeout 150 "${PYTEST[@]}" -m gpu tests/test_engine_fidelity.py 2>&1 | tail -8 >> "$L"
        for bp in 64:128 64:448 256:460; do  # the mixed step eager against through the decode graphs (flat rows)
          echo "--- batch ${bp%:*} + prompt ${bp#*:}" >> "$L"
          timeout 120 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --batch "${bp%:*}" --context 600 --prefill "${bp#*:}" --graph-mixed --reps 10 \
            --out "$OUT/flat_${bp%:*}_${bp#*:}" 2>&1 | grep "^| fused ops |" >> "$L"
        done ;;
    pdl) timeout 150 "${PYTEST[@]}" -m gpu tests/test_pdl.py tests/test_engine_fidelity.py 2>&1 | tail -8 >> "$L"
        for b in 64 256; do for p in "" --pdl; do  # the decode step with and without programmatic dependent launch
          echo "--- batch $b ${p:-no PDL}" >> "$L"
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --batch "$b" --context 600 --prefill 128 $p --reps 10 --out "$OUT/pdl_${b}${p:+_pdl}" 2>&1 \
            | grep "^| fused ops |" >> "$L"
        done; done ;;
    i80) timeout 560 python3 tools/bench.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --ref-samples 0 \
          --fidelity-prompts 0 --samples 0 --interactive --max-num-seqs "${I80_SEQS:-64}" \
          --max-num-batched-tokens 1024 --graph-mixed-ab 512 --server-qps "${I80_QPS:-2.5,3.5}" --server-seconds 60 \
          --out "$OUT"/i80 2>&1 | grep "^server\|Error\|error" | tail -14 >> "$L" ;;
    rows) timeout 200 "${PYTEST[@]}" tests/test_paged_rows.py tests/test_engine_fidelity.py -k "rows or flat" \
          2>&1 | tail -4 >> "$L"
        for f in 64:600:128 128:400:448 64:600:448 0:0:1024:2; do  # D decodes at context C + N chunks of P
          timeout 60 python3 tools/bench_kv_decode.py --flat "$f" --out "$OUT/rows_kv_${f//:/_}.json" 2>&1 \
            | tail -26 >> "$L"
        done
        for bcp in 64:600:128 128:400:448; do
          IFS=: read -r b c p <<< "$bcp"
          echo "--- 80 layers, $b decodes (context $c) + $p prompt tokens" >> "$L"
          timeout 150 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --batch "$b" \
            --context "$c" --prefill "$p" --graph-mixed --reps 5 --out "$OUT/rows_$b" 2>&1 | grep "^| fused ops |" \
            >> "$L"
        done ;;
    launch) timeout 300 "${PYTEST[@]}" -m gpu tests/test_launch_cache.py tests/test_paged_rows.py tests/test_graph_mixed.py \
          tests/test_engine_fp8.py tests/test_engine_int8.py tests/test_pdl.py tests/test_gemm8_ws_gpu.py 2>&1 \
          | tail -8 >> "$L"
        timeout 100 "${PYTEST[@]}" tests/test_engine_fidelity.py -k "rows or flat" 2>&1 | tail -3 >> "$L" ;;
    hostprof2) timeout 150 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --batch 64 \
          --context 600 --prefill 128 --host-profile --reps 7 --out "$OUT/hostprof2" 2>&1 \
          | grep -A8 "^host time\|^launch time" >> "$L"
        echo "--- 80 layers, 64 decodes (context 600) + 128 prompt tokens, short launch path on" >> "$L"
        timeout 150 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --batch 64 \
          --context 600 --prefill 128 --graph-mixed --reps 5 --out "$OUT/lc_64" 2>&1 | grep "^| fused ops |" >> "$L" ;;
    hostprof) timeout 200 python3 tools/profile_step.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --batch 64 \
          --context 600 --prefill 128 --host-profile --reps 5 --out "$OUT"/hostprof 2>&1 \
          | sed -n '/^host time/,$p' | head -70 >> "$L" ;;
    align) i=0; for a in 0 128 0 128; do  # Offline at 20 of 80 layers (fits an H100), whole 128-row tiles or not
          i=$((i + 1))
          { echo "--- prefill-align $a (run $i)"
            timeout 130 python3 tools/bench.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 --ref-samples 0 \
              --fidelity-prompts 0 --samples 1024 --max-num-seqs 512 --prefill-align $a --out "$OUT/align_$i" 2>&1 \
              | grep "tok/s" | tail -2
            python3 tools/steady_state.py "$OUT/align_$i/bench.json" 2>&1 | tail -3; } >> "$L"
        done ;;
    smalln) timeout 150 python3 tools/bench_gemm.py --m-list 16,32,64,96,128 --kernels scaled_mm_row,ws_fp8,\
ws_fp8@64x64s8p1,ws_fp8_fast,ws_fp8_fast@64x64s8p1,ws_int8,ws_int8@64x64s8p1 --out "$OUT"/smalln 2>&1 \
          | grep -A30 "^TOPS" >> "$L" ;;
    fp8ab) for g in auto cublas; do  # FP8 end to end at 20 of 80 layers, auto (gemm8_ws) against cuBLASLt
          timeout 150 python3 tools/bench.py --shape 70b --layers 20 --samples 512 --ref-samples 0 \
            --fidelity-prompts 0 --weights fp8 --kv-cache-dtype fp8 --engine-gemm $g --out "$OUT"/fp8ab_$g 2>&1 \
            | grep -v "WARNING\|Warning" | tail -3 >> "$L"
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --engine-gemm $g --reps 10 --out "$OUT"/fp8prof_$g 2>&1 | grep "^|\|bounds" >> "$L"
        done ;;
    fp8prof) for g in auto cublas; do  # fp8ab's step profiles only (~40 s each)
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights fp8 --kv-cache-dtype fp8 \
            --engine-gemm $g --reps 10 --out "$OUT"/fp8prof_$g 2>&1 | grep "^|\|bounds" >> "$L"
        done ;;
    wcab) for t in "" "int8=128x128s6p1w2"; do  # the whole-config step with int8's default tile, then two partitions
          timeout 100 python3 tools/profile_step.py --shape 70b --layers 20 --weights int8 --kv-cache-dtype int8 \
            --int8-rules all --reps 10 ${t:+--ws-tile "$t"} --out "$OUT"/wcab_"${t:-default}" 2>&1 \
            | grep "graph decode |\|mixed |\|_kernel$" | head -12 >> "$L"
        done ;;
    reserve) for g in ${GR:-0.5 0}; do  # the admission reserve A/B, KV-bound (an H100 holds ~74 of 128 sequences)
          timeout 290 python3 tools/bench.py --shape 70b --weights fp8 --kv-cache-dtype fp8 --samples 1024 \
            --max-num-seqs 128 --ref-samples 0 --fidelity-prompts 0 --growth-reserve "$g" --out "$OUT"/reserve_"$g" \
            2>&1 | grep -v "WARNING\|Warning" | tail -3 >> "$L"
        done ;;
    *) echo "verify_head.sh: unknown step '$s' (gemm w2 elementwise silu profile engine smallm tiles t256" \
         "fastacc fasttiles attnncu kvdecode wcsmall groupm smalln fp8ab fp8prof wcab reserve clocks clocksdata)" \
         | tee -a "$L"
       exit 2 ;;
  esac
done
step finished
