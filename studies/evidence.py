"""``make evidence``: every comparison on the real CIFAR-10 subset, each method beside its controls, over seeds.

Groups (``--groups``, in this order by default), each a list of ``lightning-prune`` commands per seed:

- ``baseline``: the 40-epoch plateau baseline (fit, then test for its profile), the same trained 10 more
  epochs unpruned (the fair reference of the drops after fine-tuning), and one 60-epoch fit that shows the
  plateau; ``dense``: the 20-epoch never-pruned reference of 1b;
- ``1a``: magnitude pruning of seed k's baseline to 90 %, sensitivity allocation and its controls
  (one global threshold, uniform per layer);
- ``2``: channel pruning of seed k's baseline to 90 % of its parameters: LASSO, L1-norm and random
  selection, each with and without the least-squares refit;
- ``1b``: GraSP, SNIP and |GraSP| from random weights, staged and one-shot, and random masks at the
  per-layer sparsities of seed k's run of each (the layer-wise shuffle);
- ``ladder``: seed k's baseline channel-pruned at 70 % and then pruned further by magnitude (the chain of
  the compression ladder), the earlier chain from the 90 % channel run, and the baseline and every step of
  both chains exported with int8 (``make int8-diagnosis`` then studies those checkpoints' int8 loss);
- ``budget``: 1a, 2 and the staged 1b methods at 70 and 80 % (90 % is the runs above).

The headline comparisons (1a sensitivity vs global, GraSP staged vs one-shot, LASSO vs L1) run
``--headline-seeds`` seeds (5), the rest ``--seeds`` (3). Steps start in priority order, each
stage at every seed before the next: the references, the headline pairs, the ladder, GraSP's
shuffle and the first controls, the headline pairs' seeds beyond ``--seeds``, SNIP and |GraSP|
(one-shot, then staged) with their shuffles, the refit-free L1 and random channels, the 60-epoch
plateau check and the budget grid; so a set stopped early keeps whole
comparisons. A step whose run already finished (same experiment and seed) is skipped, so the
target resumes after a stop.
``--workers`` runs that many steps at once, each on one CPU thread (two one-thread runs do more
work on 2 cores than one two-thread run). The wall time of each step and of the whole set is
written to logs/evidence/timing.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from lightning_prune.runs import grid_experiment
from studies import runs
from studies.runner import Step, run

SUBSET = Path("configs/cifar10-subset")
BASELINE, DENSE, FINETUNED = "cifar10subset_baseline", "cifar10subset_dense", "cifar10subset_baseline_ft"
GROUPS = ("baseline", "dense", "1a", "2", "1b", "ladder", "budget")
BUDGET_TARGETS = (0.7, 0.8)
STUDY = Path("logs/evidence")


def _step(group: str, experiment: str, seed: int, argv: list[str], needs=(), kind: str = "fit") -> Step:
    """One command; done when its run finished (fit), wrote results.json (test) or was handed on (export)."""
    done = {"fit": lambda: runs.finished_run(experiment, seed) is not None,
            "test": lambda: runs.tested(experiment, seed), "export": lambda: runs.exported(experiment, seed)}[kind]
    label = f"{experiment}_s{seed}" + ("" if kind == "fit" else f"_{kind}")
    return Step(label, [argv], group, [(experiment, seed)] if kind == "fit" else [], list(needs), done)


def fit(group: str, config: str, experiment: str, seed: int, *extra: str, needs=()) -> Step:
    argv = ["fit", "--config", str(SUBSET / f"{config}.yaml"), f"--run.experiment={experiment}",
            f"--seed_everything={seed}", *extra]
    return _step(group, experiment, seed, argv, needs)


def pruned(group: str, config: str, experiment: str, seed: int, *extra: str) -> Step:
    """A fit that prunes seed ``seed``'s plateau baseline."""
    return fit(group, config, experiment, seed, f"--model.pretrained={{{BASELINE}@{seed}}}", *extra,
               needs=[(BASELINE, seed)])


