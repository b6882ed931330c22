"""``make evidence``: every comparison on the real CIFAR-10 subset, each method beside its controls, over seeds.

Groups (``--groups``, in this order by default), each a list of ``lightning-prune`` commands per seed:

- ``baseline``: the 40-epoch plateau baseline (fit, then test for its profile), and one 60-epoch fit
  that shows the plateau; ``dense``: the 20-epoch never-pruned reference of 1b;
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
written to ``--timing`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_prune import evidence_procs as procs
from lightning_prune.runs import grid_experiment, versions

SUBSET = Path("configs/cifar10-subset")
LOGS, CHECKPOINTS = Path("logs"), Path("checkpoints")
BASELINE, DENSE = "cifar10subset_baseline", "cifar10subset_dense"
GROUPS = ("baseline", "dense", "1a", "2", "1b", "ladder", "budget")
GRID = (0.7, 0.8)


@dataclass
class Step:
    """One ``lightning-prune`` command; ``{EXP@seed}`` in an argument becomes that seed's finished run of EXP."""

    group: str
    experiment: str
    seed: int
    argv: list[str]
    needs: list[tuple[str, int]] = field(default_factory=list)  # (experiment, seed) runs that must finish first
    test: bool = False  # a `test` run: done when its results.json exists
    export: bool = False  # an `export`: done when the exported run's handoff.json exists

    @property
    def key(self) -> tuple[str, int]:
        return self.experiment, self.seed


def _seed_of(folder: Path) -> int | None:
    try:
        return int((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("seed_everything"))
    except (OSError, TypeError, ValueError, yaml.YAMLError):
        return None


def finished_run(experiment: str, seed: int, logs: Path = LOGS, checkpoints: Path = CHECKPOINTS) -> int | None:
    """The newest version of ``experiment`` fitted with ``seed`` whose fit finished (finished.json)."""
    found = [v for v in versions(checkpoints / experiment)
             if (checkpoints / experiment / f"version_{v}" / "finished.json").is_file()
             and _seed_of(logs / experiment / f"version_{v}") == seed]
    return found[-1] if found else None


def tested(experiment: str, seed: int, logs: Path = LOGS) -> bool:
    """A `test` run of ``experiment`` with ``seed`` wrote its results.json."""
    for v in versions(logs / experiment):
        folder = logs / experiment / f"version_{v}"
        if (folder / "results.json").is_file() and _seed_of(folder) == seed and not (
                CHECKPOINTS / experiment / f"version_{v}" / "finished.json").is_file():
            return True
    return False


def exported(experiment: str, seed: int, logs: Path = LOGS) -> bool:
    version = finished_run(experiment, seed)
    return version is not None and (logs / experiment / f"version_{version}" / "export" / "handoff.json").is_file()


def done(step: Step) -> bool:
    if step.export:
        return exported(step.experiment, step.seed)
    return tested(step.experiment, step.seed) if step.test else finished_run(step.experiment, step.seed) is not None


def fit(group: str, config: str, experiment: str, seed: int, *extra: str, needs=()) -> Step:
    argv = ["fit", "--config", str(SUBSET / f"{config}.yaml"), f"--run.experiment={experiment}",
            f"--seed_everything={seed}", *extra]
    return Step(group, experiment, seed, argv, list(needs))


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
    return steps + [Step("ladder", experiment, s, ["export", "--run", f"{{{experiment}@{s}}}", "--quantize"],
                         [(experiment, s)], export=True) for experiment in LADDER_EXPORTS]


def _references(s: int) -> list[Step]:
    """Seed ``s``'s plateau baseline and 1b dense reference, each fitted then tested."""
    steps = []
    for group, experiment, config in (("baseline", BASELINE, "baseline"), ("dense", DENSE, "dense")):
        steps.append(fit(group, config, experiment, s))
        steps.append(Step(group, experiment, s, ["test", "--config", str(SUBSET / f"{config}.yaml"),
                                                 f"--ckpt_path={{{experiment}@{s}}}", f"--seed_everything={s}"],
                          [(experiment, s)], test=True))
    return steps


def plan(seeds: int, headline: int) -> list[Step]:
    """Every step, in the order they start: the order is a priority, so a stopped set keeps whole comparisons."""
    steps = [step for s in range(headline) for step in _references(s)]
    for stage in (_headline, _ladder, _controls):
        steps += [step for s in range(seeds) for step in stage(s)]
    steps += [step for s in range(seeds, headline) for step in _headline(s)]
    for stage in MORE_CONTROLS:
        steps += [step for s in range(seeds) for step in stage(s)]
    steps.append(fit("baseline", "baseline", f"{BASELINE}_e60", 0, "--trainer.max_epochs=60"))
    steps.append(Step("baseline", f"{BASELINE}_e60", 0, ["test", "--config", str(SUBSET / "baseline.yaml"),
                                                          f"--run.experiment={BASELINE}_e60",
                                                          f"--ckpt_path={{{BASELINE}_e60@0}}", "--seed_everything=0"],
                      [(f"{BASELINE}_e60", 0)], test=True))
    for s in range(seeds):
        for target in GRID:
            for config in ("unstructured", "channel"):
                steps.append(pruned("budget", config, grid_experiment(f"cifar10subset_{config}", target), s,
                                    f"--prune.target_sparsity={target}"))
            for method in ("grasp", "snip", "grasp_abs"):
                steps.append(fit("budget", method, grid_experiment(f"cifar10subset_{method}", target), s,
                                 f"--prune.target_sparsity={target}"))
    unique: dict[tuple, Step] = {}  # a run two groups need (the ladder's channel run is a budget run) runs once
    for step in steps:
        unique.setdefault((step.key, step.test, step.export), step)
    return list(unique.values())


def resolve(argv: list[str]) -> list[str]:
    """``{EXP@seed}`` -> ``run:EXP/version_N`` of that seed's finished run."""
    out = []
    for arg in argv:
        if "{" in arg and "@" in arg:
            head, rest = arg.split("{", 1)
            ref, tail = rest.split("}", 1)
            experiment, seed = ref.rsplit("@", 1)
            version = finished_run(experiment, int(seed))
            if version is None:
                raise RuntimeError(f"{experiment} has no finished run of seed {seed}")
            arg = f"{head}run:{experiment}/version_{version}{tail}"
        out.append(arg)
    return out


def _save(timing: dict, path: Path) -> None:
    """The timing file with its totals: wall time over the sessions, and the summed time of the steps."""
    timing["wall_seconds"] = sum(x["end"] - x["start"] for x in timing["sessions"])
    timing["worker_seconds"] = round(sum(x["seconds"] for x in timing["steps"]), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timing, indent=2) + "\n")


