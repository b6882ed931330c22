"""Magnitude pruning: exact sparsities, the per-layer choice, masks through SGD, checkpoints and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_prune.artifacts import read_curves_csv
from lightning_prune.cli import main
from lightning_prune.models import VGG
from lightning_prune.module import ImageClassifier
from lightning_prune.pruning.allocation import choose_by_max_drop, choose_for_target, choose_sparsities
from lightning_prune.pruning.layers import prunable_modules, weight_sparsity
from lightning_prune.pruning.unstructured import apply_magnitude_pruning, get_masks, overall_sparsity, restore_masks
from lightning_prune.results import validate
from tests.helpers import TINY_CLASSIFIER, last_checkpoint, run_cli_expecting_error, tiny_cli_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = str(CONFIGS / "demo" / "unstructured.yaml")


def test_exact_per_layer_sparsity(tiny_model):
    wanted = {"features.0": 0.37, "features.10": 0.5, "classifier.3": 0.9, "classifier.6": 0.0}
    achieved = apply_magnitude_pruning(tiny_model, wanted)
    modules = prunable_modules(tiny_model)
    for name, s in wanted.items():
        w = modules[name].weight
        assert int((w == 0).sum()) == round(s * w.numel())
        assert achieved[name] == pytest.approx(round(s * w.numel()) / w.numel())
    # the smallest magnitudes went: every kept weight is at least as large as every removed one
    orig, mask = modules["features.10"].weight_orig.abs(), modules["features.10"].weight_mask.bool()
    assert orig[mask].min() >= orig[~mask].max()
    assert set(get_masks(tiny_model)) == {"features.0", "features.10", "classifier.3"}


def test_target_sparsity_is_reached_where_it_hurts_least():
    levels = [0.0, 0.5, 0.9]
    sizes = {"big": 9000, "fragile": 900, "small": 100}
    curves = {"big": [90.0, 90.0, 89.0], "fragile": [90.0, 60.0, 10.0], "small": [90.0, 89.0, 80.0]}
    # the big tolerant layer alone can give 80 %: nothing else is touched
    chosen = choose_for_target(curves, levels, sizes, 0.8)
    assert overall_sparsity(chosen, sizes) == 0.8
    assert chosen == {"big": pytest.approx(8000 / 9000), "fragile": 0.0, "small": 0.0}
    # 85 %: big to its last level, then the cheapest points per weight (small to 0.5, then fragile)
    chosen = choose_for_target(curves, levels, sizes, 0.85)
    assert overall_sparsity(chosen, sizes) == 0.85
    assert chosen == {"big": pytest.approx(0.9), "fragile": pytest.approx(350 / 900), "small": pytest.approx(0.5)}
    with pytest.raises(ValueError, match=r"target_sparsity=0.95 cannot be reached.*at most 0.9000"):
        choose_for_target(curves, levels, sizes, 0.95)
    # max_drop: highest sparsity losing at most 2 points, interpolated between the swept levels
    assert choose_by_max_drop(curves, levels, 2.0) == {"big": 0.9, "fragile": 0.03, "small": 0.54}


def test_target_choice_on_a_real_model(tiny_model):
    levels = [0.0, 0.5, 0.9]
    curves = {n: [80.0, 79.0, 60.0] for n in prunable_modules(tiny_model)}
    chosen = choose_sparsities(tiny_model, target_sparsity=0.7, curves=curves, levels=levels)
    apply_magnitude_pruning(tiny_model, chosen)
    assert weight_sparsity(tiny_model) == pytest.approx(0.7, abs=1e-4)
    assert weight_sparsity(tiny_model) >= 0.7


def test_pruned_weights_stay_zero_through_sgd(tiny_model, tiny_batches):
    apply_magnitude_pruning(tiny_model, {n: 0.6 for n in prunable_modules(tiny_model)})
    masks = get_masks(tiny_model)
    before = {n: m.weight_orig.detach().clone() for n, m in prunable_modules(tiny_model).items()}
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    tiny_model.train()
    for _ in range(3):
        for x, y in tiny_batches:
            opt.zero_grad()
            F.cross_entropy(tiny_model(x), y).backward()
            opt.step()
    for name, module in prunable_modules(tiny_model).items():
        assert torch.equal(module.weight[~masks[name]], torch.zeros_like(module.weight[~masks[name]]))
        assert not torch.equal(module.weight_orig.detach(), before[name])  # training really happened


def test_masked_state_dict_loads_into_a_fresh_model(tiny_model, tiny_channels):
    apply_magnitude_pruning(tiny_model, {"features.3": 0.5, "classifier.0": 0.8})
    state = tiny_model.state_dict()
    fresh = VGG(10, tiny_channels, classifier_width=TINY_CLASSIFIER)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)
    assert restore_masks(fresh, state) == ["features.3", "classifier.0"]
    fresh.load_state_dict(state)
    assert weight_sparsity(fresh) == weight_sparsity(tiny_model) > 0  # readable before any forward
    assert all(torch.equal(a, b) for a, b in zip(get_masks(fresh).values(), get_masks(tiny_model).values()))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), tiny_model.eval()(x))


def _ckpt_masks(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model.").removesuffix(".weight_mask"): v.bool() for k, v in sd.items()
            if k.endswith("weight_mask")}


@pytest.mark.slow
def test_cli_prunes_exports_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_cli_args(tmp_path, "tiny_unstructured"), "--model.pretrained=false", "--data.val_size=32"]
    assert main(["fit", "--config", DEMO, "--trainer.max_epochs=1", *args]) == 0
    run = tmp_path / "logs" / "tiny_unstructured" / "version_0"
    results = json.loads((run / "results.json").read_text())
    validate(results)
    assert results["task"] == "unstructured" and results["dataset"] == "digits"
    variants = {m["variant"]: m for m in results["models"]}
    assert list(variants) == ["dense", "pruned-masked", "pruned-sparse-coo", "pruned-densified-once"]
    assert variants["dense"]["profile"]["sparsity"] == 0
    for name in ("pruned-masked", "pruned-sparse-coo", "pruned-densified-once"):
        assert variants[name]["profile"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
        assert variants[name]["accuracy"]["test_top1"] == variants["pruned-masked"]["accuracy"]["test_top1"]
        assert len(variants[name]["layers"]) == 16
    assert variants["pruned-sparse-coo"]["coo_mismatches"] == 0
    for key in ("masks", "sparse_coo", "coo_check", "sensitivity_csv", "sensitivity_plot", "checkpoint"):
        assert Path(results["artifacts"][key]).is_file(), key
    assert json.loads((run / "coo_check.json").read_text())["mismatches"] == 0
    levels, curves = read_curves_csv(run / "sensitivity.csv")  # the sweep's curves are kept in results.json too
    sweep = results["sweep"]
    assert sweep["sparsities"] == levels and set(sweep["curves"]) == set(curves) and len(curves) == 16
    assert all(sweep["curves"][n] == pytest.approx(curves[n], abs=1e-4) for n in curves)

    # masks are in the checkpoint, equal to the exported ones, and survive load_from_checkpoint
    ckpt = last_checkpoint(tmp_path, "tiny_unstructured")
    exported = torch.load(run / "masks.pt", weights_only=True)
    saved = _ckpt_masks(ckpt)
    assert set(saved) == set(exported) and all(torch.equal(saved[n], exported[n]) for n in saved)
    model = ImageClassifier.load_from_checkpoint(ckpt).model
    assert all(torch.equal(get_masks(model)[n], exported[n]) for n in exported)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-4)

    # resume: one more epoch, same masks, pruned weights still exactly zero
    assert main(["fit", "--config", DEMO, f"--ckpt_path={ckpt}", "--trainer.max_epochs=2", *args]) == 0
    ckpt = last_checkpoint(tmp_path, "tiny_unstructured", 1)  # the resumed fit is a run of its own
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = _ckpt_masks(ckpt)
    assert all(torch.equal(resumed[n], exported[n]) for n in exported)
    model = ImageClassifier.load_from_checkpoint(ckpt).model
    for name, module in prunable_modules(model).items():
        if name in exported:
            assert not module.weight[~exported[name]].any()
    again = json.loads((run.parent / "version_1" / "results.json").read_text())
    validate(again)
    assert [m["variant"] for m in again["models"]][0] == "dense"


def _bad_config(tmp_path: Path, pruning: dict, scan_levels: list[float] | None = None) -> str:
    groups = {"prune": {"class_path": "lightning_prune.callbacks.unstructured.MagnitudePruning",
                        "init_args": {"target_sparsity": None, **pruning}}, "sweep": None}
    if scan_levels is not None:
        groups["sweep"] = {"class_path": "lightning_prune.callbacks.SensitivityScan",
                           "init_args": {"sparsities": scan_levels, "progress": False}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(groups))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pruning", "levels", "words"),
    [
        ({"sparsities": {"features.0": 1.0}}, None, ["prune.sparsities: 1.0 is not allowed", "value<1"]),
        ({"sparsities": {"conv1": 0.5}}, None, ["conv1", "features.0", "classifier.6"]),
        ({"target_sparsity": 0.95}, [0.0, 0.5, 0.9], ["target_sparsity=0.95 cannot be reached", "0.9"]),
        ({"target_sparsity": 0.5}, None, ["target_sparsity needs sensitivity curves", "SensitivityScan"]),
        ({"target_sparsity": 0.5, "max_drop": 1.0}, None, ["exactly one", "max_drop"]),
        ({"max_drop": 1.0}, [0.0, 1.5], ["sweep.sparsities: 1.5 is not allowed", "value<1"]),
    ],
)
def test_cli_bad_input(tmp_path, monkeypatch, capsys, pruning, levels, words):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", DEMO, "--config", _bad_config(tmp_path, pruning, levels),
            *tiny_cli_args(tmp_path), "--model.pretrained=false"]
    err = run_cli_expecting_error(argv, capsys)
    assert all(w in err for w in words) and "Traceback" not in err, err[-2000:]


@pytest.mark.slow
def test_cli_reuses_an_earlier_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = list(prunable_modules(VGG(10, [4] * 13)))
    csv = tmp_path / "earlier.csv"
    csv.write_text("layer,0,0.5,0.9\n" + "".join(f"{n},80,79,70\n" for n in names))
    groups = {
        "sweep": {"class_path": "lightning_prune.callbacks.SensitivityScan",
                  "init_args": {"curves_csv": str(csv)}},
        "prune": {"class_path": "lightning_prune.callbacks.unstructured.MagnitudePruning",
                  "init_args": {"target_sparsity": 0.5, "record": False, "profile_dense": False}},
    }
    config = tmp_path / "reuse.yaml"
    config.write_text(json.dumps(groups))
    argv = ["fit", "--config", DEMO, "--config", str(config), *tiny_cli_args(tmp_path, "reuse"),
            "--model.pretrained=false", "--trainer.max_epochs=1", "--trainer.limit_val_batches=1"]
    assert main(argv) == 0
    sd = torch.load(last_checkpoint(tmp_path, "reuse"), weights_only=True)["state_dict"]
    masks = [v for k, v in sd.items() if k.endswith("weight_mask")]
    total = sum(v.numel() for k, v in sd.items() if k.endswith(("weight_orig", ".weight")) and v.dim() > 1)
    assert sum(int((m == 0).sum()) for m in masks) / total == pytest.approx(0.5, abs=1e-4)
    assert not (tmp_path / "logs" / "reuse" / "version_0" / "results.json").exists()  # record: false
    assert (tmp_path / "logs" / "reuse" / "version_0" / "sensitivity.png").is_file()
