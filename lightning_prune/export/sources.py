"""What an export reads besides the weights: the results.json that measured the checkpoint, and its images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightning_prune.checkpoint_io import checkpoint_record, from_finished_run
from lightning_prune.data import DATASETS, NUM_CLASSES, ImageDataModule
from lightning_prune.errors import ExportError
from lightning_prune.export.checkpoint import CheckpointModel
from lightning_prune.runs import CHECKPOINTS


def run_parts(path: Path) -> tuple[str, str | None]:
    """(experiment, ``version_N`` or None) of ``<root>/<experiment>[/version_N][/checkpoints]/<file>.ckpt``."""
    parent = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    if parent.name.startswith("version_"):
        return parent.parent.name, parent.name
    if path.stem == "last" or path.stem.startswith("epoch="):
        return parent.name, None
    return path.stem, None


def variant_name(path: Path) -> str:
    """``<experiment>_v<N>`` (plus ``_<stem>`` but for ``last.ckpt``), else the stem: runs never share one."""
    experiment, version = run_parts(path)
    if version is None:
        return experiment
    name = f"{experiment}_v{version.removeprefix('version_')}"
    return name if path.stem == "last" else f"{name}_{path.stem}"


def default_out(path: Path, logs: Path) -> Path:
    """The run's own export folder: ``logs/<experiment>/version_N/export`` if that run folder exists."""
    experiment, version = run_parts(path)
    if version is not None and (logs / experiment / version).is_dir():
        return logs / experiment / version / "export"
    return path.parent / "export"


def recorded(path: Path, logs: Path) -> dict[str, Any]:
    """What the experiment's results.json files say about this exact file (same path and SHA-256)."""
    record = checkpoint_record(path)
    experiment, _ = run_parts(path)
    info: dict[str, Any] = {"checkpoint": {**record, "finished": from_finished_run(path)}, "measured_in": None}
    for results_path in sorted((logs / experiment).glob("version_*/results.json"), reverse=True):
        try:
            results = json.loads(results_path.read_text())
            measured = results.get("checkpoint") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if not measured.get("path") or Path(measured["path"]).resolve() != path.resolve():
            continue
        if measured.get("sha256") != record["sha256"]:
            info.setdefault("notes", []).append(
                f"{results_path} measured another content of {path} (epoch {measured.get('epoch')}); "
                "its figures are not this file's")
            continue
        entry = next((m for m in results.get("models", []) if isinstance(m, dict)), {})
        pruned = [m for m in results.get("models", []) if isinstance(m, dict) and m.get("variant") != "dense"]
        info.update(task=results.get("task"), measured_in=str(results_path), seed=results.get("seed"),
                    recorded_accuracy=(pruned[0] if pruned else entry).get("accuracy"))
        break
    if info["measured_in"] is None:
        info.setdefault("notes", []).append(f"no results.json under {logs / experiment} measured {path}")
    if info["checkpoint"]["finished"] is False:
        info.setdefault("notes", []).append(f"{path} is from a run that did not finish")
    return info


def datamodule(args: argparse.Namespace, ck: CheckpointModel):
    """The test and training images the checkpoint was trained on (options override the checkpoint's)."""
    saved = ck.data_hparams
    dataset = args.dataset or saved.get("dataset") or ("cifar100" if ck.model.num_classes == 100 else None)
    if dataset is None:
        raise ExportError(f"--dataset: {ck.path} does not record its dataset; choose one of {', '.join(DATASETS)}")
    if NUM_CLASSES[dataset] != ck.model.num_classes:
        raise ExportError(f"--dataset: {dataset} has {NUM_CLASSES[dataset]} classes but {ck.path} predicts "
                          f"{ck.model.num_classes}")
    batch_size = args.batch_size or saved.get("batch_size") or 256
    if batch_size < 2:
        raise ExportError(f"--batch-size: must be >= 2 (the exported batch axis is dynamic), got {batch_size}")

    pick = {key: value if value is not None else saved.get(key, default) for key, value, default in (
        ("data_dir", args.data_dir, "data"), ("download", args.download, True),
        ("verify_checksums", args.verify_checksums, True))}
    return ImageDataModule(dataset=dataset, batch_size=batch_size, num_workers=0, val_size=saved.get("val_size", 0),
                           split_seed=saved.get("split_seed", 0), **pick)
