"""Where int8 loses accuracy, and what each remedy buys: the study behind the export's int8 defaults.

``python -m benchmarks.int8_diagnosis --run run:cifar10subset_channel/version_0 ...`` (or ``make int8-diagnosis``,
which takes every ladder run of the CIFAR-10 subset) measures, per checkpoint, on its whole test set:

- top-1 of the float model and of its ONNX Runtime int8 model under each recipe: MinMax, percentile and
  entropy calibration, each without and with cross-layer equalization, and one epoch of quantization-aware
  fine-tuning after equalization; the PyTorch eager int8 model without and with equalization;
- which part costs the points, in the int8 simulation (the same grid as ONNX Runtime's): weights only,
  activations only, and each layer alone (its weights and its input);
- per-channel ranges: for each layer input, the largest channel's activation range over the median
  channel's (on the calibration images), before and after equalization, and the same for the folded
  weights' output channels;
- the seconds each remedy costs.

Calibration uses the export's images (the first 256 training images, eval transforms). Output:
``benchmarks/results/int8-diagnosis-cpu.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lightning_prune.export import fold_masks, load_checkpoint_model, quantize_int8
from lightning_prune.export.fakequant import Int8Simulation, qat_finetune, share_onnx_weights
from lightning_prune.export.figures import top1
from lightning_prune.export.int8 import equalize, input_ranges
from lightning_prune.export.onnx_export import export_onnx, onnx_runner, onnx_session
from lightning_prune.export.onnx_int8 import compressed_size_mb, quantize_onnx
from lightning_prune.export.sources import datamodule, recorded
from lightning_prune.names import CALIBRATIONS
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.references import resolve
from studies.evidence import LADDER_EXPORTS
from studies.runs import finished_run

OUT = Path("benchmarks/results")
CALIBRATION_IMAGES = 256
SHARING_BITS, SHARING_QAT_EPOCHS = (4,), 2


def _spread(values: torch.Tensor) -> float:
    """Largest over median of a layer's per-channel ranges (1: all alike)."""
    values = values[values > 0]
    return float(values.max() / values.median()) if len(values) else float("nan")


@torch.no_grad()
def activation_spread(model: torch.nn.Module, calibration: list[torch.Tensor]) -> dict[str, float]:
    """Per layer input: the largest channel's max |activation| over the median channel's."""
    peaks: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in prunable_modules(model).items():
        def hook(_, args, name=name):
            x = args[0].detach().abs()
            per_channel = x.amax(dim=(0, 2, 3)) if x.dim() == 4 else x.amax(dim=0)
            peaks[name] = torch.maximum(peaks[name], per_channel) if name in peaks else per_channel
        hooks.append(layer.register_forward_pre_hook(hook))
    for x in calibration:
        model(x)
    for h in hooks:
        h.remove()
    return {name: _spread(v) for name, v in peaks.items() if name != "features.0"}  # the image: 3 channels


def weight_spread(model: torch.nn.Module) -> dict[str, float]:
    """Per layer: the largest input channel's max |weight| over the median one's. Each output channel has its
    own int8 scale, so what costs a row precision is one input column far above the others in it (what
    equalization moves into the producer's BatchNorm)."""
    return {name: _spread(input_ranges(layer)) for name, layer in prunable_modules(model).items()
            if name != "features.0"}


def _ort_top1(model, calibration, test, method: str, work: Path, share_bits: int = 0) -> tuple[float, float]:
    source = export_onnx(model, work / f"float-{id(model)}.onnx", test[0][0])
    start = time.perf_counter()
    quantize_onnx(source, work / "int8.onnx", calibration, method)
    if share_bits:
        share_onnx_weights(work / "int8.onnx", share_bits)
    seconds = time.perf_counter() - start
    return top1(onnx_runner(onnx_session(work / "int8.onnx")), test)[0], seconds


def _sim_top1(model, calibration, test, **kwargs) -> float:
    return top1(Int8Simulation(model, **kwargs).calibrate(calibration), test)[0]


def diagnose(ref: str, logs: str = "logs", qat_epochs: int = 1) -> dict[str, Any]:
    path = resolve(ref, logs).path
    ck = load_checkpoint_model(path)
    ns = argparse.Namespace(dataset=None, data_dir=None, download=None, verify_checksums=None, batch_size=None)
    dm = datamodule(ns, ck)
    test = list(dm.test_dataloader())
    images = torch.cat([x for x, _ in dm.train_eval_dataloader()])[:CALIBRATION_IMAGES]
    calibration = list(images.split(dm.batch_size))
    model = fold_masks(ck.model)
    start = time.perf_counter()
    equalized = equalize(model)
    seconds: dict[str, float] = {"equalize": time.perf_counter() - start}
    float_top1 = top1(model, test)[0]
    ort: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for method in CALIBRATIONS:
            for label, net in (("plain", model), ("equalized", equalized)):
                ort[f"{label} {method}"], seconds[f"quantize {method}"] = _ort_top1(net, calibration, test, method,
                                                                                     work)
        start = time.perf_counter()
        tuned = qat_finetune(equalized, dm.train_dataloader(), calibration, qat_epochs)
        seconds[f"qat {qat_epochs} epoch"] = time.perf_counter() - start
        ort[f"equalized minmax + qat {qat_epochs} epoch"], _ = _ort_top1(tuned, calibration, test, "minmax", work)
        sharing: dict[str, Any] = {}
        for bits in SHARING_BITS:
            sharing[f"{bits}-bit"], _ = _ort_top1(equalized, calibration, test, "minmax", work, bits)
            sharing[f"{bits}-bit compressed_mb"] = compressed_size_mb(work / "int8.onnx")
            start = time.perf_counter()
            shared = qat_finetune(equalized, dm.train_dataloader(), calibration, SHARING_QAT_EPOCHS,
                                  share_bits=bits)
            seconds[f"qat {SHARING_QAT_EPOCHS} epochs, {bits}-bit sharing"] = time.perf_counter() - start
            sharing[f"{bits}-bit + qat"], _ = _ort_top1(shared, calibration, test, "minmax", work, bits)
    pytorch = {label: top1(quantize_int8(net, calibration), test)[0]
               for label, net in (("plain", model), ("equalized", equalized), ("equalized + qat", tuned))}
    layers = list(prunable_modules(model))
    per_layer = {name: float_top1 - _sim_top1(model, calibration, test, layers=[name]) for name in layers}
    return {
        "run": ref, "checkpoint": str(path), "task": ck.task, "structure": ck.structure,
        "seed": recorded(path, Path("logs")).get("seed"), "channels": list(model.channels),
        "test_images": sum(len(y) for _, y in test), "float_top1": float_top1,
        "ort_int8_top1": ort, "pytorch_int8_top1": pytorch, "ort_shared_top1": sharing,
        "simulated_drop": {
            "weights only": float_top1 - _sim_top1(model, calibration, test, activations=False),
            "activations only": float_top1 - _sim_top1(model, calibration, test, weights=False),
            "both": float_top1 - _sim_top1(model, calibration, test),
            "both, equalized": float_top1 - _sim_top1(equalized, calibration, test),
        },
        "layer_drop": per_layer,
        "activation_spread": {"plain": activation_spread(model, calibration),
                              "equalized": activation_spread(equalized, calibration)},
        "weight_spread": {"plain": weight_spread(model), "equalized": weight_spread(equalized)},
        "seconds": seconds,
    }


def before(paths: list[Path]) -> list[dict[str, Any]]:
    """The int8 figures of earlier exports (their checkpoints may be gone), one entry per variant."""
    out = []
    for path in paths:
        for v in json.loads(path.read_text()).get("variants", []):
            out.append({k: v.get(k) for k in ("variant", "task", "seed", "structure", "float_top1", "int8_top1",
                                              "int8_onnx_top1")})
    return out


