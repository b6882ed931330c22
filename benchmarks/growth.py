"""How each step's time grows with the model's MACs (power-law fit over widths), the log-log plot,
and the projection to a CIFAR-10-sized run (50,000 training images)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.steps import PER_IMAGE_STEPS

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


def fit(widths: dict[str, dict]) -> dict[str, dict]:
    """Per step: time = a * MACs^b by least squares on log-log (MACs: one image through the dense model)."""
    by_step: dict[str, list[tuple[float, float, float]]] = {}
    for key, record in widths.items():
        for name, step in record["steps"].items():
            if step.get("ok") and step.get("wall_s"):
                by_step.setdefault(name, []).append((record["macs"], step["wall_s"], float(key)))
    fits = {}
    for name, points in by_step.items():
        points.sort()
        macs, seconds, ws = (np.array(v, dtype=float) for v in zip(*points))
        entry = {"widths": ws.tolist(), "macs": macs.astype(int).tolist(), "seconds": seconds.tolist()}
        if len(points) >= 2:
            b, log_a = np.polyfit(np.log(macs), np.log(seconds), 1)
            entry |= {"exponent": float(b), "coefficient": float(math.exp(log_a))}
        fits[name] = entry
    return fits


def predict(entry: dict, macs: float) -> float | None:
    if "exponent" not in entry:
        return None
    return entry["coefficient"] * macs ** entry["exponent"]


def project(record: dict, fits: dict[str, dict] | None = None, full_macs: float | None = None) -> dict[str, dict]:
    """Seconds each step would take on full CIFAR-10 at this record's width.

    Per-image steps scale by images (sweep: 50,000 images; training: one epoch of 50,000; task 0:
    10,000 test + 50,000 training images for accuracy, the profile itself fixed); the others use
    fixed-size calibration sets or batches, so their measured time stands. With ``fits`` and
    ``full_macs``, a width that was not measured is first extrapolated along the fitted power law.
    """
    out = {}
    for name, step in record["steps"].items():
        if not step.get("ok"):
            continue
        seconds = step["wall_s"]
        if fits is not None and full_macs is not None and name in fits:
            predicted = predict(fits[name], full_macs)
            scale = predicted / seconds if predicted else 1.0
        else:
            scale = 1.0
        phases = {k: v["wall_s"] * scale for k, v in step["phases"].items()}
        images = step["work"].get("images") or 0
        if name == "task0_profile":
            n_eval = step["work"].get("eval_images") or 1
            per_eval = (phases.get("test_accuracy", 0) + phases.get("train_accuracy", 0)) / n_eval
            t = per_eval * (CIFAR10_TRAIN + CIFAR10_TEST) + phases.get("profile", 0)
        elif name in PER_IMAGE_STEPS and images:
            t = seconds * scale * CIFAR10_TRAIN / images
        else:
            t = seconds * scale
        out[name] = {"seconds": t, "scales_with_images": name in PER_IMAGE_STEPS,
                     "basis": PER_IMAGE_STEPS.get(name, "fixed size (calibration set or batches), as measured")}
    return out


def plot(fits: dict[str, dict], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    colors = plt.get_cmap("tab20")
    markers = "osD^v<>phX*"
    for i, (name, entry) in enumerate(sorted(fits.items(), key=lambda kv: -max(kv[1]["seconds"]))):
        label = name + (f"  (t ~ MACs^{entry['exponent']:.2f})" if "exponent" in entry else "")
        ax.plot(entry["macs"], entry["seconds"], marker=markers[i % len(markers)], color=colors(i % 20),
                linewidth=1.4, markersize=5, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs of one 32x32 image through the dense VGG16-BN (width 0.25, 0.5, 1.0)")
    ax.set_ylabel("wall time of the step (s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
