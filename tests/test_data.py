"""The data module: transforms, digits, validation split, CIFAR loading and its errors."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
from torchvision import transforms

from lightning_prune.data import MEAN_STD, ImageDataModule
from lightning_prune.errors import ConfigError
from tests.helpers import run_cli_expecting_error, tiny_cli_args


def _types(compose: transforms.Compose) -> list[type]:
    return [type(t) for t in compose.transforms]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_transforms_follow_the_reference_codebase(dataset):
    dm = ImageDataModule(dataset)
    train, test = dm.transforms(train=True), dm.transforms(train=False)
    assert _types(train) == [
        transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor, transforms.Normalize
    ]
    assert train.transforms[0].size == (32, 32) and train.transforms[0].padding == 4
    assert _types(test) == [transforms.ToTensor, transforms.Normalize]
    assert (tuple(test.transforms[1].mean), tuple(test.transforms[1].std)) == MEAN_STD[dataset]


def test_digits_module_serves_normalised_32x32_rgb():
    dm = ImageDataModule("digits", batch_size=50, val_size=100)
    dm.setup()
    assert dm.num_classes == 10
    assert len(dm._sets["train"]) + len(dm._sets["val"]) == 1438 and len(dm._sets["test"]) == 359
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (50, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1])  # grey digits replicated to three channels
    full = torch.cat([b for b, _ in dm.train_eval_dataloader()])
    assert full.mean().abs() < 0.05 and (full.std() - 1).abs() < 0.05


def test_validation_split_is_disjoint_and_seeded():
    a, b = ImageDataModule("digits", val_size=100), ImageDataModule("digits", val_size=100)
    a.setup(), b.setup()
    assert a._sets["val"].indices == b._sets["val"].indices
    assert not set(a._sets["val"].indices) & set(a._sets["train"].indices)
    assert a.transforms(False).transforms and a._sets["val"].dataset.transform is not None


def test_calibration_batch_is_class_balanced():
    x, y = ImageDataModule("digits").calibration_batch(per_class=3)
    assert x.shape == (30, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [3] * 10


def test_val_size_too_large():
    with pytest.raises(ConfigError, match="val_size"):
        ImageDataModule("digits", val_size=5000).setup()


def test_unknown_dataset_names_the_choices(tmp_path, capsys):
    err = run_cli_expecting_error(["fit", "--config", "configs/demo/baseline.yaml", *tiny_cli_args(tmp_path),
                                   "--data.dataset=mnist"], capsys)
    assert "data.dataset: must be one of 'cifar10', 'cifar100', 'digits', got 'mnist'" in err


def test_missing_cifar_offline_names_data_dir_and_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils._urlretrieve", offline)
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path))
    with pytest.raises(ConfigError) as info:
        dm.prepare_data()
    assert f"data.data_dir={tmp_path}" in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)


def test_missing_cifar_without_download(tmp_path):
    with pytest.raises(ConfigError, match="data.download is false"):
        ImageDataModule("cifar100", data_dir=str(tmp_path), download=False).prepare_data()


def test_real_cifar10_subset_loads_without_checksums(cifar10_subset):
    dm = ImageDataModule("cifar10", data_dir=str(cifar10_subset), download=False, verify_checksums=False)
    dm.setup()
    assert len(dm._sets["train"]) == 5085 and len(dm._sets["test"]) == 1017
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (256, 3, 32, 32) and int(y.max()) <= 9
    # Normalised with CIFAR-10's statistics, real images are close to zero mean.
    assert x.mean().abs() < 0.3
    # DataLoader workers started by spawn (macOS, Windows) receive the dataset pickled.
    copy = pickle.loads(pickle.dumps(dm._sets["test"]))
    assert type(copy) is type(dm._sets["test"]) and len(copy) == 1017


def test_real_cifar10_subset_fails_the_checksum_clearly(cifar10_subset):
    dm = ImageDataModule("cifar10", data_dir=str(cifar10_subset), download=False, verify_checksums=True)
    with pytest.raises(ConfigError, match="verify_checksums=false"):
        dm.prepare_data()
