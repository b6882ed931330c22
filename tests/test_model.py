"""VGG16-BN: chenyaofo's layout, parameter counts, pretrained loading and its errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from lightning_prune.errors import ConfigError
from lightning_prune.models import PRETRAINED_URLS, VGG, scaled_channels, vgg16_bn

# chenyaofo's cfg "D" with batch norm: conv, bn, relu per entry, a max-pool after each block.
CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def reference_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    idx, in_ch = 0, 3
    for v in CFG_D:
        if v == "M":
            idx += 1
            continue
        shapes[f"features.{idx}.weight"] = (v, in_ch, 3, 3)
        shapes[f"features.{idx}.bias"] = (v,)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"features.{idx + 1}.{buf}"] = (v,)
        shapes[f"features.{idx + 1}.num_batches_tracked"] = ()
        idx, in_ch = idx + 3, v
    for i, (o, n) in zip((0, 3, 6), ((512, 512), (512, 512), (num_classes, 512))):
        shapes[f"classifier.{i}.weight"] = (o, n)
        shapes[f"classifier.{i}.bias"] = (o,)
    return shapes


@pytest.mark.parametrize("num_classes, params", [(10, 15_253_578), (100, 15_299_748)])
def test_layout_and_parameter_count_match_chenyaofo(num_classes, params):
    model = vgg16_bn(num_classes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_shapes(num_classes)
    assert list(got) == list(reference_shapes(num_classes))  # same order as well
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, num_classes)


def test_narrow_model_rebuilds_from_channels(tiny_channels):
    model = vgg16_bn(10, tiny_channels)
    assert [conv.out_channels for _, conv, _ in model.conv_layers()] == tiny_channels
    assert model.classifier[0].in_features == tiny_channels[-1]
    assert scaled_channels(0.5)[0] == 32 and scaled_channels(0.5)[-1] == 256


@pytest.mark.parametrize("channels", [[8] * 12, [8] * 12 + [0]])
def test_bad_channels_are_rejected(channels):
    with pytest.raises(ValueError, match="channels"):
        VGG(10, channels)


def test_local_pretrained_gives_identical_outputs(tmp_path, tiny_channels):
    source = vgg16_bn(10, tiny_channels, classifier_width=32).eval()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = vgg16_bn(10, tiny_channels, pretrained=str(path), classifier_width=32).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(source(x), loaded(x))


def test_pretrained_of_another_class_count_names_the_option(tmp_path, tiny_channels):
    path = tmp_path / "c100.pt"
    torch.save(vgg16_bn(100, tiny_channels, classifier_width=32).state_dict(), path)
    with pytest.raises(ConfigError, match=r"pretrained=.*classifier\.6\.weight"):
        vgg16_bn(10, tiny_channels, pretrained=str(path), classifier_width=32)


def test_missing_pretrained_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        vgg16_bn(10, pretrained=str(tmp_path / "nope.pt"))


def test_offline_download_fails_with_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ConfigError) as info:
        vgg16_bn(10, pretrained=True)
    message = str(info.value)
    assert PRETRAINED_URLS[10] in message and "pretrained=<file.pt>" in message and "\n" not in message


def test_pretrained_true_only_for_cifar_class_counts():
    with pytest.raises(ConfigError, match="10 or 100"):
        vgg16_bn(7, [4] * 13, pretrained=True)
