"""Channel pruning: LASSO selection, least-squares reconstruction, surgery, checkpoints and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.cli import main
from lightning_prune.models import VGG, vgg16_bn
from lightning_prune.module import ImageClassifier
from lightning_prune.pruning.channel import (
    channel_gram,
    prunable_convs,
    prune_channels,
    prune_linear,
    ratios_for_target,
    reconstruct_weight,
    relative_error,
    remove_input_channels,
    resolve_ratios,
    sample_positions,
    sample_rows,
    select_channels,
    vgg_parameter_count,
)
from lightning_prune.pruning.channel.budget import narrow_channels, params_removed_share, scale_ratios
from lightning_prune.pruning.layers import count_parameters
from lightning_prune.results import validate
from tests.helpers import TINY_CLASSIFIER, last_checkpoint, run_cli_expecting_error, tiny_cli_args

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "channel.yaml")


def _columns(channels: list[int], kk: int) -> list[int]:
    return [c * kk + k for c in channels for k in range(kk)]


def _synthetic(seed: int = 0, m: int = 3000, n: int = 6):
    """Channels 0-3 informative; 4-7 with 50x larger weights but almost no activation."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 8, 9, generator=g, dtype=torch.float64)
    x[:, 4:] *= 1e-3
    w = torch.randn(n, 8, 3, 3, generator=g, dtype=torch.float64) * 0.2
    w[:, 4:] *= 50
    x = x.reshape(m, 72)
    y = x @ w.reshape(n, -1).T + 0.01 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return x, w, y


def test_selection_keeps_informative_channels_and_beats_weight_norm():
    x, w, y = _synthetic()
    sel = select_channels(x, w, y, keep=4)
    kept, beta = sel.kept, sel.beta
    assert kept.tolist() == [0, 1, 2, 3]
    assert beta.shape == (8,) and torch.count_nonzero(beta) == 4
    by_norm = w.flatten(2).norm(dim=(0, 2)).argsort(descending=True)[:4].sort().values
    assert by_norm.tolist() == [4, 5, 6, 7]
    err_lasso = relative_error(x, y, reconstruct_weight(x, y, kept, (3, 3)), kept)
    err_norm = relative_error(x, y, reconstruct_weight(x, y, by_norm, (3, 3)), by_norm)
    assert err_lasso < 0.1 < 0.9 < err_norm


@pytest.mark.parametrize("keep", [1, 3, 6, 11])
def test_exactly_keep_channels(keep):
    g = torch.Generator().manual_seed(keep)
    mix = torch.randn(12, 12, generator=g)  # correlated channels
    x = (torch.randn(800, 9, 12, generator=g) @ mix).transpose(1, 2).reshape(800, -1)
    w = torch.randn(5, 12, 3, 3, generator=g)
    y = x @ w.reshape(5, -1).T + 0.1 * torch.randn(800, 5, generator=g)
    kept = select_channels(x, w, y, keep).kept
    assert len(kept) == keep and kept.tolist() == sorted(set(kept.tolist()))
    assert 0 <= int(kept.min()) and int(kept.max()) < 12


