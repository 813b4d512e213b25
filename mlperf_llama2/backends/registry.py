"""Backends by name: `--backend NAME` -> a factory(config) that builds a `Backend`.

Factories are named as "module:function" strings and imported only when selected, so a backend's
heavy or optional dependencies (the engine's kernels, an HTTP client) cost nothing to the others.
Another backend plugs in with one `register(...)` line here (or at import time of its package).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Callable

from mlperf_llama2.errors import UserError

if TYPE_CHECKING:
    from mlperf_llama2.backends.base import Backend
    from mlperf_llama2.config import RunConfig

log = logging.getLogger(__name__)

BackendFactory = Callable[["RunConfig"], "Backend"]

_FACTORIES: dict[str, str | BackendFactory] = {
    "reference": "mlperf_llama2.backends.reference:create_reference_backend",
    "engine": "mlperf_llama2.backends.parallel_engine:create_engine_backend",  # also --tensor/--data-parallel
    "api": "mlperf_llama2.backends.api:create_api_backend",
}


def register(name: str, factory: str | BackendFactory) -> None:
    """Make `--backend name` build its backend with `factory(config)` ("module:function" or a callable)."""
    _FACTORIES[name] = factory


def available() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


def resolve(name: str) -> BackendFactory:
    """The factory registered under `name`; an unknown name is a one-line UserError."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UserError(f"--backend {name}: not available in this build (available: {', '.join(available())})")
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory


def create_backend(config: "RunConfig") -> "Backend":
    """Build the backend `config.backend` names (this is where a model gets loaded)."""
    log.info("backend: %s", config.backend)
    return resolve(config.backend)(config)
