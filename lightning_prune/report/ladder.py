"""The compression ladder, from a dataset's exports (handoff.json) merged over seeds: the dense fp32 ``.pt``, task
2's channel-pruned network, that network pruned by magnitude (the ``<set>_compound`` run of compound.yaml; other
chains are no rungs), its int8 ONNX model and that file compressed (LZMA), the bytes a device downloads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning_prune.report.seeds import merge_values
from lightning_prune.report.stats import difference
from lightning_prune.report.tables import MISSING, markdown, meets, num

CHAIN = re.compile(r"_compound_v\d+(?:_.+)?$")  # an export of the compound.yaml run: <set>_compound_v<N>
GOAL_RATIO, GOAL_DROP = 49.0, 2.0  # Deep Compression's VGG16 ratio (Han et al., ICLR 2016), within 2 points
COLUMNS = ("rung", "file", "size (MB)", "compressed (MB)", "params non-zero", "MMACs",
           "ONNX Runtime ms/batch (fp32 / int8)", "test top-1", "x smaller than dense fp32 (on disk / compressed)")


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
    out = {}
    for dataset in sorted({str(r.get("dataset")) for r in records}):
        found = ladder([r for r in records if r.get("dataset") == dataset])
        if found:
            out[dataset] = f"{found[0]}\n\n{found[1]}"
    return out


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
    return markdown(COLUMNS, rows), goal(dense, chain)


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
