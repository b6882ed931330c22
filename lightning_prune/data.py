"""CIFAR-10/100 and scikit-learn digits as one LightningDataModule.

Transforms follow chenyaofo/image-classification-codebase. ``digits`` needs no download, so the
demo and the tests run offline on real (if small) images.
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveInt
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from lightning_prune.errors import ConfigError

DatasetName = Literal["cifar10", "cifar100", "digits"]
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "digits")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}
DIGITS_TEST_FRACTION = 0.2


class _UncheckedMixin:
    """Accepts a re-packed copy whose MD5s differ from torchvision's: only the files must exist."""

    def _check_integrity(self) -> bool:
        root = Path(self.root) / self.base_folder
        return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class UncheckedCIFAR10(_UncheckedMixin, datasets.CIFAR10):
    """CIFAR-10 without torchvision's MD5 check (a module-level class: worker processes unpickle it)."""


class UncheckedCIFAR100(_UncheckedMixin, datasets.CIFAR100):
    """CIFAR-100 without torchvision's MD5 check."""


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled 8x8 digits as uint8 (N, 32, 32, 3) images and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return images, bunch.target.astype(np.int64)


class ArrayDataset(Dataset):
    """uint8 HWC images with integer labels, transformed like torchvision's CIFAR."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform=None) -> None:
        self.data, self.targets, self.transform = images, [int(t) for t in targets], transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


class ImageDataModule(L.LightningDataModule):
    """Train / validation / test loaders; ``val_size`` images of the train set become validation.

    Transforms are chenyaofo/image-classification-codebase's (train: random crop with 4-pixel
    padding and horizontal flip; eval: none), then normalisation with the dataset's mean and std.

    Args:
        dataset: ``cifar10``, ``cifar100`` or ``digits`` (scikit-learn's bundled 8x8 digits resized to
            3x32x32: real images, no download).
        data_dir: Folder holding (or receiving) the torchvision copy of CIFAR.
        batch_size: Images per batch for every loader.
        num_workers: DataLoader worker processes (0: load in the main process).
        download: Download CIFAR into ``data_dir`` when it is missing.
        verify_checksums: Check torchvision's MD5s; false accepts a re-packed copy of the same files.
        val_size: Training images (eval transforms) held out as the validation set that pruning
            decisions use; 0 validates on the test set.
        split_seed: Seed of the train/validation split.
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        data_dir: str = "data",
        batch_size: PositiveInt = 256,
        num_workers: NonNegativeInt = 0,
        download: bool = True,
        verify_checksums: bool = True,
        val_size: NonNegativeInt = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset, self.data_dir = dataset, data_dir
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.download, self.verify_checksums = download, verify_checksums
        self.val_size, self.split_seed = int(val_size), split_seed
        self._sets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.dataset in MEAN_STD:
            return MEAN_STD[self.dataset]
        images, _ = self._digits_split(train=True)
        x = images.astype(np.float64) / 255.0
        return tuple(x.mean(axis=(0, 1, 2))), tuple(x.std(axis=(0, 1, 2)))

    def transforms(self, train: bool) -> transforms.Compose:
        mean, std = self.mean_std()
        steps: list = []
        if train:
            steps.append(transforms.RandomCrop(32, padding=4))
            if self.dataset != "digits":  # a mirrored digit is another glyph
                steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        return transforms.Compose(steps)

    def _digits_split(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        images, labels = digits_images()
        order = np.random.default_rng(0).permutation(len(labels))
        n_test = int(len(labels) * DIGITS_TEST_FRACTION)
        idx = order[n_test:] if train else order[:n_test]
        return images[idx], labels[idx]

    def _raw(self, train: bool, transform) -> Dataset:
        if self.dataset == "digits":
            return ArrayDataset(*self._digits_split(train), transform=transform)
        name = "CIFAR-10" if self.dataset == "cifar10" else "CIFAR-100"
        checked, unchecked = ((datasets.CIFAR10, UncheckedCIFAR10) if self.dataset == "cifar10"
                              else (datasets.CIFAR100, UncheckedCIFAR100))
        cls = checked if self.verify_checksums else unchecked
        try:
            return cls(root=self.data_dir, train=train, transform=transform, download=self.download)
        except FileNotFoundError as err:
            if self.download:
                raise ConfigError(f"data.data_dir={self.data_dir}: {name} is incomplete ({err.filename} is "
                                  "missing after the download); delete the folder and download it again") from err
            raise ConfigError(
                f"data.data_dir={self.data_dir}: {name} is incomplete ({err.filename} is missing) and data.download "
                "is false; copy the whole extracted dataset into data_dir"
            ) from err
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise ConfigError(
                f"data.data_dir={self.data_dir}: {name} is not there and downloading {cls.url} failed ({err}); "
                "copy the extracted dataset into data_dir or run where the download works"
            ) from err
        except (EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as err:
            raise ConfigError(
                f"data.data_dir={self.data_dir}: a {name} batch file is truncated or corrupt "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); download or copy it again"
            ) from err
        except RuntimeError as err:
            hint = "" if self.download else " and data.download is false"
            raise ConfigError(
                f"data.data_dir={self.data_dir}: {name} not found or its checksums differ ({err}){hint}; "
                "set data.verify_checksums=false for a re-packed copy"
            ) from err

    def prepare_data(self) -> None:
        if self.dataset != "digits":
            self._raw(True, None), self._raw(False, None)

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        train_aug, train_eval = self._raw(True, self.transforms(True)), self._raw(True, self.transforms(False))
        n = len(train_aug)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} must be smaller than the train set ({n} images)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        self._sets["train"] = Subset(train_aug, train_idx)
        self._sets["train_eval"] = Subset(train_eval, train_idx)
        self._sets["test"] = self._raw(False, self.transforms(False))
        self._sets["val"] = Subset(train_eval, val_idx) if self.val_size else self._sets["test"]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        return DataLoader(self._sets[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def train_eval_dataloader(self) -> DataLoader:
        """The training images with eval transforms: train accuracy as the profile reports it."""
        return self._loader("train_eval")

    def calibration_batch(self, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced batch from the training images (eval transforms), for pruning scores."""
        self.setup()
        subset = self._sets["train_eval"]
        targets = np.asarray(subset.dataset.targets)[subset.indices]
        rng = np.random.default_rng(seed)
        picks = []
        for c in range(self.num_classes):
            idx = np.flatnonzero(targets == c)
            picks.extend(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist())
        xs, ys = zip(*(subset[i] for i in picks))
        return torch.stack(xs), torch.tensor(ys)
