"""One step of a study: its ``lightning-prune`` commands in turn, in this one process.

``python -m studies.sequence '<JSON list of argument lists>'``. Python and torch start once for
the whole list, which is most of a short digits command's time. ``{EXP@seed}`` arguments resolve
just before their command starts, so a command finds the run the one before it wrote. A command that
runs distributed gets its own process: Lightning's DDP launcher starts the other ranks by re-running
the command line of the process it is in. An export refused by the int8 gate (exit 2, and its
handoff.json lists it under ``refused``) counts as done: the report shows it as refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from lightning_prune.cli import main as cli_main
from studies.runs import LOGS, name_seed_runs

DISTRIBUTED_OPTIONS = ("--trainer.strategy", "--trainer.devices", "--trainer.num_nodes")


def refused_by_gate(reference: str, since: float, logs: Path = LOGS) -> bool:
    """Whether an export of ``reference`` (``run:E/version_N``) written after ``since`` lists it under ``refused``."""
    experiment = reference.removeprefix("run:").split("/")[0].split(":")[0]
    exports = sorted((logs / experiment).glob("version_*/export/handoff.json"), key=lambda p: p.stat().st_mtime)
    if not exports or exports[-1].stat().st_mtime < since:
        return False
    try:
        refused = json.loads(exports[-1].read_text()).get("refused") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(r.get("variant", "")).startswith(f"{experiment}_v") for r in refused if isinstance(r, dict))


def run_command(argv: list[str]) -> int:
    """One ``lightning-prune`` command; 0 also for an export the int8 gate refused."""
    started = time.time()
    if any(arg.startswith(DISTRIBUTED_OPTIONS) for arg in argv):
        code = subprocess.run([sys.executable, "-m", "lightning_prune", *argv]).returncode
    else:
        code = cli_main(argv)
    if code == 2 and argv[0] == "export" and refused_by_gate(argv[argv.index("--run") + 1], started):
        print(f"the int8 gate refused {argv[argv.index('--run') + 1]}; its handoff.json says why", flush=True)
        return 0
    return code


def run_sequence(commands: list[list[str]]) -> int:
    """Each command in turn; the first failure ends the step with its exit code."""
    for argv in commands:
        argv = name_seed_runs(argv)
        print(f"\n$ lightning-prune {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        code = run_command(argv)
        print(f"--- exit {code} after {time.perf_counter() - started:.1f} s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_sequence(json.loads(sys.argv[1])))
