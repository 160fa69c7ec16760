"""Datasets for training and studying large-kernel models, without torchvision.

Embedded, offline: MNIST-1D (Greydanus, 2020, "Scaling down deep learning",
generated locally by the ``mnist1d`` package with its default arguments) and the
8x8 handwritten digits of scikit-learn (also as flattened and permuted
sequences). Both come at any resolution (``length=`` / ``size=``): the same
samples with more points per feature, the test bed of the study's resolution
sweep (where a fixed small kernel sees less and less of a pattern). From a
directory the user brings: CIFAR-10/100 python pickle batches, MNIST /
Fashion-MNIST IDX files and ImageFolder trees.

Datasets that fit in memory are :class:`TensorDataset` s: the whole split as
one tensor, batched by indexing (on small CPUs a DataLoader's per-sample
overhead would dominate). Every dataset returns normalised ``float32`` inputs
``(C, *input_size)`` and ``int64`` labels.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from largekernel._files import replacing
from largekernel.data.transforms import Normalize

__all__ = ["DatasetInfo", "TensorDataset", "ImageFolderDataset", "load_dataset", "dataset_info",
           "list_datasets", "needs_data_dir", "DatasetFormatError"]

SPLITS = ("train", "test")


class DatasetFormatError(ValueError):
    """A dataset file is missing or not in the expected format; the message names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    in_chans: int
    input_size: tuple[int, ...]
    dims: int


