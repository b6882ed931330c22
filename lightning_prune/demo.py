"""``make demo``: every task on scikit-learn's digits, offline, then the report.

Each step is one ``lightning-prune`` command; the demo prints them so they can be re-run alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning_prune.cli import main as cli_main

DEMO = Path("configs/demo")
BASELINE_CKPT = "checkpoints/digits_baseline/last.ckpt"

STEPS: list[tuple[str, list[str]]] = [
    ("task 0: train the digits baseline", ["fit", "--config", str(DEMO / "baseline.yaml")]),
    ("task 0: profile it", ["test", "--config", str(DEMO / "baseline.yaml"), f"--ckpt_path={BASELINE_CKPT}"]),
]
OPTIONAL_STEPS: list[tuple[str, list[str]]] = [
    ("task 1a: sensitivity sweep, magnitude pruning, sparse export",
     ["fit", "--config", str(DEMO / "unstructured.yaml")]),
    ("task 1b: staged GraSP from random init", ["fit", "--config", str(DEMO / "grasp.yaml")]),
    ("task 1b: staged SNIP for comparison", ["fit", "--config", str(DEMO / "snip.yaml")]),
    ("task 2: LASSO channel pruning", ["fit", "--config", str(DEMO / "channel.yaml")]),
]


def steps() -> list[tuple[str, list[str]]]:
    """The baseline steps, then each task whose demo config exists."""
    return STEPS + [(title, argv) for title, argv in OPTIONAL_STEPS if Path(argv[2]).is_file()]


def main() -> int:
    started = time.perf_counter()
    for title, argv in steps():
        print(f"\n=== {title}\n$ lightning-prune {' '.join(argv)}", flush=True)
        code = cli_main(argv)
        if code:
            print(f"demo stopped: '{title}' failed (exit {code})", file=sys.stderr)
            return code
    report = Path("REPORT.md")
    try:
        from lightning_prune.report.cli import main as report_main
    except ImportError:
        report_main = None
    if report_main is not None:
        print("\n=== report\n$ lightning-prune report --logs logs --out REPORT.md", flush=True)
        report_main(["--logs", "logs", "--out", str(report)])
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo finished in {minutes:.1f} min.")
    print("Results: logs/<experiment>/version_N/results.json (and results.md beside each).")
    if report.is_file():
        print(f"Report: {report.resolve()}")
    print("TensorBoard: tensorboard --logdir logs  (then open http://localhost:6006)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
