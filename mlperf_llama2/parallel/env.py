"""Process environment for distributed runs: NVLink multicast off, loopback rendezvous ports.

Every process this package starts (tensor-parallel workers, SUT nodes) gets `DIST_ENV`; the
current process applies it with `apply_dist_env()` before torch.distributed is initialised.
NVLink multicast (NVLS) stays off on the lent machines, so NCCL and symmetric memory never use it.
"""

from __future__ import annotations

import os

DIST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def apply_dist_env() -> None:
    for key, value in DIST_ENV.items():
        os.environ[key] = value


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(**extra: str) -> dict[str, str]:
    """A child's environment: ours, the distributed settings, offline hubs, this package importable, `extra`."""
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **DIST_ENV,
               PYTHONPATH=PACKAGE_ROOT + (os.pathsep + path if path else ""))
    env.update(extra)
    return env


def device_for_rank(base_device: str, offset: int) -> str:
    """cpu stays cpu; cuda:K -> cuda:(K + offset) (rank r of a group, or replica i, on its own GPU)."""
    if base_device == "cpu":
        return "cpu"
    index = int(base_device.split(":", 1)[1]) if ":" in base_device else 0
    return f"cuda:{index + offset}"
