"""oncoscale.comm: world bootstrap, backends (torch.distributed, MPI) and sparse collectives.

Follows SparCML (Renggli et al., SC19): :func:`init` -> :class:`World` (ranks, groups,
:class:`Layout`), :class:`SparseVector`, :func:`sparse_allreduce`, :func:`sparse_allgather`,
value codecs (fp16/bf16/QSGD), gradient compressors with error feedback and a DDP comm hook.
"""

from oncoscale.comm._backend import CommStats, Work
from oncoscale.comm._launch import LaunchInfo, discover
from oncoscale.comm.collectives import (
    choose_algorithm,
    last_algorithm,
    sparse_allgather,
    sparse_allreduce,
)
from oncoscale.comm.compress import (
    QSGD,
    BucketPacking,
    Compose,
    Compressor,
    ErrorFeedback,
    GradientCompression,
    LocalAdam,
    LocalTransform,
    MomentumCorrection,
    NoCompression,
    RandomK,
    Round,
    Threshold,
    TopK,
)
from oncoscale.comm.costmodel import ALGORITHMS, CostModel, calibrated
from oncoscale.comm.ddp import DDPCompressionState, ddp_comm_hook
from oncoscale.comm.quant import CastCodec, QSGDCodec, ValueCodec, get_codec
from oncoscale.comm.sparse import SparseVector, merge, prefers_dense
from oncoscale.comm.world import Group, Layout, World, default_world, init

__all__ = [
    "QSGD", "BucketPacking", "Compose", "Compressor", "LocalAdam", "Round",
    "LocalTransform", "MomentumCorrection",
    "DDPCompressionState", "ErrorFeedback",
    "GradientCompression", "NoCompression", "RandomK", "Threshold", "TopK", "ddp_comm_hook",
    "ALGORITHMS", "CastCodec", "CommStats", "CostModel", "Group", "LaunchInfo", "Layout",
    "QSGDCodec", "SparseVector", "ValueCodec", "Work", "World", "calibrated",
    "choose_algorithm", "default_world", "discover", "get_codec", "init", "last_algorithm",
    "merge", "prefers_dense", "sparse_allgather", "sparse_allreduce",
]
