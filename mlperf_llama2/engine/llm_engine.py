"""The engine's front: add requests, step (schedule -> run -> postprocess), or run a background loop.

Token ids in, token ids out; the engine knows nothing of tokenizers or LoadGen. `step()` returns
events (a first token, a finished sequence). With overlapped steps (the CUDA default) a step queues
its work on the device and then reads back the previous step's tokens, so the host's scheduling and
bookkeeping run while the GPU computes; the events a step returns are the previous step's. A
sequence that stops at EOS has then been scheduled for one more step, whose token is dropped.
`start_loop` runs steps on a background thread, admitting requests added from other threads as
they arrive, and reports events through two callbacks (called on the loop thread).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable, Optional, Sequence as Seq

import torch

from mlperf_llama2 import constants
from mlperf_llama2.engine.config import EngineConfig
from mlperf_llama2.engine.block_manager import BlockManager
from mlperf_llama2.engine.model_runner import ModelRunner
from mlperf_llama2.engine.scheduler import ScheduledBatch, Scheduler, StepEvent
from mlperf_llama2.engine.sequence import SamplingParams, Sequence, Status

log = logging.getLogger(__name__)

MAX_MODEL_LEN = constants.INPUT_TOKEN_LIMIT + constants.MAX_NEW_TOKENS


class LLMEngine:
    def __init__(self, runner: ModelRunner, config: EngineConfig, eos_token_id: int,
                 max_model_len: int = MAX_MODEL_LEN) -> None:
        self.runner = runner
        self.config = config
        self.eos_token_id = eos_token_id
        self.scheduler = Scheduler(BlockManager(runner.num_blocks, config.block_size), config.max_num_seqs,
                                   config.max_num_batched_tokens, max_model_len, eos_token_id,
                                   prefill_align=config.prefill_align)
        # prompts are checked against it before they are queued (None: a runner without a model here, not checked)
        self.vocab_size: Optional[int] = getattr(getattr(getattr(runner, "model", None), "shape", None),
                                                 "vocab_size", None)
        self._inbox: list[Sequence] = []
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        # the runner can queue a step before the last one's tokens are read (a TP driver cannot); by default
        # only on CUDA, where launching is asynchronous (on a CPU it would only delay every token by a step)
        capable = getattr(runner, "overlap_capable", False)
        on_gpu = getattr(getattr(runner, "device", None), "type", "cpu") == "cuda"
        self.overlap = capable and (on_gpu if config.overlap_steps is None else config.overlap_steps)
        self._pending: Optional[tuple] = None  # (batch, StepOutput) launched, not yet read back
        # called with each scheduled batch before it runs (an EngineBackend's fault plan, tests only)
        self.before_step: Optional[Callable[[ScheduledBatch], None]] = None
        self.num_steps = 0

    @classmethod
    def from_pretrained(cls, model_path: str, config: EngineConfig, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, quant=None,
                        kv_scales: Optional[torch.Tensor] = None, output_dir: Optional[str] = None) -> "LLMEngine":
        """`quant` (a `QuantConfig`): the Linears it names are built int8 or FP8 (`quant_plan.py`); in int8 mode
        with `int8_rules` "all" the config's other rules too (`whole_config.py`; a calibration it runs writes its
        scales into `output_dir`).
        `kv_scales` [2, layers, kv_heads]: the static K/V scales an 8-bit `kv_cache_dtype` needs (kv_cache.py)."""
        from mlperf_llama2.engine.kv_cache import KVCacheSpec
        from mlperf_llama2.engine.llama import LlamaShape
        from mlperf_llama2.engine.loader import build_model, eos_id, read_config
        from mlperf_llama2.engine.quant_plan import weight_plan

        KVCacheSpec(config.kv_cache_dtype, kv_scales)  # a missing or malformed scale tensor fails before loading
        dev = torch.device(device)
        hf_config = read_config(model_path)
        eos = eos_id(hf_config, model_path)
        plan = weight_plan(quant, LlamaShape.from_hf_config(hf_config), config) if quant is not None else {}
        model = build_model(hf_config, plan, dev, dtype, MAX_MODEL_LEN, model_path=model_path)
        if quant is not None and quant.enabled and quant.int8_rules == "all":
            from mlperf_llama2.engine.whole_config import setup

            wc = setup(model, quant, model_path, output_dir)
            if config.kv_cache_dtype == "auto" and kv_scales is None:
                from mlperf_llama2.engine.whole_config import config_kv_scales

                kv_scales = config_kv_scales(wc)
                if kv_scales is not None:  # the config's K and V quantizers are the cache (and the kernels need it)
                    config = dataclasses.replace(config, kv_cache_dtype="int8", kv_scale_granularity="tensor")
                    log.info("int8 KV cache with the config's own static per-tensor K and V scales (its K and V "
                             "quantizers; --kv-cache-dtype auto in int8 mode)")
        return cls(ModelRunner(model, config, eos, MAX_MODEL_LEN, dev, dtype, kv_scales), config, eos)

    def set_step_limits(self, max_num_seqs: Optional[int] = None, max_num_batched_tokens: Optional[int] = None) -> None:
        """Lower (or restore) the scheduler's per-step limits between runs of one built engine, up to the values it
        was built with (its CUDA-graph buckets, warm-up and activation reserve are sized for those): the
        benchmark's per-scenario sweep of sequence caps and token budgets (tools/bench.py --seq-caps,
        --token-budgets). A value outside 1..built raises ValueError."""
        for name, value, built in (("max_num_seqs", max_num_seqs, self.config.max_num_seqs),
                                   ("max_num_batched_tokens", max_num_batched_tokens,
                                    self.config.max_num_batched_tokens)):
            if value is None:
                continue
            if not 1 <= value <= built:
                raise ValueError(f"{name} {value}: the engine was built for 1..{built}")
            setattr(self.scheduler, name, value)

    # ---- requests -----------------------------------------------------------------------------
    def add_request(self, request_id: int, prompt: Seq[int], params: SamplingParams) -> Sequence:
        """Thread-safe: the sequence joins the scheduler at the start of the next step. A request that could never
        run (an empty prompt, a token id outside the vocabulary, longer than the context or the KV cache) raises
        ValueError here, in the caller's thread, and is not queued: inside a step it would stop the loop and fail
        every other request (on CUDA, an id outside the embedding is a device assert that ends the process's
        CUDA context)."""
        seq = self._checked(request_id, prompt, params)
        with self._cond:
            self._inbox.append(seq)
            self._cond.notify()
        return seq

    def _checked(self, request_id: int, prompt: Seq[int], params: SamplingParams) -> Sequence:
        seq = Sequence.create(request_id, prompt, params)
        if self.vocab_size is not None and not 0 <= min(seq.prompt) <= max(seq.prompt) < self.vocab_size:
            raise ValueError(f"request {request_id}: prompt has token ids outside the model's vocabulary "
                             f"(0..{self.vocab_size - 1}): {min(seq.prompt)}..{max(seq.prompt)}")
        self.scheduler.check(seq)
        return seq

    def _admit_inbox(self) -> None:
        with self._cond:
            arrived, self._inbox = self._inbox, []
        for seq in arrived:
            self.scheduler.add(seq)

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._inbox) or self.scheduler.has_work() or self._pending is not None

    # ---- one step -----------------------------------------------------------------------------
    def step(self) -> list[StepEvent]:
        self._admit_inbox()
        batch = self.scheduler.schedule()
        current = None
        if batch:
            if self.before_step is not None:
                self.before_step(batch)
            output = self.runner.launch(batch) if self.overlap else _Ready(self.runner.run(batch))
            self.scheduler.on_launched(batch)
            current = (batch, output)
            self.num_steps += 1
        if not self.overlap:
            return self._read_back(*current) if current else []
        events = self._read_back(*self._pending) if self._pending else []
        self._pending = current
        return events

    def _read_back(self, batch: ScheduledBatch, output) -> list[StepEvent]:
        return self.scheduler.on_sampled(batch, output.tokens())

    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams | Seq[SamplingParams]) -> list[list[int]]:
        """Run the given prompts to completion on the calling thread; outputs in prompt order."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(plist)} SamplingParams")
        seqs = [self._checked(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, plist))]  # all before any is queued
        with self._cond:
            self._inbox.extend(seqs)
        while self.has_work():
            self.step()
        return [seq.output for seq in seqs]

    # ---- background loop ----------------------------------------------------------------------
    def start_loop(self, on_first_token: Callable[[Sequence, int], None],
                   on_finished: Callable[[Sequence], None],
                   on_error: Callable[[BaseException], None]) -> None:
        self._stopping = False

        def loop() -> None:
            try:
                while True:
                    with self._cond:
                        while (not self._stopping and not self._inbox and not self.scheduler.has_work()
                               and self._pending is None):
                            self._cond.wait()
                        if self._stopping:
                            return
                    for event in self.step():
                        if event.first_token is not None:
                            on_first_token(event.seq, event.first_token)
                        if event.finished:
                            on_finished(event.seq)
            except BaseException as exc:  # noqa: BLE001 - reported to the owner, who fails the requests
                log.exception("engine loop failed")
                on_error(exc)

        self._thread = threading.Thread(target=loop, name="engine-loop", daemon=True)
        self._thread.start()

    def stop_loop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def abandon(self) -> list[Sequence]:
        """Drop every request not yet finished (queued, waiting, running, or in a launched step not read back) and
        free its KV blocks; returns them. Only with the loop stopped: a later start_loop then begins empty instead
        of finishing requests their owner has already given up on."""
        with self._cond:
            dropped, self._inbox = self._inbox, []
        sched = self.scheduler
        dropped += list(sched.waiting) + sched.running
        for seq in sched.waiting:
            sched.block_manager.free(seq)
        for seq in sched.running:
            sched.block_manager.free(seq)
        sched.waiting.clear()
        sched.running.clear()
        self._pending = None
        for seq in dropped:
            seq.status = Status.FINISHED
            seq.num_inflight = 0
            seq.finish_reason = seq.finish_reason or "abandoned"
        return dropped


class _Ready:
    """A step run synchronously: its tokens are already on the host."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens

    def tokens(self) -> list[int]:
        return self._tokens
