"""A study's child processes: they end with the runner, and a resume never starts one twice.

Each step runs in its own process group and, on Linux, gets SIGTERM when the runner dies, even by
``kill -9`` (``PR_SET_PDEATHSIG``), so no fit trains on unwatched. The runner also stops every group
it started when it is interrupted or terminated. The process id of each running step is kept in
``running.json`` beside the timing file; a resume leaves a step alone while that process still lives.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
MARK = "studies.sequence"  # in the command line of every step, so a reused process id is not taken for one


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux only; elsewhere the handlers suffice)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start one step in its own process group, its output into ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process running a step."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "\nState:\tZ" not in status and MARK in cmdline


def stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.time() + grace_s
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.1)


class Registry:
    """``running.json``: step label -> process id of the step running now."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2) + "\n")

    def add(self, label: str, pid: int) -> None:
        self._write({**self.read(), label: pid})

    def remove(self, label: str) -> None:
        self._write({k: v for k, v in self.read().items() if k != label})


class Orphan:
    """A step still running from an earlier runner: waited for like a child, never started again."""

    def __init__(self, pid: int, finished: Any) -> None:
        self.pid, self.finished, self.returncode = pid, finished, None

    def poll(self) -> int | None:
        if self.returncode is None and not alive(self.pid):
            self.returncode = 0 if self.finished() else 1
        return self.returncode
