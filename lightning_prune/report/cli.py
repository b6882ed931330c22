"""``lightning-prune report``: REPORT.md and its plots from every results.json under the logs."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from lightning_prune.report import controls, plots, readme, tables
from lightning_prune.report.collect import RunResults, load_runs, seed_groups, unfinished, without_seed
from lightning_prune.report.handoff import handoff_section
from lightning_prune.report.seeds import merge_runs
from lightning_prune.results import atomic_write_bytes
from lightning_prune.runs import GRID_SUFFIX

STATS_NOTE = (
    "Where an experiment ran with several seeds, a cell is mean ± the half-width of its 95 % confidence interval "
    "(Student t, n - 1 degrees of freedom, scipy.stats) with n seeds. Drops are taken seed by seed against the dense "
    "model of the same seed. Differences between methods are claimed only from the controls table's tests (paired "
    "t-test when both ran the same seeds, else Welch's), at p < 0.05."
)
CONTROLS_NOTE = (
    "Each method against the control that removes its idea, on the pruned model's test top-1 (see "
    "`lightning_prune/report/controls.py`). 'Not established' means the test did not find a difference at p < 0.05, "
    "which with 3-5 seeds is not evidence that there is none."
)


def drop_note(reference: RunResults | None) -> str:
    against = f"the baseline run `{reference.experiment}`" if reference else "the dataset's baseline run (none here)"
    return (
        "Top-1 drop: test points lost, seed by seed, against the run's own dense model before pruning, or, for runs "
        "trained from random initialisation (GraSP, SNIP), against the baseline trained for as many epochs (else "
        f"{against}; `lightning-prune report --reference` names another)."
    )


OPS_NOTE = (
    "How to read it: the third column names the kernels that did the work; the last lists every operator "
    "with `sparse` or `to_dense` in its name, however small. Convolutions that still run "
    "`mkldnn_convolution` (CPU) or `cudnn_convolution` (CUDA) after a `to_dense` used no sparse kernel."
)


BUDGET_NOTE = (
    "From `python -m lightning_prune.budget` (each method at every target of a grid): per method, the highest "
    "target sparsity whose test top-1 drop, mean over seeds, stays within {max_drop:g} points "
    "(`report --max-drop`). The drop is against the run's own dense model (1a, 2) or the baseline (1b, from random "
    "init). Task 2's target is the share of the dense model's parameters removed; the others' is the share of "
    "weights zeroed."
)
SCHEDULE_NOTE = (
    "Fired by: the validation top-1 trigger, or the fallback epoch when the trigger was not reached. "
    "Top-10% magnitude removed: of the largest 10 % (by |weight|) of the weights kept before the stage, the share "
    "the stage removed (magnitude pruning removes none; a random choice removes the stage's overall rate). "
    "Filter |sum| / sum |score|: over conv filters, how much the scores of one filter cancel (0: fully); with "
    "BatchNorm after each conv, GraSP's scores of a filter sum to its squared gradient norm."
)


SWEEP_SPLITS = {
    "val": "held-out training images (the validation split).",
    "test": "the test set, so the per-layer choice has seen the test images.",
}


def sweep_notes(runs: list[RunResults]) -> list[str]:
    """Which images each 1a sensitivity sweep measured."""
    lines = []
    for run in runs:
        split = (run.data.get("sweep") or {}).get("split")
        if split:
            lines += [f"Sensitivity sweep of `{run.experiment}`: measured on {SWEEP_SPLITS.get(split, split)}", ""]
    return lines


def reference_model(runs: list[RunResults], references: Sequence[str] = ()) -> dict | None:
    run = tables.baseline_run(runs, references)
    return run.data["models"][0] if run else None


def ladder_section(logs: Path) -> list[str]:
    """Per dataset, the compression ladder from the exports under ``logs`` (needs dense, channel and chain exports)."""
    from lightning_prune.report.handoff import HANDOFF_FILE, records_of
    from lightning_prune.report.ladder import ladder

    records = records_of(sorted(logs.rglob(HANDOFF_FILE))) if logs.is_dir() else []
    lines = []
    for dataset in sorted({str(r.get("dataset")) for r in records}):
        found = ladder([r for r in records if r.get("dataset") == dataset])
        if found:
            lines += [f"## {dataset}: the compression ladder", "", found[0], "", found[1], ""]
    return lines


def layer_families(runs: list[RunResults]) -> dict[str, list[RunResults]]:
    """The runs whose per-layer sparsities one figure compares: 1a, 1b per schedule, and GraSP in both
    schedules (main runs, no grid)."""
    main = [r for r in runs if not GRID_SUFFIX.search(r.experiment)]
    staged = [r for r in main if r.task in ("grasp", "snip")]
    return {"1a": [r for r in main if r.task == "unstructured" and not r.data.get("lineage")],
            "1b_staged": [r for r in staged if controls.identity(r)["schedule"] == "staged"],
            "1b_oneshot": [r for r in staged if controls.identity(r)["schedule"] == "oneshot"],
            "1b_grasp": [r for r in staged if controls.identity(r)["method"] == "grasp"]}


def layer_plots(runs: list[RunResults], plot_dir: Path, dataset: str) -> list[Path]:
    """Per-layer sparsity, methods side by side: one figure for 1a and one per 1b schedule."""
    out = []
    for name, members in layer_families(runs).items():
        title = f"{dataset}: per-layer sparsity, {name.replace('_', ' ')}"
        path = plots.layer_sparsity(members, plot_dir / f"{dataset}_layers_{name}.png", title) if members else None
        out += [path] if path else []
    return out


def sensitivity_plots(runs: list[RunResults], plot_dir: Path, dataset: str) -> list[Path]:
    """Copy each run's sensitivity PNG beside the report so the report is self-contained."""
    copied = []
    for run in runs:
        for key, value in (run.data.get("artifacts") or {}).items():
            src = Path(str(value))
            if "sensitivity" in key and src.suffix == ".png" and src.is_file():
                dst = plot_dir / f"{dataset}_{run.experiment}_sensitivity.png"
                shutil.copyfile(src, dst)
                copied.append(dst)
    return copied


