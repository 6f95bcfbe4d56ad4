"""Deterministic synthetic H&E-like pathology patches, written as a PNG image folder.

Each patch is ``size x size`` RGB (default 100 x 100) and shows:

* pink stroma: a smooth low-frequency texture with fibre-like streaks (eosin),
* purple tumour nuclei: large, pale, irregular ellipses with a darker rim (haematoxylin),
* lymphocytes: small (radius 2.5-3.5 px), very dark, round nuclei.

The label follows the tumour-infiltrating-lymphocyte definition: a patch is positive
(class ``"til_positive"``, label 1) when it holds two or more lymphocytes, otherwise negative
(``"til_negative"``, label 0). Positive and negative patches are drawn with equal probability;
negatives hold 0 or 1 lymphocyte, positives 2 to 6, so the hard cases sit at the 1 vs 2 border.

Every patch depends only on ``(seed, index)``, so the folder is identical on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from oncoscale.errors import ConfigurationError

CLASS_NAMES = ("til_negative", "til_positive")

_STROMA = np.array([236.0, 170.0, 200.0])  # pink (eosin)
_TUMOUR = np.array([150.0, 95.0, 175.0])  # pale purple nucleus
_TUMOUR_RIM = np.array([105.0, 55.0, 140.0])
_LYMPH = np.array([45.0, 20.0, 85.0])  # dark blue-purple


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1], shape (size, size)."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def render_patch(rng: np.random.Generator, n_lymphocytes: int, size: int = 100) -> np.ndarray:
    """Draw one patch holding exactly ``n_lymphocytes`` lymphocytes.

    Returns a ``(size, size, 3)`` uint8 RGB array.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # stroma: low-frequency intensity plus oriented fibres
    base = 0.75 + 0.25 * _smooth_noise(rng, size, 4)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.25, 0.45)
    fibres = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle))
                                + 3.0 * _smooth_noise(rng, size, 6))
    shade = base * (0.88 + 0.12 * fibres)
    img = _STROMA[None, None, :] * shade[..., None]

    # tumour nuclei: large pale ellipses with a darker rim
    for _ in range(int(rng.integers(2, 7))):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(6, 11, 2) * max(size / 100.0, 0.4)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        r = np.sqrt(u * u + v * v) + 0.15 * (_smooth_noise(rng, size, 5) - 0.5)
        inside = r < 1.0
        rim = (r >= 0.8) & inside
        img[inside] = _TUMOUR * rng.uniform(0.9, 1.1)
        img[rim] = _TUMOUR_RIM
        # chromatin speckles
        speck = inside & (rng.random((size, size)) < 0.08)
        img[speck] = _TUMOUR_RIM * 0.9

    # lymphocytes: small dark round nuclei, kept apart so they can be counted
    sep2 = 100.0 if size >= 64 else 49.0  # squared distance between lymphocyte centres
    centres: list[tuple[float, float]] = []
    attempts = 0
    while len(centres) < n_lymphocytes and attempts < 1000:
        attempts += 1
        cy, cx = rng.uniform(5, size - 5, 2)
        if all((cy - a) ** 2 + (cx - b) ** 2 > sep2 for a, b in centres):
            centres.append((cy, cx))
    if len(centres) < n_lymphocytes:  # pragma: no cover - only for absurd counts
        raise ConfigurationError(f"could not place {n_lymphocytes} lymphocytes in {size} px")
    for cy, cx in centres:
        rad = rng.uniform(2.5, 3.5)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        img[d < rad] = _LYMPH * rng.uniform(0.8, 1.2)
        halo = (d >= rad) & (d < rad + 1.0)
        img[halo] = 0.5 * img[halo] + 0.5 * _LYMPH

    img = img + rng.normal(0.0, 6.0, img.shape)  # scanner noise
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_patches(n: int, size: int = 100, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` patches in memory.

    Returns ``(x, y, counts)``: x ``(n, size, size, 3)`` uint8, y ``(n,)`` int64 labels
    (1 = two or more lymphocytes), counts ``(n,)`` the number of lymphocytes drawn.
    """
    if n < 1 or size < 32:
        raise ConfigurationError(f"need n >= 1 and size >= 32, got n={n}, size={size}")
    x = np.empty((n, size, size, 3), dtype=np.uint8)
    y = np.empty(n, dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        positive = rng.random() < 0.5
        count = int(rng.integers(2, 7)) if positive else int(rng.integers(0, 2))
        x[i] = render_patch(rng, count, size)
        y[i] = int(count >= 2)
        counts[i] = count
    return x, y, counts


def write_patch_folder(out_dir: str | os.PathLike[str], n: int = 1000, size: int = 100,
                       seed: int = 0) -> Path:
    """Write ``n`` synthetic patches as ``out_dir/<class>/patch_<i>.png``.

    The folder is the format read by :func:`oncoscale.nas.data.load_image_folder`
    (one sub-folder per class, sorted names give the label order). Returns ``out_dir``.
    """
    from PIL import Image

    from oncoscale._io import atomic_path

    out = Path(out_dir)
    x, y, _ = synthetic_patches(n, size, seed)
    for name in CLASS_NAMES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = out / CLASS_NAMES[int(y[i])] / f"patch_{i:05d}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(x[i]).save(tmp, format="PNG")
    return out
