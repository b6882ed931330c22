"""The command line: a tiny fit + test end to end, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_prune.cli import main
from lightning_prune.module import ImageClassifier
from lightning_prune.results import validate
from tests.conftest import TINY_CLASSIFIER, run_cli_expecting_error, tiny_cli_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_BASELINE = str(CONFIGS / "demo" / "baseline.yaml")


def test_fit_then_test_writes_a_valid_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_cli_args(tmp_path, "tiny_baseline")
    assert main(["fit", "--config", DEMO_BASELINE, "--trainer.max_epochs=1", *args]) == 0
    ckpt = tmp_path / "checkpoints" / "digits_baseline" / "last.ckpt"
    assert ckpt.is_file()
    assert main(["test", "--config", DEMO_BASELINE, f"--ckpt_path={ckpt}", *args]) == 0
    found = sorted((tmp_path / "logs" / "tiny_baseline").glob("version_*/results.json"))
    assert len(found) == 1
    results = json.loads(found[0].read_text())
    validate(results)
    entry = results["models"][0]
    assert results["task"] == "baseline" and results["dataset"] == "digits" and entry["variant"] == "dense"
    assert entry["checkpoint"] == str(ckpt)
    assert 0 <= entry["accuracy"]["train_top1"] <= 100 and entry["profile"]["macs"] > 0
    assert len(entry["layers"]) == 16
    assert "| dense |" in capsys.readouterr().err + found[0].with_suffix(".md").read_text()
    # The same profile is in TensorBoard, beside the training curves.
    events = EventAccumulator(str(found[0].parent))
    events.Reload()
    logged = events.Scalars("profile/dense/latency_ms")[-1].value
    assert logged == pytest.approx(entry["profile"]["latency_ms"], rel=1e-5)
    assert "profile/table/text_summary" in events.Tags()["tensors"]
    # The checkpoint rebuilds the same tiny widths on its own.
    model = ImageClassifier.load_from_checkpoint(ckpt)
    assert model.hparams.channels == [c.out_channels for _, c, _ in model.model.conv_layers()]
    assert model.model.classifier[0].out_features == TINY_CLASSIFIER


def _error(capsys, argv: list[str]) -> str:
    return run_cli_expecting_error(argv, capsys)


def test_unknown_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", DEMO_BASELINE, "--data.dataset=mnist"])
    assert "dataset" in err and "cifar10" in err and "Traceback" not in err


def test_negative_batch_size(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", DEMO_BASELINE, "--data.batch_size=-4"])
    assert "batch_size" in err and "Traceback" not in err


def test_missing_checkpoint_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["test", "--config", DEMO_BASELINE, "--ckpt_path=missing.ckpt", *tiny_cli_args(tmp_path)])
    assert err.strip() == "error: ckpt_path: no such file missing.ckpt"


def test_checkpoint_of_another_class_count(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_cli_args(tmp_path)
    other = ImageClassifier(num_classes=100, channels=[4] * 13, classifier_width=TINY_CLASSIFIER)
    ckpt = tmp_path / "c100.ckpt"
    torch.save({"state_dict": other.state_dict(), "pytorch-lightning_version": "2.6.6"}, ckpt)
    channels = "[" + ",".join(["4"] * 13) + "]"
    argv = ["test", "--config", DEMO_BASELINE, f"--ckpt_path={ckpt}", *args, f"--model.channels={channels}"]
    err = _error(capsys, argv)
    assert "ckpt_path" in err and "classifier.6" in err and "Traceback" not in err


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_parses(config, capsys):
    """Each shipped YAML names existing classes and options of the right types (nothing is instantiated)."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] in ("cifar10", "cifar100", "digits")
    assert printed["trainer"]["logger"]["init_args"]["name"]
