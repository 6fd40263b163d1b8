"""Datasets, each one named record of what the code needs to know about it: where its files lie,
the shape of an image, the classes, the normalisation and the sizes of its sets. A config, a
study file and a model file name their dataset ("mnist" for every file written before the name
existed); a config is trained only on its own dataset (search/train.py refuses another in one
line). MNIST is the only entry today; a second one is a record here plus the reader of its
files in search/data.py (docs/design.md, "How to extend")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    name: str  # as configs and study files name it
    title: str  # as messages name it
    folder: str  # under the data directory: torchvision's layout
    train_files: tuple[str, str]  # (images, labels)
    test_files: tuple[str, str]
    image_shape: tuple[int, int, int]  # channels, height, width
    classes: int
    mean: float  # of the training pixels in [0, 1]: inputs are normalised as (p - mean) / std
    std: float
    train_size: int
    test_size: int
    validation_size: int  # held out of the training set for the search's validation (a fixed, seeded split)
    torchvision_class: str | None = None  # torchvision.datasets' class that downloads the files, where there is one

    @property
    def search_train_size(self) -> int:
        """The search's training images: the training set less the validation images."""
        return self.train_size - self.validation_size


MNIST = Dataset(name="mnist", title="MNIST", folder="MNIST/raw", train_files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                test_files=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), image_shape=(1, 28, 28), classes=10,
                mean=0.1307, std=0.3081, train_size=60_000, test_size=10_000, validation_size=10_000,
                torchvision_class="MNIST")
DATASETS = {dataset.name: dataset for dataset in (MNIST,)}
DEFAULT_DATASET = MNIST.name  # of every config, study and model file that names none
