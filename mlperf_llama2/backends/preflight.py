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


def _local_checkpoint(config: "RunConfig") -> int:
    from mlperf_llama2.backends.hf_loading import check_model_dir, read_model_info

    check_model_dir(config.model_path)
    return read_model_info(config.model_path).vocab_size


def _quantization_plan(config: "RunConfig") -> None:
    """--liteml-config as the reference backend applies it: YAML, quantization backend, calibration file."""
    if config.quant.enabled:
        from mlperf_llama2.quant.setup import plan_quantization

        plan_quantization(config.quant, config.dataset_path, config.device)


def check_reference(config: "RunConfig") -> int:
    vocab_size = _local_checkpoint(config)
    _quantization_plan(config)
    return vocab_size


def check_engine(config: "RunConfig") -> int:
    vocab_size = _local_checkpoint(config)
    if config.quant.enabled:
        from mlperf_llama2.engine.quant_plan import engine_rules

        engine_rules(config.quant)  # int8 Linears only: no calibration, CPU runs the exact integer GEMM
    return vocab_size


def check_api(config: "RunConfig") -> Optional[int]:
    if not config.api.api_servers:
        raise UserError("--vllm/--backend api needs --api-server URL")
    _quantization_plan(config)
    return None


def check_sut_nodes(config: "RunConfig") -> Optional[int]:
    _quantization_plan(config)
    return None
