"""Test helpers: tiny CLI runs, their folders, and one-line error checks (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from lightning_prune.models import scaled_channels

TINY_WIDTH = 1 / 16  # 4..32 channels
TINY_CLASSIFIER = 32
SUBSET_ENV = "LIGHTNING_PRUNE_CIFAR10_SUBSET"


def run_cli_expecting_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a usage error (exit 2, from jsonargparse or ConfigError); return stderr."""
    from lightning_prune.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    return err


def tiny_cli_args(tmp_path: Path, experiment: str = "tiny") -> list[str]:
    """CLI overrides that turn any config into a seconds-long run on digits."""
    return [
        "--data.dataset=digits",
        "--data.batch_size=32",
        "--data.val_size=64",
        "--data.num_workers=0",
        f"--model.channels=[{','.join(map(str, scaled_channels(TINY_WIDTH)))}]",
        f"--model.classifier_width={TINY_CLASSIFIER}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        f"--run.experiment={experiment}",
        f"--run.logs={tmp_path / 'logs'}",
    ]


def last_checkpoint(tmp_path: Path, experiment: str = "tiny", version: int = 0) -> Path:
    """Where a run of ``tiny_cli_args`` keeps its last checkpoint."""
    return tmp_path / "logs" / experiment / f"version_{version}" / "checkpoints" / "last.ckpt"


def fit_head(model, images, labels, steps: int = 300) -> None:
    """BatchNorm statistics of ``images`` (one cumulative pass), then the classifier fitted on the frozen features:
    a model with real accuracy in seconds."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.reset_running_stats()
                bn.momentum = None
        model.train()
        model.features(images)
        model.eval()
        features = torch.flatten(model.features(images), 1)
    head = torch.optim.Adam(model.classifier.parameters(), lr=0.01)
    for _ in range(steps):
        head.zero_grad()
        F.cross_entropy(model.classifier(features), labels).backward()
        head.step()
    model.eval()


def fake_cifar(root: Path) -> Path:
    """A CIFAR-10 folder in torchvision's layout with tiny batches (20 images each) and no ``batches.meta``."""
    import pickle

    import torch

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": torch.zeros(20, 3072, dtype=torch.uint8).numpy(), "labels": list(range(10)) * 2}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder
