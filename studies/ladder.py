"""``make ladder-docs``: the compression ladder's exports kept for the docs, and what each step of the chain removes.

``python -m studies.ladder DIR [--seeds N]`` replaces DIR by the handoff.json of each seed's finished
run of every ladder experiment (laid out as under logs/), plus summary.json; ``make render-docs`` then
renders the ladder from them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from studies.evidence import BASELINE, LADDER_CHANNEL, LADDER_EXPORTS
from studies.runs import LOGS, finished_run


def snapshot_ladder(target: Path, seeds: int) -> int:
    """The ladder's exports kept for the docs: ``target`` is replaced by each seed's handoff.json files."""
    files = []
    for experiment in LADDER_EXPORTS:
        for seed in range(seeds):
            run = finished_run(experiment, seed)
            handoff = run.log_dir / "export" / "handoff.json" if run is not None else None
            if handoff is None or not handoff.is_file():
                print(f"ladder: {experiment} seed {seed} has no export (make evidence-ladder)", file=sys.stderr)
                return 1
            files.append(handoff)
    if target.exists():
        shutil.rmtree(target)
    for handoff in files:
        destination = target / handoff.relative_to(LOGS)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(handoff, destination)
    (target / "summary.json").write_text(json.dumps(ladder_shares(files), indent=2) + "\n")
    print(f"ladder: {len(files)} handoff.json files and summary.json kept under {target}")
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
    parser = argparse.ArgumentParser(prog="python -m studies.ladder", description=__doc__)
    parser.add_argument("target", type=Path, help="folder to replace (docs/results/ladder)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every ladder run (default 3)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return snapshot_ladder(args.target, args.seeds)


if __name__ == "__main__":
    sys.exit(main())
