"""Which PyTorch int8 path to keep: eager ``torch.ao.quantization`` (deprecated) against torchao's PT2E flow.

``python -m benchmarks.int8_paths`` (torchao installed: ``pip install torchao``; it is not a dependency)
quantizes the quarter-width VGG16-BN with 90 % of its conv/linear weights at exactly 0 every way it
can, and records for each: whether it ran, the operators that did the work (torch.profiler: real int8
kernels or float convolutions between quantize/dequantize), latency per batch of 256 (the forms take
turns, 10 timed batches after 3 warm-up), the saved state dict's size, whether exact zeros stay int 0,
and the largest logit difference from the float model. ONNX Runtime's int8 model (the hand-off's
deployment path) is measured beside them. Output: ``benchmarks/results/int8-paths-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lightning_prune.export.quantize import int8_weights, quantize_int8
from lightning_prune.models import VGG, scaled_channels
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import apply_magnitude_pruning, make_permanent

OUT = Path("benchmarks/results")
KERNELS = ("quantized::", "onednn::q", "qlinear", "qconv", "QLinear", "mkldnn_convolution", "aten::convolution",
           "aten::addmm", "aten::_int_mm")


def model() -> VGG:
    torch.manual_seed(0)
    net = VGG(10, scaled_channels(0.25))
    net.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            net(torch.randn(64, 3, 32, 32))
    apply_magnitude_pruning(net, dict.fromkeys(prunable_modules(net), 0.9))
    return make_permanent(net).eval()


def ops(forward: Callable, x: torch.Tensor) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward(x)
    names = [e.key for e in prof.key_averages()]
    return sorted({n for n in names if any(k in n for k in KERNELS)})


def size_mb(state: dict) -> float:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return len(buffer.getvalue()) / 1e6


def zeros_kept(float_model: VGG, quantized: dict[str, torch.Tensor]) -> bool:
    kept = True
    for layer, q in zip(prunable_modules(float_model).values(), quantized.values()):
        ints = q.int_repr() if q.is_quantized else q
        kept &= bool((ints[layer.weight.detach() == 0] == 0).all())
    return kept


def torchao_paths(net: VGG, x: torch.Tensor, calibration: list[torch.Tensor]) -> dict[str, dict[str, Any]]:
    """PT2E with the X86 inductor quantizer: as converted, and lowered by torch.compile (freezing)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as err:
        return {"torchao PT2E": {"works": False, "error": f"torchao not installed ({err})"}}
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    graph = torch.export.export(copy.deepcopy(net), (x[:8],), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
    prepared = prepare_pt2e(graph, quantizer)
    for batch in calibration:
        prepared(batch)
    converted = convert_pt2e(prepared)
    weights = {k: v for k, v in converted.state_dict().items() if v.dtype == torch.int8}
    out["torchao PT2E (X86 quantizer), not lowered"] = {
        "forward": converted, "size_mb": size_mb({k: v for k, v in converted.state_dict().items()
                                                  if v.dtype != torch.float32 or "scale" in k}),
        "zeros_kept": zeros_kept(net, weights) if len(weights) == len(prunable_modules(net)) else None}
    import torch._inductor.config as inductor

    inductor.freezing = True
    start = time.perf_counter()
    compiled = torch.compile(converted)
    compiled(x)
    out["torchao PT2E + torch.compile (freezing)"] = {"forward": compiled, "compile_s": time.perf_counter() - start,
                                                      "size_mb": None, "zeros_kept": None}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_paths", description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = model()
    x = torch.randn(256, 3, 32, 32)
    calibration = [torch.randn(64, 3, 32, 32) for _ in range(4)]
    with torch.no_grad():
        reference = net(x)
        eager = quantize_int8(net, calibration)
        forms: dict[str, dict[str, Any]] = {
            "float (eager)": {"forward": net, "size_mb": size_mb(net.state_dict()), "zeros_kept": None},
            "torch.ao.quantization eager (x86)": {"forward": eager, "size_mb": size_mb(eager.state_dict()),
                                                  "zeros_kept": zeros_kept(net, int8_weights(eager))},
        }
        try:
            forms |= torchao_paths(net, x, calibration)
        except Exception as err:  # noqa: BLE001 - any failure of the optional path is a finding to record
            forms["torchao PT2E"] = {"works": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
        try:
            forms |= onnx_runtime(net, x, calibration)
        except Exception as err:  # noqa: BLE001
            forms["ONNX Runtime int8 (QDQ)"] = {"works": False, "error": f"{type(err).__name__}: {err}"}
        runnable = {k: v for k, v in forms.items() if "forward" in v}
        times: dict[str, list[float]] = {k: [] for k in runnable}
        for form in runnable.values():
            for _ in range(3):
                form["forward"](x)
        for _ in range(args.batches):  # the forms take turns, so shared-CPU noise falls on all of them
            for name, form in runnable.items():
                start = time.perf_counter()
                form["forward"](x)
                times[name].append(1e3 * (time.perf_counter() - start))
        rows = {}
        for name, form in forms.items():
            if "forward" not in form:
                rows[name] = {"works": False, "error": form.get("error")}
                continue
            logits = form["forward"](x)
            rows[name] = {"works": True, "latency_ms": statistics.fmean(times[name]),
                          "latency_ms_std": statistics.stdev(times[name]), "size_mb": form.get("size_mb"),
                          "zeros_kept": form.get("zeros_kept"), "compile_s": form.get("compile_s"),
                          "max_abs_diff": float((logits.float() - reference).abs().max()),
                          "operators": ops(form["forward"], x) if "ONNX" not in name else []}
    versions = {p: _version(p) for p in ("torch", "torchao", "onnxruntime")}
    doc = {"model": "vgg16_bn width 0.25, 90 % of conv/linear weights exactly 0, batch 256",
           "threads": args.threads, "machine": platform.machine(), "versions": versions, "paths": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8-paths-cpu.json").write_text(json.dumps(doc, indent=2) + "\n")
    (OUT / "int8-paths-cpu.md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    return 0


def onnx_runtime(net: VGG, x: torch.Tensor, calibration: list[torch.Tensor]) -> dict[str, dict[str, Any]]:
    import tempfile

    from lightning_prune.export.onnx_export import export_onnx, onnx_runner, onnx_session
    from lightning_prune.export.onnx_int8 import check_onnx_int8, quantize_onnx

    folder = Path(tempfile.mkdtemp())
    export_onnx(net, folder / "f.onnx", x[:8])
    quantize_onnx(folder / "f.onnx", folder / "q.onnx", calibration)
    check = check_onnx_int8(folder / "f.onnx", folder / "q.onnx")
    return {"ONNX Runtime fp32": {"forward": onnx_runner(onnx_session(folder / "f.onnx")),
                                  "size_mb": (folder / "f.onnx").stat().st_size / 1e6, "zeros_kept": None},
            "ONNX Runtime int8 (QDQ)": {"forward": onnx_runner(onnx_session(folder / "q.onnx")),
                                        "size_mb": (folder / "q.onnx").stat().st_size / 1e6,
                                        "zeros_kept": check.zeros_preserved}}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def markdown(doc: dict) -> str:
    lines = [f"{doc['model']}, {doc['threads']} threads, {doc['machine']}; "
             + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             "| path | runs | ms per batch | saved MB | exact zeros stay int 0 | max logit diff vs float | "
             "int8 kernels that ran (torch.profiler) |", "|---|---|---|---|---|---|---|"]
    for name, r in doc["paths"].items():
        if not r["works"]:
            lines.append(f"| {name} | no: {r['error']} | — | — | — | — | — |")
            continue
        size = "—" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
        zeros = {True: "yes", False: "**no**", None: "—"}[r["zeros_kept"]]
        kernels = ", ".join(f"`{o}`" for o in r["operators"]) or "—"
        extra = f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s") else ""
        lines.append(f"| {name} | yes{extra} | {r['latency_ms']:.1f} ± {r['latency_ms_std']:.1f} | {size} | {zeros} | "
                     f"{r['max_abs_diff']:.3g} | {kernels} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
