"""Report figures (matplotlib, Agg): accuracy vs sparsity, latency and size relative to the baseline, per-layer
sparsity of every method, and the baselines' learning curves. Error bars: 95 % confidence half-widths over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_prune.names import MASKED  # noqa: E402
from lightning_prune.report.baselines import BASELINE, removed_share  # noqa: E402
from lightning_prune.report.collect import RunResults  # noqa: E402
from lightning_prune.report.controls import identity  # noqa: E402
from lightning_prune.report.stats import Stat  # noqa: E402
from lightning_prune.report.tables import method, task_label  # noqa: E402
from lightning_prune.runs import GRID_SUFFIX  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _laid_out(fig, ax, legend: dict, grid: dict | None = None, **labels):
    """The axes' labels (``ax.set``), grid and legend, then the layout: ``fig``, ready to save."""
    ax.set(**labels)
    if grid is not None:
        ax.grid(**grid)
    ax.legend(**legend)
    fig.tight_layout()
    return fig


def _points(runs: list[RunResults]):
    for run in runs:
        for m in run.data["models"]:
            p, a = m.get("profile") or {}, m.get("accuracy") or {}
            yield run, m.get("variant", "?"), p, a


def _removed(p: dict, dense_params: float | None) -> float | None:
    """Share of parameters removed against the dense baseline (so channel pruning counts too)."""
    removed = removed_share(p, dense_params)
    if removed is not None:
        return max(0.0, float(removed))
    sparsity = p.get("sparsity")
    return float(sparsity) if isinstance(sparsity, (int, float)) else None


def _std(value) -> float:
    """The 95 % confidence half-width over seeds of a merged figure (0 for a single run)."""
    return float(value.ci95) if getattr(value, "n", 1) > 1 else 0.0


def accuracy_series(runs: list[RunResults], reference: dict | None = None) -> dict[str, list[tuple[float, ...]]]:
    """Per method, its points (% removed, top-1, std of each over seeds), sorted by the share removed: a method's
    grid runs join into one curve; variants of one run at the same point (masked, COO, densified) count once."""
    dense = (reference or {}).get("profile", {}).get("nonzero_params")
    series: dict[str, dict[tuple[float, float], tuple[float, ...]]] = {}
    for run, _, p, a in _points(runs):
        x, y = _removed(p, dense), a.get("test_top1")
        if x is not None and isinstance(y, (int, float)):
            xerr = _std(p.get("nonzero_params")) / dense if dense else 0.0
            point = (100 * x, float(y), 100 * xerr, _std(y))
            series.setdefault(method(run), {})[(round(point[0], 2), round(point[1], 2))] = point
    return {label: sorted(found.values()) for label, found in series.items()}


def accuracy_vs_sparsity(runs: list[RunResults], path: Path, reference: dict | None = None) -> Path | None:
    """Test top-1 against the parameters removed: one curve per method, error bars over seeds."""
    dense = (reference or {}).get("profile", {}).get("nonzero_params")
    series = accuracy_series(runs, reference)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    for i, (label, points) in enumerate(series.items()):
        xs, ys, xerr, yerr = zip(*points)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=colours(i), marker=MARKERS[i % len(MARKERS)], markersize=6,
                    capsize=3, linestyle="-" if len(xs) > 1 else "none", lw=0.8, label=label, alpha=0.85)
    return _save(_laid_out(fig, ax, {"fontsize": 8, "loc": "best"}, {"alpha": 0.3}, title="Accuracy vs sparsity",
                           xlabel="parameters removed vs the dense baseline (%)" if dense else "weights pruned (%)",
                           ylabel="test top-1 (%), mean ± 95 % CI over seeds"), path)


