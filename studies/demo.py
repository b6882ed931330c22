"""``make demo``: every task on scikit-learn's digits, offline, every run handed on with int8, then the report.

``python -m studies.demo [--configs DIR] [--seeds N] [-- extra CLI overrides for every training step]``.
The runner prints each ``lightning-prune`` command, so any step can be re-run alone. Two steps run at
a time; the tasks that start from the baseline (1a, 2 and its chain) wait for it, the 1b runs start
from random weights and need nothing. With ``--seeds N`` the whole plan runs once per seed, each
seed's tasks pruning that seed's baseline, and the report shows mean ± 95 % CI over the seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from studies.runner import Step, run

CONFIGS = Path("configs/demo")
FILES = ("baseline", "unstructured", "grasp", "snip", "grasp_abs", "channel", "compound")
STUDY = Path("logs/demo")


def _fit(configs: Path, name: str, seed: int, extra: Sequence[str], *options: str) -> list[str]:
    return ["fit", "--config", str(configs / f"{name}.yaml"), f"--seed_everything={seed}", *options, *extra]


def _export(experiment: str, seed: int, options: Sequence[str]) -> list[str]:
    return ["export", "--run", f"{{{experiment}@{seed}}}", "--quantize", *options]


def seed_steps(seed: int, configs: Path = CONFIGS, extra: Sequence[str] = (),
               export: Sequence[str] | None = ()) -> list[Step]:
    """One seed's tasks 0, 1a, 1b and 2 (and the chain 2 -> 1a); each step exports its runs."""
    base = f"{{digits_baseline@{seed}}}"

    def step(label: str, fits: list[tuple[str, list[str]]], needs: Sequence[str] = ()) -> Step:
        commands = []
        for name, argv in fits:
            commands.append(argv)
            if export is not None and argv[0] == "fit":
                commands.append(_export(f"digits_{name}", seed, export))
        makes = list(dict.fromkeys((f"digits_{n}", seed) for n, _ in fits))
        return Step(f"{label}_s{seed}", commands, "demo", makes,
                    [(f"digits_{n}", seed) for n in needs])

    test = ["test", "--config", str(configs / "baseline.yaml"), f"--seed_everything={seed}", f"--ckpt_path={base}",
            *extra]
    channel = [("channel", _fit(configs, "channel", seed, extra, f"--model.pretrained={base}")),
               ("compound", _fit(configs, "compound", seed, extra, f"--model.pretrained={{digits_channel@{seed}}}"))]
    return [  # the three 1b runs first, so that both workers share them while the baseline's tasks wait
        step("task0_baseline", [("baseline", _fit(configs, "baseline", seed, extra)), ("baseline", test)]),
        step("task1b_grasp", [("grasp", _fit(configs, "grasp", seed, extra))]),
        step("task1b_snip", [("snip", _fit(configs, "snip", seed, extra))]),
        step("task1b_grasp_abs", [("grasp_abs", _fit(configs, "grasp_abs", seed, extra))]),
        step("task2_channel_then_1a", channel, needs=["baseline"]),
        step("task1a_unstructured", [("unstructured", _fit(configs, "unstructured", seed, extra,
                                                           f"--model.pretrained={base}"))], needs=["baseline"]),
    ]


def plan(seeds: int = 1, configs: Path = CONFIGS, extra: Sequence[str] = (), export: Sequence[str] | None = (),
         report: Path = Path("REPORT.md")) -> list[Step]:
    """Every seed's steps, then the report from ``logs/`` once they all finished."""
    steps = [step for seed in range(seeds) for step in seed_steps(seed, configs, extra, export)]
    needs = [key for step in steps for key in step.makes]
    return [*steps, Step("report", [["report", "--logs", "logs", "--out", str(report)]], "demo", [], needs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.demo", description=__doc__)
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder of the seven demo configs")
    parser.add_argument("--out", type=Path, default=Path("REPORT.md"), help="report file (default: REPORT.md)")
    parser.add_argument("--no-handoff", action="store_true", help="skip the ONNX / int8 export of every run")
    parser.add_argument("--seeds", type=int, default=1, help="run the plan with seeds 0..N-1 (default: seed 0)")
    parser.add_argument("--workers", type=int, default=2,
                        help="steps at once, one CPU thread each (default 2; 0: one after another in this process)")
    parser.add_argument("--export-option", action="append", default=[], metavar="OPTION",
                        help="an option added to every export, e.g. --export-option=--max-int8-drop=2 (repeatable)")
    parser.add_argument("overrides", nargs="*", help="CLI overrides added to every training step, after --")
    args = parser.parse_args(argv)
    missing = [name for name in FILES if not (args.configs / f"{name}.yaml").is_file()]
    if missing:
        parser.error(f"--configs: {args.configs} lacks {', '.join(m + '.yaml' for m in missing)}")
    if args.seeds < 1 or args.workers < 0:
        parser.error(f"--seeds must be >= 1 and --workers >= 0, got {args.seeds} and {args.workers}")
    started = time.perf_counter()
    steps = plan(args.seeds, args.configs, args.overrides, None if args.no_handoff else args.export_option, args.out)
    code = run(steps, STUDY, args.workers)
    if code == 0:
        print(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min.")
        print("Results: logs/<experiment>/version_N/results.json (and results.md beside each); step logs: logs/demo/")
        print(f"Report: {args.out.resolve()} (plots in {args.out.resolve().parent / 'report_plots'})")
        print("TensorBoard: tensorboard --logdir logs  (then open http://localhost:6006)")
    return code


if __name__ == "__main__":
    sys.exit(main())
