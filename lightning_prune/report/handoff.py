"""What was exported (the handoff.json files of ``lightning-prune export``): the hand-off table of every variant, and
per dataset the compression ladder over seeds: dense ``.pt``, channel-pruned, + unstructured (the ``<set>_compound``
chain), + int8 ONNX, + LZMA (the bytes a device downloads)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning_prune.report.collect import merge_values
from lightning_prune.report.stats import difference
from lightning_prune.report.tables import MISSING, markdown, meets, num

log = logging.getLogger(__name__)

HANDOFF_FILE = "handoff.json"
CHAIN = re.compile(r"_compound_v\d+(?:_.+)?$")  # an export of the compound.yaml run: <set>_compound_v<N>
GOAL_RATIO, GOAL_DROP = 49.0, 2.0  # Deep Compression's VGG16 ratio (Han et al., ICLR 2016), within 2 points
LADDER_COLUMNS = ("rung", "file", "size (MB)", "compressed (MB)", "params non-zero", "MMACs",
                  "ONNX Runtime ms/batch (fp32 / int8)", "test top-1",
                  "x smaller than dense fp32 (on disk / compressed)")
COLUMNS = ("variant", "weights", "float top-1", "int8 top-1 (PyTorch / ONNX)", "size: ONNX / int8 ONNX / compressed",
           "ONNX Runtime latency (fp32)", "ONNX Runtime latency (int8)", "latency float / int8 (PyTorch)",
           "outputs match", "int8 gate: drop (PyTorch / ONNX), recipe")
NOTE = ("From `lightning-prune export --quantize` (handoff.json beside the exported files). Top-1 is on the test "
        "images. int8 (PyTorch) is eager-mode static post-training quantization (x86 backend); int8 ONNX is ONNX "
        "Runtime's QDQ static quantization; both use per-channel symmetric int8 weights. Sizes are the files' bytes "
        "/ 1e6 (compressed: the int8 ONNX file after LZMA, what a device downloads); latency is ms per batch on the "
        "CPU; outputs match compares the ONNX Runtime logits (else the reloaded state dict's) with the PyTorch "
        "model's. The int8 gate compares each int8 form's top-1 with the float model's on the same test images: a "
        "variant that loses more than `--max-int8-drop` points is refused (nothing of it is published; its row says "
        "**refused**); the recipe is equalization (CLE) or not, the ONNX calibration method and the QAT epochs.")


def records_of(items: Iterable[str | Path | dict[str, Any]]) -> list[dict[str, Any]]:
    """Variant records from handoff.json files, folders holding them, handoff documents or records."""
    records: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            records += item["variants"] if isinstance(item.get("variants"), list) else [item]
            continue
        path = Path(item)
        for f in sorted(path.rglob(HANDOFF_FILE)) if path.is_dir() else [path]:
            try:
                doc = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as err:
                log.warning("skipping %s: %s", f, err)
                continue
            if isinstance(doc, dict):
                records += [v for v in doc.get("variants", []) if isinstance(v, dict)]
                records += [{**v, "refused": True} for v in doc.get("refused") or [] if isinstance(v, dict)]
    return records


def _latency(record: dict[str, Any], form: str = "onnx") -> str:
    cell = num(record.get(f"{form}_latency_ms"), "{:.1f}")
    if cell == MISSING:
        return cell
    std, batch = record.get(f"{form}_latency_ms_std"), record.get("batch_size")
    return (cell + (f" (sd {std:.1f})" if isinstance(std, (int, float)) else "") + " ms"
            + (f" (bs {batch})" if isinstance(batch, int) else ""))


def _float_int8_latency(record: dict[str, Any]) -> str:
    cells = [num(record.get(f"{form}_latency_ms"), "{:.1f}") for form in ("float", "int8")]
    return MISSING if cells == [MISSING, MISSING] else f"{cells[0]} / {cells[1]} ms"


def _match(record: dict[str, Any]) -> str:
    matches = record.get("outputs_match") or {}
    for form in ("onnx", "state_dict"):
        found = matches.get(form)
        if isinstance(found, dict) and isinstance(found.get("max_abs_diff"), (int, float)):
            verdict = "yes" if found.get("match") else "**no**"
            label = "ONNX" if form == "onnx" else "state dict"
            return f"{verdict} ({label}, max diff {found['max_abs_diff']:.1e})"
    return MISSING


def _gate(record: dict[str, Any]) -> str:
    outcome = record.get("int8_gate")
    if not isinstance(outcome, dict):
        return MISSING
    forms = outcome.get("forms") or {}
    drops = " / ".join(num((forms.get(f) or {}).get("drop")) for f in ("int8", "int8_onnx"))
    recipe = (record.get("int8") or {}).get("recipe") or {}
    parts = ["CLE" if recipe.get("equalize") else "no CLE", str(recipe.get("calibration", MISSING))]
    if recipe.get("qat_epochs"):
        parts.append(f"QAT {recipe['qat_epochs']} ep")
    if recipe.get("share_bits"):
        parts.append(f"{recipe['share_bits']}-bit sharing")
    verdict = "**refused**" if record.get("refused") else "passed" if outcome.get("passed") else "**failed**"
    return f"{verdict}: {drops} (max {num(outcome.get('max_drop'), '{:g}')}), {' + '.join(parts)}"


def _row(record: dict[str, Any]) -> list[str]:
    sizes = [num(record.get(k), "{:.3f}") for k in ("onnx_size_mb", "int8_onnx_size_mb", "compressed_mb")]
    return [str(record.get("variant", MISSING)), str(record.get("structure", MISSING)), num(record.get("float_top1")),
            f"{num(record.get('int8_top1'))} / {num(record.get('int8_onnx_top1'))}", " / ".join(sizes) + " MB",
            _latency(record), _latency(record, "int8_onnx"), _float_int8_latency(record), _match(record), _gate(record)]


def handoff_table(paths_or_records: Iterable[str | Path | dict[str, Any]]) -> str:
    """Markdown table of :data:`COLUMNS`, one row per exported variant (any mix that :func:`records_of` reads)."""
    return markdown(COLUMNS, [_row(r) for r in records_of(paths_or_records)])


def handoff_section(logs: Path) -> list[str]:
    """The report's hand-off section as markdown lines; empty when no handoff.json is under ``logs``."""
    records = records_of([logs]) if Path(logs).is_dir() else []
    return ["## Hand-off: int8 and ONNX", "", NOTE, "", *handoff_table(records).splitlines(), ""] if records else []