def _headline(s: int) -> list[Step]:
    """Seed ``s``'s runs of the three headline comparisons at 90 %."""
    return [pruned("1a", "unstructured", "cifar10subset_unstructured", s),
            pruned("1a", "unstructured", "cifar10subset_unstructured_global", s, "--prune.allocation=global",
                   "--sweep=null"),
            pruned("2", "channel", "cifar10subset_channel", s),
            pruned("2", "channel", "cifar10subset_channel_l1", s, "--prune.selection=l1"),
            fit("1b", "grasp", "cifar10subset_grasp", s, "--prune.schedule=staged"),
            fit("1b", "grasp", "cifar10subset_grasp_oneshot", s, "--prune.schedule=oneshot")]


def _random_at(method: str, suffix: str, s: int) -> Step:
    """Random masks at the per-layer sparsities of seed ``s``'s run of ``method`` (the layer-wise shuffle)."""
    schedule = "oneshot" if suffix else "staged"
    experiment = f"cifar10subset_{method}{suffix}"
    return fit("1b", "grasp", f"cifar10subset_random_{method}{suffix}", s, "--prune.method=random",
               f"--prune.schedule={schedule}", f"--prune.layerwise_from={{{experiment}@{s}}}", needs=[(experiment, s)])


def _controls(s: int) -> list[Step]:
    """Seed ``s``'s first controls: the shuffle of GraSP, random and refit-free channels, uniform 1a."""
    return [_random_at("grasp", "_oneshot", s), _random_at("grasp", "", s),
            pruned("2", "channel", "cifar10subset_channel_random", s, "--prune.selection=random"),
            pruned("2", "channel", "cifar10subset_channel_nols", s, "--prune.reconstruct=false"),
            pruned("1a", "unstructured", "cifar10subset_unstructured_uniform", s, "--prune.allocation=uniform",
                   "--sweep=null")]


def _criterion(method: str, schedule: str) -> Callable[[int], list[Step]]:
    """Seed s's run of a 1b criterion in one schedule, and its shuffle."""
    suffix = "_oneshot" if schedule == "oneshot" else ""
    return lambda s: [fit("1b", method, f"cifar10subset_{method}{suffix}", s, f"--prune.schedule={schedule}"),
                      _random_at(method, suffix, s)]


def _refit_free(s: int) -> list[Step]:
    """Seed s's L1-norm and random channels without the least-squares refit."""
    return [pruned("2", "channel", f"cifar10subset_channel_{selection}_nols", s, f"--prune.selection={selection}",
                   "--prune.reconstruct=false") for selection in ("l1", "random")]


MORE_CONTROLS = (_criterion("snip", "oneshot"), _criterion("snip", "staged"), _criterion("grasp_abs", "oneshot"),
                 _criterion("grasp_abs", "staged"), _refit_free)


LADDER_CHANNEL = grid_experiment("cifar10subset_channel", 0.7)  # the channel target within the 5-point budget
LADDER_EXPORTS = (BASELINE, LADDER_CHANNEL, "cifar10subset_compound", "cifar10subset_channel",
                  "cifar10subset_compound_c90")


def _ladder(s: int) -> list[Step]:
    """Seed s's chain (channel at 70 %, then magnitude: compound.yaml), the earlier chain from channel at 90 %
    (whose int8 models collapsed once), and the int8 export of the baseline and of every step of both."""
    steps = [pruned("ladder", "channel", LADDER_CHANNEL, s, "--prune.target_sparsity=0.7"),
             fit("ladder", "compound", "cifar10subset_compound", s, f"--model.pretrained={{{LADDER_CHANNEL}@{s}}}",
                 needs=[(LADDER_CHANNEL, s)]),
             fit("ladder", "compound", "cifar10subset_compound_c90", s,
                 f"--model.pretrained={{cifar10subset_channel@{s}}}", "--prune.target_sparsity=0.8",
                 needs=[("cifar10subset_channel", s)])]
    return steps + [_step("ladder", experiment, s, ["export", "--run", f"{{{experiment}@{s}}}", "--quantize"],
                          [(experiment, s)], "export") for experiment in LADDER_EXPORTS]


