"""``lightning-prune report``: REPORT.md and its plots from every results.json under the logs."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from lightning_prune.report import controls, docs, plots, tables
from lightning_prune.report.baselines import BASELINE, baseline_run
from lightning_prune.report.collect import RunResults, load_runs, merge_runs, seed_groups, without_seed
from lightning_prune.report.handoff import handoff_section, ladders, records_of
from lightning_prune.results import atomic_write_bytes

STATS_NOTE = ("Where an experiment ran with several seeds, a cell is mean ± the half-width of its 95 % "
              "confidence interval (Student t, n - 1 degrees of freedom, scipy.stats) with n seeds; \"sd\" after a "
              "single run's latency is its standard deviation over the timed batches. Drops are "
              "taken seed by seed against the dense model of the same seed. Differences between methods are "
              "claimed only from the controls table's tests (paired t-test when both ran the same seeds, else "
              "Welch's), at p < 0.05 after Holm's correction over the table.")
CONTROLS_NOTE = ("Each method against the control that removes its idea, on the pruned model's test top-1 (see "
                 "`lightning_prune/report/controls.py`). 'Not established' means the test did not find a "
                 "difference at p < 0.05, which with 3-5 seeds is not evidence that there is none.")
OPS_NOTE = ("How to read it: the third column names the kernels that did the work; the last lists every operator "
            "with `sparse` or `to_dense` in its name, however small. Convolutions that still run "
            "`mkldnn_convolution` (CPU) or `cudnn_convolution` (CUDA) after a `to_dense` used no sparse kernel.")
BUDGET_NOTE = ("From `python -m studies.budget` (each method at every target of a grid): per method, the highest "
               "target sparsity whose test top-1 drop, mean over seeds, stays within {max_drop:g} points "
               "(`report --max-drop`). The drop is against the run's own dense model (1a, 2) or the baseline "
               "(1b, from random init). Task 2's target is the share of the dense model's parameters removed; "
               "the others' is the share of weights zeroed.")
SCHEDULE_NOTE = ("Fired by: the validation top-1 trigger, or the fallback epoch when the trigger was not "
                 "reached. Top-10% magnitude removed: of the largest 10 % (by |weight|) of the weights kept "
                 "before the stage, the share the stage removed (magnitude pruning removes none; a random choice "
                 "removes the stage's overall rate). Filter |sum| / sum |score|: over conv filters, how much the "
                 "scores of one filter cancel (0: fully); with BatchNorm after each conv, GraSP's scores of a "
                 "filter sum to its squared gradient norm.")
SWEEP_SPLITS = {"val": "held-out training images (the validation split).",
                "test": "the test set, so the per-layer choice has seen the test images."}


def drop_note(reference: RunResults | None) -> str:
    against = f"the baseline run `{reference.experiment}`" if reference else "the dataset's baseline run (none here)"
    return ("Top-1 drop: test points lost, seed by seed, against the run's own dense model before pruning, or, for "
            "runs trained from random initialisation (GraSP, SNIP), against the baseline trained for as many epochs "
            f"(else {against}; `lightning-prune report --reference` names another).")


def sweep_notes(runs: list[RunResults]) -> list[str]:
    """Which images each 1a sensitivity sweep measured."""
    splits = [(run, (run.data.get("sweep") or {}).get("split")) for run in runs]
    return [line for run, split in splits if split
            for line in (f"Sensitivity sweep of `{run.experiment}`: measured on {SWEEP_SPLITS.get(split, split)}", "")]


def ladder_section(logs: Path) -> list[str]:
    """Per dataset, the compression ladder from the exports under ``logs`` (needs dense, channel and chain exports)."""
    records = records_of([logs]) if logs.is_dir() else []
    return [line for dataset, block in ladders(records).items()
            for line in (f"## {dataset}: the compression ladder", "", block, "")]


def figures(runs: list[RunResults], plot_dir: Path, dataset: str, references: Sequence[str]) -> list[Path]:
    """The dataset's figures, each run's sensitivity sweep copied beside the report."""
    base = baseline_run(runs, references)
    reference = base.data["models"][0] if base else None
    found = [plots.accuracy_vs_sparsity(runs, plot_dir / f"{dataset}_accuracy_vs_sparsity.png", reference),
             plots.relative_bars(runs, plot_dir / f"{dataset}_latency_size.png", reference),
             plots.learning_curves(runs, plot_dir / f"{dataset}_learning_curves.png")]
    for name, members in plots.layer_families(runs).items():
        title = f"{dataset}: per-layer sparsity, {name.replace('_', ' ')}"
        found.append(plots.layer_sparsity(members, plot_dir / f"{dataset}_layers_{name}.png", title) if members
                     else None)
    for run in runs:
        for key, value in (run.data.get("artifacts") or {}).items():
            src = Path(str(value))
            if "sensitivity" in key and src.suffix == ".png" and src.is_file():
                found.append(Path(shutil.copyfile(src, plot_dir / f"{dataset}_{run.experiment}_sensitivity.png")))
    return [path for path in found if path is not None]


def check_references(runs: list[RunResults], references: Sequence[str], logs: Path) -> None:
    """Every named reference must be a baseline experiment under the logs (checked before anything is written)."""
    baselines = sorted({r.experiment for r in runs if r.task == BASELINE})
    unknown = [name for name in references if name not in baselines]
    if unknown:
        raise ValueError(f"--reference: no baseline run named {', '.join(unknown)} under {logs}; "
                         f"baseline experiments there: {', '.join(baselines) or 'none'}")


def check_out(out: Path) -> None:
    """``--out`` must be a writable file path: checked before any plot is drawn."""
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; name the markdown file to write (e.g. {out / 'REPORT.md'})")
    if not out.parent.is_dir():
        raise ValueError(f"--out: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out: {out} is not writable")


def dataset_section(group: list[RunResults], dataset: str, out: Path, references: Sequence[str],
                    max_drop: float) -> list[str]:
    """The report's section of one dataset: its results table, figures and the tables of each task."""
    base = baseline_run(group, references)
    lines = [f"## {dataset}", "", tables.results_table(group, references), "", drop_note(base), ""]
    if base is None:
        lines += ["No baseline run for this dataset: accuracy drops and relative bars are missing.", ""]
    for fig in figures(group, out.parent / "report_plots", dataset, references):
        lines += [f"![{fig.stem}]({fig.relative_to(out.parent).as_posix()})", ""]
    lines += sweep_notes(group)
    for title, note, table in [
        ("operators that ran (torch.profiler, one forward pass)", OPS_NOTE, tables.operator_table(group)),
        ("does each method's idea matter?", CONTROLS_NOTE, controls.controls_table(group)),
        ("the accuracy budget", BUDGET_NOTE.format(max_drop=max_drop),
         tables.budget_table(group, max_drop, references)),
        ("1b stages, and what each removed", SCHEDULE_NOTE, tables.schedule_table(group)),
        ("per-layer sparsity / channels kept", None, tables.layer_table(group)),
    ]:
        if table:
            lines += [f"### {dataset}: {title}", "", *([note, ""] if note else []), table, ""]
    return lines