def relative_bars(runs: list[RunResults], path: Path, reference: dict | None) -> Path | None:
    """Latency and serialized size of each variant divided by the baseline's."""
    if not reference:
        return None
    ref_p = reference.get("profile") or {}
    rows = []
    for run, variant, p, _ in _points(runs):
        lat, size = p.get("latency_ms"), p.get("model_size_mb")
        values = (lat, size, ref_p.get("latency_ms"), ref_p.get("model_size_mb"))
        if all(isinstance(v, (int, float)) and v > 0 for v in values):
            label = f"{task_label(run, runs)}: {variant}"
            rows.append((label, lat / ref_p["latency_ms"], size / ref_p["model_size_mb"],
                         _std(lat) / ref_p["latency_ms"], _std(size) / ref_p["model_size_mb"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    for shift, i, label in ((-0.2, 1, "latency"), (0.2, 2, "model size")):
        ax.barh([y + shift for y in ys], [r[i] for r in rows], height=0.4, xerr=[r[i + 2] for r in rows], capsize=2,
                label=label)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    return _save(_laid_out(fig, ax, {"fontsize": 8},
                           xlabel="relative to the baseline (1.0 = same); error bars: 95 % CI over seeds"), path)


def sensitivity_curves(curves: dict[str, list[float]], sparsities: list[float], title: str = ""):
    """The 1a sweep: top-1 against the sparsity of the one layer pruned, a line per layer (the caller saves it)."""
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    for i, (name, accs) in enumerate(curves.items()):
        ax.plot(sparsities, accs, marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5,
                color=plt.get_cmap("tab20")(i % 20), label=name)
    ax.set_xlim(min(sparsities) - 0.02, max(sparsities) + 0.02)
    return _laid_out(fig, ax, {"loc": "center left", "bbox_to_anchor": (1.01, 0.5), "fontsize": 8, "title": "layer"},
                     {"alpha": 0.3}, xlabel="sparsity of the pruned layer (fraction of its weights removed)",
                     ylabel="top-1 accuracy (%)", title=title or "Sensitivity: one layer magnitude-pruned at a time")


def sensitivity_figure(run: RunResults, path: Path) -> Path | None:
    """A kept 1a run's sweep drawn again from its results.json (``sweep.curves``); None without one."""
    sweep = run.data.get("sweep") or {}
    title = f"{run.experiment}, seed {run.data.get('seed')}: one layer magnitude-pruned at a time"
    return _save(sensitivity_curves(sweep["curves"], sweep["sparsities"], title), path) if sweep.get("curves") else None


def layer_bars(series: dict[str, dict[str, float]], title: str = "Per-layer sparsity"):
    """Grouped bars: layer on x, sparsity on y, one bar per method side by side (a matplotlib figure)."""
    layers = list(dict.fromkeys(name for values in series.values() for name in values))
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(layers) * max(1, len(series)) ** 0.5), 4))
    width = 0.8 / max(1, len(series))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(xs, [100 * float(values.get(n, 0.0)) for n in layers], width=width, color=colours(i), label=label,
               yerr=[100 * _std(values.get(n, 0.0)) for n in layers], capsize=1.5)
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=8)
    return _laid_out(fig, ax, {"fontsize": 7, "loc": "upper left", "ncol": 2}, {"axis": "y", "alpha": 0.3},
                     ylabel="weights pruned in the layer (%)", ylim=(0, 102), title=title)


def layer_sparsity(runs: list[RunResults], path: Path, title: str) -> Path | None:
    """Per-layer sparsity of each run's pruned model, methods side by side (mean over seeds)."""
    series = {}
    for run in runs:
        entry = next((m for m in run.data["models"] if m.get("variant") == MASKED), None)
        if entry and entry.get("layers"):
            series[task_label(run, runs)] = {r.get("name"): r.get("sparsity", 0.0) for r in entry["layers"]}
    if not series:
        return None
    return _save(layer_bars(series, title), path)


def learning_curves(runs: list[RunResults], path: Path) -> Path | None:
    """Validation top-1 per epoch of the baselines (from the checkpoints they tested), mean ± 95 % CI over seeds."""
    curves = {}
    for run in runs:
        histories = [h for h in run.data.get("histories") or [run.data.get("history")] if h]
        if run.task != BASELINE or not histories:
            continue
        by_epoch: dict[int, list[float]] = {}
        for history in histories:
            for point in history:
                by_epoch.setdefault(int(point["epoch"]), []).append(float(point["val_top1"]))
        curves[run.experiment] = [(e, Stat(v)) for e, v in sorted(by_epoch.items())]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        xs, ys = [e + 1 for e, _ in points], [float(v) for _, v in points]
        err = [_std(v) for _, v in points]
        ax.plot(xs, ys, label=f"{label} (n={max(v.n for _, v in points)})")
        ax.fill_between(xs, [y - e for y, e in zip(ys, err)], [y + e for y, e in zip(ys, err)], alpha=0.2)
    return _save(_laid_out(fig, ax, {"fontsize": 8}, {"alpha": 0.3}, xlabel="epoch",
                           ylabel="validation top-1 (%), mean ± 95 % CI",
                           title="Learning curves of the dense baselines"), path)


def layer_families(runs: list[RunResults]) -> dict[str, list[RunResults]]:
    """The runs whose per-layer sparsities one figure compares: 1a, 1b per schedule, and GraSP in both
    schedules (main runs, no grid)."""
    main = [r for r in runs if not GRID_SUFFIX.search(r.experiment)]
    staged = [r for r in main if r.task in ("grasp", "snip")]
    return {"1a": [r for r in main if r.task == "unstructured" and not r.data.get("lineage")],
            "1b_staged": [r for r in staged if identity(r)["schedule"] == "staged"],
            "1b_oneshot": [r for r in staged if identity(r)["schedule"] == "oneshot"],
            "1b_grasp": [r for r in staged if identity(r)["method"] == "grasp"]}
