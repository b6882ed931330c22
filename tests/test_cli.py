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
from tests.helpers import TINY_CLASSIFIER, last_checkpoint, run_cli_expecting_error, tiny_cli_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_BASELINE = str(CONFIGS / "demo" / "baseline.yaml")


@pytest.mark.slow
def test_fit_then_test_writes_a_valid_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_cli_args(tmp_path, "tiny_baseline")
    assert main(["fit", "--config", DEMO_BASELINE, "--trainer.max_epochs=1", *args]) == 0
    ckpt = last_checkpoint(tmp_path, "tiny_baseline")
    assert ckpt.is_file()
    assert main(["test", "--config", DEMO_BASELINE, f"--ckpt_path={ckpt}", *args]) == 0
    found = sorted((tmp_path / "logs" / "tiny_baseline").glob("version_*/results.json"))
    assert [p.parent.name for p in found] == ["version_1"]  # the test is a run of its own, after the fit
    results = json.loads(found[0].read_text())
    validate(results)
    entry = results["models"][0]
    assert results["task"] == "baseline" and results["dataset"] == "digits" and entry["variant"] == "dense"
    assert entry["checkpoint"] == str(ckpt) and results["sources"]["ckpt_path"] == str(ckpt)
    assert results["run"]["experiment"] == "tiny_baseline" and results["run"]["version"] == 1
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


EXPERIMENTS = sorted(p for d in ("demo", "cifar10", "cifar100", "cifar10-subset") for p in (CONFIGS / d).glob("*.yaml"))


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_parses(config, capsys):
    """Each experiment file, composed with what it builds on, names existing classes and valid options."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    dataset = {"demo": "digits", "cifar10-subset": "cifar10"}.get(config.parent.name, config.parent.name)
    assert printed["data"]["dataset"] == dataset
    prefix = {"demo": "digits", "cifar10-subset": "cifar10subset"}.get(config.parent.name, config.parent.name)
    assert printed["run"]["experiment"] == f"{prefix}_{config.stem}"
    assert not printed["checkpoint"]["save_last"]  # every fit writes last.ckpt itself (LastCheckpoint)
    task = "baseline" if config.stem in ("dense", "baseline_ft") else config.stem  # unpruned references
    method = (printed.get("prune") or {}).get("init_args", {}).get("method")
    assert (printed["prune"] is None) == (task == "baseline") and method in (None, task)


def test_configs_are_one_level_deep():
    """An experiment names a dataset file and a task file (which name only base.yaml), never another experiment."""
    for config in EXPERIMENTS:
        defaults = yaml.safe_load(config.read_text())["defaults"]
        groups = [Path(d).parent.name for d in defaults]
        assert groups in (["datasets"], ["datasets", "tasks"]), (config, defaults)
    for group in ("datasets", "tasks"):
        for path in (CONFIGS / group).glob("*.yaml"):
            assert yaml.safe_load(path.read_text()).get("defaults") in (None, ["../base.yaml"]), path


def _composed(config: Path, capsys) -> dict:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("folder", ["demo", "cifar10", "cifar100", "cifar10-subset"])
def test_the_1b_methods_of_a_set_share_schedule_and_budget(folder, capsys):
    """GraSP, SNIP and |GraSP| differ in their criterion alone, so their comparison is fair."""
    found = [_composed(p, capsys) for p in sorted((CONFIGS / folder).glob("*.yaml"))
             if p.stem in ("grasp", "snip", "grasp_abs")]
    for printed in found:
        printed["prune"]["init_args"].pop("method")
        printed["prune"]["init_args"].pop("temperature")  # SNIP has none
        for key in ("run", "config", "defaults"):
            printed.pop(key, None)
    assert len(found) >= 2 and all(f == found[0] for f in found)