def run(steps: list[Step], workers: int, timing_path: Path) -> int:
    """Run the steps, ``workers`` at a time on one thread each, each once its ``needs`` finished."""
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"steps": []}
    todo = [s for s in steps if not done(s)]
    print(f"evidence: {len(steps)} steps, {len(steps) - len(todo)} already done, {len(todo)} to run", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    registry = procs.Registry(timing_path.parent / "running.json")
    running: list[tuple[Step, subprocess.Popen | procs.Orphan, float]] = []
    for step in list(todo):  # a step an earlier runner started and that still runs is waited for, not restarted
        pid = registry.read().get(_label(step))
        if pid is not None and procs.alive(pid):
            print(f"evidence: {_label(step)} still runs (pid {pid}); waiting for it instead of starting it again",
                  flush=True)
            todo.remove(step)
            running.append((step, procs.Orphan(pid, lambda s=step: done(s)), time.time()))
    stop_on = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _loop(todo, running, workers, timing, timing_path, env, registry)
    finally:  # interrupted or terminated: no step trains on without the runner
        procs.stop([proc for _, proc, _ in running if isinstance(proc, subprocess.Popen)])
        for sig, handler in stop_on.items():
            signal.signal(sig, handler)


def _label(step: Step) -> str:
    return f"{step.experiment}@{step.seed}{'_test' if step.test else '_export' if step.export else ''}"


def _interrupted(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _loop(todo: list[Step], running: list, workers: int, timing: dict, timing_path: Path,
          env: dict[str, str], registry: procs.Registry) -> int:
    """Start the steps as their needs finish and record each one's wall time; returns the exit code."""
    started, failures = time.time(), 0
    session = {"start": round(started), "end": round(started), "workers": workers}
    if "sessions" not in timing and timing.get("wall_seconds"):  # a file written before sessions were kept
        timing["sessions"] = [{"start": 0, "end": round(timing["wall_seconds"]), "workers": workers}]
    timing.setdefault("sessions", []).append(session)
    while todo or running:
        for step, proc, t0 in list(running):
            if proc.poll() is not None:
                running.remove((step, proc, t0))
                registry.remove(_label(step))
                seconds = time.time() - t0
                failures += proc.returncode != 0
                timing["steps"].append({"group": step.group, "experiment": step.experiment, "seed": step.seed,
                                        "command": " ".join(step.argv), "seconds": round(seconds, 1),
                                        "exit": proc.returncode, "workers": workers})
                session["end"] = round(time.time())
                _save(timing, timing_path)
                print(f"[{proc.returncode}] {seconds / 60:5.1f} min  {' '.join(step.argv)}", flush=True)
        ready = [s for s in todo if all(finished_run(e, k) is not None for e, k in s.needs)]
        blocked = not ready and not running
        while ready and len(running) < workers:
            step = ready.pop(0)
            todo.remove(step)
            kind = "_test" if step.test else "_export" if step.export else ""
            log = Path("logs") / "evidence" / f"{step.experiment}_s{step.seed}{kind}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "lightning_prune", *resolve(step.argv)]
            proc = procs.spawn(command, log, env)
            registry.add(_label(step), proc.pid)
            running.append((step, proc, time.time()))
        if blocked:
            print(f"evidence: {len(todo)} steps wait for runs that did not finish; stopping", file=sys.stderr)
            failures += len(todo)
            break
        time.sleep(2)
    session["end"] = round(time.time())
    _save(timing, timing_path)
    print(f"evidence: {(time.time() - started) / 60:.1f} min, {failures} failed", flush=True)
    return 1 if failures else 0


def snapshot_ladder(target: Path, seeds: int) -> int:
    """The ladder's exports kept for the docs: ``target`` is replaced by each seed's handoff.json files."""
    import shutil

    files = []
    for experiment in LADDER_EXPORTS:
        for seed in range(seeds):
            version = finished_run(experiment, seed)
            handoff = LOGS / experiment / f"version_{version}" / "export" / "handoff.json"
            if version is None or not handoff.is_file():
                print(f"evidence: {experiment} seed {seed} has no export (make evidence-ladder)", file=sys.stderr)
                return 1
            files.append(handoff)
    if target.exists():
        shutil.rmtree(target)
    for handoff in files:
        destination = target / handoff.relative_to(LOGS)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(handoff, destination)
    (target / "summary.json").write_text(json.dumps(ladder_shares(files), indent=2) + "\n")
    print(f"evidence: {len(files)} handoff.json files and summary.json kept under {target}")
    return 0


def ladder_shares(files: list[Path]) -> dict[str, float]:
    """What each step of the chain removes, from its exports (means over the seeds): the share of the dense
    parameters the channel surgery cuts out, and the share of the channel-pruned model's non-zero weights the
    magnitude step then zeroes."""
    records: dict[str, list[dict]] = {}
    for path in files:
        doc = json.loads(path.read_text())
        for v in doc["variants"] + doc.get("refused", []):
            records.setdefault(path.parts[-4], []).append(v)

    def mean(experiment: str, key: str) -> float:
        values = [r[key] for r in records[experiment]]
        return sum(values) / len(values)

    dense, channel = mean(BASELINE, "params"), mean(LADDER_CHANNEL, "params")
    return {"channel_surgery_share": 1 - channel / dense,
            "channel_removed_share": 1 - mean(LADDER_CHANNEL, "nonzero_params") / dense,
            "magnitude_share_of_remaining": 1 - mean("cifar10subset_compound", "nonzero_params")
            / mean(LADDER_CHANNEL, "nonzero_params")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_prune.evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of every comparison (default 3)")
    parser.add_argument("--headline-seeds", type=int, default=5, help="seeds of the headline comparisons (default 5)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS, help="groups to run")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    parser.add_argument("--timing", type=Path, default=Path("logs/evidence/timing.json"), help="wall times (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and whether each is done")
    parser.add_argument("--snapshot-ladder", type=Path, metavar="DIR",
                        help="copy the ladder runs' handoff.json files (each seed's finished run) to DIR, laid out as "
                        "under logs/, and stop (make ladder-docs)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.headline_seeds < args.seeds or args.workers < 1:
        parser.error("--seeds >= 1, --headline-seeds >= --seeds and --workers >= 1")
    if args.snapshot_ladder:
        return snapshot_ladder(args.snapshot_ladder, args.seeds)
    steps = [s for s in plan(args.seeds, args.headline_seeds) if s.group in args.groups]
    if args.dry_run:
        for step in steps:
            print(f"{'done' if done(step) else 'todo'}  {step.group:<8} {' '.join(step.argv)}")
        return 0
    return run(steps, args.workers, args.timing)


if __name__ == "__main__":
    sys.exit(main())
