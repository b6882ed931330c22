"""torch.sparse export: COO indices equal the masks, sparse outputs equal the masked model's."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lightning_prune.artifacts import export_sparse
from lightning_prune.profiling import profile_model
from lightning_prune.pruning.layers import count_parameters, layer_table, prunable_modules, weight_sparsity
from lightning_prune.pruning.sparse import (
    SparseConv2d,
    SparseLinear,
    load_sparse_model,
    sparse_weights,
    to_sparse_model,
    verify_coo,
)
from lightning_prune.pruning.unstructured import apply_magnitude_pruning, get_masks


@pytest.fixture
def masked(tiny_model):
    sparsities = {name: 0.8 for name in prunable_modules(tiny_model)}
    sparsities["features.0"] = 0.0  # stays dense, also in the sparse model
    apply_magnitude_pruning(tiny_model, sparsities)
    return tiny_model.eval()


def test_export_files_and_coo_check(masked, tmp_path):
    export = export_sparse(masked, tmp_path)
    masks = torch.load(export.masks_path, weights_only=True)
    saved = torch.load(export.sparse_path, weights_only=True)
    coo = sparse_weights(saved)
    assert set(masks) == set(coo) == set(export.layers) and len(coo) == 15 and "features.0" not in coo
    for name, weight in coo.items():
        assert torch.equal(weight.coalesce().indices(), masks[name].nonzero().t())
    assert export.total_mismatches == 0 and set(export.mismatches.values()) == {0}
    assert json.loads(export.check_path.read_text())["mismatches"] == 0
    # the masked model itself is untouched
    assert set(get_masks(masked)) == set(masks)


def test_verify_coo_reports_differences(masked):
    coo, masks = sparse_weights(to_sparse_model(masked)), get_masks(masked)
    flipped = masks["features.3"].clone()
    flipped.view(-1)[:3] = ~flipped.view(-1)[:3]
    report = verify_coo(coo, {**masks, "features.3": flipped})
    assert report["features.3"] == 3 and sum(report.values()) == 3
    missing = verify_coo({k: v for k, v in coo.items() if k != "classifier.6"}, masks)
    assert missing["classifier.6"] == int(masks["classifier.6"].sum())


def test_sparse_outputs_match_masked(masked, tiny_batches, tmp_path):
    x = tiny_batches[0][0]
    export = export_sparse(masked, tmp_path)
    sparse = export.sparse
    assert isinstance(sparse.features[3], SparseConv2d) and isinstance(sparse.classifier[6], SparseLinear)
    assert sparse.features[3].weight.is_sparse and not sparse.features[0].weight.is_sparse
    with torch.no_grad():
        expected = masked(x)
        for model in (sparse, export.densified, to_sparse_model(masked), to_sparse_model(masked, densify_once=True),
                      load_sparse_model(masked, torch.load(export.sparse_path, weights_only=True)),
                      copy.deepcopy(sparse)):
            torch.testing.assert_close(model.eval()(x), expected, rtol=1e-5, atol=1e-5)
    assert not any(p.is_sparse for p in export.densified.parameters())


def test_layer_helpers_and_profile_read_the_sparse_model(masked, tiny_batches):
    sparse = to_sparse_model(masked)
    assert list(prunable_modules(sparse)) == list(prunable_modules(masked))
    assert count_parameters(sparse) == count_parameters(masked)
    assert weight_sparsity(sparse) == pytest.approx(weight_sparsity(masked)) and weight_sparsity(sparse) > 0.7
    assert [r["sparsity"] for r in layer_table(sparse)] == [r["sparsity"] for r in layer_table(masked)]
    x = tiny_batches[0][0][:4]
    profile = profile_model(sparse, [x], macs_model=to_sparse_model(masked, densify_once=True))
    assert profile["macs"] > 0 and profile["params"] == count_parameters(masked)[0]
    assert profile["sparsity"] == pytest.approx(weight_sparsity(masked))


def test_export_needs_masks(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="no pruning masks"):
        export_sparse(tiny_model, tmp_path)
