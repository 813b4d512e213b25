"""Engine benchmark (PERF.md): random-weight Llama shapes built on the device, engine vs transformers generate.

One invocation measures, side by side on the same weights, prompts and forced output lengths:
  * fidelity: greedy outputs of the engine vs `generate` (fraction identical, first divergences);
  * Offline PerformanceOnly throughput through LoadGen -> SUT of the reference-style backend
    (`generate`, left-padded static batches run to their longest member) at each batch size asked,
    and of the engine backend (everything in flight);
  * a Server sweep of the engine through LoadGen's Server scenario -> SUT -> engine (tools/bench_server.py):
    one PerformanceOnly run per QPS (explicit --server-qps and/or --server-auto points around the Offline
    capacity), LoadGen's p99 TTFT/TPOT against 2 s/200 ms (--interactive: 450/40 ms), the highest QPS
    meeting them, its tokens/s and their ratio to Offline (this run's, or --offline-json's).
It prints a table and writes bench.json into --out. The synthetic lengths are documented in
docs/engine.md (`synthetic_lengths`); `--lengths-from PATH.pkl` takes them from a processed dataset instead
(tools/bench_lengths.py: its prompt lengths and reference answers' token counts), and the table and JSON
say which workload ran. `--samples 0` skips Offline (Server then needs --offline-json
for the ratio and the automatic points).

  python3 tools/bench.py --shape 7b --samples 2048 --ref-samples 64 --ref-batch-sizes 64 --kernel-bench --out /tmp/b
  python3 tools/bench.py --shape 7b --samples 0 --ref-samples 0 --fidelity-prompts 0 --offline-json /tmp/b/bench.json \
      --server-auto 3 --server-seconds 60 --out /tmp/s
  python3 tools/bench.py --shape 70b --weights int8 --samples 768 --ref-samples 0 --fidelity-prompts 0 --out /tmp/c

`--weights int8`: the engine's int8 mode (W8A8 Int8Linears as --liteml-config says) with random int8
weights made in int8 on the device (a 70B model never exists in fp16); no reference, no fidelity.
`--kv-cache-dtype fp8|int8`: the 8-bit KV cache with UNIT scales (1.0 for every layer and KV head; random
weights have no calibration): right for timing and memory, meaningless for tokens, so no fidelity.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2 import constants  # noqa: E402
from mlperf_llama2.config import KV_CACHE_DTYPES, EngineConfig  # noqa: E402
from mlperf_llama2.engine.config import MAX_GRAPH_MIXED_TOKENS  # noqa: E402
from mlperf_llama2.engine.config import ENGINE_GEMMS, FP8_ACCUMULATIONS  # noqa: E402
from mlperf_llama2.engine.llm_engine import MAX_MODEL_LEN, LLMEngine  # noqa: E402
from mlperf_llama2.engine.model_runner import ModelRunner  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

from bench_lengths import workload_lengths  # noqa: E402
from bench_paths import (  # noqa: E402
    ForcedLengthEngine, ForcedLengthReference, bench_model, build_hf, engine_model_from_hf, engine_offline,
    first_divergence, hf_generate, kernel_bench, loadgen_offline,
)
import bench_server  # noqa: E402
from gpu_clock import SPEC_MHZ, Sampler, clock_stats, stats_line  # noqa: E402

log = logging.getLogger("bench")

SHAPES = {  # PERF.md's real shapes; vocab 32000
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
}
HBM_BYTES_PER_S, MATMUL_FLOP_PER_S = 4.3e12, 790e12  # measured on the H200 (PERF.md)
EIGHT_BIT_OPS_PER_S = 1979e12  # Hopper's dense int8 / FP8 peak (datasheet; the same for both formats)
DEFAULT_QUANT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "liteml_configs",
                                    "w8a8_npm_v1_3_4.yaml")
GIB = 2**30


def synthetic_lengths(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output token lengths standing in for processed OpenOrca (docs/engine.md).

    Prompts: lognormal, median 395, sigma 0.7, clipped to 16..1023 (mean ~465).
    Outputs: lognormal, median 224, sigma 0.8, clipped to 2..1024 (mean ~294, the reference's).
    """
    rng = np.random.default_rng(seed)
    prompt = np.clip(np.rint(rng.lognormal(math.log(395), 0.7, n)), 16, constants.INPUT_TOKEN_LIMIT - 1)
    output = np.clip(np.rint(rng.lognormal(math.log(224), 0.8, n)), 2, constants.MAX_NEW_TOKENS)
    return prompt.astype(int), output.astype(int)


def synthetic_prompts(lengths: np.ndarray, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    return [[constants.LLAMA2_BOS_TOKEN] + rng.integers(3, vocab, int(n) - 1).tolist() for n in lengths]


def hf_config_for(shape: str, layers: int | None):
    from transformers import LlamaConfig

    dims = dict(SHAPES[shape])
    if layers:
        dims["num_hidden_layers"] = layers
    return LlamaConfig(vocab_size=constants.LLAMA2_VOCAB_SIZE, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **dims)


def roofline_tokens_per_s(cfg, prompt: np.ndarray, output: np.ndarray, batch: float, dtype_bytes: int,
                          weight_bytes: int | None = None, kv_bytes_per_value: int | None = None,
                          sm_mhz: float | None = None) -> float:
    """Upper bound of the whole run's tokens/s.

    16-bit weights: prefill at the fp16 matmul peak, decode at the copy bandwidth (weights once a step + KV).
    8-bit weights (`weight_bytes` 1: int8 or FP8): every GEMM (prefill and decode) at Hopper's dense 8-bit
    peak plus the KV reads at the copy bandwidth (PERF.md's 8-bit roofline). `kv_bytes_per_value`: the KV
    cache's element size (default `dtype_bytes`; 1 for an 8-bit cache). `sm_mhz`: the 8-bit peak scaled to that SM
    clock instead of the datasheet's 1,830 MHz (a card at its power limit runs below it: tools/gpu_clock.py)."""
    weight_bytes = weight_bytes or dtype_bytes
    kv_value = kv_bytes_per_value or dtype_bytes
    params = 2 * cfg.hidden_size * cfg.hidden_size * (1 + cfg.num_key_value_heads / cfg.num_attention_heads) \
        + 3 * cfg.hidden_size * cfg.intermediate_size
    params = params * cfg.num_hidden_layers + 2 * cfg.vocab_size * cfg.hidden_size
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) \
        * kv_value
    kv_bytes = (prompt * output + output * output / 2).sum() * kv_token
    if weight_bytes == 1:
        peak = EIGHT_BIT_OPS_PER_S * (sm_mhz / SPEC_MHZ if sm_mhz else 1.0)
        gemm_s = 2 * params * (prompt.sum() + output.sum()) / peak
        return float(output.sum() / (gemm_s + kv_bytes / HBM_BYTES_PER_S))
    prefill_s = 2 * params * prompt.sum() / MATMUL_FLOP_PER_S
    steps = output.sum() / batch
    decode_s = (steps * params * weight_bytes + kv_bytes) / HBM_BYTES_PER_S
    return float(output.sum() / (prefill_s + decode_s))