def test_gram_equals_the_explicit_design():
    g = torch.Generator().manual_seed(3)
    x, w, y = torch.randn(50, 4 * 9, generator=g), torch.randn(3, 4, 3, 3, generator=g), torch.randn(50, 3, generator=g)
    z = torch.stack([(x[:, _columns([i], 9)] @ w[:, i].reshape(3, 9).T).reshape(-1) for i in range(4)], 1).double()
    gram, b = channel_gram(x, w, y)
    torch.testing.assert_close(gram, z.T @ z, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(b, z.T @ y.double().reshape(-1), rtol=1e-5, atol=1e-4)


def test_reconstruct_weight_is_the_least_squares_optimum():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(400, 5 * 9, generator=g, dtype=torch.float64), torch.randn(400, 4, generator=g,
                                                                                   dtype=torch.float64)
    kept = [0, 2, 3]
    w = reconstruct_weight(x, y, kept, (3, 3))
    direct, *_ = np.linalg.lstsq(x[:, _columns(kept, 9)].numpy(), y.numpy(), rcond=None)
    assert w.shape == (4, 3, 3, 3)
    np.testing.assert_allclose(w.reshape(4, -1).T.numpy(), direct, rtol=1e-9, atol=1e-10)
    # a dead kept channel (zero inputs): the ridge keeps it finite and the fit optimal
    x[:, _columns([2], 9)] = 0
    w = reconstruct_weight(x, y, kept, (3, 3))
    xk = x[:, _columns(kept, 9)].numpy()
    direct, *_ = np.linalg.lstsq(xk, y.numpy(), rcond=None)
    assert torch.isfinite(w).all()
    ours = np.linalg.norm(y.numpy() - xk @ w.reshape(4, -1).T.numpy())
    assert ours == pytest.approx(np.linalg.norm(y.numpy() - xk @ direct), rel=1e-6)


def test_sampled_rows_are_unfold_rows():
    conv = nn.Conv2d(5, 3, 3, padding=1)
    x = torch.randn(4, 5, 8, 8)
    idx = sample_positions(4, 64, 10, 30, torch.Generator().manual_seed(0))
    unf = F.unfold(x, 3, padding=1)
    expected = torch.cat([unf[i][:, idx[i][idx[i] >= 0]].T for i in range(4)])
    assert len(expected) == 30
    assert torch.equal(sample_rows(x, conv, idx), expected)


def _with_stats(model: VGG) -> VGG:
    """Non-trivial BatchNorm statistics so the surgery's slicing of them is tested."""
    g = torch.Generator().manual_seed(5)
    for _, _, bn in model.conv_layers():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.data = torch.randn(t.shape, generator=g)
        bn.running_var.data = torch.rand(bn.running_var.shape, generator=g) + 0.5
    return model.eval()


@pytest.mark.slow
def test_surgery_without_removal_keeps_the_function(tiny_model):
    model = _with_stats(tiny_model)
    x = torch.randn(4, 3, 32, 32)
    for i in (1, 2, 7, 12):
        same = remove_input_channels(model, i, list(range(model.channels[i - 1])))
        assert same.channels == model.channels
        torch.testing.assert_close(same(x), model(x), rtol=0, atol=0)


def test_surgery_keeps_unpruned_channels(tiny_model):
    model = _with_stats(tiny_model)
    x = torch.randn(4, 3, 32, 32)
    convs = model.conv_layers()
    for i in (1, 4, 12):
        kept = list(range(0, model.channels[i - 1], 2))
        narrow = remove_input_channels(model, i, kept)
        assert narrow.channels[i - 1] == len(kept) and narrow.conv_layers()[i][0] == convs[i][0]
        cut = list(model.features).index(convs[i][1])  # the input of conv i
        torch.testing.assert_close(narrow.features[:cut](x), model.features[:cut](x)[:, kept], rtol=0, atol=0)
        # zeroing the dropped inputs' weights in the dense net gives the narrow net's function
        zeroed = _with_stats(VGG(10, model.channels, TINY_CLASSIFIER))
        zeroed.load_state_dict(model.state_dict())
        dropped = [c for c in range(model.channels[i - 1]) if c not in kept]
        zeroed.conv_layers()[i][1].weight.data[:, dropped] = 0
        torch.testing.assert_close(narrow(x), zeroed(x), rtol=1e-5, atol=1e-6)


def test_prune_channels_end_to_end(tiny_model):
    model = _with_stats(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(48, 3, 32, 32)
    narrow, reports = prune_channels(model, x, {"features.3": 0.5, "features.40": 0.25}, samples=400)
    assert narrow.channels == [2, *model.channels[1:11], 8, 32]
    assert [r.name for r in reports if r.selection != "none"] == ["features.3", "features.40"]
    assert all(r.error_reconstructed <= r.error_pruned + 1e-6 for r in reports)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert narrow(x).shape == (48, 10)
    order = list(narrow.state_dict())
    masks = prune_linear(narrow, 0.8)
    assert list(narrow.state_dict()) == order  # a resumed optimizer maps its state by this order
    for mask in masks.values():
        assert 1 - mask.float().mean() == pytest.approx(0.8, abs=0.01)


def test_unknown_ratio_layer_names_the_valid_ones(tiny_model):
    with pytest.raises(ValueError) as err:  # the values are typed where parsed; the names are checked here
        resolve_ratios({"features.0": 0.5}, tiny_model)
    assert all(w in str(err.value) for w in ["features.0", "features.3", "features.40"]), str(err.value)


@pytest.mark.slow
def test_cli_prunes_finetunes_reloads_and_resumes(tmp_path, monkeypatch, tiny_channels):
    monkeypatch.chdir(tmp_path)
    args = tiny_cli_args(tmp_path, "tiny_channel")
    assert main(["fit", "--config", DEMO, "--trainer.max_epochs=1", "--model.pretrained=false", *args]) == 0
    ckpt = last_checkpoint(tmp_path, "tiny_channel")
    steps = torch.load(ckpt, weights_only=True)["global_step"]
    run = tmp_path / "logs" / "tiny_channel" / "version_0"
    results = json.loads((run / "results.json").read_text())
    validate(results)
    assert results["task"] == "channel" and results["dataset"] == "digits"
    dense, pruned = results["models"]
    assert (dense["variant"], pruned["variant"]) == ("dense", "channel-pruned")
    narrow = [max(1, round(c / 2)) for c in tiny_channels[:-1]] + tiny_channels[-1:]
    assert pruned["channels"] == narrow and pruned["dense_channels"] == tiny_channels
    assert pruned["profile"]["macs"] < dense["profile"]["macs"] / 2
    assert pruned["profile"]["params"] < dense["profile"]["params"]
    conv_rows = [r for r in pruned["layers"] if r["name"].startswith("features")]
    assert [r["out_channels"] for r in conv_rows] == narrow
    assert [r["dense_out_channels"] for r in conv_rows] == tiny_channels
    for key in ("channels_csv", "channels_json", "checkpoint"):
        assert Path(results["artifacts"][key]).is_file(), key

    module = ImageClassifier.load_from_checkpoint(ckpt)
    assert module.model.channels == narrow
    assert module.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sparsity = float((module.model.classifier[0].weight == 0).float().mean())
    assert sparsity == pytest.approx(0.8, abs=0.01)

    # test and resume rebuild the narrow net from the checkpoint, not from --model.channels, and
    # do not load the dense pretrained file the config names (it does not even exist here)
    assert main(["test", "--config", DEMO, f"--ckpt_path={ckpt}", *args]) == 0
    assert main(["fit", "--config", DEMO, f"--ckpt_path={ckpt}", "--trainer.max_epochs=2", *args]) == 0
    resumed_ckpt = last_checkpoint(tmp_path, "tiny_channel", 2)  # a new run: version 1 was the test
    assert torch.load(resumed_ckpt, weights_only=True)["global_step"] == 2 * steps  # one more epoch, not a fresh fit
    resumed = ImageClassifier.load_from_checkpoint(resumed_ckpt).model
    assert resumed.channels == narrow
    assert float((resumed.classifier[0].weight == 0).float().mean()) == pytest.approx(sparsity)
    latest = max(run.parent.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))  # `test` made one too
    again = json.loads((latest / "results.json").read_text())
    validate(again)
    assert [m["variant"] for m in again["models"]] == ["dense", "channel-pruned"]


@pytest.mark.slow
def test_cli_bad_ratio(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"prune": {"init_args": {"ratios": 1.0}}}))
    argv = ["fit", "--config", DEMO, "--config", str(bad), *tiny_cli_args(tmp_path), "--model.pretrained=false"]
    err = run_cli_expecting_error(argv, capsys)
    assert "prune.ratios: 1.0 is not allowed (must satisfy value>0 and value<1)" in err and "Traceback" not in err


