"""One request's state inside the engine: its token ids, how many are in the KV cache, its blocks.

Pure bookkeeping, no torch. A sequence's tokens are the prompt followed by the generated ids; the
engine computes `num_computed_tokens` of them into the KV cache and samples a new token each time
the whole list has been computed. Recompute after preemption just sets `num_computed_tokens` to 0.

With overlapped steps a sampled token can be in flight: computed on the device, not yet read back
(`num_inflight`: at most 1 when the scheduler runs; 2 between a launch and the previous step's
read-back). It counts as a token of the sequence (the next step computes it from the
device copy) but is not in `output` until the engine appends it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Sequence as Seq


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """Greedy decoding limits. `ignore_eos` (benchmarks only) stops only at `max_new_tokens`."""

    max_new_tokens: int
    min_new_tokens: int = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in 0..max_new_tokens, got {self.min_new_tokens}")


@dataclass(eq=False)
class Sequence:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: Optional[str] = None  # "eos" | "length" | "abandoned" (LLMEngine.abandon)
    num_inflight: int = 0  # sampled on the device, not yet appended to output
    inflight_row: int = -1  # that token's row in the step output that holds it

    @classmethod
    def create(cls, request_id: int, prompt: Seq[int], params: SamplingParams) -> "Sequence":
        if len(prompt) < 1:
            raise ValueError(f"request {request_id}: empty prompt")
        return cls(request_id=request_id, prompt=list(prompt), params=params)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output) + self.num_inflight

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids are on the host (the in-flight one is not)."""
        return len(self.prompt) + len(self.output)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens not yet in the KV cache (the whole prompt at first, then 1 per decode step)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def suppress_eos(self) -> bool:
        """True while fewer than min_new_tokens were generated: EOS's logit is set to -inf."""
        return len(self.output) + self.num_inflight < self.params.min_new_tokens

    @property
    def is_draining(self) -> bool:
        """Its last token (by max_new_tokens) is in flight: nothing left to compute."""
        return len(self.output) + self.num_inflight >= self.params.max_new_tokens

    def token_at(self, index: int) -> int:
        n = len(self.prompt)
        return self.prompt[index] if index < n else self.output[index - n]

    def tokens(self, start: int, stop: int) -> list[int]:
        if stop <= len(self.prompt):
            return self.prompt[start:stop]
        return (self.prompt + self.output)[start:stop]

    def append(self, token: int, eos_token_id: int) -> bool:
        """Record a generated token; returns True when the sequence is now finished."""
        self.output.append(token)
        if token == eos_token_id and not self.params.ignore_eos:
            self.finish_reason = "eos"
        elif len(self.output) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None
