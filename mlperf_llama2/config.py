"""The run configuration: frozen dataclasses that own their command-line flags.

Each dataclass declares its flags (`add_cli_args`) and builds itself from the parsed namespace
(`from_cli_args`), so flags and configuration cannot drift. Nothing below `main.py` sees an argparse
namespace: it receives a `RunConfig`. Flag names and meanings follow the reference (SPEC §1); our
decided defaults are documented in each help string.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from mlperf_llama2 import constants
from mlperf_llama2.errors import UserError

SCENARIOS = ("Offline", "Server")
DTYPES = ("float16", "bfloat16", "float32")
BACKENDS = ("reference", "engine", "api")
REFERENCE_MODEL_NAME = "meta-llama/Llama-2-70b-chat-hf"
KV_CACHE_DTYPES = ("auto", "fp8", "int8")  # auto: the model dtype (engine/kv_cache.py)
KV_SCALES_HINT = ("needs static K/V scales [2, layers, kv_heads] calibrated on the calibration set; no scales "
                  "were given (until the calibration file is wired in, pass kv_scales to LLMEngine.from_pretrained), "
                  "or use --kv-cache-dtype auto")


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
    kv_cache_dtype: str = "auto"  # auto | fp8 | int8 (8-bit: static scales, engine/kv_cache.py)

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
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                            f"got {self.kv_cache_dtype!r}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("engine (--backend engine)")
        g.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                       help="most sequences in flight at once (default %(default)s)")
        g.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                       help="token budget of one engine step, prefill chunks plus decodes (default %(default)s)")
        g.add_argument("--block-size", type=int, default=EngineConfig.block_size,
                       help="tokens per KV-cache block (default %(default)s)")
        g.add_argument("--kv-cache-memory-fraction", type=float, default=EngineConfig.kv_cache_memory_fraction,
                       help="fraction of free GPU memory after loading the model given to the KV cache "
                            "(default %(default)s)")
        g.add_argument("--num-kv-blocks", type=int, default=None,
                       help="fixed number of KV-cache blocks (overrides the memory fraction; CPU default 512)")
        g.add_argument("--no-cuda-graphs", action="store_true",
                       help="run decode eagerly instead of replaying CUDA graphs")
        g.add_argument("--no-overlap-steps", action="store_true",
                       help="wait for each step's tokens before scheduling the next (default on CUDA: the next "
                            "step is queued on the GPU while the host reads the last one's tokens)")
        g.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default=EngineConfig.kv_cache_dtype,
                       help="KV-cache storage: auto = the model dtype; fp8 (E4M3) or int8 store K and V in 8 bits "
                            "with static per-layer, per-KV-head scales (half the KV memory and reads) "
                            "(default %(default)s)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "EngineConfig":
        return cls(
            max_num_seqs=ns.max_num_seqs,
            max_num_batched_tokens=ns.max_num_batched_tokens,
            block_size=ns.block_size,
            kv_cache_memory_fraction=ns.kv_cache_memory_fraction,
            num_kv_blocks=ns.num_kv_blocks,
            cuda_graphs=not ns.no_cuda_graphs,
            overlap_steps=False if ns.no_overlap_steps else None,
            kv_cache_dtype=ns.kv_cache_dtype,
        )


@dataclass(frozen=True)
class QuantConfig:
    """Quantization: the fork's `--liteml-config` and how it is honoured (QUANT.md)."""

    liteml_config: Optional[str] = None
    quant_backend: str = "auto"  # auto | liteml | open
    quant_mode: str = "simulate"  # simulate | int8
    calibration_path: Optional[str] = None
    # Open-backend numerics public material leaves open (docs/quantization.md).
    momentum: float = 0.01
    rounding: str = "half_even"  # half_even | half_away
    narrow_range: bool = True
    batch_shared_scale: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.momentum <= 1.0:
            raise UserError(f"--quant-momentum must be in (0, 1], got {self.momentum}")
        if self.liteml_config is not None and not os.path.isfile(self.liteml_config):
            raise UserError(f"--liteml-config: file not found: {self.liteml_config}")
        if self.calibration_path is not None and not os.path.isfile(self.calibration_path):
            raise UserError(f"--calibration-path: file not found: {self.calibration_path}")

    @property
    def enabled(self) -> bool:
        return self.liteml_config is not None

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("quantization")
        g.add_argument("--liteml-config", default=None,
                       help="quantization YAML (liteml_configs/*.yaml); off when not given")
        g.add_argument("--quant-backend", choices=("auto", "liteml", "open"), default="auto",
                       help="auto: the real LiteML when installed, else our open backend (logged); "
                            "liteml: require LiteML; open: our backend (default %(default)s)")
        g.add_argument("--quant-mode", choices=("simulate", "int8"), default="simulate",
                       help="open backend: simulate = exact fake-quant at every rule (CPU/GPU); "
                            "int8 = real int8 weights and torch._int_mm Linears (CUDA) (default %(default)s)")
        g.add_argument("--calibration-path", default=None,
                       help="calibration pickle for static quantizers (default: the processorca "
                            "calibration_*.pkl beside the dataset)")
        g.add_argument("--quant-momentum", type=float, default=QuantConfig.momentum,
                       help="open backend: MovingAverage observer update weight (default %(default)s)")
        g.add_argument("--quant-rounding", choices=("half_even", "half_away"), default=QuantConfig.rounding,
                       help="open backend: rounding of x/scale (default %(default)s)")
        g.add_argument("--quant-full-range", action="store_true",
                       help="open backend: symmetric int8 in [-128, 127] instead of [-127, 127]")
        g.add_argument("--quant-per-sample-scale", action="store_true",
                       help="open backend: a per-token scale whose dims list the batch axis is computed per "
                            "sample instead of across the batch")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "QuantConfig":
        return cls(
            liteml_config=ns.liteml_config,
            quant_backend=ns.quant_backend,
            quant_mode=ns.quant_mode,
            calibration_path=ns.calibration_path,
            momentum=ns.quant_momentum,
            rounding=ns.quant_rounding,
            narrow_range=not ns.quant_full_range,
            batch_shared_scale=not ns.quant_per_sample_scale,
        )


