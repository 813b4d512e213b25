"""Backends by name: each entry owns its pre-flight check and its construction.

`--backend NAME` picks an entry (its choices are the entries offered as flags); `--sut-nodes` picks
the `sut-nodes` entry whatever --backend says. A run calls `check(config)` first (cheap: small files
and flags only, one-line UserError when something is wrong, the model's vocabulary size back), then
`create_backend(config)` (this is where a model loads). Both are "module:function" strings imported
only when selected, so a backend's heavy or optional dependencies cost nothing to the others.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from mlperf_llama2.errors import UserError

if TYPE_CHECKING:
    from mlperf_llama2.backends.base import Backend
    from mlperf_llama2.config import RunConfig

log = logging.getLogger(__name__)

BackendFactory = Callable[["RunConfig"], "Backend"]
Preflight = Callable[["RunConfig"], Optional[int]]  # -> the model's vocabulary size (None: not known here)

SUT_NODES = "sut-nodes"


@dataclass(frozen=True)
class BackendEntry:
    factory: str | BackendFactory  # RunConfig -> Backend
    preflight: str | Preflight  # RunConfig -> vocabulary size or None; raises UserError
    holds_model: bool = True  # the model runs in this process: it needs --model-path and a device
    flag_choice: bool = True  # offered by --backend (SUT nodes are chosen by --sut-nodes)


_CHECKS = "mlperf_llama2.backends.preflight"
_ENTRIES: dict[str, BackendEntry] = {
    "reference": BackendEntry("mlperf_llama2.backends.reference:create_reference_backend",
                              f"{_CHECKS}:check_reference"),
    "engine": BackendEntry("mlperf_llama2.backends.parallel_engine:create_engine_backend",  # also TP/DP
                           f"{_CHECKS}:check_engine"),
    "api": BackendEntry("mlperf_llama2.backends.api:create_api_backend", f"{_CHECKS}:check_api",
                        holds_model=False),
    SUT_NODES: BackendEntry("mlperf_llama2.backends.nodes:create_node_backend", f"{_CHECKS}:check_sut_nodes",
                            holds_model=False, flag_choice=False),
}


def register(name: str, factory: str | BackendFactory, preflight: str | Preflight | None = None, *,
             holds_model: bool = True, flag_choice: bool = True) -> None:
    """Make `name` build its backend with `factory(config)`. A registered name keeps its pre-flight
    check and flags unless `preflight` is given; a new name must bring one."""
    old = _ENTRIES.get(name)
    if old is not None:
        _ENTRIES[name] = dataclasses.replace(old, factory=factory, preflight=preflight or old.preflight)
    elif preflight is None:
        raise ValueError(f"backend {name!r}: a new entry needs its pre-flight check")
    else:
        _ENTRIES[name] = BackendEntry(factory, preflight, holds_model, flag_choice)


def choices() -> tuple[str, ...]:
    """The names `--backend` accepts."""
    return tuple(sorted(name for name, entry in _ENTRIES.items() if entry.flag_choice))


def entry(name: str) -> BackendEntry:
    """The entry registered under `name`; an unknown name is a one-line UserError."""
    found = _ENTRIES.get(name)
    if found is None:
        raise UserError(f"--backend {name}: not available in this build (available: {', '.join(choices())})")
    return found


def selected_name(config: "RunConfig") -> str:
    """The entry a run uses: the SUT nodes when --sut-nodes is given, else --backend."""
    return SUT_NODES if config.dist.sut_nodes else config.backend


def check(config: "RunConfig") -> Optional[int]:
    """The selected entry's pre-flight check (no model loads); returns the model's vocabulary size or None."""
    return _load(entry(selected_name(config)).preflight)(config)


def create_backend(config: "RunConfig") -> "Backend":
    """Build the selected backend (this is where a model gets loaded)."""
    name = selected_name(config)
    log.info("backend: %s", name)
    return _load(entry(name).factory)(config)


def _load(target: str | Callable) -> Callable:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
