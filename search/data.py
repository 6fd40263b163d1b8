"""MNIST as uint8 tensors on the training device, and the fixed train / validation split.

The search trains on 50,000 of the 60,000 training images and validates on the other
10,000 (a split fixed by SPLIT_SEED, the same for every trial and every run);
`reproduce` trains on all 60,000. The 10,000 test images are only used for reporting.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import DataError

if TYPE_CHECKING:  # torch is imported where tensors are made: commands that only read a study start fast
    import torch

DATA_DIR_ENV = "SEARCH_DATA_DIR"
DEFAULT_DATA_DIR = "data"
SPLIT_SEED = 0
N_VAL = 10_000
N_TRAIN_FILES = {True: 60_000, False: 10_000}  # images in MNIST's train / test files
TRAIN_SPLIT = 50_000  # the search's training images: MNIST's 60,000 less the N_VAL held out for validation
RAW_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


@dataclass
class Split:
    """Images are uint8 (N, 28, 28) on the training device; labels int64 beside them."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    eval_name: str  # "val" (search) or "test" (reproduce)
    root: Path | None = None  # the data folder it came from (a distillation teacher trains on its whole training set)


def resolve_data_dir(option: str | None) -> Path:
    """--data-dir, else $SEARCH_DATA_DIR, else ./data."""
    return Path(option or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def load_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST file pair through torchvision: (uint8 images (N, 28, 28), int64 labels)."""
    from torchvision.datasets import MNIST  # (imports torch)

    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; pass --data-dir or set {DATA_DIR_ENV} to the folder holding MNIST/raw/")
    corrupt = f"{root / 'MNIST' / 'raw'}: truncated or corrupt IDX file ({{}}); replace it with an intact copy"
    try:
        dataset = MNIST(str(root), train=train, download=False)
    except RuntimeError as e:
        if "not found" not in str(e):  # torchvision could not reshape what it read
            raise DataError(corrupt.format(e)) from None
        try:  # torchvision's own download; it prints its attempts, which are noise here
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                dataset = MNIST(str(root), train=train, download=True)
        except Exception:
            raise DataError(
                f"MNIST is not in {root / 'MNIST' / 'raw'} and the download failed; put the four files ({RAW_FILES}) there, "
                f"or pass --data-dir / set {DATA_DIR_ENV} to a folder that has MNIST/raw/"
            ) from None
    except (AssertionError, ValueError, KeyError, IndexError) as e:  # torchvision asserts on the magic number and the size
        raise DataError(corrupt.format(type(e).__name__)) from None
    images, labels = dataset.data, dataset.targets
    expected = N_TRAIN_FILES[train]
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise DataError(f"{root / 'MNIST' / 'raw'}: expected {expected} images and labels, found {tuple(images.shape)} / {tuple(labels.shape)}; replace the files with intact copies")
    return images, labels


def validation_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the 60,000 training images: a fixed, seeded split."""
    import torch

    order = torch.randperm(N_TRAIN_FILES[True], generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[N_VAL:], order[:N_VAL]


def load_split(root: Path, device: torch.device, validation: bool, subset: int | None = None) -> Split:
    """validation=True: 50,000 train / 10,000 validation (the search); else 60,000 train / 10,000 test.
    `subset` keeps the first N training images of the split; the evaluation set stays whole."""
    images, labels = load_mnist(root, train=True)
    if validation:
        train_idx, val_idx = validation_indices()
        eval_images, eval_labels, eval_name = images[val_idx], labels[val_idx], "val"
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels = load_mnist(root, train=False)
        eval_name = "test"
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    move = lambda t: t.to(device).contiguous()  # noqa: E731
    return Split(move(images), move(labels), move(eval_images), move(eval_labels), eval_name, root)