@dataclass(frozen=True)
class ApiConfig:
    """The reference's OpenAI-API client path (`--vllm` / `--backend api`)."""

    api_servers: tuple[str, ...] = ()
    api_model_name: str = REFERENCE_MODEL_NAME
    api_text_mode: bool = False
    api_concurrency: int = 64
    api_timeout_s: float = 600.0
    api_retries: int = 3
    api_batch_size: int = 8
    api_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        for url in self.api_servers:
            if not url.startswith(("http://", "https://")):
                raise UserError(f"--api-server {url!r}: expected a base URL like http://127.0.0.1:8000")
        if self.api_concurrency < 1:
            raise UserError(f"--api-concurrency must be >= 1, got {self.api_concurrency}")
        if self.api_batch_size < 1:
            raise UserError(f"--api-batch-size must be >= 1, got {self.api_batch_size}")
        if not self.api_timeout_s > 0:
            raise UserError(f"--api-timeout must be > 0 seconds, got {self.api_timeout_s}")
        if self.api_retries < 0:
            raise UserError(f"--api-retries must be >= 0, got {self.api_retries}")
        if self.api_backoff_s < 0:
            raise UserError(f"--api-backoff must be >= 0 seconds, got {self.api_backoff_s}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("OpenAI-compatible server (--vllm / --backend api)")
        g.add_argument("--vllm", action="store_true",
                       help="send prompts to an OpenAI-compatible server instead of a local model "
                            "(alias of --backend api)")
        g.add_argument("--api-server", action="append", default=None, metavar="URL",
                       help="server base URL, e.g. http://127.0.0.1:8000; repeat or comma-separate for "
                            "several servers (load is spread)")
        g.add_argument("--api-model-name", default=REFERENCE_MODEL_NAME,
                       help="model name the server serves, checked against /v1/models (default %(default)s)")
        g.add_argument("--api-text-mode", action="store_true",
                       help="send text prompts and re-tokenize outputs, for servers that take no token ids "
                            "(loses fidelity; logged)")
        g.add_argument("--api-concurrency", type=int, default=ApiConfig.api_concurrency,
                       help="most requests in flight per server (default %(default)s)")
        g.add_argument("--api-timeout", type=float, default=ApiConfig.api_timeout_s,
                       help="seconds a request may wait for the server (each read of a stream) before it "
                            "is retried (default %(default)s)")
        g.add_argument("--api-retries", type=int, default=ApiConfig.api_retries,
                       help="retries with backoff on 5xx, timeouts and connection errors before the request "
                            "fails (default %(default)s)")
        g.add_argument("--api-batch-size", type=int, default=ApiConfig.api_batch_size,
                       help="Offline, token-id mode: prompts per request (default %(default)s)")
        g.add_argument("--api-backoff", type=float, default=ApiConfig.api_backoff_s,
                       help="first retry delay in seconds, doubled each retry (default %(default)s)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "ApiConfig":
        servers: list[str] = []
        for item in ns.api_server or ():
            servers.extend(s.strip().rstrip("/") for s in item.split(",") if s.strip())
        return cls(
            api_servers=tuple(servers),
            api_model_name=ns.api_model_name,
            api_text_mode=ns.api_text_mode,
            api_concurrency=ns.api_concurrency,
            api_timeout_s=ns.api_timeout,
            api_retries=ns.api_retries,
            api_batch_size=ns.api_batch_size,
            api_backoff_s=ns.api_backoff,
        )


@dataclass(frozen=True)
class DistConfig:
    """Multi-node runs: this process is LoadGen's node and SUT nodes generate (docs/distributed.md)."""

    sut_nodes: tuple[str, ...] = ()
    node_concurrency: int = 256
    node_timeout_s: float = 3600.0
    node_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.node_concurrency < 1:
            raise UserError(f"--node-concurrency must be >= 1, got {self.node_concurrency}")
        if self.node_timeout_s <= 0 or self.node_wait_s < 0:
            raise UserError("--node-timeout must be > 0 and --node-wait >= 0")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("multi-node (LoadGen over the network)")
        g.add_argument("--sut-nodes", action="append", default=None, metavar="URL",
                       help="run as LoadGen's node: send samples to SUT nodes (python -m mlperf_llama2.sut_node) "
                            "at these URLs, e.g. http://10.0.0.2:8000; repeat or comma-separate (load is spread)")
        g.add_argument("--node-concurrency", type=int, default=DistConfig.node_concurrency,
                       help="most requests in flight per SUT node (default %(default)s)")
        g.add_argument("--node-timeout", type=float, default=DistConfig.node_timeout_s,
                       help="seconds one node request may take before its sample fails (default %(default)s)")
        g.add_argument("--node-wait", type=float, default=DistConfig.node_wait_s,
                       help="seconds to wait for SUT nodes still starting (default %(default)s)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "DistConfig":
        nodes: list[str] = []
        for item in ns.sut_nodes or ():
            nodes.extend(s.strip().rstrip("/") for s in item.split(",") if s.strip())
        return cls(sut_nodes=tuple(nodes), node_concurrency=ns.node_concurrency, node_timeout_s=ns.node_timeout,
                   node_wait_s=ns.node_wait)


@dataclass(frozen=True)
class RunConfig:
    """Everything one `main.py` run needs, checked once at construction."""

    scenario: str = "Offline"
    model_path: Optional[str] = None
    dataset_path: Optional[str] = None
    accuracy: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    audit_conf: str = "audit.config"
    user_conf: str = "user.conf"
    total_sample_count: int = constants.TOTAL_SAMPLE_COUNT
    batch_size: int = 1
    output_log_dir: str = "output-logs"
    enable_log_trace: bool = False
    num_workers: int = 1
    lg_model_name: str = constants.LG_MODEL_NAME
    backend: str = "reference"
    max_new_tokens: int = constants.MAX_NEW_TOKENS
    save_outputs: Optional[str] = None
    progress: bool = True
    verbose: bool = False
    tensor_parallel: int = 1
    data_parallel: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise UserError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.lg_model_name not in constants.LG_MODEL_NAMES:
            raise UserError(
                f"--lg-model-name must be one of {', '.join(constants.LG_MODEL_NAMES)}, got {self.lg_model_name!r}"
            )
        for name in ("total_sample_count", "batch_size", "num_workers", "tensor_parallel", "data_parallel"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.max_new_tokens <= constants.MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be in 1..{constants.MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if self.engine.kv_cache_dtype != "auto":
            if self.backend != "engine":
                raise UserError(f"--kv-cache-dtype {self.engine.kv_cache_dtype} applies to --backend engine only")
            raise UserError(f"--kv-cache-dtype {self.engine.kv_cache_dtype} {KV_SCALES_HINT}")
        if self.dist.sut_nodes and (self.backend == "api" or self.tensor_parallel > 1 or self.data_parallel > 1):
            raise UserError("--sut-nodes: the SUT nodes generate; give --tensor-parallel/--data-parallel to the nodes "
                            "(python -m mlperf_llama2.sut_node), and do not combine with --vllm/--backend api")
        if self.backend == "api" and not self.api.api_servers:
            raise UserError("--vllm/--backend api needs --api-server URL")

    @property
    def interactive(self) -> bool:
        return self.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE

    @property
    def output_cap_applied(self) -> bool:
        """True when outputs are capped below the closed-division 1024 (demo runs only; not a valid run)."""
        return self.max_new_tokens < constants.MAX_NEW_TOKENS

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--scenario", choices=SCENARIOS, default="Offline", help="LoadGen scenario (default %(default)s)")
        p.add_argument("--model-path", default=None,
                       help="local Hugging Face checkpoint directory with config.json, weights and "
                            "tokenizer (never fetched from a hub); default: the demo model prepared by "
                            "`make accuracy` (docs/demo.md)")
        p.add_argument("--dataset-path", default=None,
                       help="processed OpenOrca pickle (.pkl or .pkl.gz) from processorca.py; default: the "
                            "demo dataset prepared by `make accuracy`")
        p.add_argument("--accuracy", action="store_true", help="AccuracyOnly mode (default: PerformanceOnly)")
        p.add_argument("--dtype", choices=DTYPES, default=None,
                       help="model dtype (default: float16 on CUDA, float32 on CPU)")
        p.add_argument("--device", default=None,
                       help="cpu, cuda:N (one GPU) or cuda (reference backend: layers spread over every visible GPU, "
                            "like the reference's device_map='auto'; engine: the current GPU) "
                            "(default: cuda:0 when CUDA is available, else cpu)")
        p.add_argument("--audit-conf", default="audit.config",
                       help="LoadGen audit config, applied only if the file exists (default %(default)s)")
        p.add_argument("--user-conf", default="user.conf", help="LoadGen user config (default %(default)s)")
        p.add_argument("--total-sample-count", type=int, default=constants.TOTAL_SAMPLE_COUNT,
                       help="samples of the dataset to use, capped by its rows (default %(default)s)")
        p.add_argument("--batch-size", type=int, default=1,
                       help="reference backend: batch per worker (default %(default)s)")
        p.add_argument("--output-log-dir", default="output-logs",
                       help="LoadGen log directory, created if missing (default %(default)s)")
        p.add_argument("--enable-log-trace", action="store_true", help="write LoadGen's trace log")
        p.add_argument("--num-workers", type=int, default=1,
                       help="reference backend: worker threads (default %(default)s)")
        p.add_argument("--lg-model-name", choices=constants.LG_MODEL_NAMES, default=constants.LG_MODEL_NAME,
                       help="LoadGen model name; llama2-70b-interactive with --scenario Server is the "
                            "Interactive setting (default %(default)s)")
        p.add_argument("--backend", choices=BACKENDS, default=None,
                       help="generation backend: reference (transformers generate), engine (continuous "
                            "batching), api (OpenAI-compatible server) (default: engine on CUDA, where its "
                            "fidelity tests pass and it runs 28x faster; reference on CPU and for "
                            "--liteml-config in simulate mode)")
        p.add_argument("--max-new-tokens", type=int, default=constants.MAX_NEW_TOKENS,
                       help="cap on generated tokens; below 1024 the run is NOT a valid MLPerf run and the "
                            "summary says so (demo only; default %(default)s)")
        p.add_argument("--save-outputs", default=None, metavar="FILE",
                       help="write every sample's output token ids to one JSON file at the end")
        p.add_argument("--no-progress", action="store_true", help="no live progress bar on stderr")
        p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks on errors")
        p.add_argument("--tensor-parallel", type=int, default=1,
                       help="engine: GPUs per replica, splitting heads and MLP columns (default %(default)s)")
        p.add_argument("--data-parallel", type=int, default=1,
                       help="engine: independent replicas behind one SUT (default %(default)s)")
        EngineConfig.add_cli_args(parser)
        QuantConfig.add_cli_args(parser)
        ApiConfig.add_cli_args(parser)
        DistConfig.add_cli_args(parser)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "RunConfig":
        api = ApiConfig.from_cli_args(ns)
        backend = ns.backend
        if ns.vllm:
            if backend not in (None, "api"):
                raise UserError(f"--vllm conflicts with --backend {backend}")
            backend = "api"
        device = resolve_device(ns.device) if backend != "api" else (ns.device or "cpu")
        dtype = ns.dtype or ("float16" if device.startswith("cuda") else "float32")
        return cls(
            scenario=ns.scenario,
            model_path=ns.model_path,
            dataset_path=ns.dataset_path,
            accuracy=ns.accuracy,
            dtype=dtype,
            device=device,
            audit_conf=ns.audit_conf,
            user_conf=ns.user_conf,
            total_sample_count=ns.total_sample_count,
            batch_size=ns.batch_size,
            output_log_dir=ns.output_log_dir,
            enable_log_trace=ns.enable_log_trace,
            num_workers=ns.num_workers,
            lg_model_name=ns.lg_model_name,
            backend=backend or default_backend(device, ns.liteml_config, ns.quant_mode),
            max_new_tokens=ns.max_new_tokens,
            save_outputs=ns.save_outputs,
            progress=not ns.no_progress,
            verbose=ns.verbose,
            tensor_parallel=ns.tensor_parallel,
            data_parallel=ns.data_parallel,
            engine=EngineConfig.from_cli_args(ns),
            quant=QuantConfig.from_cli_args(ns),
            api=api,
            dist=DistConfig.from_cli_args(ns),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="MLPerf Inference llama2-70b harness: runs LoadGen (Offline or Server) against a "
                    "system under test that generates greedily.",
    )
    RunConfig.add_cli_args(parser)
    return parser


def default_backend(device: str, liteml_config: Optional[str], quant_mode: str) -> str:
    """engine on CUDA (fidelity-tested, far faster), except where only the reference backend can honour the
    request: a quantization config in simulate mode (the engine runs int8 mode only); reference on CPU."""
    if not device.startswith("cuda"):
        return "reference"
    if liteml_config is not None and quant_mode != "int8":
        return "reference"
    return "engine"


def resolve_device(requested: Optional[str]) -> str:
    """cpu, cuda or cuda:N; default cuda:0 when CUDA is available, else cpu. Errors are one line."""
    if requested == "cpu":
        return "cpu"
    import torch  # deferred: --help and --device cpu must not pay for torch before the inputs are checked

    if requested is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
        if requested == "cuda":
            return "cuda"  # every visible GPU: the reference backend spreads layers (device_map="auto")
        index = requested.split(":", 1)[1]
        if not str(index).isdigit():
            raise UserError(f"--device {requested}: expected cuda:N with N a GPU index")
        if int(index) >= torch.cuda.device_count():
            raise UserError(
                f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..cuda:"
                f"{torch.cuda.device_count() - 1}"
            )
        return f"cuda:{int(index)}"
    raise UserError(f"--device must be cpu, cuda or cuda:N, got {requested!r}")
