"""Does a method's idea matter? Each method against the control that removes that idea, tested with scipy.stats.

- 1a: the sensitivity allocation against one global magnitude threshold and against a uniform split;
- 1b: each criterion against random masks at the per-layer sparsities it chose (the layer-wise shuffle
  of Frankle et al. 2021), and the staged protocol against the one-shot protocol of the GraSP paper;
- 2: LASSO selection against L1-norm filters (Li et al. 2017) and random channels at the same ratios,
  and the least-squares reconstruction against none.

The figure compared is the pruned model's test top-1, seed by seed (paired t-test) when both sides
ran the same seeds, else Welch's test. A difference is claimed only where p < 0.05; otherwise the
table says "not established", never "no difference".
"""

from __future__ import annotations

from typing import Any

from lightning_prune.names import MASKED, NARROW
from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import compare
from lightning_prune.report.tables import MISSING, markdown, num
from lightning_prune.runs import GRID_SUFFIX

ALPHA = 0.05
Spec = dict[str, Any]


def _criteria() -> list[tuple[str, Spec, Spec]]:
    rows = [
        ("1a: sensitivity allocation vs one global threshold", {"task": "unstructured", "allocation": "sensitivity"},
         {"task": "unstructured", "allocation": "global"}),
        ("1a: sensitivity allocation vs uniform per layer", {"task": "unstructured", "allocation": "sensitivity"},
         {"task": "unstructured", "allocation": "uniform"}),
    ]
    for schedule in ("staged", "oneshot"):
        for method in ("grasp", "snip", "grasp_abs"):
            rows.append((f"1b: {method} vs random at its layer sparsities ({schedule})",
                         {"method": method, "schedule": schedule},
                         {"method": "random", "copies": method, "schedule": schedule}))
    for method in ("grasp", "snip", "grasp_abs"):
        rows.append((f"1b: {method} staged vs one-shot", {"method": method, "schedule": "staged"},
                     {"method": method, "schedule": "oneshot"}))
    for control in ("l1", "random"):
        rows.append((f"2: LASSO vs {control} channels (both refit)", {"task": "channel", "method": "lasso",
                     "reconstruct": True}, {"task": "channel", "method": control, "reconstruct": True}))
    for selection, label in (("lasso", "LASSO"), ("l1", "l1"), ("random", "random")):
        rows.append((f"2: least-squares refit vs none ({label})", {"task": "channel", "method": selection,
                     "reconstruct": True}, {"task": "channel", "method": selection, "reconstruct": False}))
    return rows


CONTROLS = _criteria()


def identity(run: RunResults) -> Spec:
    """What pruned the run, with the defaults of runs recorded before the controls existed."""
    p = run.data.get("pruning") or {}
    schedule = run.data.get("schedule") or {}
    return {"task": run.task, "method": schedule.get("method") or p.get("method"),
            "allocation": p.get("allocation", "sensitivity"), "schedule": p.get("schedule", "staged"),
            "copies": p.get("copies"), "reconstruct": p.get("reconstruct", True)}


def find(runs: list[RunResults], spec: Spec) -> RunResults | None:
    """The newest main run (no budget-grid suffix, not a chain of methods) whose pruning matches ``spec``."""
    found = [r for r in runs if not GRID_SUFFIX.search(r.experiment) and r.task != "baseline"
             and not r.data.get("lineage")
             and all(identity(r).get(k) == v for k, v in spec.items())]
    return max(found, key=lambda r: r.created or "", default=None)


def pruned_top1(run: RunResults) -> float | None:
    entry = next((m for m in run.data["models"] if m.get("variant") in (MASKED, NARROW)), None)
    return (entry or {}).get("accuracy", {}).get("test_top1")


def verdict(diff: float, p: float) -> str:
    if p < ALPHA:
        return f"method better (p = {p:.2g})" if diff > 0 else f"control better (p = {p:.2g})"
    return f"not established (p = {p:.2g})"


def comparisons(runs: list[RunResults]) -> list[dict[str, Any]]:
    """Every control that ran beside its method: the two top-1s, their difference, the test and the verdict."""
    out = []
    for question, method_spec, control_spec in CONTROLS:
        method, control = find(runs, method_spec), find(runs, control_spec)
        if method is None or control is None:
            continue
        a, b = pruned_top1(method), pruned_top1(control)
        result = compare(a, b) if a is not None and b is not None else None
        out.append({"question": question, "method": method, "control": control, "method_top1": a, "control_top1": b,
                    "comparison": result,
                    "verdict": verdict(result.difference, result.p) if result else "not established (n < 2)"})
    return out


def controls_table(runs: list[RunResults]) -> str | None:
    """Markdown: one row per method/control pair that both ran."""
    rows = []
    for c in comparisons(runs):
        r = c["comparison"]
        diff = MISSING if r is None else f"{r.difference:+.2f} ± {r.ci95:.2f}"
        test = MISSING if r is None else f"{r.test}, n = {r.n[0]}/{r.n[1]}"
        rows.append([c["question"], f"`{c['method'].experiment}`: {num(c['method_top1'])}",
                     f"`{c['control'].experiment}`: {num(c['control_top1'])}", diff, test, c["verdict"]])
    if not rows:
        return None
    header = ["comparison", "method: pruned top-1", "control: pruned top-1", "difference (points, 95 % CI)", "test",
              "verdict (p < 0.05)"]
    return markdown(header, rows)