# --- a parameter budget -------------------------------------------------------------------------

CONVS = ("features.3", "features.7", "features.10", "features.14", "features.17", "features.20", "features.24",
         "features.27", "features.30", "features.34", "features.37", "features.40")
PROFILE = dict(zip(CONVS, [0.75] * 3 + [0.6] * 3 + [0.5] * 3 + [0.4] * 3))  # configs/tasks/channel.yaml's


@pytest.mark.parametrize(
    ("channels", "width", "classes"),
    [(None, 512, 10), ([4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32], 32, 10),
     ([3, 1, 5, 2, 7, 1, 1, 9, 4, 2, 2, 1, 6], 7, 3)],
)
def test_vgg_parameter_count_matches_the_model(channels, width, classes):
    with torch.device("meta"):
        model = vgg16_bn(classes, channels, classifier_width=width)
    total = sum(p.numel() for p in model.parameters())
    assert vgg_parameter_count(model.channels, classes, width) == total
    if channels is not None:  # count_parameters needs real tensors: the small ones only
        assert total == count_parameters(vgg16_bn(classes, channels, classifier_width=width))[0]


def test_removed_share_is_what_pruning_removes(tiny_model):
    ratios = resolve_ratios(PROFILE, tiny_model)
    narrow, _ = prune_channels(_with_stats(tiny_model), torch.randn(16, 3, 32, 32), PROFILE, samples=200)
    assert narrow.channels == narrow_channels(ratios, tiny_model.channels)
    zeroed = sum(int((~mask).sum()) for mask in prune_linear(narrow, 0.8).values())
    kept = count_parameters(narrow)[0] - zeroed  # not the non-zeros: fresh biases are zero too
    expected = params_removed_share(ratios, tiny_model.channels, 10, TINY_CLASSIFIER, 0.8)
    assert 1 - kept / count_parameters(tiny_model)[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("target", "linear"), [(0.5, None), (0.7, 0.8), (0.9, 0.8)])
