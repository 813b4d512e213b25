"""The device side of programmatic dependent launch (engine/pdl.py): one call at the top of a kernel."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """With PDL: let the next kernel launch, then wait until the kernel before this one has finished and its
    writes are visible. A no-op (nothing emitted) without it."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
