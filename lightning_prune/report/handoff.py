"""The hand-off table of the report: each exported variant's float / int8 accuracy, sizes and ONNX Runtime speed,
read from the handoff.json files ``lightning-prune export`` writes, so the report shows what was exported."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning_prune.report.tables import MISSING, markdown, num

log = logging.getLogger(__name__)

HANDOFF_FILE = "handoff.json"
COLUMNS = ("variant", "weights", "float top-1", "int8 top-1 (PyTorch / ONNX)", "size: ONNX / int8 ONNX / compressed",
           "ONNX Runtime latency (fp32)", "ONNX Runtime latency (int8)", "latency float / int8 (PyTorch)",
           "outputs match", "int8 gate: drop (PyTorch / ONNX), recipe")
NOTE = (
    "From `lightning-prune export --quantize` (handoff.json beside the exported files). Top-1 is on the test "
    "images. int8 (PyTorch) is eager-mode static post-training quantization (x86 backend); int8 ONNX is ONNX "
    "Runtime's QDQ static quantization; both use per-channel symmetric int8 weights. Sizes are the files' bytes / "
    "1e6 (compressed: the int8 ONNX file after LZMA, what a device downloads); latency is ms per batch on the CPU; "
    "outputs match compares the ONNX Runtime logits (else the reloaded state dict's) with the PyTorch model's. "
    "The int8 gate compares each int8 form's top-1 with the float model's on the same test images: a variant that "
    "loses more than `--max-int8-drop` points is refused (nothing of it is published; its row says **refused**); "
    "the recipe is equalization (CLE) or not, the ONNX calibration method and the QAT epochs."
)


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
    return (cell + (f" ± {std:.1f}" if isinstance(std, (int, float)) else "") + " ms"
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
