"""Where the host's time goes when the engine launches a step eagerly (tools/profile_step.py --host-profile).

An eager step of the 70B at all 80 layers costs 80-180 ms of host time on the GPU machine against ~30-110 ms of
GPU work (docs/engine.md, "Steps with prompt chunks through the decode graphs"), ~1-2 ms a layer for ~12 kernel
launches. This times `launch` (queue a step, do not wait for it) without a profiler, then once more under
cProfile, and lists the functions that take the host's time per step: ours, torch's, Triton's launcher.
cProfile slows Python-heavy code down, so the shares, not its absolute times, are what to read.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from typing import Callable


def host_profile(launch: Callable[[], object], reps: int, sync: Callable[[], None], top: int = 30) -> dict:
    """`launch()` queues one step and returns at once; `sync()` waits for everything queued. Returns
    {"launch_ms": host ms a step without the profiler (median of `reps`), "profiled_ms": the same under cProfile,
    "functions": the `top` functions by own time per step: name, calls a step, own and cumulative µs a step}."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    launch()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        launch()
        times.append(time.perf_counter() - t0)
        sync()  # the next launch starts on an idle queue: its host time is not stretched by back-pressure
    profiler = cProfile.Profile()
    profiled_s = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        profiler.enable()
        launch()
        profiler.disable()
        profiled_s += time.perf_counter() - t0  # the launch under the profiler, not the wait that follows
        sync()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, calls, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short(filename)}:{line}({name})", "calls_per_step": calls / reps,
                     "own_us_per_step": own * 1e6 / reps, "cum_us_per_step": cum * 1e6 / reps})
    rows.sort(key=lambda r: -r["own_us_per_step"])
    total_own = sum(r["own_us_per_step"] for r in rows)
    times.sort()
    return {"reps": reps, "launch_ms": times[len(times) // 2] * 1e3, "profiled_ms": profiled_s * 1e3 / reps,
            "profiled_own_us_per_step": total_own, "functions": rows[:top]}


def launch_ab(launch: Callable[[], object], reps: int, sync: Callable[[], None],
              switch: Callable[[bool], None]) -> dict:
    """Launch time with a switch off and on, interleaved (off, on, off, on, ...) in one process, so the two
    medians share the machine's state: {"off_ms", "on_ms"} (median of `reps` each). `switch(flag)` sets it; the
    switch is left on. One warm-up launch each way first (the first launch of a way compiles or looks up)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    times: dict = {False: [], True: []}
    for r in range(reps + 1):
        for flag in (False, True):
            switch(flag)
            t0 = time.perf_counter()
            launch()
            if r:
                times[flag].append(time.perf_counter() - t0)
            sync()
    switch(True)
    med = {flag: sorted(ts)[len(ts) // 2] * 1e3 for flag, ts in times.items()}
    return {"reps": reps, "off_ms": med[False], "on_ms": med[True]}


def _short(filename: str) -> str:
    """The path from the package or the library root on, so the table stays readable."""
    if "mlperf_llama2/" in filename:
        return filename[filename.index("mlperf_llama2/"):]
    for marker in ("site-packages/", "dist-packages/"):
        if marker in filename:
            return filename[filename.index(marker) + len(marker):]
    return filename


def lines(profile: dict, title: str) -> list[str]:
    """A table of `host_profile`'s result."""
    out = [f"host time of one {title}: {profile['launch_ms']:.2f} ms a step launched (median of {profile['reps']}; "
           f"{profile['profiled_ms']:.2f} under cProfile), top functions by own time per step:",
           f"  {'own us':>9} {'cum us':>9} {'calls':>7}  function"]
    out += [f"  {r['own_us_per_step']:9.1f} {r['cum_us_per_step']:9.1f} {r['calls_per_step']:7.1f}  {r['function']}"
            for r in profile["functions"]]
    return out
