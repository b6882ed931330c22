"""The files a run writes besides results.json (listed in docs/runs.md); only the recorder calls the writers.

Every file is written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightning_prune.models.vgg import VGG
from lightning_prune.pruning.sparse import load_sparse_model, sparse_weights, to_sparse_model, verify_coo
from lightning_prune.pruning.unstructured import copy_model, get_masks, make_permanent
from lightning_prune.results import atomic_torch_save, atomic_write_bytes

SENSITIVITY_CSV = "sensitivity.csv"
SENSITIVITY_PLOT = "sensitivity.png"
MASKS_FILE = "masks.pt"
SPARSE_FILE = "sparse_coo.pt"
CHECK_FILE = "coo_check.json"
CHANNELS_CSV = "channels.csv"
CHANNELS_JSON = "channels.json"
CHANNEL_COLUMNS = ("layer", "in_dense", "in_kept", "out_dense", "out_kept", "samples", "lambda", "selection",
                   "error_pruned", "error_reconstructed", "seconds")


# --- sensitivity curves -------------------------------------------------------------------------


def save_curves_csv(curves: dict[str, list[float]], sparsities: Sequence[float], path: str | Path) -> Path:
    """One row per layer, one column per sparsity level (top-1 %)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["layer", *(f"{s:g}" for s in sparsities)],
                                  *([name, *(f"{a:.4f}" for a in accs)] for name, accs in curves.items())])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)


def read_curves_csv(path: str | Path) -> tuple[list[float], dict[str, list[float]]]:
    """(levels, curves) from :func:`save_curves_csv`'s file."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][0] != "layer":
        raise ValueError(f"{path} is not a sensitivity CSV (first column must be 'layer')")
    levels = [float(s) for s in rows[0][1:]]
    return levels, {row[0]: [float(a) for a in row[1:]] for row in rows[1:] if row}


# --- a masked model: masks and COO weights ------------------------------------------------------


@dataclass
class SparseExport:
    """What ``export_sparse`` wrote and the model variants built from it."""

    masks_path: Path
    sparse_path: Path
    check_path: Path
    mismatches: dict[str, int]
    permanent: nn.Module  # masks folded in: dense weights with exact zeros
    sparse: nn.Module  # COO weights, reloaded from the file
    densified: nn.Module  # the same file densified once at load
    layers: list[str] = field(default_factory=list)

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())


def export_sparse(model: nn.Module, out_dir: str | Path) -> SparseExport:
    """Make pruning permanent, save the masks and the COO model, reload both and check them.

    Files: ``masks.pt`` (``{layer: bool mask}``), ``sparse_coo.pt`` (the sparse model's whole state
    dict, pruned weights as COO; load with :func:`load_sparse_model`), ``coo_check.json`` (per-layer
    mismatches between COO indices and mask non-zeros, expected 0). ``model`` is not modified.
    """
    out_dir = Path(out_dir)
    masks = get_masks(model)
    if not masks:
        raise ValueError("export_sparse: the model has no pruning masks")
    permanent = make_permanent(copy_model(model))
    sparse = to_sparse_model(permanent, masks=masks)
    masks_path, sparse_path, check_path = out_dir / MASKS_FILE, out_dir / SPARSE_FILE, out_dir / CHECK_FILE
    atomic_torch_save(masks, masks_path)
    atomic_torch_save({k: v.cpu() for k, v in sparse.state_dict().items()}, sparse_path)
    saved_masks = torch.load(masks_path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():  # "validating sparse tensor invariants": wanted here, no news
        warnings.simplefilter("ignore", UserWarning)
        saved = torch.load(sparse_path, map_location="cpu", weights_only=True)
    pruned = {n: m for n, m in saved_masks.items() if not bool(m.all())}
    mismatches = verify_coo(sparse_weights(saved), pruned)
    check = {"mismatches": sum(mismatches.values()), "layers": mismatches}
    atomic_write_bytes(check_path, (json.dumps(check, indent=2) + "\n").encode())
    device = next(permanent.parameters()).device
    return SparseExport(masks_path, sparse_path, check_path, mismatches, permanent,
                        sparse=load_sparse_model(permanent, saved).to(device),
                        densified=load_sparse_model(permanent, saved, densify_once=True).to(device),
                        layers=list(pruned))


# --- channels kept ------------------------------------------------------------------------------


def conv_widths(channels: list[int]) -> dict[str, tuple[int, int]]:
    """(in, out) channels of each conv by module name, read off a shape-only (meta) VGG."""
    with torch.device("meta"):
        model = VGG(1, channels, 1)
    return {name: (conv.in_channels, conv.out_channels) for name, conv, _ in model.conv_layers()}


def annotate_channels(entry: dict, channels: list[int], dense: list[int], layers: list[dict] | None = None) -> None:
    """Add channel counts (kept and dense) and the selection figures to a profile's ``layers`` rows."""
    kept, full = conv_widths(list(channels)), conv_widths(list(dense))
    by_name = {r["name"]: r for r in layers or []}
    for row in entry["layers"]:
        if row["name"] in kept:
            (i, o), (di, do) = kept[row["name"]], full[row["name"]]
            row.update(in_channels=i, out_channels=o, dense_in_channels=di, dense_out_channels=do)
            if row["name"] in by_name:
                r = by_name[row["name"]]
                row.update(selection=r["selection"], error_pruned=r["error_pruned"],
                           error_reconstructed=r["error_reconstructed"])


def channels_csv(layers: list[dict], dense: list[int], channels: list[int]) -> str:
    kept, full = conv_widths(list(channels)), conv_widths(list(dense))
    by_name = {r["name"]: r for r in layers}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CHANNEL_COLUMNS)
    for name, (di, do) in full.items():
        i, o = kept[name]
        r = by_name.get(name, {})
        writer.writerow([name, di, i, do, o, r.get("samples", 0), r.get("alpha"), r.get("selection", "none"),
                         r.get("error_pruned"), r.get("error_reconstructed"), r.get("seconds")])
    return buffer.getvalue()


def channel_files(layers: list[dict], dense: list[int], channels: list[int], target: float | None,
                  ratios: dict | None) -> dict[str, str]:
    """``channels.csv`` and ``channels.json``: each conv's dense and kept channels and how they were chosen."""
    table = {"dense_channels": dense, "channels": channels, "target_sparsity": target, "ratios": ratios,
             "layers": layers}
    return {CHANNELS_CSV: channels_csv(layers, dense, channels), CHANNELS_JSON: json.dumps(table, indent=2) + "\n"}
