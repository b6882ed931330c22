"""The docs pages are their templates (docs/src) rendered from the results.json files kept in docs/results, and
every number a template's prose states comes from them; README.md stays a short entrance whose links all resolve."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jinja2
import pytest

from lightning_prune.report import docs
from lightning_prune.report.cli import main as report_main
from lightning_prune.report.collect import load_runs, seed_groups
from lightning_prune.results import RESULTS_FILE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
KEPT = DOCS / "results"
PAGES = sorted(DOCS.glob("*.md"))
TEMPLATES = sorted((DOCS / docs.SOURCES).glob(f"*{docs.SUFFIX}"))
RENDERED = [(ROOT if t.name == docs.ENTRANCE else DOCS) / t.name.removesuffix(".j2") for t in TEMPLATES]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images too

# Numbers prose may state without a source: settings (targets, shares of a schedule) and version numbers.
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
DECIMAL = re.compile(r"\b\d+(?:\.\d+)? ?%|(?<![\w.])\d+\.\d+(?![\d.]*[^\Wx])")
SETTINGS = {"5 %", "10 %", "15 %", "20 %", "40 %", "45 %", "50 %", "60 %", "67.5 %", "70 %", "75 %", "80 %", "90 %",
            "95 %", "98 %", "100 %"}
VERSIONED = re.compile(r"(?:torch|torchvision|torchao|[Ll]ightning|Python|onnxruntime|ONNX Runtime|opset|version"
                       r"|scikit-learn|jsonargparse) ?$")


def kept_results(folder: Path) -> list[Path]:
    return sorted(folder.rglob(RESULTS_FILE))


def prose(source: str) -> str:
    """A template's text outside ``{{ }}``, ``{% %}`` and ``{# #}`` (jinja2's lexer: its "data" tokens)."""
    return "".join(value for _, kind, value in jinja2.Environment().lex(source) if kind == "data")


def bare_numbers(text: str) -> list[str]:
    """Decimals and percentages in prose that no template call renders: none may remain (settings aside).

    Code, ``<!-- lit -->`` quotes from papers and link targets are skipped; so are the configuration percentages
    of :data:`SETTINGS` and version numbers (``torch 2.14``)."""
    text = re.sub(r"<!-- lit -->.*?<!-- /lit -->", "", text, flags=re.S)
    text = CODE.sub("", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    found = [m.group(0).strip() for m in DECIMAL.finditer(text) if not VERSIONED.search(text[:m.start()])]
    return [n for n in found if n.replace("%", " %").replace("  ", " ") not in SETTINGS and n not in SETTINGS]


def calls_of(template: str) -> set[tuple[str, tuple]]:
    return set(docs.calls(jinja2.Environment(loader=jinja2.FileSystemLoader(DOCS / docs.SOURCES)))[template])


def test_the_generated_tables_live_in_the_docs_pages():
    assert {t.name for t in TEMPLATES} == {"results.md.j2", "deploy.md.j2", "discussion.md.j2", "benchmarks.md.j2",
                                         "README.md.j2"}
    assert {("results_table", ("digits",)), ("results_table", ("cifar10",)), ("controls_table", ("cifar10",)),
            ("stages_table", ("cifar10",)), ("stages_table", ("digits",)), ("budget_table", ("cifar10",)),
            ("budget_table", ("cifar10", 15)), ("learning_curves_figure", ("cifar10",)),
            ("layer_sparsity_figure", ("cifar10", "1a")), ("sensitivity_figure", ("digits_unstructured",))} <= calls_of(
        "results.md.j2")
    assert {("handoff_table", ()), ("ladder", ("cifar10",)), ("ladder", ("digits",))} <= calls_of("deploy.md.j2")
    assert ("controls_table", ("cifar10",)) in calls_of("discussion.md.j2")
    assert ("baseline_table", ("digits_baseline", "cifar10subset_baseline")) in calls_of("README.md.j2")  # task 0
    assert ("json_file", ("results/fresh-clone-timing.json",)) in calls_of("README.md.j2")  # the set-up times
    assert README in RENDERED and "{{" not in README.read_text()
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("results-docs:"):].split("\n\n")[0]
    assert "render-docs" in target, target  # results-docs snapshots the runs, then renders every page
    target = makefile[makefile.index("render-docs:"):].split("\n\n")[0]
    assert "--render-docs docs" in target, target


def test_docs_pages_equal_the_rendering_of_their_templates_from_the_kept_runs():
    assert kept_results(KEPT), "docs/results holds no results.json"
    pages = docs.render(DOCS, KEPT, write=False)
    assert set(pages) == set(RENDERED)
    stale = {page.name: line for page, line in pages.items() if line}
    assert not stale, f"pages that differ from their templates' rendering (from line): {stale}; run `make render-docs`"


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


def _copy_docs(tmp_path: Path, *templates: str) -> Path:
    """docs/ with only the named templates (and the pages they render), beside a copy of benchmarks/results."""
    folder = tmp_path / "docs"
    shutil.copytree(KEPT, folder / "results")
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    (folder / docs.SOURCES).mkdir()
    for name in templates:
        shutil.copyfile(DOCS / docs.SOURCES / name, folder / docs.SOURCES / name)
        shutil.copyfile(DOCS / name.removesuffix(".j2"), folder / name.removesuffix(".j2"))
    return folder


def test_a_changed_number_is_caught_and_rewritten(tmp_path, capsys):
    folder = _copy_docs(tmp_path, "results.md.j2")
    first = next(p for p in kept_results(folder / "results") if p.parts[-3] == "digits_unstructured")
    data = json.loads(first.read_text())
    data["models"][-1]["accuracy"]["test_top1"] = 12.34
    first.write_text(json.dumps(data))
    kept = ["--logs", str(folder / "results")]
    assert report_main([*kept, "--check-docs", str(folder)]) == 1
    assert "results.md: stale from line " in capsys.readouterr().out
    assert report_main([*kept, "--out", str(tmp_path / "R.md"), "--render-docs", str(folder)]) == 0
    page = (folder / "results.md").read_text()
    assert page != (DOCS / "results.md").read_text()  # the digits table, from the changed seed
    assert docs.render(folder, folder / "results", write=False) == {folder / "results.md": None}
    assert (folder / docs.FIGURES / "cifar10-curves.png").stat().st_size > 1000  # the figures are drawn beside it


def test_snapshot_keeps_every_seed_and_every_export_and_the_table_shows_the_newest(tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(KEPT, logs)
    shown = {p.relative_to(logs) for p in kept_results(logs)}
    for version, name in [(0, "old_export"), (7, "new_export")]:
        folder = logs / "digits_channel" / f"version_{version}" / "export"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "handoff.json").write_text(json.dumps({"variants": [{"variant": name, "float_top1": 90.0}]}))
    target = tmp_path / "kept"
    copied = docs.snapshot(seed_groups(load_runs(logs)), logs, target)
    assert {p.relative_to(target) for p in kept_results(target)} == shown  # every seed, nothing else
    exports = [p.relative_to(target).as_posix() for p in copied if p.name == "handoff.json"]
    assert {"digits_channel/version_0/export/handoff.json", "digits_channel/version_7/export/handoff.json"} <= set(
        exports)  # every seed's export: the ladder merges them
    handoff = docs.Sources(target, tmp_path, []).handoff_table()
    assert "| new_export | — | 90.00 |" in handoff and "old_export" not in handoff


@pytest.mark.parametrize("page", [*[p for p in PAGES if p not in RENDERED], *TEMPLATES],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_number_in_the_prose_lacks_a_source(page):
    """Every decimal and percentage of a template outside its calls (``{{ }}``), code and quotes is a setting; so
    is every one of a page that no template renders."""
    text = page.read_text()
    assert bare_numbers(prose(text) if page in TEMPLATES else text) == []


def test_bare_numbers_finds_typed_figures_and_spares_versions_settings_and_calls():
    text = ("GraSP lost 32.91 points, 76 % of parameters; torch 2.14.1 and Lightning 2.6 at 90 %; "
            "`2.25 s` in code; {{ model_value(\"x\", \"y\", \"top1\") }} and {{ t[\"1.5\"] | fmt(\".2f\") }} %, "
            "<!-- lit -->49x<!-- /lit --> 0.5x")
    assert bare_numbers(prose(text)) == ["32.91", "76 %", "0.5"]


def test_a_changed_figure_in_the_prose_is_caught(tmp_path):
    """A figure (from a kept results.json or a kept JSON file) that differs from its source makes its page stale."""
    folder = tmp_path / "docs"
    shutil.copytree(KEPT, folder / "results")
    (folder / docs.SOURCES).mkdir()
    top1 = docs.Sources(folder / "results", folder, []).model_value("digits_unstructured", "pruned-masked", "top1")
    (folder / "bench.json").write_text(json.dumps({"summary": {"1": {"speedup": 2.489}}, "wall": 7200}))
    (folder / docs.SOURCES / "page.md.j2").write_text(
        '{% set bench = json_file("bench.json") %}\nTop-1 {{ model_value("digits_unstructured", "pruned-masked", '
        '"top1") }}, speed-up {{ bench["summary"]["1"]["speedup"] | fmt(".2f") }}x in\n'
        '{{ (bench["wall"] / 3600) | fmt(".1f") }} h.\n')
    (folder / "page.md").write_text(f"Top-1 {top1}, speed-up 2.49x in\n2.0 h.\n")
    assert docs.render(folder, folder / "results", write=False) == {folder / "page.md": None}
    first = next(p for p in kept_results(folder / "results") if p.parts[-3] == "digits_unstructured")
    data = json.loads(first.read_text())
    next(m for m in data["models"] if m["variant"] == "pruned-masked")["accuracy"]["test_top1"] = 12.34
    first.write_text(json.dumps(data))
    assert docs.render(folder, folder / "results", write=False) == {folder / "page.md": 1}
    (folder / "bench.json").write_text(json.dumps({"summary": {"1": {"speedup": 3.0}}, "wall": 7200}))
    docs.render(folder, folder / "results")
    page = (folder / "page.md").read_text()
    assert "speed-up 3.00x in\n2.0 h." in page and top1 not in page
    assert docs.render(folder, folder / "results", write=False) == {folder / "page.md": None}


def test_a_template_that_cannot_be_rendered_names_its_file_and_line(tmp_path):
    folder = tmp_path / "docs"
    (folder / docs.SOURCES).mkdir(parents=True)
    (folder / docs.SOURCES / "page.md.j2").write_text('Fine.\nTook {{ json_file("results/timing.json")["s"] }} s.\n')
    with pytest.raises(ValueError, match=r"page\.md\.j2:2: cites .*timing\.json, which cannot be read"):
        docs.render(folder, tmp_path, write=False)
    (folder / docs.SOURCES / "page.md.j2").write_text('{{ epochs("nope") }}\n')
    with pytest.raises(ValueError, match=r"page\.md\.j2:1: no kept run nope"):
        docs.render(folder, tmp_path, write=False)
    assert not (folder / "page.md").exists()
