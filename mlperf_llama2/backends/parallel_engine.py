"""`--backend engine` with `--tensor-parallel N` and `--data-parallel M`: builds the right engine backend.

  * N = M = 1: the plain single-device `EngineBackend`;
  * N > 1: one engine whose ranks are this process (rank 0) and N-1 workers on devices base..base+N-1;
  * M > 1: M single-device engine replicas in this process on devices base..base+M-1, behind a
    `DataParallelBackend`;
  * N > 1 and M > 1: one process holds one torch.distributed world, so each replica is a local SUT
    node process with N ranks on devices base+i*N.. (`local_nodes.py`), reached over 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import logging

from mlperf_llama2.backends.engine import EngineBackend, create_single_device_backend as single_device_backend
from mlperf_llama2.parallel.env import device_for_rank
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)


class TensorParallelEngineBackend(EngineBackend):
    """An engine backend whose runner drives tensor-parallel workers; stopping it stops them too."""

    def __init__(self, engine, group) -> None:
        super().__init__(engine)
        self.group = group

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.group.shutdown()


def check_devices(base_device: str, count: int, flag: str) -> None:
    """`count` devices from `base_device` on must exist (one clear line otherwise)."""
    if base_device == "cpu" or count == 1:
        return
    import torch

    last = device_for_rank(base_device, count - 1)
    if int(last.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"{flag} {count} from {base_device} needs {last}, but only {torch.cuda.device_count()} "
                        f"GPU(s) are visible")


def check_split(model_path: str, tp: int) -> None:
    """The checkpoint's heads, KV heads and MLP columns must split `tp` ways: checked on its config.json before
    any worker or node process starts (one line, not a node's exit code after it)."""
    if tp == 1:
        return
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import read_config
    from mlperf_llama2.parallel.tensor_parallel import check_divisible

    check_divisible(LlamaShape.from_hf_config(read_config(model_path)), tp)


def create_engine_backend(cfg):
    """Registry factory for `--backend engine` (RunConfig in, Backend out)."""
    from mlperf_llama2.engine.llm_engine import MAX_MODEL_LEN

    tp, dp = cfg.tensor_parallel, cfg.data_parallel
    if cfg.model_path is None:
        raise UserError("the engine backend needs --model-path")
    check_split(cfg.model_path, tp)
    if tp > 1 and dp > 1:
        from mlperf_llama2.backends.local_nodes import start_local_nodes

        check_devices(cfg.device, tp * dp, "--tensor-parallel x --data-parallel")
        return start_local_nodes(cfg)
    if tp > 1:
        from mlperf_llama2.parallel.tp_group import start_tp_engine, tp_spec_from_run_config

        check_devices(cfg.device, tp, "--tensor-parallel")
        from mlperf_llama2.backends.engine import kv_cache_for_run

        engine_config, kv_scales = kv_cache_for_run(cfg)
        spec = dataclasses.replace(tp_spec_from_run_config(cfg.replace(engine=engine_config), MAX_MODEL_LEN),
                                   kv_scales=None if kv_scales is None else kv_scales.tolist())
        engine, group = start_tp_engine(spec)
        return TensorParallelEngineBackend(engine, group)
    if dp > 1:
        from mlperf_llama2.backends.data_parallel import DataParallelBackend

        check_devices(cfg.device, dp, "--data-parallel")
        # each replica is what the single-device factory builds (with whatever it applies, e.g. quantization)
        replicas = [single_device_backend(cfg.replace(device=device_for_rank(cfg.device, i), data_parallel=1))
                    for i in range(dp)]
        log.info("data parallel: %d engine replicas from %s", dp, cfg.device)
        return DataParallelBackend(replicas)
    return single_device_backend(cfg)
