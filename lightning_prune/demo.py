"""``make demo``: every task on scikit-learn's digits, offline, then the report.

Each step is one ``lightning-prune`` command; the demo prints them so they can be re-run alone.
``python -m lightning_prune.demo [--configs DIR] [-- extra CLI overrides for every step]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lightning_prune.cli import main as cli_main
from lightning_prune.names import PRUNING_CONFIGS
from lightning_prune.report.cli import main as report_main

DEMO_CONFIGS = Path("configs/demo")
DEMO_FILES = ("baseline", *PRUNING_CONFIGS, "compound")
DEMO_EXPERIMENTS = tuple(f"digits_{name}" for name in DEMO_FILES)
BASELINE_RUN = "run:digits_baseline"  # the newest digits_baseline run: the one this demo just trained


def steps(configs: Path = DEMO_CONFIGS) -> list[tuple[str, list[str]]]:
    """Task 0, 1a, 1b (GraSP, SNIP, |GraSP|) and 2, in the order their checkpoints depend on each other."""
    return [
        ("task 0: train the digits baseline", ["fit", "--config", str(configs / "baseline.yaml")]),
        ("task 0: profile it", ["test", "--config", str(configs / "baseline.yaml"), f"--ckpt_path={BASELINE_RUN}"]),
        ("task 1a: sensitivity sweep, magnitude pruning, sparse export",
         ["fit", "--config", str(configs / "unstructured.yaml")]),
        ("task 1b: staged GraSP from random init", ["fit", "--config", str(configs / "grasp.yaml")]),
        ("task 1b: staged SNIP for comparison", ["fit", "--config", str(configs / "snip.yaml")]),
        ("task 1b: staged |GraSP| (lowest |theta * Hg| removed)", ["fit", "--config", str(configs / "grasp_abs.yaml")]),
        ("task 2: LASSO channel pruning", ["fit", "--config", str(configs / "channel.yaml")]),
        ("tasks 2 then 1a: the channel-pruned model pruned by magnitude (the compression ladder's chain)",
         ["fit", "--config", str(configs / "compound.yaml")]),
    ]


def handoff_steps(experiments: Sequence[str] = DEMO_EXPERIMENTS) -> list[tuple[str, list[str]]]:
    """Every pruned model handed on: state dict, ONNX (checked in ONNX Runtime) and int8, into its run's folder."""
    return [(f"hand-off: export {name} to ONNX and int8", ["export", "--run", f"run:{name}", "--quantize"])
            for name in experiments]


def refused_by_gate(reference: str, since: float, logs: Path = Path("logs")) -> bool:
    """Whether an export of ``run:<experiment>`` written after ``since`` lists that run under ``refused``."""
    experiment = reference.removeprefix("run:").split("/")[0].split(":")[0]
    exports = sorted((logs / experiment).glob("version_*/export/handoff.json"), key=lambda p: p.stat().st_mtime)
    if not exports or exports[-1].stat().st_mtime < since:
        return False
    try:
        refused = json.loads(exports[-1].read_text()).get("refused") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(r.get("variant", "")).startswith(f"{experiment}_v") for r in refused if isinstance(r, dict))


DISTRIBUTED_OPTIONS = ("--trainer.strategy", "--trainer.devices", "--trainer.num_nodes")


def run_step(argv: list[str]) -> int:
    """One ``lightning-prune`` command: in this process, or in its own when it runs distributed.

    Lightning's DDP launcher starts the other ranks by re-running the command line of the process
    it is in, which must therefore be ``python -m lightning_prune ...`` rather than the demo.
    """
    if any(arg.startswith(DISTRIBUTED_OPTIONS) for arg in argv):
        return subprocess.run([sys.executable, "-m", "lightning_prune", *argv]).returncode
    return cli_main(argv)


def run_demo(configs: Path = DEMO_CONFIGS, overrides: Sequence[str] = (), report: Path = Path("REPORT.md"),
             handoff: bool = True, seeds: int = 1, export_options: Sequence[str] = ()) -> int:
    """Run every step (stopping at the first failure), then write the report from ``logs/``.

    With ``seeds`` > 1 the whole chain runs once per seed (0, 1, ...): each seed's tasks prune that
    seed's baseline, each seed's runs are exported, and the report shows mean ± 95 % CI over the seeds.
    """
    started = time.perf_counter()
    todo = []
    for seed in range(seeds):
        chosen = [f"--seed_everything={seed}"] if seeds > 1 else []
        label = f" (seed {seed})" if seeds > 1 else ""
        todo += [(title + label, [*argv, *chosen, *overrides]) for title, argv in steps(configs)]
        if handoff:  # this seed's runs are the newest: export them before the next seed's replace them
            todo += [(title + label, [*argv, *export_options]) for title, argv in handoff_steps()]
    for title, argv in todo:
        print(f"\n=== {title}\n$ lightning-prune {' '.join(argv)}", flush=True)
        step_started, wall = time.perf_counter(), time.time()
        code = run_step(argv)
        print(f"--- {title}: {time.perf_counter() - step_started:.1f} s", flush=True)
        if code == 2 and argv[0] == "export" and refused_by_gate(argv[argv.index("--run") + 1], wall):
            print(f"demo: the int8 gate refused {argv[argv.index('--run') + 1]} (its handoff.json says why); "
                  "the report lists it as refused", flush=True)
            continue
        if code:
            print(f"demo stopped: '{title}' failed (exit {code})", file=sys.stderr)
            return code
    print(f"\n=== report\n$ lightning-prune report --logs logs --out {report}", flush=True)
    report_main(["--logs", "logs", "--out", str(report)])
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo finished in {minutes:.1f} min.")
    print("Results: logs/<experiment>/version_N/results.json (and results.md beside each).")
    print(f"Report: {report.resolve()} (plots in {report.resolve().parent / 'report_plots'})")
    print("TensorBoard: tensorboard --logdir logs  (then open http://localhost:6006)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_prune.demo", description=__doc__)
    parser.add_argument("--configs", type=Path, default=DEMO_CONFIGS, help="folder of the six demo configs")
    parser.add_argument("--out", type=Path, default=Path("REPORT.md"), help="report file (default: REPORT.md)")
    parser.add_argument("--no-handoff", action="store_true", help="skip the ONNX / int8 export of every run")
    parser.add_argument("--seeds", type=int, default=1, help="run the chain with seeds 0..N-1 (default: 1 run)")
    parser.add_argument("--export-option", action="append", default=[], metavar="OPTION",
                        help="an option added to every export, e.g. --export-option=--max-int8-drop=2 (repeatable)")
    parser.add_argument("overrides", nargs="*", help="CLI overrides added to every training step, after --")
    args = parser.parse_args(argv)
    missing = [name for name in DEMO_FILES if not (args.configs / f"{name}.yaml").is_file()]
    if missing:
        parser.error(f"--configs: {args.configs} lacks {', '.join(m + '.yaml' for m in missing)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return run_demo(args.configs, args.overrides, args.out, handoff=not args.no_handoff, seeds=args.seeds,
                    export_options=args.export_option)


if __name__ == "__main__":
    sys.exit(main())
