"""Patch loaders (PatchCamelyon HDF5, class image folders, NumPy), splits, normalisation, flips.

Every loader returns a :class:`PatchSet`: ``x`` of shape ``(N, H, W, 3)`` uint8 (RGB, channels
last, as stored on disk) and ``y`` of shape ``(N,)`` int64 in ``[0, n_classes)``. Bad input
raises :class:`oncoscale.errors.InputError` naming the file; heavy class imbalance warns with
:class:`ClassImbalanceWarning`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoscale.errors import ConfigurationError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ClassImbalanceWarning(UserWarning):
    """The rarest class holds far fewer patches than the most common one."""


@dataclass
class PatchSet:
    """Patches in memory: ``x`` (N, H, W, 3) uint8 RGB, ``y`` (N,) int64 labels."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    source: str = ""
    files: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) as the networks see it."""
        return (int(self.x.shape[3]), int(self.x.shape[1]), int(self.x.shape[2]))

    def subset(self, idx: np.ndarray) -> PatchSet:
        files = None if self.files is None else [self.files[i] for i in idx]
        return PatchSet(self.x[idx], self.y[idx], list(self.classes), self.source, files)


# --------------------------------------------------------------------------- validation

def _check_images(x: np.ndarray, path: str | os.PathLike[str] | None, what: str = "x") -> None:
    if x.ndim != 4 or x.shape[3] != 3:
        raise InputError(f"expected `{what}` of shape N x H x W x 3 (RGB, channels last), "
                         f"found shape {tuple(x.shape)}", path=path)
    if x.shape[0] == 0:
        raise InputError(f"`{what}` holds no images", path=path)
    if x.dtype != np.uint8:
        raise InputError(f"expected `{what}` of dtype uint8 (0-255), found {x.dtype}", path=path)


def _check_labels(y: np.ndarray, n: int, n_classes: int | None,
                  path: str | os.PathLike[str] | None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1:
        if int(np.prod(y.shape[1:])) != 1:
            raise InputError(f"expected labels of shape N or N x 1 x 1 x 1, found {y.shape}",
                             path=path)
        y = y.reshape(y.shape[0])
    if y.shape[0] != n:
        raise InputError(f"expected {n} labels (one per image), found {y.shape[0]}", path=path)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) \
                and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise InputError(f"expected integer class labels, found dtype {y.dtype}", path=path)
    y = y.astype(np.int64)
    k = n_classes if n_classes is not None else int(y.max()) + 1
    bad = np.flatnonzero((y < 0) | (y >= k))
    if bad.size:
        raise InputError(f"label {int(y[bad[0]])} at index {int(bad[0])} is out of range "
                         f"[0, {k}) ({bad.size} labels out of range)", path=path)
    return y


def check_balance(y: np.ndarray, classes: list[str], ratio: float = 5.0,
                  path: str | os.PathLike[str] | None = None) -> None:
    """Raise on an empty class; warn when ``max count / min count > ratio``."""
    counts = np.bincount(y, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise InputError(f"class(es) {empty} hold no patches; every class needs at least one",
                         path=path)
    if counts.max() / counts.min() > ratio:
        detail = ", ".join(f"{c}={n}" for c, n in zip(classes, counts, strict=True))
        warnings.warn(f"{path or 'patches'}: heavy class imbalance ({detail}); accuracy will "
                      "flatter the majority class, consider metric='auc'",
                      ClassImbalanceWarning, stacklevel=3)


# --------------------------------------------------------------------------- loaders

def load_pcam_h5(x_path: str | os.PathLike[str], y_path: str | os.PathLike[str] | None = None,
                 *, limit: int | None = None, balance_ratio: float = 5.0) -> PatchSet:
    """Read PatchCamelyon HDF5: dataset ``x`` (N x 96 x 96 x 3 uint8) and ``y`` (labels).

    PCam ships ``*_x.h5`` and ``*_y.h5`` separately (``y`` of shape N x 1 x 1 x 1); pass both,
    or one file holding both datasets. ``limit`` reads only the first ``limit`` patches.
    """
    import h5py

    x_path = Path(x_path)
    y_path = Path(y_path) if y_path is not None else x_path

    def _read(path: Path, key: str) -> np.ndarray:
        if not path.is_file():
            raise InputError("file not found", path=path)
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise InputError(f"expected an HDF5 dataset named '{key}', found "
                                     f"{sorted(f.keys())}", path=path)
                ds = f[key]
                return np.asarray(ds[:limit] if limit is not None else ds[()])
        except InputError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"not a readable HDF5 file ({exc})", path=path) from exc

    x = _read(x_path, "x")
    _check_images(x, x_path)
    y = _check_labels(_read(y_path, "y"), x.shape[0], None, y_path)
    k = max(2, int(y.max()) + 1)
    classes = [str(i) for i in range(k)]
    check_balance(y, classes, balance_ratio, y_path)
    return PatchSet(x, y, classes, str(x_path))


def load_image_folder(root: str | os.PathLike[str], *, size: int | None = None,
                      balance_ratio: float = 5.0) -> PatchSet:
    """Read ``root/<class>/<image>`` (PNG, JPEG or TIFF) with Pillow; sorted class names.

    All images must share one size unless ``size`` is given (then each is resized to
    ``size x size``). Grey or RGBA images are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise InputError("expected a folder with one sub-folder per class", path=root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError("expected one sub-folder per class, found none", path=root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    shape: tuple[int, ...] | None = None
    for label, name in enumerate(classes):
        paths = sorted(p for p in (root / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"class '{name}' holds no images ({', '.join(IMAGE_SUFFIXES)})",
                             path=root / name)
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.load()
                    im = im.convert("RGB")
                    if size is not None and im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"corrupt or unreadable image ({exc})", path=p) from exc
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise InputError(f"expected an image of {shape[1]} x {shape[0]} px like the "
                                 f"others, found {arr.shape[1]} x {arr.shape[0]} "
                                 "(pass size= to resize)", path=p)
            images.append(arr)
            labels.append(label)
            files.append(str(p))
    y = np.asarray(labels, dtype=np.int64)
    check_balance(y, classes, balance_ratio, root)
    return PatchSet(np.stack(images), y, classes, str(root), files)


def load_numpy(x: np.ndarray | str | os.PathLike[str],
               y: np.ndarray | str | os.PathLike[str] | None = None, *,
               classes: list[str] | None = None, balance_ratio: float = 5.0) -> PatchSet:
    """Arrays, ``.npy`` files or one ``.npz`` (keys ``x`` and ``y``) -> :class:`PatchSet`.

    ``x``: N x H x W x 3 uint8; ``y``: N integer labels in ``[0, len(classes))``.
    """
    x_src = None if isinstance(x, np.ndarray) else Path(x)
    y_src = None if y is None or isinstance(y, np.ndarray) else Path(y)

    def _load(path: Path, key: str) -> np.ndarray:
        if not path.is_file():
            raise InputError("file not found", path=path)
        try:
            obj = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"not a readable .npy/.npz file ({exc})", path=path) from exc
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                if key not in obj.files:
                    raise InputError(f"expected an array named '{key}', found {obj.files}",
                                     path=path)
                return obj[key]
        return obj

    xa = x if x_src is None else _load(x_src, "x")
    if y is None:
        if x_src is None or x_src.suffix != ".npz":
            raise InputError("labels missing: pass y, or an .npz holding 'x' and 'y'",
                             path=x_src)
        ya, y_where = _load(x_src, "y"), x_src
    else:
        ya = y if y_src is None else _load(y_src, "y")
        y_where = y_src
    _check_images(np.asarray(xa), x_src)
    xa = np.asarray(xa)
    k = len(classes) if classes is not None else None
    ya = _check_labels(ya, xa.shape[0], k, y_where)
    if classes is None:
        classes = [str(i) for i in range(max(2, int(ya.max()) + 1))]
    check_balance(ya, classes, balance_ratio, y_where or x_src)
    return PatchSet(xa, ya, list(classes), str(x_src or "<array>"))


def load_patches(source: str | os.PathLike[str], *, labels: str | None = None,
                 size: int | None = None, limit: int | None = None,
                 balance_ratio: float = 5.0) -> PatchSet:
    """Pick the loader from the path: folder -> images, ``.h5/.hdf5`` -> PCam, ``.npy/.npz``."""
    p = Path(source)
    if p.is_dir():
        return load_image_folder(p, size=size, balance_ratio=balance_ratio)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return load_pcam_h5(p, labels, limit=limit, balance_ratio=balance_ratio)
    if suffix in (".npy", ".npz"):
        return load_numpy(p, labels, balance_ratio=balance_ratio)
    if not p.exists():
        raise InputError("file or folder not found", path=p)
    raise InputError("unknown patch format: expected a class folder, .h5/.hdf5, .npy or .npz",
                     path=p)


# --------------------------------------------------------------------------- splits

@dataclass
class Splits:
    """Train / validation / test :class:`PatchSet` objects from one source."""

    train: PatchSet
    val: PatchSet
    test: PatchSet


def split_patches(data: PatchSet, val: float = 0.2, test: float = 0.1, seed: int = 0,
                  stratify: bool = True) -> Splits:
    """Stratified random split (fractions of N); every split keeps at least one patch."""
    if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigurationError(f"need 0 < val, 0 <= test and val + test < 1; got val={val}, "
                                 f"test={test}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    groups = [np.flatnonzero(data.y == c) for c in np.unique(data.y)] if stratify \
        else [np.arange(len(data))]
    for g in groups:
        g = rng.permutation(g)
        n_val, n_test = int(round(val * len(g))), int(round(test * len(g)))
        parts[1].append(g[:n_val])
        parts[2].append(g[n_val:n_val + n_test])
        parts[0].append(g[n_val + n_test:])
    idx = [np.sort(np.concatenate(p)) for p in parts]
    if len(idx[0]) == 0 or len(idx[1]) == 0:
        raise ConfigurationError(f"{len(data)} patches are too few for a train/val split")
    return Splits(data.subset(idx[0]), data.subset(idx[1]), data.subset(idx[2]))


# --------------------------------------------------------------------------- tensors

def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in units of [0, 1] intensity."""
    xf = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return xf.mean(0).tolist(), np.maximum(xf.std(0), 1e-3).tolist()


def to_tensor(x: np.ndarray, mean: list[float], std: list[float]) -> Any:
    """uint8 (N, H, W, 3) -> float32 torch tensor (N, 3, H, W), normalised per channel."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((t - m) / s).contiguous()


def augment_batch(x: Any, generator: Any, flips: bool = True, rot90: bool = True) -> Any:
    """Random horizontal/vertical flips and 90-degree rotations, per sample.

    ``x``: (B, C, H, W) tensor; rotations need H == W and are skipped otherwise.
    """
    import torch

    if flips:
        m = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)
        m = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(2), x)
    if rot90 and x.shape[2] == x.shape[3]:
        m = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.transpose(2, 3).flip(3), x)
    return x
