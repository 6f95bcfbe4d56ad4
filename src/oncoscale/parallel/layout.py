"""The layout of ranks in a hybrid-parallel run: ``replicas x partitions``.

Ranks are numbered pipeline-major, as in HyPar-Flow: the ``P`` partitions of replica ``r``
are the consecutive ranks ``r*P .. r*P + P - 1``. Partition ``p`` of every replica forms
the *replica group* of that partition (gradients are allreduced there); the partitions of
one replica form its *pipeline* (activations and gradients travel point to point there).
"""

from __future__ import annotations

from dataclasses import dataclass

from oncoscale.errors import ConfigurationError


@dataclass(frozen=True)
class Layout:
    """Where one rank sits in a ``num_replicas x num_partitions`` grid of ranks."""

    num_replicas: int
    num_partitions: int
    rank: int

    def __post_init__(self) -> None:
        if self.num_replicas < 1 or self.num_partitions < 1:
            raise ConfigurationError(
                "num_replicas and num_partitions must be >= 1, found "
                f"{self.num_replicas} and {self.num_partitions}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigurationError(
                f"rank {self.rank} is outside a world of {self.world_size} ranks")

    @property
    def world_size(self) -> int:
        """``num_replicas * num_partitions``."""
        return self.num_replicas * self.num_partitions

    @property
    def replica_index(self) -> int:
        """Which replica (pipeline) this rank belongs to, ``0..R-1``."""
        return self.rank // self.num_partitions

    @property
    def partition_index(self) -> int:
        """Which partition (pipeline stage) this rank holds, ``0..P-1``."""
        return self.rank % self.num_partitions

    def rank_of(self, replica: int, partition: int) -> int:
        """Global rank of ``(replica, partition)``."""
        return replica * self.num_partitions + partition

    @property
    def pipeline_ranks(self) -> list[int]:
        """Global ranks of this rank's pipeline, ordered by partition."""
        return [self.rank_of(self.replica_index, p) for p in range(self.num_partitions)]

    @property
    def replica_ranks(self) -> list[int]:
        """Global ranks that hold the same partition in every replica."""
        return [self.rank_of(r, self.partition_index) for r in range(self.num_replicas)]

    @property
    def prev_rank(self) -> int | None:
        """Rank of the previous pipeline stage, or None on the first stage."""
        p = self.partition_index
        return None if p == 0 else self.rank_of(self.replica_index, p - 1)

    @property
    def next_rank(self) -> int | None:
        """Rank of the next pipeline stage, or None on the last stage."""
        p = self.partition_index
        last = self.num_partitions - 1
        return None if p == last else self.rank_of(self.replica_index, p + 1)

    @property
    def is_first_stage(self) -> bool:
        return self.partition_index == 0

    @property
    def is_last_stage(self) -> bool:
        return self.partition_index == self.num_partitions - 1