def summary(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Per recipe over every model: the largest int8 drop and how many models lose more than a point."""
    out: dict[str, Any] = {"models": len(models), "recipes": {}}
    recipes = [(f"ORT {k}", "ort_int8_top1", k) for k in (models[0]["ort_int8_top1"] if models else [])]
    recipes += [(f"PyTorch {k}", "pytorch_int8_top1", k) for k in ("plain", "equalized", "equalized + qat")]
    for label, field, key in recipes:
        drops = [m["float_top1"] - m[field][key] for m in models]
        out["recipes"][label] = {"max_drop": max(drops), "mean_drop": sum(drops) / len(drops),
                                 "over_one_point": sum(d > 1.0 for d in drops)}
    for part in ("weights only", "activations only", "both", "both, equalized"):
        out[part] = max(m["simulated_drop"][part] for m in models)
    for key in models[0]["seconds"] if models else []:
        out.setdefault("seconds", {})[key] = max(m["seconds"][key] for m in models)
    bits = SHARING_BITS[0]
    for m in models:  # mean per experiment (over its seeds)
        experiment = m["run"].removeprefix("run:").split("/")[0]
        entry = out.setdefault("by_experiment", {}).setdefault(experiment, {"n": 0, "sharing_drop": 0.0,
                                                                              "sharing_qat_drop": 0.0,
                                                                              "sharing_compressed_mb": 0.0})
        entry["n"] += 1
        entry["sharing_drop"] += m["float_top1"] - m["ort_shared_top1"][f"{bits}-bit"]
        entry["sharing_qat_drop"] += m["float_top1"] - m["ort_shared_top1"][f"{bits}-bit + qat"]
        entry["sharing_compressed_mb"] += m["ort_shared_top1"][f"{bits}-bit compressed_mb"]
        for kind in ("plain", "equalized"):  # the largest weight column spread over the experiment's seeds
            entry[f"weight_spread_{kind}"] = max(entry.get(f"weight_spread_{kind}", 0.0),
                                                 max(m["weight_spread"][kind].values()))
            entry[f"ort_{kind}_max_drop"] = max(entry.get(f"ort_{kind}_max_drop", float("-inf")),
                                                m["float_top1"] - m["ort_int8_top1"][f"{kind} minmax"])
    for entry in out.get("by_experiment", {}).values():
        for key in ("sharing_drop", "sharing_qat_drop", "sharing_compressed_mb"):
            entry[key] /= entry["n"]
    return out


def _diagnose_one(job: tuple[str, str, int, int]) -> dict[str, Any]:
    ref, logs, qat_epochs, threads = job
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return diagnose(ref, logs, qat_epochs)


def _worst(spread: dict[str, float]) -> str:
    name = max(spread, key=lambda k: spread[k])
    return f"{spread[name]:.0f} ({name})"


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["models"]
    recipes = list(rows[0]["ort_int8_top1"]) if rows else []
    head = ["run", "float top-1", *[f"ORT {r}" for r in recipes], "PyTorch plain", "PyTorch equalized",
            "PyTorch equalized + qat"]
    lines = [doc["environment"], "", "int8 top-1 drop in points (float minus int8; negative: int8 better):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        drops = [f"{r['float_top1'] - r['ort_int8_top1'][k]:.2f}" for k in recipes]
        drops += [f"{r['float_top1'] - r['pytorch_int8_top1'][k]:.2f}" for k in ("plain", "equalized",
                                                                                   "equalized + qat")]
        lines.append(f"| {r['run']} | {r['float_top1']:.2f} | " + " | ".join(drops) + " |")
    head = ["run", "weights only", "activations only", "both", "both, equalized", "worst layer alone",
            "activation spread (plain / equalized)", "weight column spread (plain / equalized)"]
    lines += ["", "Where the points go (simulated int8, drop in points) and the range spreads of the worst layer: "
              "activations, the largest input channel's range over the median one's; weights, the largest input "
              "column's max |w| over the median one's:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s, layer = r["simulated_drop"], max(r["layer_drop"], key=lambda k: r["layer_drop"][k])
        lines.append(f"| {r['run']} | {s['weights only']:.2f} | {s['activations only']:.2f} | {s['both']:.2f} | "
                     f"{s['both, equalized']:.2f} | {r['layer_drop'][layer]:.2f} ({layer}) | "
                     f"{_worst(r['activation_spread']['plain'])} / {_worst(r['activation_spread']['equalized'])} | "
                     f"{_worst(r['weight_spread']['plain'])} / {_worst(r['weight_spread']['equalized'])} |")
    bits = SHARING_BITS[0]
    lines += ["", f"Weight sharing of the int8 ONNX model ({bits} bits per layer, equalized, MinMax): drop in points "
              f"without and with {SHARING_QAT_EPOCHS} epochs of QAT through the sharing, and the compressed file:", "",
              "| run | drop, sharing | drop, sharing + QAT | compressed MB |", "|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['float_top1'] - r['ort_shared_top1'][f'{bits}-bit']:.2f} | "
              f"{r['float_top1'] - r['ort_shared_top1'][f'{bits}-bit + qat']:.2f} | "
              f"{r['ort_shared_top1'][f'{bits}-bit compressed_mb']:.3f} |" for r in rows]
    if doc.get("before"):
        lines += ["", "The earlier evidence's exports (no equalization, no gate; their checkpoints are gone):", "",
                  "| variant | seed | float top-1 | PyTorch int8 | ORT int8 | ORT drop |", "|---|---|---|---|---|---|"]
        lines += [f"| {b['variant']} | {b['seed']} | {b['float_top1']:.2f} | {b['int8_top1']:.2f} | "
                  f"{b['int8_onnx_top1']:.2f} | {b['float_top1'] - b['int8_onnx_top1']:.2f} |" for b in doc["before"]]
    keys = list(rows[0]["seconds"]) if rows else []
    lines += ["", "Seconds per remedy (one model, one thread):", "", "| run | " + " | ".join(keys) + " |",
              "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {r['run']} | " + " | ".join(f"{r['seconds'][k]:.1f}" for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(out: Path, env: str, models: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> dict[str, Any]:
    doc = {"environment": env, "models": models, "summary": summary(models), "before": earlier}
    if earlier:
        drops = [b["float_top1"] - b["int8_onnx_top1"] for b in earlier]
        doc["summary"]["before"] = {"variants": len(drops), "max_drop": max(drops),
                                    "over_one_point": sum(d > 1.0 for d in drops)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_diagnosis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", default=[], help="checkpoints or run: references")
    parser.add_argument("--evidence-seeds", type=int, default=0,
                        help="add every ladder run of `make evidence` (lightning_prune.evidence) for seeds 0..N-1")
    parser.add_argument("--logs", default="logs", help="root of the runs (default: logs)")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--before", nargs="*", type=Path, default=[],
                        help="handoff.json files of earlier exports (no gate, no equalization) to keep beside")
    parser.add_argument("--out", type=Path, default=OUT / "int8-diagnosis-cpu.json")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per model (default 1)")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite --out's summary and table")
    parser.add_argument("--respread", action="store_true", help="with --rewrite: measure the weight spreads again")
    parser.add_argument("--jobs", type=int, default=2, help="models diagnosed at once (default 2)")
    args = parser.parse_args(argv)
    if args.rewrite:  # the summary and the table again from the kept measurements (no model is run)
        doc = json.loads(args.out.read_text())
        for model in doc["models"] if args.respread else []:  # the weight spreads only: no data needed
            plain = fold_masks(load_checkpoint_model(model["checkpoint"]).model)
            model["weight_spread"] = {"plain": weight_spread(plain), "equalized": weight_spread(equalize(plain))}
        write(args.out, doc["environment"], doc["models"], doc.get("before", []))
        return 0
    refs = list(args.run)
    for seed in range(args.evidence_seeds):
        for experiment in LADDER_EXPORTS:
            run = finished_run(experiment, seed)
            if run is None:
                parser.error(f"{experiment} has no finished run of seed {seed} (make evidence-ladder)")
            refs.append(f"run:{run.name}")
    if not refs:
        parser.error("name --run or --evidence-seeds")
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        models = list(pool.map(_diagnose_one, [(ref, args.logs, args.qat_epochs, args.threads) for ref in refs]))
    env = (f"{platform.machine()}, {args.threads} thread(s); torch {metadata.version('torch')}, "
           f"onnxruntime {metadata.version('onnxruntime')}; whole test set, {CALIBRATION_IMAGES} calibration images")
    doc = write(args.out, env, models, before(args.before))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
