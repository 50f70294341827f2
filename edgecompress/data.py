"""Datasets as plain numpy arrays: ``.npz`` (x, y), MNIST-style IDX folders, built-in ``digits``.

Torch-free, so the runtime-only bench can use it. A spec string names a dataset:

- ``path/to/file.npz``      arrays ``x`` (float32, preprocessed) and optional ``y`` (int64); for a
                            model with named inputs, one array per input name (``load_named_npz``)
- ``path/to/idx-folder``    train-/t10k- images and labels (.gz or raw); ``:train``/``:test``
                            (default ``test``) or ``:val`` picks the split; images become
                            ``(pixels/255 - 0.1307)/0.3081`` flattened
- ``digits``                scikit-learn's bundled 8x8 digits (``digits:train``/``digits:test``)
- ``fashion-mnist``         Debian's /usr/share/datasets/fashion-mnist (IDX)

Splits follow shared/DESIGN.md §7: MNIST ``train`` = first 55,000 training images, ``val`` = the
last 5,000, ``test`` = t10k. Digits: a fixed stratified 60/20/20 train/val/test split (seed 0).
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from edgecompress.errors import InputError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_TRAIN_SIZE = 55_000
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test")


Inputs = dict[str, np.ndarray]  # one batch of named model inputs, all sharing dimension 0
Batch = Union[np.ndarray, Mapping[str, np.ndarray]]


def num_samples(x: Batch) -> int:
    """Rows of an array, or of named arrays (their shared dimension 0)."""
    if isinstance(x, np.ndarray):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0]) if x else 0


def slice_inputs(x: Batch, start: int | None, stop: int | None) -> Batch:
    """Rows ``start:stop`` of an array or of each named array."""
    if isinstance(x, np.ndarray):
        return x[start:stop]
    return {name: array[start:stop] for name, array in x.items()}


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32 array, or named arrays for multi-input models) and optional labels ``y``
    (int64), with a name for reports."""

    x: Batch
    y: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return num_samples(self.x)

    def take(self, n: int | None) -> "Dataset":
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Dataset(slice_inputs(self.x, None, n), None if self.y is None else self.y[:n], f"{self.name}[:{n}]")

    def batches(self, size: int) -> "list[tuple[Batch, np.ndarray | None]]":
        """Consecutive (x, y) chunks of at most ``size`` samples."""
        return [(slice_inputs(self.x, i, i + size), None if self.y is None else self.y[i:i + size])
                for i in range(0, len(self), size)]


def _open_idx(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}") from exc


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (ubyte data) into an array of its declared shape."""
    raw = _open_idx(path)
    if len(raw) < 4:
        raise InputError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{path} is truncated: its header declares {ndim} dimensions")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise InputError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def _find_idx(folder: Path, prefix: str, kind: str) -> Path:
    for pattern in (f"{prefix}-{kind}-idx*-ubyte.gz", f"{prefix}-{kind}-idx*-ubyte", f"{prefix}-{kind}*"):
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    raise InputError(f"no {prefix}-{kind} IDX file in {folder} (expected e.g. {prefix}-{kind}-idx3-ubyte.gz)")


def mnist_normalize(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 ``(pixels/255 - mean)/std`` flattened to (n, h*w)."""
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def load_idx_folder(folder: Path, split: str = "test") -> Dataset:
    """An MNIST-style folder, one of ``train`` (first 55k), ``val`` (last 5k), ``test`` (t10k)."""
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(_find_idx(folder, prefix, "images"))
    labels = read_idx(_find_idx(folder, prefix, "labels")).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    if split == "train":
        images, labels = images[:MNIST_TRAIN_SIZE], labels[:MNIST_TRAIN_SIZE]
    elif split == "val":
        images, labels = images[MNIST_TRAIN_SIZE:], labels[MNIST_TRAIN_SIZE:]
    return Dataset(mnist_normalize(images), labels, f"{folder.name}:{split}")


DIGITS_TEST_NPZ = Path(__file__).with_name("datasets") / "digits_test.npz"


def _digits_x(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) / 16.0 - 0.5) / 0.5


