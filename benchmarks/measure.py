"""Wall time, CPU time, peak memory and MACs of one benchmark step.

Peak CPU memory is the kernel's resident-set high-water mark of this process (``VmHWM`` in
``/proc/self/status``), reset to the current RSS just before the timed work (writing ``5`` to
``/proc/self/clear_refs``, Linux >= 4.0). In a fresh process per step (the default) the figure
belongs to that step alone; ``ru_maxrss`` would not do, since it survives ``exec`` and would carry
the parent's peak. On CUDA the peak is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``.
"""

from __future__ import annotations

import gc
import resource
import time
from dataclasses import dataclass, field

import torch
from torch import nn

STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"


def _status_mb(key: str) -> float | None:
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident memory of this process, MB."""
    return _status_mb("VmRSS")


def hwm_mb() -> float | None:
    """Peak resident memory of this process since exec or the last :func:`reset_hwm`, MB."""
    value = _status_mb("VmHWM")
    if value is None:  # not Linux: the lifetime peak is the best there is
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return value


def reset_hwm() -> bool:
    """Set the peak-RSS mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Phase:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    cuda_peak_mb: float | None = None


@dataclass
class Meter:
    """Times named phases of one step; ``with meter.phase("name"):`` around the work to count."""

    device: torch.device
    phases: dict[str, Phase] = field(default_factory=dict)
    hwm_reset: bool = True
    setup_peak_rss_mb: float | None = None  # peak before the first phase: imports, data, model
    collect: bool = True  # gc.collect() before the first phase (slow in a process holding many objects)

    def phase(self, name: str) -> _PhaseContext:
        return _PhaseContext(self, name)

    def summary(self) -> dict:
        peaks = [p.peak_rss_mb for p in self.phases.values() if p.peak_rss_mb is not None]
        cuda = [p.cuda_peak_mb for p in self.phases.values() if p.cuda_peak_mb is not None]
        before = [p.rss_before_mb for p in self.phases.values() if p.rss_before_mb is not None]
        process = [v for v in (self.setup_peak_rss_mb, *peaks) if v is not None]
        return {
            "wall_s": sum(p.wall_s for p in self.phases.values()),
            "process_peak_rss_mb": max(process) if process else None,
            "cpu_s": sum(p.cpu_s for p in self.phases.values()),
            "step_peak_rss_mb": max(peaks) if peaks else None,
            "rss_before_mb": min(before) if before else None,
            "cuda_peak_mb": max(cuda) if cuda else None,
            "phases": {
                name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(p).items()}
                for name, p in self.phases.items()
            },
        }


class _PhaseContext:
    def __init__(self, meter: Meter, name: str) -> None:
        self.meter, self.name = meter, name

    def __enter__(self) -> Phase:
        if self.meter.collect and not self.meter.phases:
            gc.collect()
        device = self.meter.device
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if self.meter.setup_peak_rss_mb is None:
            self.meter.setup_peak_rss_mb = hwm_mb()
        self.meter.hwm_reset = reset_hwm() and self.meter.hwm_reset
        self.phase = self.meter.phases.setdefault(self.name, Phase())
        self.phase.rss_before_mb = rss_mb()
        self.cpu = time.process_time()
        self.start = time.perf_counter()
        return self.phase

    def __exit__(self, *exc) -> None:
        _sync(self.meter.device)
        self.phase.wall_s += time.perf_counter() - self.start
        self.phase.cpu_s += time.process_time() - self.cpu
        peak = hwm_mb()
        if peak is not None:
            self.phase.peak_rss_mb = max(peak, self.phase.peak_rss_mb or 0.0)
        if self.meter.device.type == "cuda":
            cuda = torch.cuda.max_memory_allocated(self.meter.device) / 1e6
            self.phase.cuda_peak_mb = max(cuda, self.phase.cuda_peak_mb or 0.0)


def layer_macs(model: nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32)) -> dict[str, int]:
    """Multiply-accumulates of every conv and linear layer for one image, by module name, in order.

    Conv: output elements x (input channels / groups) x kernel area; linear: in x out features.
    """
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, args, out: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs[name] = out[0].numel() * k
            else:
                macs[name] = module.in_features * module.out_features
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def suffix_macs(per_layer: dict[str, int]) -> dict[str, int]:
    """MACs from each layer to the end of the network (what re-running from that layer costs)."""
    out, total = {}, 0
    for name in reversed(list(per_layer)):
        total += per_layer[name]
        out[name] = total
    return dict(reversed(list(out.items())))
