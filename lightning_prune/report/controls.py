"""Does a method's idea matter? Each method against the control that removes that idea, tested with scipy.stats.

- 1a: the sensitivity allocation against one global magnitude threshold and against a uniform split;
- 1b: each criterion against random masks at the per-layer sparsities it chose (the layer-wise shuffle
  of Frankle et al. 2021), and the staged protocol against the one-shot protocol of the GraSP paper;
- 2: LASSO selection against L1-norm filters (Li et al. 2017) and random channels at the same ratios,
  and the least-squares reconstruction against none.

The figure compared is the pruned model's test top-1, seed by seed (paired t-test on the seeds both
sides share) when they share two or more, else Welch's test. The p-values of every comparison the
table and the docs' prose make form one family, corrected by Holm's method; a difference is claimed
only where the corrected p < 0.05, otherwise the table says "not established", never "no difference".
"""

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


def verdict(result: Comparison) -> str:
    """What the (Holm-corrected) test allows to say."""
    p = f"Holm p = {result.p_corrected:.2g}" if result.p_holm is not None else f"p = {result.p:.2g}"
    if result.p_corrected < ALPHA:
        return f"method better ({p})" if result.difference > 0 else f"control better ({p})"
    return f"not established ({p})"


def _rows(runs: list[RunResults]) -> list[dict[str, Any]]:
    out = []
    for question, method_spec, control_spec in CONTROLS:
        method, control = find(runs, method_spec), find(runs, control_spec)
        if method is None or control is None:
            continue
        a, b = pruned_top1(method), pruned_top1(control)
        out.append({"question": question, "method": method, "control": control, "method_top1": a, "control_top1": b,
                    "comparison": compare(a, b) if a is not None and b is not None else None})
    return out


def family(runs: list[RunResults], pairs: list[tuple[str, str]] = (),
           rows: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], Comparison]:
    """Every comparison of the table (``rows``, default: found in ``runs``), and of the experiment ``pairs`` the
    docs' prose makes, with Holm's p over all.

    A pair whose experiments are not among ``runs`` (another dataset's) is not part of this family.
    """
    by_name = {r.experiment: r for r in runs}
    found: dict[tuple[str, str], Comparison] = {}
    for row in _rows(runs) if rows is None else rows:
        if row["comparison"] is not None:
            found[(row["method"].experiment, row["control"].experiment)] = row["comparison"]
    for a, b in pairs:
        if (a, b) not in found and a in by_name and b in by_name:
            result = compare(pruned_top1(by_name[a]), pruned_top1(by_name[b]))
            if result is not None:
                found[(a, b)] = result
    for result, p in zip(found.values(), holm([r.p for r in found.values()])):
        result.p_holm, result.family = p, len(found)
    return found


def comparisons(runs: list[RunResults], pairs: list[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Every control that ran beside its method: the two top-1s, their difference, the test and the verdict
    (Holm-corrected over the table and the prose ``pairs``)."""
    rows = _rows(runs)
    tested = family(runs, pairs, rows)
    for row in rows:
        result = tested.get((row["method"].experiment, row["control"].experiment))
        row["comparison"] = result
        row["verdict"] = verdict(result) if result else "not established (n < 2)"
    return rows


def controls_table(runs: list[RunResults], pairs: list[tuple[str, str]] = ()) -> str | None:
    """Markdown: one row per method/control pair that both ran."""
    rows = []
    found = comparisons(runs, pairs)
    size = max((c["comparison"].family for c in found if c["comparison"]), default=0)
    for c in found:
        r = c["comparison"]
        diff = MISSING if r is None else f"{r.difference:+.2f} ± {r.ci95:.2f}"
        test = MISSING if r is None else f"{r.test}, n = {r.n[0]}/{r.n[1]}, p = {r.p:.2g}"
        rows.append([c["question"], f"`{c['method'].experiment}`: {num(c['method_top1'])}",
                     f"`{c['control'].experiment}`: {num(c['control_top1'])}", diff, test, c["verdict"]])
    if not rows:
        return None
    header = ["comparison", "method: pruned top-1", "control: pruned top-1", "difference (points, 95 % CI)", "test",
              f"verdict (Holm-corrected p < 0.05 over {size} comparisons)"]
    return markdown(header, rows)
