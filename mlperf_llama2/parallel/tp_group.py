"""A tensor-parallel engine: this process is rank 0, workers are child processes, one per extra device.

`start_tp_engine(spec)` starts ranks 1..N-1 (`python -m mlperf_llama2.parallel.tp_worker`), joins them
in a process group over 127.0.0.1 (NCCL on CUDA, gloo on CPU, plus a gloo control group), loads
rank 0's shard and returns an `LLMEngine` whose runner drives the workers in lockstep
(`lockstep.DriverRunner`). `TPGroup.shutdown()` stops the workers and waits for them (bounded). While the engine runs, a watchdog
thread (`TPGroup.watch`) names a worker that exits, and kills the workers when a step outlasts
`STEP_TIMEOUT_S` (a hung rank), so rank 0's step fails with that line instead of waiting on a collective.
Rank r runs on device base+r (`cuda:K` -> `cuda:K+r`); every process gets NVLink multicast off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from mlperf_llama2.engine.config import EngineConfig
from mlperf_llama2.errors import UserError
from mlperf_llama2.parallel.env import apply_dist_env, child_env, device_for_rank
from mlperf_llama2.parallel.lockstep import DriverRunner

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Workers wait in a control broadcast while rank 0 is idle (a quiet Server run): allow long idles.
CONTROL_TIMEOUT = timedelta(hours=24)
# All ranks must meet within this (they meet before loading weights); a dead worker fails the start.
RENDEZVOUS_TIMEOUT = timedelta(minutes=3)
# Collectives of the default group: the first one waits for the slowest rank to load its shard.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
WORKER_EXIT_TIMEOUT_S = 60.0
# A lockstep step takes well under a second; one still running after this means a rank hangs (a first step's
# Triton compilation takes seconds to a minute). Far shorter than the collectives' own timeouts above.
STEP_TIMEOUT_S = 600.0
WATCH_INTERVAL_S = 1.0
# After a failed step, how long to look for the worker whose exit broke the connection
EXIT_GRACE_S = 5.0


@dataclass(frozen=True)
class ShardSpec:
    """Everything a rank needs to build its shard; JSON-serialisable (passed to worker processes)."""

    world: int
    port: int  # rank 0's rendezvous port; start_tp_engine fills it in
    base_device: str
    dtype: str
    engine: dict
    model_path: Optional[str] = None
    random_config: Optional[dict] = None  # benchmarks: a transformers LlamaConfig dict, random weights
    init_std: float = 0.02
    seed: int = 0
    max_model_len: int = 2048
    quant: Optional[dict] = None  # the run's QuantConfig fields (int8 or FP8 Linears, as on one GPU)
    kv_scales: Optional[list] = None  # [2][layers][kv_heads] of the whole model (8-bit KV cache); each rank slices
    rank: int = 0

    def for_rank(self, rank: int) -> "ShardSpec":
        return dataclasses.replace(self, rank=rank)

    @property
    def device(self) -> str:
        return device_for_rank(self.base_device, self.rank)


def master_store() -> "dist.TCPStore":
    """Rank 0's rendezvous store on a loopback port the OS picks (no race for a free port)."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=RENDEZVOUS_TIMEOUT, wait_for_workers=False)


def init_group(spec: ShardSpec, store=None):
    """Join the world; returns the gloo control group (the default group carries the all-reduces)."""
    apply_dist_env()
    device = torch.device(spec.device)
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    if store is None:
        store = dist.TCPStore("127.0.0.1", spec.port, spec.world, is_master=False, timeout=RENDEZVOUS_TIMEOUT)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=spec.rank,
                            world_size=spec.world, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def build_runner(spec: ShardSpec, ctrl_group):
    """(ModelRunner on this rank's shard, eos id, KV blocks agreed by all ranks)."""
    from mlperf_llama2.engine.kv_cache import KVCacheSpec
    from mlperf_llama2.engine.model_runner import ModelRunner

    from mlperf_llama2.quant.config import QuantConfig
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import Parallel, build_model, eos_id, read_config
    from mlperf_llama2.engine.quant_plan import weight_plan

    device, dtype = torch.device(spec.device), _DTYPES[spec.dtype]
    if spec.random_config is not None:
        from transformers import LlamaConfig

        hf_config = LlamaConfig(**spec.random_config)
    else:
        hf_config = read_config(spec.model_path)
    quant = QuantConfig(**spec.quant) if spec.quant is not None else None
    config = EngineConfig(**spec.engine)
    plan = weight_plan(quant, LlamaShape.from_hf_config(hf_config), config) if quant is not None else {}
    model = build_model(hf_config, plan, device, dtype, spec.max_model_len, model_path=spec.model_path,
                        parallel=Parallel(spec.rank, spec.world), init_std=spec.init_std, seed=spec.seed)
    eos = eos_id(hf_config, spec.model_path or "random config")
    kv_spec = KVCacheSpec(config.kv_cache_dtype, None if spec.kv_scales is None else torch.tensor(spec.kv_scales))
    kv_scales = kv_spec.shard(spec.rank, spec.world).scales  # this rank's KV heads
    runner = ModelRunner(model, config, eos, spec.max_model_len, device, dtype, kv_scales)
    blocks = torch.tensor([runner.num_blocks], dtype=torch.int64)
    dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=ctrl_group)
    return runner, eos, int(blocks.item())