def check_references(runs: list[RunResults], references: Sequence[str], logs: Path) -> None:
    """Every named reference must be a baseline experiment under the logs (checked before anything is written)."""
    baselines = sorted({r.experiment for r in runs if r.task == tables.BASELINE})
    unknown = [name for name in references if name not in baselines]
    if unknown:
        raise ValueError(
            f"--reference: no baseline run named {', '.join(unknown)} under {logs}; "
            f"baseline experiments there: {', '.join(baselines) or 'none'}"
        )


def check_out(out: Path) -> None:
    """``--out`` must be a writable file path: checked before any plot is drawn."""
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; name the markdown file to write (e.g. {out / 'REPORT.md'})")
    if not out.parent.is_dir():
        raise ValueError(f"--out: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out: {out} is not writable")


def build_report(logs: Path, out: Path, all_runs: bool = False, references: Sequence[str] = (),
                 max_drop: float = 5.0) -> str:
    """Write the report; ``references`` names baseline experiments that random-init runs are compared with."""
    check_out(out)
    unreadable: list[tuple[Path, str]] = []
    runs = load_runs(logs, unreadable)
    check_references(runs, references, logs)
    groups = seed_groups(runs)
    chosen = [r for r in runs if r.finished] if all_runs else [merge_runs(group) for group in groups]
    shown = len(chosen) if all_runs else sum(len(group) for group in groups)
    set_apart = [(r, "its model comes from a fit that did not finish (killed or failed)") for r in unfinished(runs)]
    set_apart += [(r, "it records no seed, so it is not counted as one") for r in without_seed(runs, groups)]
    plot_dir = out.parent / "report_plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# lightning_prune report",
        "",
        f"Generated {now} from {shown} run(s) under `{logs}`"
        + ("" if all_runs else f" (latest run of each experiment with its other seeds; {len(runs) - shown} older "
           "run(s) hidden)")
        + ". Every number below is read from a results.json; nothing is estimated. " + STATS_NOTE,
        "",
    ]
    if not chosen:
        lines.append(f"No results.json found under `{logs}`: run a task first (e.g. `make demo`).")
    for dataset in sorted({r.dataset for r in chosen}):
        group = [r for r in chosen if r.dataset == dataset]
        table = tables.results_table(group, references)
        lines += [f"## {dataset}", "", table, "", drop_note(tables.baseline_run(group, references)), ""]
        ref = reference_model(group, references)
        if ref is None:
            lines += ["No baseline run for this dataset: accuracy drops and relative bars are missing.", ""]
        figures = [
            plots.accuracy_vs_sparsity(group, plot_dir / f"{dataset}_accuracy_vs_sparsity.png", ref),
            plots.relative_bars(group, plot_dir / f"{dataset}_latency_size.png", ref),
            plots.learning_curves(group, plot_dir / f"{dataset}_learning_curves.png"),
            *layer_plots(group, plot_dir, dataset),
            *sensitivity_plots(group, plot_dir, dataset),
        ]
        for fig in figures:
            if fig is not None:
                lines += [f"![{fig.stem}]({fig.relative_to(out.parent).as_posix()})", ""]
        lines += sweep_notes(group)
        operators = tables.operator_table(group)
        if operators:
            title = f"### {dataset}: operators that ran (torch.profiler, one forward pass)"
            lines += [title, "", OPS_NOTE, "", operators, ""]
        control_rows = controls.controls_table(group)
        if control_rows:
            lines += [f"### {dataset}: does each method's idea matter?", "", CONTROLS_NOTE, "", control_rows, ""]
        budget = tables.budget_table(group, max_drop, references)
        if budget:
            lines += [f"### {dataset}: the accuracy budget", "", BUDGET_NOTE.format(max_drop=max_drop), "", budget, ""]
        schedules = tables.schedule_table(group)
        if schedules:
            lines += [f"### {dataset}: 1b stages, and what each removed", "", SCHEDULE_NOTE, "", schedules, ""]
        layers = tables.layer_table(group)
        if layers:
            lines += [f"### {dataset}: per-layer sparsity / channels kept", "", layers, ""]
    lines += handoff_section(logs)
    lines += ladder_section(logs)
    if chosen:
        notes = tables.energy_notes(chosen)
        if notes:
            lines += ["## Energy", "", "Energy shows n/a where a domain cannot be read:", ""]
            lines += [f"- {n}" for n in notes] + [""]
        lines += ["## Where each figure came from", "", tables.environment_table(chosen), ""]
    if set_apart:
        lines += ["## Runs left out of the tables", ""]
        lines += [f"- `{r.path}`: {why}" for r, why in set_apart] + [""]
    listed = {id(r) for r in (chosen if all_runs else [r for group in groups for r in group])}
    broken = [r for r in runs if r.problems]
    if broken or unreadable:
        lines += ["## Runs with missing or invalid fields", ""]
        lines += [f"- `{r.path}`: {'; '.join(r.problems[:3])}{'' if id(r) in listed else ' (left out of the tables)'}"
                  for r in broken]
        lines += [f"- `{path}`: left out, {reason}" for path, reason in unreadable] + [""]
    text = "\n".join(lines)
    atomic_write_bytes(out, text.encode())
    return text


