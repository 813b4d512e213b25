"""The engine's knobs (`--backend engine`): a frozen dataclass that owns its command-line flags.

It lives beside the engine, not in `mlperf_llama2/config.py`, so the engine and the backends built on
it never import the run configuration (which names the backends' registry): `config.RunConfig`
holds one and re-exports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from mlperf_llama2.errors import UserError

ENGINE_OPS = ("auto", "eager", "fused")  # engine/ops.py's choices (that module imports torch)
# the 8-bit Linears' GEMM (int8 mode, --quantization fp8): quant_plan.GEMM_PATHS says what each one runs
ENGINE_GEMMS = ("auto", "cublas", "triton", "ws")
# FP8 GEMM accumulation (--quantization fp8): float32 promotion every 128 of K, or Hopper's fast low-precision
# accumulation (a named option: its accuracy cost is measured, tools/bench_fidelity.py --variants fp8-fast*)
FP8_ACCUMULATIONS = ("promoted", "fast")
KV_CACHE_DTYPES = ("auto", "fp8", "int8")  # auto: the model dtype (engine/kv_cache.py)
# auto: with --liteml-config its own per-tensor K/V scales, else per KV head when the file has them (calibration_file)
KV_SCALE_GRANULARITIES = ("auto", "tensor", "head")
# --max-num-seqs when not given, by scenario (LoadGen's; Interactive = Server with llama2-70b-interactive), from the
# measurements in docs/engine.md: Offline gains from the largest batch the KV cache holds (70B widths at 20 layers,
# H100, int8: steady state at 512 sequences 10,774 tok/s vs 256's 9,422; the H200's FP8 KV cache holds 512 of the
# workload with no preemption, and the admission reserve keeps a cap above what a smaller cache holds from
# churning); Server at 256 met 0.92 of Offline VALID (70B int8, H200); Interactive's 40 ms TPOT needs a smaller
# decode step (70B int8: 256 sequences ~59 ms a step, 128 gave p99 TPOT 40.2 ms at 3.5 QPS). tools/bench.py
# --seq-caps measures others.
SCENARIO_MAX_NUM_SEQS = {"Offline": 512, "Server": 256, "Interactive": 128}
# KV-cache blocks of an engine off CUDA without --num-kv-blocks (no free-memory sizing there; model_runner.py)
CPU_DEFAULT_KV_BLOCKS = 512
MAX_GRAPH_MIXED_TOKENS = 1024  # --graph-mixed-tokens: measured up to 512 (docs/engine.md)
# --graph-mixed-tokens when not given, by scenario, where the engine replays CUDA graphs (a CUDA device, graphs on,
# not the whole-config int8 mode): Interactive's small steps with a prompt chunk are bound by the host's launches
# when eager (70B FP8, all 80 layers, H100: 64 decodes + 128 prompt tokens 165.6 ms eager against 45.1 through the
# graphs; 128 + 448, GPU-bound, 114.5 against 112.9; 20 layers, Interactive through LoadGen: +1.6% samples/s and
# 0.4-0.8 ms lower p99 TPOT). Offline and Server keep their steps eager until an A/B says otherwise.
SCENARIO_GRAPH_MIXED_TOKENS = {"Offline": 0, "Server": 0, "Interactive": 512}
KV_SCALES_HINT = ("needs static K/V scales calibrated on the calibration set: pass --calibration-scales FILE "
                  "(python3 tools/calibrate_kv.py writes one), or use --kv-cache-dtype auto")


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the fast engine (`--backend engine`)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    kv_cache_memory_fraction: float = 0.9
    num_kv_blocks: Optional[int] = None
    cuda_graphs: bool = True
    overlap_steps: Optional[bool] = None  # queue step N+1 before reading step N's tokens; None: on CUDA only
    ops: str = "auto"  # elementwise ops: auto (fused Triton on CUDA, eager elsewhere) | eager | fused
    kv_cache_dtype: str = "auto"  # auto | fp8 | int8 (8-bit: static scales, engine/kv_cache.py)
    kv_scale_granularity: str = "auto"  # auto | tensor | head: which K/V ranges of --calibration-scales are used
    gemm: str = "auto"  # 8-bit GEMM: auto | cublas | triton | ws (quant_plan.GEMM_PATHS)
    fp8_accumulation: str = "promoted"  # promoted | fast (FP8_ACCUMULATIONS)
    # steps with prompt chunks of up to this many tokens (decodes included) replay the decode CUDA graphs, one row
    # a token (model_runner._flat_rows); 0: such steps run eagerly (the host's launches bound small ones)
    graph_mixed_tokens: int = 0
    # programmatic dependent launch of the engine's own kernels on sm_90+ (engine/pdl.py): an experiment for the
    # benchmark tools (tools/bench.py / profile_step.py --pdl), not a main.py flag until it is measured
    pdl: bool = False
    # flat steps' attention in groups of a sequence's consecutive rows (paged_decode_triton.paged_rows_attention)
    # in flat graphs of their own, instead of a decode-kernel program per row in the decode graphs. On (CUDA, with
    # --graph-mixed-tokens): tokens equal on an H100, its attention 1.2-3x faster wherever a prompt chunk is in the
    # step, the 80-layer flat step level at 64 + 128 tokens and 1.1% faster at 128 + 448 (docs/engine.md). Not a
    # main.py flag: tools/bench.py --no-row-groups and profile_step.py --graph-mixed time the per-row way
    flat_row_groups: bool = True
    # trim a step's last prompt chunk so the step is a multiple of this many tokens (scheduler.py); 0: off
    prefill_align: int = 0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise UserError(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise UserError(f"--max-num-batched-tokens must be >= 1 (prompts are prefilled in chunks), "
                            f"got {self.max_num_batched_tokens}")
        if self.block_size < 1:
            raise UserError(f"--block-size must be >= 1, got {self.block_size}")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise UserError(f"--kv-cache-memory-fraction must be in (0, 1], got {self.kv_cache_memory_fraction}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise UserError(f"--num-kv-blocks must be >= 1, got {self.num_kv_blocks}")
        if self.ops not in ENGINE_OPS:
            raise UserError(f"--engine-ops must be one of {', '.join(ENGINE_OPS)}, got {self.ops!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                            f"got {self.kv_cache_dtype!r}")
        if self.gemm not in ENGINE_GEMMS:
            raise UserError(f"--engine-gemm must be one of {', '.join(ENGINE_GEMMS)}, got {self.gemm!r}")
        if self.fp8_accumulation not in FP8_ACCUMULATIONS:
            raise UserError(f"--fp8-accumulation must be one of {', '.join(FP8_ACCUMULATIONS)}, "
                            f"got {self.fp8_accumulation!r}")
        if not 0 <= self.graph_mixed_tokens <= MAX_GRAPH_MIXED_TOKENS:
            raise UserError(f"--graph-mixed-tokens must be 0-{MAX_GRAPH_MIXED_TOKENS} (0: mixed steps run eagerly; "
                            "a prompt row reads its whole prefix, so the cost grows with the square of the chunk, "
                            f"and each 16 rows more is one more graph), got {self.graph_mixed_tokens}")
        if self.prefill_align < 0:
            raise UserError(f"--prefill-align must be >= 0 (0: off), got {self.prefill_align}")
        if self.prefill_align and self.prefill_align >= self.max_num_batched_tokens:
            raise UserError(f"--prefill-align {self.prefill_align} trims only steps of more than that many tokens, "
                            f"and --max-num-batched-tokens {self.max_num_batched_tokens} allows none: it would do "
                            "nothing; give an alignment below the token budget, or 0 (off)")
        if self.kv_scale_granularity not in KV_SCALE_GRANULARITIES:
            raise UserError(f"--kv-scale-granularity must be one of {', '.join(KV_SCALE_GRANULARITIES)}, "
                            f"got {self.kv_scale_granularity!r}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("engine (--backend engine)")
        g.add_argument("--max-num-seqs", type=int, default=None,
                       help="most sequences in flight at once (default by scenario: " + ", ".join(
                           f"{k} {v}" for k, v in SCENARIO_MAX_NUM_SEQS.items()) + "; docs/engine.md)")
        g.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                       help="token budget of one engine step, prefill chunks plus decodes (default %(default)s)")
        g.add_argument("--block-size", type=int, default=EngineConfig.block_size,
                       help="tokens per KV-cache block (default %(default)s)")
        g.add_argument("--kv-cache-memory-fraction", type=float, default=EngineConfig.kv_cache_memory_fraction,
                       help="fraction of free GPU memory after loading the model given to the KV cache "
                            "(default %(default)s)")
        g.add_argument("--num-kv-blocks", type=int, default=None,
                       help="fixed number of KV-cache blocks (instead of the memory fraction; CPU default "
                            f"{CPU_DEFAULT_KV_BLOCKS})")
        g.add_argument("--no-cuda-graphs", action="store_true",
                       help="run decode eagerly instead of replaying CUDA graphs")
        g.add_argument("--graph-mixed-tokens", type=int, default=None, metavar="N",
                       help="steps that prefill prompt chunks, up to N tokens with the decodes, replay the decode "
                            "CUDA graphs too: every token is a row of the paged decode kernel, a prompt token "
                            "attending to the cache up to itself (eager steps are bound by the host's kernel "
                            "launches when small: Server, Interactive); 0 = such steps run eagerly; at most "
                            f"{MAX_GRAPH_MIXED_TOKENS} (default by scenario where the engine replays CUDA graphs: "
                            + ", ".join(f"{k} {v}" for k, v in SCENARIO_GRAPH_MIXED_TOKENS.items())
                            + "; else 0; docs/engine.md)")
        g.add_argument("--prefill-align", type=int, default=EngineConfig.prefill_align, metavar="N",
                       help="a step of more than N tokens with a prompt chunk is trimmed to a multiple of N by "
                            "shortening its last prompt chunk (the rest runs next step): the 8-bit GEMMs compute "
                            "whole 128-row tiles, so 1,476 tokens cost what 1,536 do; 0 = off (default %(default)s; "
                            "docs/engine.md)")
        g.add_argument("--no-overlap-steps", action="store_true",
                       help="wait for each step's tokens before scheduling the next (default on CUDA: the next "
                            "step is queued on the GPU while the host reads the last one's tokens)")
        g.add_argument("--engine-ops", choices=ENGINE_OPS, default=EngineConfig.ops,
                       help="elementwise ops (RMSNorm, RoPE + KV store, SiLU gate): auto = fused Triton kernels "
                            "on CUDA, eager torch elsewhere; eager or fused forces one, for A/B runs "
                            "(default %(default)s)")
        g.add_argument("--engine-gemm", choices=ENGINE_GEMMS, default=EngineConfig.gemm,
                       help="GEMM of the 8-bit Linears (int8 mode, --quantization fp8), for A/B runs; int8 gives "
                            "the same numbers on every path (exact sums), fp8 accumulates in float32 on every path "
                            "(cuBLASLt in its own order; Hopper's fast fp8 accumulation only with "
                            "--fp8-accumulation fast): auto = the "
                            "measured fastest: on sm_90 the warp-specialised GEMM for both (its tile chosen by the "
                            "batch); elsewhere the Triton int8 GEMM with the fused rescale and cuBLASLt fp8; "
                            "cublas = cuBLASLt fp8, torch._int_mm int8; triton = the persistent Triton GEMM "
                            "(quant/gemm8_triton.py); ws = the warp-specialised Gluon GEMM (quant/gemm8_ws.py, "
                            "sm_90 only) (default %(default)s)")
        g.add_argument("--fp8-accumulation", choices=FP8_ACCUMULATIONS, default=EngineConfig.fp8_accumulation,
                       help="--quantization fp8 on a CUDA GPU: promoted = float32 accumulation, promoted every "
                            "128 elements of K (the accuracy reference's numbers up to summation order); fast = "
                            "Hopper's faster low-precision fp8 accumulation (cuBLASLt use_fast_accum, or the "
                            "warp-specialised GEMM without promotion): a named option whose accuracy cost is "
                            "measured in docs/engine.md, not the default (default %(default)s)")
        g.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default=EngineConfig.kv_cache_dtype,
                       help="KV-cache storage: auto = the model dtype (engine int8 mode with a config whose K and V "
                            "quantizers are int8 static per tensor: int8 with the config's own scales); fp8 (E4M3) "
                            "or int8 store K and V in 8 bits "
                            "with static per-layer, per-KV-head scales from --calibration-scales (half the KV "
                            "memory and reads) (default %(default)s)")
        g.add_argument("--kv-scale-granularity", choices=KV_SCALE_GRANULARITIES,
                       default=EngineConfig.kv_scale_granularity,
                       help="K/V scales of an 8-bit KV cache: one per layer (tensor) or per layer and KV head "
                            "(head); auto = the config's own per-tensor scales with --liteml-config, else per KV "
                            "head when the file holds them, else per tensor (default %(default)s)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, scenario: str = "Offline",
                      graphs_for_mixed_steps: bool = False) -> "EngineConfig":
        """`scenario`: Offline, Server or Interactive, for the --max-num-seqs and --graph-mixed-tokens defaults
        (SCENARIO_MAX_NUM_SEQS, SCENARIO_GRAPH_MIXED_TOKENS). `graphs_for_mixed_steps`: whether this run's engine
        could replay its mixed steps through the decode graphs (`mixed_steps_can_use_graphs`); without it, or
        with --no-cuda-graphs, the --graph-mixed-tokens default is 0 (an explicit value is checked by preflight)."""
        graph_mixed_tokens = ns.graph_mixed_tokens
        if graph_mixed_tokens is None:
            graphs = graphs_for_mixed_steps and not ns.no_cuda_graphs
            graph_mixed_tokens = SCENARIO_GRAPH_MIXED_TOKENS[scenario] if graphs else 0
        return cls(
            max_num_seqs=SCENARIO_MAX_NUM_SEQS[scenario] if ns.max_num_seqs is None else ns.max_num_seqs,
            max_num_batched_tokens=ns.max_num_batched_tokens,
            block_size=ns.block_size,
            kv_cache_memory_fraction=ns.kv_cache_memory_fraction,
            num_kv_blocks=ns.num_kv_blocks,
            cuda_graphs=not ns.no_cuda_graphs,
            overlap_steps=False if ns.no_overlap_steps else None,
            kv_cache_dtype=ns.kv_cache_dtype,
            kv_scale_granularity=ns.kv_scale_granularity,
            ops=ns.engine_ops,
            gemm=ns.engine_gemm,
            fp8_accumulation=ns.fp8_accumulation,
            graph_mixed_tokens=graph_mixed_tokens,
            prefill_align=ns.prefill_align,
        )


def mixed_steps_can_use_graphs(backend: str, device: str, liteml_config: Optional[str], int8_rules: str) -> bool:
    """Whether a run's steps with prompt chunks could replay the decode CUDA graphs (--graph-mixed-tokens): the
    engine on a CUDA device, not the whole-config int8 mode (its prompt attention has its own kernels)."""
    whole_config = liteml_config is not None and int8_rules == "all"
    return backend == "engine" and device.startswith("cuda") and not whole_config