class TPGroup:
    """Rank 0's handle on the worker processes."""

    def __init__(self, procs: list[subprocess.Popen], runner: Optional[DriverRunner] = None) -> None:
        self.procs = procs
        self.runner = runner
        self.failure: Optional[str] = None  # the watchdog's account of a dead or hung rank
        self._closing = threading.Event()

    def _dead_worker(self) -> Optional[str]:
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is not None:
                return f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code {proc.returncode}"
        return None

    def diagnose(self) -> Optional[str]:
        """Why a step failed, as far as the workers tell: the watchdog's finding, or a worker that exited."""
        deadline = time.monotonic() + EXIT_GRACE_S
        while self.failure is None and not self._closing.is_set():
            dead = self._dead_worker()
            if dead is not None or time.monotonic() >= deadline:
                return dead
            time.sleep(0.1)
        return self.failure

    def watch(self, step_timeout_s: Optional[float] = None) -> None:
        """Start the watchdog (daemon thread) until `shutdown`; a step may run `step_timeout_s` (STEP_TIMEOUT_S)."""
        timeout = STEP_TIMEOUT_S if step_timeout_s is None else step_timeout_s
        threading.Thread(target=self._watch, args=(timeout,), name="tp-watchdog", daemon=True).start()

    def _watch(self, step_timeout_s: float) -> None:
        while not self._closing.wait(WATCH_INTERVAL_S):
            why = self._dead_worker()
            started = None if self.runner is None else self.runner.step_started
            if why is None and started is not None and time.monotonic() - started > step_timeout_s:
                ranks = ", ".join(f"rank {r} pid {p.pid}" for r, p in enumerate(self.procs, start=1))
                why = (f"tensor-parallel step did not finish within {step_timeout_s:.0f} s: a rank hangs "
                       f"(workers: {ranks}); the workers were killed")
            if why is not None and not self._closing.is_set():
                self.failure = why
                log.error("%s", why)
                for proc in self.procs:  # a survivor would wait in a collective: free rank 0 from it
                    if proc.poll() is None:
                        proc.kill()
                return

    def shutdown(self) -> None:
        """Stop the workers (after the engine loop has stopped), wait for them, leave the group."""
        self._closing.set()
        if self.runner is not None:
            try:
                self.runner.stop_workers()
            except Exception as exc:  # noqa: BLE001 - workers may already be gone; they are reaped below
                log.warning("could not tell the workers to stop: %s", exc)
        for proc in self.procs:
            try:
                proc.wait(timeout=WORKER_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("tensor-parallel worker pid %d did not exit; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self.procs = []
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_workers(spec: ShardSpec) -> list[subprocess.Popen]:
    procs = []
    for rank in range(1, spec.world):
        payload = json.dumps(dataclasses.asdict(spec.for_rank(rank)))
        procs.append(subprocess.Popen([sys.executable, "-m", "mlperf_llama2.parallel.tp_worker", payload],
                                      env=child_env()))
    return procs


def start_tp_engine(spec: ShardSpec):
    """(LLMEngine on rank 0 driving workers in lockstep, TPGroup). Call TPGroup.shutdown() when done."""
    from mlperf_llama2.engine.llm_engine import LLMEngine

    store = master_store()
    spec = dataclasses.replace(spec, rank=0, port=store.port)
    group = TPGroup(spawn_workers(spec))
    try:
        ctrl = init_group(spec, store)
        local, eos, blocks = build_runner(spec, ctrl)
        group.runner = DriverRunner(local, ctrl, blocks, diagnose=group.diagnose)
        group.watch()
        log.info("tensor parallel: %d ranks from %s, %d KV blocks each", spec.world, spec.base_device, blocks)
        engine = LLMEngine(group.runner, EngineConfig(**spec.engine), eos, spec.max_model_len)
    except BaseException as exc:
        # a worker that died while loading (out of memory, a bad shard) breaks rank 0's first collective
        dead = group.diagnose() if isinstance(exc, Exception) and not isinstance(exc, UserError) else None
        group.runner = None
        for proc in group.procs:
            proc.kill()
        group.shutdown()
        if dead is not None:
            raise UserError(f"{dead} while the tensor-parallel group started ({spec.world} ranks from "
                            f"{spec.base_device}); its own error, if it could log one, is above") from exc
        raise
    return engine, group


def tp_spec_from_run_config(cfg, max_model_len: int) -> ShardSpec:
    return ShardSpec(world=cfg.tensor_parallel, port=0, base_device=cfg.device, dtype=cfg.dtype,
                     engine=dataclasses.asdict(cfg.engine), model_path=cfg.model_path, max_model_len=max_model_len,
                     quant=dataclasses.asdict(cfg.quant))
