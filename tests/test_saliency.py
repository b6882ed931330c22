"""GraSP and SNIP scores: Hg against finite differences, loss-scale invariance, exact global masks, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils import prune

from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.saliency import gradient_and_hg, grasp_scores, masks_from_scores, snip_scores, split_batch
from lightning_prune.pruning.unstructured import apply_masks, current_masks, ensure_masks, mask_sparsity


@pytest.fixture
def model64(tiny_model):
    return tiny_model.double()


@pytest.fixture
def few(tiny_batches):
    """Two chunks of 8 images: enough for BatchNorm statistics, quick in float64 on 2 cores."""
    return [(x[:8], y[:8]) for x, y in tiny_batches]


@pytest.fixture
def batches64(few):
    return [(x.double(), y) for x, y in few]


def _weight_grad(model, batches, temperature, weights):
    """Gradient of sum_b CE(f(x_b)/T) w.r.t. the conv/linear weights set to ``weights`` (train BN, no dropout)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    params = {f"{n}.weight": w.detach().requires_grad_(True) for n, w in weights.items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    loss = sum(
        F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)) / temperature, y) for x, y in batches
    )
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(weights, grads))


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_hg_matches_finite_differences(model64, batches64, temperature):
    g, hg = gradient_and_hg(model64, batches64, temperature)
    theta = {n: m.weight.detach().clone() for n, m in prunable_modules(model64).items()}
    torch.testing.assert_close(g, _weight_grad(model64, batches64, temperature, theta))
    norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
    h = 1e-6  # along the unit vector g / |g|: small enough to cross no ReLU or max-pool kink
    plus = _weight_grad(model64, batches64, temperature, {n: theta[n] + h * g[n] / norm for n in theta})
    minus = _weight_grad(model64, batches64, temperature, {n: theta[n] - h * g[n] / norm for n in theta})
    fd = {n: norm * (plus[n] - minus[n]) / (2 * h) for n in theta}
    scale = max(float(v.abs().max()) for v in hg.values())
    assert scale > 0
    for name in theta:
        torch.testing.assert_close(hg[name], fd[name], rtol=1e-5, atol=1e-7 * scale)
    scores = grasp_scores(model64, batches64, temperature)
    for name in theta:
        torch.testing.assert_close(scores[name], -theta[name] * hg[name])


@pytest.mark.slow
def test_scores_follow_a_positive_rescaling_of_the_loss(model64, batches64):
    # The same chunks twice double the summed loss: g -> 2g, H -> 2H, so GraSP's S -> 4S and SNIP's -> 2S;
    # positive factors leave the ranking, hence the masks, unchanged. (With dropout on while scoring the
    # two calls would see different networks and this could not hold.)
    twice = batches64 + batches64
    for scores, factor, remove in (
        (lambda b: grasp_scores(model64, b), 4.0, "highest"),
        (lambda b: snip_scores(model64, b), 2.0, "lowest"),
    ):
        once, doubled = scores(batches64), scores(twice)
        for name in once:
            torch.testing.assert_close(doubled[name], factor * once[name])
        for sparsity in (0.3, 0.9):
            a = masks_from_scores(once, sparsity, remove)
            b = masks_from_scores(doubled, sparsity, remove)
            assert all(torch.equal(a[n], b[n]) for n in a)


def test_grasp_and_snip_remove_opposite_ends():
    scores = {"a": torch.tensor([[3.0, -1.0], [0.5, 2.0]]), "b": torch.tensor([10.0, -5.0, 0.0])}
    high = masks_from_scores(scores, 3 / 7, "highest")
    assert high["a"].tolist() == [[False, True], [True, False]] and high["b"].tolist() == [False, True, True]
    low = masks_from_scores(scores, 3 / 7, "lowest")
    assert low["a"].tolist() == [[True, False], [True, True]] and low["b"].tolist() == [True, False, False]


@pytest.mark.parametrize("sparsity", [0.0, 0.123, 0.5, 0.9, 0.999])
def test_masks_hit_the_exact_sparsity(tiny_model, sparsity):
    gen = torch.Generator().manual_seed(3)
    scores = {n: torch.randn(m.weight.shape, generator=gen) for n, m in prunable_modules(tiny_model).items()}
    scores["features.3"].zero_()  # ties do not change the count
    total = sum(s.numel() for s in scores.values())
    for remove in ("highest", "lowest"):
        masks = masks_from_scores(scores, sparsity, remove)
        assert set(masks) == set(scores)
        assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
        # one global threshold: every removed score is on the removed side of every kept one
        kept = torch.cat([scores[n][masks[n]] for n in scores])
        gone = torch.cat([scores[n][~masks[n]] for n in scores])
        if len(kept) and len(gone):
            assert (gone.min() >= kept.max()) if remove == "highest" else (gone.max() <= kept.min())


