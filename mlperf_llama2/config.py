"""The run configuration: frozen dataclasses that own their command-line flags.

Each dataclass declares its flags (`add_cli_args`) and builds itself from the parsed namespace
(`from_cli_args`), so flags and configuration cannot drift. Nothing below `main.py` sees an argparse
namespace: it receives a `RunConfig`. Flag names and meanings follow the reference (SPEC §1); our
decided defaults are documented in each help string.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from mlperf_llama2 import constants
from mlperf_llama2.backends import registry
from mlperf_llama2.engine.config import (  # noqa: F401 - the engine's knobs (no cycle)
    KV_CACHE_DTYPES, EngineConfig, mixed_steps_can_use_graphs)
from mlperf_llama2.quant.config import QUANTIZATIONS, QuantConfig  # noqa: F401 - likewise, with quant
from mlperf_llama2.errors import UserError

SCENARIOS = ("Offline", "Server")
INTERACTIVE = "Interactive"  # --scenario Interactive = Server with the llama2-70b-interactive settings
DTYPES = ("float16", "bfloat16", "float32")
REFERENCE_MODEL_NAME = "meta-llama/Llama-2-70b-chat-hf"

# LoadGen reads this file from the working directory when it exists (compliance tests copy theirs there)
DEFAULT_AUDIT_CONF = "audit.config"
# LoadGen refuses a response of n_tokens <= 1 (its TPOT needs a second token): the SUT fails such a sample
MIN_RESPONSE_TOKENS = 2


API_FLAGS = {"api_servers": "--api-server", "api_model_name": "--api-model-name", "api_text_mode": "--api-text-mode",
             "api_concurrency": "--api-concurrency", "api_timeout_s": "--api-timeout", "api_retries": "--api-retries",
             "api_batch_size": "--api-batch-size", "api_backoff_s": "--api-backoff"}


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
        from mlperf_llama2.backends.api_client import Server

        for url in self.api_servers:
            Server.from_url(url)  # a UserError naming the URL when it is not http(s)://HOST[:PORT][/PATH]
        if self.api_concurrency < 1:
            raise UserError(f"--api-concurrency must be >= 1, got {self.api_concurrency}")
        if self.api_batch_size < 1:
            raise UserError(f"--api-batch-size must be >= 1, got {self.api_batch_size}")
        if not (self.api_timeout_s > 0 and math.isfinite(self.api_timeout_s)):
            raise UserError(f"--api-timeout must be a finite number of seconds > 0, got {self.api_timeout_s}")
        if self.api_retries < 0:
            raise UserError(f"--api-retries must be >= 0, got {self.api_retries}")
        if not (self.api_backoff_s >= 0 and math.isfinite(self.api_backoff_s)):
            raise UserError(f"--api-backoff must be a finite number of seconds >= 0, got {self.api_backoff_s}")

    def given_flags(self) -> list[str]:
        """The --api-* flags whose values differ from their defaults (each acts only with --vllm/--backend api)."""
        default = ApiConfig()
        return [flag for name, flag in API_FLAGS.items() if getattr(self, name) != getattr(default, name)]

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
                       help="retries with backoff on 5xx, 408, 429, timeouts and connection errors before the request "
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
        from mlperf_llama2.backends.nodes import NodeAddress

        for url in self.sut_nodes:
            NodeAddress.parse(url)  # a UserError naming the URL when it is not http://HOST:PORT
        if self.node_concurrency < 1:
            raise UserError(f"--node-concurrency must be >= 1, got {self.node_concurrency}")
        if not (self.node_timeout_s > 0 and math.isfinite(self.node_timeout_s)):
            raise UserError(f"--node-timeout must be a finite number of seconds > 0, got {self.node_timeout_s}")
        if not (self.node_wait_s >= 0 and math.isfinite(self.node_wait_s)):
            raise UserError(f"--node-wait must be a finite number of seconds >= 0, got {self.node_wait_s}")

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
    audit_conf: str = DEFAULT_AUDIT_CONF
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
    overwrite: bool = False
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
        if self.backend not in registry.choices():
            raise UserError(f"--backend must be one of {', '.join(registry.choices())}, got {self.backend!r}")
        if self.lg_model_name not in constants.LG_MODEL_NAMES:
            raise UserError(
                f"--lg-model-name must be one of {', '.join(constants.LG_MODEL_NAMES)}, got {self.lg_model_name!r}"
            )
        if self.interactive and self.scenario != "Server":
            # LoadGen would run Offline under the Interactive model name (its min_query_count 100, not 24576)
            # and the engine would take its Interactive tuning: a run that is neither Offline nor Interactive
            raise UserError(f"--lg-model-name {self.lg_model_name} names the Interactive scenario, a Server setting; "
                            f"it does not combine with --scenario {self.scenario}: use --scenario Interactive, or "
                            f"drop --lg-model-name for {self.scenario}")
        for name in ("total_sample_count", "batch_size", "num_workers", "tensor_parallel", "data_parallel"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not MIN_RESPONSE_TOKENS <= self.max_new_tokens <= constants.MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be in {MIN_RESPONSE_TOKENS}..{constants.MAX_NEW_TOKENS} (LoadGen "
                            f"takes no response of one token), got {self.max_new_tokens}")
        if self.audit_conf != DEFAULT_AUDIT_CONF and not os.path.isfile(self.audit_conf):
            raise UserError(f"--audit-conf {self.audit_conf}: no such file (LoadGen would run without it and the "
                            f"run would not be the audit you asked for)")
        if not self.quant.enabled and (self.quant.quant_mode != "simulate" or self.quant.quant_backend != "auto"):
            flag = (f"--quant-mode {self.quant.quant_mode}" if self.quant.quant_mode != "simulate"
                    else f"--quant-backend {self.quant.quant_backend}")
            raise UserError(f"{flag} says how a --liteml-config is applied; without one nothing would be quantized "
                            "(and run_info.json would still record it): add --liteml-config"
                            + (", or drop it: --quantization fp8 has its own numerics" if self.quant.fp8 else ""))
        remote_backend = not registry.entry(self.backend).holds_model
        if self.dist.sut_nodes and (remote_backend or self.tensor_parallel > 1 or self.data_parallel > 1):
            raise UserError("--sut-nodes: the SUT nodes generate; give --tensor-parallel/--data-parallel to the nodes "
                            "(python -m mlperf_llama2.sut_node), and do not combine with --vllm/--backend api")

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
        p.add_argument("--scenario", choices=(*SCENARIOS, INTERACTIVE), default="Offline",
                       help="LoadGen scenario; Interactive is Server with --lg-model-name "
                            f"{constants.LG_MODEL_NAME_INTERACTIVE} (450 ms TTFT / 40 ms TPOT) (default %(default)s)")
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
        p.add_argument("--audit-conf", default=DEFAULT_AUDIT_CONF,
                       help="LoadGen audit config: the default is applied only if it exists in the working "
                            "directory (as LoadGen does); another path must exist (default %(default)s)")
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
        p.add_argument("--lg-model-name", choices=constants.LG_MODEL_NAMES, default=None,
                       help="LoadGen model name; llama2-70b-interactive with --scenario Server is the "
                            f"Interactive setting (default {constants.LG_MODEL_NAME}; "
                            f"{constants.LG_MODEL_NAME_INTERACTIVE} with --scenario Interactive)")
        p.add_argument("--backend", choices=registry.choices(), default=None,
                       help="generation backend: reference (transformers generate), engine (continuous "
                            "batching), api (OpenAI-compatible server) (default: engine on CUDA, where its "
                            "fidelity tests pass and it runs ~36x the reference backend's tokens/s, Llama-2-7B "
                            "fp16 on an H200, docs/engine.md; reference on CPU and for --liteml-config in "
                            "simulate mode)")
        p.add_argument("--max-new-tokens", type=int, default=constants.MAX_NEW_TOKENS,
                       help="cap on generated tokens, 2..1024; below 1024 the run is NOT a valid MLPerf run and the "
                            "summary says so (demo only; default %(default)s)")
        p.add_argument("--save-outputs", default=None, metavar="FILE",
                       help="write every sample's output token ids to one JSON file at the end")
        p.add_argument("--overwrite", action="store_true",
                       help="run even if --output-log-dir holds an earlier run's results (they are moved into "
                            "previous-<time>/ inside it first) and replace an existing --save-outputs file")
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
        if backend != "api" and api.given_flags():
            # Without --vllm no server is used and the flag would be ignored: a valid-looking run of another system.
            flag = api.given_flags()[0]
            raise UserError(f"{flag} acts only with --vllm (or --backend api); without it no API server generates "
                            f"and {flag} would be ignored: add --vllm, or drop the flag")
        scenario, lg_model_name = scenario_and_model_name(ns.scenario, ns.lg_model_name)
        local = backend is None or registry.entry(backend).holds_model  # the default backends hold the model
        device = resolve_device(ns.device) if local else (ns.device or "cpu")
        dtype = ns.dtype or ("float16" if device.startswith("cuda") else "float32")
        backend = backend or default_backend(device, ns.liteml_config, ns.quant_mode)
        if ns.max_num_seqs is not None and (backend != "engine" or ns.sut_nodes):
            # preflight sees only the value, and 256/512/128 are also defaults: the flag itself was given here
            where = "each SUT node builds its own engine, so this process would ignore it; give it to the nodes " \
                "(python -m mlperf_llama2.sut_node)" if ns.sut_nodes else \
                f"--backend {backend} has no engine and would ignore it; drop it or use --backend engine"
            raise UserError(f"--max-num-seqs {ns.max_num_seqs} is a flag of the engine (--backend engine): {where}")
        graphs = mixed_steps_can_use_graphs(backend, device, ns.liteml_config, ns.int8_rules)
        return cls(
            scenario=scenario,
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
            lg_model_name=lg_model_name,
            backend=backend,
            max_new_tokens=ns.max_new_tokens,
            save_outputs=ns.save_outputs,
            overwrite=ns.overwrite,
            progress=not ns.no_progress,
            verbose=ns.verbose,
            tensor_parallel=ns.tensor_parallel,
            data_parallel=ns.data_parallel,
            engine=EngineConfig.from_cli_args(
                ns, INTERACTIVE if lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE else scenario, graphs),
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


def scenario_and_model_name(scenario: str, lg_model_name: Optional[str]) -> tuple[str, str]:
    """--scenario Interactive -> (Server, llama2-70b-interactive); an explicit other model name conflicts."""
    if scenario != INTERACTIVE:
        return scenario, lg_model_name or constants.LG_MODEL_NAME
    if lg_model_name not in (None, constants.LG_MODEL_NAME_INTERACTIVE):
        raise UserError(f"--scenario Interactive means --scenario Server --lg-model-name "
                        f"{constants.LG_MODEL_NAME_INTERACTIVE}; it conflicts with --lg-model-name {lg_model_name}")
    return "Server", constants.LG_MODEL_NAME_INTERACTIVE


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
