"""The GPU's SM clock, board power and clock-event reasons, sampled by `nvidia-smi` while a benchmark runs.

An H100/H200 SXM is held to its board power (700 W) by lowering the SM clock: under a sustained 8-bit GEMM the
clock falls from 1,980 MHz to ~1,200-1,400 (reason SwPowerCap; docs/results/gemm_clocks_*_h100.json), so a rate
measured in a short burst and one measured over minutes differ by the clock. tools/gemm_clocks.py and
tools/bench.py record, beside every figure, the clock the card held while it was measured. Nothing here changes a
clock or a limit (the device README: measure the card as you find it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time

# nvidia-smi's clocks_event_reasons bits (nvml.h, nvmlClocksEventReason*)
REASONS = {0x1: "GpuIdle", 0x2: "ApplicationsClocksSetting", 0x4: "SwPowerCap", 0x8: "HwSlowdown",
           0x10: "SyncBoost", 0x20: "SwThermalSlowdown", 0x40: "HwThermalSlowdown", 0x80: "HwPowerBrakeSlowdown",
           0x100: "DisplayClockSetting"}
SPEC_MHZ = 1830.0  # the SM clock behind the 1,979 TOPS dense 8-bit peak (132 SMs x 8,192 ops a clock)
# enforced.power.limit: the board power the card is held to (700 W for an H100/H200 SXM as shipped; systems with
# a custom thermal solution run 1,000 W, e.g. the 1x H200 anchor of PERF.md), so a figure says which card made it
QUERY = ("clocks.sm", "power.draw", "temperature.gpu", "clocks_event_reasons.active", "enforced.power.limit")


def reason_names(mask: int) -> list[str]:
    """0x4 -> ['SwPowerCap']; bits nvml does not name come back as hex."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    return names + ([hex(rest)] if rest else [])


def parse_sample(line: str) -> dict | None:
    """One `nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active,
    enforced.power.limit --format=csv,noheader,nounits` line -> {'mhz', 'watts', 'celsius', 'reasons',
    'watts_limit'}; None for a line that is not one (a blank line, '[N/A]' in the first four fields, an error
    message). A limit the card does not report ('[N/A]') is None."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(QUERY):
        return None
    try:
        sample = {"mhz": float(parts[0]), "watts": float(parts[1]), "celsius": float(parts[2]),
                  "reasons": int(parts[3], 16) if parts[3].lower().startswith("0x") else int(parts[3])}
    except ValueError:
        return None
    try:
        sample["watts_limit"] = float(parts[4])
    except ValueError:
        sample["watts_limit"] = None
    return sample


def clock_stats(samples: list[dict]) -> dict:
    """Samples of one window -> median / min / max SM clock, median power, the power limit (the largest reported;
    None where none was), hottest temperature, every reason seen (empty dict without samples)."""
    if not samples:
        return {}
    mask = 0
    for s in samples:
        mask |= s["reasons"]
    limits = [s["watts_limit"] for s in samples if s.get("watts_limit") is not None]
    return {"samples": len(samples), "mhz_median": statistics.median(s["mhz"] for s in samples),
            "mhz_min": min(s["mhz"] for s in samples), "mhz_max": max(s["mhz"] for s in samples),
            "watts_median": statistics.median(s["watts"] for s in samples),
            "watts_limit": max(limits) if limits else None,
            "celsius_max": max(s["celsius"] for s in samples), "reasons": reason_names(mask)}


def stats_line(stats: dict) -> str:
    """One line for a table: 'SM clock median 1,648 MHz (1,455-1,980), power median 637 W of a 700 W limit,
    SwPowerCap' ('' without samples)."""
    if not stats:
        return ""
    limit = f" of a {stats['watts_limit']:.0f} W limit" if stats.get("watts_limit") is not None else ""
    return (f"SM clock median {stats['mhz_median']:,.0f} MHz ({stats['mhz_min']:,.0f}-{stats['mhz_max']:,.0f}), "
            f"power median {stats['watts_median']:.0f} W{limit}, "
            f"{', '.join(stats['reasons']) or 'no clock-event reason'}")


def nvidia_smi_id(cuda_index: int = 0, visible: str | None = None) -> str:
    """The `nvidia-smi -i` id of CUDA device `cuda_index` as this process numbers it: CUDA_VISIBLE_DEVICES
    (`visible`; default the environment's) renumbers the GPUs, nvidia-smi does not. Its entry may be an index or a
    UUID (both accepted by -i)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if not visible or not visible.strip():
        return str(cuda_index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return entries[cuda_index] if cuda_index < len(entries) else str(cuda_index)


class Sampler:
    """nvidia-smi in a loop (-lms), each line stamped with the host's monotonic clock on arrival. `start()` returns
    None where there is no nvidia-smi, so a caller simply records nothing."""

    def __init__(self, interval_ms: int = 200, index: int = 0):
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(["nvidia-smi", "-i", nvidia_smi_id(index), "--query-gpu=" + ",".join(QUERY),
                                      "--format=csv,noheader,nounits", f"-lms={interval_ms}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, interval_ms: int = 200, index: int = 0) -> "Sampler | None":
        """`index`: the CUDA device as this process numbers it (torch's cuda:N)."""
        if shutil.which("nvidia-smi") is None:
            return None
        try:
            return cls(interval_ms, index)
        except OSError:
            return None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def between(self, t0: float, t1: float) -> list[dict]:
        """The samples that arrived between two time.monotonic() readings."""
        return [s for t, line in list(self.lines) if t0 <= t <= t1 and (s := parse_sample(line)) is not None]

    def close(self) -> str:
        """Stop nvidia-smi; -> the first line it printed that is not a sample ('' when all were)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        bad = [line.strip() for _, line in self.lines if line.strip() and parse_sample(line) is None]
        return bad[0] if bad else ""
