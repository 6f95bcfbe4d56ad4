"""oncoscale.datasets: deterministic synthetic data written in the real file formats.

- :func:`make_synthetic_project` (``oncoscale.datasets.gdc``): a GDC RNA-seq project,
  STAR-Counts TSV files + sample sheet, with matched tumour/normal participants.
- :func:`write_patch_folder` (``oncoscale.datasets.patches``): H&E-like pathology patches
  as an image folder with one sub-folder per class.

Names are imported lazily (the generators pull in numpy/pandas/Pillow only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "make_synthetic_project": "gdc",
    "SyntheticGDCProject": "gdc",
    "render_patch": "patches",
    "synthetic_patches": "patches",
    "write_patch_folder": "patches",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oncoscale.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"oncoscale.datasets.{module}"), name)
    globals()[name] = value
    return value
