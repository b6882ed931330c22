"""``make budget``: each method at every sparsity of a grid, for the report's accuracy-budget table.

The assignment asks for 70-90 % of the weights pruned within 5-15 points of top-1. This runs each
method's experiment file once per grid point (``--prune.target_sparsity``), as the experiment
``<experiment>_t<percent>``; the report's budget table then picks, per method, the highest sparsity
whose drop stays within ``--max-drop``. For task 2 the target is the share of the dense model's
parameters removed. A method whose file starts from a run (``model.pretrained: run:...``) prunes that
experiment's run of the same seed, so run the baseline first (``make demo``, ``make demo SEEDS=3``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_prune.names import PRUNING_CONFIGS
from lightning_prune.runs import grid_experiment
from studies.runner import Step, run

DEFAULT_TARGETS = (0.7, 0.8, 0.9)
STUDY = Path("logs/budget")


def _own_settings(config: Path) -> dict:
    """The experiment file's own keys (not those of the files it builds on)."""
    return yaml.safe_load(config.read_text()) or {}


def grid_plan(configs: Path, methods: Sequence[str], targets: Sequence[float], seeds: int,
              extra: Sequence[str] = ()) -> list[Step]:
    """One ``fit`` per seed, method and grid point."""
    steps = []
    for seed in range(seeds):
        for method in methods:
            config = configs / f"{method}.yaml"
            own = _own_settings(config)
            name = (own.get("run") or {}).get("experiment")
            if not name:
                raise ValueError(f"{config} names no run.experiment")
            start = str((own.get("model") or {}).get("pretrained") or "")
            source = start.removeprefix("run:").split("/")[0].split(":")[0] if start.startswith("run:") else None
            for target in targets:
                experiment = grid_experiment(name, target)
                argv = ["fit", "--config", str(config), f"--prune.target_sparsity={target}",
                        f"--run.experiment={experiment}", f"--seed_everything={seed}"]
                if source:
                    argv.append(f"--model.pretrained={{{source}@{seed}}}")
                steps.append(Step(f"{experiment}_s{seed}", [[*argv, *extra]], "budget", [(experiment, seed)],
                                  [(source, seed)] if source else []))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.budget", description=__doc__)
    parser.add_argument("--configs", type=Path, default=Path("configs/demo"), help="folder of experiment files")
    parser.add_argument("--methods", nargs="+", default=list(PRUNING_CONFIGS),
                        help=f"methods (default: {' '.join(PRUNING_CONFIGS)})")
    parser.add_argument("--grid", nargs="+", type=float, default=list(DEFAULT_TARGETS),
                        help="target sparsities (0.7 0.8 0.9)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per grid point (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    parser.add_argument("overrides", nargs="*", help="CLI overrides added to every run, after --")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in PRUNING_CONFIGS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(PRUNING_CONFIGS)}")
    missing = [m for m in args.methods if not (args.configs / f"{m}.yaml").is_file()]
    if missing:
        parser.error(f"--configs: {args.configs} lacks {', '.join(m + '.yaml' for m in missing)}")
    bad = [g for g in args.grid if not 0 < g < 1]
    if bad:
        parser.error(f"--grid: sparsities must be in (0, 1), got {bad}")
    if len({round(g, 6) for g in args.grid}) < len(args.grid):
        parser.error(f"--grid: a target is given twice: {args.grid}")
    if args.seeds < 1 or args.workers < 1:
        parser.error(f"--seeds and --workers must be >= 1, got {args.seeds} and {args.workers}")
    code = run(grid_plan(args.configs, args.methods, args.grid, args.seeds, args.overrides), STUDY, args.workers)
    if code == 0:
        print("`lightning-prune report --max-drop POINTS` shows the budget table.")
    return code


if __name__ == "__main__":
    sys.exit(main())
