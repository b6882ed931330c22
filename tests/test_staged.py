"""Staged pruning: stages fire on scripted accuracies, resume at the right stage, the CLI writes results."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prune.callbacks.staged import StagedPruning
from lightning_prune.cli import main
from lightning_prune.data import ImageDataModule
from lightning_prune.module import ImageClassifier
from lightning_prune.pruning.layers import prunable_modules, weight_sparsity
from lightning_prune.pruning.unstructured import current_masks, mask_sparsity
from lightning_prune.results import validate
from tests.helpers import TINY_CLASSIFIER, run_cli_expecting_error, tiny_cli_args

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "grasp.yaml")
RISING = [0.10, 0.25, 0.30, 0.45, 0.50, 0.65, 0.70, 0.70]


class ScriptedAccuracy(ImageClassifier):
    """Validation reports ``script[epoch]`` as top-1 (a fraction, as the real metric)."""

    def __init__(self, script: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.script = script

    def validation_step(self, batch, batch_idx: int) -> None:
        acc = self.script[min(self.current_epoch, len(self.script) - 1)]
        self.log("val/top1", torch.tensor(acc), on_epoch=True, batch_size=len(batch[1]))


class MaskLog(L.Callback):
    """Keep-masks at each epoch start, after the pruning callback ran."""

    def __init__(self) -> None:
        self.masks: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.masks.append({n: m.clone().cpu() for n, m in current_masks(pl_module.model).items()})


def _fit(tmp_path, tiny_channels, script, pruning, max_epochs, ckpt_path=None):
    model = ScriptedAccuracy(script, channels=tiny_channels, classifier_width=TINY_CLASSIFIER, lr=0.01)
    data = ImageDataModule(dataset="digits", batch_size=16, val_size=32)
    log = MaskLog()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[pruning, log, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, log


def _pruning(**kwargs) -> StagedPruning:
    options = dict(target_sparsity=0.9, calibration_per_class=1, record=False)
    return StagedPruning(**{**options, **kwargs})


def _check_nested(masks: list[dict[str, torch.Tensor]]) -> None:
    """Pruned weights never return: each epoch's masks are within the previous epoch's."""
    for before, after in zip(masks, masks[1:]):
        assert all(not (after[n] & ~before[n]).any() for n in before)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "script", "epochs"),
    [
        ("grasp", RISING, [2, 4, 6]),  # val after epochs 1, 3, 5 reaches 20, 40, 60 %
        ("snip", [0.10, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70], [2, 3, 4]),  # a jump: still one stage per epoch
    ],
)
def test_stages_fire_at_the_scripted_accuracies(tmp_path, tiny_channels, method, script, epochs):
    pruning = _pruning(method=method)
    model, log = _fit(tmp_path, tiny_channels, script, pruning, max_epochs=7)
    assert [e["epoch"] for e in pruning.schedule.events] == epochs
    assert [e["reason"] for e in pruning.schedule.events] == ["accuracy"] * 3
    assert [e["sparsity"] for e in pruning.schedule.events] == pytest.approx([0.45, 0.675, 0.9], abs=1e-5)
    sparsity = [mask_sparsity(m) for m in log.masks]
    assert sparsity[epochs[0] - 1] == 0 and sparsity[epochs[0]] == pytest.approx(0.45, abs=1e-5)
    _check_nested(log.masks)
    assert weight_sparsity(model.model) >= 0.9 - 1e-5
    assert pruning.schedule.never_triggered() == []


@pytest.mark.slow
def test_fallback_epochs_and_stages_that_never_fire(tmp_path, tiny_channels):
    pruning = _pruning(method="grasp", fallback_epochs=[2, 3, None])
    with pytest.warns(UserWarning, match=r"stage 3 .* never triggered: best val top-1 10.0 %, no fallback epoch"):
        _fit(tmp_path, tiny_channels, [0.10], pruning, max_epochs=5)
    assert [(e["epoch"], e["reason"]) for e in pruning.schedule.events] == [(2, "fallback"), (3, "fallback")]


@pytest.mark.slow
def test_resume_continues_at_the_right_stage(tmp_path, tiny_channels):
    first = _pruning(method="grasp")
    _, log = _fit(tmp_path, tiny_channels, RISING, first, max_epochs=4)
    assert [e["epoch"] for e in first.schedule.events] == [2]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    stage1 = {n: m.cpu() for n, m in current_masks(ImageClassifier.load_from_checkpoint(ckpt).model).items()}
    assert mask_sparsity(stage1) == pytest.approx(0.45, abs=1e-5)

    resumed = _pruning(method="grasp")
    model, log = _fit(tmp_path, tiny_channels, RISING, resumed, max_epochs=7, ckpt_path=ckpt)
    # stage 2 fires at the first epoch after resuming: judged on the accuracy kept in the callback state
    assert [e["epoch"] for e in resumed.schedule.events] == [2, 4, 6]
    assert mask_sparsity(log.masks[0]) == pytest.approx(0.675, abs=1e-5)  # epoch 4 starts with stage 2
    _check_nested([stage1, *log.masks])
    final = current_masks(model.model)
    reloaded = ImageClassifier.load_from_checkpoint(ckpt).model
    assert all(torch.equal(current_masks(reloaded)[n].cpu(), final[n].cpu()) for n in final)
    for name, module in prunable_modules(reloaded).items():
        assert not module.weight[~final[name]].any()
    assert weight_sparsity(reloaded) >= 0.9 - 1e-5


def test_bad_schedules_name_the_list(tiny_channels):
    for kwargs, words in (
        ({"accuracy_triggers": [40, 20, 60]}, "accuracy_triggers"),
        ({"fractions": [0.5, 0.5, 1.0]}, "fractions"),
        ({"fallback_epochs": [1, 2]}, "fallback_epochs"),
    ):
        with pytest.raises(ValueError, match=words):
            StagedPruning(**kwargs).schedule.check()


@pytest.mark.slow
@pytest.mark.parametrize(("option", "words"), [
    ("--prune.method=magnitude", "prune.method: must be one of 'grasp', 'snip', 'grasp_abs', 'random', got "
                                 "'magnitude'"),
    ("--prune.target_sparsity=1.0", "prune.target_sparsity: 1.0 is not allowed"),
    ("--prune.fractions=[0.5,0.5,1.0]", "StagedPruning.fractions: fractions of target_sparsity in (0, 1], strictly"),
])
def test_bad_options_are_one_line_naming_the_option(tmp_path, monkeypatch, capsys, option, words):
    monkeypatch.chdir(tmp_path)
    err = run_cli_expecting_error(["fit", "--config", DEMO, *tiny_cli_args(tmp_path, "bad"), option], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], err[-1500:]


@pytest.mark.slow
def test_cli_fit_writes_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    groups = {
        "prune": {"class_path": "lightning_prune.callbacks.staged.StagedPruning",
                  "init_args": {"method": "grasp", "target_sparsity": 0.8, "accuracy_triggers": [20, 40, 100],
                                "fallback_epochs": [0, 1, None], "calibration_per_class": 2}},
        "profile": {"latency_batches": 1, "warmup_batches": 1, "energy_batches": 1, "train_batches": 1},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(groups))
    args = [*tiny_cli_args(tmp_path, "tiny_grasp"), "--trainer.max_epochs=3", "--data.val_size=32"]
    with pytest.warns(UserWarning, match="stage 3"):
        assert main(["fit", "--config", DEMO, "--config", str(config), *args]) == 0
    run = tmp_path / "logs" / "tiny_grasp" / "version_0"
    results = json.loads((run / "results.json").read_text())
    validate(results)
    assert results["task"] == "grasp" and results["dataset"] == "digits"
    variants = {m["variant"]: m for m in results["models"]}
    assert list(variants) == ["pruned-masked", "pruned-sparse-coo", "pruned-densified-once"]
    for entry in variants.values():
        assert entry["profile"]["sparsity"] == pytest.approx(0.6, abs=1e-4)  # 75 % of the target: stage 3 never fired
        assert len(entry["layers"]) == 16
    assert variants["pruned-sparse-coo"]["coo_mismatches"] == 0
    assert [s["epoch"] for s in results["schedule"]["stages"]] == [0, 1]
    assert len(results["notes"]) == 2 and "stage 3" in results["notes"][0]
    ckpt = Path(results["artifacts"]["checkpoint"])
    model = ImageClassifier.load_from_checkpoint(ckpt).model
    exported = torch.load(run / "masks.pt", weights_only=True)
    assert all(torch.equal(current_masks(model)[n], exported[n]) for n in exported)


def test_the_subset_triggers_are_fractions_of_what_its_dense_reference_reaches():
    """The CIFAR-10 subset's 1b triggers: 0.2 / 0.4 / 0.6 of the mean final validation top-1 of the kept
    dense reference runs (the same 20-epoch budget, never pruned), so that the stages can fire by accuracy."""
    import statistics

    import yaml

    root = Path(__file__).resolve().parents[1]
    finals = [json.loads(p.read_text())["history"][-1]["val_top1"]
              for p in (root / "docs" / "results" / "cifar10subset_dense").glob("version_*/results.json")]
    assert len(finals) >= 3
    expected = [round(f * statistics.mean(finals)) for f in (0.2, 0.4, 0.6)]
    for name in ("grasp", "snip", "grasp_abs"):
        config = yaml.safe_load((root / "configs" / "cifar10-subset" / f"{name}.yaml").read_text())
        assert config["prune"]["init_args"]["accuracy_triggers"] == expected, name
