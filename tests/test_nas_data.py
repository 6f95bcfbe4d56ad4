"""Patch loaders on well-formed and broken files of each format; splits; synthetic patches."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from oncoscale.datasets.patches import CLASS_NAMES, synthetic_patches, write_patch_folder
from oncoscale.errors import InputError
from oncoscale.nas.data import (
    ClassImbalanceWarning,
    PatchSet,
    augment_batch,
    load_image_folder,
    load_numpy,
    load_patches,
    load_pcam_h5,
    split_patches,
)


def _imgs(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- PCam HDF5

def test_pcam_separate_files_with_nx1x1x1_labels(tmp_path):
    x = _imgs(10, 96)
    y = np.array([0, 1] * 5, dtype=np.uint8).reshape(10, 1, 1, 1)
    with h5py.File(tmp_path / "split_x.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "split_y.h5", "w") as f:
        f["y"] = y
    ps = load_pcam_h5(tmp_path / "split_x.h5", tmp_path / "split_y.h5")
    assert ps.x.shape == (10, 96, 96, 3) and ps.x.dtype == np.uint8
    np.testing.assert_array_equal(ps.x, x)
    np.testing.assert_array_equal(ps.y, y.ravel())
    assert ps.image_shape == (3, 96, 96)
    part = load_patches(tmp_path / "split_x.h5", labels=str(tmp_path / "split_y.h5"), limit=4)
    assert len(part) == 4


def test_pcam_one_file_and_broken_files(tmp_path):
    good = tmp_path / "both.h5"
    with h5py.File(good, "w") as f:
        f["x"] = _imgs(6)
        f["y"] = np.array([0, 1, 0, 1, 0, 1])
    assert len(load_pcam_h5(good)) == 6

    noy = tmp_path / "noy.h5"
    with h5py.File(noy, "w") as f:
        f["x"] = _imgs(4)
    with pytest.raises(InputError, match="noy.h5.*named 'y'"):
        load_pcam_h5(noy)

    grey = tmp_path / "grey.h5"
    with h5py.File(grey, "w") as f:
        f["x"] = np.zeros((4, 12, 12), np.uint8)
        f["y"] = np.zeros(4, np.int64)
    with pytest.raises(InputError, match=r"grey.h5.*N x H x W x 3.*\(4, 12, 12\)"):
        load_pcam_h5(grey)

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not hdf5" * 20)
    with pytest.raises(InputError, match="corrupt.h5.*HDF5"):
        load_pcam_h5(corrupt)

    badlab = tmp_path / "badlab.h5"
    with h5py.File(badlab, "w") as f:
        f["x"] = _imgs(3)
        f["y"] = np.array([[0, 1], [1, 0], [0, 0]])
    with pytest.raises(InputError, match="badlab.h5.*N x 1 x 1 x 1"):
        load_pcam_h5(badlab)

    neg = tmp_path / "neg.h5"
    with h5py.File(neg, "w") as f:
        f["x"] = _imgs(3)
        f["y"] = np.array([0, -1, 1])
    with pytest.raises(InputError, match="neg.h5.*label -1 at index 1 is out of range"):
        load_pcam_h5(neg)
    with pytest.raises(InputError, match="missing.h5.*not found"):
        load_pcam_h5(tmp_path / "missing.h5")


# --------------------------------------------------------------------------- image folders

def _write(path, arr, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def test_image_folder_png_jpeg_tiff(tmp_path):
    imgs = _imgs(6, 16)
    ramp = np.linspace(0, 255, 16).astype(np.uint8)
    imgs[3] = np.stack([ramp[None, :].repeat(16, 0), ramp[:, None].repeat(16, 1),
                        np.full((16, 16), 128, np.uint8)], -1)  # smooth: JPEG keeps it
    _write(tmp_path / "a" / "0.png", imgs[0], "PNG")
    _write(tmp_path / "a" / "1.tif", imgs[1], "TIFF")
    _write(tmp_path / "a" / "2.tiff", imgs[2], "TIFF")
    _write(tmp_path / "b" / "3.jpg", imgs[3], "JPEG")
    _write(tmp_path / "b" / "4.jpeg", imgs[4], "JPEG")
    Image.fromarray(imgs[5][..., 0]).save(tmp_path / "b" / "5.png")  # grey -> RGB
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    ps = load_image_folder(tmp_path)
    assert ps.classes == ["a", "b"]
    assert ps.x.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(ps.y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ps.x[0], imgs[0])  # PNG and TIFF are lossless
    np.testing.assert_array_equal(ps.x[1], imgs[1])
    assert np.abs(ps.x[3].astype(int) - imgs[3]).mean() < 8  # JPEG is lossy
    # resize option makes mixed sizes loadable
    _write(tmp_path / "b" / "6.png", _imgs(1, 20)[0], "PNG")
    with pytest.raises(InputError, match=r"6.png.*16 x 16 px.*20 x 20"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=8).x.shape == (7, 8, 8, 3)


def test_image_folder_errors(tmp_path):
    _write(tmp_path / "pos" / "0.png", _imgs(1)[0], "PNG")
    (tmp_path / "neg").mkdir()
    with pytest.raises(InputError, match=r"neg: class 'neg' holds no images"):
        load_image_folder(tmp_path)
    _write(tmp_path / "neg" / "1.png", _imgs(1)[0], "PNG")
    (tmp_path / "neg" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match="broken.png: corrupt or unreadable image"):
        load_image_folder(tmp_path)
    trunc = tmp_path / "neg" / "broken.png"
    _write(trunc, _imgs(1, 12)[0], "PNG")
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])  # truncated file
    with pytest.raises(InputError, match="broken.png"):
        load_image_folder(tmp_path)
    with pytest.raises(InputError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "pos")
    with pytest.raises(InputError, match="unknown patch format"):
        load_patches(tmp_path / "neg" / "1.png")


def test_imbalance_warns(tmp_path):
    x = _imgs(60)
    y = np.r_[np.zeros(56, int), np.ones(4, int)]
    with pytest.warns(ClassImbalanceWarning, match="imbalance.*0=56, 1=4"):
        load_numpy(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_numpy(x, np.arange(60) % 2)


# --------------------------------------------------------------------------- numpy

def test_numpy_formats_and_errors(tmp_path):
    x, y = _imgs(8), np.arange(8) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ps = load_patches(tmp_path / "d.npz")
    np.testing.assert_array_equal(ps.x, x)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(float))  # integral floats are accepted
    assert load_patches(tmp_path / "x.npy", labels=str(tmp_path / "y.npy")).y.dtype == np.int64
    with pytest.raises(InputError, match="x.npy: labels missing"):
        load_numpy(tmp_path / "x.npy")
    np.save(tmp_path / "short.npy", y[:5])
    with pytest.raises(InputError, match="short.npy: expected 8 labels.*found 5"):
        load_numpy(tmp_path / "x.npy", tmp_path / "short.npy")
    with pytest.raises(InputError, match=r"label 2 at index 3 is out of range \[0, 2\)"):
        load_numpy(x, np.array([0, 1, 0, 2, 1, 0, 1, 0]), classes=["n", "p"])
    with pytest.raises(InputError, match="empty class|hold no patches"):
        load_numpy(x, np.zeros(8, int), classes=["n", "p"])
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(InputError, match="f.npy: expected `x` of dtype uint8"):
        load_numpy(tmp_path / "f.npy", y)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="bad.npy: not a readable"):
        load_numpy(tmp_path / "bad.npy", y)
    np.savez(tmp_path / "noy.npz", x=x)
    with pytest.raises(InputError, match="noy.npz.*'y'"):
        load_numpy(tmp_path / "noy.npz")
    with pytest.raises(InputError, match=r"N x H x W x 3.*\(8, 12, 12, 4\)"):
        load_numpy(np.zeros((8, 12, 12, 4), np.uint8), y)


# --------------------------------------------------------------------------- splits, tensors

def test_split_stratified_and_disjoint():
    ps = PatchSet(_imgs(100), np.r_[np.zeros(70, int), np.ones(30, int)], ["n", "p"])
    sp = split_patches(ps, val=0.2, test=0.1, seed=3)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (70, 20, 10)
    assert sp.val.y.sum() == 6 and sp.test.y.sum() == 3
    keys = [x.tobytes() for part in (sp.train, sp.val, sp.test) for x in part.x]
    assert len(set(keys)) == 100


def test_augment_is_a_symmetry_of_each_image():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    for i in range(2):
        variants = []
        for k in range(4):
            r = torch.rot90(x[i], k, (1, 2))
            variants += [r, r.flip(2)]
        assert any(torch.equal(out[i], v) for v in variants)


def test_synthetic_patches_deterministic_and_labelled(tmp_path):
    x1, y1, c1 = synthetic_patches(40, size=100, seed=5)
    x2, y2, _ = synthetic_patches(40, size=100, seed=5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, (c1 >= 2).astype(int))
    assert 10 <= y1.sum() <= 30 and x1.shape == (40, 100, 100, 3)
    # lymphocytes are the darkest structures: positives have more very dark pixels
    dark = (x1.astype(int).sum(-1) < 200).sum((1, 2))
    assert dark[y1 == 1].mean() > 2 * dark[y1 == 0].mean()
    root = write_patch_folder(tmp_path / "p", n=20, size=32, seed=1)
    ps = load_image_folder(root)
    assert ps.classes == list(CLASS_NAMES)
    x3, y3, _ = synthetic_patches(20, size=32, seed=1)
    order = np.argsort([int(f.rsplit("_", 1)[1][:5]) for f in ps.files])
    np.testing.assert_array_equal(ps.x[order], x3)
    np.testing.assert_array_equal(ps.y[order], y3)
