"""Does a method's idea matter? Each method against the control that removes that idea (random masks at its layer
sparsities: Frankle et al. 2021; L1-norm filters: Li et al. 2017), on the pruned model's test top-1. The p-values of
the table and the docs' prose form one family, corrected by Holm's method: a difference is claimed only where the
corrected p < 0.05, otherwise the table says "not established", never "no difference"."""

from __future__ import annotations

from typing import Any

from lightning_prune.names import MASKED, NARROW
from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import Comparison, compare, holm
from lightning_prune.report.tables import MISSING, markdown, num
from lightning_prune.runs import GRID_SUFFIX

ALPHA = 0.05
Spec = dict[str, Any]


def _criteria() -> list[tuple[str, Spec, Spec]]:
    methods = ("grasp", "snip", "grasp_abs")
    sensitivity = {"task": "unstructured", "allocation": "sensitivity"}
    lasso = {"task": "channel", "method": "lasso", "reconstruct": True}
    rows = [(f"1a: sensitivity allocation vs {label}", sensitivity, {**sensitivity, "allocation": control})
            for control, label in (("global", "one global threshold"), ("uniform", "uniform per layer"))]
    rows += [(f"1b: {method} vs random at its layer sparsities ({schedule})", {"method": method, "schedule": schedule},
              {"method": "random", "copies": method, "schedule": schedule})
             for schedule in ("staged", "oneshot") for method in methods]
    rows += [(f"1b: {method} staged vs one-shot", {"method": method, "schedule": "staged"},
              {"method": method, "schedule": "oneshot"}) for method in methods]
    rows += [(f"2: LASSO vs {control} channels (both refit)", lasso, {**lasso, "method": control})
             for control in ("l1", "random")]
    rows += [(f"2: least-squares refit vs none ({label})", {**lasso, "method": selection},
              {**lasso, "method": selection, "reconstruct": False})
             for selection, label in (("lasso", "LASSO"), ("l1", "l1"), ("random", "random"))]
    return rows


CONTROLS = _criteria()


def identity(run: RunResults) -> Spec:
    """What pruned the run, with the defaults of runs recorded before the controls existed."""
    p = run.data.get("pruning") or {}
    schedule = run.data.get("schedule") or {}
    return {"task": run.task, "method": schedule.get("method") or p.get("method"),
            "allocation": p.get("allocation", "sensitivity"), "schedule": p.get("schedule", "staged"),
            "copies": p.get("copies"), "reconstruct": p.get("reconstruct", True)}


def newest_matching(runs: list[RunResults], spec: Spec) -> RunResults | None:
    """The newest main run (no budget-grid suffix, not a chain of methods) whose pruning matches ``spec``."""
    found = [r for r in runs if not GRID_SUFFIX.search(r.experiment) and r.task != "baseline"
             and not r.data.get("lineage")
             and all(identity(r).get(k) == v for k, v in spec.items())]
    return max(found, key=lambda r: r.created or "", default=None)


def pruned_top1(run: RunResults) -> float | None:
    entry = next((m for m in run.data["models"] if m.get("variant") in (MASKED, NARROW)), None)
    return (entry or {}).get("accuracy", {}).get("test_top1")


def verdict(result: Comparison) -> str:
    """What the (Holm-corrected) test allows to say."""
    p = f"Holm p = {result.p_corrected:.2g}" if result.p_holm is not None else f"p = {result.p:.2g}"
    if result.p_corrected < ALPHA:
        return f"method better ({p})" if result.difference > 0 else f"control better ({p})"
    return f"not established ({p})"


def _rows(runs: list[RunResults]) -> list[tuple[str, RunResults, RunResults]]:
    """Each question of :data:`CONTROLS` whose method and control both ran: (question, method run, control run)."""
    found = [(question, newest_matching(runs, method), newest_matching(runs, control))
             for question, method, control in CONTROLS]
    return [row for row in found if row[1] is not None and row[2] is not None]


def family(runs: list[RunResults], pairs: list[tuple[str, str]] = ()) -> dict[tuple[str, str], Comparison]:
    """Every comparison of the controls table and of the experiment ``pairs`` the docs' prose makes, by pair of
    experiments, with Holm's p over all. A pair whose experiments are not among ``runs`` (another dataset's) is not
    part of this family."""
    by_name = {r.experiment: r for r in runs}
    found: dict[tuple[str, str], Comparison] = {}
    for a, b in [row[1:] for row in _rows(runs)] + [(by_name[a], by_name[b]) for a, b in pairs
                                                    if a in by_name and b in by_name]:
        key, top1 = (a.experiment, b.experiment), (pruned_top1(a), pruned_top1(b))
        result = compare(*top1) if key not in found and None not in top1 else None
        if result is not None:
            found[key] = result
    for result, p in zip(found.values(), holm([r.p for r in found.values()])):
        result.p_holm, result.family = p, len(found)
    return found


def controls_table(runs: list[RunResults], pairs: list[tuple[str, str]] = ()) -> str | None:
    """Markdown: one row per method/control pair that both ran, its verdict Holm-corrected over the table and the
    prose ``pairs``."""
    found, tested = _rows(runs), family(runs, pairs)
    results = [tested.get((method.experiment, control.experiment)) for _, method, control in found]
    rows = [[question, f"`{method.experiment}`: {num(pruned_top1(method))}",
             f"`{control.experiment}`: {num(pruned_top1(control))}",
             MISSING if r is None else f"{r.difference:+.2f} ± {r.ci95:.2f}",
             MISSING if r is None else f"{r.test}, n = {r.n[0]}/{r.n[1]}, p = {r.p:.2g}",
             verdict(r) if r else "not established (n < 2)"] for (question, method, control), r in zip(found, results)]
    if not rows:
        return None
    size = max((r.family for r in results if r), default=0)
    header = ["comparison", "method: pruned top-1", "control: pruned top-1", "difference (points, 95 % CI)", "test",
              f"verdict (Holm-corrected p < 0.05 over {size} comparisons)"]
    return markdown(header, rows)
