"""Where the Triton kernels' tests run: CUDA, else Triton's interpreter on the CPU (TRITON_INTERPRET=1 with triton
importable), else nowhere (the tests skip). One definition for every kernel test module."""

from __future__ import annotations

import os
from typing import Optional

import pytest
import torch

SKIP_REASON = "needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)"


def triton_device() -> Optional[str]:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        try:
            import triton  # noqa: F401
        except ImportError:
            return None
        return "cpu"
    return None


def module_device() -> str:
    """triton_device(), skipping the whole calling module when there is none."""
    device = triton_device()
    if device is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    return device


needs_triton = pytest.mark.skipif(triton_device() is None, reason=SKIP_REASON)


def record_launches(monkeypatch, kernels: dict) -> dict:
    """Launches of `kernels` ({name: @triton.jit kernel}) recorded instead of run: {name: [(args, kwargs)]},
    args the positional arguments in the kernel's parameter order, kwargs its constexprs and launch options.
    The wrapper's outputs stay uninitialised. Needs triton importable, neither a GPU nor the interpreter."""
    seen: dict = {name: [] for name in kernels}
    for name, kernel in kernels.items():
        monkeypatch.setattr(kernel, "run", lambda *args, _name=name, grid=None, warmup=False, **kwargs:
                            seen[_name].append((args, kwargs)))
    return seen
