"""Alpha-beta cost model of the sparse allreduce algorithms, calibrated on the running world.

``alpha`` is the latency of one point-to-point message (s), ``beta`` the time per byte
(s/B); the engine's own dense allreduce and allgather get their own (alpha, beta) since
their implementations differ from a chain of messages, and ``gamma_*`` price local work
(merging sparse streams, touching dense entries), scaled by the ranks per core of the
group's busiest node (ranks that share cores compute at a fraction of the rate one rank
measures alone; the exchanges and engine calls are timed with every rank active, so they
carry the sharing already). Fill-in is predicted as if the index
sets were independent and uniform: the sum of m vectors of density d has
``n * (1 - (1 - d)**m)`` non-zeros (SparCML, section 4).

The calibration is collective over the group, takes well under a second, is agreed by all
ranks (median over ranks) and cached in memory per world and on disk in
``$ONCOSCALE_CACHE_DIR`` (default ``~/.cache/oncoscale``) as ``comm-costmodel.json``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from oncoscale._io import atomic_write_text
from oncoscale.comm._launch import usable_cores
from oncoscale.comm.indexcodec import packed_bytes, wire_prefers_dense

if TYPE_CHECKING:  # pragma: no cover
    from oncoscale.comm.world import Group

ALGORITHMS = ("recursive_doubling", "split_allgather", "dsar", "dense", "allgather")
AUTO_CANDIDATES = ("recursive_doubling", "split_allgather", "dsar", "dense", "allgather")
HEADER_BYTES = 16
# a sparse algorithm must be predicted this much faster than the engine's dense allreduce:
# the model does not price every copy (at 4 ranks on 2 cores, before the gammas were scaled
# by ranks per core, it predicted DSAR at 1M x 10 % in 7 ms, which took 16 ms against
# dense's 9 ms)
DENSE_MARGIN = 0.6


@dataclass(frozen=True)
class Prediction:
    """Predicted critical-path time (s) and payload bytes sent by one rank."""

    seconds: float
    bytes_per_rank: float


@dataclass(frozen=True)
class CostModel:
    """Calibrated constants (seconds, seconds per byte, seconds per entry)."""

    alpha: float = 5e-5
    beta: float = 1e-9
    alpha_ar: float = 1e-4
    beta_ar: float = 2e-9
    alpha_ag: float = 1e-4
    beta_ag: float = 1e-9
    gamma_sparse: float = 5e-8
    gamma_dense: float = 1e-9
    gamma_scatter: float = 5e-9

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([getattr(self, f.name) for f in fields(self)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> CostModel:
        return cls(*[float(x) for x in t.tolist()])

    # -- prediction -------------------------------------------------------------------------
    def predict(self, algorithm: str, p: int, n: int, nnz: list[int], value_bytes: float,
                index_bytes: float, dense_bytes: float | None = None) -> Prediction:
        """Time and bytes per rank of ``algorithm`` for ``p`` ranks holding ``nnz[i]``
        non-zeros of an ``n``-vector. ``value_bytes`` is the wire width of a value (after a
        codec), ``dense_bytes`` the width of a value in the engine's dense allreduce."""
        if p <= 1 or n == 0:
            return Prediction(0.0, 0.0)
        vb, ib = value_bytes, index_bytes
        db = vb if dense_bytes is None else dense_bytes
        k = sum(nnz) / len(nnz)
        d = min(1.0, k / n)

        def fill(m: float) -> float:  # expected nnz of the sum of m vectors
            return n * (1.0 - (1.0 - d) ** m)

        def msg(x: float, length: float) -> float:  # sparse or dense, by the stream rule
            # indices travel as ib-byte integers or bucketed (indexcodec), the smaller
            wire_ib = x * ib if x <= 0 else min(x * ib, packed_bytes(x, int(length)))
            return min(x * vb + wire_ib, length * vb) + HEADER_BYTES

        def merge_cost(x: float, length: float) -> float:  # x entries into a length-vector
            dense = x * (ib + vb) >= length * vb
            return self.gamma_dense * length + self.gamma_scatter * x if dense \
                else self.gamma_sparse * x

        a, b = self.alpha, self.beta
        if algorithm == "dense":
            return Prediction(self.alpha_ar + self.beta_ar * n * db + self.gamma_dense * n
                              + self.gamma_scatter * k, 2 * (p - 1) / p * n * db)
        if algorithm == "allgather":
            total = sum(msg(x, n) for x in nnz)
            return Prediction(self.alpha_ag + self.beta_ag * total
                              + self.gamma_sparse * sum(nnz), total - msg(k, n))
        if algorithm == "recursive_doubling":
            p2 = 1 << (p.bit_length() - 1)
            extra = p - p2
            f = p / p2
            t = sent = 0.0
            if extra:
                t += 2 * a + b * msg(k, n) + merge_cost(2 * k, n)
            for i in range(int(math.log2(p2))):
                size = msg(fill(f * 2**i), n)
                # sizes are known from the header in the first round (without a fold)
                lat = a if i == 0 and not extra else 2 * a
                t += lat + b * size + merge_cost(2 * fill(f * 2**i), n)
                sent += size
            if extra:
                size = msg(fill(p), n)
                t += 2 * a + b * size
                sent += size * extra / p2
            return Prediction(t, sent)
        # split phase shared by split_allgather and dsar
        piece = msg(k / p, n / p)
        t1 = (p - 1) * a + b * (p - 1) * piece + merge_cost(k, n / p)
        sent1 = (p - 1) * piece
        if algorithm == "split_allgather":
            chunk = msg(fill(p) / p, n / p)
            t2 = 2 * self.alpha_ag + self.beta_ag * p * chunk + merge_cost(fill(p), n)
            return Prediction(t1 + t2, sent1 + (p - 1) * chunk)
        if algorithm == "dsar":
            chunk = n / p * vb + HEADER_BYTES
            # the dense gather passes over all n entries four times: densify the own block,
            # copy it into the message, receive, join the blocks into the result
            t2 = self.alpha_ag + self.beta_ag * p * chunk + 4 * self.gamma_dense * n
            return Prediction(t1 + t2, sent1 + (p - 1) * chunk)
        raise ValueError(algorithm)

    def choose(self, p: int, n: int, nnz: list[int], value_bytes: float, index_bytes: float,
               candidates: tuple[str, ...] = AUTO_CANDIDATES,
               dense_bytes: float | None = None, margin: float = DENSE_MARGIN) -> str:
        """The candidate with the smallest predicted time (ties: earlier in the list).

        Inputs that are dense by the stream rule go to the engine's dense allreduce. Else
        the engine's dense allreduce is the reference: a sparse algorithm must be predicted
        faster than ``margin`` x its time (:data:`DENSE_MARGIN`: the model does not price
        every copy, and the engine's own implementation is the safer bet when the two are
        close).
        """
        return _choose(self, p, n, tuple(nnz), value_bytes, index_bytes, tuple(candidates),
                       dense_bytes, margin)

    def _choose(self, p: int, n: int, nnz: tuple[int, ...], value_bytes: float,
                index_bytes: float, candidates: tuple[str, ...], dense_bytes: float | None,
                margin: float) -> str:
        k = sum(nnz) / len(nnz)
        if "dense" in candidates and wire_prefers_dense(k, n, value_bytes, index_bytes):
            return "dense"  # the inputs are dense by the (wire) stream rule: nothing to save
        times = {alg: self.predict(alg, p, n, list(nnz), value_bytes, index_bytes,
                                   dense_bytes).seconds for alg in candidates}
        best = min(candidates, key=times.__getitem__)
        if "dense" in times and best != "dense" and times[best] > margin * times["dense"]:
            return "dense"
        return best


