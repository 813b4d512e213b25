"""The `reference` backend: the MLCommons reference's generation, `transformers` `generate`, greedy.

Worker threads (`--num-workers`) take batches (`--batch-size`, batch 1 in Server) from one queue.
A batch is left-padded with EOS to its longest prompt (SPEC §2 allows this instead of padding to
1024: same tokens, less work), the attention mask is 0 on the padding, and generation is
`do_sample=False, num_beams=1, min_new_tokens=1, max_new_tokens=config.max_new_tokens`. In Server
a first-token hook hands each sample's first generated token to the sink the moment it exists.
Outputs are the raw generated columns; the SUT cuts them after the first EOS.
A failed step is retried in smaller batches, then per sample (`backends.retry`); only a sample that
still fails is reported failed. `stop()` abandons queued batches and ends a running `generate` at
its next token. Test runs may inject faults into the step (`faults`, MLPERF_LLAMA2_FAULTS).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from mlperf_llama2 import constants
from mlperf_llama2.backends.base import Backend, GenerationRequest, ResultSink
from mlperf_llama2.backends.hf_loading import load_causal_lm, read_model_info
from mlperf_llama2.backends.retry import GenerationStopped, generate_with_retry
from mlperf_llama2.faults import FaultPlan

if TYPE_CHECKING:
    from mlperf_llama2.config import RunConfig

log = logging.getLogger(__name__)

_STOP = None  # queue sentinel: one per worker at stop()


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts to the longest one. Returns input_ids [B, L] and attention_mask [B, L] (0 on padding)."""
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)  # [B, L]
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)  # [B, L]
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt):] = 1
    return input_ids, attention_mask


class FirstTokenHook(StoppingCriteria):
    """Never stops generation; on the first call (first new token appended) reports it per row."""

    def __init__(self, prompt_len: int, request_ids: Sequence[int], sink: ResultSink):
        self._prompt_len = prompt_len
        self._request_ids = list(request_ids)
        self._sink = sink
        self._reported = False

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        # input_ids: [B, prompt_len + generated]
        if not self._reported and input_ids.shape[1] > self._prompt_len:
            self._reported = True
            for request_id, token in zip(self._request_ids, input_ids[:, self._prompt_len].tolist()):
                self._sink.first_token(request_id, int(token))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class StopWhenSet(StoppingCriteria):
    """Ends generation at the next token once `event` is set (the backend is stopping)."""

    def __init__(self, event: threading.Event):
        self._event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        # input_ids: [B, prompt_len + generated]
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


def free_device_memory() -> None:
    """After an out-of-memory error: return cached blocks so a smaller retry can fit."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ReferenceBackend(Backend):
    name = "reference"

    def __init__(
        self,
        model,
        *,
        eos_token_id: int,
        vocab_size: Optional[int] = None,
        batch_size: int = 1,
        num_workers: int = 1,
        stream_first_token: bool = False,
        faults: Optional[FaultPlan] = None,
    ):
        self._model = model
        self._eos = eos_token_id
        # The backend owns the model's generation defaults: greedy, pad = EOS. A checkpoint's own
        # (Llama-2-chat ships do_sample=True, temperature=0.6, top_p=0.9, max_length=4096) would
        # otherwise be merged into every call and warned about once per batch.
        model.generation_config = GenerationConfig(
            do_sample=False, num_beams=1, eos_token_id=eos_token_id, pad_token_id=eos_token_id
        )
        self._vocab_size = vocab_size
        self._batch_size = batch_size
        self._num_workers = num_workers
        self.streams_first_token = stream_first_token
        self._device = next(model.parameters()).device
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._sink: Optional[ResultSink] = None
        self._faults = faults if faults is not None else FaultPlan()
        self._stopping = threading.Event()

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> Optional[int]:
        return self._vocab_size

    def start(self, sink: ResultSink) -> None:
        self._sink = sink
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._work, name=f"reference-worker-{i}", daemon=True)
            for i in range(self._num_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        for start in range(0, len(requests), self._batch_size):
            self._queue.put(list(requests[start:start + self._batch_size]))

    def stop(self) -> None:
        self._stopping.set()
        while True:  # abandon queued batches: LoadGen has already had its answers (or gave up)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            for outcome in generate_with_retry(self.generate, batch, on_out_of_memory=free_device_memory):
                if outcome.error is None:
                    self._sink.complete(outcome.request.request_id, outcome.tokens)
                elif not self._stopping.is_set():
                    self._sink.fail(outcome.request.request_id, outcome.error)

    def generate(self, batch: Sequence[GenerationRequest]) -> list[list[int]]:
        """Greedy outputs (generated ids only, EOS padding included) of one batch, in batch order."""
        if self._stopping.is_set():
            raise GenerationStopped("backend stopping")
        self._faults.check(r.sample_index for r in batch)
        input_ids, attention_mask = left_pad([r.prompt for r in batch], self._eos)  # [B, L]
        prompt_len = input_ids.shape[1]
        criteria = StoppingCriteriaList([StopWhenSet(self._stopping)])
        if self.streams_first_token:
            criteria.append(FirstTokenHook(prompt_len, [r.request_id for r in batch], self._sink))
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                max_new_tokens=max(r.max_new_tokens for r in batch),
                min_new_tokens=constants.MIN_NEW_TOKENS,
                do_sample=False,
                num_beams=1,
                stopping_criteria=criteria,
            )  # [B, L + generated]
        if self._stopping.is_set():  # cut short by StopWhenSet: not an output
            raise GenerationStopped("backend stopping")
        generated = out[:, prompt_len:].cpu().tolist()
        return [row[:request.max_new_tokens] for request, row in zip(batch, generated)]


def create_reference_backend(config: "RunConfig") -> ReferenceBackend:
    """Registry factory: load the checkpoint and build the backend for the run's scenario."""
    info = read_model_info(config.model_path)
    faults = FaultPlan.from_env()  # a bad spec fails before the weights load
    batch_size = config.batch_size
    if config.scenario == "Server" and batch_size != 1:
        log.warning("Server runs one query at a time (batch 1) like the reference; --batch-size %d ignored", batch_size)
        batch_size = 1
    model = load_causal_lm(config.model_path, config.dtype, config.device)
    quant_report = None
    if config.quant.enabled:  # --liteml-config: the loaded model is wrapped (LiteML) or quantized in place
        from mlperf_llama2.quant.setup import apply_quantization, plan_quantization

        plan = plan_quantization(config.quant, config.dataset_path, config.device, model_path=config.model_path,
                                 output_dir=config.output_log_dir)
        model, quant_report = apply_quantization(model, plan, config.device)
    elif config.quant.fp8:  # --quantization fp8: the engine's FP8 numerics as fake-quant (the accuracy reference)
        from mlperf_llama2.quant.fp8 import simulate_fp8

        simulate_fp8(model)
    backend = ReferenceBackend(
        model,
        eos_token_id=info.eos_token_id,
        vocab_size=info.vocab_size,
        batch_size=batch_size,
        num_workers=config.num_workers,
        stream_first_token=config.scenario == "Server",
        faults=faults,
    )
    backend.quant_report = quant_report  # open backend's QuantReport (None for LiteML or no quantization)
    return backend
