"""``python -m lightning_prune.budget``: each method at every sparsity of a grid, for the accuracy-budget table.

The assignment asks for 70-90 % of the weights pruned within 5-15 points of top-1. This runs each
method's experiment file once per grid point (``--prune.target_sparsity``), as the experiment
``<experiment>_t<percent>``; the report's budget table then picks, per method, the highest sparsity
whose drop stays within ``--max-drop``. For task 2 the target is the share of the dense model's
parameters removed (ChannelPruning scales its per-layer ratios to reach it). Tasks 1a and 2 prune the
newest baseline run (``run:`` reference), so run the baseline first (``make demo`` does).
``--seeds N`` repeats the grid per seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_prune.demo import run_step
from lightning_prune.names import PRUNING_CONFIGS
from lightning_prune.runs import grid_experiment

METHODS = PRUNING_CONFIGS
GRID = (0.7, 0.8, 0.9)


def experiment_name(config: Path) -> str:
    """The experiment an experiment file names (``run.experiment``)."""
    name = ((yaml.safe_load(config.read_text()) or {}).get("run") or {}).get("experiment")
    if not name:
        raise ValueError(f"{config} names no run.experiment")
    return str(name)


def grid_steps(configs: Path, methods: Sequence[str], grid: Sequence[float], seeds: int) -> list[list[str]]:
    """One ``fit`` per seed, method and grid point."""
    steps = []
    for seed in range(seeds):
        for method in methods:
            config = configs / f"{method}.yaml"
            name = experiment_name(config)
            for target in grid:
                steps.append(["fit", "--config", str(config), f"--prune.target_sparsity={target}",
                              f"--run.experiment={grid_experiment(name, target)}", f"--seed_everything={seed}"])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_prune.budget", description=__doc__)
    parser.add_argument("--configs", type=Path, default=Path("configs/demo"), help="folder of experiment files")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"methods (default: {' '.join(METHODS)})")
    parser.add_argument("--grid", nargs="+", type=float, default=list(GRID), help="target sparsities (0.7 0.8 0.9)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per grid point (default 1)")
    parser.add_argument("overrides", nargs="*", help="CLI overrides added to every run, after --")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    missing = [m for m in args.methods if not (args.configs / f"{m}.yaml").is_file()]
    if missing:
        parser.error(f"--configs: {args.configs} lacks {', '.join(m + '.yaml' for m in missing)}")
    bad = [g for g in args.grid if not 0 < g < 1]
    if bad:
        parser.error(f"--grid: sparsities must be in (0, 1), got {bad}")
    if len({round(g, 6) for g in args.grid}) < len(args.grid):
        parser.error(f"--grid: a target is given twice: {args.grid}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    started = time.perf_counter()
    for argv_ in grid_steps(args.configs, args.methods, args.grid, args.seeds):
        argv_ = [*argv_, *args.overrides]
        print(f"\n$ lightning-prune {' '.join(argv_)}", flush=True)
        code = run_step(argv_)
        if code:
            print(f"budget grid stopped: exit {code}", file=sys.stderr)
            return code
    print(f"\nBudget grid finished in {(time.perf_counter() - started) / 60:.1f} min; "
          "`lightning-prune report --max-drop POINTS` shows the budget table.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
