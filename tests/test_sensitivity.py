"""The cached sensitivity sweep: same numbers as the naive loop, model untouched; the CSV and the plot."""

from __future__ import annotations

import pytest
import torch

from benchmarks.naive_sweep import naive_sensitivity_scan
from lightning_prune.artifacts import read_curves_csv, save_curves_csv
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.sensitivity import sensitivity_scan
from lightning_prune.report.plots import sensitivity_curves

LEVELS = (0.0, 0.5, 0.9)


@pytest.fixture
def self_labelled(tiny_model, tiny_batches):
    """Labels = the unpruned model's own predictions, so pruning visibly moves top-1 away from 100."""
    tiny_model.eval()
    with torch.no_grad():
        return [(x, tiny_model(x).argmax(1)) for x, _ in tiny_batches]


@pytest.mark.slow
def test_scan_matches_naive_and_leaves_model_unchanged(tiny_model, self_labelled):
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    calls = []
    curves = sensitivity_scan(tiny_model, self_labelled, LEVELS)
    assert list(curves) == list(prunable_modules(tiny_model)) and len(curves) == 16
    assert tiny_model.training
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert set(tiny_model.state_dict()) == set(before)
    assert curves == naive_sensitivity_scan(tiny_model, self_labelled, LEVELS)
    assert all(c[0] == 100.0 for c in curves.values())
    assert min(min(c) for c in curves.values()) < 100.0
    # one level per pass (no stacking): same numbers; progress sees every (batch, layer, level) once
    one_by_one = sensitivity_scan(tiny_model, self_labelled, LEVELS, progress=lambda *a: calls.append(a), max_images=1)
    assert one_by_one == curves
    assert [c[0] for c in calls] == list(range(1, 65)) and calls[-1][1] == 64
    assert {c[2] for c in calls} == set(curves) and {c[3] for c in calls} == {0.5, 0.9}


@pytest.mark.slow
def test_scan_on_chosen_layers(tiny_model, self_labelled):
    curves = sensitivity_scan(tiny_model, self_labelled, (0.0, 0.8), layers=["classifier.6", "features.0"])
    assert list(curves) == ["classifier.6", "features.0"]
    assert curves == naive_sensitivity_scan(tiny_model, self_labelled, (0.0, 0.8), ["classifier.6", "features.0"])


def test_csv_round_trip_and_plot(tmp_path):
    curves = {"features.0": [90.0, 80.5, 10.0], "classifier.6": [90.0, 89.0, 70.25]}
    path = save_curves_csv(curves, LEVELS, tmp_path / "s.csv")
    assert read_curves_csv(path) == (list(LEVELS), curves)
    fig = sensitivity_curves(curves, LEVELS)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == list(curves)


def test_the_docs_figure_is_drawn_from_the_curves_results_json_keeps(tmp_path):
    from lightning_prune.report.collect import RunResults
    from lightning_prune.report.plots import sensitivity_figure

    curves = {"features.0": [90.0, 80.5, 10.0], "classifier.6": [90.0, 89.0, 70.25]}
    run = RunResults(tmp_path / "exp" / "version_0" / "results.json",
                     {"seed": 1, "sweep": {"sparsities": list(LEVELS), "curves": curves}})
    path = sensitivity_figure(run, tmp_path / "sweep.png")
    assert path == tmp_path / "sweep.png" and path.stat().st_size > 1000
    assert sensitivity_figure(RunResults(run.path, {"sweep": {"sparsities": list(LEVELS)}}), tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
