"""Which code path a tensor takes: numpy for host tensors (a fraction of torch's per-call
cost on small arrays), torch ops for tensors on any other device.

``TORCH_OPS_ONLY = True`` sends host tensors down the torch-op path too, so that the CPU test
suite runs the code CUDA tensors take (the comm battery sets it under
``ONCOSCALE_TEST_TORCH_PATHS=1``).
"""

from __future__ import annotations

import torch

TORCH_OPS_ONLY = False


def numpy_path(t: torch.Tensor) -> bool:
    """May ``t`` be read and written through numpy (a host tensor, and the switch is off)?"""
    return t.device.type == "cpu" and not TORCH_OPS_ONLY
