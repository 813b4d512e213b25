"""The `engine` backend: LoadGen's requests go straight into the continuous-batching engine.

`submit` only enqueues (never blocks the issue thread); the engine's loop thread admits requests as
they arrive, so Offline puts every sample of a query in flight at once and Server admits queries
as they come. The first generated token is reported the moment it exists (`streams_first_token`),
then the whole output once the sequence ends. Interactive is the same code with its own limits.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Mapping, Optional, Sequence as Seq

import torch

from mlperf_llama2 import constants
from mlperf_llama2.backends.base import Backend, GenerationRequest, ResultSink
from mlperf_llama2.engine.config import EngineConfig
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams, Sequence
from mlperf_llama2.errors import UserError
from mlperf_llama2.faults import FaultPlan

if TYPE_CHECKING:
    from mlperf_llama2.config import RunConfig

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class EngineBackend(Backend):
    name = "engine"
    streams_first_token = True

    def __init__(self, engine: LLMEngine, forced_output_lengths: Optional[Mapping[int, int]] = None,
                 faults: Optional[FaultPlan] = None) -> None:
        """`forced_output_lengths` (benchmarks and tests only): sample index -> exact output length, EOS ignored.

        `faults` (tests only, MLPERF_LLAMA2_FAULTS): checked with the QSL indices of every step's batch
        before it runs. The engine does not retry a failed step: its loop fails every outstanding
        request, and the run stops with exit 1 (the SUT answers LoadGen for every sample, so nothing hangs).
        """
        self.engine = engine
        # the KV cache as resolved (auto in int8 mode with a whole config becomes int8); None where not known here
        self.kv_cache_dtype = getattr(getattr(getattr(engine, "runner", None), "kv_spec", None), "dtype", None)
        self.faults = faults
        if faults:
            engine.before_step = self._check_faults
        self.forced_output_lengths = forced_output_lengths
        self._sink: Optional[ResultSink] = None
        self._lock = threading.Lock()
        self._outstanding: dict[int, GenerationRequest] = {}
        self._started = False
        self._error: Optional[BaseException] = None

    @classmethod
    def from_pretrained(cls, model_path: str, config: EngineConfig = EngineConfig(), device: str = "cpu",
                        dtype: str = "float32", quant=None,
                        kv_scales: Optional[torch.Tensor] = None) -> "EngineBackend":
        return cls(LLMEngine.from_pretrained(model_path, config, device, _DTYPES[dtype], quant, kv_scales))

    @property
    def eos_token_id(self) -> int:
        return self.engine.eos_token_id

    @property
    def vocab_size(self) -> int | None:
        return self.engine.runner.model.shape.vocab_size

    def start(self, sink: ResultSink) -> None:
        if self._started:
            return
        self._sink = sink
        self.engine.start_loop(self._on_first_token, self._on_finished, self._on_error)
        self._started = True

    def submit(self, requests: Seq[GenerationRequest]) -> None:
        """Queue each request, or fail it at once (never raise, never leave one unanswered): every request while
        the loop is gone (an engine error) or not running (stopped, never started), a request whose id is still
        in flight, and one the engine refuses (an empty prompt, a token id outside the vocabulary, longer than the
        context or the KV cache)."""
        refused: list[tuple[int, BaseException]] = []
        with self._lock:  # _on_error and stop() take it too: a request is either outstanding for them, or refused
            down = self._error
            if down is None and not self._started:
                down = RuntimeError("the engine backend is not running (stopped, or never started): request refused")
            for req in requests:
                if down is not None:
                    refused.append((req.request_id, down))
                    continue
                if req.request_id in self._outstanding:
                    refused.append((req.request_id, ValueError(
                        f"request id {req.request_id} (sample {req.sample_index}) is already in flight: "
                        f"a second request with that id refused")))
                    continue
                try:
                    self.engine.add_request(req.request_id, req.prompt, self._params(req))
                except (ValueError, KeyError) as exc:  # KeyError: a sample without a forced output length
                    refused.append((req.request_id, exc))
                    continue
                self._outstanding[req.request_id] = req
        for request_id, exc in refused:
            self._sink.fail(request_id, exc)

    def _params(self, req: GenerationRequest) -> SamplingParams:
        if self.forced_output_lengths is not None:
            n = self.forced_output_lengths[req.sample_index]
            return SamplingParams(max_new_tokens=n, min_new_tokens=min(n, constants.MIN_NEW_TOKENS), ignore_eos=True)
        return SamplingParams(max_new_tokens=req.max_new_tokens, min_new_tokens=constants.MIN_NEW_TOKENS)

    def _on_first_token(self, seq: Sequence, token: int) -> None:
        self._sink.first_token(seq.request_id, token)

    def _on_finished(self, seq: Sequence) -> None:
        with self._lock:
            self._outstanding.pop(seq.request_id, None)
        self._sink.complete(seq.request_id, list(seq.output))

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._error = exc
            failed, self._outstanding = list(self._outstanding), {}
        for request_id in failed:
            self._sink.fail(request_id, exc)

    def stop(self) -> None:
        """Stop the loop after its current step; a request still outstanding then fails (it is never answered
        otherwise) and the engine drops its work, so a later start() begins empty."""
        with self._lock:
            if not self._started:
                return
            self._started = False  # submit() refuses from now on
        self.engine.stop_loop()
        with self._lock:
            abandoned, self._outstanding = list(self._outstanding), {}
        self.engine.abandon()
        if abandoned:
            log.warning("engine backend stopped with %d request(s) outstanding: failing them", len(abandoned))
        for request_id in abandoned:
            self._sink.fail(request_id, RuntimeError("the engine backend was stopped before this request finished"))

    def _check_faults(self, batch) -> None:
        with self._lock:
            indices = [self._outstanding[seq.request_id].sample_index for seq, _ in batch.items
                       if seq.request_id in self._outstanding]
        self.faults.check(indices)


def kv_cache_for_run(config: "RunConfig") -> tuple[EngineConfig, Optional[torch.Tensor]]:
    """The run's engine config, its K/V scale granularity resolved against --calibration-scales, and the
    [2, layers, kv_heads] K/V scales of an 8-bit KV cache (None for --kv-cache-dtype auto)."""
    engine = config.engine
    if engine.kv_cache_dtype == "auto":
        return engine, None
    from mlperf_llama2.engine.config import KV_SCALES_HINT
    from mlperf_llama2.engine.kv_cache import QMAX
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import read_config
    from mlperf_llama2.quant.calibration_file import kv_granularity, kv_scales_from_file

    path = config.quant.calibration_scales
    if not path:
        raise UserError(f"--kv-cache-dtype {engine.kv_cache_dtype} {KV_SCALES_HINT}")
    granularity = kv_granularity(path, engine.kv_scale_granularity, config.quant.enabled)
    shape = LlamaShape.from_hf_config(read_config(config.model_path))
    scales = kv_scales_from_file(path, shape.num_layers, shape.num_kv_heads, granularity,
                                 QMAX[engine.kv_cache_dtype])  # [2, L, KV]
    log.info("%s KV cache: static K/V scales per %s from %s", engine.kv_cache_dtype,
             "KV head" if granularity == "head" else "tensor (one per layer)", path)
    return dataclasses.replace(engine, kv_scale_granularity=granularity), scales


def quant_for_engine(config: "RunConfig"):
    """The run's QuantConfig with the calibration pickle resolved as the reference resolves it (--calibration-path,
    else the processorca calibration_*.pkl beside the dataset) when the whole config calibrates at start-up."""
    quant = config.quant
    if not quant.enabled or quant.int8_rules != "all" or quant.calibration_scales or quant.calibration_path:
        return quant
    from mlperf_llama2.quant.setup import default_calibration_path

    return dataclasses.replace(quant, calibration_path=default_calibration_path(config.dataset_path))


def create_single_device_backend(config: "RunConfig") -> EngineBackend:
    """Registry factory (`--backend engine`): load the checkpoint into the engine on the run's device."""
    if config.tensor_parallel != 1 or config.data_parallel != 1:
        log.warning("the engine runs one replica on one device; --tensor-parallel/--data-parallel ignored")
    from mlperf_llama2.engine.quant_plan import engine_rules

    faults = FaultPlan.from_env()  # a bad spec fails before the weights load
    engine_rules(config.quant)  # --liteml-config needs --quant-mode int8 here: one line before the weights load
    engine_config, kv_scales = kv_cache_for_run(config)
    quant = quant_for_engine(config)
    try:
        engine = LLMEngine.from_pretrained(config.model_path, engine_config, config.device, _DTYPES[config.dtype],
                                           quant, kv_scales, output_dir=config.output_log_dir)
    except ValueError as exc:  # a check the pre-flight could not make (the loader's own are UserErrors)
        raise UserError(f"--model-path {config.model_path}: the engine cannot load it: "
                        f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    log.info("engine step limits: --max-num-seqs %d, --max-num-batched-tokens %d (%s); steps with prompt chunks: %s",
             engine_config.max_num_seqs, engine_config.max_num_batched_tokens,
             "Interactive" if config.interactive else config.scenario,
             f"through the decode graphs up to {engine_config.graph_mixed_tokens} tokens"
             if engine_config.graph_mixed_tokens else "eager")
    return EngineBackend(engine, faults=faults)
