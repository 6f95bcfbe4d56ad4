"""oncoscale: scalable deep learning for cancer research."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "comm", "parallel", "models", "expression", "saliency",
    "topology", "nas", "datasets", "report", "errors",
)

__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    """Import sub-packages lazily so `import oncoscale` stays cheap (no torch unless needed)."""
    if name in _SUBMODULES:
        module = importlib.import_module(f"oncoscale.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'oncoscale' has no attribute {name!r}")
