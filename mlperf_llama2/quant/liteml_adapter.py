"""Wrap a loaded Llama with Ceva's proprietary LiteML, the way the fork does; imported only when asked.

The real LiteML is recognised by its submodules (an unrelated PyPI package is also named `liteml`):
current API `liteml.ailabs_liteml.retrainer` + `liteml.ailabs_shared.load_config`, older API
`liteml.retrainer` + `ailabs_shared.load_config`. Wrapping: `conf = load_config(path)`; for a static
`quantization_mode`, `calibration_loader` = a list of (1, L) token tensors (the benchmark's
calibration set) and `calibration_loader_key = lambda model, x: model(x.to(device))`; then
`RetrainerModel(model, config=RetrainerConfig(conf))` under `torch.no_grad()`. Before that, the
model gets the fork's named slots holding LiteML's own layer classes when they can be found.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from mlperf_llama2.errors import UserError

logger = logging.getLogger(__name__)

API_CANDIDATES = (
    ("liteml.ailabs_liteml.retrainer", "liteml.ailabs_shared.load_config"),
    ("liteml.retrainer", "ailabs_shared.load_config"),
)
# Where LiteML's layer classes may live; not public, so several places are tried (docs/quantization.md).
LAYER_MODULE_CANDIDATES = (
    "liteml.ailabs_liteml.layers", "liteml.ailabs_liteml.modules", "liteml.ailabs_liteml",
    "liteml.ailabs_shared.layers", "liteml.layers", "liteml",
)
LAYER_CLASS_NAMES = {"Matmul": "LiteMLMatmul", "Add": "LiteMLAdd", "Mul": "LiteMLMul"}


@dataclass(frozen=True)
class LiteMLApi:
    retrainer_module: str
    RetrainerConfig: type
    RetrainerModel: type
    load_config: Callable[[str], dict]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # parent package missing or a non-package `liteml`
        return False


def find_liteml() -> Optional[tuple[str, str]]:
    """(retrainer module, load_config module) of an installed real LiteML, or None. Imports nothing heavy."""
    for retrainer, load_config in API_CANDIDATES:
        if _module_exists(retrainer) and _module_exists(load_config):
            return retrainer, load_config
    return None


def liteml_available() -> bool:
    return find_liteml() is not None


def load_liteml() -> LiteMLApi:
    found = find_liteml()
    if found is None:
        hint = " (the installed 'liteml' is not Ceva's LiteML)" if _module_exists("liteml") else ""
        raise UserError("--quant-backend liteml: Ceva's LiteML is not installed" + hint +
                        "; install its wheel, or use --quant-backend open")
    retrainer_name, load_config_name = found
    retrainer = importlib.import_module(retrainer_name)
    load_config = importlib.import_module(load_config_name).load_config
    return LiteMLApi(retrainer_name, retrainer.RetrainerConfig, retrainer.RetrainerModel, load_config)


def liteml_slot_classes() -> dict:
    """LiteML's own LiteMLMatmul/LiteMLAdd/LiteMLMul, where found; missing ones keep our plain slots."""
    classes = {}
    for kind, class_name in LAYER_CLASS_NAMES.items():
        for module_name in LAYER_MODULE_CANDIDATES:
            if not _module_exists(module_name):
                continue
            cls = getattr(importlib.import_module(module_name), class_name, None)
            if isinstance(cls, type):
                classes[kind] = cls
                break
        else:
            logger.warning("LiteML layer class %s not found; slot keeps our plain op module (its rules "
                           "may then not match)", class_name)
    return classes


def wrap_with_liteml(model: torch.nn.Module, config_path: str, calibration: Optional[Sequence[torch.Tensor]],
                     device: str) -> torch.nn.Module:
    """The fork's wrapping; returns the RetrainerModel (whose `generate` the backend then calls)."""
    from mlperf_llama2.quant.llama_slots import install_slots

    api = load_liteml()
    logger.info("quantizing with Ceva LiteML (%s), config %s", api.retrainer_module, config_path)
    install_slots(model, liteml_slot_classes())
    with torch.no_grad():
        conf = api.load_config(config_path)
        data_q = conf["QAT"]["data_quantization"]
        if data_q.get("quantization_mode") == "static":
            if not calibration:
                raise UserError("the LiteML config is static and needs calibration data: pass "
                                "--calibration-path or put the processorca calibration_*.pkl beside the dataset")
            data_q["calibration_loader"] = list(calibration)
            data_q["calibration_loader_key"] = lambda m, x: m(x.to(device))
        return api.RetrainerModel(model, config=api.RetrainerConfig(conf))
