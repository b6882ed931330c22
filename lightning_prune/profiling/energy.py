"""Energy per batch with pyJoules: RAPL (CPU package, DRAM) and NVML (GPU); an unreadable domain is
``None`` with the reason (nothing is estimated)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

RAPL_DIR = "/sys/class/powercap/intel-rapl"


def _rapl_domains() -> tuple[list, str | None]:
    if not os.path.isdir(RAPL_DIR):
        return [], f"no RAPL interface ({RAPL_DIR} missing: a VM, container or non-Intel CPU)"
    from pyJoules.device.rapl_device import RaplDevice

    try:
        domains = RaplDevice.available_package_domains() + RaplDevice.available_dram_domains()
    except Exception as err:  # noqa: BLE001 - pyJoules raises several types for one cause
        return [], f"RAPL not readable ({type(err).__name__}: {err})"
    for d in domains:  # readable only by root on recent kernels
        path = f"{RAPL_DIR}/intel-rapl:{d.socket}/energy_uj"
        if not os.access(path, os.R_OK):
            return [], f"RAPL counters not readable ({path}: permission denied)"
    return domains, None


def _gpu_domains(device_index: int | None) -> tuple[list, str | None]:
    if device_index is None:
        return [], "model runs on the CPU"
    logging.getLogger().disabled, previous = True, logging.getLogger().disabled  # pyJoules warns at import
    try:
        from pyJoules.device.nvidia_device import NvidiaGPUDevice, NvidiaGPUDomain
    finally:
        logging.getLogger().disabled = previous
    try:
        NvidiaGPUDevice.available_domains()
        return [NvidiaGPUDomain(device_index)], None
    except Exception as err:  # noqa: BLE001
        return [], f"NVML not available ({type(err).__name__}: {err})"


def measure_energy(fn: Callable[[], None], batches: int, device_index: int | None = None) -> tuple[dict, str | None]:
    """Energy in mJ per call of ``fn`` for the cpu, dram and gpu domains, plus a note for nulls."""
    result: dict[str, float | None] = {"cpu": None, "dram": None, "gpu": None}
    notes: dict[str, str] = {}
    cpu_domains, cpu_note = _rapl_domains()
    gpu_domains, gpu_note = _gpu_domains(device_index)
    if cpu_note:
        notes["cpu"] = notes["dram"] = cpu_note
    if gpu_note:
        notes["gpu"] = gpu_note
    domains = cpu_domains + gpu_domains
    if domains:
        from pyJoules.device import DeviceFactory
        from pyJoules.energy_meter import EnergyMeter

        try:
            meter = EnergyMeter(DeviceFactory.create_devices(domains))
            meter.start()
            for _ in range(batches):
                fn()
            meter.stop()
            sample = meter.get_trace()[0]
        except Exception as err:  # noqa: BLE001
            reason = f"pyJoules failed ({type(err).__name__}: {err})"
            return result, "; ".join(f"{k}: {reason}" for k in result)
        units = {"package": ("cpu", 1e3), "dram": ("dram", 1e3), "nvidia_gpu": ("gpu", 1.0)}  # uJ, uJ, mJ
        for name, value in sample.energy.items():
            for prefix, (domain, per_mj) in units.items():
                if name.startswith(prefix):
                    result[domain] = (result[domain] or 0.0) + value / per_mj / batches
        if cpu_domains and result["dram"] is None:
            notes["dram"] = "no RAPL DRAM domain on this CPU"
    by_reason: dict[str, list[str]] = {}
    for domain, reason in notes.items():
        if result.get(domain) is None:
            by_reason.setdefault(reason, []).append(domain)
    note = "; ".join(f"{', '.join(domains)}: {reason}" for reason, domains in by_reason.items()) or None
    return result, note
