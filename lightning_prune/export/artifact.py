"""The ``state_dict`` artifact: plain dense weights (masks folded to exact zeros) plus a JSON sidecar.

All a consumer needs is in the sidecar: ``vgg16_bn``'s architecture numbers, its input, the weights' origin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lightning_prune.errors import ExportError
from lightning_prune.models import VGG, vgg16_bn
from lightning_prune.pruning.unstructured import copy_model, make_permanent
from lightning_prune.results import atomic_write_bytes

SIDECAR_FORMAT = "lightning_prune.vgg16_bn"
SIDECAR_VERSION = 1
INPUT_SHAPE = (3, 32, 32)


def fold_masks(model: VGG) -> VGG:
    """A copy with every mask multiplied into its weight (pruned = exact 0.0): the dense VGG's keys again."""
    return make_permanent(copy_model(model)).eval()


SUFFIXES = (".int8.onnx.xz", ".int8.onnx", ".int8.pt", ".pt", ".onnx", ".json")


def sidecar_path(path: str | Path) -> Path:
    """``<variant>.json`` for any file of the variant (``.pt``, ``.onnx``, ``.int8.pt``) or the JSON itself."""
    path = Path(path)
    stem = next((path.name[: -len(s)] for s in SUFFIXES if path.name.endswith(s)), path.stem)
    return path.with_name(f"{stem}.json")


def write_json(path: str | Path, doc: Any) -> Path:
    """``doc`` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    return Path(path)


def write_sidecar(path: str | Path, model: VGG, metadata: dict[str, Any], files: dict[str, str]) -> Path:
    """Write the variant's JSON description (atomically); ``files`` maps format to file name beside it."""
    arch = {"name": "vgg16_bn", "num_classes": int(model.num_classes),
            "channels": [int(c) for c in model.channels], "classifier_width": int(model.classifier_width),
            "input_shape": list(INPUT_SHAPE)}
    return write_json(path, {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
                             "architecture": arch, "metadata": metadata, "files": files})


def update_sidecar(path: str | Path, metadata: dict[str, Any]) -> Path:
    """Add ``metadata`` entries to an existing sidecar (e.g. the accuracy measured after export)."""
    doc = read_sidecar(path)
    doc["metadata"] = {**doc.get("metadata", {}), **metadata}
    return write_json(sidecar_path(path), doc)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a variant (any of its files may be given); checks its format tag."""
    path = sidecar_path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: not a readable export sidecar ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        raise ExportError(f"{path}: not a {SIDECAR_FORMAT} sidecar (format={doc.get('format')!r})")
    return doc


def build_from_sidecar(doc: dict[str, Any]) -> VGG:
    """An untrained ``vgg16_bn`` of the sidecar's architecture (no weights loaded)."""
    arch = doc["architecture"]
    return vgg16_bn(arch["num_classes"], arch["channels"], classifier_width=arch["classifier_width"])


def load_state_dict_model(path: str | Path) -> VGG:
    """Rebuild a plain ``vgg16_bn`` in eval mode from a ``state_dict`` artifact (``<variant>.pt`` or its sidecar)."""
    doc = read_sidecar(path)
    name = doc.get("files", {}).get("state_dict")
    if not name:
        raise ExportError(f"{sidecar_path(path)}: this variant was exported without a state_dict file")
    weights = sidecar_path(path).with_name(name)
    model = build_from_sidecar(doc)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"{weights}: does not load into the sidecar's architecture ({first})") from err
    return model.eval()

