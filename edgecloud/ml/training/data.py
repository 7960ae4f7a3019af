"""Fashion-MNIST from the Debian package, and how it is split across sites.

The data comes from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
IDX files, gzip), never from a download: these machines reach no data hub. Another
directory holding the same four files can be given with ``EDGECLOUD_FASHION_MNIST``.

Splits give each site (or client) a list of sample indices:

- :func:`iid_split` shuffles and deals the samples evenly;
- :func:`dirichlet_split` draws, per class, the share each client gets from
  ``Dirichlet(alpha)`` — small alpha (0.1) gives each client a few dominant classes,
  large alpha (100) approaches IID. This is the non-IID split of the FL literature
  (Hsu et al. 2019) and of Flower's ``DirichletPartitioner``.

Example::

    train, test = load_fashion_mnist()
    parts = dirichlet_split(train.labels, clients=3, alpha=0.5, seed=0)
    x, y = train.subset(parts[0]).tensors()
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.errors import UserError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
# Mean and standard deviation of the training pixels in [0, 1]: inputs are normalised with
# them so every model in the project sees the same scale.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetNotFound(UserError):
    """The Fashion-MNIST files are not installed where we look."""


@dataclass(frozen=True)
class ImageSet:
    """Images (N, 28, 28) uint8 and labels (N,) int64, kept as numpy arrays."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray | list[int]) -> ImageSet:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx])

    def tensors(self):
        """``(x, y)`` torch tensors: x (N, 1, 28, 28) float32 normalised, y (N,) int64."""
        import torch

        # np.require copies only read-only (memory-mapped) arrays, which torch warns about.
        x = torch.from_numpy(np.require(self.images, requirements="W"))
        x = x.float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)
        return x, torch.from_numpy(np.require(self.labels, requirements="W"))


def dataset_dir() -> Path:
    return Path(os.environ.get("EDGECLOUD_FASHION_MNIST", str(DEFAULT_DIR)))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetNotFound(f"{path}: truncated IDX file ({arr.size} values, expected "
                              f"{int(np.prod(dims))})")
    return arr.reshape(dims)


def load_split(split: str, directory: Path | None = None) -> ImageSet:
    """One split, ``"train"`` (60,000) or ``"test"`` (10,000)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = directory or dataset_dir()
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFound(
            f"Fashion-MNIST not found: {', '.join(missing)} missing. Install it with "
            "`apt-get install dataset-fashion-mnist` (or set EDGECLOUD_FASHION_MNIST to a "
            "directory holding the four IDX .gz files).")
    images = _read_idx(paths[0])
    labels = _read_idx(paths[1]).astype(np.int64)
    return ImageSet(images, labels)


def load_fashion_mnist(directory: Path | None = None) -> tuple[ImageSet, ImageSet]:
    """``(train, test)``."""
    return load_split("train", directory), load_split("test", directory)


def iid_split(n: int, clients: int, seed: int = 0) -> list[np.ndarray]:
    """Indices ``0..n-1`` shuffled and dealt into ``clients`` near-equal parts."""
    if clients < 1:
        raise ValueError("clients must be >= 1")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_split(labels: np.ndarray, clients: int, alpha: float, seed: int = 0,
                    min_size: int = 10) -> list[np.ndarray]:
    """Non-IID split: per class, client shares drawn from ``Dirichlet(alpha)``.

    Redraws (up to 100 times) until every client holds at least ``min_size`` samples, so
    no client is left with nothing to train on.
    """
    if clients < 1:
        raise ValueError("clients must be >= 1")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give each of {clients} clients {min_size} samples with "
                     f"alpha={alpha}; raise alpha or lower min_size")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray],
                    num_classes: int = 10) -> np.ndarray:
    """(clients, classes) counts: how skewed a split is, for reports."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