# the same call pattern (e.g. TopK's fixed k every step) asks the same question every call
_choose = functools.lru_cache(maxsize=4096)(CostModel._choose)


# -- calibration -----------------------------------------------------------------------------
def _cache_file() -> Path:
    root = os.environ.get("ONCOSCALE_CACHE_DIR") or Path.home() / ".cache" / "oncoscale"
    return Path(root) / "comm-costmodel.json"


def _key(group: Group) -> str:
    # v4: gammas scaled by ranks per core; v3: gamma_scatter, the bucketed index format,
    # beta_ar at 4 MB; older entries are measured anew (the prediction formulas may change
    # freely: they read the constants)
    return f"v4|{group.backend}|p={group.size}|{socket.gethostname()}"


def _timeit(fn, repeats: int = 5) -> float:  # noqa: ANN001
    """Fastest of ``repeats`` runs: on a shared machine the minimum is the stable statistic."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


_MAX_CPUS = 1024  # CPU ids above this are not counted (a bitmap of 128 bytes per rank)


def _placement_row() -> np.ndarray:
    """This rank's node (crc32 of the host name, 4 bytes) and affinity bitmap (128 bytes)."""
    row = np.zeros(4 + _MAX_CPUS // 8, dtype=np.uint8)
    row[:4] = np.frombuffer(zlib.crc32(socket.gethostname().encode()).to_bytes(4, "little"),
                            dtype=np.uint8)
    for cpu in usable_cores():
        if cpu < _MAX_CPUS:
            row[4 + cpu // 8] |= np.uint8(1 << (cpu % 8))
    return row


def ranks_per_core(rows: list[np.ndarray]) -> float:
    """Ranks per usable core on the busiest node (>= 1), from every rank's
    :func:`_placement_row`: a node's cores are the union of its ranks' affinity sets."""
    nodes: dict[bytes, tuple[int, np.ndarray]] = {}
    for row in rows:
        key = bytes(row[:4])
        count, mask = nodes.get(key, (0, np.zeros_like(row[4:])))
        nodes[key] = (count + 1, mask | row[4:])
    return max(1.0, *(count / max(1, int(np.unpackbits(mask).sum()))
                      for count, mask in nodes.values()))


def _measure(group: Group) -> CostModel:
    from oncoscale.comm.collectives import _exchange  # local import: no cycle at load time

    backend = group.world._backend
    p, r = group.size, group.rank
    big = 1 << 20
    small_msg = torch.zeros(8, dtype=torch.uint8)
    big_msg = torch.zeros(big, dtype=torch.uint8)
    partner = r ^ 1
    if partner < p:
        _exchange(group, partner, big_msg)  # warm-up (connections, buffers)
        t_small = _timeit(lambda: _exchange(group, partner, small_msg, small_msg.numel()), 9)
        t_big = _timeit(lambda: _exchange(group, partner, big_msg, big_msg.numel()))
    else:
        t_small = t_big = 0.0
    backend.barrier(group, channel=True)
    one = torch.zeros(1)
    # the engine's allreduce is timed at 4 MB (a 1M-entry float32 vector): at 1 MB its fixed
    # costs on oversubscribed ranks inflated beta_ar ~1.5x and made auto shun it
    ar_bytes = 4 * big
    vec = torch.zeros(ar_bytes // 4)
    backend.allreduce(one, "sum", group, channel=True)
    ar_small = _timeit(lambda: backend.allreduce(one, "sum", group, channel=True), 9)
    ar_big = _timeit(lambda: backend.allreduce(vec, "sum", group, channel=True))
    part = torch.zeros(max(1, big // p), dtype=torch.uint8)
    ag_small = _timeit(lambda: backend.allgather(small_msg, group, channel=True))
    ag_big = _timeit(lambda: backend.allgather(part, group, channel=True))
    # local work: merging sparse streams and dense adds
    n = 1 << 22
    gen = torch.Generator().manual_seed(0)
    ia = torch.randperm(n, generator=gen)[: 1 << 16].sort().values
    ib = torch.randperm(n, generator=gen)[: 1 << 16].sort().values
    va = torch.ones(ia.numel())

    def sparse_merge() -> None:
        u, inv = torch.unique(torch.cat([ia, ib]), sorted=True, return_inverse=True)
        torch.zeros(u.numel()).index_add_(0, inv, torch.cat([va, va]))

    g_sparse = _timeit(sparse_merge) / (2 * ia.numel())
    dense_a, dense_b = torch.zeros(n), torch.ones(n)
    g_dense = _timeit(lambda: dense_a.add_(dense_b)) / n
    g_scatter = _timeit(lambda: dense_a.index_add_(0, ia, va)) / ia.numel()
    # timed alone (the fastest run), but in a collective every rank computes at once: ranks
    # that share cores get a share of one (8 ranks on 2 cores picked recursive doubling at
    # 1M x 10 %, 3x slower than the dense allreduce)
    place = backend.allgather(torch.from_numpy(_placement_row()), group, channel=True)
    share = ranks_per_core([t.numpy() for t in place])
    g_sparse, g_dense, g_scatter = g_sparse * share, g_dense * share, g_scatter * share
    # one message each way whose size the receiver knows: one latency
    alpha = max(t_small, 1e-7)
    beta = max((t_big - t_small) / big, 1e-12)
    model = CostModel(
        alpha=alpha, beta=beta,
        alpha_ar=max(ar_small, 1e-7), beta_ar=max((ar_big - ar_small) / ar_bytes, 1e-12),
        alpha_ag=max(ag_small, 1e-7),
        beta_ag=max((ag_big - ag_small) / (part.numel() * p), 1e-12),
        gamma_sparse=max(g_sparse, 1e-10), gamma_dense=max(g_dense, 1e-12),
        gamma_scatter=max(g_scatter, 1e-12))
    # agree on the median over ranks: one descheduled rank on a shared machine must not
    # set the model for everyone (identical data -> identical choice on every rank)
    table = torch.stack(backend.allgather(model.as_tensor(), group, channel=True))
    agreed = CostModel.from_tensor(table.median(dim=0).values)
    # one message cannot be slower than a whole small allreduce, which needs several
    return replace(agreed, alpha=min(agreed.alpha, agreed.alpha_ar))


def calibrated(group: Group, *, refresh: bool = False) -> CostModel:
    """The cost model of ``group`` (collective on first use: measured or read from cache)."""
    world = group.world
    mem_key = ("costmodel", group.ranks)
    if not refresh and mem_key in world.cache:
        return world.cache[mem_key]
    if group.size == 1:
        model = CostModel()
        world.cache[mem_key] = model
        return model
    backend = world._backend
    path = _cache_file()
    key = _key(group)
    n = len(fields(CostModel))
    msg = torch.zeros(n + 1, dtype=torch.float64)
    if group.rank == 0 and not refresh:
        try:
            stored = json.loads(path.read_text())[key]
            msg[0] = 1.0
            msg[1:] = CostModel(**stored).as_tensor()
        except (OSError, KeyError, ValueError, TypeError):
            pass
    backend.broadcast(msg, 0, group, channel=True)
    if msg[0] == 1.0:
        model = CostModel.from_tensor(msg[1:])
    else:
        model = _measure(group)
        if group.rank == 0:
            try:
                table = json.loads(path.read_text()) if path.exists() else {}
            except (OSError, ValueError):
                table = {}
            table[key] = asdict(model)
            # a read-only home is not an error: the in-memory copy still works
            with contextlib.suppress(OSError):
                atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True))
    world.cache[mem_key] = model
    return model