def load_digits(split: str = "test") -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), pixels/16 standardized, fixed split. The
    test split ships with the package (``datasets/digits_test.npz``, 10 KB), so the runtime-only
    install can ``bench --data digits`` without scikit-learn."""
    if split == "test" and DIGITS_TEST_NPZ.is_file():
        with np.load(DIGITS_TEST_NPZ) as packed:
            return Dataset(np.ascontiguousarray(_digits_x(packed["pixels"])), packed["y"].astype(np.int64),
                           "digits:test")
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as exc:
        raise InputError(f"the built-in digits:{split} set needs scikit-learn: pip install scikit-learn "
                         "(the test split ships with edgecompress)") from exc
    bunch = _sk_digits()
    x = _digits_x(bunch.data)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n = len(y)
    cut_train, cut_val = int(n * 0.6), int(n * 0.8)
    idx = {"train": order[:cut_train], "val": order[cut_train:cut_val], "test": order[cut_val:]}[split]
    return Dataset(np.ascontiguousarray(x[idx]), y[idx], f"digits:{split}")


def load_npz(path: Path) -> Dataset:
    """A ``.npz`` with ``x`` and optional ``y``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise InputError(f"{path} has no array 'x' (found: {', '.join(archive.files) or 'none'})")
            x_raw = archive["x"]
            y_raw = archive["y"] if "y" in archive.files else None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:  # zip: unsupported version
        raise InputError(f"cannot read {path} as .npz: {exc or 'empty or truncated file'}") from exc
    x, y = _npz_arrays(path, x_raw, y_raw)
    if y is not None and y.shape[0] != x.shape[0]:
        raise InputError(f"{path}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    return Dataset(x, y, path.name)


def _npz_arrays(path: Path, x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` as float32 samples (a real-valued array with a sample axis), ``y`` as int64 class labels."""
    if x.dtype.kind not in "fiub" or x.ndim < 1:
        raise InputError(f"{path}: 'x' must be a real-valued array with a sample axis, got {x.dtype} of shape "
                         f"{x.shape}")
    if y is None:
        return x.astype(np.float32), None
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise InputError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    if y.ndim != 1:
        raise InputError(f"{path}: 'y' must be one label per sample (1-D), got shape {y.shape}")
    return x.astype(np.float32), y.astype(np.int64)


def load_named_npz(path: Path, names: list[str]) -> Dataset:
    """A ``.npz`` with one array per input name (dtypes kept) and optional ``y``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [n for n in names if n not in archive.files]
            if missing:
                raise InputError(f"{path} lacks array(s) {', '.join(missing)}: a model with inputs {', '.join(names)} "
                                 f"needs one array per input name (found: {', '.join(archive.files) or 'none'})")
            x = {n: np.asarray(archive[n]) for n in names}
            y = np.asarray(archive["y"]).astype(np.int64) if "y" in archive.files else None
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as .npz: {exc}") from exc
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in x.items()}
    if len(set(counts.values()) | ({y.shape[0]} if y is not None else set())) != 1:
        raise InputError(f"{path}: arrays have different sample counts {counts}" + ("" if y is None else f", y {len(y)}"))
    return Dataset(x, y, path.name)


def _split_spec(spec: str, default_split: str) -> tuple[str, str]:
    base, sep, split = spec.rpartition(":")
    if sep and split in SPLITS and base:
        return base, split
    return spec, default_split


def load_dataset(spec: str, default_split: str = "test") -> Dataset:
    """Resolve a dataset spec (see module docstring) into a :class:`Dataset`."""
    base, split = _split_spec(spec, default_split)
    if base == "digits":
        return load_digits(split)
    if base == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise InputError("Fashion-MNIST not found; on Debian: apt-get install dataset-fashion-mnist")
        return load_idx_folder(FASHION_MNIST_DIR, split)
    path = Path(base)
    if path.is_dir():
        return load_idx_folder(path, split)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    if not path.exists():
        raise InputError(f"dataset not found: {spec} (give a .npz, an MNIST-style IDX folder, or 'digits')")
    raise InputError(f"unsupported dataset {spec}: give a .npz with x/y, an MNIST-style IDX folder, or 'digits'")


def validation_spec(spec: str) -> str | None:
    """The spec of the validation split beside a training spec (``mnist`` -> ``mnist:val``,
    ``digits:train`` -> ``digits:val``); None for a single file (.npz), which has no split."""
    base, _ = _split_spec(spec, "train")
    if base in ("digits", "fashion-mnist") or Path(base).is_dir():
        return f"{base}:val"
    return None


def hold_out(data: Dataset, fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    """Split off the last ``fraction`` of ``data`` as a validation set: (rest, held out)."""
    n_val = max(1, round(len(data) * fraction))
    if len(data) - n_val < 1:
        raise InputError(f"{data.name} has {len(data)} samples: too few to hold out a validation split; "
                         "give one with --val")

    def part(rows: slice, label: str) -> Dataset:
        return Dataset(slice_inputs(data.x, rows.start, rows.stop), None if data.y is None else data.y[rows], f"{data.name}[{label}]")

    return part(slice(None, -n_val), f":-{n_val}"), part(slice(-n_val, None), f"-{n_val}:")

