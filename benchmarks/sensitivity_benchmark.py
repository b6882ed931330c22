"""Cached sensitivity sweep vs the naive loop (prune, re-evaluate the whole network), side by side.

    .venv/bin/python benchmarks/sensitivity_benchmark.py --width 0.25 --batches 2 --batch-size 64

Both sweeps run on the same model and the same batches; the script checks that the accuracies are
identical and prints the time ratio (target: cached / naive <= 0.6). Without ``--checkpoint`` the
model is randomly initialised and each image's label is its own unpruned prediction, so top-1
starts at 100 % and every accuracy drop is visible.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_prune.models import VGG, scaled_channels
from lightning_prune.models.pretrained import load_weights, read_state_dict
from lightning_prune.pruning.sensitivity import DEFAULT_SPARSITIES, naive_sensitivity_scan, sensitivity_scan


def batches_for(model: VGG, count: int, batch_size: int, labelled: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Digits validation images (offline); self-labelled by ``model`` unless ``labelled``."""
    from lightning_prune.data import ImageDataModule

    dm = ImageDataModule("digits", batch_size=batch_size, val_size=count * batch_size)
    out = []
    with torch.no_grad():
        for i, (x, y) in enumerate(dm.val_dataloader()):
            if i == count:
                break
            out.append((x, y if labelled else model.eval()(x).argmax(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25, help="VGG16 width multiplier")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each; medians are reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="state dict or Lightning checkpoint of a digits model")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = VGG(10, scaled_channels(args.width)).eval()
    if args.checkpoint:
        load_weights(model, read_state_dict(args.checkpoint), args.checkpoint)
    data = batches_for(model, args.batches, args.batch_size, labelled=bool(args.checkpoint))
    levels = DEFAULT_SPARSITIES
    with torch.no_grad():
        model(data[0][0])  # warm-up: first-call allocations are not the sweep's cost

    times: dict[str, list[float]] = {"cached": [], "naive": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("cached", sensitivity_scan), ("naive", naive_sensitivity_scan)):
            start = time.perf_counter()
            results[name] = fn(model, data, levels)
            times[name].append(time.perf_counter() - start)

    cached, naive = statistics.median(times["cached"]), statistics.median(times["naive"])
    same = results["cached"] == results["naive"]
    images = sum(len(y) for _, y in data)
    print(f"VGG16-BN width {args.width} ({sum(p.numel() for p in model.parameters()):,} params), "
          f"{images} images in {len(data)} batches, {len(results['cached'])} layers x {len(levels)} levels, "
          f"{args.threads} threads, {args.repeats} repeat(s)")
    print(f"cached sweep: {cached:.2f} s   naive loop: {naive:.2f} s   ratio cached/naive: {cached / naive:.3f}")
    print(f"identical accuracies: {same}")
    for layer, accs in results["cached"].items():
        print(f"  {layer:<13} " + " ".join(f"{a:6.2f}" for a in accs))
    if not same:
        raise SystemExit("accuracies differ between the cached sweep and the naive loop")


if __name__ == "__main__":
    main()
