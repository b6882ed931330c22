"""Figures in prose that cannot go stale: ``<!-- v:KEY -->VALUE<!-- /v -->``, rewritten from the kept runs.

``lightning-prune report --readme`` rewrites each VALUE from the results.json files kept in docs/results
(or from a kept JSON file, ``json:`` keys), and ``--check-readme`` fails when one differs. Any other
decimal or percentage in a page's prose is a number with no source: :func:`bare_numbers` finds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from lightning_prune.report import controls, tables
from lightning_prune.report.collect import RunResults, load_runs, seed_groups
from lightning_prune.report.seeds import merge_runs

VALUE = re.compile(r"<!-- v:(?P<key>.+?) -->(?P<body>.*?)<!-- /v -->")
FIELDS = {  # field -> (where in a model entry, format)
    "top1": (("accuracy", "test_top1"), "{:.2f}"), "top5": (("accuracy", "test_top5"), "{:.2f}"),
    "train_top1": (("accuracy", "train_top1"), "{:.2f}"), "size": (("profile", "model_size_mb"), "{:.2f}"),
    "sparsity": (("profile", "sparsity"), "{:.1%}"), "nonzero": (("profile", "nonzero_params"), "{:,}"),
    "latency": (("profile", "latency_ms"), "{:.1f}"), "params": (("profile", "params"), "{:,}"),
    "peak_memory": (("profile", "peak_memory_mb"), "{:.1f}"), "avg_memory": (("profile", "avg_memory_mb"), "{:.1f}"),
}


PAIR = re.compile(r"<!-- v:(?:cmp|verdict)/([^/\s]+)/([^/\s]+?) -->")


def prose_pairs(folder: Path) -> list[tuple[str, str]]:
    """The experiment pairs the prose of every page in ``folder`` compares: with the controls table, the family
    whose p-values Holm's method corrects together (the same family whichever page is rendered)."""
    pairs: list[tuple[str, str]] = []
    for page in sorted(Path(folder).glob("*.md")):
        for pair in PAIR.findall(page.read_text()):
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def _lookup(runs: dict[str, RunResults], key: str, tested: dict | None = None) -> str:
    """The text of one ``<!-- v:KEY -->`` figure, from the merged runs by experiment.

    Keys: ``EXP/VARIANT/FIELD`` (a model's figure, FIELD in :data:`FIELDS`, or ``drop``, ``removed``, ``macs``);
    ``EXP/epochs`` (epochs the measured model trained); ``EXP/final`` (last validation top-1 of its curve);
    ``cmp/EXP/EXP2`` (pruned top-1 of EXP minus EXP2, with its test), ``verdict/EXP/EXP2`` (what the test
    allows to say); ``stage/EXP/K/FIELD`` (1b stage K's
    ``epoch``, ``val_top1`` or diagnostic); ``layer/EXP/LAYER`` (the pruned model's sparsity of that layer).
    """
    parts = key.split("/")
    run = runs.get(parts[1] if parts[0] in ("cmp", "verdict", "stage", "layer") else parts[0])
    if run is None:
        raise ValueError(f"v:{key}: no kept run of that experiment")
    if parts[0] in ("cmp", "verdict"):
        result = (tested or {}).get((parts[1], parts[2]))
        if result is None:
            raise ValueError(f"v:{key}: cannot compare (missing run or fewer than 2 seeds)")
        if parts[0] == "verdict":
            return controls.verdict(result)
        return (f"{result.difference:+.2f} ± {result.ci95:.2f} points ({result.test}, n = {result.n[0]}/{result.n[1]}, "
                f"p = {result.p:.2g}, Holm p = {result.p_corrected:.2g})")
    if parts[0] == "stage":
        stage = (run.data.get("schedule") or {}).get("stages", [])[int(parts[2]) - 1]
        value = stage.get(parts[3], (stage.get("diagnostics") or {}).get(parts[3]))
        return tables.num(value, "{:.1%}" if parts[3] in ("top_removed", "removed", "sparsity") else "{:.3g}")
    if parts[0] == "layer":
        entry = next(m for m in run.data["models"] if m.get("variant") == "pruned-masked")
        return tables.num(next(r["sparsity"] for r in entry["layers"] if r["name"] == parts[2]), "{:.1%}")
    if parts[1] == "epochs":
        return str(tables.trained_epochs(run))
    if parts[1] == "final":
        histories = run.data.get("histories") or [run.data.get("history") or []]
        from lightning_prune.report.stats import Stat

        return tables.num(Stat([h[-1]["val_top1"] for h in histories if h]), "{:.2f}")
    entry = next((m for m in run.data["models"] if m.get("variant") == parts[1]), None)
    if entry is None:
        raise ValueError(f"v:{key}: {parts[0]} has no variant {parts[1]}")
    field = parts[2]
    if field == "drop":
        return tables.num(tables.drop_value(tables.dense_top1(run) or tables.baseline_top1(list(runs.values()), (),
                                                                                           run),
                                            entry["accuracy"]["test_top1"]))
    if field == "removed":
        return tables.num(tables.removed_share(entry["profile"], tables.dense_params(run, list(runs.values()))),
                          "{:.1%}")
    if field == "macs":
        return tables.num(tables.scaled(entry["profile"]["macs"], 1e-6), "{:.1f}")
    (section, name), fmt = FIELDS[field]
    return tables.num(entry[section][name], fmt)


