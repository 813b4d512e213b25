"""Fault injection for tests: make a backend's generate step fail on purpose, as named by one env variable.

MLPERF_LLAMA2_FAULTS is a comma-separated list of rules `KIND@TARGET=N[:SECONDS]`:

    oom      raise a CUDA-style out-of-memory error once, at the first matching generate call
    error    raise a RuntimeError once, at the first matching generate call
    always   raise a RuntimeError at every matching generate call (a sample that can never be generated)
    sleep    sleep SECONDS (default 1) at every matching call (a slow device, for shutdown tests)

    TARGET   batch=K: the K-th generate call of the process (1-based, retries count as calls);
             sample=N: any generate call whose batch holds QSL index N; N or K may be `*` (every call)

Example: MLPERF_LLAMA2_FAULTS="oom@batch=2,error@sample=5,always@sample=7". Without the variable
`FaultPlan.from_env()` is empty and `check` costs one attribute test. Backends call
`plan.check(sample_indices)` at the top of each generate step (the reference backend does; the
engine backend, once per step before it runs, with the indices of the step's sequences). This module imports
no torch unless an `oom` fault fires.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

ENV_VAR = "MLPERF_LLAMA2_FAULTS"
KINDS = ("oom", "error", "always", "sleep")
TARGETS = ("batch", "sample")
ANY = None  # a rule's `number` for `*`


class InjectedFault(RuntimeError):
    """Raised by an `error` or `always` rule."""


@dataclass(frozen=True)
class FaultRule:
    kind: str  # one of KINDS
    target: str  # "batch" or "sample"
    number: Optional[int]  # K or N; None matches every call
    seconds: float = 1.0  # sleep only

    @property
    def once(self) -> bool:
        return self.kind in ("oom", "error")

    def matches(self, call_number: int, sample_indices: frozenset[int]) -> bool:
        if self.number is ANY:
            return True
        if self.target == "batch":
            return call_number == self.number
        return self.number in sample_indices

    def __str__(self) -> str:
        number = "*" if self.number is ANY else str(self.number)
        suffix = f":{self.seconds:g}" if self.kind == "sleep" else ""
        return f"{self.kind}@{self.target}={number}{suffix}"


def parse_rule(text: str) -> FaultRule:
    """`KIND@TARGET=N[:SECONDS]` -> FaultRule; anything else is a one-line UserError."""
    usage = (f"{ENV_VAR}: bad rule {text!r}; expected KIND@TARGET=N with KIND in {'/'.join(KINDS)} "
             "and TARGET batch or sample")
    kind, at, rest = text.strip().partition("@")
    target, eq, value = rest.partition("=")
    if not at or not eq or kind not in KINDS or target not in TARGETS:
        raise UserError(usage)
    value, colon, seconds_text = value.partition(":")
    if colon and kind != "sleep":
        raise UserError(usage)
    try:
        number = ANY if value == "*" else int(value)
        seconds = float(seconds_text) if colon else 1.0
    except ValueError:
        raise UserError(usage) from None
    if number is not ANY and number < (1 if target == "batch" else 0):
        raise UserError(usage)
    return FaultRule(kind, target, number, seconds)


class FaultPlan:
    """The rules of one process; thread-safe (several worker threads share one plan)."""

    def __init__(self, rules: Iterable[FaultRule] = ()):
        self.rules = tuple(rules)
        self._lock = threading.Lock()
        self._calls = 0
        self._fired: set[int] = set()  # indices of once-rules that already fired

    @classmethod
    def parse(cls, spec: str) -> "FaultPlan":
        return cls(parse_rule(part) for part in spec.split(",") if part.strip())

    @classmethod
    def from_env(cls) -> "FaultPlan":
        spec = os.environ.get(ENV_VAR, "")
        plan = cls.parse(spec)
        if plan.rules:
            log.warning("fault injection active (%s=%s): test runs only", ENV_VAR, ",".join(map(str, plan.rules)))
        return plan

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, sample_indices: Iterable[int]) -> None:
        """Count one generate call over `sample_indices`; raise or sleep if a rule says so."""
        if not self.rules:
            return
        indices = frozenset(sample_indices)
        with self._lock:
            self._calls += 1
            call = self._calls
            due = [(i, rule) for i, rule in enumerate(self.rules)
                   if rule.matches(call, indices) and i not in self._fired]
            failing = next(((i, rule) for i, rule in due if rule.kind != "sleep"), None)
            if failing is not None and failing[1].once:
                self._fired.add(failing[0])  # only the rule that raises is spent; others wait for a later call
        for _, rule in due:
            if rule.kind == "sleep":
                time.sleep(rule.seconds)
        if failing is None:
            return
        rule = failing[1]
        message = f"injected {rule} at generate call {call} (samples {sorted(indices)})"
        log.warning("%s", message)
        if rule.kind == "oom":
            raise out_of_memory_error(message)
        raise InjectedFault(message)


def out_of_memory_error(message: str) -> BaseException:
    """The exception a real CUDA OOM raises (torch.cuda.OutOfMemoryError), constructible without a GPU."""
    import torch

    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. {message}")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA's class, or a RuntimeError that says so)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