class TensorDataset(Dataset):
    """A whole split held as tensors: ``x`` ``(N, C, *size)`` (float32, or uint8 scaled on access) and ``y`` ``(N,)``.

    ``get_batch(index)`` returns the normalised batch for an index tensor in one
    indexing operation; ``ds[i]`` returns one sample.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo,
                 normalize: Normalize | None = None) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
        self.x, self.y, self.info, self.normalize = x, y.long(), info, normalize

    def __len__(self) -> int:
        return self.y.shape[0]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return self.normalize(x) if self.normalize is not None else x

    def get_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._prepare(self.x[index]), self.y[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._prepare(self.x[i:i + 1])[0], self.y[i]

    def subset(self, n: int) -> "TensorDataset":
        """The first ``n`` samples (datasets here are stored shuffled or stratified, so this keeps every class)."""
        return TensorDataset(self.x[:n], self.y[:n], self.info, self.normalize)


class ImageFolderDataset(Dataset):
    """``root/class_name/*.png|jpg`` read with Pillow, resized (shorter side) and centre-cropped to ``image_size``.

    Classes are the sorted sub-directory names. Images are decoded on access,
    so this works with a DataLoader and worker processes for datasets that do
    not fit in memory (ImageNet-100).
    """

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

    def __init__(self, root: str | Path, image_size: int = 224, classes: list[str] | None = None,
                 normalize: Normalize | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetFormatError(f"{root}: directory not found; expected an ImageFolder tree root/<class>/<image>")
        self.classes = classes if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise DatasetFormatError(f"{root}: no class sub-directories; expected root/<class>/<image>")
        self.samples = [(path, label) for label, name in enumerate(self.classes)
                        for path in sorted((root / name).iterdir() if (root / name).is_dir() else [])
                        if path.suffix.lower() in self.EXTENSIONS]
        if not self.samples:
            raise DatasetFormatError(f"{root}: no images with extensions {self.EXTENSIONS}")
        self.image_size = image_size
        self.normalize = normalize
        self.info = DatasetInfo(len(self.classes), 3, (image_size, image_size), 2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                scale = self.image_size / min(img.size)
                w, h = max(self.image_size, round(img.width * scale)), max(self.image_size, round(img.height * scale))
                img = img.resize((w, h), Image.BILINEAR)
                left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
                img = img.crop((left, top, left + self.image_size, top + self.image_size))
                arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetFormatError(f"{path}: cannot decode image ({err}); expected a PNG/JPEG file") from None
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        if self.normalize is not None:
            x = self.normalize(x[None])[0]
        return x, torch.tensor(label)


# ---------------------------------------------------------------------------------------------
# Embedded datasets


def _cache_dir() -> Path:
    return Path(os.environ.get("LARGEKERNEL_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                               / "largekernel"))


MNIST1D_LENGTH = 40  # the published final sequence length
DIGITS_SIZE = 8  # the scikit-learn images' side


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int, length: int = MNIST1D_LENGTH) -> dict[str, np.ndarray]:
    """MNIST-1D generated by the ``mnist1d`` package (never downloaded), cached as ``.npz`` in :func:`_cache_dir`.

    ``length`` is the generator's ``final_seq_length``: its last step resamples each
    transformed signal (72 points) to that many, after every random draw, so every
    length holds the same digits, labels and order, sampled more or less finely.
    """
    from importlib.metadata import version

    suffix = "" if length == MNIST1D_LENGTH else f"-len{length}"  # the published length keeps its cache name
    path = _cache_dir() / f"mnist1d-{version('mnist1d')}-seed{seed}{suffix}.npz"
    keys = ("x", "y", "x_test", "y_test")
    if path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in keys}
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is regenerated below
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.final_seq_length = length
    # make_dataset generates locally (get_dataset would download); it reseeds NumPy's global RNG: restore it.
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    arrays = {k: np.asarray(data[k]) for k in keys}
    try:
        with replacing(path) as tmp:  # whole: concurrent processes (torchrun) never read a partial file
            np.savez(tmp, **arrays)
    except OSError:
        pass  # a read-only home only costs the regeneration next time
    return arrays


def _resolution(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _mnist1d(split: str, data_dir, *, seed: int = 42, length: int = MNIST1D_LENGTH, **_) -> TensorDataset:
    # below 2 points the generator's interpolation is undefined
    data = _mnist1d_arrays(seed, _resolution(length, "length", 2))
    x, y = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1)  # (N, 1, length)
    return TensorDataset(x, torch.from_numpy(y), DatasetInfo(10, 1, (length,), 1))


@functools.lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25, random_state=0,
                                              stratify=digits.target)
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, (x_te - mean) / std, y_tr, y_te


def _digits(split: str, data_dir, *, layout: str = "image", size: int = DIGITS_SIZE, **_) -> TensorDataset:
    size = _resolution(size, "size", 1)
    x_tr, x_te, y_tr, y_te = _digits_split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N, 1, 8, 8)
    if size != DIGITS_SIZE:
        # bilinear resampling of the standardised images: the same digit, size / 8 pixels per original pixel
        # (antialiased when shrinking, where plain bilinear would skip pixels)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=size < DIGITS_SIZE)  # (N, 1, size, size)
    if layout == "image":
        return TensorDataset(x, torch.from_numpy(y), DatasetInfo(10, 1, (size, size), 2))
    x = x.flatten(2)  # (N, 1, size * size)
    if layout == "permuted":
        x = x[:, :, torch.from_numpy(np.random.default_rng(0).permutation(size * size))]
    return TensorDataset(x.contiguous(), torch.from_numpy(y), DatasetInfo(10, 1, (size * size,), 1))


# ---------------------------------------------------------------------------------------------
# Datasets from files in their published formats

_CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
_CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _require_dir(data_dir, name: str) -> Path:
    if data_dir is None:
        raise ValueError(f"dataset {name!r} reads files: data_dir is required, got None")
    return Path(data_dir)


def _find(root: Path, candidates: list[str], what: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise DatasetFormatError(f"{root / candidates[0]}: file not found; expected {what}")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    expected = f"a CIFAR python pickle batch (dict with b'data' uint8 (N, 3072) and {label_key!r})"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found; expected {expected}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetFormatError(f"{path}: cannot read ({type(err).__name__}: {err}); expected {expected}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{path}: data of shape {data.shape} with {labels.shape[0]} labels; expected {expected}")
    return data, labels


def _cifar(split: str, data_dir, *, num_classes: int, **_) -> TensorDataset:
    root = _require_dir(data_dir, f"cifar{num_classes}")
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if (root / folder).is_dir():
        root = root / folder
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        names, key = ["train" if split == "train" else "test"], b"fine_labels"
    parts = [_read_cifar_batch(root / n, key) for n in names]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])).view(-1, 3, 32, 32)  # (N, 3, 32, 32) uint8
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DatasetFormatError(f"{root / names[0]}: labels outside [0, {num_classes}); expected CIFAR-{num_classes}")
    return TensorDataset(x, y, DatasetInfo(num_classes, 3, (32, 32), 2),
                         Normalize(_CIFAR_MEAN[num_classes], _CIFAR_STD[num_classes]))


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    expected = f"an IDX file of unsigned bytes with {expected_dims} dimension(s) (magic 0x0000080{expected_dims})"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetFormatError(f"{path}: cannot read ({err}); expected {expected}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_dims:
        raise DatasetFormatError(f"{path}: bad magic number {raw[:4].hex()}; expected {expected}")
    header = 4 + 4 * expected_dims
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated header; expected {expected}")
    shape = struct.unpack(f">{expected_dims}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DatasetFormatError(f"{path}: {len(raw) - header} data bytes for shape {shape}; expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_idx(split: str, data_dir, *, name: str, **_) -> TensorDataset:
    root = _require_dir(data_dir, name)
    for sub in ("raw", f"{name}/raw", name):
        if (root / sub).is_dir():
            root = root / sub
            break
    prefix = "train" if split == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]
    images = _read_idx(_find(root, files + [f + ".gz" for f in files], "an IDX3 image file"), 3)
    files = [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"]
    label_path = _find(root, files + [f + ".gz" for f in files], "an IDX1 label file")
    labels = _read_idx(label_path, 1)
    if labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(f"{label_path}: {labels.shape[0]} labels for {images.shape[0]} images; expected equal counts")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    mean, std = ((0.1307,), (0.3081,)) if name == "mnist" else ((0.2860,), (0.3530,))
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)),
                         DatasetInfo(10, 1, tuple(images.shape[1:]), 2), Normalize(mean, std))


def _imagefolder(split: str, data_dir, *, image_size: int = 224, **_) -> ImageFolderDataset:
    root = _require_dir(data_dir, "imagefolder")
    names = ["train"] if split == "train" else ["val", "test"]
    sub = next((root / n for n in names if (root / n).is_dir()), root / names[0])
    classes = None
    if split != "train" and (root / "train").is_dir():
        # The label of a class must not depend on which classes happen to have validation images.
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    return ImageFolderDataset(sub, image_size, classes, Normalize(_IMAGENET_MEAN, _IMAGENET_STD))


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": _mnist1d,
    "mnist1d_seq": _mnist1d,
    "digits": functools.partial(_digits, layout="image"),
    "digits_seq": functools.partial(_digits, layout="sequence"),
    "digits_pseq": functools.partial(_digits, layout="permuted"),
    "cifar10": functools.partial(_cifar, num_classes=10),
    "cifar100": functools.partial(_cifar, num_classes=100),
    "imagefolder": _imagefolder,
    "mnist": functools.partial(_mnist_idx, name="mnist"),
    "fashion_mnist": functools.partial(_mnist_idx, name="fashion_mnist"),
}

_EMBEDDED = ("mnist1d", "mnist1d_seq", "digits", "digits_seq", "digits_pseq")

# Datasets whose info is known without reading files.
_STATIC_INFO = {
    "mnist1d": DatasetInfo(10, 1, (40,), 1),
    "mnist1d_seq": DatasetInfo(10, 1, (40,), 1),
    "digits": DatasetInfo(10, 1, (8, 8), 2),
    "digits_seq": DatasetInfo(10, 1, (64,), 1),
    "digits_pseq": DatasetInfo(10, 1, (64,), 1),
    "cifar10": DatasetInfo(10, 3, (32, 32), 2),
    "cifar100": DatasetInfo(100, 3, (32, 32), 2),
    "mnist": DatasetInfo(10, 1, (28, 28), 2),
    "fashion_mnist": DatasetInfo(10, 1, (28, 28), 2),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_LOADERS)


def needs_data_dir(name: str) -> bool:
    """Whether dataset ``name`` reads files from a ``data_dir`` (the embedded ones generate or ship their data)."""
    _check_name(name)
    return name not in _EMBEDDED


def _check_name(name: str) -> None:
    if name not in _LOADERS:
        raise ValueError(f"dataset must be one of {list(_LOADERS)}, got {name!r}")


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """The ``split`` (``"train"`` or ``"test"``) of dataset ``name``; samples are ``(x float32 (C, *input_size), y int64)``.

    ``data_dir`` is needed by the file-backed datasets (``cifar10``, ``cifar100``,
    ``imagefolder``, ``mnist``, ``fashion_mnist``). ``kwargs``: ``image_size``
    for ``imagefolder`` (default 224); for ``mnist1d``: ``seed`` (default 42, the
    package's published data) and ``length`` (default 40, the published length;
    the generator's ``final_seq_length``: the same digits sampled at that many
    points); for ``digits``: ``size`` (default 8: images resampled bilinearly to
    ``size x size``, ``size * size`` steps for the sequence layouts).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _LOADERS[name](split, data_dir, **kwargs)


def _resized_info(name: str, info: DatasetInfo, kwargs: dict) -> DatasetInfo:
    """``info`` of an embedded dataset generated at the resolution ``kwargs`` ask for (``length`` / ``size``)."""
    if name.startswith("mnist1d"):
        return replace(info, input_size=(_resolution(kwargs.get("length", MNIST1D_LENGTH), "length", 2),))
    if name.startswith("digits"):
        size = _resolution(kwargs.get("size", DIGITS_SIZE), "size", 1)
        return replace(info, input_size=(size, size) if info.dims == 2 else (size * size,))
    return info


def dataset_info(name: str, data_dir: str | os.PathLike | None = None, **kwargs) -> DatasetInfo:
    """Number of classes, input channels, input size and spatial dims of dataset ``name``."""
    _check_name(name)
    if name in _STATIC_INFO:
        return _resized_info(name, _STATIC_INFO[name], kwargs)
    ds = load_dataset(name, "train", data_dir, **kwargs)
    return replace(ds.info)
