"""Launching a compiled Triton kernel again without Triton's per-call argument binding (the eager step's host time).

`fn[grid](*args)` (`JITFunction.run`) binds every argument, specialises each one (pointer dtype and 16-byte
alignment, integer width, divisibility by 16), hashes that with the options into a key, finds the compiled
kernel, builds launch metadata and only then calls the kernel's launcher. An eager 80-layer step makes ~880
launches; on the H100 machine launching one eager FP8 step took 70 ms of host time through Triton's path and 55
with this one, against 43 ms of GPU work (docs/engine.md, "Host time of an eager step").

`launch(fn, grid, *args, **kwargs)` means `fn[grid](*args, **kwargs)`. The first launch of each argument
signature goes through Triton (which compiles or finds the kernel); its CompiledKernel is kept under a key of our
own that is at least as fine as Triton's specialisation (`arg_key`: every tensor's dtype and alignment, every
integer's width, divisibility and "is one", every descriptor's type, dtype, block and layout, plus the device,
the value of every constexpr and every keyword argument), so a key never maps to a kernel that Triton would not
have chosen. Later launches with that key call the kernel's launcher directly, with the same arguments in the
signature's order and no launch hooks.

Triton's own path is used instead: under TRITON_INTERPRET (the CPU tests), while a launch hook is set (profilers
such as proton read launch metadata), with MLPERF_LLAMA2_FAST_LAUNCH=0 (or false / off / no), without an active
driver, for a callable grid, and for an argument whose type `arg_key` does not know. Tests:
tests/test_launch_cache.py (the key and the launch logic on the CPU; on a GPU, equal bits and tokens both ways).
"""

from __future__ import annotations

import inspect
import os

import torch

ENV = "MLPERF_LLAMA2_FAST_LAUNCH"
_OFF = ("0", "false", "off", "no")
_enabled = (os.environ.get(ENV, "1").strip().lower() not in _OFF
            and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))
MAX_KEPT = 256  # signatures kept per kernel
_kernels: dict[int, dict] = {}  # id(fn) -> {key: (CompiledKernel, values of the parameters after the positional)}
counts = {"fast": 0, "triton": 0}  # launches each way (tests and tools read them)


class _NoKey(Exception):
    """An argument `arg_key` cannot describe: that launch goes through Triton."""


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


def clear() -> None:
    """Forget every kept kernel (tests)."""
    _kernels.clear()


def arg_key(a) -> tuple:
    """A hashable description of one runtime argument, at least as fine as Triton's specialisation of it."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if a is None:
        return (None,)
    t = type(a)
    if t is bool:
        return (bool, a)
    if t is int:
        return (int, a % 16 == 0, a == 1, -2 ** 31 <= a < 2 ** 31, 0 <= a < 2 ** 63)
    if t is float:
        return (float,)
    base = getattr(a, "base", None)
    block = getattr(a, "block_shape", None)
    if isinstance(base, torch.Tensor) and block is not None:  # a host tensor descriptor (triton or gluon)
        return (t, base.dtype, base.data_ptr() % 16 == 0, tuple(block), getattr(a, "layout", None),
                getattr(a, "padding", None), len(a.shape))
    raise _NoKey(t.__name__)


def _tail(fn, n_positional: int, kwargs: dict) -> tuple:
    """Values of the kernel's parameters after the positional ones (keywords, else defaults), in order."""
    out = []
    for name, p in list(fn.signature.parameters.items())[n_positional:]:
        if name in kwargs:
            out.append(kwargs[name])
        elif p.default is not inspect.Parameter.empty:
            out.append(p.default)
        else:
            raise _NoKey(f"no value for {name}")
    return tuple(out)


_rt = None


def _runtime():
    """(Triton's runtime knobs, the active driver), found on the first launch (tests put stand-ins here); None
    where Triton has no active driver (no GPU: kernels whose launches a test records without running them)."""
    global _rt
    if _rt is None:
        from triton import knobs
        from triton.runtime.driver import driver

        try:
            _rt = (knobs.runtime, driver.active)
        except RuntimeError:
            _rt = False
    return _rt or None


def _hooked(hook) -> bool:
    """A launch hook that would run: Triton 3.6 keeps a chain of hooks, empty unless a profiler added one."""
    return hook is not None and (not hasattr(hook, "calls") or bool(hook.calls))


def launch(fn, grid, *args, **kwargs):
    """`fn[grid](*args, **kwargs)`, through the kept kernel where this argument signature was launched before."""
    if not _enabled or callable(grid):
        counts["triton"] += 1
        return fn[grid](*args, **kwargs)
    rt = _runtime()
    if rt is None or _hooked(rt[0].launch_enter_hook) or _hooked(rt[0].launch_exit_hook):
        counts["triton"] += 1
        return fn[grid](*args, **kwargs)
    drv = rt[1]
    device = drv.get_current_device()
    try:
        # a constexpr given positionally is part of the key by value (arg_key would only class it)
        cx = tuple(args[i] for i in getattr(fn, "constexprs", ()) if i < len(args))
        key = (device, tuple(map(arg_key, args)), cx, tuple(kwargs.items()))
        kept = _kernels.setdefault(id(fn), {})
        entry = kept.get(key)
    except (_NoKey, TypeError):  # TypeError: a keyword value that cannot be hashed
        counts["triton"] += 1
        return fn[grid](*args, **kwargs)
    if entry is None:
        counts["triton"] += 1
        kernel = fn[grid](*args, **kwargs)
        if hasattr(kernel, "result"):  # asynchronous compilation
            kernel = kernel.result()
        if len(kept) < MAX_KEPT:  # a bound, should some caller's keys never repeat (a tensor as a keyword)
            try:
                kept[key] = (kernel, _tail(fn, len(args), kwargs))
            except _NoKey:
                pass
        return kernel
    kernel, tail = entry
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    counts["fast"] += 1
    kernel.run(grid[0], g1, g2, drv.get_current_stream(device), kernel.function, kernel.packed_metadata, None, None,
               None, *args, *tail)
    return kernel
