"""The benchmark steps: each builds what it needs (untimed), then runs one algorithm inside
``meter.phase(...)`` and returns the work it did.

Every step calls the project's own functions (``lightning_prune.pruning`` / ``profiling``); none
re-implements an algorithm. Steps that need the channel-pruned network read it from the run's work
folder when the ``channel_pruning`` step has written it there, and prune (untimed) otherwise.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.measure import Meter, layer_macs, suffix_macs
from benchmarks.naive_sweep import naive_sensitivity_scan
from lightning_prune.artifacts import export_sparse
from lightning_prune.data import NUM_CLASSES, ImageDataModule
from lightning_prune.models import VGG, scaled_channels, vgg16_bn
from lightning_prune.profiling import ProfileSettings, evaluate, profile_model
from lightning_prune.profiling.profile import take_batches
from lightning_prune.profiling.runtime import measure_latency
from lightning_prune.profiling.static import count_macs
from lightning_prune.pruning.channel import prune_channels
from lightning_prune.pruning.layers import count_parameters, layer_table, prunable_modules
from lightning_prune.pruning.saliency import grasp_scores, masks_from_scores, snip_scores, split_batch
from lightning_prune.pruning.sensitivity import DEFAULT_SPARSITIES, sensitivity_scan
from lightning_prune.pruning.unstructured import apply_magnitude_pruning

REPO = Path(__file__).resolve().parent.parent
# configs/cifar10/channel.yaml composes configs/tasks/channel.yaml, which holds the ratios
CHANNEL_CONFIGS = (REPO / "configs" / "tasks" / "channel.yaml", REPO / "configs" / "cifar10" / "channel.yaml")
FALLBACK_RATIO = 0.5  # the keep ratio used when the config cannot be read
_DATA: dict[tuple, ImageDataModule] = {}


@dataclass
class Settings:
    """Everything a step needs; written to JSON for the worker processes."""

    device: str = "cpu"
    width: float = 1.0
    dataset: str = "cifar10"
    data_dir: str = ""
    threads: int = 2
    seed: int = 0
    batch_size: int = 128  # training steps, profiles, sweep batches
    sweep_images: int = 512
    slice_images: int = 64  # cached and naive sweep side by side
    calibration_per_class: int = 10  # GraSP / SNIP: 100 images for 10 classes
    calibration_chunks: int = 2
    channel_per_class: int = 125  # channel pruning: 1,250 images, as configs/cifar10/channel.yaml
    channel_samples: int = 5000
    channel_positions: int = 10
    channel_ratios: dict[str, float] | float = FALLBACK_RATIO
    sparsity: float = 0.9  # magnitude masks: every conv and linear layer
    train_steps: int = 10
    profile_batches: int = 10
    warmup_batches: int = 2
    energy_batches: int = 10
    task0_batch_size: int = 256  # configs/cifar10/baseline.yaml
    task0_train_batches: int | None = None  # None: all training images, as the baseline config
    speedup_rounds: int = 3
    work_dir: str = ""
    levels: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))


def _find_ratios(node) -> dict | None:
    """``init_args.ratios`` of the first ``ChannelPruning`` callback anywhere in a parsed config."""
    if isinstance(node, dict):
        if str(node.get("class_path", "")).endswith("ChannelPruning"):
            return (node.get("init_args") or {}).get("ratios")
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_ratios(child)
        if found is not None:
            return found
    return None


def channel_ratios_from_config(paths: tuple[Path, ...] = CHANNEL_CONFIGS) -> dict[str, float] | float:
    """The per-conv keep ratios of the CIFAR-10 channel config (0.5 if unreadable)."""
    import yaml

    for path in paths:
        try:
            ratios = _find_ratios(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(ratios, dict):
            return {str(k): float(v) for k, v in ratios.items()}
        if isinstance(ratios, (int, float)):
            return float(ratios)
    return FALLBACK_RATIO


class Context:
    """Lazily built model and data for one (step, width)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.device = torch.device(settings.device)

    # --- model ----------------------------------------------------------------------------------

    @property
    def channels(self) -> list[int]:
        return scaled_channels(self.s.width)

    def model(self) -> VGG:
        torch.manual_seed(self.s.seed)
        return vgg16_bn(self.num_classes, self.channels).to(self.device).eval()

    def masked_model(self) -> VGG:
        model = self.model()
        apply_magnitude_pruning(model, dict.fromkeys(prunable_modules(model), self.s.sparsity))
        return model

    def channel_model(self) -> VGG:
        """The channel-pruned network: from the work folder, else pruned here (untimed)."""
        path = Path(self.s.work_dir) / f"channel-{self.s.width:g}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = vgg16_bn(self.num_classes, saved["channels"])
            model.load_state_dict(saved["state_dict"])
            return model.to(self.device).eval()
        narrow, _ = prune_channels(self.model(), self.channel_images(), self.s.channel_ratios, self.s.channel_samples,
                                   self.s.channel_positions, self.s.seed)
        return narrow.eval()

    # --- data -----------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.s.dataset]

    def dm(self, batch_size: int | None = None, val_size: int | None = None) -> ImageDataModule:
        """The data module, set up once per process (steps run in one process share it)."""
        key = (self.s.dataset, self.s.data_dir, batch_size or self.s.batch_size,
               self.s.sweep_images if val_size is None else val_size, self.s.seed)
        if key not in _DATA:
            dm = ImageDataModule(
                dataset=key[0], data_dir=key[1] or "data", batch_size=key[2], num_workers=0, download=False,
                verify_checksums=False, val_size=key[3], split_seed=key[4],
            )
            dm.setup()
            _DATA[key] = dm
        return _DATA[key]

    def sweep_batches(self, images: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``images`` validation images (eval transforms) in batches of ``batch_size``."""
        out, seen = [], 0
        for x, y in self.dm().val_dataloader():
            x, y = x[: images - seen], y[: images - seen]
            out.append((x, y))
            seen += len(y)
            if seen >= images:
                break
        return out

    def calibration(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(self.s.seed)
        return self.dm().calibration_batch(per_class, seed=self.s.seed)

    def channel_images(self) -> torch.Tensor:
        return self.calibration(self.s.channel_per_class)[0].to(self.device)

    def test_batches(self, count: int) -> list[torch.Tensor]:
        return take_batches(self.dm().test_dataloader(), count, self.device)

    def train_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(self.s.seed)
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        while len(out) < count:
            for x, y in self.dm().train_dataloader():
                out.append((x.to(self.device), y.to(self.device)))
                if len(out) == count:
                    break
        return out

    # --- figures --------------------------------------------------------------------------------

    def forward_macs(self, model: nn.Module) -> int:
        """Conv and linear MACs of one image through ``model``."""
        return sum(layer_macs(model).values())

    def settings_profile(self) -> ProfileSettings:
        return ProfileSettings(self.s.profile_batches, self.s.warmup_batches, self.s.energy_batches)


def _prunable_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_modules(model).values())


def _warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """One untimed forward pass: first-call allocations and oneDNN primitive creation."""
    with torch.no_grad():
        model.eval()(x.to(next(model.parameters()).device))


# --- steps ----------------------------------------------------------------------------------------


def sensitivity_sweep(ctx: Context, meter: Meter) -> dict:
    model = ctx.model()
    batches = ctx.sweep_batches(ctx.s.sweep_images)
    _warm_up(model, batches[0][0])
    with meter.phase("sweep"):
        curves = sensitivity_scan(model, batches, ctx.s.levels)
    images = sum(len(y) for _, y in batches)
    per_layer = layer_macs(model)
    levels = sum(s > 0 for s in ctx.s.levels)
    macs = images * (sum(per_layer.values()) + levels * sum(suffix_macs(per_layer).values()))
    return {
        "work": {"images": images, "weights": _prunable_weights(model), "macs": macs, "layers": len(curves),
                 "levels": len(ctx.s.levels), "note": "forward MACs: one full pass + each layer's suffix per level"},
        "extra": {"unpruned_top1": next(iter(curves.values()))[0]},
    }


def sweep_vs_naive(ctx: Context, meter: Meter) -> dict:
    model = ctx.model()
    batches = ctx.sweep_batches(ctx.s.slice_images)
    _warm_up(model, batches[0][0])
    with meter.phase("cached"):
        cached = sensitivity_scan(model, batches, ctx.s.levels)
    with meter.phase("naive"):
        naive = naive_sensitivity_scan(model, batches, ctx.s.levels)
    images = sum(len(y) for _, y in batches)
    per_layer = layer_macs(model)
    levels = sum(s > 0 for s in ctx.s.levels)
    full = sum(per_layer.values())
    cached_macs = images * (full + levels * sum(suffix_macs(per_layer).values()))
    naive_macs = images * full * len(per_layer) * len(ctx.s.levels)
    phases = meter.phases
    return {
        "work": {"images": images, "weights": _prunable_weights(model), "macs": cached_macs + naive_macs,
                 "note": "both sweeps on the same slice"},
        "extra": {
            "cached_s": phases["cached"].wall_s, "naive_s": phases["naive"].wall_s,
            "ratio": phases["cached"].wall_s / phases["naive"].wall_s,
            "cpu_ratio": phases["cached"].cpu_s / max(phases["naive"].cpu_s, 1e-9),
            "mac_ratio": cached_macs / naive_macs, "identical": cached == naive,
        },
    }


def _saliency(ctx: Context, meter: Meter, method: str) -> dict:
    model = ctx.model()
    batch = ctx.calibration(ctx.s.calibration_per_class)
    batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in split_batch(batch, ctx.s.calibration_chunks)]
    score = (lambda: grasp_scores(model, batches)) if method == "grasp" else (lambda: snip_scores(model, batches))
    start = time.perf_counter()
    score()  # untimed: the first call also creates the backward (and double-backward) kernels
    cold = time.perf_counter() - start
    with meter.phase("scores"):
        scores = score()
    with meter.phase("masks"):
        masks = masks_from_scores(scores, ctx.s.sparsity, "highest" if method == "grasp" else "lowest")
    images = len(batch[1])
    kept = sum(int(m.sum()) for m in masks.values())
    passes = ("1 forward + 1 backward" if method == "snip"
              else "1 forward + 1 backward (graph kept) + 1 double backward")
    return {
        "work": {"images": images, "weights": _prunable_weights(model), "macs": images * ctx.forward_macs(model),
                 "note": f"forward MACs of the calibration images; {passes} per chunk"},
        "extra": {"chunks": len(batches), "kept_weights": kept, "first_call_s": cold},
    }


def snip(ctx: Context, meter: Meter) -> dict:
    return _saliency(ctx, meter, "snip")


def grasp(ctx: Context, meter: Meter) -> dict:
    return _saliency(ctx, meter, "grasp")


def magnitude_coo(ctx: Context, meter: Meter) -> dict:
    model = ctx.model()
    names = list(prunable_modules(model))
    out = Path(ctx.s.work_dir) / f"coo-{ctx.s.width:g}"
    with meter.phase("masks"):
        apply_magnitude_pruning(model, dict.fromkeys(names, ctx.s.sparsity))
    with meter.phase("export_verify"):
        export = export_sparse(model, out)
    if export.total_mismatches:
        raise AssertionError(f"COO indices differ from the masks in {export.total_mismatches} places")
    _, nonzero = count_parameters(export.permanent)
    return {
        "work": {"images": 0, "weights": _prunable_weights(model), "macs": 0,
                 "note": f"l1_unstructured at {ctx.s.sparsity:g} on every conv/linear layer; "
                         "COO saved, reloaded, checked"},
        "extra": {"coo_mismatches": export.total_mismatches, "nonzero_params": nonzero,
                  "coo_file_mb": os.path.getsize(export.sparse_path) / 1e6,
                  "masks_file_mb": os.path.getsize(export.masks_path) / 1e6},
    }


def _profile(ctx: Context, meter: Meter, variant: str) -> dict:
    batches = ctx.test_batches(ctx.s.profile_batches)
    macs_model = None
    if variant == "dense":
        model = ctx.model()
    elif variant == "masked":
        model = ctx.masked_model()
    else:
        export = export_sparse(ctx.masked_model(), Path(ctx.s.work_dir) / f"profile-{variant}-{ctx.s.width:g}")
        model = export.sparse if variant == "coo" else export.densified
        macs_model = export.permanent if variant == "coo" else None
    with meter.phase("profile"):
        profile = profile_model(model, batches, ctx.settings_profile(), macs_model=macs_model)
    settings = ctx.settings_profile()
    passes = settings.warmup_batches + settings.latency_batches + 4  # memory and operators: 2 passes each
    if profile["energy_mj"] and any(v is not None for v in profile["energy_mj"].values()):
        passes += settings.energy_batches
    images = passes * len(batches[0])
    return {
        "work": {"images": images, "weights": _prunable_weights(model), "macs": images * profile["macs"],
                 "note": f"{passes} forward passes of {len(batches[0])} test images"},
        "extra": {k: profile[k] for k in ("model_size_mb", "params", "nonzero_params", "sparsity", "macs", "latency_ms",
                                          "latency_ms_std", "batch_size", "peak_memory_mb", "avg_memory_mb",
                                          "memory_device", "energy_mj", "energy_note")}
        | {"top_operators": [op["name"] for op in profile["operators"][:4]]},
    }


def profile_dense(ctx: Context, meter: Meter) -> dict:
    return _profile(ctx, meter, "dense")


def profile_masked(ctx: Context, meter: Meter) -> dict:
    return _profile(ctx, meter, "masked")


def profile_coo(ctx: Context, meter: Meter) -> dict:
    return _profile(ctx, meter, "coo")


def profile_densified(ctx: Context, meter: Meter) -> dict:
    return _profile(ctx, meter, "densified")


def channel_pruning(ctx: Context, meter: Meter) -> dict:
    model = ctx.model()
    images = ctx.channel_images()
    with meter.phase("prune"):
        narrow, reports = prune_channels(model, images, ctx.s.channel_ratios, ctx.s.channel_samples,
                                         ctx.s.channel_positions, ctx.s.seed)
    path = Path(ctx.s.work_dir) / f"channel-{ctx.s.width:g}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"channels": narrow.channels, "state_dict": {k: v.cpu() for k, v in narrow.state_dict().items()}}, path)
    dense_params, _ = count_parameters(model)
    pruned_params, _ = count_parameters(narrow)
    dense_macs, pruned_macs = ctx.forward_macs(model), ctx.forward_macs(narrow)
    return {
        "work": {"images": len(images), "weights": sum(c.weight.numel() for _, c, _ in model.conv_layers()),
                 "macs": len(images) * (dense_macs + pruned_macs),
                 "rows": sum(r.samples for r in reports),
                 "note": "calibration images through the dense and the narrowing network; "
                         "LASSO + least squares per conv"},
        "extra": {
            "ratios": ctx.s.channel_ratios, "channels": narrow.channels, "params_dense": dense_params,
            "params_pruned": pruned_params, "macs_dense": dense_macs, "macs_pruned": pruned_macs,
            "lasso_fallbacks": sum(r.selection == "fallback" for r in reports),
            "selection_s": sum(r.seconds for r in reports),
        },
    }


def _train(ctx: Context, meter: Meter, build: Callable[[], nn.Module]) -> dict:
    model = build().train()
    params = [p for p in model.parameters() if p.requires_grad]
    # ImageClassifier's recipe (SGD, nesterov momentum 0.9, weight decay 5e-4), fine-tuning rate
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    batches = ctx.train_batches(ctx.s.train_steps + 1)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step(*batches[0])  # warm-up, untimed
    with meter.phase("steps"):
        losses = [step(x, y) for x, y in batches[1:]]
    images = sum(len(y) for _, y in batches[1:])
    return {
        "work": {"images": images, "weights": sum(p.numel() for p in params),
                 "macs": images * ctx.forward_macs(model),
                 "note": f"{len(losses)} SGD steps of {len(batches[1][1])} images (forward MACs; backward about 2x)"},
        "extra": {"loss_first": losses[0], "loss_last": losses[-1],
                  "ms_per_step": 1e3 * meter.phases["steps"].wall_s / len(losses)},
    }


def train_dense(ctx: Context, meter: Meter) -> dict:
    return _train(ctx, meter, ctx.model)


def train_masked(ctx: Context, meter: Meter) -> dict:
    return _train(ctx, meter, ctx.masked_model)


def train_channel(ctx: Context, meter: Meter) -> dict:
    return _train(ctx, meter, ctx.channel_model)


def channel_speedup(ctx: Context, meter: Meter) -> dict:
    dense, narrow = ctx.model(), ctx.channel_model()
    batches = ctx.test_batches(ctx.s.profile_batches)
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with meter.phase("latency"):
        for _ in range(ctx.s.speedup_rounds):  # alternated, so both see the same machine load
            for name, model in (("dense", dense), ("pruned", narrow)):
                times[name].append(measure_latency(model, batches, warmup=ctx.s.warmup_batches)[0])
    dense_ms, pruned_ms = statistics.median(times["dense"]), statistics.median(times["pruned"])
    dense_macs, pruned_macs = count_macs(dense), count_macs(narrow)
    speedup, reduction = dense_ms / pruned_ms, dense_macs / pruned_macs
    passes = 2 * ctx.s.speedup_rounds * (ctx.s.warmup_batches + len(batches))
    return {
        "work": {"images": passes * len(batches[0]), "weights": 0,
                 "macs": ctx.s.speedup_rounds * (ctx.s.warmup_batches + len(batches)) * len(batches[0])
                 * (dense_macs + pruned_macs),
                 "note": "dense and channel-pruned latency, alternated"},
        "extra": {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "batch_size": len(batches[0]),
                  "rounds_ms": times, "speedup": speedup, "macs_dense": dense_macs, "macs_pruned": pruned_macs,
                  "mac_reduction": reduction, "speedup_over_mac_reduction": speedup / reduction},
    }


def task0_profile(ctx: Context, meter: Meter) -> dict:
    """What the ``Recorder`` does after ``test`` with configs/cifar10/baseline.yaml's settings."""
    dm = ctx.dm(batch_size=ctx.s.task0_batch_size, val_size=0)
    model = ctx.model()
    _warm_up(model, next(iter(dm.test_dataloader()))[0][:8])
    with meter.phase("test_accuracy"):
        test = evaluate(model, dm.test_dataloader(), dm.num_classes, ctx.device)
    with meter.phase("train_accuracy"):
        train = evaluate(model, dm.train_eval_dataloader(), dm.num_classes, ctx.device,
                         max_batches=ctx.s.task0_train_batches)
    with meter.phase("profile"):
        batches = take_batches(dm.test_dataloader(), ctx.s.profile_batches, ctx.device)
        profile = profile_model(model, batches, ctx.settings_profile())
        layers = layer_table(model)
    n_test = len(dm.test_dataloader().dataset)
    n_train = len(dm.train_eval_dataloader().dataset)
    if ctx.s.task0_train_batches is not None:
        n_train = min(n_train, ctx.s.task0_train_batches * ctx.s.task0_batch_size)
    settings = ctx.settings_profile()
    passes = settings.warmup_batches + settings.latency_batches + 4
    images = n_test + n_train + passes * len(batches[0])
    return {
        "work": {"images": images, "weights": _prunable_weights(model), "macs": images * profile["macs"],
                 "eval_images": n_test + n_train,
                 "note": f"test + train accuracy ({n_test} + {n_train} images), then {passes} profiled passes"},
        "extra": {"test_top1": test[0], "train_top1": train[0], "latency_ms": profile["latency_ms"],
                  "batch_size": profile["batch_size"], "peak_memory_mb": profile["peak_memory_mb"],
                  "avg_memory_mb": profile["avg_memory_mb"], "memory_device": profile["memory_device"],
                  "energy_mj": profile["energy_mj"], "energy_note": profile["energy_note"],
                  "model_size_mb": profile["model_size_mb"], "layers": len(layers)},
    }


STEPS: dict[str, Callable[[Context, Meter], dict]] = {
    "sensitivity_sweep": sensitivity_sweep,
    "sweep_vs_naive": sweep_vs_naive,
    "snip": snip,
    "grasp": grasp,
    "magnitude_coo": magnitude_coo,
    "profile_dense": profile_dense,
    "profile_masked": profile_masked,
    "profile_coo": profile_coo,
    "profile_densified": profile_densified,
    "channel_pruning": channel_pruning,
    "train_dense": train_dense,
    "train_masked": train_masked,
    "train_channel": train_channel,
    "channel_speedup": channel_speedup,
    "task0_profile": task0_profile,
}

# Steps whose cost grows with the number of images in the data set (the rest use fixed-size
# calibration sets or a fixed number of batches): how many of a CIFAR-10-sized run's images each
# would process, for the projection to 50,000 training images.
PER_IMAGE_STEPS = {
    "sensitivity_sweep": "sweep over all 50,000 training images",
    "train_dense": "one epoch of 50,000 images",
    "train_masked": "one epoch of 50,000 images",
    "train_channel": "one epoch of 50,000 images",
    "task0_profile": "accuracy on 10,000 test + 50,000 training images",
}


def run_step(name: str, settings: Settings, meter: Meter) -> dict:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    ctx = Context(settings)
    result = STEPS[name](ctx, meter)
    result["settings"] = {k: v for k, v in asdict(settings).items() if k in ("width", "device", "dataset")}
    return copy.deepcopy(result)
