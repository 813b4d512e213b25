"""Programmatic dependent launch (Hopper, sm_90+): an experiment, off unless `EngineConfig.pdl` turns it on.

A kernel launched with PDL may start while the kernel before it in the stream is still finishing: its prologue
(and, in the 8-bit GEMM, the first weight tiles, which no earlier kernel writes) overlaps the other's tail.
Every kernel launched this way waits (`griddepcontrol.wait`) before it reads anything an earlier kernel wrote or
writes anything, and only then lets its own dependents launch (`griddepcontrol.launch_dependents`); kernels
without the switch (torch's, cuBLAS) keep ordinary stream order. The engine's decode step is ~12 kernels a layer
of 25-90 us at small batch (docs/engine.md, "What caps Interactive"), so their launch gaps and ramp-ups are a
visible share. Measured on an H100 (docs/engine.md, "Programmatic dependent launch"): the CUDA-graph decode step
is 2-6% slower with it, so it stays off and reachable from the benchmark tools only.

This module holds the switch only (no torch or triton import), for the launch sites to read.
"""

from __future__ import annotations

_enabled = False


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


def launch_options() -> dict:
    """Extra launch keywords of a Triton / Gluon kernel: PDL's launch attribute when the switch is on."""
    return {"launch_pdl": True} if _enabled else {}