def _path(value: Any) -> str:
    return str(Path(str(value)).resolve()) if value else ""


def _rung_records(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records of the dense baseline, the chain (channel, then unstructured) and the channel-pruned runs it
    started from (named in its ``lineage_sources``; every channel-pruned export for records that predate them)."""
    rungs: dict[str, list[dict[str, Any]]] = {"dense": [], "channel": [], "compound": []}
    for r in records:
        if r.get("refused"):  # the int8 gate refused it: nothing of it was published
            continue
        if r.get("task") == "baseline" and r.get("structure") == "dense":
            rungs["dense"].append(r)
        elif r.get("task") == "channel" and not r.get("lineage"):
            rungs["channel"].append(r)
        elif (r.get("task") == "unstructured" and "channel" in (r.get("lineage") or [])
              and CHAIN.search(str(r.get("variant", "")))):
            rungs["compound"].append(r)
    sources = {_path(s) for r in rungs["compound"] for s in r.get("lineage_sources") or []}
    if sources - {""}:
        rungs["channel"] = [r for r in rungs["channel"] if _path(r.get("source_checkpoint")) in sources]
    return rungs


def _merged(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record per rung: numbers over the seeds (the newest export of each seed)."""
    by_seed = {r.get("seed"): r for r in records}
    return merge_values(list(by_seed.values()), list(by_seed))


def ladders(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per dataset with a whole ladder, its table and goal line as one markdown block."""
    datasets = sorted({str(r.get("dataset")) for r in records})
    found = {dataset: ladder([r for r in records if r.get("dataset") == dataset]) for dataset in datasets}
    return {dataset: "\n\n".join(block) for dataset, block in found.items() if block}


def ladder(records: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The ladder table and its goal line, or None without a dense, a channel-pruned and a chained export."""
    rungs = {k: _merged(v) for k, v in _rung_records(records).items() if v}
    if len(rungs) < 3:
        return None
    dense, channel, chain = rungs["dense"], rungs["channel"], rungs["compound"]
    reference = dense["float_size_mb"]

    def ratio(size) -> str:
        return num(reference / float(size), "{:.1f}") if isinstance(size, (int, float)) and size else MISSING

    def row(name: str, file: str, r: dict, size, compressed, top1) -> list[str]:
        latency = f"{num(r.get('onnx_latency_ms'), '{:.1f}')} / {num(r.get('int8_onnx_latency_ms'), '{:.1f}')}"
        return [name, file, num(size, "{:.3f}"), num(compressed, "{:.3f}"), num(r.get("nonzero_params"), "{:,}"),
                num(r["macs"] / 1e6 if isinstance(r.get("macs"), (int, float)) else None, "{:.2f}"), latency,
                num(top1), f"{ratio(size)} / {ratio(compressed)}"]

    floats = ("float_size_mb", "float_compressed_mb", "float_top1")  # each rung: its size, compressed size, top-1
    rows = [row(name, file, r, *(r.get(key) for key in keys)) for name, file, r, keys in [
        ("1. dense fp32", "`.pt`", dense, floats), ("2. channel-pruned", "`.pt`", channel, floats),
        ("3. + unstructured", "`.pt`", chain, floats),
        ("4. + int8", "`.int8.onnx`", chain, ("int8_onnx_size_mb", "compressed_mb", "int8_onnx_top1")),
        ("5. + compression", "`.int8.onnx.xz`", chain, ("compressed_mb", "compressed_mb", "int8_onnx_top1"))]]
    return markdown(LADDER_COLUMNS, rows), goal(dense, chain)


def goal(dense: dict[str, Any], chain: dict[str, Any]) -> str:
    """Whether the chain's compressed int8 file is >= 49x smaller than the dense ``.pt`` within 2 points of top-1."""
    size, top1 = chain.get("compressed_mb"), chain.get("int8_onnx_top1")
    if not isinstance(size, (int, float)) or not isinstance(top1, (int, float)):
        return "Goal not measured: the chain was exported without int8 ONNX (`export --quantize`)."
    times, drop = float(dense["float_size_mb"]) / float(size), difference(dense["float_top1"], top1)
    established, size_ok = meets(drop, GOAL_DROP), times >= GOAL_RATIO
    verdict = "reached" if size_ok and established else "not reached"
    return (f"Goal ({GOAL_RATIO:g}x smaller than the dense fp32 `.pt`, compressed, within {GOAL_DROP:g} points of its "
            f"top-1, in ONNX Runtime int8): **{verdict}**: {times:.1f}x smaller, top-1 drop {num(drop)} points"
            + ("" if established else " (the drop's 95 % interval is not within the budget)" if size_ok else ""))