def json_value(key: str, base: Path) -> str:
    """``json:PATH:FIELD/FIELD:SPEC[:/DIVISOR]``: one figure of a kept JSON file (a benchmark's, the evidence
    timing), PATH relative to the page; list items by index, SPEC a format spec such as ``.1f``."""
    parts = key.split(":")
    if len(parts) not in (4, 5):
        raise ValueError(f"v:{key}: expected json:PATH:FIELD:SPEC[:/DIVISOR]")
    try:
        value = json.loads((base / parts[1]).read_text())
        for name in parts[2].split("/"):
            value = value[int(name)] if isinstance(value, list) else value[name]
        if len(parts) == 5:
            value = value / float(parts[4].lstrip("/"))
        return format(value, parts[3])
    except OSError as err:
        raise ValueError(f"v:{key}: cannot read {base / parts[1]} ({err.strerror or type(err).__name__})") from err
    except (ValueError, LookupError, TypeError) as err:  # bad JSON, a missing field or index, a bad spec
        raise ValueError(f"v:{key}: {base / parts[1]} has no such value ({type(err).__name__}: {err})") from err


def values(results: Path, base: Path = Path(".")) -> Callable[[str], str]:
    """A lookup of ``<!-- v:KEY -->`` figures from the kept runs (seeds merged); ``json:`` keys read a kept
    JSON file relative to ``base`` (the page's folder). Comparisons are those of each dataset's family (its
    controls table and every pair the pages in ``base`` compare), Holm-corrected together."""
    merged = [merge_runs(g) for g in seed_groups(load_runs(results))]
    runs = {r.experiment: r for r in merged}
    pairs, tested = prose_pairs(base), {}
    for dataset in {r.dataset for r in merged}:
        tested.update(controls.family([r for r in merged if r.dataset == dataset], pairs))
    return lambda key: json_value(key, base) if key.startswith("json:") else _lookup(runs, key, tested)


CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
DECIMAL = re.compile(r"\b\d+(?:\.\d+)? ?%|(?<![\w.])\d+\.\d+(?![\d.]*[^\Wx])")
SETTINGS = {"5 %", "10 %", "15 %", "20 %", "40 %", "45 %", "50 %", "60 %", "67.5 %", "70 %", "75 %", "80 %", "90 %",
            "95 %", "98 %", "100 %"}
VERSIONED = re.compile(r"(?:torch|torchvision|torchao|[Ll]ightning|Python|onnxruntime|ONNX Runtime|opset|version"
                       r"|scikit-learn|jsonargparse) ?$")


def bare_numbers(text: str) -> list[str]:
    """Decimals and percentages in prose that are not a generated figure: none may remain (settings aside).

    Code, generated blocks, ``<!-- v: -->`` figures, ``<!-- lit -->`` quotes from papers and link targets
    are skipped; so are the configuration percentages of :data:`SETTINGS` and version numbers (``torch 2.14``).
    """
    from lightning_prune.report.readme import BLOCK

    text = BLOCK.sub("", text)
    text = VALUE.sub("", text)
    text = re.sub(r"<!-- lit -->.*?<!-- /lit -->", "", text, flags=re.S)
    text = CODE.sub("", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    found = [m.group(0).strip() for m in DECIMAL.finditer(text) if not VERSIONED.search(text[:m.start()])]
    return [n for n in found if n.replace("%", " %").replace("  ", " ") not in SETTINGS and n not in SETTINGS]
