"""The docs' result tables are what the report makes of the results.json files kept in docs/results;
README.md stays a short entrance whose links all resolve."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lightning_prune.report import prose, readme
from lightning_prune.report.cli import main as report_main
from lightning_prune.report.collect import load_runs, seed_groups

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = DOCS / "results.md"
KEPT = DOCS / "results"
PAGES = sorted(DOCS.glob("*.md"))
# the pages whose tables `make results-docs` rewrites (the Makefile names the same files)
BLOCK_PAGES = [p for p in PAGES if readme.BLOCK.search(p.read_text())]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images too


def block_names(path: Path) -> list[str]:
    return [m["name"] for m in readme.BLOCK.finditer(path.read_text())]


def test_the_generated_tables_live_in_the_docs_pages():
    names = {name for page in BLOCK_PAGES for name in block_names(page)}
    assert {"digits", "digits-stages", "digits-ladder", "cifar10", "cifar10-controls", "cifar10-stages",
            "cifar10-budget", "cifar10-curves", "cifar10-layers-1a", "cifar10-ladder", "handoff"} <= names, names
    assert {"digits", "cifar10", "cifar10-controls", "cifar10-stages", "cifar10-budget", "cifar10-curves"} <= set(
        block_names(RESULTS))
    assert {"handoff", "cifar10-ladder", "digits-ladder"} <= set(block_names(DOCS / "deploy.md"))
    assert {"cifar10-controls"} <= set(block_names(DOCS / "discussion.md"))
    assert block_names(README) == [], "README.md is the entrance: its tables live in docs/"
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("results-docs:"):].split("\n\n")[0]
    assert "render-docs" in target, target  # results-docs snapshots the runs, then renders every page
    target = makefile[makefile.index("render-docs:"):].split("\n\n")[0]
    assert all(page.relative_to(ROOT).as_posix() in target for page in BLOCK_PAGES), target


@pytest.mark.parametrize("page", BLOCK_PAGES, ids=lambda p: p.name)
def test_docs_tables_equal_the_report_of_the_kept_runs(page):
    assert readme.results_files(KEPT), "docs/results holds no results.json"
    assert readme.update(page, KEPT, write=False) == [], f"{page.name} tables are stale: run `make results-docs`"


def test_readme_is_a_short_entrance():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"
    head = "\n".join(lines[:20])
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor does inline code (a link's text may be code: it stays a link)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"


def test_a_changed_number_is_caught_and_rewritten(tmp_path, capsys):
    kept = tmp_path / "results"
    shutil.copytree(KEPT, kept)
    copy = tmp_path / "results.md"
    copy.write_text(RESULTS.read_text())
    first = next(p for p in readme.results_files(kept) if p.parts[-3] == "digits_unstructured")
    data = json.loads(first.read_text())
    data["models"][-1]["accuracy"]["test_top1"] = 12.34
    first.write_text(json.dumps(data))
    assert report_main(["--logs", str(kept), "--check-readme", str(copy)]) == 1
    stale = capsys.readouterr().out.split("stale tables:")[1]
    assert "digits" in stale.replace(",", " ").split()
    assert report_main(["--logs", str(kept), "--out", str(tmp_path / "R.md"), "--readme", str(copy)]) == 0
    assert copy.read_text() != RESULTS.read_text() and readme.update(copy, kept, write=False) == []


def test_snapshot_keeps_every_seed_and_every_export_and_the_table_shows_the_newest(tmp_path):
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
    assert {"digits_channel/version_0/export/handoff.json", "digits_channel/version_7/export/handoff.json"} <= set(
        exports)  # every seed's export: the ladder merges them
    handoff = readme.render(target)["handoff"]
    assert "| new_export | — | 90.00 |" in handoff and "old_export" not in handoff


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_number_in_the_prose_lacks_a_source(page):
    """Every decimal and percentage outside code, generated blocks and quotes is a generated ``v:`` value."""
    assert prose.bare_numbers(page.read_text()) == []


def test_bare_numbers_finds_typed_figures_and_spares_versions_settings_and_values():
    text = ("GraSP lost 32.91 points, 76 % of parameters; torch 2.14.1 and Lightning 2.6 at 90 %; "
            "`2.25 s` in code; <!-- v:x/y/top1 -->55.10<!-- /v --> and <!-- lit -->49x<!-- /lit --> 0.5x")
    assert prose.bare_numbers(text) == ["32.91", "76 %", "0.5"]


def test_a_changed_figure_in_the_prose_is_caught(tmp_path):
    """A ``v:`` value (from a kept results.json or a kept JSON file) that differs from its source is stale."""
    kept = tmp_path / "results"
    shutil.copytree(KEPT, kept)
    first = next(p for p in readme.results_files(kept) if p.parts[-3] == "digits_unstructured")
    top1 = prose.values(kept)("digits_unstructured/pruned-masked/top1")
    (tmp_path / "bench.json").write_text(json.dumps({"summary": {"1": {"speedup": 2.489}}, "wall": 7200}))
    page = tmp_path / "page.md"
    page.write_text(f"Top-1 <!-- v:digits_unstructured/pruned-masked/top1 -->{top1}<!-- /v -->, "
                    "speed-up <!-- v:json:bench.json:summary/1/speedup:.2f -->2.49<!-- /v -->x in "
                    "<!-- v:json:bench.json:wall:.1f:/3600 -->2.0<!-- /v --> h.\n")
    assert readme.update(page, kept, write=False) == []
    data = json.loads(first.read_text())
    next(m for m in data["models"] if m["variant"] == "pruned-masked")["accuracy"]["test_top1"] = 12.34
    first.write_text(json.dumps(data))
    (tmp_path / "bench.json").write_text(json.dumps({"summary": {"1": {"speedup": 3.0}}, "wall": 7200}))
    assert readme.update(page, kept, write=False) == ["v:digits_unstructured/pruned-masked/top1",
                                                      "v:json:bench.json:summary/1/speedup:.2f"]
    readme.update(page, kept)
    assert "3.00<!-- /v -->x" in page.read_text() and top1 not in page.read_text()
