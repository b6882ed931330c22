"""results.json: one file per run, written whole or not at all, validated by the report."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import torch

RESULTS_FILE = "results.json"
SCHEMA_FILE = "results.schema.json"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write`` into a temporary file beside ``path``, then rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would hide the file from everyone else
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` written whole or not at all (checkpoints, masks, sparse weights)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def schema() -> dict:
    return json.loads(resources.files("lightning_prune").joinpath(SCHEMA_FILE).read_text())


def validate(results: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` breaks the contract."""
    import jsonschema

    jsonschema.validate(results, schema())


def environment(device: torch.device | str) -> dict[str, str]:
    import lightning

    device = torch.device(device)
    if device.type == "cuda":
        name = f"cuda:{device.index or 0} {torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "lightning": lightning.__version__}


def new_results(task: str, dataset: str, device: torch.device | str, model: str = "vgg16_bn") -> dict:
    return {
        "task": task,
        "dataset": dataset,
        "model": model,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["lightning-prune", *sys.argv[1:]]),
        "environment": environment(device),
        "models": [],
        "artifacts": {},
    }


def save_results(results: dict, log_dir: str | Path) -> Path:
    """Validate, then write results.json and its markdown table into ``log_dir``."""
    results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    validate(results)
    path = Path(log_dir) / RESULTS_FILE
    atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(path.with_suffix(".md"), (markdown_table(results) + "\n").encode())
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def energy_cell(profile: dict) -> str:
    parts = [f"{k} {v:.1f}" for k, v in (profile.get("energy_mj") or {}).items() if v is not None]
    return ", ".join(parts) if parts else "n/a"


TABLE_COLUMNS = (
    "variant", "size MB", "params", "non-zero", "sparsity", "MMACs", "latency ms/batch",
    "peak MB", "avg MB", "energy mJ/batch", "test top-1", "test top-5", "train top-1", "train top-5",
)


def table_row(entry: dict) -> list[str]:
    p, a = entry["profile"], entry["accuracy"]
    return [
        entry["variant"],
        _fmt(p.get("model_size_mb")),
        _fmt(p.get("params")),
        _fmt(p.get("nonzero_params")),
        _fmt(p.get("sparsity"), 3),
        _fmt(p["macs"] / 1e6 if p.get("macs") else None, 1),
        f"{_fmt(p.get('latency_ms'), 1)} ± {_fmt(p.get('latency_ms_std'), 1)} (bs {p.get('batch_size')})",
        f"{_fmt(p.get('peak_memory_mb'), 1)} {p.get('memory_device', '')}",
        _fmt(p.get("avg_memory_mb"), 1),
        energy_cell(p),
        _fmt(a.get("test_top1")),
        _fmt(a.get("test_top5")),
        _fmt(a.get("train_top1")),
        _fmt(a.get("train_top5")),
    ]


def markdown_table(results: dict) -> str:
    lines = [
        f"**{results['task']}** on **{results['dataset']}** "
        f"({results.get('environment', {}).get('device', 'unknown device')})",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(table_row(m)) + " |" for m in results["models"]]
    notes = {m["profile"].get("energy_note") for m in results["models"]} - {None}
    lines += [""] + [f"Energy n/a: {n}" for n in sorted(notes)] if notes else []
    return "\n".join(lines)
