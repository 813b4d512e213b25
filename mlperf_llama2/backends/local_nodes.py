"""Data parallel over tensor-parallel replicas on one host: M local SUT-node processes behind one Backend.

`--data-parallel M --tensor-parallel N` cannot live in one process (one torch.distributed world per
process), so replica i runs as a SUT node on 127.0.0.1 (`python -m mlperf_llama2.sut_node`) with
`--tensor-parallel N --device base+i*N`, and this process talks to them through `NodeBackend` (least
outstanding tokens, first tokens streamed in Server). The nodes get this run's model flags
(`node_argv`); `stop()` stops the client, then each node (SIGTERM, bounded wait, SIGKILL).
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
import time

from mlperf_llama2.parallel.env import child_env, device_for_rank
from mlperf_llama2.backends.nodes import NodeBackend
from mlperf_llama2.errors import EXIT_USER_ERROR, UserError

log = logging.getLogger(__name__)

NODE_START_TIMEOUT_S = 1800.0  # a 70B shard per rank loads in minutes
NODE_STOP_TIMEOUT_S = 60.0
# config field -> flag taking its value; and boolean fields whose flag is given when the field is False
ENGINE_FLAGS = {"max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-num-batched-tokens",
                "block_size": "--block-size", "kv_cache_memory_fraction": "--kv-cache-memory-fraction",
                "num_kv_blocks": "--num-kv-blocks", "ops": "--engine-ops", "kv_cache_dtype": "--kv-cache-dtype",
                "kv_scale_granularity": "--kv-scale-granularity", "gemm": "--engine-gemm",
                "fp8_accumulation": "--fp8-accumulation", "graph_mixed_tokens": "--graph-mixed-tokens",
                "prefill_align": "--prefill-align"}
ENGINE_SWITCHES = {"cuda_graphs": "--no-cuda-graphs", "overlap_steps": "--no-overlap-steps"}
# fields no main.py flag sets (the benchmark tools' experiments), so a node always runs them at their defaults
ENGINE_TOOL_ONLY = {"pdl", "flat_row_groups"}
QUANT_FLAGS = {"liteml_config": "--liteml-config", "quantization": "--quantization", "quant_backend": "--quant-backend",
               "quant_mode": "--quant-mode", "calibration_path": "--calibration-path",
               "calibration_scales": "--calibration-scales",
               "momentum": "--quant-momentum", "rounding": "--quant-rounding", "int8_rules": "--int8-rules"}
QUANT_SWITCHES = {"narrow_range": "--quant-full-range", "batch_shared_scale": "--quant-per-sample-scale"}


def node_argv(cfg, device: str) -> list[str]:
    """The node flags that rebuild this run's replica: model, dtype, TP size, engine and quantization knobs."""
    argv = ["--model-path", cfg.model_path, "--backend", "engine", "--device", device, "--dtype", cfg.dtype,
            "--tensor-parallel", str(cfg.tensor_parallel), "--scenario", cfg.scenario]
    for sub, flags, switches in ((cfg.engine, ENGINE_FLAGS, ENGINE_SWITCHES), (cfg.quant, QUANT_FLAGS, QUANT_SWITCHES)):
        for name, flag in flags.items():
            value = getattr(sub, name)
            if value is not None:
                argv += [flag, str(value)]
        argv += [flag for name, flag in switches.items() if getattr(sub, name) is False]
    if cfg.verbose:
        argv.append("--verbose")
    return argv


def _wait_ready(proc: subprocess.Popen, timeout_s: float, name: str = "local SUT node") -> str:
    """The URL a node prints once its model is loaded. A node that exits 2 refused its flags (its one-line error is
    above): UserError naming it; another exit, or no answer within `timeout_s`: RuntimeError."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                what = f"{name} (pid {proc.pid}) exited with code {proc.returncode} before it was ready"
                if proc.returncode == EXIT_USER_ERROR:
                    raise UserError(f"{what}: it refused this run's flags (its error is the line above)") from None
                raise RuntimeError(f"{what} (see its log above)") from None
            continue
        if line.startswith("SUT node ready on "):
            return line.split()[-1]
    raise RuntimeError(f"{name} (pid {proc.pid}) not ready after {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.error("local SUT node pid %d did not stop; killing it", proc.pid)
        proc.kill()
        return proc.wait()


class LocalNodesBackend(NodeBackend):
    """`NodeBackend` over node processes it started itself; stopping it stops them."""

    def __init__(self, procs: list[subprocess.Popen], urls: list[str], *, stream: bool) -> None:
        super().__init__(urls, stream=stream, wait_s=10.0)
        self.procs = procs

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            codes = [stop_process(p) for p in self.procs]
            log.info("local SUT nodes stopped (exit codes %s)", codes)


def start_local_nodes(cfg) -> LocalNodesBackend:
    """Start `cfg.data_parallel` nodes of `cfg.tensor_parallel` devices each and connect to them."""
    procs: list[subprocess.Popen] = []
    names: list[str] = []
    try:
        for i in range(cfg.data_parallel):
            device = device_for_rank(cfg.device, i * cfg.tensor_parallel)
            argv = [sys.executable, "-m", "mlperf_llama2.sut_node", "--host", "127.0.0.1", "--port", "0",
                    "--node-name", f"replica{i}", *node_argv(cfg, device)]
            procs.append(subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, text=True))
            names.append(f"local SUT node replica{i} (--tensor-parallel {cfg.tensor_parallel} from {device})")
        urls = [_wait_ready(p, NODE_START_TIMEOUT_S, name) for p, name in zip(procs, names)]
        log.info("data parallel: %d local nodes of tensor parallel %d: %s", len(urls), cfg.tensor_parallel,
                 ", ".join(urls))
        return LocalNodesBackend(procs, urls, stream=cfg.scenario == "Server")
    except BaseException:
        for proc in procs:
            stop_process(proc, timeout_s=10.0)
        raise
