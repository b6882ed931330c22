"""``make fresh-clone-timing``: the set-up times the README states, measured, not typed.

Clones the committed HEAD beside this checkout (so that ``.ci/run`` finds ``../shared`` as CI does), times
``bash .ci/run`` (the install, then ``make test``) and then ``make demo`` in that clone, one after the other,
and writes the figures to ``docs/results/fresh-clone-timing.json``, which the README's template cites.
``python -m studies.fresh_clone [--into DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed).*?) in ([\d.]+)s", re.M)  # pytest's last line, -q or not


def timed(command: list[str], cwd: Path, log: Path) -> float:
    """Run ``command``, its output to ``log``; its wall seconds, or exit with its status when it fails."""
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.call(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{' '.join(command)} failed in {cwd} (exit {code}); see {log}")
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--into", type=Path, default=ROOT.parent / f"{ROOT.name}-fresh-clone",
                        help="where to clone (replaced; a sibling of this checkout, as CI's clone)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fresh-clone-timing.json")
    args = parser.parse_args(argv)
    shutil.rmtree(args.into, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(ROOT), str(args.into)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.into, check=True,
                            capture_output=True, text=True).stdout.strip()
    ci = timed(["bash", ".ci/run"], args.into, args.into / "ci.log")
    found = SUMMARY.findall((args.into / "ci.log").read_text())
    if not found:
        sys.exit(f"no pytest summary line in {args.into / 'ci.log'}")
    demo = timed(["make", "demo"], args.into, args.into / "demo.log")
    record = {"commit": commit, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "ci_seconds": round(ci, 1), "tests_seconds": float(found[-1][1]), "tests": found[-1][0],
              "demo_seconds": round(demo, 1)}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out)  # whole or not at all
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