def test_ratios_for_target_is_the_largest_common_factor(tiny_model, target, linear):
    channels = tiny_model.channels
    ratios = resolve_ratios(PROFILE, tiny_model)
    scaled = ratios_for_target(ratios, channels, 10, TINY_CLASSIFIER, linear, target)
    assert params_removed_share(scaled, channels, 10, TINY_CLASSIFIER, linear) >= target
    factor = scaled[12] / ratios[12]  # features.40: 32 channels, not clipped here
    wider = scale_ratios(ratios, channels, factor * 1.001)
    assert params_removed_share(wider, channels, 10, TINY_CLASSIFIER, linear) < target
    # one factor for all (clipped to keep 1..channels-1), and ratios prune_channels accepts
    assert scaled == pytest.approx(scale_ratios(ratios, channels, factor), rel=1e-12)
    names = {n: scaled[i] for n, i in prunable_convs(tiny_model).items() if i in scaled}
    assert resolve_ratios(names, tiny_model) == scaled
    assert ratios_for_target(ratios, channels, 10, TINY_CLASSIFIER, linear, target) == scaled  # deterministic


def test_ratios_for_target_full_size_grid():
    with torch.device("meta"):
        model = vgg16_bn(10)
    ratios = resolve_ratios(PROFILE, model)
    shares = []
    order = sorted(ratios, key=lambda i: (ratios[i], i))
    for target in (0.7, 0.8, 0.9):
        scaled = ratios_for_target(ratios, model.channels, 10, 512, 0.8, target)
        assert [scaled[i] for i in order] == sorted(scaled.values())  # the profile stays: early convs keep more
        assert scaled[1] / ratios[1] == pytest.approx(scaled[12] / ratios[12])
        shares.append(params_removed_share(scaled, model.channels, 10, 512, 0.8))
        assert target <= shares[-1] < target + 0.005  # the channel grid is fine enough to land close
    assert shares == sorted(shares)


def test_ratios_for_an_unreachable_target(tiny_model):
    ratios = resolve_ratios({"features.40": 0.5}, tiny_model)
    with pytest.raises(ValueError) as err:
        ratios_for_target(ratios, tiny_model.channels, 10, TINY_CLASSIFIER, None, 0.99)
    assert "target_sparsity=0.99" in str(err.value) and "at most 0." in str(err.value)


@pytest.mark.slow
def test_cli_target_sparsity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_cli_args(tmp_path, "tiny_target")
    assert main(["fit", "--config", DEMO, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                 "--model.pretrained=false", "--prune.target_sparsity=0.7", *args]) == 0
    run = tmp_path / "logs" / "tiny_target" / "version_0"
    results = json.loads((run / "results.json").read_text())
    validate(results)
    assert results["pruning"]["target_sparsity"] == 0.7
    dense, pruned = results["models"]
    assert pruned["param_reduction"] >= 0.7
    used = json.loads(Path(results["artifacts"]["channels_json"]).read_text())["ratios"]
    assert used == pruned["pruning"]["ratios_used"] and len(set(used.values())) == 1  # one ratio: one factor
    dense_channels = pruned["dense_channels"]
    assert pruned["channels"] == narrow_channels(resolve_ratios(used, VGG(10, dense_channels, TINY_CLASSIFIER)),
                                                 dense_channels)


@pytest.mark.slow
def test_cli_bad_target_sparsity(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", DEMO, *tiny_cli_args(tmp_path), "--model.pretrained=false"]
    err = run_cli_expecting_error([*argv, "--prune.target_sparsity=1.5"], capsys)
    assert "prune.target_sparsity: 1.5 is not allowed" in err and "Traceback" not in err, err[-2000:]
    err = run_cli_expecting_error([*argv, "--prune.target_sparsity=0.0"], capsys)  # removes nothing: its type says so
    assert "prune.target_sparsity: 0.0 is not allowed (must satisfy value>0 and value<1)" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
