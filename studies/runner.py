"""The one runner of every study: steps start as the runs they need finish, ``workers`` at a time.

A step is a list of ``lightning-prune`` commands run in one process (:mod:`studies.sequence`) on one
CPU thread: two one-thread processes do more on 2 cores than one two-thread process. Each step's
output goes to ``<folder>/steps/<label>.log`` and its wall time to ``<folder>/timing.json``. With
``resume`` a step that is already done (its run finished) is skipped, so a stopped study goes on where
it stopped; without it every step runs again and writes new runs. A step waits for the runs it
``needs``: one this plan makes waits for that step, one it does not make must have finished before.
``workers=0`` runs the steps one after another in this process (to debug one, or where starting
processes costs more than it saves).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studies import procs
from studies.runs import finished_run
from studies.sequence import run_sequence

ROOT = Path(__file__).resolve().parents[1]
RunKey = tuple[str, int]  # (experiment, seed)


@dataclass
class Step:
    """Commands run in one process; ``{EXP@seed}`` in an argument is that seed's finished run of EXP."""

    label: str
    commands: list[list[str]]
    group: str = ""
    makes: list[RunKey] = field(default_factory=list)  # the runs this step finishes
    needs: list[RunKey] = field(default_factory=list)  # the runs that must finish before it starts
    done: Callable[[], bool] | None = None  # whether an earlier study already did it (``resume``)


@dataclass
class Progress:
    """What the runner knows while it runs: what is done, running, failed, and the timing record."""

    todo: list[Step]
    made: set[RunKey]
    planned: set[RunKey]
    timing: dict
    running: list[tuple[Step, subprocess.Popen | procs.Orphan, float]] = field(default_factory=list)
    failures: int = 0

    def ready(self, step: Step) -> bool:
        return all(key in self.made if key in self.planned else finished_run(*key) is not None for key in step.needs)


def _save(timing: dict, path: Path) -> None:
    """The timing file with its totals: wall time over the sessions, and the summed time of the steps."""
    timing["wall_seconds"] = sum(x["end"] - x["start"] for x in timing["sessions"])
    timing["worker_seconds"] = round(sum(x["seconds"] for x in timing["steps"]), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timing, indent=2) + "\n")


def _interrupted(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(steps: list[Step], folder: Path, workers: int = 2, resume: bool = False, keep_going: bool = False) -> int:
    """Run the steps; 0 when every one succeeded. ``keep_going``: a failure stops only the steps that need it."""
    timing_path, registry = folder / "timing.json", procs.Registry(folder / "running.json")
    timing = json.loads(timing_path.read_text()) if resume and timing_path.is_file() else {"steps": []}
    skipped = [s for s in steps if resume and s.done is not None and s.done()]
    state = Progress([s for s in steps if s not in skipped], {k for s in skipped for k in s.makes},
                     {k for s in steps for k in s.makes}, timing)
    print(f"{folder.name}: {len(steps)} steps, {len(skipped)} already done, {len(state.todo)} to run", flush=True)
    for step in list(state.todo):  # a step an earlier runner started and that still runs is waited for
        pid = registry.read().get(step.label)
        if resume and pid is not None and procs.alive(pid):
            print(f"{step.label} still runs (pid {pid}); waiting for it instead of starting it again", flush=True)
            state.todo.remove(step)
            state.running.append((step, procs.Orphan(pid, step.done or (lambda: False)), time.time()))
    if workers == 0:
        return _in_process(state, folder, keep_going)
    stop_on = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _loop(state, folder, workers, keep_going, registry)
    finally:  # interrupted or terminated: no step trains on without the runner
        procs.stop([proc for _, proc, _ in state.running if isinstance(proc, subprocess.Popen)])
        for sig, handler in stop_on.items():
            signal.signal(sig, handler)


def _finish(state: Progress, step: Step, code: int, seconds: float, log: Path) -> None:
    """Record a step that ended; show the end of its log when it failed."""
    state.failures += code != 0
    if code == 0:
        state.made.update(step.makes)
    state.timing["steps"].append({"group": step.group, "step": step.label, "seconds": round(seconds, 1), "exit": code,
                                  "commands": [" ".join(c) for c in step.commands]})
    print(f"[{code}] {seconds / 60:5.1f} min  {step.label}", flush=True)
    if code and log.is_file():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(f"    {line}" for line in tail), file=sys.stderr, flush=True)


def _start(step: Step, folder: Path, registry: procs.Registry) -> subprocess.Popen:
    print(f"=== {step.label}" + "".join(f"\n$ lightning-prune {' '.join(c)}" for c in step.commands), flush=True)
    log = folder / "steps" / f"{step.label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = procs.spawn([sys.executable, "-m", "studies.sequence", json.dumps(step.commands)], log, env)
    registry.add(step.label, proc.pid)
    return proc


def _in_process(state: Progress, folder: Path, keep_going: bool) -> int:
    """Each step in turn in this process, in plan order as its needs finish; output to the terminal."""
    session = {"start": round(time.time()), "end": round(time.time()), "workers": 0}
    state.timing.setdefault("sessions", []).append(session)
    while state.todo and (keep_going or not state.failures):
        step = next((s for s in state.todo if state.ready(s)), None)
        if step is None:
            break
        state.todo.remove(step)
        print(f"=== {step.label}", flush=True)
        started = time.time()
        _finish(state, step, run_sequence(step.commands), time.time() - started, folder / "no.log")
    session["end"] = round(time.time())
    _save(state.timing, folder / "timing.json")
    return 1 if state.failures or state.todo else 0


def _loop(state: Progress, folder: Path, workers: int, keep_going: bool, registry: procs.Registry) -> int:
    """Start the steps as their needs finish and record each one's wall time; returns the exit code."""
    started = time.time()
    session = {"start": round(started), "end": round(started), "workers": workers}
    state.timing.setdefault("sessions", []).append(session)
    while state.todo or state.running:
        for step, proc, t0 in list(state.running):
            if proc.poll() is not None:
                state.running.remove((step, proc, t0))
                registry.remove(step.label)
                _finish(state, step, proc.returncode, time.time() - t0, folder / "steps" / f"{step.label}.log")
                session["end"] = round(time.time())
                _save(state.timing, folder / "timing.json")
        if state.failures and not keep_going:
            state.todo.clear()  # the steps already running end on their own
            continue
        ready = [s for s in state.todo if state.ready(s)]
        if state.todo and not ready and not state.running:
            print(f"{folder.name}: {len(state.todo)} steps wait for runs that did not finish; stopping",
                  file=sys.stderr)
            state.failures += len(state.todo)
            break
        while ready and len(state.running) < workers:
            step = ready.pop(0)
            state.todo.remove(step)
            state.running.append((step, _start(step, folder, registry), time.time()))
        time.sleep(1)
    session["end"] = round(time.time())
    _save(state.timing, folder / "timing.json")
    print(f"{folder.name}: {(time.time() - started) / 60:.1f} min, {state.failures} failed", flush=True)
    return 1 if state.failures else 0