@pytest.mark.slow
def test_pruned_weights_never_return(model64, batches64):
    masks = None
    for sparsity in (0.45, 0.675, 0.9):
        # scores that would rather keep the pruned weights: the highest removed by GraSP, yet they stay gone
        scores = grasp_scores(model64, batches64, masks=masks)
        if masks is not None:
            for n in scores:
                scores[n][~masks[n]] = -1e9
        new = masks_from_scores(scores, sparsity, "highest", masks)
        total = sum(m.numel() for m in new.values())
        assert sum(int((~m).sum()) for m in new.values()) == round(sparsity * total)
        if masks is not None:
            assert all(not (new[n] & ~masks[n]).any() for n in new)
        masks = new
    with pytest.raises(ValueError, match="already pruned"):
        masks_from_scores(scores, 0.5, "highest", masks)


@pytest.mark.slow
def test_scoring_leaves_the_model_alone(model64, batches64):
    model = model64
    ensure_masks(model)
    gen = torch.Generator().manual_seed(5)
    apply_masks(model, {"features.7": torch.rand(model.features[7].weight.shape, generator=gen) > 0.5})
    model.train()
    x, y = batches64[0]
    F.cross_entropy(model(x), y).backward()  # grads and BN statistics the scores must not touch
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for score in (lambda: grasp_scores(model, batches64), lambda: snip_scores(model, batches64)):
        scores = score()
        assert not model.training
        after = model.state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state)
        assert all(torch.equal(grads[k], p.grad) for k, p in model.named_parameters() if k in grads)
        assert set(scores) == set(prunable_modules(model))
        mask = model.features[7].weight_mask.bool()
        assert not scores["features.7"][~mask].any()  # pruned weights score 0 (theta = 0)


@pytest.mark.slow
def test_masks_argument_equals_a_masked_model(model64, batches64):
    gen = torch.Generator().manual_seed(7)
    masks = {n: torch.rand(m.weight.shape, generator=gen) > 0.3 for n, m in prunable_modules(model64).items()}
    by_argument = grasp_scores(model64, batches64, masks=masks)
    snip_by_argument = snip_scores(model64, batches64, masks=masks)
    for name, module in prunable_modules(model64).items():
        prune.custom_from_mask(module, "weight", masks[name])
    by_model = grasp_scores(model64, batches64)
    snip_by_model = snip_scores(model64, batches64)
    for name in masks:
        torch.testing.assert_close(by_argument[name], by_model[name])
        torch.testing.assert_close(snip_by_argument[name], snip_by_model[name])
    assert mask_sparsity(current_masks(model64)) == pytest.approx(mask_sparsity(masks))


def test_apply_masks_keeps_the_parameters(tiny_model):
    ensure_masks(tiny_model)
    params = [id(p) for p in tiny_model.parameters()]
    masks = {n: torch.rand(m.weight.shape) > 0.5 for n, m in prunable_modules(tiny_model).items()}
    apply_masks(tiny_model, masks)
    assert [id(p) for p in tiny_model.parameters()] == params  # no optimizer rebuild needed
    for name, module in prunable_modules(tiny_model).items():
        assert not module.weight[~masks[name]].any()  # readable at once, before any forward


def test_split_batch():
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    chunks = split_batch((x, y), 2)
    assert [len(c[1]) for c in chunks] == [5, 5]
    assert len(split_batch((x[:1], y[:1]), 4)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_scores_of_a_conv_filter_sum_to_its_squared_gradient(model64, batches64, temperature):
    """BatchNorm after every conv makes the loss invariant to each filter's scale (Euler's theorem on the
    gradient, homogeneous of degree -1 in the filter): sum over a filter of -theta * Hg is |g_filter|^2.
    Tiny at T = 200, and the per-weight scores cancel, which is why GraSP's ranking ignores magnitude.
    Exact when BatchNorm's eps is negligible (here set to 1e-12); the default 1e-5 bends it slightly."""
    for m in model64.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    g, hg = gradient_and_hg(model64, batches64, temperature)
    modules = prunable_modules(model64)
    scores = {n: -modules[n].weight.detach() * hg[n] for n in hg}  # grasp_scores, checked above
    convs = [n for n, m in prunable_modules(model64).items() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    for name in convs:
        per_filter = scores[name].flatten(1).sum(1)
        squared_grad = (g[name].flatten(1) ** 2).sum(1)
        torch.testing.assert_close(per_filter, squared_grad, rtol=1e-4, atol=1e-9 * float(squared_grad.max()))
        assert float(per_filter.abs().sum()) < 0.5 * float(scores[name].abs().sum())  # the scores cancel
