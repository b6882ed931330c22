"""Report figures (matplotlib, Agg): accuracy vs sparsity, latency and size relative to the baseline."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_prune.report.collect import Run  # noqa: E402


def _points(runs: list[Run]):
    for run in runs:
        for m in run.data["models"]:
            p, a = m.get("profile") or {}, m.get("accuracy") or {}
            yield run, m.get("variant", "?"), p, a


def accuracy_vs_sparsity(runs: list[Run], path: Path) -> Path | None:
    """Test top-1 against weight sparsity (or parameter reduction) for every variant."""
    pts = [
        (f"{run.task}: {variant}", p["sparsity"], a["test_top1"])
        for run, variant, p, a in _points(runs)
        if isinstance(p.get("sparsity"), (int, float)) and isinstance(a.get("test_top1"), (int, float))
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, x, y in pts:
        ax.scatter(100 * x, y, s=40, label=label)
    ax.set_xlabel("weights pruned (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def relative_bars(runs: list[Run], path: Path, reference: dict | None) -> Path | None:
    """Latency and serialized size of each variant divided by the baseline's."""
    if not reference:
        return None
    ref_p = reference.get("profile") or {}
    rows = []
    for run, variant, p, _ in _points(runs):
        lat, size = p.get("latency_ms"), p.get("model_size_mb")
        values = (lat, size, ref_p.get("latency_ms"), ref_p.get("model_size_mb"))
        if all(isinstance(v, (int, float)) and v > 0 for v in values):
            rows.append((f"{run.task}: {variant}", lat / ref_p["latency_ms"], size / ref_p["model_size_mb"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r[1] for r in rows], height=0.4, label="latency")
    ax.barh([y + 0.2 for y in ys], [r[2] for r in rows], height=0.4, label="model size")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("relative to the baseline (1.0 = same)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
