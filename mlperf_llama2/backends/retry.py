"""Retrying a failed generate step: smaller batches, then each sample alone, then give up on that sample.

Greedy decoding makes a retry exact: a sample's tokens do not depend on which batch it is in (the
batch is left-padded and masked), so an output produced on a retry equals the one a clean run
gives. An exception (a CUDA out-of-memory included) in a batch of B splits it into two halves,
recursively, down to single samples; a single sample that fails is tried once more alone; a sample
that still fails is reported with its last error. Only the failing part of a batch is ever
regenerated. Backends with their own batching (the engine) can use `generate_with_retry` the same
way for the requests of a failed step. No torch here: freeing device memory is the caller's hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.faults import is_out_of_memory

log = logging.getLogger(__name__)

GenerateFn = Callable[[Sequence[GenerationRequest]], list[list[int]]]


class GenerationStopped(Exception):
    """Raised inside a generate step when the backend is stopping; never retried."""


@dataclass(frozen=True)
class Outcome:
    """One request's result: tokens, or the error that remained after every retry."""

    request: GenerationRequest
    tokens: Optional[list[int]] = None
    error: Optional[BaseException] = None


def generate_with_retry(
    generate: GenerateFn,
    batch: Sequence[GenerationRequest],
    *,
    on_out_of_memory: Callable[[], None] = lambda: None,
    single_attempts: int = 2,
) -> list[Outcome]:
    """Outcomes for `batch`, in batch order; retries as described in the module docstring."""
    try:
        return [Outcome(r, tokens=t) for r, t in zip(batch, generate(batch), strict=True)]
    except GenerationStopped as exc:
        return [Outcome(r, error=exc) for r in batch]
    except Exception as exc:  # noqa: BLE001 - any failure of a step is retried the same way
        error = exc
    _after_failure(error, on_out_of_memory)
    if len(batch) > 1:
        half = (len(batch) + 1) // 2
        log.warning("generate failed for a batch of %d (%s: %s); retrying as batches of %d and %d",
                    len(batch), type(error).__name__, error, half, len(batch) - half)
        return (generate_with_retry(generate, batch[:half], on_out_of_memory=on_out_of_memory,
                                    single_attempts=single_attempts)
                + generate_with_retry(generate, batch[half:], on_out_of_memory=on_out_of_memory,
                                      single_attempts=single_attempts))
    request = batch[0]
    for attempt in range(2, single_attempts + 1):
        log.warning("generate failed for sample %d (%s: %s); retry %d of %d alone",
                    request.sample_index, type(error).__name__, error, attempt - 1, single_attempts - 1)
        try:
            return [Outcome(request, tokens=generate([request])[0])]
        except GenerationStopped as exc:
            return [Outcome(request, error=exc)]
        except Exception as exc:  # noqa: BLE001
            error = exc
            _after_failure(error, on_out_of_memory)
    log.error("sample %d could not be generated after %d attempt(s) alone: %s: %s",
              request.sample_index, single_attempts, type(error).__name__, error)
    return [Outcome(request, error=error)]


def _after_failure(error: BaseException, on_out_of_memory: Callable[[], None]) -> None:
    if is_out_of_memory(error):
        try:
            on_out_of_memory()
        except Exception:  # noqa: BLE001 - freeing memory is best effort
            log.debug("freeing device memory after an out-of-memory error failed", exc_info=True)