def _test(group: str, config: str, experiment: str, s: int) -> Step:
    """The test of seed ``s``'s run of an unpruned reference: its profile and test accuracy."""
    return _step(group, experiment, s, ["test", "--config", str(SUBSET / f"{config}.yaml"),
                                        f"--ckpt_path={{{experiment}@{s}}}", f"--seed_everything={s}"],
                 [(experiment, s)], "test")


def _references(s: int) -> list[Step]:
    """Seed ``s``'s plateau baseline and 1b dense reference, each fitted then tested."""
    return [step for group, experiment, config in (("baseline", BASELINE, "baseline"), ("dense", DENSE, "dense"))
            for step in (fit(group, config, experiment, s), _test(group, config, experiment, s))]


def _finetuned(s: int) -> list[Step]:
    """Seed ``s``'s baseline trained 10 more epochs unpruned (the fair reference of the drops after fine-tuning)."""
    return [pruned("baseline", "baseline_ft", FINETUNED, s), _test("baseline", "baseline_ft", FINETUNED, s)]


def plan(seeds: int, headline: int) -> list[Step]:
    """Every step, in the order they start: the order is a priority, so a stopped set keeps whole comparisons."""
    steps = [step for s in range(headline) for step in _references(s)]
    for stage in (_headline, _finetuned, _ladder, _controls):
        steps += [step for s in range(seeds) for step in stage(s)]
    steps += [step for s in range(seeds, headline) for step in _headline(s)]
    for stage in MORE_CONTROLS:
        steps += [step for s in range(seeds) for step in stage(s)]
    steps.append(fit("baseline", "baseline", f"{BASELINE}_e60", 0, "--trainer.max_epochs=60"))
    steps.append(_step("baseline", f"{BASELINE}_e60", 0, ["test", "--config", str(SUBSET / "baseline.yaml"),
                                                           f"--run.experiment={BASELINE}_e60",
                                                           f"--ckpt_path={{{BASELINE}_e60@0}}", "--seed_everything=0"],
                       [(f"{BASELINE}_e60", 0)], "test"))
    for s in range(seeds):
        for target in BUDGET_TARGETS:
            for config in ("unstructured", "channel"):
                steps.append(pruned("budget", config, grid_experiment(f"cifar10subset_{config}", target), s,
                                    f"--prune.target_sparsity={target}"))
            for method in ("grasp", "snip", "grasp_abs"):
                steps.append(fit("budget", method, grid_experiment(f"cifar10subset_{method}", target), s,
                                 f"--prune.target_sparsity={target}"))
    unique: dict[str, Step] = {}  # a run two groups need (the ladder's channel run is a budget run) runs once
    for step in steps:
        unique.setdefault(step.label, step)
    return list(unique.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of every comparison (default 3)")
    parser.add_argument("--headline-seeds", type=int, default=5, help="seeds of the headline comparisons (default 5)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS, help="groups to run")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT",
                        help="only these experiments' steps (e.g. the staged 1b runs after a change of triggers)")
    parser.add_argument("--fresh", action="store_true", help="run the chosen steps again even if their runs finished")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and whether each is done")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.headline_seeds < args.seeds or args.workers < 1:
        parser.error("--seeds >= 1, --headline-seeds >= --seeds and --workers >= 1")
    steps = [s for s in plan(args.seeds, args.headline_seeds) if s.group in args.groups]
    if args.only:
        steps = [s for s in steps if any(s.label.startswith(f"{name}_s") for name in args.only)]
    if args.dry_run:
        for step in steps:
            print(f"{'done' if step.done() else 'todo'}  {step.group:<8} {' '.join(step.commands[0])}")
        return 0
    return run(steps, STUDY, args.workers, resume=not args.fresh, keep_going=True)


if __name__ == "__main__":
    sys.exit(main())
