"""What a figure is measured against (a dataset's baseline run, a run's own dense model), and the top-1 points and
the share of parameters lost against it, seed by seed when merged over seeds."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_prune.names import DENSE
from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import Stat, difference, is_number

BASELINE = "baseline"


def trained_epochs(run: RunResults) -> int | None:
    """Epochs the measured model was trained for (its checkpoint's epoch + 1), if recorded."""
    epoch = (run.data.get("checkpoint") or {}).get("epoch")
    return int(epoch) + 1 if is_number(epoch) else None


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


def drop_value(reference, top1):
    """Top-1 points lost: seed by seed against the dense model of the same seed (its own, or the baseline's)."""
    return difference(reference, top1) if reference is not None and is_number(top1) else None


def removed_share(profile: dict, dense_params: float | None):
    """The share of the unpruned model's parameters that are gone (zeroed or cut out), per seed when merged."""
    nonzero = profile.get("nonzero_params")
    if not is_number(nonzero) or not dense_params:
        return None
    per_seed = getattr(nonzero, "values", None)
    return Stat([1 - v / dense_params for v in per_seed]) if per_seed else 1 - nonzero / dense_params


def _own_dense(run: RunResults, section: str, key: str) -> float | None:
    """A figure of the run's own unpruned model (a Stat when merged over seeds), the fairest reference."""
    for m in run.data["models"]:
        value = (m.get(section) or {}).get(key)
        if m.get("variant") == DENSE and isinstance(value, (int, float)):
            return value
    return None


def dense_params(run: RunResults, runs: list[RunResults], references: Sequence[str] = ()) -> float | None:
    """Parameters of the unpruned model: the run's own dense entry, else the dataset's baseline."""
    own = _own_dense(run, "profile", "params")
    if own is not None:
        return float(own)
    base = baseline_run(runs, references)
    params = (base.data["models"][0].get("profile") or {}).get("params") if base else None
    return float(params) if isinstance(params, (int, float)) and run.task != "channel" else None


def reference_top1(run: RunResults, runs: list[RunResults], references: Sequence[str] = ()) -> float | None:
    """What the run's drop is taken against: its own dense model, else the baseline run (see baseline_run); a Stat
    when merged over seeds, so that a drop against it is taken seed by seed."""
    own = _own_dense(run, "accuracy", "test_top1")
    if own is not None:
        return own
    base = baseline_run(runs, references, run)
    top1 = (base.data["models"][0].get("accuracy") or {}).get("test_top1") if base else None
    return top1 if isinstance(top1, Stat) else float(top1) if is_number(top1) else None
