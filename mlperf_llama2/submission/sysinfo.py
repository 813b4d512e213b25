"""The submission's system description (`systems/<system>.json`): what this machine can tell about itself
(CPU, memory, storage, OS, NICs, GPUs via nvidia-smi, driver and framework versions), then the flags.

Facts only, read from /proc, /sys, /etc/os-release and nvidia-smi: a field the machine cannot tell
(cooling, memory configuration, networking) stays empty unless `--system-field KEY=VALUE` fills it,
and `empty_required` names those the checker rejects when empty. On a machine without GPUs the
accelerator fields say so ("0", "N/A").
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Optional

from mlperf_llama2.submission.layout import SYSTEM_FIELDS, SYSTEM_FIELDS_MEANINGFUL

NO_ACCELERATOR = "N/A"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _run(cmd: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.0f} GB"


def cpu_fields(cpuinfo: str) -> dict[str, str]:
    """Model, sockets, cores per socket, frequency from /proc/cpuinfo's text."""
    def values(key: str) -> list[str]:
        return [m.group(1).strip() for m in re.finditer(rf"^{key}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)]

    model = next(iter(values("model name")), "") or platform.processor()
    sockets = len(set(values("physical id"))) or 1
    cores = next(iter(values("cpu cores")), "") or str((os.cpu_count() or 0) // sockets or "")
    mhz = next(iter(values("cpu MHz")), "")
    return {"host_processor_model_name": model, "host_processors_per_node": str(sockets),
            "host_processor_core_count": cores,
            "host_processor_frequency": f"{float(mhz):.0f} MHz" if mhz else ""}


def cache_summary(cpu_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> str:
    parts = []
    for index in sorted(os.listdir(cpu_dir)) if os.path.isdir(cpu_dir) else ():
        level = _read(os.path.join(cpu_dir, index, "level")).strip()
        kind = _read(os.path.join(cpu_dir, index, "type")).strip()
        size = _read(os.path.join(cpu_dir, index, "size")).strip()
        if level and size:
            parts.append(f"L{level}{'' if kind == 'Unified' else kind[0].lower()} {size}")
    return ", ".join(parts)


def memory_capacity(meminfo: str) -> str:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.MULTILINE)
    return _gb(int(m.group(1)) * 1024) if m else ""


def storage_type(block_dir: str = "/sys/block") -> str:
    kinds = set()
    for dev in os.listdir(block_dir) if os.path.isdir(block_dir) else ():
        if dev.startswith(("loop", "ram", "zram", "dm-", "sr", "md")):
            continue
        rotational = _read(os.path.join(block_dir, dev, "queue", "rotational")).strip()
        kinds.add("NVMe SSD" if dev.startswith("nvme") else "HDD" if rotational == "1" else "SSD")
    return ", ".join(sorted(kinds))


def network_card_count(net_dir: str = "/sys/class/net") -> str:
    """Physical NICs: interfaces backed by a device (not lo, bridges, veths)."""
    names = os.listdir(net_dir) if os.path.isdir(net_dir) else []
    return str(sum(os.path.exists(os.path.join(net_dir, n, "device")) for n in names))


def operating_system(os_release: str) -> str:
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release, re.MULTILINE)
    return f"{m.group(1) if m else platform.system()} (kernel {platform.release()})"


def gpu_fields(smi_csv: Optional[str]) -> dict[str, str]:
    """Accelerator fields from `nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,
    pcie.link.gen.max,pcie.link.width.max --format=csv,noheader,nounits`; no GPU gives "0" / N/A."""
    rows = [[c.strip() for c in line.split(",")] for line in (smi_csv or "").splitlines() if line.strip()]
    if not rows:
        return {"accelerators_per_node": "0", "accelerator_model_name": NO_ACCELERATOR,
                "accelerator_memory_capacity": NO_ACCELERATOR, "accelerator_host_interconnect": NO_ACCELERATOR,
                "accelerator_interconnect": NO_ACCELERATOR, "accelerator_memory_configuration": NO_ACCELERATOR,
                "accelerator_frequency": NO_ACCELERATOR, "accelerator_interconnect_topology": NO_ACCELERATOR,
                "accelerator_on-chip_memories": NO_ACCELERATOR}
    name, memory_mib, _, clock, gen, width = (rows[0] + [""] * 6)[:6]
    fields = {"accelerators_per_node": str(len(rows)), "accelerator_model_name": name,
              "accelerator_memory_capacity": f"{float(memory_mib) / 1024:.0f} GB" if memory_mib else "",
              "accelerator_frequency": f"{clock} MHz" if clock else "",
              "accelerator_host_interconnect": f"PCIe Gen{gen} x{width}" if gen and width else ""}
    if len(rows) == 1:
        fields.update(accelerator_interconnect=NO_ACCELERATOR, accelerator_interconnect_topology=NO_ACCELERATOR)
    return fields


def software_fields(smi_csv: Optional[str]) -> dict[str, str]:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    driver = (smi_csv or "").split(",")[2].strip() if smi_csv and smi_csv.count(",") >= 2 else ""
    cuda = ""
    try:
        import torch

        cuda = torch.version.cuda or ""
    except ImportError:
        pass
    stack = [f"Python {platform.python_version()}", f"transformers {version('transformers')}",
             f"mlcommons-loadgen {version('mlcommons-loadgen')}"]
    stack += [f"CUDA {cuda}"] if cuda else []
    stack += [f"NVIDIA driver {driver}"] if driver else []
    return {"framework": f"PyTorch {version('torch')}, mlperf_llama2", "other_software_stack": ", ".join(stack)}


def machine_fields() -> dict[str, str]:
    """Every system field this machine can fill about itself."""
    smi = None
    if shutil.which("nvidia-smi"):
        smi = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,pcie.link.gen.max,"
                    "pcie.link.width.max", "--format=csv,noheader,nounits"])
    fields = cpu_fields(_read("/proc/cpuinfo"))
    fields.update(host_processor_caches=cache_summary(), host_memory_capacity=memory_capacity(_read("/proc/meminfo")),
                  host_storage_capacity=_gb(shutil.disk_usage("/").total), host_storage_type=storage_type(),
                  host_network_card_count=network_card_count(), operating_system=operating_system(
                      _read("/etc/os-release")))
    fields.update(gpu_fields(smi))
    fields.update(software_fields(smi))
    return fields


def system_description(division: str, submitter: str, system: str, status: Optional[str], system_type: str,
                       overrides: dict[str, str], machine: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The description of a new system: every required key, machine facts, then flags and overrides."""
    fields = dict.fromkeys(SYSTEM_FIELDS, "")
    fields.update(machine if machine is not None else machine_fields())
    fields.update(division=division, submitter=submitter, system_name=system, number_of_nodes="1",
                  status=status or "", system_type=system_type)
    fields.update(overrides)
    return fields


def empty_required(system: dict) -> list[str]:
    """The keys the checker requires non-empty that are missing or empty."""
    return [k for k in SYSTEM_FIELDS_MEANINGFUL if not str(system.get(k, "")).strip()]
