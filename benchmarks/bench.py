"""Every pruning algorithm once on VGG16-BN: wall time, peak memory and the work done, per step.

    make bench                                   # width 1.0 on the CPU -> benchmarks/results/bench-cpu.json
    make bench ACCELERATOR=cuda                  # the same on a GPU    -> benchmarks/results/bench-cuda.json
    make bench-growth                            # widths 0.25 and 0.5 (+ width 1.0 from bench-cpu.json),
                                                 # power-law fits and benchmarks/results/growth-cpu.png
    python -m benchmarks.bench --widths 0.25 0.5 1.0 --growth --steps grasp snip

Images: the real CIFAR-10 subset (``$LIGHTNING_PRUNE_CIFAR10_SUBSET`` or ``../shared/data/cifar10-subset``)
when present, scikit-learn's digits otherwise. Weights are random: costs do not depend on them.

Each step runs in a fresh Python process (``--isolation process``, the default), so its peak
resident memory (VmHWM, reset just before the timed work) is its own; ``--isolation none`` runs
them all in this process (quick, for tests). On CUDA the peak is ``torch.cuda.max_memory_allocated``.

Budgets (``--budget KEY=VALUE`` to change one; ``<step>_seconds`` bounds any step): the whole run
<= 900 s and every step's process <= 8,000 MB; at the widths in ``--budget-widths`` (default 1.0,
the mission's model) the cached sweep <= 0.3x the naive one on the same slice, GraSP scoring <= 3x
SNIP scoring and channel pruning <= 60 s. Exceeding one, or a step failing, exits 1 naming the step
after the JSON is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SUBSET_ENV = "LIGHTNING_PRUNE_CIFAR10_SUBSET"
DEFAULT_SUBSET = REPO.parent / "shared" / "data" / "cifar10-subset"

BUDGETS: dict[str, float] = {
    "total_seconds": 900.0,
    "peak_rss_mb": 8000.0,
    "sweep_ratio": 0.3,
    "grasp_over_snip": 3.0,
    "channel_pruning_seconds": 60.0,
}
BUDGET_STEP = {"sweep_ratio": "sweep_vs_naive", "grasp_over_snip": "grasp",
               "channel_pruning_seconds": "channel_pruning"}
MEMORY_METHOD = {
    "process": "peak RSS (VmHWM) of a fresh process per step, reset to the current RSS just before the timed work",
    "none": "peak RSS (VmHWM) reset before each timed phase, all steps in one process (earlier steps' freed "
            "memory may still be resident, so later peaks can read high)",
}


# --- data and machine ---------------------------------------------------------------------------


def resolve_data(choice: str, data_dir: str | None) -> tuple[str, str, str]:
    """(dataset, data_dir, note): the CIFAR-10 subset when present (or asked for), digits otherwise."""
    if choice == "digits":
        return "digits", "", "scikit-learn digits (asked for)"
    candidates = [data_dir] if data_dir else [os.environ.get(SUBSET_ENV), str(DEFAULT_SUBSET)]
    for path in candidates:
        if path and (Path(path) / "cifar-10-batches-py").is_dir():
            return "cifar10", str(Path(path).resolve()), "real CIFAR-10 subset"
    if choice == "cifar10":
        raise SystemExit(f"no CIFAR-10 copy (cifar-10-batches-py) under {candidates}")
    return "digits", "", f"scikit-learn digits (no CIFAR-10 subset at ${SUBSET_ENV} or {DEFAULT_SUBSET})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(kind: str, threads: int) -> dict:
    import lightning
    import torch

    info = {"kind": kind, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
            "cuda": None}
    if kind == "cuda":
        info["cuda"] = torch.cuda.get_device_name(0)
        info["cuda_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
    return info


def width_info(width: float, num_classes: int) -> dict:
    from lightning_prune.models import scaled_channels, vgg16_bn
    from lightning_prune.profiling.static import count_macs

    model = vgg16_bn(num_classes, scaled_channels(width))
    return {"width": width, "channels": model.channels, "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model)}


# --- running steps --------------------------------------------------------------------------------


def run_worker(step: str, settings_path: str, result_path: str) -> int:
    """Inside the fresh process: one step, its figures to ``result_path``."""
    import torch

    from benchmarks.measure import Meter
    from benchmarks.steps import Settings, run_step

    settings = Settings(**json.loads(Path(settings_path).read_text()))
    meter = Meter(torch.device(settings.device))
    try:
        result = run_step(step, settings, meter) | meter.summary() | {"ok": True, "error": None}
    except Exception as err:  # noqa: BLE001 - reported in the JSON, the parent exits non-zero
        result = meter.summary() | {"ok": False, "error": f"{type(err).__name__}: {err}",
                                    "traceback": traceback.format_exc()[-4000:]}
    result["hwm_reset"] = meter.hwm_reset
    Path(result_path).write_text(json.dumps(result, default=float))
    return 0


def in_process(step: str, settings) -> dict:
    import torch

    from benchmarks.measure import Meter, reset_hwm
    from benchmarks.steps import run_step

    reset_hwm()
    meter = Meter(torch.device(settings.device), collect=False)
    start = time.perf_counter()
    try:
        result = run_step(step, settings, meter) | {"ok": True, "error": None}
    except Exception as err:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result |= meter.summary()
    result["process_wall_s"] = time.perf_counter() - start
    result["hwm_reset"] = meter.hwm_reset
    return json.loads(json.dumps(result, default=float))


def in_subprocess(step: str, settings, work: Path) -> dict:
    tag = f"{step}@{settings.width:g}"
    settings_path, result_path, log_path = work / f"{tag}.settings.json", work / f"{tag}.json", work / f"{tag}.log"
    settings_path.write_text(json.dumps(asdict(settings)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--worker", step, "--settings",
                               str(settings_path), "--result", str(result_path)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text()[-3000:] if log_path.is_file() else ""
        return {"ok": False, "error": f"worker exited with {proc.returncode}", "log_tail": tail,
                "process_wall_s": wall}
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = wall
    return result


# --- budgets ------------------------------------------------------------------------------------


def check_budgets(report: dict, budgets: dict[str, float], budget_widths: list[float]) -> list[dict]:
    checks = []

    def add(key: str, step: str, width: float | None, value: float | None) -> None:
        limit = budgets[key]
        checks.append({"budget": key, "step": step, "width": width, "limit": limit, "value": value,
                       "ok": None if value is None else bool(value <= limit)})

    add("total_seconds", "total", None, report["total_wall_s"])
    parent = report.get("parent_peak_rss_mb") or 0.0
    for key, record in report["widths"].items():
        width = float(key)
        steps = record["steps"]
        for name, step in steps.items():
            peak = step.get("process_peak_rss_mb")
            if peak is not None and report["isolation"] == "process":
                peak += parent  # the parent lives beside each worker
            add("peak_rss_mb", name, width, peak)
        if width not in budget_widths:
            continue
        ok = {name: s for name, s in steps.items() if s.get("ok")}
        if "sweep_ratio" in budgets:
            add("sweep_ratio", "sweep_vs_naive", width,
                ok["sweep_vs_naive"]["extra"]["ratio"] if "sweep_vs_naive" in ok else None)
        if "grasp_over_snip" in budgets:
            value = None
            if "grasp" in ok and "snip" in ok:
                value = ok["grasp"]["phases"]["scores"]["wall_s"] / ok["snip"]["phases"]["scores"]["wall_s"]
            add("grasp_over_snip", "grasp", width, value)
        if "channel_pruning_seconds" in budgets:
            add("channel_pruning_seconds", "channel_pruning", width,
                ok["channel_pruning"]["wall_s"] if "channel_pruning" in ok else None)
        for key_ in budgets:
            step = key_.removesuffix("_seconds")
            if key_.endswith("_seconds") and key_ not in BUDGETS and step in steps:
                add(key_, step, width, steps[step].get("wall_s") if steps[step].get("ok") else None)
    return checks


def parse_budgets(items: list[str], steps: list[str]) -> dict[str, float]:
    budgets = dict(BUDGETS)
    for item in items:
        key, _, value = item.partition("=")
        if key not in BUDGETS and key.removesuffix("_seconds") not in steps:
            raise SystemExit(f"--budget {item}: unknown budget; use one of {', '.join(BUDGETS)} or <step>_seconds "
                             f"with a step of {', '.join(steps)}")
        budgets[key] = float(value)
    return budgets


# --- output ----------------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or (isinstance(value, float) and value >= 1e5):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    lines = []
    for key, record in report["widths"].items():
        lines += [f"Width {float(key):g}: {record['params']:,} parameters, {record['macs'] / 1e6:.1f} MMACs per image, "
                  f"{report['data']['dataset']} images, {report['machine']['kind']}, "
                  f"{report['machine']['threads']} threads.", "",
                  "| step | wall s | CPU s | peak RSS MB (step / process) | CUDA peak MB | images | weights | "
                  "GMACs | notes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, step in record["steps"].items():
            if not step.get("ok"):
                lines.append(f"| {name} | failed: {step.get('error')} | | | | | | | |")
                continue
            work = step["work"]
            lines.append(
                f"| {name} | {_fmt(step['wall_s'], 2)} | {_fmt(step['cpu_s'], 1)} | "
                f"{_fmt(step.get('step_peak_rss_mb'), 0)} / {_fmt(step.get('process_peak_rss_mb'), 0)} | "
                f"{_fmt(step.get('cuda_peak_mb'), 0)} | {work.get('images', 0):,} | {work.get('weights', 0):,} | "
                f"{work.get('macs', 0) / 1e9:,.1f} | {work.get('note', '')} |")
        lines.append("")
    lines.append("| budget | step | width | limit | measured | met |")
    lines.append("|---|---|---|---|---|---|")
    for b in report["budgets"]:
        if b["budget"] == "peak_rss_mb" and b["ok"]:
            continue
        met = "n/a" if b["ok"] is None else ("yes" if b["ok"] else "**NO**")
        width = "" if b["width"] is None else f"{b['width']:g}"
        lines.append(f"| {b['budget']} | {b['step']} | {width} | {b['limit']:g} | {_fmt(b['value'], 3)} | {met} |")
    worst = max((b for b in report["budgets"] if b["budget"] == "peak_rss_mb" and b["value"] is not None),
                key=lambda b: b["value"], default=None)
    if worst:
        lines.append(f"| peak_rss_mb (largest) | {worst['step']} | {worst['width']:g} | {worst['limit']:g} | "
                     f"{_fmt(worst['value'], 0)} | {'yes' if worst['ok'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def summary(report: dict) -> dict:
    out = {}
    for key, record in report["widths"].items():
        steps = {n: s for n, s in record["steps"].items() if s.get("ok")}
        entry = {}
        if "sweep_vs_naive" in steps:
            entry["sweep_over_naive"] = steps["sweep_vs_naive"]["extra"]["ratio"]
            entry["sweep_over_naive_macs"] = steps["sweep_vs_naive"]["extra"]["mac_ratio"]
        if "grasp" in steps and "snip" in steps:
            entry["grasp_over_snip"] = (steps["grasp"]["phases"]["scores"]["wall_s"]
                                        / steps["snip"]["phases"]["scores"]["wall_s"])
        if "channel_pruning" in steps:
            entry["channel_pruning_s"] = steps["channel_pruning"]["wall_s"]
        if "channel_speedup" in steps:
            extra = steps["channel_speedup"]["extra"]
            entry |= {k: extra[k] for k in ("speedup", "mac_reduction", "speedup_over_mac_reduction")}
        out[key] = entry
    return out


# --- main -----------------------------------------------------------------------------------------


def build_parser(steps: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--widths", type=float, nargs="+", default=[1.0])
    p.add_argument("--steps", nargs="+", choices=steps, default=steps, metavar="STEP",
                   help=f"subset of: {', '.join(steps)}")
    p.add_argument("--data", choices=("auto", "cifar10", "digits"), default="auto")
    p.add_argument("--data-dir", default=None, help=f"CIFAR-10 copy (default ${SUBSET_ENV} or {DEFAULT_SUBSET})")
    p.add_argument("--isolation", choices=("process", "none"), default="process")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown and plot")
    p.add_argument("--name", default=None, help="file name stem (default bench, or growth with --growth)")
    p.add_argument("--growth", action="store_true", help="fit time against MACs over the widths and plot it")
    p.add_argument("--merge", nargs="*", default=[], help="earlier result JSONs whose widths join the growth fit")
    p.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budget-widths", type=float, nargs="*", default=[1.0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, here the cores)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (exports, logs)")
    g = p.add_argument_group("sizes")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--sweep-images", type=int, default=512)
    g.add_argument("--slice-images", type=int, default=64)
    g.add_argument("--calibration-per-class", type=int, default=10)
    g.add_argument("--calibration-chunks", type=int, default=2)
    g.add_argument("--channel-per-class", type=int, default=125)
    g.add_argument("--channel-samples", type=int, default=5000)
    g.add_argument("--channel-positions", type=int, default=10)
    g.add_argument("--channel-ratio", type=float, default=None,
                   help="one keep ratio for every conv (default: configs/cifar10/channel.yaml's per-conv ratios)")
    g.add_argument("--train-steps", type=int, default=10)
    g.add_argument("--profile-batches", type=int, default=10)
    g.add_argument("--task0-batch-size", type=int, default=256)
    g.add_argument("--task0-train-batches", type=int, default=None)
    g.add_argument("--speedup-rounds", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        p = argparse.ArgumentParser()
        p.add_argument("--worker")
        p.add_argument("--settings")
        p.add_argument("--result")
        a = p.parse_args(argv)
        return run_worker(a.worker, a.settings, a.result)

    from benchmarks import growth
    from benchmarks.measure import hwm_mb
    from benchmarks.steps import STEPS, Settings, channel_ratios_from_config

    steps = list(STEPS)
    args = build_parser(steps).parse_args(argv)
    budgets = parse_budgets(args.budget, steps)
    started = time.perf_counter()
    load_start = list(os.getloadavg())

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    threads = args.threads or torch.get_num_threads()
    dataset, data_dir, data_note = resolve_data(args.data, args.data_dir)
    out = Path(args.out)
    name = args.name or ("growth" if args.growth else "bench")
    work = Path(tempfile.mkdtemp(prefix="lightning-prune-bench-"))
    ratios = args.channel_ratio if args.channel_ratio is not None else channel_ratios_from_config()
    report = {
        "benchmark": "lightning_prune bench (benchmarks/bench.py)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench " + " ".join(argv),
        "machine": machine(args.device, threads),
        "load_average_start": [round(v, 2) for v in load_start],
        "data": {"dataset": dataset, "path": data_dir or None, "note": data_note},
        "isolation": args.isolation,
        "memory_method": MEMORY_METHOD[args.isolation] + ("; CUDA: torch.cuda.max_memory_allocated per phase"
                                                           if args.device == "cuda" else ""),
        "settings": None,
        "widths": {},
    }
    print(f"bench: {args.device}, {threads} threads, {dataset} ({data_note}), widths {args.widths}, "
          f"load average {load_start[0]:.2f}", flush=True)
    num_classes = 10
    for width in args.widths:
        settings = Settings(
            device=args.device, width=width, dataset=dataset, data_dir=data_dir, threads=threads,
            batch_size=args.batch_size, sweep_images=args.sweep_images, slice_images=args.slice_images,
            calibration_per_class=args.calibration_per_class, calibration_chunks=args.calibration_chunks,
            channel_per_class=args.channel_per_class, channel_samples=args.channel_samples,
            channel_positions=args.channel_positions, channel_ratios=ratios, train_steps=args.train_steps,
            profile_batches=args.profile_batches, task0_batch_size=args.task0_batch_size,
            task0_train_batches=args.task0_train_batches, speedup_rounds=args.speedup_rounds, work_dir=str(work),
        )
        report["settings"] = {k: v for k, v in asdict(settings).items() if k not in ("width", "work_dir")}
        record = width_info(width, num_classes) | {"steps": {}}
        report["widths"][f"{width:g}"] = record
        for step in args.steps:
            load = round(os.getloadavg()[0], 2)
            result = in_subprocess(step, settings, work) if args.isolation == "process" else in_process(step, settings)
            result["load_average_1min_before"] = load
            record["steps"][step] = result
            status = (f"{result['wall_s']:.2f} s, peak RSS {result.get('step_peak_rss_mb') or 0:.0f} MB"
                      if result["ok"] else f"FAILED: {result['error']}")
            print(f"  width {width:g} {step:<18} {status}", flush=True)
    report["total_wall_s"] = time.perf_counter() - started
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report["parent_peak_rss_mb"] = hwm_mb()
    report["budgets"] = check_budgets(report, budgets, args.budget_widths)
    report["summary"] = summary(report)
    failed_steps = [f"{n}@{k}" for k, r in report["widths"].items() for n, s in r["steps"].items() if not s["ok"]]
    exceeded = [b for b in report["budgets"] if b["ok"] is False]
    report["ok"] = not failed_steps and not exceeded

    if args.growth:
        merged = {}
        for path in args.merge:
            if Path(path).is_file():
                earlier = json.loads(Path(path).read_text())
                for key, record in earlier["widths"].items():
                    merged.setdefault(key, record | {"from": str(path)})
        widths = merged | report["widths"]
        fits = growth.fit(widths)
        full = widths.get("1") or None
        full_macs = width_info(1.0, num_classes)["macs"]
        basis = full or max(widths.values(), key=lambda r: r["macs"])
        projection = growth.project(basis, None if full else fits, None if full else full_macs)
        report["growth"] = {
            "widths": sorted(float(k) for k in widths), "merged_from": args.merge, "fits": fits,
            "projection_50k": {"width": 1.0, "from": "measured at width 1" if full else "power-law fit",
                               "steps": projection,
                               "dominant": max(projection, key=lambda n: projection[n]["seconds"])
                               if projection else None},
        }
        plot_path = growth.plot(fits, out / f"{name}-{args.device}.png",
                                f"Step time against model MACs ({report['machine']['kind']}, "
                                f"{threads} threads, {dataset})")
        report["growth"]["plot"] = str(plot_path.relative_to(REPO) if plot_path.is_relative_to(REPO) else plot_path)

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}-{args.device}.json"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    table = markdown(report)
    (out / f"{name}-{args.device}.md").write_text(table)
    print("\n" + table)
    print(f"results: {json_path}  (total {report['total_wall_s']:.0f} s)")
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work}")
    for name_ in failed_steps:
        print(f"STEP FAILED: {name_}", file=sys.stderr)
    for b in exceeded:
        where = b["step"] if b["width"] is None else f"{b['step']} (width {b['width']:g})"
        print(f"BUDGET EXCEEDED: {where}: {b['budget']} {b['value']:.3f} > {b['limit']:g}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