def weights_label(weights: str, dtype) -> str:
    """The Linear weights' format that ran: --weights fp16 is the model dtype (float32 off CUDA)."""
    if weights != "fp16":
        return weights
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def device_name(device: torch.device) -> str:
    """The GPU that ran (the roofline's figures are the H200's whatever it is), or cpu."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def provenance(model, args, device: torch.device) -> dict:
    """What produced a run's numbers beyond its arguments: the harness commit (and its modified files) and the
    kernels the engine picked by default, whose choice changes between sessions (the 8-bit GEMM path of each
    Linear, gemm8_ws's tile table, the decode attention variants, the short launch path)."""
    from collections import Counter

    from mlperf_llama2.quant.activation import Quant8Linear
    from mlperf_llama2.report.run_info import git_state

    git = git_state()
    out: dict = {"harness_commit": git.commit, "modified_files": list(git.changed),
                 "gemm_paths": dict(Counter(m.gemm for m in model.modules() if isinstance(m, Quant8Linear)))}
    if device.type == "cuda":  # the Triton / Gluon modules import triton
        from mlperf_llama2.engine import paged_decode_triton as pdt

        from mlperf_llama2.engine import launch_cache

        out["decode_attention"] = pdt.DEFAULT_DECODE_CONFIG_16BIT if args.kv_cache_dtype == "auto" \
            else pdt.DEFAULT_DECODE_CONFIG_8BIT
        # host time of eager steps: kept kernels relaunched directly (engine/launch_cache.py) or through Triton
        out["triton_fast_launch"] = launch_cache.enabled()
        if args.int8_rules == "all":
            from mlperf_llama2.engine import whole_config_decode_triton as wcd

            out["whole_config_decode_attention"] = wcd.DEFAULT_WC_DECODE_CONFIG
        if any(p.startswith("gemm8_ws") for p in out["gemm_paths"]):
            from mlperf_llama2.quant import gemm8_ws

            out["gemm8_ws_tiles"] = {family: [[largest, str(cfg)] for largest, cfg in tiles]
                                     for family, tiles in gemm8_ws.TILES.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (e.g. a reduced 70B)")
    ap.add_argument("--weights", choices=("fp16", "int8", "fp8"), default="fp16",
                    help="int8: W8A8 Int8Linears as --liteml-config says; fp8: --quantization fp8's Linears "
                         "(random weights quantized on the device as they are drawn)")
    ap.add_argument("--quantization", choices=("fp8",), default=None, help="the same as --weights fp8")
    ap.add_argument("--liteml-config", default=DEFAULT_QUANT_CONFIG, help="rules for --weights int8")
    ap.add_argument("--int8-rules", choices=("linear", "all"), default="linear",
                    help="--weights int8: the config's Linear rules only, or every rule (whole_config.py: needs "
                         "--kv-cache-dtype int8; static ranges made up, timing only)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=2048, help="engine Offline samples (0: skip Offline)")
    ap.add_argument("--ref-samples", type=int, default=64, help="reference Offline samples (0: skip)")
    ap.add_argument("--ref-batch-sizes", default="64")
    ap.add_argument("--fidelity-prompts", type=int, default=32, help="prompts compared with generate (0: skip)")
    ap.add_argument("--fidelity-tokens", type=int, default=32)
    ap.add_argument("--init-std", type=float, default=0.02, help="random weight std (larger: more chaotic, see docs)")
    ap.add_argument("--server-qps", default="", help="comma-separated QPS points for the Server sweep")
    ap.add_argument("--server-auto", type=int, default=0,
                    help="Server points chosen automatically around the Offline capacity (0: none)")
    ap.add_argument("--server-seconds", type=float, default=60.0, help="LoadGen Server min_duration per point")
    ap.add_argument("--server-min-queries", type=int, default=1,
                    help="LoadGen Server min_query_count per point (1: the duration governs; a point counted as "
                         "VALID in the docs needs >= 500); a point lasts until both are met")
    ap.add_argument("--server-samples", type=int, default=2048,
                    help="distinct synthetic prompts LoadGen's Server draws from (performance sample count)")
    ap.add_argument("--interactive", action="store_true",
                    help="Server limits of llama2-70b-interactive (TTFT 450 ms, TPOT 40 ms) instead of 2 s/200 ms")
    ap.add_argument("--offline-json", default=None,
                    help="bench.json of an earlier Offline run: its engine tokens/s for the Server ratio and "
                         "--server-auto (default: this run's Offline)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--growth-reserve", type=float, default=None,
                    help="scheduler admission reserve, free KV blocks per running sequence (default: the engine's, "
                         "scheduler.GROWTH_RESERVE), for A/B runs; 0 = the admission before session 18")
    ap.add_argument("--seq-caps", default="",
                    help="Server/Interactive: comma-separated --max-num-seqs values; every QPS point (explicit or "
                         "automatic) runs once per cap and token budget, on one engine built for the largest")
    ap.add_argument("--token-budgets", default="",
                    help="Server/Interactive: comma-separated --max-num-batched-tokens values (prefill chunk + "
                         "decodes per step), swept like --seq-caps: the measurement behind a scenario's defaults")
    ap.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                    help="engine KV cache: auto (model dtype), or fp8/int8 with unit scales (timing only)")
    ap.add_argument("--engine-gemm", choices=ENGINE_GEMMS, default="auto",
                    help="GEMM of the 8-bit Linears (main.py's --engine-gemm): auto, cublas, triton, ws")
    ap.add_argument("--ws-tile", action="append", default=[], metavar="FAMILY=TILE",
                    help="A/B of the warp-specialised GEMM's tile end to end: FAMILY (int8, fp8_promote, fp8_fast) "
                         "runs TILE (tools/bench_gemm.py's BMxBNsSTAGESpSPLIT[wWGS][gGROUP_M][dDEPTH]) at every M, "
                         "as tools/profile_step.py --ws-tile (one GPU)")
    ap.add_argument("--fp8-accumulation", choices=FP8_ACCUMULATIONS, default="promoted",
                    help="--weights fp8: float32 promotion every 128 of K, or Hopper's fast accumulation (main.py's "
                         "--fp8-accumulation)")
    ap.add_argument("--graph-mixed-tokens", type=int, default=0, metavar="N",
                    help="main.py's --graph-mixed-tokens: steps with prompt chunks of up to N tokens (decodes "
                         "included) replay the decode CUDA graphs, every token a decode row (default 0: eager, "
                         "for A/B runs; main.py's Interactive default is 512)")
    ap.add_argument("--graph-mixed-ab", type=int, default=0, metavar="N",
                    help="Server/Interactive A/B on one engine: every point runs twice in a row, its steps with "
                         "prompt chunks eager (--graph-mixed-tokens 0) and then through the decode graphs up to N "
                         "tokens (graphs captured for N rows); the points and the per-setting bests say which")
    ap.add_argument("--row-groups", action=argparse.BooleanOptionalAction, default=None,
                    help="flat steps (--graph-mixed-tokens / --graph-mixed-ab) attend in groups of a sequence's "
                         "consecutive rows (paged_rows_attention), or per row through the decode graphs with "
                         "--no-row-groups (EngineConfig.flat_row_groups, default on; not a main.py flag)")
    ap.add_argument("--prefill-align", type=int, default=0, metavar="N",
                    help="main.py's --prefill-align: steps trimmed to a multiple of N tokens (default 0: off)")
    ap.add_argument("--pdl", action="store_true",
                    help="programmatic dependent launch of the engine's kernels on sm_90+ (engine/pdl.py; an "
                         "experiment, not a main.py flag: 2-6%% slower CUDA-graph decode steps on an H100, "
                         "docs/engine.md)")
    ap.add_argument("--kernel-bench", action="store_true", help="also time the paged decode kernel alone")
    ap.add_argument("--lengths-from", default=None, metavar="PATH.pkl",
                    help="prompt/output lengths from a processed dataset pickle (tok_input_length, "
                         "tok_output_length), drawn with --seed; default: the synthetic PERF.md workload")
    ap.add_argument("--output-cap", type=int, default=None, help="clip drawn output lengths (quick smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tensor-parallel", type=int, default=1,
                    help="GPUs per engine (tensor parallel; runs tools/bench_scaling.py, no reference/fidelity)")
    ap.add_argument("--data-parallel", type=int, default=1,
                    help="engine replicas, one per GPU (runs tools/bench_scaling.py, no reference/fidelity)")
    ap.add_argument("--baseline-json", default=None,
                    help="bench.json of a run on fewer GPUs: report scaling efficiency against linear")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.ws_tile:
        if args.tensor_parallel > 1 or args.data_parallel > 1:
            raise SystemExit("bench: --ws-tile is not wired into the multi-GPU benchmark")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: profile_step's parser
        from profile_step import apply_ws_tiles, parse_ws_tiles

        apply_ws_tiles(parse_ws_tiles(args.ws_tile, "bench"))
    if args.quantization:
        args.weights = args.quantization
    if args.int8_rules == "all" and (args.weights != "int8" or args.kv_cache_dtype != "int8"):
        raise SystemExit("bench: --int8-rules all runs the whole config's kernels: pass --weights int8 "
                         "--kv-cache-dtype int8")
    if args.weights != "fp16" and (args.ref_samples or args.fidelity_prompts):
        raise SystemExit(f"bench: --weights {args.weights} has no float reference model; "
                         "pass --ref-samples 0 --fidelity-prompts 0")
    if args.kv_cache_dtype != "auto" and args.fidelity_prompts:
        raise SystemExit("bench: --kv-cache-dtype fp8/int8 runs with unit scales (no calibration for random "
                         "weights): its tokens mean nothing; pass --fidelity-prompts 0")
    if args.engine_gemm != "auto" and args.weights not in ("int8", "fp8"):
        raise SystemExit(f"bench: --engine-gemm {args.engine_gemm} picks the 8-bit GEMM: pass --weights int8|fp8")
    if args.fp8_accumulation != "promoted" and args.weights != "fp8":
        raise SystemExit(f"bench: --fp8-accumulation {args.fp8_accumulation} is the FP8 GEMMs': pass --weights fp8")
    if (args.fp8_accumulation != "promoted" or args.engine_gemm != "auto") and not args.device.startswith("cuda"):
        raise SystemExit(f"bench: --fp8-accumulation / --engine-gemm choose among CUDA GEMMs; --device {args.device} "
                         "runs the exact reference GEMM")
    if not 0 <= args.graph_mixed_tokens <= MAX_GRAPH_MIXED_TOKENS:
        raise SystemExit(f"bench: --graph-mixed-tokens must be 0-{MAX_GRAPH_MIXED_TOKENS}, got "
                         f"{args.graph_mixed_tokens}")
    if args.graph_mixed_ab:
        if not 0 < args.graph_mixed_ab <= MAX_GRAPH_MIXED_TOKENS:
            raise SystemExit(f"bench: --graph-mixed-ab must be 1-{MAX_GRAPH_MIXED_TOKENS}, got {args.graph_mixed_ab}")
        if args.graph_mixed_tokens:
            raise SystemExit("bench: --graph-mixed-ab N runs every Server point with --graph-mixed-tokens 0 and N: "
                             "leave --graph-mixed-tokens out")
        if not (args.server_qps or args.server_auto):
            raise SystemExit("bench: --graph-mixed-ab compares Server/Interactive points: give --server-qps or "
                             "--server-auto")
        if args.tensor_parallel > 1 or args.data_parallel > 1:
            raise SystemExit("bench: --graph-mixed-ab is not wired into the multi-GPU benchmark")
    if args.prefill_align < 0:
        raise SystemExit(f"bench: --prefill-align must be >= 0, got {args.prefill_align}")
    # sizes a model or a run would take as something else (0 layers: the whole shape) or fail on after the build
    for flag, value, least in (("--layers", args.layers, 1), ("--output-cap", args.output_cap, 1),
                               ("--samples", args.samples, 0), ("--ref-samples", args.ref_samples, 0),
                               ("--fidelity-prompts", args.fidelity_prompts, 0),
                               ("--fidelity-tokens", args.fidelity_tokens, 1), ("--max-num-seqs", args.max_num_seqs, 1),
                               ("--max-num-batched-tokens", args.max_num_batched_tokens, 1),
                               ("--server-samples", args.server_samples, 1), ("--server-auto", args.server_auto, 0)):
        if value is not None and value < least:
            raise SystemExit(f"bench: {flag} must be >= {least}, got {value}")
    if not args.server_seconds > 0:
        raise SystemExit(f"bench: --server-seconds must be > 0, got {args.server_seconds}")
    try:
        ref_batches = [int(b) for b in args.ref_batch_sizes.split(",") if b]
        qps_points = [float(q) for q in args.server_qps.split(",") if q]
    except ValueError:
        raise SystemExit("bench: --ref-batch-sizes takes comma-separated integers and --server-qps numbers, got "
                         f"{args.ref_batch_sizes!r} and {args.server_qps!r}") from None
    if min(ref_batches, default=1) < 1:
        raise SystemExit(f"bench: --ref-batch-sizes values must be >= 1, got {args.ref_batch_sizes}")
    if not all(q > 0 and math.isfinite(q) for q in qps_points):
        raise SystemExit(f"bench: --server-qps values must be > 0, got {args.server_qps}")
    if args.pdl and (args.tensor_parallel > 1 or args.data_parallel > 1):
        raise SystemExit("bench: --pdl is not wired into the multi-GPU benchmark")
    if (args.graph_mixed_tokens or args.graph_mixed_ab) and args.int8_rules == "all":
        raise SystemExit("bench: --graph-mixed-tokens / --graph-mixed-ab with --int8-rules all: the whole config's "
                         "prompt attention runs its own kernels (main.py refuses the pair too)")
    if args.row_groups is not None and not (args.graph_mixed_tokens or args.graph_mixed_ab):
        raise SystemExit("bench: --row-groups / --no-row-groups is the attention of flat steps: give "
                         "--graph-mixed-tokens N or --graph-mixed-ab N")
    try:
        args.seq_caps = [int(v) for v in args.seq_caps.split(",") if v]
        args.token_budgets = [int(v) for v in args.token_budgets.split(",") if v]
    except ValueError:
        raise SystemExit("bench: --seq-caps and --token-budgets take comma-separated integers") from None
    if args.growth_reserve is not None and args.growth_reserve < 0:
        raise SystemExit(f"bench: --growth-reserve must be >= 0, got {args.growth_reserve}")
    if args.int8_rules == "all" and (args.tensor_parallel > 1 or args.data_parallel > 1):
        raise SystemExit("bench: --int8-rules all is not wired into the multi-GPU benchmark (its made-up static "
                         "scales for random weights are built on one device only)")
    if args.growth_reserve is not None and (args.tensor_parallel > 1 or args.data_parallel > 1):
        raise SystemExit("bench: --growth-reserve is not wired into the multi-GPU benchmark")
    if args.server_min_queries < 1:
        raise SystemExit(f"bench: --server-min-queries must be >= 1, got {args.server_min_queries}")
    if min(args.seq_caps + args.token_budgets, default=1) < 1:
        raise SystemExit("bench: --seq-caps and --token-budgets values must be >= 1")
    if args.prefill_align and args.prefill_align >= min(args.token_budgets + [args.max_num_batched_tokens]):
        raise SystemExit(f"bench: --prefill-align {args.prefill_align} trims only steps of more tokens than that: "
                         "every token budget (--max-num-batched-tokens, --token-budgets) must be above it")
    if (args.seq_caps or args.token_budgets) and not (args.server_qps or args.server_auto):
        raise SystemExit("bench: --seq-caps/--token-budgets sweep the Server points: give --server-qps or "
                         "--server-auto")
    if (args.seq_caps or args.token_budgets) and (args.tensor_parallel > 1 or args.data_parallel > 1):
        raise SystemExit("bench: --seq-caps/--token-budgets are not wired into the multi-GPU benchmark")
    # one engine serves every setting: built for the largest; Offline runs at --max-num-seqs/--max-num-batched-tokens
    args.built_seqs = max(args.seq_caps + [args.max_num_seqs])
    args.built_tokens = max(args.token_budgets + [args.max_num_batched_tokens])
    if not args.samples and (args.ref_samples or args.fidelity_prompts):
        raise SystemExit("bench: --samples 0 has no Offline prompts for the reference and fidelity; "
                         "pass --ref-samples 0 --fidelity-prompts 0")
    if not args.samples and not (args.server_qps or args.server_auto):
        raise SystemExit("bench: --samples 0 skips Offline; give Server points (--server-qps/--server-auto)")
    if args.server_auto and not args.samples and not args.offline_json:
        raise SystemExit("bench: --server-auto starts from the Offline tokens/s: keep --samples > 0 or pass "
                         "--offline-json of an earlier run")
    if args.tensor_parallel < 1 or args.data_parallel < 1:
        raise SystemExit(f"bench: --tensor-parallel and --data-parallel must be >= 1, got {args.tensor_parallel} "
                         f"and {args.data_parallel}")
    if args.tensor_parallel > 1 or args.data_parallel > 1:
        from bench_scaling import check_args, read_baseline  # tools/ is this script's directory, first on sys.path

        check_args(args)
        if args.baseline_json:
            read_baseline(args.baseline_json, args)  # before any model is built, not after the run
    elif args.baseline_json:
        raise SystemExit("bench: --baseline-json gives the scaling efficiency of a multi-GPU run: add "
                         "--tensor-parallel N or --data-parallel M (a one-device run would ignore it)")
    if args.liteml_config != DEFAULT_QUANT_CONFIG and args.weights != "int8":
        raise SystemExit(f"bench: --liteml-config {args.liteml_config} gives the rules of --weights int8; --weights "
                         f"{args.weights} would ignore it: drop it or pass --weights int8")
    if args.offline_json is not None:
        if args.samples:
            raise SystemExit(f"bench: --offline-json {args.offline_json} stands in for this run's Offline: with "
                             f"--samples {args.samples} the run's own Offline is used and the file ignored; pass "
                             "--samples 0 or drop --offline-json")
        if args.tensor_parallel == 1 and args.data_parallel == 1:  # the multi-GPU benchmark refuses it below
            read_offline_json(args.offline_json, args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench: --device {args.device} but torch sees no CUDA GPU (torch {torch.__version__}); "
                         "pass --device cpu for a (slow) CPU run")
    check_loadgen()
    if args.tensor_parallel > 1 or args.data_parallel > 1:
        from bench_scaling import check_devices  # torch's device count: after the CUDA check above

        check_devices(args)
    elif args.device != "cpu":
        try:
            index = torch.device(args.device).index or 0
        except RuntimeError:
            index = None
        if index is None or not args.device.startswith("cuda"):
            raise SystemExit(f"bench: --device {args.device}: give cpu or cuda[:K]")
        if index >= torch.cuda.device_count():
            raise SystemExit(f"bench: --device {args.device} but torch sees {torch.cuda.device_count()} GPU(s): give "
                             "a visible one (cuda:0 ..)")
    workload = workload_lengths(args.samples, args.seed, args.lengths_from, synthetic_lengths)
    os.makedirs(args.out, exist_ok=True)
    lg_dir = tempfile.mkdtemp(prefix="bench-loadgen-")
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    cfg = hf_config_for(args.shape, args.layers)
    result: dict = {"args": vars(args), "rows": [], "device_name": device_name(device),
                    "weights": weights_label(args.weights, dtype)}

    def save() -> None:  # after every section, so a run cut short keeps what it measured
        with open(os.path.join(args.out, "bench.json"), "w") as fh:
            json.dump(result, fh, indent=1, default=float)

    p_len, o_len = workload.prompt, workload.output
    if args.output_cap:
        o_len = np.minimum(o_len, args.output_cap)
    prompts = synthetic_prompts(p_len, cfg.vocab_size, args.seed)
    if args.samples:
        result["workload"] = {**workload.summary(), "output_mean": float(o_len.mean())}
    if args.kernel_bench and device.type == "cuda":
        result["kernels"] = kernel_bench(device)
        for row in result["kernels"]:
            log.info("kernel %s", row)
        save()
    if args.tensor_parallel > 1 or args.data_parallel > 1:
        from bench_scaling import run_scaling  # tools/ is this script's directory, first on sys.path

        return run_scaling(args, cfg, prompts, o_len, p_len)

    hf_ref = None
    if args.ref_samples > 0 or args.fidelity_prompts > 0:
        hf = build_hf(cfg, device, dtype, args.init_std, args.seed)
        if args.fidelity_prompts:
            n = args.fidelity_prompts
            hf_ref, _ = hf_generate(hf, prompts[:n], [args.fidelity_tokens] * n, batch_size=1)
            # the noise floor: generate against itself, left-padded batches of 16 vs one prompt at a time
            hf_padded, _ = hf_generate(hf, prompts[:n], [args.fidelity_tokens] * n, batch_size=16)
        backend = None
        for bs in [int(b) for b in args.ref_batch_sizes.split(",") if b] if args.ref_samples else []:
            m = args.ref_samples
            backend = ForcedLengthReference(hf, o_len, eos_token_id=cfg.eos_token_id, vocab_size=cfg.vocab_size,
                                            batch_size=bs)
            run = loadgen_offline(backend, prompts[:m], os.path.join(lg_dir, f"reference_{bs}"))
            if run["failures"]:
                log.warning("reference batch %d failed (%d samples; out of memory?)", bs, run["failures"])
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            result["rows"].append({"backend": "reference", "batch": bs, "samples": m, "path": "loadgen",
                                   "tokens_per_s": float(o_len[:m].sum() / run["wall_s"]), **run})
            log.info("reference bs %d: %.0f tok/s", bs, result["rows"][-1]["tokens_per_s"])
            save()
        model = engine_model_from_hf(hf, cfg, device, dtype, MAX_MODEL_LEN)
        del hf, backend  # the reference backend holds the model too: free it before the KV cache is sized
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        model = bench_model(cfg, args.weights, args.liteml_config, device, dtype, MAX_MODEL_LEN, args.init_std,
                            args.seed, args.int8_rules)
    result["memory"] = {"weights_gib": sum(t.numel() * t.element_size() for t in
                                           list(model.parameters()) + list(model.buffers())) / GIB}
    if device.type == "cuda":
        result["memory"]["gpu_free_before_engine_gib"] = torch.cuda.mem_get_info(device)[0] / GIB

    econf = EngineConfig(max_num_seqs=args.built_seqs, max_num_batched_tokens=args.built_tokens,
                         num_kv_blocks=None if device.type == "cuda" else 4096, kv_cache_dtype=args.kv_cache_dtype,
                         gemm=args.engine_gemm, fp8_accumulation=args.fp8_accumulation,
                         graph_mixed_tokens=args.graph_mixed_tokens or args.graph_mixed_ab, pdl=args.pdl,
                         **({} if args.row_groups is None else {"flat_row_groups": args.row_groups}),
                         prefill_align=args.prefill_align)
    kv_scales = None
    if args.kv_cache_dtype != "auto":
        kv_scales = torch.ones(2, cfg.num_hidden_layers, cfg.num_key_value_heads)  # unit scales: timing only
    result["kv_cache"] = {"dtype": args.kv_cache_dtype,
                          "scales": "unit (1.0 per layer and KV head; timing only)" if kv_scales is not None else None}
    t = time.perf_counter()
    engine = LLMEngine(ModelRunner(model, econf, cfg.eos_token_id, MAX_MODEL_LEN, device, dtype, kv_scales), econf,
                       cfg.eos_token_id)
    result["engine_setup_s"] = time.perf_counter() - t
    if args.growth_reserve is not None:
        engine.scheduler.growth_reserve = args.growth_reserve
    result["growth_reserve"] = engine.scheduler.growth_reserve
    result["provenance"] = provenance(model, args, device)
    kv = engine.runner.kv_cache
    result["memory"].update(kv_cache_gib=kv.numel() * kv.element_size() / GIB, kv_blocks=engine.runner.num_blocks,
                            kv_tokens=engine.runner.num_blocks * econf.block_size)
    if device.type == "cuda":
        result["memory"]["gpu_free_after_engine_gib"] = torch.cuda.mem_get_info(device)[0] / GIB
    log.info("memory: %s; engine setup %.1f s", result["memory"], result["engine_setup_s"])
    save()

    if hf_ref is not None:
        outs = engine.generate(prompts[:len(hf_ref)], SamplingParams(args.fidelity_tokens))
        div = [first_divergence(a, b) for a, b in zip(outs, hf_ref)]
        same = sum(d is None for d in div)
        floor = [first_divergence(a, b) for a, b in zip(hf_padded, hf_ref)]
        result["fidelity"] = {"prompts": len(div), "identical": same, "fraction": same / len(div),
                              "first_divergence": [d for d in div if d is not None], "init_std": args.init_std,
                              "generate_padded_vs_unpadded_identical": sum(d is None for d in floor),
                              "generate_padded_vs_unpadded_divergence": [d for d in floor if d is not None]}
        log.info("fidelity: %d/%d identical; first divergences at %s", same, len(div),
                 result["fidelity"]["first_divergence"])
        save()

    server_on = bool(args.server_qps or args.server_auto)
    if server_on:
        sp_len, so_len, server_prompts = server_workload(args, cfg.vocab_size, args.server_samples)
    w_p, w_o = (p_len, o_len) if args.samples else (sp_len, so_len)  # the roofline's workload
    engine.generate((prompts or server_prompts)[:32], SamplingParams(8, ignore_eos=True))  # warm-up
    kv_capacity = engine.runner.num_blocks * econf.block_size
    live = min(args.max_num_seqs, kv_capacity / float(w_p.mean() + w_o.mean()))
    kv_bytes = 1 if args.kv_cache_dtype != "auto" else None
    roof = roofline_tokens_per_s(cfg, w_p, w_o, live, dtype.itemsize, 1 if args.weights in ("int8", "fp8") else None,
                                 kv_bytes)
    # the SM clock and power beside every figure (an SXM card lowers its clock to stay under its board power)
    clocks = clock_sampler(device)
    if args.samples:
        engine.set_step_limits(args.max_num_seqs, args.max_num_batched_tokens)
        t0 = time.monotonic()
        engine_offline(args, engine, prompts, o_len, roof, result, lg_dir)
        if clocks is not None:
            row = result["rows"][-1]
            row["gpu_clock"] = clock_stats(clocks.between(t0, time.monotonic()))
            if row["gpu_clock"] and args.weights in ("int8", "fp8"):  # the 8-bit roofline at the clock it ran
                row["roofline_at_clock_tokens_per_s"] = roofline_tokens_per_s(
                    cfg, w_p, w_o, live, dtype.itemsize, 1, kv_bytes, sm_mhz=row["gpu_clock"]["mhz_median"])
        save()
    if server_on:
        result["server"] = server_sweep(args, engine, (sp_len, so_len, server_prompts), cfg.vocab_size, result,
                                        lg_dir, save, clocks)
    if clocks is not None:
        result["nvidia_smi_unparsed"] = clocks.close()
    table = "\n".join(table_lines(args, cfg, dtype, w_p, w_o, result, roof))
    print("\n" + table)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table + "\n")
    save()
    shutil.rmtree(lg_dir, ignore_errors=True)
    return 0


def clock_sampler(device: torch.device) -> Sampler | None:
    """nvidia-smi sampling the SM clock and power during the runs (tools/gpu_clock.py); None off CUDA or
    without nvidia-smi."""
    return Sampler.start(index=device.index or 0) if device.type == "cuda" else None


def check_loadgen() -> None:
    """Every run measures through LoadGen (Offline, reference, Server; --samples 0 needs Server points), imported
    only after the model is built: its absence is refused here, before."""
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError as exc:
        raise UserError(f"cannot import mlperf_loadgen ({exc}): bench.py measures through LoadGen; install the "
                        "mlcommons_loadgen wheel that lives in .whl/ (pip install .whl/mlcommons_loadgen-*.whl; "
                        "on the device machine, carry .whl)") from None


# the --offline-json rules of tools/gpu/common.sh's check_offline_json: an engine Offline row with tokens/s, run by
# the same build (a key the file does not record is taken as matching, as there)
OFFLINE_JSON_BUILD = ("shape", "layers", "weights", "kv_cache_dtype", "int8_rules")


def read_offline_json(path: str, args) -> list[dict]:
    """--offline-json's engine Offline rows, checked before any model is built: readable, holding an engine row with
    tokens/s, and a run of this build (its automatic QPS points and Offline ratio would otherwise be another's)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        ran = data.get("args") or {}
        rows = [r for r in data.get("rows") or [] if r.get("backend") == "engine" and r.get("tokens_per_s")]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"--offline-json {path}: cannot read it as a tools/bench.py bench.json ({exc})") from None
    if not rows:
        raise UserError(f"--offline-json {path} has no engine Offline row with tokens/s: give the bench.json of an "
                        "Offline run")
    for key in OFFLINE_JSON_BUILD:
        ours = getattr(args, key)
        if ran.get(key, ours) != ours:
            raise UserError(f"--offline-json {path} ran --{key.replace('_', '-')} {ran.get(key)}, this run "
                            f"{'all' if ours is None else ours}: its automatic QPS points and Offline ratio would "
                            "come from another build; give a bench.json of this build")
    return rows


def offline_reference(args, result) -> tuple[float | None, str | None, float | None]:
    """Offline engine tokens/s to compare Server with: this run's, else --offline-json's; where it came from; and
    that run's whole-run rate extrapolated to 24,576 samples (tools/steady_state.py; None where not recorded): a
    short Offline's whole-run rate is mostly ramp and drain, so a ratio to it alone flatters Server."""
    rows = [r for r in result["rows"] if r["backend"] == "engine"]
    source = "this run"
    if not rows and args.offline_json:
        rows = read_offline_json(args.offline_json, args)  # checked in main's pre-flight already
        source = args.offline_json
    if not rows:
        return None, None, None
    extrapolated = (rows[-1].get("steady") or {}).get("extrapolated_24576")
    return rows[-1]["tokens_per_s"], source, extrapolated


def server_workload(args, vocab: int, n: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """The Server prompt set: n random prompts of the workload's lengths (the Offline set when the counts
    match) and their output lengths."""
    workload = workload_lengths(n, args.seed, args.lengths_from, synthetic_lengths)
    p_len, o_len = workload.prompt, workload.output
    if args.output_cap:
        o_len = np.minimum(o_len, args.output_cap)
    return p_len, o_len, synthetic_prompts(p_len, vocab, args.seed)


def workload_source(args) -> str:
    return f"dataset {args.lengths_from}" if args.lengths_from else "synthetic (PERF.md)"


def server_sweep(args, engine, workload, vocab: int, result, lg_dir, save, clocks=None) -> dict:
    """LoadGen Server runs at the explicit points, then the automatic ones; the highest QPS meeting the limits.
    `clocks` (a gpu_clock.Sampler) adds each point's SM clock and power to it."""
    from mlperf_llama2.data.dataset import Dataset

    p_len, o_len, prompts = workload
    limits = bench_server.INTERACTIVE if args.interactive else bench_server.SERVER
    explicit = sorted(float(q) for q in args.server_qps.split(",") if q)
    offline_tps, source, offline_24576 = offline_reference(args, result)
    sweep: dict = {"limits": {"name": limits.name, "lg_model_name": limits.lg_model_name, "ttft_ms": limits.ttft_ms,
                              "tpot_ms": limits.tpot_ms},
                   "min_duration_s": args.server_seconds, "min_query_count": args.server_min_queries,
                   "offline_tokens_per_s": offline_tps, "offline_extrapolated_24576": offline_24576,
                   "offline_source": source, "points": []}
    if offline_tps:
        sweep["capacity_qps"] = offline_tps / float(o_len.mean())
    top = max(explicit + ([sweep["capacity_qps"] * limits.auto_range[2]] if args.server_auto else []))
    needed = bench_server.point_sample_count(top, args.server_seconds, 10**9, args.server_min_queries)
    if needed > len(prompts):  # equal issue would double a point's length: draw enough prompts
        log.info("server: %g QPS for %g s needs %d prompts; drawing %d instead of --server-samples %d", top,
                 args.server_seconds, needed, needed, len(prompts))
        p_len, o_len, prompts = server_workload(args, vocab, needed)
    result["server_workload"] = {"source": workload_source(args), "samples": len(prompts),
                                 "prompt_mean": float(p_len.mean()),
                                 "output_mean": float(o_len.mean())}
    dataset = Dataset(path="synthetic", prompts=tuple(tuple(p) for p in prompts), targets=None)
    backend = ForcedLengthEngine(engine, o_len)

    runs = bench_server.ServerRuns(backend, dataset, limits, args.server_seconds, os.path.join(lg_dir, "server"),
                                   args.server_min_queries)
    sweep["user_conf"] = runs.user_conf

    # the per-step limits swept (--seq-caps x --token-budgets); without them the one setting of the run
    settings = [(seqs, tokens) for seqs in args.seq_caps or [args.max_num_seqs]
                for tokens in args.token_budgets or [args.max_num_batched_tokens]]
    # --graph-mixed-ab N: each point eager, then through the graphs (the runner's limit is read at every step)
    flats = [0, args.graph_mixed_ab] if args.graph_mixed_ab else [None]
    for seqs, tokens in settings:
        engine.set_step_limits(seqs, tokens)

        def measure(qps: float, flat) -> dict:
            if flat is not None:
                engine.runner.graph_mixed_tokens = flat
            flat_before = engine.runner.flat_steps
            t0 = time.monotonic()
            point = runs.measure(qps)
            if clocks is not None:
                point["gpu_clock"] = clock_stats(clocks.between(t0, time.monotonic()))
            point.update(max_num_seqs=seqs, max_num_batched_tokens=tokens)  # measure runs within this iteration
            if flat is not None:  # and how many of the point's steps with prompt chunks replayed the graphs
                point.update(graph_mixed_tokens=flat, flat_steps=engine.runner.flat_steps - flat_before)
            sweep["points"].append(point)
            log.info("%s", bench_server.point_line(point))
            result["server"] = sweep
            save()
            return point

        for qps in explicit:
            for flat in flats:  # A and B back to back at each QPS
                measure(qps, flat)
        if args.server_auto:
            for flat in flats:
                bench_server.auto_sweep(sweep["capacity_qps"], lambda qps: measure(qps, flat), args.server_auto,
                                        limits.auto_range)
    if args.graph_mixed_ab:
        engine.runner.graph_mixed_tokens = args.graph_mixed_ab
    if len(settings) > 1 or args.graph_mixed_ab:
        sweep["settings"] = bench_server.setting_bests(sweep["points"])
    best = bench_server.best_point(sweep["points"])
    sweep["best_qps"] = best["qps"] if best else None
    if best:
        sweep["best_tokens_per_s"] = best["completed_tokens_per_s"]
        sweep["best_valid"] = best["valid"]
        if offline_tps:
            sweep["ratio_to_offline"] = best["completed_tokens_per_s"] / offline_tps
        if offline_24576:
            sweep["ratio_to_offline_24576"] = best["completed_tokens_per_s"] / offline_24576
    return sweep


def table_lines(args, cfg, dtype, p_len, o_len, result, roof) -> list[str]:
    lines: list[str] = []
    best_ref = max((r["tokens_per_s"] for r in result["rows"] if r["backend"] == "reference"), default=None)
    mem = result.get("memory", {})
    weights = weights_label(args.weights, dtype) + (" (fast accumulation)"
                                                    if getattr(args, "fp8_accumulation", "promoted") == "fast" else "")
    lines.append(f"shape {args.shape} layers {cfg.num_hidden_layers} {dtype} weights {weights}; prompts mean "
                 f"{p_len.mean():.0f}, outputs mean {o_len.mean():.0f} ({workload_source(args)} lengths); "
                 f"{'LoadGen Offline PerformanceOnly' if args.samples else 'no Offline (--samples 0): the Server set'}")
    free = mem.get("gpu_free_before_engine_gib")  # recorded on CUDA only
    lines.append(f"weights {mem.get('weights_gib', 0):.1f} GiB; GPU free before the engine "
                 f"{'n/a (no GPU)' if free is None else f'{free:.1f} GiB'}; KV cache "
                 f"{mem.get('kv_cache_gib', 0):.1f} GiB = {mem.get('kv_blocks', 0)} blocks "
                 f"({mem.get('kv_tokens', 0)} tokens); engine setup {result.get('engine_setup_s', 0):.0f} s")
    lines.append(f"device {result.get('device_name', 'not recorded')}; roofline from the H200's figures "
                 f"({HBM_BYTES_PER_S / 1e12:g} TB/s, {MATMUL_FLOP_PER_S / 1e12:g} TFLOP/s 16-bit, "
                 f"{EIGHT_BIT_OPS_PER_S / 1e12:g} TOPS 8-bit) whatever the device")
    kv = result.get("kv_cache", {})
    lines.append(f"KV cache dtype {kv.get('dtype', 'auto')}" + (f", scales {kv['scales']}" if kv.get("scales") else ""))
    if result["rows"]:
        lines.append(f"{'backend':<10}{'batch':>6}{'samples':>8}{'tok/s':>10}{'vs ref':>8}{'roofline':>10}"
                     f"{'steady':>9}{'drain':>7}{'->24,576':>10}")
    for r in result["rows"]:
        ratio = f"{r['tokens_per_s'] / best_ref:.2f}x" if best_ref else "-"
        # tools/steady_state.py on the engine's step log; a figure it cannot give is None (its note says why): '-'
        st = r.get("steady") or {}
        steady = "".join(f"{'-' if st.get(key) is None else format(st[key], spec):>{width}}"
                         for key, spec, width in (("steady_tokens_per_s", ".0f", 9), ("drain_share", ".0%", 7),
                                                  ("extrapolated_24576", ".0f", 10)))
        lines.append(f"{r['backend']:<10}{r['batch']:>6}{r['samples']:>8}{r['tokens_per_s']:>10.0f}{ratio:>8}"
                     f"{r['tokens_per_s'] / roof:>10.0%}" + steady)
        host = r.get("host") or {}
        if host.get("steps"):  # tools/step_timer.py
            lines.append(f"  {r['backend']} steps: {host['steps']}, {host['step_ms_mean']:.1f} ms each (busy "
                         f"{host['busy_ms_mean']:.1f}), launch {host['launch_ms_mean']:.1f} ms, the loop waiting for "
                         f"the GPU {host['wait_share']:.0%} of the busy time"
                         + (f", {host['host_bound_steps']:.0%} of steps bound by the host"
                            if host.get("host_bound_steps") is not None else ""))
        if (r.get("steady") or {}).get("note"):
            lines.append(f"  {r['backend']} steady state: {r['steady']['note']}")
        if r.get("gpu_clock"):
            at_clock = r.get("roofline_at_clock_tokens_per_s")
            lines.append(f"  {r['backend']} GPU: {stats_line(r['gpu_clock'])}"
                         + (f"; the 8-bit roofline at that clock {at_clock:,.0f} tok/s, "
                            f"{r['tokens_per_s'] / at_clock:.0%} of it" if at_clock else ""))
    if "server" in result:
        lines.extend(bench_server.sweep_lines(result["server"]))
    for row in result.get("kernels", []):
        lines.append(f"kernel {row['kernel']:<15} H {row['heads']:>2} KV {row['kv_heads']:>2} ctx {row['context']:>5} "
                     f"B {row['batch']}: {row['ms']:.3f} ms, {row['tb_per_s']:.2f} TB/s")
    if "fidelity" in result:
        f = result["fidelity"]
        lines.append(f"fidelity vs generate (init std {f['init_std']}): {f['identical']}/{f['prompts']} identical, "
                     f"first divergences {f['first_divergence']}; generate batch 16 vs batch 1: "
                     f"{f['generate_padded_vs_unpadded_identical']}/{f['prompts']} identical, "
                     f"first divergences {f['generate_padded_vs_unpadded_divergence']}")
    return lines


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
