"""Time and peak memory of LASSO channel pruning on the full-width VGG16-BN (fine-tuning excluded).

Target: all 12 prunable convs, 5,000 sampled positions per layer, <= 2 minutes and <= 4 GB on
2 CPU cores. Other processes on the same cores stretch the wall time: the CPU seconds and the
load average are printed too. Weights are random (timing does not depend on them); inputs are the digits images
(offline) or Gaussian noise.

    .venv/bin/python benchmarks/channel_benchmark.py                 # digits inputs, keep ratio 0.5
    .venv/bin/python benchmarks/channel_benchmark.py --inputs random --ratio 0.3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from lightning_prune.models import VGG
from lightning_prune.pruning.channel import prune_channels
from lightning_prune.pruning.layers import count_parameters


def rss_mb() -> float:
    """Current resident memory of this process (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def digits_inputs(count: int) -> torch.Tensor:
    """``count`` normalised 32x32 digits images (repeated if more are asked than exist)."""
    from lightning_prune.data import digits_images

    images, _ = digits_images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x.repeat(-(-count // len(x)), 1, 1, 1)[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1250, help="calibration images (>= samples/4 for 2x2 maps)")
    parser.add_argument("--samples", type=int, default=5000, help="sampled positions (rows) per layer")
    parser.add_argument("--positions", type=int, default=10, help="at most this many positions per image")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of each conv's input channels kept")
    parser.add_argument("--inputs", choices=("digits", "random"), default="digits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VGG(num_classes=10).eval()
    images = digits_inputs(args.images) if args.inputs == "digits" else torch.randn(args.images, 3, 32, 32)
    before_mb = rss_mb()
    load_before = os.getloadavg()[0]
    cpu_start = time.process_time()
    start = time.perf_counter()
    pruned, reports = prune_channels(model, images, args.ratio, samples=args.samples, positions=args.positions,
                                     progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    dense_params, _ = count_parameters(model)
    pruned_params, _ = count_parameters(pruned)
    figures = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(before_mb, 1),
        "threads": torch.get_num_threads(),
        "images": args.images,
        "samples_per_layer": [r.samples for r in reports],
        "layers_pruned": sum(r.selection != "none" for r in reports),
        "lasso_fallbacks": sum(r.selection == "fallback" for r in reports),
        "channels": pruned.channels,
        "params_dense": dense_params,
        "params_pruned": pruned_params,
        "error_pruned": [round(r.error_pruned, 3) for r in reports],
        "error_reconstructed": [round(r.error_reconstructed, 3) for r in reports],
        "layer_seconds": [round(r.seconds, 1) for r in reports],
        "forward_seconds": round(seconds - sum(r.seconds for r in reports), 1),
    }
    print(json.dumps(figures, indent=2))
    ok = seconds <= 120 and figures["peak_rss_mb"] <= 4000
    print(f"{'within' if ok else 'OVER'} the target (<= 120 s, <= 4000 MB): {seconds:.1f} s, "
          f"peak RSS {figures['peak_rss_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
