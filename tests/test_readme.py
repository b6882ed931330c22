"""README's result tables are what the report makes of the results.json files kept in docs/results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lightning_prune.report import readme
from lightning_prune.report.cli import main as report_main
from lightning_prune.report.collect import load_runs, seed_groups

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DISCUSSION = ROOT / "docs" / "discussion.md"
KEPT = ROOT / "docs" / "results"


def test_readme_tables_equal_the_report_of_the_kept_runs():
    names = [m["name"] for m in readme.BLOCK.finditer(README.read_text())]
    assert {"digits", "digits-budget", "digits-stages", "cifar10", "cifar10-stages", "cifar10-budget",
            "handoff"} <= set(names), names
    assert readme.results_files(KEPT), "docs/results holds no results.json"
    assert readme.update(README, KEPT, write=False) == [], "README tables are stale: run `make results-docs`"
    assert {m["name"] for m in readme.BLOCK.finditer(DISCUSSION.read_text())} >= {"digits-budget", "cifar10-stages"}
    assert readme.update(DISCUSSION, KEPT, write=False) == [], "discussion tables are stale: `make results-docs`"


def test_a_changed_number_is_caught_and_rewritten(tmp_path, capsys):
    kept = tmp_path / "results"
    shutil.copytree(KEPT, kept)
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text())
    first = next(p for p in readme.results_files(kept) if p.parts[-3] == "digits_unstructured")
    data = json.loads(first.read_text())
    data["models"][-1]["accuracy"]["test_top1"] = 12.34
    first.write_text(json.dumps(data))
    assert report_main(["--logs", str(kept), "--check-readme", str(copy)]) == 1
    assert "stale tables: digits" in capsys.readouterr().out
    assert report_main(["--logs", str(kept), "--out", str(tmp_path / "R.md"), "--readme", str(copy)]) == 0
    assert copy.read_text() != README.read_text() and readme.update(copy, kept, write=False) == []


def test_snapshot_keeps_every_seed_and_the_newest_export(tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(KEPT, logs)
    shown = {p.relative_to(logs) for p in readme.results_files(logs)}
    for version, name in [(0, "old_export"), (7, "new_export")]:
        folder = logs / "digits_channel" / f"version_{version}" / "export"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "handoff.json").write_text(json.dumps({"variants": [{"variant": name, "float_top1": 90.0}]}))
    target = tmp_path / "kept"
    copied = readme.snapshot(seed_groups(load_runs(logs)), logs, target)
    assert {p.relative_to(target) for p in readme.results_files(target)} == shown  # every seed, nothing else
    exports = [p.relative_to(target).as_posix() for p in copied if p.name == "handoff.json"]
    assert [e for e in exports if e.startswith("digits_channel/")] == ["digits_channel/version_7/export/handoff.json"]
    handoff = readme.render(target)["handoff"]
    assert "| new_export | 90.00 |" in handoff and "old_export" not in handoff