def appendix(runs: list[RunResults], groups: list[list[RunResults]], chosen: list[RunResults], listed: set[int],
             unreadable: list[tuple[Path, str]]) -> list[str]:
    """Energy notes, where each figure came from, and the runs left out of the tables or with invalid fields."""
    lines = []
    if notes := [f"- {note}" for note in tables.energy_notes(chosen)]:
        lines += ["## Energy", "", "Energy shows n/a where a domain cannot be read:", "", *notes, ""]
    if chosen:
        lines += ["## Where each figure came from", "", tables.environment_table(chosen), ""]
    set_apart = [(r, "its model comes from a fit that did not finish (killed or failed)") for r in runs
                 if not r.finished]
    set_apart += [(r, "it records no seed, so it is not counted as one") for r in without_seed(runs, groups)]
    if set_apart:
        lines += ["## Runs left out of the tables", "", *[f"- `{r.path}`: {why}" for r, why in set_apart], ""]
    broken = [r for r in runs if r.problems]
    if broken or unreadable:
        lines += ["## Runs with missing or invalid fields", ""]
        lines += [f"- `{r.path}`: {'; '.join(r.problems[:3])}{'' if id(r) in listed else ' (left out of the tables)'}"
                  for r in broken]
        lines += [f"- `{path}`: left out, {reason}" for path, reason in unreadable] + [""]
    return lines


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
    (out.parent / "report_plots").mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    hidden = "" if all_runs else (f" (latest run of each experiment with its other seeds; {len(runs) - shown} older "
                                  "run(s) hidden)")
    lines = ["# lightning_prune report", "", f"Generated {now} from {shown} run(s) under `{logs}`{hidden}. Every "
             f"number below is read from a results.json; nothing is estimated. {STATS_NOTE}", ""]
    if not chosen:
        lines.append(f"No results.json found under `{logs}`: run a task first (e.g. `make demo`).")
    for dataset in sorted({r.dataset for r in chosen}):
        lines += dataset_section([r for r in chosen if r.dataset == dataset], dataset, out, references, max_drop)
    lines += handoff_section(logs) + ladder_section(logs)
    listed = {id(r) for r in (chosen if all_runs else [r for group in groups for r in group])}
    text = "\n".join(lines + appendix(runs, groups, chosen, listed, unreadable))
    atomic_write_bytes(out, text.encode())
    return text


