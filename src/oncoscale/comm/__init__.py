"""oncoscale.comm: world bootstrap, backends (torch.distributed, MPI) and sparse collectives.

Follows SparCML (Renggli et al., SC19). See :func:`init`, :class:`World`, :class:`Group`,
:class:`Layout`.
"""

from oncoscale.comm._backend import CommStats, Work
from oncoscale.comm._launch import LaunchInfo, discover
from oncoscale.comm.world import Group, Layout, World, default_world, init

__all__ = [
    "CommStats", "Group", "LaunchInfo", "Layout", "Work", "World",
    "default_world", "discover", "init",
]
