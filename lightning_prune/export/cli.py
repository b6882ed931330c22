"""``lightning-prune export --run run:digits_unstructured --quantize``: a run's checkpoint handed on.

Each run becomes one variant (``<variant>.json`` sidecar, ``.pt`` plain weights, ``.onnx``, int8 files)
plus ``handoff.json``/``handoff.md`` with every variant's figures, by default in the run's own folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from lightning_prune.errors import ConfigError, ExportError
from lightning_prune.export.artifact import update_sidecar
from lightning_prune.export.checkpoint import load_checkpoint_model
from lightning_prune.export.figures import handoff_figures
from lightning_prune.export.int8 import Int8Settings, gate, refusal
from lightning_prune.export.onnx_export import ONNX_MODULES, require
from lightning_prune.export.pipeline import ATOL, FORMATS, export_checkpoint
from lightning_prune.export.publish import HANDOFF_TABLE, discard, publish, staging, write_handoff
from lightning_prune.export.sources import DATASETS, datamodule, default_out, recorded, variant_name
from lightning_prune.names import CALIBRATIONS
from lightning_prune.references import resolve
from lightning_prune.report.handoff import HANDOFF_FILE, handoff_table
from lightning_prune.runs import make_folder


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become one ``error:`` line (exit 2) like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ExportError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lightning-prune export",
                description="Export a run's checkpoint as a state dict + JSON sidecar, ONNX and (--quantize) int8; "
                "every file is reloaded and checked against the checkpoint, and handoff.json records the figures.")
    p.add_argument("--run", nargs="+", required=True, metavar="REF_OR_PATH",
                   help="checkpoint file(s) or run reference(s) run:<experiment>[/version_N][:last|:best]; "
                   "each becomes one variant")
    p.add_argument("--format", nargs="+", action="extend", metavar="FORMAT",
                   help=f"one or more of {', '.join(FORMATS)} (default: both)")
    p.add_argument("--out", type=Path, help="output folder (default: the run's logs/<experiment>/version_N/export)")
    p.add_argument("--quantize", action="store_true", help="also write the int8 model and measure it")
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    p.add_argument("--data-dir", help="dataset folder (default: the checkpoint's, else data)")
    p.add_argument("--verify-checksums", action=argparse.BooleanOptionalAction, default=None,
                   help="check CIFAR's MD5s (default: the checkpoint's setting)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download CIFAR if missing (default: the checkpoint's setting)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the checkpoint's)")
    p.add_argument("--calibration-images", type=int, default=256, help="training images for int8 (default: 256)")
    p.add_argument("--calibration", default="minmax", metavar="METHOD",
                   help=f"activation ranges of the int8 ONNX model: {', '.join(CALIBRATIONS)} (default: minmax)")
    p.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=True,
                   help="cross-layer equalization before int8 (default: on; data-free, the function is unchanged)")
    p.add_argument("--qat-epochs", type=int, default=0,
                   help="quantization-aware fine-tuning epochs on the training images before int8 (default: 0)")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="its SGD learning rate (default: 0.0001)")
    p.add_argument("--share-bits", type=int, default=0, metavar="BITS",
                   help="weight sharing in the int8 ONNX model: each layer's weights on 2**BITS k-means levels "
                   "(2-7; default 0: none); the gate measures the shared model")
    p.add_argument("--max-int8-drop", type=float, default=1.0, metavar="POINTS",
                   help="refuse (exit 2, nothing published for it) a variant whose int8 top-1 is more than POINTS "
                   "below its float top-1 on the test images (default: 1.0)")
    p.add_argument("--eval-batches", type=int, help="test batches for top-1 (default: the whole test set)")
    p.add_argument("--latency-batches", type=int, default=5, help="test batches timed per form (default: 5)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime alike (default: torch's)")
    p.add_argument("--atol", type=float, default=ATOL, help=f"largest logit difference accepted (default: {ATOL:g})")
    p.add_argument("--logs", type=Path, default=Path("logs"), help="root of the runs' logs (default: logs)")
    return p


def _formats(values: list[str] | None) -> list[str]:
    """The ``--format`` values (repeated or comma-separated), each one of :data:`FORMATS`; default: all."""
    if values is None:
        return list(FORMATS)
    formats = [f for v in values for f in v.split(",") if f]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format: unsupported format {', '.join(map(repr, unknown)) or '(none)'}; "
                          f"allowed: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def _checkpoint(ref: str, logs: Path) -> Path:
    try:
        resolved = resolve(ref, logs)
    except ConfigError as err:
        raise ExportError(f"--run: {err}") from err
    for note in resolved.notes:
        print(f"note: --run: {note}", file=sys.stderr)
    return resolved.path


def export_run(args: argparse.Namespace, ref: str, path: Path, out: Path, formats: list[str],
               settings: Int8Settings) -> dict[str, Any]:
    """Export the checkpoint ``path`` (``ref`` on the command line) into a staging folder of ``out``
    (``figures["staging"]``, published by :func:`main`); returns its handoff entry."""
    ck = load_checkpoint_model(path, "--run")
    dm = datamodule(args, ck)
    test = list(islice(dm.test_dataloader(), args.eval_batches))
    calibration = None
    if args.quantize:
        batches = -(-args.calibration_images // dm.batch_size)
        images = torch.cat([x for x, _ in islice(dm.train_eval_dataloader(), batches)])
        calibration = list(images[: args.calibration_images].split(dm.batch_size))
    mean, std = dm.mean_std()
    info = recorded(path, args.logs)
    for note in info.pop("notes", []):
        print(f"note: {note}", file=sys.stderr)
    metadata = {"dataset": dm.dataset, **info,
                "preprocessing": {"input": "float32 NCHW RGB 32x32, pixels scaled to [0, 1], then (x - mean) / std",
                                  "mean": list(mean), "std": list(std)}}
    variant = variant_name(path)
    print(f"export: {ref} -> {out}/{variant}.* ({', '.join(formats)}{', int8' if args.quantize else ''})",
          file=sys.stderr)
    stage = staging(out, variant)
    try:
        result = export_checkpoint(ck, stage, formats, test[0][0], variant, metadata, calibration_batches=calibration,
                                   atol=args.atol, int8=settings, train_batches=dm.train_dataloader)
        latency = [x for x, _ in test[: max(1, args.latency_batches)]]
        figures = handoff_figures(result, test, latency)
        if args.quantize:
            figures["int8_gate"] = gate(figures, settings.max_drop)
        measured = {k: figures.get(k) for k in ("float_top1", "int8_top1", "onnx_top1") if k in figures}
        update_sidecar(result.files["sidecar"], {"accuracy": {"test_images": figures["eval_images"], **measured}})
    except BaseException:
        discard(stage)
        raise
    figures.update(dataset=dm.dataset, reference=ref, checkpoint=info["checkpoint"], measured_in=info["measured_in"],
                   staging=stage)
    return figures


def _checked(args: argparse.Namespace) -> tuple[list[str], Int8Settings, list[Path]]:
    """Every option checked once, before any folder is made or checkpoint read; the checkpoints to export."""
    formats = _formats(args.format)
    for module in ONNX_MODULES if "onnx" in formats else ():
        require(module)
    settings = Int8Settings(equalize=args.equalize, calibration=args.calibration, qat_epochs=args.qat_epochs,
                            qat_lr=args.qat_lr, max_drop=args.max_int8_drop, share_bits=args.share_bits)
    for option in ("calibration_images", "latency_batches", "eval_batches", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ExportError(f"--{option.replace('_', '-')}: must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's count
    paths = [_checkpoint(ref, args.logs) for ref in args.run]
    names = [variant_name(p) for p in paths]
    if len(set(names)) < len(names):
        raise ExportError(f"--run: two runs would both be named {names}; export them into separate --out folders")
    if args.out is None and len(paths) > 1:
        raise ExportError("--out: name one folder when exporting several runs")
    return formats, settings, paths


def _export_all(args: argparse.Namespace, paths: list[Path], out: Path, formats: list[str], settings: Int8Settings
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every run exported into a staging folder, then (once all are checked) published unless the int8 gate
    refused it: (published, refused)."""
    entries: list[dict[str, Any]] = []
    try:
        for ref, p in zip(args.run, paths):
            entries.append(export_run(args, ref, p, out, formats, settings))
    except BaseException:
        for entry in entries:
            discard(entry["staging"])
        raise
    refused = [e for e in entries if not e.get("int8_gate", {"passed": True})["passed"]]
    for entry in refused:
        discard(entry.pop("staging"))
        entry["files"] = {}
        entry["reason"] = refusal(entry["variant"], entry["int8_gate"], settings)
    entries = [e for e in entries if e not in refused]
    for entry in entries:
        moved = publish(entry.pop("staging"), out, entry["variant"])
        entry["files"] = {k: str(moved.get(v, v)) for k, v in entry["files"].items()}
    return entries, refused


def main(argv: list[str] | None = None) -> int:
    """``lightning-prune export``; returns the exit code (2 with one ``error:`` line for bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    made: Path | None = None
    try:
        args = parser().parse_args(argv)
        formats, settings, paths = _checked(args)
        out = args.out or default_out(paths[0], args.logs)
        made = out if not out.exists() else None  # removed again when nothing lands in it
        make_folder(out, "--out", ExportError, probe=True)  # a file there: "cannot create ... (File exists)"
        entries, refused = _export_all(args, paths, out, formats, settings)
        path = write_handoff(out, entries, argv, refused)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ConfigError as err:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()  # no empty --out folder looks like an export
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for entry in refused:
        print(f"error: {entry['reason']}", file=sys.stderr)
    if refused:
        return 2
    print(handoff_table([json.loads(path.read_text())]))
    print(f"hand-off written to {path.parent.resolve()} ({HANDOFF_FILE}, {HANDOFF_TABLE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
