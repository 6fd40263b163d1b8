"""A dataset's images as uint8 tensors on the training device, and the fixed train / validation
split (the dataset's record, its files and sizes: space/datasets.py; MNIST today).

The search trains on 50,000 of MNIST's 60,000 training images and validates on the other
10,000 (a split fixed by SPLIT_SEED, the same for every trial and every run);
`reproduce` trains on all 60,000. The 10,000 test images are only used for reporting.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import DataError
from space.datasets import DATASETS, MNIST, Dataset

if TYPE_CHECKING:  # torch is imported where tensors are made: commands that only read a study start fast
    import torch

DATA_DIR_ENV = "SEARCH_DATA_DIR"
DEFAULT_DATA_DIR = "data"
SPLIT_SEED = 0
N_VAL = MNIST.validation_size  # the default dataset's figures, for the study file's defaults and checks
TRAIN_SPLIT = MNIST.search_train_size  # the search's training images: the training set less the N_VAL held out for validation


@dataclass
class Split:
    """Images are uint8 (N, 28, 28) on the training device; labels int64 beside them."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    eval_name: str  # "val" (search) or "test" (reproduce)
    root: Path | None = None  # the data folder it came from (a distillation teacher trains on its whole training set)
    dataset: Dataset = MNIST


def resolve_data_dir(option: str | None) -> Path:
    """--data-dir, else $SEARCH_DATA_DIR, else ./data."""
    return Path(option or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def load_images(root: Path, train: bool, dataset: Dataset = MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """One file pair of `dataset` (its training or its test set) from root/FOLDER (torchvision's
    layout, MNIST/raw/ for MNIST): (uint8 images (N, H, W), int64 labels). The IDX files are read
    directly (the format of MNIST and of the datasets made like it): torchvision, which would read them the same
    way, takes 2.4 s to import, more than the files take to read; it is imported only to
    download files that are missing."""

    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; pass --data-dir or set {DATA_DIR_ENV} to the folder holding {dataset.folder}/")
    raw = root / dataset.folder
    files = tuple(raw / name for name in (dataset.train_files if train else dataset.test_files))
    if not all(f.is_file() for f in files):
        _download(root, dataset)
    try:
        images, labels = _read_idx(files[0], IMAGES_MAGIC, 3), _read_idx(files[1], LABELS_MAGIC, 1).long()
    except (OSError, ValueError) as e:
        raise DataError(f"{raw}: truncated or corrupt IDX file ({e}); replace it with an intact copy") from None
    expected = dataset.train_size if train else dataset.test_size
    if images.shape != (expected, *dataset.image_shape[1:]) or labels.shape != (expected,):
        raise DataError(f"{raw}: expected {expected} images and labels, found {tuple(images.shape)} / {tuple(labels.shape)}; replace the files with intact copies")
    return images, labels


IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # the IDX header of MNIST's image and label files


def _read_idx(path: Path, magic: int, dims: int) -> torch.Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor: a big-endian header (magic number, then one size per dimension), then the data."""
    import torch

    data = path.read_bytes()
    header = 4 * (1 + dims)
    if len(data) < header:
        raise ValueError(f"{path.name}: {len(data)} bytes, shorter than its header")
    found, *shape = struct.unpack(f">{1 + dims}I", data[:header])
    if found != magic:
        raise ValueError(f"{path.name}: magic number {found}, expected {magic}")
    if len(data) - header != math.prod(shape):
        raise ValueError(f"{path.name}: {len(data) - header:,} bytes of data for shape {tuple(shape)}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*shape)


def _download(root: Path, dataset: Dataset) -> None:
    """torchvision's own download into root/FOLDER (where it has a network); it prints its attempts, which are noise here."""
    try:
        import torchvision.datasets

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            getattr(torchvision.datasets, dataset.torchvision_class)(str(root), train=True, download=True)
    except Exception:
        raise DataError(
            f"{dataset.title} is not in {root / dataset.folder} and the download failed; put the four files "
            f"({', '.join(dataset.train_files + dataset.test_files)}) there, or pass --data-dir / set {DATA_DIR_ENV} to a folder that has {dataset.folder}/"
        ) from None


def validation_indices(dataset: Dataset = MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the dataset's training images: a fixed, seeded split."""
    import torch

    order = torch.randperm(dataset.train_size, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[dataset.validation_size:], order[:dataset.validation_size]


@dataclass(frozen=True)
class SearchSplit:
    """Where a search's split comes from: the data folder, the device, the first `subset` training
    images and the first `validation` validation images. Plain data, so that it crosses to a
    worker process as it is, and each process loads its own copy."""

    root: Path
    device: str
    subset: int
    validation: int
    dataset: str = MNIST.name

    def load(self) -> Split:
        import torch

        return load_split(self.root, torch.device(self.device), validation=True, subset=self.subset, eval_subset=self.validation,
                          dataset=DATASETS[self.dataset])


def load_split(root: Path, device: torch.device, validation: bool, subset: int | None = None, eval_subset: int | None = None,
               dataset: Dataset = MNIST) -> Split:
    """validation=True: the search's split (MNIST: 50,000 train / 10,000 validation); else the
    whole training set and the test set (60,000 / 10,000). `subset` keeps the first N training
    images of the split, `eval_subset` the first N evaluation images."""
    images, labels = load_images(root, train=True, dataset=dataset)
    if validation:
        train_idx, val_idx = validation_indices(dataset)
        eval_images, eval_labels, eval_name = images[val_idx], labels[val_idx], "val"
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels = load_images(root, train=False, dataset=dataset)
        eval_name = "test"
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    if eval_subset is not None:
        eval_images, eval_labels = eval_images[:eval_subset], eval_labels[:eval_subset]
    move = lambda t: t.to(device).contiguous()  # noqa: E731
    return Split(move(images), move(labels), move(eval_images), move(eval_labels), eval_name, root, dataset)