def render_docs(option: str, folder: Path, logs: Path, write: bool) -> dict[Path, int | None]:
    """``docs.render``, any refusal naming the option (ValueError, so ``main`` prints one line)."""
    try:
        return docs.render(folder, logs, write=write)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-prune report", description=__doc__)
    parser.add_argument("--logs", default="logs", help="folder searched for results.json (default: logs)")
    parser.add_argument("--out", default="REPORT.md", help="markdown file to write (default: REPORT.md)")
    parser.add_argument("--all-runs", action="store_true", help="keep older runs of the same experiment too")
    parser.add_argument("--reference", action="append", default=[], metavar="EXPERIMENT",
                        help="baseline experiment that GraSP/SNIP runs of its dataset are compared with "
                        "(repeatable; default: the most recent baseline run of each dataset)")
    parser.add_argument("--max-drop", type=float, default=5.0, metavar="POINTS",
                        help="top-1 points a method may lose in the budget table (default: 5)")
    parser.add_argument("--snapshot", metavar="DIR", help="also copy the results.json and handoff.json of every "
                        "run shown into DIR (e.g. docs/results: the runs the docs cite, kept in the repository)")
    parser.add_argument("--render-docs", metavar="DIR", help="also render each template DIR/src/NAME.md.j2 into "
                        "DIR/NAME.md, its tables, figures and numbers from the runs under --logs")
    parser.add_argument("--check-docs", metavar="DIR", help="only compare each page DIR/NAME.md with the rendering "
                        "of its template from the runs under --logs; exit 1 when one differs")
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    if not logs.is_dir():
        parser.error(f"--logs: no such folder {logs}")
    try:
        if args.check_docs:
            stale = render_docs("--check-docs", Path(args.check_docs), logs, write=False)
            for page, line in stale.items():
                print(f"{page}: " + (f"stale from line {line} (`make render-docs`)" if line else "up to date"))
            return 1 if any(stale.values()) else 0
        if args.max_drop < 0:
            raise ValueError(f"--max-drop: top-1 points >= 0, got {args.max_drop}")
        if args.render_docs and not (Path(args.render_docs) / docs.SOURCES).is_dir():  # before anything is written
            raise ValueError(f"--render-docs: no templates folder {Path(args.render_docs) / docs.SOURCES}")
        build_report(logs, Path(args.out), args.all_runs, args.reference, args.max_drop)
        if args.snapshot:
            copied = docs.snapshot(seed_groups(load_runs(logs)), logs, Path(args.snapshot))
            print(f"{len(copied)} files (results.json, handoff.json) kept under {args.snapshot}")
        if args.render_docs:
            for page, line in render_docs("--render-docs", Path(args.render_docs), logs, write=True).items():
                print(f"{page}: " + (f"rewrote from line {line}" if line else "nothing to rewrite (up to date)"))
    except ValueError as err:
        parser.error(str(err))
    print(f"report written to {Path(args.out).resolve()} (plots in {Path(args.out).parent.resolve() / 'report_plots'})")
    return 0
