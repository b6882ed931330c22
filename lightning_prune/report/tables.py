"""Markdown tables of the report, tolerant of runs with missing fields."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_prune.names import DENSE, MASKED, NARROW
from lightning_prune.profiling.runtime import SPARSE_MARKERS
from lightning_prune.report.baselines import BASELINE, dense_params, drop_value, reference_top1, removed_share
from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import Stat, is_number

MISSING = "—"
COLUMNS = ("task", "variant", "size (MB)", "sparsity (within the model)", "params removed (vs dense)",
           "params non-zero", "MMACs", "latency (ms/batch)", "peak mem (MB)", "avg mem (MB)", "energy (mJ/batch)",
           "test top-1", "test top-5", "train top-1", "train top-5", "top-1 drop (points)")


def num(value, fmt: str = "{:.2f}") -> str:
    """A figure, or, merged over seeds, mean ± the 95 % confidence half-width (Student t) and n."""
    if not is_number(value):
        return MISSING
    n = getattr(value, "n", 1)
    if n > 1:
        fmt = "{:,.0f}" if fmt == "{:,}" else fmt  # a mean count is not an integer
        return f"{fmt.format(float(value))} ± {fmt.format(value.ci95).lstrip()} (n={n})"
    return fmt.format(value)


def energy(profile: dict) -> str:
    values = profile.get("energy_mj")
    if not isinstance(values, dict):
        return MISSING
    parts = [f"{k} {v:.1f}" for k, v in values.items() if isinstance(v, (int, float))]
    return ", ".join(parts) if parts else "n/a"


def scaled(value, factor: float):
    """``value * factor``, keeping a merged figure's per-seed values."""
    if not is_number(value):
        return None
    values = getattr(value, "values", None)
    return Stat([v * factor for v in values]) if values else value * factor


def row(run: RunResults, model: dict, reference: float | None, label: str | None = None,
        dense_params: float | None = None) -> list[str]:
    """One results-table row; ``dense_params`` (the unpruned model's parameter count) gives the removed share."""
    p, a = model.get("profile") or {}, model.get("accuracy") or {}
    latency = num(p.get("latency_ms"), "{:.1f}")
    merged = getattr(p.get("latency_ms"), "n", 1) > 1  # the spread shown is over seeds, not batches
    if isinstance(p.get("latency_ms_std"), (int, float)) and latency != MISSING and not merged:
        latency += f" (sd {p['latency_ms_std']:.1f})"  # "±" is kept for 95 % intervals over seeds
    if isinstance(p.get("batch_size"), (int, float)) and latency != MISSING:
        latency += f" (bs {int(p['batch_size'])})"
    peak = num(p.get("peak_memory_mb"), "{:.1f}")
    if peak != MISSING and p.get("memory_device"):
        peak += f" {p['memory_device']}"
    return [label or run.task, str(model.get("variant", MISSING)), num(p.get("model_size_mb")),
            num(p.get("sparsity"), "{:.1%}"), num(removed_share(p, dense_params), "{:.1%}"),
            num(p.get("nonzero_params"), "{:,}"), num(scaled(p.get("macs"), 1e-6), "{:.1f}"), latency, peak,
            num(p.get("avg_memory_mb"), "{:.1f}"), energy(p),
            *(num(a.get(key)) for key in ("test_top1", "test_top5", "train_top1", "train_top5")),
            num(drop_value(reference, a.get("test_top1")))]


