"""Each registry entry's pre-flight check: what must hold before its backend is built.

Cheap by contract: small JSON files, flags and config files only, no model loaded, so a bad
run fails in its first second with one line (`UserError`). Each returns the model's vocabulary size
when the checkpoint is here (the dataset's token ids are checked against it), else None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mlperf_llama2.errors import UserError

if TYPE_CHECKING:
    from mlperf_llama2.config import RunConfig


def _local_checkpoint(config: "RunConfig") -> tuple[int, int]:
    """(vocab size, layers) of a checkpoint whose config and weight headers match (`checkpoint.py`)."""
    from mlperf_llama2.backends.hf_loading import check_model_dir, read_model_info
    from mlperf_llama2.checkpoint import check_checkpoint

    check_model_dir(config.model_path)
    vocab_size = read_model_info(config.model_path).vocab_size
    # a buildable Llama config.json, and weights that match it exactly
    return vocab_size, check_checkpoint(config.model_path).dims.num_layers


def _calibration_data(path: str, vocab_size: Optional[int]) -> None:
    """The calibration pickle a run will calibrate on, checked as the dataset is (readable, tok_input, token ids
    inside the model's vocabulary) before the model loads, not after."""
    from mlperf_llama2.data.dataset import load_dataset

    try:
        load_dataset(path, total_sample_count=10**9, vocab_size=vocab_size)
    except UserError as exc:
        raise UserError(f"calibration data (--calibration-path, or the calibration_*.pkl beside the dataset): "
                        f"{exc}") from None


def _quantization_plan(config: "RunConfig", num_layers: Optional[int] = None,
                       vocab_size: Optional[int] = None) -> None:
    """--liteml-config as the reference backend applies it: YAML, quantization backend, calibration pickle,
    --calibration-scales against config and model, and (with the checkpoint here) the rules against the
    model's module names."""
    if config.quant.enabled:
        from mlperf_llama2.quant.setup import plan_quantization

        plan = plan_quantization(config.quant, config.dataset_path, config.device, num_layers,
                                 model_path=config.model_path if num_layers is not None else None)
        if plan is not None and plan.static and plan.scales_path is None and plan.calibration_path is not None:
            _calibration_data(plan.calibration_path, vocab_size)
    elif config.quant.calibration_scales:
        raise UserError("--calibration-scales holds a quantization config's static scales: give its --liteml-config")


def _no_kv_cache_dtype(config: "RunConfig", backend: str) -> None:
    """--kv-cache-dtype is the engine's own KV cache; other backends would silently keep 16 bits."""
    if config.engine.kv_cache_dtype != "auto":
        raise UserError(f"--kv-cache-dtype {config.engine.kv_cache_dtype} is the engine's 8-bit KV cache: "
                        f"use --backend engine (--backend {backend} keeps K and V in the model dtype)")
    _kv_granularity_needs_8bit_cache(config)


def _kv_granularity_needs_8bit_cache(config: "RunConfig") -> None:
    """--kv-scale-granularity picks the scales of --kv-cache-dtype fp8|int8; without one it would be ignored (the
    engine's int8 mode with --kv-cache-dtype auto uses the config's own per-tensor scales whatever it says)."""
    if config.engine.kv_scale_granularity != "auto" and config.engine.kv_cache_dtype == "auto":
        raise UserError(f"--kv-scale-granularity {config.engine.kv_scale_granularity} picks the K/V scales of an "
                        "8-bit KV cache: add --kv-cache-dtype fp8|int8 (with --kv-cache-dtype auto it is ignored)")


def _no_engine_gemm(config: "RunConfig", backend: str) -> None:
    """--engine-gemm picks the engine's 8-bit GEMM; another backend would silently ignore it."""
    if config.engine.gemm != "auto":
        raise UserError(f"--engine-gemm {config.engine.gemm} picks the engine's 8-bit GEMM: use --backend engine "
                        f"(--backend {backend} has none)")


def _engine_gemm(config: "RunConfig") -> None:
    """--engine-gemm other than auto needs 8-bit Linears to act on, and `ws` a Hopper GPU (sm_90)."""
    choice = config.engine.gemm
    if choice == "auto":
        return
    if not (config.quant.fp8 or (config.quant.enabled and config.quant.quant_mode == "int8")):
        raise UserError(f"--engine-gemm {choice} picks the GEMM of 8-bit Linears: the run has none (add "
                        "--quantization fp8, or --liteml-config with --quant-mode int8)")
    if not config.device.startswith("cuda"):
        raise UserError(f"--engine-gemm {choice} chooses among CUDA GEMMs; --device {config.device} runs the exact "
                        "CPU GEMM (use --engine-gemm auto)")
    if choice == "ws":
        import torch

        if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
            raise UserError("--engine-gemm ws is the warp-specialised Hopper GEMM: it needs an sm_90 GPU "
                            "(H100 / H200); use --engine-gemm auto|cublas|triton")


def _no_fp8_accumulation(config: "RunConfig", backend: str) -> None:
    """--fp8-accumulation is the engine's FP8 GEMM; another backend would silently keep its own."""
    if config.engine.fp8_accumulation != "promoted":
        raise UserError(f"--fp8-accumulation {config.engine.fp8_accumulation} is the engine's FP8 GEMM: use "
                        f"--backend engine (--backend {backend} has none)")


def _fp8_accumulation(config: "RunConfig") -> None:
    """--fp8-accumulation fast needs FP8 Linears and the GPU whose accumulation it names."""
    if config.engine.fp8_accumulation == "promoted":
        return
    if not config.quant.fp8:
        raise UserError("--fp8-accumulation fast is the accumulation of FP8 GEMMs: add --quantization fp8")
    if not config.device.startswith("cuda"):
        raise UserError(f"--fp8-accumulation fast is the tensor cores' own accumulation: it needs a CUDA GPU "
                        f"(--device {config.device} runs the exact float32 reference GEMM)")


def _no_graph_mixed(config: "RunConfig", backend: str) -> None:
    """--graph-mixed-tokens is how the engine runs its steps; another backend would ignore it."""
    if config.engine.graph_mixed_tokens:
        raise UserError(f"--graph-mixed-tokens {config.engine.graph_mixed_tokens} is how the engine runs its steps: "
                        f"use --backend engine (--backend {backend} has no CUDA graphs of its own)")


def _no_engine_flags(config: "RunConfig", backend: str, why: Optional[str] = None) -> None:
    """The engine's batching, cache and step flags (those not checked on their own above): another backend has no
    engine, so a value other than the default would be accepted and silently ignored. `why`: the message's reason
    and fix, by default that --backend `backend` has no engine."""
    from mlperf_llama2.engine.config import SCENARIO_MAX_NUM_SEQS, EngineConfig

    engine, default = config.engine, EngineConfig()
    scenario = "Interactive" if config.interactive and config.scenario == "Server" else config.scenario
    # a RunConfig built in code holds the dataclass's 256 rather than the scenario's: either default is not given
    given = [(f"--max-num-seqs {engine.max_num_seqs}",
              engine.max_num_seqs not in (SCENARIO_MAX_NUM_SEQS[scenario], default.max_num_seqs)),
             (f"--max-num-batched-tokens {engine.max_num_batched_tokens}",
              engine.max_num_batched_tokens != default.max_num_batched_tokens),
             (f"--block-size {engine.block_size}", engine.block_size != default.block_size),
             (f"--num-kv-blocks {engine.num_kv_blocks}", engine.num_kv_blocks != default.num_kv_blocks),
             (f"--kv-cache-memory-fraction {engine.kv_cache_memory_fraction}",
              engine.kv_cache_memory_fraction != default.kv_cache_memory_fraction),
             (f"--engine-ops {engine.ops}", engine.ops != default.ops),
             (f"--prefill-align {engine.prefill_align}", engine.prefill_align != default.prefill_align),
             ("--no-cuda-graphs", engine.cuda_graphs != default.cuda_graphs),
             ("--no-overlap-steps", engine.overlap_steps != default.overlap_steps)]
    for flag, on in given:
        if on:
            raise UserError(f"{flag} is a flag of the engine (--backend engine): " + (
                why or f"--backend {backend} has no engine and would ignore it; drop it or use --backend engine"))


def _no_parallel(config: "RunConfig", backend: str) -> None:
    """--tensor-parallel / --data-parallel split the engine over GPUs; another backend would run on one device (or
    the server's own) and record a result that looks like the parallel run asked for."""
    for flag, n in (("--tensor-parallel", config.tensor_parallel), ("--data-parallel", config.data_parallel)):
        if n != 1:
            raise UserError(f"{flag} {n} splits the engine over GPUs (--backend engine): --backend {backend} would "
                            "ignore it and run as one; drop it or use --backend engine")


def _int8_rounding(config: "RunConfig") -> None:
    """int8 mode's Linears (quant/int8_linear.py) round half to even: with --quant-rounding half_away only the other
    rules would follow the flag, and run_info.json would record half_away for all of them."""
    qc = config.quant
    if qc.enabled and qc.quant_mode == "int8" and qc.rounding != "half_even":
        raise UserError(f"--quant-rounding {qc.rounding} with --quant-mode int8: the int8 Linears round half to "
                        "even, so only the other rules would follow the flag; drop it, or use --quant-mode simulate "
                        "(--backend reference)")


def check_reference(config: "RunConfig") -> int:
    _no_parallel(config, "reference")
    _int8_rounding(config)
    _no_kv_cache_dtype(config, "reference")
    _no_engine_gemm(config, "reference")
    _no_fp8_accumulation(config, "reference")
    _no_graph_mixed(config, "reference")
    _no_engine_flags(config, "reference")
    if config.quant.int8_rules != "all":
        raise UserError(f"--int8-rules {config.quant.int8_rules} is the engine's int8 mode (--backend engine); the "
                        "reference backend applies the config as --quant-mode says")
    vocab_size, num_layers = _local_checkpoint(config)
    _quantization_plan(config, num_layers, vocab_size)
    return vocab_size


def _graph_mixed(config: "RunConfig") -> None:
    """--graph-mixed-tokens replays the decode CUDA graphs: without them it would only run slower rows."""
    n = config.engine.graph_mixed_tokens
    if n and not config.device.startswith("cuda"):
        raise UserError(f"--graph-mixed-tokens {n} replays CUDA graphs: --device {config.device} has none "
                        "(leave it at 0)")
    if n and not config.engine.cuda_graphs:
        raise UserError(f"--graph-mixed-tokens {n} replays the decode CUDA graphs, which --no-cuda-graphs turns off")


def _engine_ops(config: "RunConfig") -> None:
    """--engine-ops fused is Triton kernels: off CUDA the first step would fail after the model loaded."""
    if config.engine.ops == "fused" and not config.device.startswith("cuda"):
        raise UserError(f"--engine-ops fused runs Triton kernels on a CUDA GPU: --device {config.device} has none "
                        "(use --engine-ops auto or eager)")


def _kv_cache_memory_fraction(config: "RunConfig") -> None:
    """The fraction sizes the KV cache from free GPU memory; a fixed --num-kv-blocks, or a CPU's fixed default,
    would leave it ignored."""
    from mlperf_llama2.engine.config import CPU_DEFAULT_KV_BLOCKS, EngineConfig

    engine = config.engine
    fraction = engine.kv_cache_memory_fraction
    if fraction == EngineConfig.kv_cache_memory_fraction:
        return
    if engine.num_kv_blocks is not None:
        raise UserError(f"--kv-cache-memory-fraction {fraction} sizes the KV cache from free GPU memory, which "
                        f"--num-kv-blocks {engine.num_kv_blocks} fixes instead: give one of them")
    if not config.device.startswith("cuda"):
        raise UserError(f"--kv-cache-memory-fraction {fraction} is a fraction of free GPU memory: --device "
                        f"{config.device} has a fixed {CPU_DEFAULT_KV_BLOCKS} KV blocks (set --num-kv-blocks)")


def check_engine(config: "RunConfig") -> int:
    _int8_rounding(config)
    _engine_ops(config)
    _kv_cache_memory_fraction(config)
    _kv_granularity_needs_8bit_cache(config)
    _engine_gemm(config)
    _fp8_accumulation(config)
    _graph_mixed(config)
    if config.engine.kv_cache_dtype != "auto" and not config.quant.calibration_scales:
        from mlperf_llama2.engine.config import KV_SCALES_HINT

        raise UserError(f"--kv-cache-dtype {config.engine.kv_cache_dtype} {KV_SCALES_HINT}")
    vocab_size, num_layers = _local_checkpoint(config)
    from mlperf_llama2.engine.loader import read_config

    read_config(config.model_path)  # what the engine cannot build as transformers would (RoPE type, .bin, EOS ids)
    if config.quant.enabled:
        from mlperf_llama2.engine.quant_plan import engine_rules
        from mlperf_llama2.quant.setup import check_rules_for_model

        rules = engine_rules(config.quant)  # int8 on CPU runs the exact integer GEMM
        check_rules_for_model(rules, num_layers)
        whole = config.quant.int8_rules == "all"  # every rule: static ones need scales or calibration data
        if whole and config.engine.kv_cache_dtype == "fp8" and _config_quantizes_kv(rules, num_layers):
            raise UserError("--kv-cache-dtype fp8 with --int8-rules all: the config quantizes K and V to int8 "
                            "itself; use --kv-cache-dtype int8 or auto (the config's own scales)")
        if whole and config.engine.graph_mixed_tokens:
            raise UserError(f"--graph-mixed-tokens {config.engine.graph_mixed_tokens} with --int8-rules all: the "
                            "whole config's prompt attention (the scores' mask quantizer, P over each prompt's "
                            "keys) runs its own prefill kernels, not the decode graphs; leave it at 0 or use "
                            "--int8-rules linear")
        if whole and config.tensor_parallel > 1:
            raise UserError(f"--tensor-parallel {config.tensor_parallel} with --int8-rules all: the config's Q and "
                            "P scales span every head, which tensor parallelism splits over ranks; use one GPU "
                            "per replica (--data-parallel) or --int8-rules linear")
        if config.quant.calibration_scales:
            from mlperf_llama2.quant.calibration_file import check_scales_file, config_id
            from mlperf_llama2.quant.setup import check_scales_cover

            check_scales_file(config.quant.calibration_scales, config_id(config.quant.liteml_config),
                              config.model_path, config.quant)
            if whole:
                check_scales_cover(config.quant.calibration_scales, rules, num_layers)
        elif whole and rules.needs_calibration:
            from mlperf_llama2.backends.engine import quant_for_engine

            calibration_path = quant_for_engine(config).calibration_path
            if calibration_path is None:
                raise UserError(f"{config.quant.liteml_config} has static quantizers and needs calibration data: "
                                "pass --calibration-scales FILE or --calibration-path (the processorca "
                                "calibration_*.pkl)")
            _calibration_data(calibration_path, vocab_size)
    elif config.quant.calibration_scales:
        _kv_only_scales(config)
    if config.engine.kv_cache_dtype != "auto":
        from mlperf_llama2.quant.calibration_file import kv_granularity

        kv_granularity(config.quant.calibration_scales, config.engine.kv_scale_granularity, config.quant.enabled)
    return vocab_size


def check_engine_capacity(config: "RunConfig", dataset) -> None:
    """An explicit --num-kv-blocks, or the fixed cache of an engine off CUDA, must hold the longest prompt of the
    run plus --max-new-tokens: the engine would refuse that sample after the model loads (a cache sized from free
    GPU memory is checked at build time)."""
    from mlperf_llama2.engine.config import CPU_DEFAULT_KV_BLOCKS

    blocks = config.engine.num_kv_blocks
    given = blocks is not None
    if not given and not config.device.startswith("cuda"):
        blocks = CPU_DEFAULT_KV_BLOCKS  # fixed off CUDA: known now, not only once the model is loaded
    if blocks is None or not dataset.prompts:
        return
    from mlperf_llama2.engine.block_manager import blocks_needed

    longest = max(len(p) for p in dataset.prompts)
    need = longest + config.max_new_tokens
    if blocks_needed(need, config.engine.block_size) > blocks:
        flag = f"--num-kv-blocks {blocks}" if given else \
            f"the {blocks} KV blocks of --device {config.device} (no --num-kv-blocks)"
        raise UserError(f"{flag} (x --block-size {config.engine.block_size} = "
                        f"{blocks * config.engine.block_size} KV slots) cannot hold one sequence of this run: the "
                        f"longest prompt ({longest} tokens) + --max-new-tokens {config.max_new_tokens} = {need}")


def _config_quantizes_kv(rules, num_layers: int) -> bool:
    """Whether some layer's K or V (quantizer_in2 of matmul_qkt / matmul_pv) has a rule."""
    return any(rule is not None and rule.quantizer("quantizer_in2") is not None
               for i in range(num_layers) for slot in ("matmul_qkt", "matmul_pv")
               for rule in [rules.match("Matmul", f"model.layers.{i}.self_attn.{slot}")])


def _kv_only_scales(config: "RunConfig") -> None:
    """--calibration-scales without --liteml-config: an engine K/V calibration of this model (8-bit KV cache)."""
    from mlperf_llama2.quant.calibration_file import check_scales_file, read_metadata

    path = config.quant.calibration_scales
    if config.engine.kv_cache_dtype == "auto":
        raise UserError("--calibration-scales without --liteml-config holds K/V scales for an 8-bit KV cache: "
                        "add --kv-cache-dtype fp8|int8, or give the file's --liteml-config")
    config_id = read_metadata(path).get("config_id") or ""
    if config_id.startswith("sha256:"):
        raise UserError(f"--calibration-scales {path}: made for a LiteML config; give that --liteml-config too")
    check_scales_file(path, config_id, config.model_path)


def _no_local_quantization(config: "RunConfig", where: str, fix: str) -> None:
    """Quantization flags act on a model this process loads; with the model elsewhere they would only label the
    run (run_info.json and the summary would name a quantization nobody applied)."""
    qc = config.quant
    given = [flag for flag, on in (("--quantization", qc.quantization is not None),
                                   ("--liteml-config", qc.liteml_config is not None),
                                   ("--calibration-scales", qc.calibration_scales is not None),
                                   ("--quant-mode", qc.quant_mode != "simulate")) if on]
    if given:
        raise UserError(f"{given[0]}: {where} generates, so this process would not apply it and the run would "
                        f"only be labelled quantized; {fix}")


def check_api(config: "RunConfig") -> Optional[int]:
    if not config.api.api_servers:
        raise UserError("--vllm/--backend api needs --api-server URL")
    _no_local_quantization(config, "the API server", "quantize the model the server serves and drop the flag")
    _no_parallel(config, "api")
    _no_kv_cache_dtype(config, "api")
    _no_engine_gemm(config, "api")
    _no_fp8_accumulation(config, "api")
    _no_graph_mixed(config, "api")
    _no_engine_flags(config, "api")
    return None


def check_sut_nodes(config: "RunConfig") -> Optional[int]:
    _no_local_quantization(config, "each SUT node", "give it to the nodes (python -m mlperf_llama2.sut_node)")
    _no_engine_flags(config, "nodes", "each SUT node builds its own engine, so this process would ignore it; give it "
                     "to the nodes (python -m mlperf_llama2.sut_node)")
    engine = config.engine
    for flag, value, default in (("--kv-cache-dtype", engine.kv_cache_dtype, "auto"),
                                 ("--fp8-accumulation", engine.fp8_accumulation, "promoted"),
                                 ("--engine-gemm", engine.gemm, "auto")):
        if value != default:  # run_info.json and the summary would record this process's value, not the nodes'
            raise UserError(f"{flag} {value}: each SUT node builds its own engine, so this process would only record "
                            "it; give it to the nodes (python -m mlperf_llama2.sut_node)")
    return None