def _update(page: Path, logs: Path, option: str, write: bool = True) -> list[str]:
    """``readme.update`` with any refusal naming the option (ValueError, so ``main`` prints one line)."""
    try:
        return readme.update(page, logs, write=write)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from err


def check_readmes(parser: argparse.ArgumentParser, pages: Sequence[str], logs: Path) -> int:
    """``--check-readme``: 1 when a page's tables are stale; a page that cannot be checked is a usage error."""
    code = 0
    for name in pages:
        try:
            stale = _update(Path(name), logs, "--check-readme", write=False)
        except ValueError as err:
            parser.error(str(err))
        print(f"{name}: stale tables: {', '.join(stale)}" if stale else f"{name}: up to date")
        code = 1 if stale else code
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-prune report", description=__doc__)
    parser.add_argument("--logs", default="logs", help="folder searched for results.json (default: logs)")
    parser.add_argument("--out", default="REPORT.md", help="markdown file to write (default: REPORT.md)")
    parser.add_argument("--all-runs", action="store_true", help="keep older runs of the same experiment too")
    parser.add_argument(
        "--reference", action="append", default=[], metavar="EXPERIMENT",
        help="baseline experiment that GraSP/SNIP runs of its dataset are compared with (repeatable; "
        "default: the most recent baseline run of each dataset)",
    )
    parser.add_argument("--max-drop", type=float, default=5.0, metavar="POINTS",
                        help="top-1 points a method may lose in the budget table (default: 5)")
    parser.add_argument("--snapshot", metavar="DIR", help="also copy the results.json of every run shown into DIR "
                        "(e.g. docs/results: the runs README.md cites, kept in the repository)")
    parser.add_argument("--readme", metavar="FILE", nargs="+", help="also rewrite each FILE's marked result tables "
                        "(<!-- results:DATASET -->) from the runs under --logs")
    parser.add_argument("--check-readme", metavar="FILE", nargs="+", help="only compare each FILE's marked result "
                        "tables with the runs under --logs; exit 1 when one is stale")
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    if not logs.is_dir():
        parser.error(f"--logs: no such folder {logs}")
    if args.check_readme:
        return check_readmes(parser, args.check_readme, logs)
    try:
        if args.max_drop < 0:
            raise ValueError(f"--max-drop: top-1 points >= 0, got {args.max_drop}")
        missing = [name for name in args.readme or [] if not Path(name).is_file()]
        if missing:  # before anything is written
            raise ValueError(f"--readme: no such file {missing[0]}")
        build_report(logs, Path(args.out), args.all_runs, args.reference, args.max_drop)
        if args.snapshot:
            copied = readme.snapshot(seed_groups(load_runs(logs)), logs, Path(args.snapshot))
            print(f"{len(copied)} files (results.json, handoff.json) kept under {args.snapshot}")
        for name in args.readme or []:
            stale = _update(Path(name), logs, "--readme")
            print(f"{name}: rewrote {', '.join(stale) or 'nothing (already up to date)'}")
    except ValueError as err:
        parser.error(str(err))
    print(f"report written to {Path(args.out).resolve()} (plots in {Path(args.out).parent.resolve() / 'report_plots'})")
    return 0