def markdown(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def method(run: RunResults) -> str:
    """The task or 1b method, with the setting a control changes: ``unstructured (global)``, ``grasp (one-shot)``,
    ``random as grasp``, ``channel l1 (no LS)``; the defaults (sensitivity, staged, LASSO with LS) add nothing."""
    p = run.data.get("pruning") or {}
    name = str((run.data.get("schedule") or {}).get("method") or run.task)
    if run.task == "unstructured" and p.get("allocation", "sensitivity") != "sensitivity":
        name += f" ({p['allocation']})"
    if name == "random":
        name = f"random as {p.get('copies') or '?'}"
    if p.get("schedule") == "oneshot":
        name += " (one-shot)"
    if run.task == "channel":
        name += "" if p.get("method", "lasso") == "lasso" else f" {p['method']}"
        name += " (no LS)" if p.get("reconstruct") is False else ""
    earlier = [str(step.get("task")) for step in run.data.get("lineage") or [] if isinstance(step, dict)]
    return " → ".join([*earlier, name])  # a chain: channel → unstructured


def task_label(run: RunResults, runs: list[RunResults]) -> str:
    """The task (or method), with the experiment name when several shown runs share it."""
    shared = sum(method(r) == method(run) for r in runs) > 1
    return f"{method(run)} ({run.experiment})" if shared else method(run)


def results_table(runs: list[RunResults], references: Sequence[str] = ()) -> str:
    """One row per variant; the drop is against the run's own dense model, else the baseline run."""
    rows = [row(run, m, reference_top1(run, runs, references), task_label(run, runs),
                dense_params(run, runs, references)) for run in runs for m in run.data["models"]]
    return markdown(COLUMNS, rows)


def schedule_table(runs: list[RunResults]) -> str | None:
    """Task 1b: when each stage fired and why (accuracy trigger or fallback epoch), and what it removed."""
    rows = []
    for run in runs:
        for event in (run.data.get("schedule") or {}).get("stages") or []:
            d = event.get("diagnostics") or {}
            val = event.get("val_top1")
            rows.append([
                task_label(run, runs), str(event.get("stage", MISSING)),
                num(event.get("epoch"), "{:.1f}" if getattr(event.get("epoch"), "n", 1) > 1 else "{:.0f}"),
                f"{event.get('reason', MISSING)} (trigger {num(event.get('trigger_top1'), '{:g}')} %, "
                f"fallback epoch {event.get('fallback_epoch', MISSING)})",
                num(val, "{:.1f}") if val is not None else "n/a", num(event.get("sparsity"), "{:.1%}"),
                num(d.get("removed"), "{:.1%}"), num(d.get("top_removed"), "{:.1%}"),
                num(d.get("filter_sum_ratio"), "{:.3f}")])
    header = ["method", "stage", "epoch", "fired by", "val top-1 before", "sparsity after",
              "kept weights removed", "top-10% magnitude removed", "filter |sum| / sum |score|"]
    return markdown(header, rows) if rows else None


def layer_table(runs: list[RunResults]) -> str | None:
    """Per-layer sparsity (%) or channels kept, one column per pruned variant (equal neighbours share one)."""
    columns: list[tuple[str, dict[str, str]]] = []
    order: dict[str, None] = {}
    for run in runs:
        for m in run.data["models"]:
            layers = m.get("layers")
            if not layers or m.get("variant") == DENSE or run.task == BASELINE:
                continue
            cells = {}
            for layer in layers:
                name = layer.get("name", "?")
                order.setdefault(name)
                cells[name] = num(layer.get("sparsity"), "{:.0%}")
                kept = layer.get("out_channels", layer.get("channels"))
                if isinstance(kept, int) and kept != layer.get("dense_out_channels", kept):
                    cells[name] += f", {kept}/{layer['dense_out_channels']} ch"
            title = f"{task_label(run, runs)}: {m.get('variant')}"
            if columns and columns[-1][1] == cells:
                columns[-1] = (columns[-1][0] + " = " + title.split(": ", 1)[1], cells)
            else:
                columns.append((title, cells))
    rows = [[name, *[c.get(name, MISSING) for _, c in columns]] for name in order]
    return markdown(["layer", *[t for t, _ in columns]], rows) if columns else None


def environment_table(runs: list[RunResults]) -> str:
    rows = [[run.experiment, run.task, run.created or MISSING,
             *((run.data.get("environment") or {}).get(key, MISSING) for key in ("device", "torch", "lightning")),
             f"`{run.data.get('command', MISSING)}`", str(run.path)] for run in runs]
    return markdown(["experiment", "task", "finished", "device", "torch", "lightning", "command", "results"], rows)


def energy_notes(runs: list[RunResults]) -> list[str]:
    notes = {m.get("profile", {}).get("energy_note") for r in runs for m in r.data["models"]}
    return sorted(n for n in notes if isinstance(n, str) and n)


def _operator_cell(op: dict) -> str:
    share = op.get("share")
    return f"`{op.get('name', '?')}`" + (f" {share:.0%}" if isinstance(share, (int, float)) else "")


def operator_table(runs: list[RunResults], top: int = 4) -> str | None:
    """Per variant: where one forward pass spent its time (the profile's ``operators``, from torch.profiler), and
    which sparse/densifying operators ran."""
    rows = []
    for run in runs:
        for m in run.data["models"]:
            ops = (m.get("profile") or {}).get("operators")
            if not isinstance(ops, list) or not ops:
                continue
            ops = [op for op in ops if isinstance(op, dict)]
            sparse = [f"`{op.get('name')}` x{op.get('calls', '?')}" for op in ops
                      if any(marker in str(op.get("name", "")) for marker in SPARSE_MARKERS)]
            rows.append([task_label(run, runs), str(m.get("variant", MISSING)),
                         ", ".join(_operator_cell(op) for op in ops[:top]), ", ".join(sparse) or "none"])
    header = ["task", "variant", "top operators (share of self time)", "sparse / densifying operators"]
    return markdown(header, rows) if rows else None


def meets(drop, budget: float) -> bool:
    """The drop is within the budget with 95 % confidence: the interval's upper end, not the mean (needs n >= 2)."""
    return getattr(drop, "n", 1) > 1 and drop.upper <= budget


def target_label(target: float) -> str:
    """A target as a percentage with the decimals it needs: 99.5 % and 99.9 % never both read "100%"."""
    return f"{target * 100:.2f}".rstrip("0").rstrip(".") + "%"


def budget_table(runs: list[RunResults], max_drop: float, references: Sequence[str] = ()) -> str | None:
    """Per method, the highest ``target_sparsity`` (budget grid and main runs) whose pruned model's top-1 drop is
    within ``max_drop`` with 95 % confidence over seeds (see :func:`meets`), else "not established"."""
    points: dict[str, list[tuple[float, RunResults, dict, object]]] = {}
    for run in runs:
        target = (run.data.get("pruning") or {}).get("target_sparsity")
        pruned = next((m for m in run.data["models"] if m.get("variant") in (MASKED, NARROW)), None)
        if not is_number(target) or pruned is None:
            continue
        drop = drop_value(reference_top1(run, runs, references), (pruned.get("accuracy") or {}).get("test_top1"))
        if drop is not None:
            points.setdefault(method(run), []).append((float(target), run, pruned, drop))
    if not points:
        return None
    rows = []
    for name, found in points.items():
        within = [p for p in found if meets(p[3], max_drop)]
        target, run, pruned, drop = max(within, key=lambda p: p[0]) if within else min(found, key=lambda p: float(p[3]))
        profile = pruned.get("profile") or {}
        tried = "; ".join(f"{target_label(t)}: {num(d)}" for t, _, _, d in sorted(found, key=lambda p: p[0]))
        rows.append([
            name, target_label(target) if within else f"not established (least drop at {target_label(target)})", tried,
            num(removed_share(profile, dense_params(run, runs, references)), "{:.1%}"),
            num(profile.get("sparsity"), "{:.1%}"), num(drop), num(profile.get("model_size_mb")),
            num(scaled(profile.get("macs"), 1e-6), "{:.1f}"), num(profile.get("latency_ms"), "{:.1f}")])
    header = ["method", f"highest target within {max_drop:g} points", "top-1 drop at each target tried",
              "params removed (vs dense)", "sparsity (within the model)", "top-1 drop (points)", "size (MB, masked)",
              "MMACs", "latency (ms/batch)"]
    return markdown(header, rows)
