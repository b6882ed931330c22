"""The controls that test each method's idea: global/uniform allocation, random masks at another run's layer
sparsities, one-shot pruning, L1/random channels without refit; and the statistics that compare them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy import stats as sps

from lightning_prune.cli import main
from lightning_prune.models import VGG
from lightning_prune.pruning.allocation import choose_global, choose_uniform, layer_floors
from lightning_prune.pruning.channel import prune_channels
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.shuffle import layer_sparsities, plan_from_checkpoint, random_masks
from lightning_prune.pruning.unstructured import apply_magnitude_pruning, current_masks
from lightning_prune.report.collect import load_runs, merge_runs, seed_groups
from lightning_prune.report.controls import controls_table, verdict
from lightning_prune.report.stats import Comparison, Stat, compare, difference
from lightning_prune.report.tables import meets
from tests.helpers import TINY_CLASSIFIER, last_checkpoint, tiny_cli_args

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"


def test_global_threshold_removes_the_smallest_weights_of_the_whole_network(tiny_model):
    chosen = choose_global(tiny_model, 0.7)
    apply_magnitude_pruning(tiny_model, chosen, whole_layers=True)
    weights = [m.weight.detach().flatten() for m in prunable_modules(tiny_model).values()]
    flat = torch.cat(weights)
    assert int((flat == 0).sum()) == round(0.7 * flat.numel())  # exactly the target count
    kept = flat[flat != 0].abs()
    raw = torch.cat([m.weight_orig.detach().flatten() for m in prunable_modules(tiny_model).values()]).abs()
    floors = layer_floors(tiny_model)
    above_floor = torch.cat([torch.full((m.weight.numel(),), int(torch.count_nonzero(m.weight)) > floors[n])
                             for n, m in prunable_modules(tiny_model).items()])
    # one threshold: every pruned weight is below every kept one, but for the floor each layer keeps
    assert kept.min() >= raw[flat == 0].max() or flat[above_floor & (flat != 0)].abs().min() >= raw[flat == 0].max()
    assert len({round(s, 3) for s in chosen.values()}) > 3  # the layers end up unevenly sparse
    assert set(choose_uniform(tiny_model, 0.7).values()) == {0.7}


def test_random_masks_copy_the_layer_sparsities_and_keep_earlier_zeros(tiny_model):
    before = current_masks(tiny_model)
    before["features.3"].view(-1)[:10] = False
    wanted = {name: 0.5 for name in before} | {"features.0": 0.25}
    masks = random_masks(before, wanted, torch.Generator().manual_seed(0))
    for name, sparsity in layer_sparsities(masks).items():
        assert sparsity == pytest.approx(wanted[name], abs=1 / before[name].numel())
    assert not masks["features.3"].view(-1)[:10].any()
    again = random_masks(before, wanted, torch.Generator().manual_seed(1))
    assert not torch.equal(masks["features.10"], again["features.10"])  # another seed, another draw
    with pytest.raises(ValueError, match="below"):
        random_masks(masks, {"features.0": 0.1}, torch.Generator())


def test_a_plan_copies_each_stage_or_the_final_masks():
    events = [{"layers": {"a": 0.1 * (k + 1)}} for k in range(3)]
    checkpoint = {"callbacks": {"StagedPruning": {"events": events}},
                  "state_dict": {"model.a.weight_mask": torch.tensor([1.0, 0.0, 0.0, 0.0])}}
    assert plan_from_checkpoint(checkpoint, 3) == [{"a": 0.1}, {"a": 0.2}, {"a": pytest.approx(0.3)}]
    assert plan_from_checkpoint(checkpoint, 1) == [{"a": 0.75}]
    with pytest.raises(ValueError, match="same schedule"):
        plan_from_checkpoint(checkpoint, 2)


@pytest.mark.parametrize("selection", ["l1", "random"])
def test_control_selections_keep_the_ratios_and_refit_only_when_asked(tiny_model, selection):
    images = torch.randn(16, 3, 32, 32)
    common = dict(samples=200, positions=4, selection=selection)
    refit, reports = prune_channels(tiny_model, images, {"features.10": 0.5}, reconstruct=True, **common)
    kept, _ = prune_channels(tiny_model, images, {"features.10": 0.5}, reconstruct=False, **common)
    row = next(r for r in reports if r.name == "features.10")  # 8 input channels, from features.7's filters
    assert row.selection == selection and row.kept == 4 and refit.channels[2] == 4 == kept.channels[2]
    original = tiny_model.features[10].weight.detach()[:, row.kept_indices]
    assert torch.equal(kept.features[10].weight.detach(), original)  # no refit: the kept weights as they were
    assert not torch.equal(refit.features[10].weight.detach(), original)
    if selection == "l1":
        norms = tiny_model.features[7].weight.detach().abs().flatten(1).sum(1)
        assert row.kept_indices == sorted(norms.argsort(descending=True)[:4].tolist())


def test_ci_and_tests_are_scipys():
    a = Stat([70.0, 72.0, 71.0], [0, 1, 2])
    b = Stat([68.0, 71.5, 69.0], [0, 1, 2])
    low, high = sps.t.interval(0.95, 2, loc=71.0, scale=sps.sem([70.0, 72.0, 71.0]))
    assert a.ci95 == pytest.approx((high - low) / 2)
    paired = compare(a, b)
    assert paired.test == "paired t" and paired.p == pytest.approx(sps.ttest_rel(a.values, b.values).pvalue)
    shared = compare(a, Stat([60.0, 61.0, 65.0, 62.0], [0, 1, 2, 3]))  # pairs on the three seeds both ran
    assert shared.test == "paired t, shared seeds" and shared.n == (3, 3)
    assert shared.p == pytest.approx(sps.ttest_rel(a.values, [60.0, 61.0, 65.0]).pvalue)
    welch = compare(a, Stat([60.0, 61.0, 65.0, 62.0], [3, 4, 5, 6]))  # no seed in common
    assert welch.test == "Welch t" and welch.p == pytest.approx(
        sps.ttest_ind(a.values, [60.0, 61.0, 65.0, 62.0], equal_var=False).pvalue)
    drops = difference(Stat([80.0, 90.0, 85.0, 70.0], [0, 1, 2, 3]), Stat([86.0, 76.0], [1, 0]))
    assert drops.values == [4.0, 4.0] and drops.seeds == [0, 1]  # paired by seed, not by position
    assert meets(Stat([1.0, 2.0, 3.0]), 5.0) and not meets(Stat([1.0, 2.0, 9.0]), 5.0) and not meets(1.0, 5.0)
    def tested(diff, p, p_holm=None):
        return Comparison(diff, 1.0, "paired t", p, (3, 3), p_holm)

    assert verdict(tested(2.0, 0.2)).startswith("not established")
    assert verdict(tested(-2.0, 0.01)).startswith("control better")
    assert verdict(tested(2.0, 0.01, 0.2)) == "not established (Holm p = 0.2)"  # the corrected p decides


@pytest.mark.slow
def test_controls_run_from_the_cli_and_meet_their_method_in_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [*tiny_cli_args(tmp_path, "x"), "--trainer.max_epochs=3", "--profile.latency_batches=1",
            "--profile.energy_batches=1", "--profile.train_batches=1", "--prune.calibration_per_class=2",
            "--prune.fallback_epochs=[0,1,2]"]
    for seed in (0, 1):
        assert main(["fit", "--config", str(DEMO / "snip.yaml"), *base, "--run.experiment=s",
                     f"--seed_everything={seed}"]) == 0
        ref = last_checkpoint(tmp_path, "s", seed)
        assert main(["fit", "--config", str(DEMO / "snip.yaml"), *base, "--run.experiment=r", "--prune.method=random",
                     f"--prune.layerwise_from={ref}", f"--seed_everything={seed}"]) == 0
    one = ["fit", "--config", str(DEMO / "grasp.yaml"), *base, "--run.experiment=o", "--prune.schedule=oneshot"]
    assert main(one) == 0
    results = {e: json.loads((tmp_path / "logs" / e / "version_0" / "results.json").read_text()) for e in "sro"}
    assert results["r"]["task"] == "snip" and results["r"]["pruning"]["copies"] == "snip"
    same = [layer["sparsity"] for layer in results["s"]["models"][0]["layers"]]
    copied = [layer["sparsity"] for layer in results["r"]["models"][0]["layers"]]
    assert copied == pytest.approx(same, abs=1e-3)
    assert [(e["epoch"], e["reason"]) for e in results["o"]["schedule"]["stages"]] == [(0, "oneshot")]
    runs = [merge_runs(g) for g in seed_groups(load_runs(tmp_path / "logs"))]
    table = controls_table(runs)
    assert "1b: snip vs random at its layer sparsities (staged)" in table and "paired t, n = 2/2" in table


def test_tiny_vgg_fixture_is_what_the_controls_prune(tiny_model):
    assert isinstance(tiny_model, VGG) and tiny_model.classifier_width == TINY_CLASSIFIER
