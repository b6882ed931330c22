"""What a figure is measured against: a dataset's baseline run, a run's own dense model, and the top-1 points
and the share of parameters lost against them (seed by seed when merged over seeds)."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_prune.names import DENSE
from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import Stat, difference

BASELINE = "baseline"


def trained_epochs(run: RunResults) -> int | None:
    """Epochs the measured model was trained for (its checkpoint's epoch + 1), if recorded."""
    epoch = (run.data.get("checkpoint") or {}).get("epoch")
    return int(epoch) + 1 if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def baseline_run(runs: list[RunResults], references: Sequence[str] = (), for_run: RunResults | None = None
                 ) -> RunResults | None:
    """The reference run of a dataset: the baseline named in ``references``; else, for a run trained from random
    weights, the baseline trained for as many epochs (the same budget, never pruned); else the one measured over
    the most seeds (a one-seed check such as a longer schedule is no reference), the most recent among equals."""
    baselines = [r for r in runs if r.task == BASELINE and r.data["models"]]
    named = [r for r in baselines if r.experiment in references]
    budget = trained_epochs(for_run) if for_run is not None else None
    same = [r for r in baselines if budget is not None and trained_epochs(r) == budget]
    return max(named or same or baselines, key=lambda r: (len(r.data.get("seeds") or [r.seed]), r.created or ""),
               default=None)


def baseline_top1(runs: list[RunResults], references: Sequence[str] = (), for_run: RunResults | None = None
                  ) -> float | None:
    """The reference accuracy: the dense model of the dataset's baseline run (for ``for_run``: see baseline_run)."""
    run = baseline_run(runs, references, for_run)
    if run is None:
        return None
    top1 = (run.data["models"][0].get("accuracy") or {}).get("test_top1")
    if isinstance(top1, Stat):
        return top1  # merged over seeds: a drop against it is taken seed by seed
    return float(top1) if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None


def drop_value(reference, top1):
    """Top-1 points lost: seed by seed against the dense model of the same seed (its own, or the baseline's)."""
    if reference is None or isinstance(top1, bool) or not isinstance(top1, (int, float)):
        return None
    return difference(reference, top1)


def removed_share(profile: dict, dense_params: float | None):
    """The share of the unpruned model's parameters that are gone (zeroed or cut out), per seed when merged."""
    nonzero = profile.get("nonzero_params")
    if isinstance(nonzero, bool) or not isinstance(nonzero, (int, float)) or not dense_params:
        return None
    per_seed = getattr(nonzero, "values", None)
    return Stat([1 - v / dense_params for v in per_seed]) if per_seed else 1 - nonzero / dense_params


def dense_params(run: RunResults, runs: list[RunResults], references: Sequence[str] = ()) -> float | None:
    """Parameters of the unpruned model: the run's own dense entry, else the dataset's baseline."""
    for m in run.data["models"]:
        params = (m.get("profile") or {}).get("params")
        if m.get("variant") == DENSE and isinstance(params, (int, float)):
            return float(params)
    base = baseline_run(runs, references)
    params = (base.data["models"][0].get("profile") or {}).get("params") if base else None
    if isinstance(params, (int, float)) and run.task != "channel":
        return float(params)
    return None


def dense_top1(run: RunResults) -> float | None:
    """The run's own unpruned model, the fairest reference for what pruning cost."""
    for m in run.data["models"]:
        top1 = (m.get("accuracy") or {}).get("test_top1")
        if m.get("variant") == DENSE and isinstance(top1, (int, float)):
            return top1  # a Stat when merged over seeds: drops are then taken seed by seed
    return None


def reference_top1(run: RunResults, runs: list[RunResults], references: Sequence[str] = ()) -> float | None:
    """What the run's drop is taken against: its own dense model, else the baseline run (see baseline_run)."""
    own = dense_top1(run)
    return own if own is not None else baseline_top1(runs, references, run)
