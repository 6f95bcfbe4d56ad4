"""oncoscale.models: network architectures (autoencoder; ResNet family and NAS genome decoding
live in their own modules beside it).

Names are imported lazily so ``import oncoscale.models`` does not pull in every architecture.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it; other modules add their own rows.
_EXPORTS: dict[str, str] = {
    "Autoencoder": "autoencoder",
    "TiedLinear": "autoencoder",
    "latent": "autoencoder",
    "pearson_correlation": "autoencoder",
    "ResNet": "resnet",
    "resnet_depths": "resnet",
    "build_network": "genome_net",
    "GenomeRejectedError": "genome_net",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oncoscale.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"oncoscale.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
