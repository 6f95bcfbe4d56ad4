"""Sparse collectives (SparCML): sparse allreduce with three published algorithms, allgather.

Algorithms of :func:`sparse_allreduce` (p ranks, vector of n entries, k non-zeros per rank):

``recursive_doubling``
    static sparse recursive doubling: log2(p) rounds of pairwise exchange of the running
    sum, which fills in round by round and switches to dense by the stream rule. World
    sizes that are not powers of two fold the extra ranks into the first ones first and
    get the result back at the end.
``split_allgather``
    static sparse split-allgather: the index range is split in p contiguous pieces; every
    rank sends each owner its piece (sparse), the owner sums them, then the reduced pieces
    are allgathered (sparse or dense each, by the stream rule).
``dsar``
    dynamic sparse split + dense allgather: as above, but the reduced pieces are gathered
    as dense blocks (best when the sum has filled in).
``dense``
    the engine's dense allreduce of the densified vector.
``allgather``
    the naive approach: allgather every (index, value) stream and sum locally.
``auto``
    the eager allgather when every message fits the header, else the fastest by the
    calibrated alpha-beta model (:mod:`oncoscale.comm.costmodel`) among the three
    algorithms, the engine's dense allreduce and the allgather (QSGD values: recursive
    doubling or allgather); every rank makes the same choice from the agreed header.

Every call starts with one fixed-size header exchange (an allgather; a point-to-point swap
on two ranks) of size, dtype, nnz, validity flags (NaN/inf, indices out of range or
unsorted, malformed payload), algorithm, codec and op, so bad input on any rank raises the
same clear error on every rank. Under ``"auto"`` and ``"allgather"`` the header also carries
each rank's whole message when it fits a capacity agreed from the group's recent calls
(at most 128 KiB per rank, 1 MiB in all): when every rank's fits, that one exchange is the
whole collective (small, latency-bound calls; ``last_algorithm`` then says ``"allgather"``).
Repeated dense calls skip the header: when the group's recent calls with the same arguments
repeat (one vector, or a cycle of DDP buckets) and the predicted call ran the engine's dense
allreduce, the validity flags and nnz travel as a few extra entries of that one dense
allreduce; bad input on any rank makes every rank redo the call through the header, which
raises the same error as above (see ``_SteadyHistory``).
All operations run on the world's communication thread, on a duplicate of the group's
channel, in call order; ``async_op=True`` returns a :class:`~oncoscale.comm.Work` handle.
"""

from __future__ import annotations

import contextlib
import math
import threading
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from oncoscale.comm._backend import DoneWork, Work, check_op
from oncoscale.comm._hostpath import numpy_path
from oncoscale.comm.costmodel import ALGORITHMS, AUTO_CANDIDATES, CostModel, calibrated
from oncoscale.comm.indexcodec import (
    decode_indices,
    encode_indices,
    wire_index_bytes,
    wire_prefers_dense,
)
from oncoscale.comm.quant import (
    CastCodec,
    QSGDCodec,
    ValueCodec,
    _scratch,
    codec_id,
    get_codec,
    view_as,
)
from oncoscale.comm.sparse import (
    SparseVector,
    index_bytes_for,
    merge,
    prefers_dense,
    sum_sorted_runs,
)
from oncoscale.comm.world import Group, resolve_group
from oncoscale.errors import CommunicationError, ConfigurationError, InputError

_DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}
_ALGO_CODE = {name: i for i, name in enumerate(("auto", *ALGORITHMS))}
_OP_CODE = {"sum": 1, "avg": 2}
_HEADER = 16  # bytes: (kind, count) as int64 in front of every message
_FIXED = 10  # fixed columns of the agreement header (then p per-range counts)
# Eager path: the agreement header is one fixed-size allgather that also carries each rank's
# whole message when it fits in ``cap`` bytes; when every rank's fits, the collective is
# complete after that one allgather (small, latency-bound calls). ``cap`` is a pure function
# of the agreed history of the group (identical on every rank, whatever the local input).
_EAGER_ALGOS = ("auto", "allgather")
_EAGER_DEFAULT = 0  # bytes before any history: explicit algorithms never pay for it
_EAGER_MAX = 128 * 1024  # bytes per rank
_EAGER_TOTAL = 1 << 20  # bytes gathered in all (p * cap)
_EAGER_WINDOW = 8  # calls of history
_EAGER_CODES = {_ALGO_CODE[a] for a in _EAGER_ALGOS}

# -- local helpers ---------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _seed(base: int, *parts: int) -> int:
    h = base
    for q in parts:
        h = (h * 1_000_003 + q + 1) % (2**61 - 1)
    return h


def _encode(vec: SparseVector, codec: ValueCodec, seed: int, want_decoded: bool = True
            ) -> tuple[torch.Tensor, SparseVector | None]:
    """One message (header + body, one uint8 buffer) and the vector as the receiver will
    decode it (``None`` with ``want_decoded=False``). Indices travel as int32 when the
    vector size allows."""
    m, dev = vec.size, vec.device
    vb = codec.value_bytes(vec.dtype)
    if vec.is_dense or wire_prefers_dense(vec.nnz, m, vb):
        if vec.is_dense:
            vals = vec.values
        elif (codec.lossy or not want_decoded) and vec.dtype == torch.float32:
            vals = _scratch(m, dev, slot=1)  # a work buffer: only the message leaves
            vals.zero_()
            vals.scatter_(0, vec.indices, vec.values)
        else:
            vals = vec.to_dense()
        idx = None
        if isinstance(codec, QSGDCodec):  # encode straight into the message
            msg = torch.empty(_HEADER + codec.nbytes(m, vec.dtype), dtype=torch.uint8,
                              device=dev)
            msg[:_HEADER].view(torch.int64).copy_(torch.tensor([1, m], dtype=torch.int64))
            body = codec.encode(vals, seed, out=msg[_HEADER:])
            if not want_decoded:
                return msg, None
            return msg, SparseVector(None, codec.decode(body, m, vec.dtype), m, check=False)
        body = codec.encode(vals, seed)
        head = torch.tensor([1, m], dtype=torch.int64, device=dev)
        parts = [head.view(torch.uint8), body]
    else:
        vals = vec.values
        idx = vec.indices
        body = codec.encode(vals, seed)
        ib = encode_indices(idx, m)
        if numpy_path(vals):  # one buffer, filled in place
            raw = np.empty(_HEADER + ib.numel() + body.numel(), dtype=np.uint8)
            raw[:_HEADER].view(np.int64)[:] = (0, vec.nnz)
            raw[_HEADER:_HEADER + ib.numel()] = ib.numpy()
            raw[_HEADER + ib.numel():] = body.numpy()
            parts = [torch.from_numpy(raw)]
        else:
            head = torch.tensor([0, vec.nnz], dtype=torch.int64, device=dev)
            parts = [head.view(torch.uint8), ib, body]
    msg = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not want_decoded:
        return msg, None
    if codec.lossy:
        vals = codec.decode(body, vals.numel(), vec.dtype)
    return msg, SparseVector(idx, vals, m, check=False)


def _sum_msgs(msgs: list[torch.Tensor], m: int, codec: ValueCodec, dtype: torch.dtype
              ) -> SparseVector:
    """Sum of the vectors in ``msgs`` (in this order). Dense QSGD messages are decoded
    straight into one accumulator (two passes each, no temporaries)."""
    if dtype == torch.float32 and hasattr(codec, "decode_into") and msgs and all(
            int(view_as(x[:8], torch.int64)) == 1 for x in msgs):
        out = torch.empty(m, dtype=torch.float32, device=msgs[0].device)
        for i, x in enumerate(msgs):
            codec.decode_into(x[_HEADER:], out, accumulate=i > 0)
        return SparseVector(None, out, m, check=False)
    return merge([_decode(x, m, codec, dtype) for x in msgs])


def _sum_eager(parts: list[torch.Tensor], mine: SparseVector, rank: int, m: int,
               codec: ValueCodec, dtype: torch.dtype) -> SparseVector:
    """Sum of the messages of an eager call (``mine``: this rank's, decoded). Sparse float32 /
    float64 CPU messages are read in place with numpy and summed in one pass."""
    fast = numpy_path(mine.values) and not mine.is_dense and dtype in (
        torch.float32, torch.float64) and type(codec) is ValueCodec and codec.dtype is None
    heads = [x[:_HEADER].numpy().view(np.int64) for x in parts] if fast else []
    if not fast or any(int(h[0]) != 0 for h in heads):
        return merge([mine if j == rank else _decode(parts[j], m, codec, dtype)
                      for j in range(len(parts))])
    nd = np.float32 if dtype == torch.float32 else np.float64
    idxs, vals = [], []
    for j, (x, h) in enumerate(zip(parts, heads, strict=True)):
        if j == rank:
            idxs.append(mine.indices.detach().numpy())
            vals.append(mine.values.detach().numpy())
            continue
        k = int(h[1])
        ib = int(wire_index_bytes(k, m))
        idxs.append(decode_indices(x[_HEADER:_HEADER + ib], k, m).numpy())
        vals.append(x[_HEADER + ib:_HEADER + ib + k * dtype.itemsize].numpy().view(nd))
    idx, summed = sum_sorted_runs(idxs, vals)
    return SparseVector(torch.from_numpy(idx), torch.from_numpy(summed), m,
                        check=False).compact(dtype.itemsize)


def _msg_bytes(nnz: int, m: int, dense: bool, codec: ValueCodec, dtype: torch.dtype) -> int:
    """Exact size of the message :func:`_encode` makes for ``nnz`` entries of an m-vector."""
    if dense or wire_prefers_dense(nnz, m, codec.value_bytes(dtype)):
        return _HEADER + codec.nbytes(m, dtype)
    return _HEADER + int(wire_index_bytes(nnz, m)) + codec.nbytes(nnz, dtype)


def _decode(msg: torch.Tensor, m: int, codec: ValueCodec, dtype: torch.dtype) -> SparseVector:
    """Inverse of :func:`_encode` for a vector of ``m`` entries."""
    head = msg[:_HEADER]
    kind, count = (head.numpy() if head.device.type == "cpu" else head.cpu().numpy()
                   ).view(np.int64).tolist()
    body = msg[_HEADER:]
    if kind == 1:
        return SparseVector(None, codec.decode(body, m, dtype), m, check=False)
    ib = int(wire_index_bytes(count, m))
    idx = decode_indices(body[:ib], count, m)
    vals = codec.decode(body[ib:], count, dtype)
    return SparseVector(idx, vals, m, check=False)


def _backend(g: Group) -> Any:
    return g.world._backend


def _send(g: Group, peer: int, msg: torch.Tensor) -> None:
    b = _backend(g)
    n = torch.tensor([msg.numel()], dtype=torch.int64, device=msg.device)
    works = [b.isend(n, peer, g, tag=0, channel=True)]
    if msg.numel():
        works.append(b.isend(msg, peer, g, tag=1, channel=True))
    for w in works:
        w.wait()


def _recv(g: Group, peer: int, device: torch.device | str = "cpu") -> torch.Tensor:
    b = _backend(g)
    n = torch.zeros(1, dtype=torch.int64, device=device)
    b.irecv(n, peer, g, tag=0, channel=True).wait()
    buf = torch.empty(int(n.item()), dtype=torch.uint8, device=device)
    if buf.numel():
        b.irecv(buf, peer, g, tag=1, channel=True).wait()
    return buf


def _exchange(g: Group, peer: int, msg: torch.Tensor, incoming: int | None = None
              ) -> torch.Tensor:
    """Send ``msg`` to ``peer`` and receive its message at the same time.

    ``incoming``: the size of the peer's message when known (no size message then).
    """
    b = _backend(g)
    ws = []
    if incoming is None:
        n_out = torch.tensor([msg.numel()], dtype=torch.int64, device=msg.device)
        n_in = torch.zeros(1, dtype=torch.int64, device=msg.device)
        ws.append(b.isend(n_out, peer, g, tag=0, channel=True))
        if msg.numel():  # the payload leaves at once, without waiting for the peer's size
            ws.append(b.isend(msg, peer, g, tag=1, channel=True))
        b.irecv(n_in, peer, g, tag=0, channel=True).wait()
        incoming = int(n_in.item())
    elif msg.numel():
        ws.append(b.isend(msg, peer, g, tag=1, channel=True))
    buf = torch.empty(incoming, dtype=torch.uint8, device=msg.device)
    if buf.numel():
        ws.append(b.irecv(buf, peer, g, tag=1, channel=True))
    for w in ws:
        w.wait()
    return buf


def _bounds(n: int, p: int) -> list[int]:
    return [j * n // p for j in range(p + 1)]


def _concat(pieces: list[SparseVector], bounds: list[int], n: int) -> SparseVector:
    """Join vectors covering consecutive index ranges into one vector of ``n`` entries."""
    dtype = pieces[0].dtype
    dev = pieces[0].device
    vb = dtype.itemsize
    total = sum(q.nnz for q in pieces)
    if prefers_dense(total, n, vb):
        out = torch.empty(n, dtype=dtype, device=dev)
        for q, lo, hi in zip(pieces, bounds[:-1], bounds[1:], strict=True):
            out[lo:hi] = q.to_dense()
        return SparseVector(None, out, n, check=False)
    idx = [(q.indices if not q.is_dense else torch.arange(q.size, device=dev)) + lo
           for q, lo in zip(pieces, bounds[:-1], strict=False)]
    vals = [q.values for q in pieces]
    if not idx:
        return SparseVector(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=dtype), n,
                            check=False)
    return SparseVector(torch.cat(idx), torch.cat(vals), n, check=False)


# -- algorithms --------------------------------------------------------------------------------


def _recursive_doubling(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
                        rows: list[list[int]]) -> SparseVector:
    p, r, m, dt = g.size, g.rank, cur.size, cur.dtype
    p2 = 1 << (p.bit_length() - 1)
    extra = p - p2
    if r >= p2:  # fold: hand my vector to r - p2, get the result back at the end
        msg, _ = _encode(cur, codec, _seed(seed, 0, r))
        _send(g, r - p2, msg)
        return _decode(_recv(g, r - p2, cur.device), m, codec, dt)
    if r < extra:
        other = _decode(_recv(g, r + p2, cur.device), m, codec, dt)
        cur = merge([cur, other])
    mask, rnd = 1, 1
    while mask < p2:
        partner = r ^ mask
        # ranks r // mask hold identical sums: equal seeds keep stochastic codecs consistent
        msg, mine = _encode(cur, codec, _seed(seed, rnd, r // mask), not codec.lossy)
        known = None  # the first round without a fold: the header says the partner's size
        if mask == 1 and not extra:
            known = _msg_bytes(rows[partner][2], m, bool(rows[partner][3]), codec, dt)
        theirs = _exchange(g, partner, msg, known)
        if codec.lossy:  # both sides sum the same two decoded messages
            cur = _sum_msgs([msg, theirs] if r < partner else [theirs, msg], m, codec, dt)
        else:
            other = _decode(theirs, m, codec, dt)
            cur = merge([mine, other] if r < partner else [other, mine])
        mask <<= 1
        rnd += 1
    if extra:
        msg, decoded = _encode(cur, codec, _seed(seed, rnd, 0))
        if codec.lossy:
            cur = decoded  # every rank ends with exactly what the folded ranks receive
        if r < extra:
            _send(g, r + p2, msg)
    return cur.compact()


def _reduce_scatter(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
                    rows: list[list[int]]) -> tuple[SparseVector, list[int]]:
    """Owner-reduce: rank j ends with the sum of everyone's entries in its index range.

    Message sizes follow from the per-range counts every rank put in the header."""
    p, r, n, dt = g.size, g.rank, cur.size, cur.dtype
    b = _backend(g)
    bounds = _bounds(n, p)
    m = bounds[r + 1] - bounds[r]
    msgs: dict[int, torch.Tensor] = {}
    for j in range(p):
        if j != r:
            msgs[j], _ = _encode(cur.slice(bounds[j], bounds[j + 1]), codec, _seed(seed, 0, r, j))
    bufs: dict[int, torch.Tensor] = {}
    works = []
    for j in range(p):
        if j != r:
            size = _msg_bytes(rows[j][_FIXED + r], m, bool(rows[j][3]), codec, dt)
            bufs[j] = torch.empty(size, dtype=torch.uint8, device=cur.device)
            works.append(b.irecv(bufs[j], j, g, tag=2, channel=True))
    for j in range(p):
        if j != r:
            works.append(b.isend(msgs[j], j, g, tag=2, channel=True))
    for w in works:
        w.wait()
    pieces = [cur.slice(bounds[r], bounds[r + 1]) if j == r else _decode(bufs[j], m, codec, dt)
              for j in range(p)]
    return merge(pieces), bounds


def _split_allgather(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
                     rows: list[list[int]], dense_gather: bool = False) -> SparseVector:
    p, r, dt = g.size, g.rank, cur.dtype
    mine, bounds = _reduce_scatter(g, cur, codec, seed, rows)
    counts = None
    if dense_gather:  # dense blocks: every size is known, no count exchange
        mine = mine.densify()
        counts = [_msg_bytes(0, bounds[j + 1] - bounds[j], True, codec, dt) for j in range(p)]
    msg, decoded = _encode(mine, codec, _seed(seed, 1, r))
    parts = _backend(g).allgatherv(msg, g, channel=True, counts=counts)
    pieces = [decoded if j == r else _decode(parts[j], bounds[j + 1] - bounds[j], codec, dt)
              for j in range(p)]
    return _concat(pieces, bounds, cur.size)


def _dsar(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
          rows: list[list[int]]) -> SparseVector:
    return _split_allgather(g, cur, codec, seed, rows, dense_gather=True)


def _dense_input(cur: SparseVector, codec: ValueCodec) -> torch.Tensor:
    """The dense tensor the engine's allreduce sums (a new tensor; the codec's dtype)."""
    t = cur.values.clone() if cur.is_dense else cur.to_dense()  # to_dense is a new tensor
    return t.to(codec.dtype) if isinstance(codec, CastCodec) else t


def _dense(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
           rows: list[list[int]], prepared: torch.Tensor | None = None) -> SparseVector:
    if codec.lossy and not isinstance(codec, CastCodec):
        raise ConfigurationError(
            f"algorithm='dense' uses the engine's allreduce and cannot carry {codec!r}; "
            "use a sparse algorithm or codec None/'fp16'/'bf16'")
    t = _dense_input(cur, codec) if prepared is None else prepared
    _backend(g).allreduce(t, "sum", g, channel=True)
    return SparseVector(None, t.to(cur.dtype), cur.size, check=False)


# Steady dense path. Every rank keeps the same history of the group's recent calls with the
# same (algorithm, codec, op) arguments: (size, dtype) and (device, ran dense). When the
# history repeats with some period L <= _STEADY_WINDOW / 2 (one vector: L = 1; a cycle of
# DDP buckets: L = buckets; the period that explains the longest run of recent calls) and
# the call L calls back ran the engine's dense allreduce, the next call skips the header
# exchange and runs one dense allreduce of the vector plus a trailer of _TRAILER entries,
# per rank (need the header path: 0/1, nnz // 4096, nnz % 4096, 0). Trailer sums are
# integers below 2**24 (checked by _steady_ok), exact in float32 and identical
# on every rank, so every rank takes the same next step: a rank whose input is bad or not
# the predicted (size, dtype, device) makes every rank discard the sum and run the call
# again through the header path (which raises the usual error, or agrees anew; a wasted
# dense allreduce when the pattern of calls changes); under "auto" the summed nnz
# re-decides whether that position of the cycle stays dense. Ranks that pass different
# arguments keep different histories and time out instead of getting the header's "ranks
# disagree" error.
_TRAILER = 4
_NNZ_SPLIT = 4096
_STEADY_WINDOW = 64  # calls of history per (group, arguments)


def _steady_key(g: Group, algorithm: str, c: ValueCodec, op: str) -> tuple:
    return ("steady", g.ranks, algorithm, codec_id(c), op)


def _steady_ok(vec: SparseVector, c: ValueCodec, p: int) -> bool:
    """May a dense call on this (agreed-valid) input be repeated through the steady path?
    float32/float64 sums only (exact trailer counts), values travel in their own dtype."""
    acc = _acc_dtype(vec.dtype)
    return not c.lossy and not isinstance(c, CastCodec) and \
        acc in (torch.float32, torch.float64) and p * _NNZ_SPLIT < (1 << 24) and \
        (vec.size // _NNZ_SPLIT + 1) * p < (1 << 24)


class _SteadyHistory:
    """The agreed recent calls of one (group, arguments): (size, dtype), (device, ran
    dense), and for every period L the number of trailing calls that repeat the call L
    back (updated per call, O(window))."""

    def __init__(self) -> None:
        self.desc: list[tuple[int, torch.dtype]] = []
        self.info: list[tuple[torch.device, bool]] = []
        self.runs = [0] * (_STEADY_WINDOW // 2 + 1)  # runs[L], L >= 1
        self.period = 0  # the best period after the latest call (0: none)

    def append(self, vec: SparseVector, dense: bool) -> None:
        """Record a call; the best period is the one whose repetition explains the longest
        run of recent calls (at least one whole period; ties to the shortest)."""
        d = (vec.size, vec.dtype)
        desc, runs, n = self.desc, self.runs, len(self.desc)
        best, best_run = 0, 0
        for period in range(1, len(runs)):
            run = runs[period] = runs[period] + 1 if period <= n and desc[n - period] == d \
                else 0
            if run >= period and run > best_run:
                best, best_run = period, run
        self.period = best
        desc.append(d)
        self.info.append((vec.device, dense))
        if n + 1 > _STEADY_WINDOW:
            del desc[0], self.info[0]

    def predict(self) -> tuple[int, torch.dtype, torch.device] | None:
        """(size, dtype, device) of the next call if it will run dense, else None: the call
        one best period back."""
        best = self.period
        if not best:
            return None
        device, dense = self.info[-best]
        return (*self.desc[-best], device) if dense else None


def _steady_record(g: Group, key: tuple, vec: SparseVector, dense: bool) -> None:
    hist = g.world.cache.get(key)
    if hist is None:
        hist = g.world.cache[key] = _SteadyHistory()
    hist.append(vec, dense)


def _steady_dense(g: Group, vec: Any, c: ValueCodec, steady: tuple, key: tuple,
                  algorithm: str) -> SparseVector | None:
    """One dense allreduce with the validity trailer (see ``_TRAILER``); None when some
    rank needs the header path (every rank then returns None)."""
    size, dtype, device = steady
    acc = _acc_dtype(dtype)
    ok = isinstance(vec, SparseVector) and vec.size == size and vec.dtype == dtype and \
        vec.device == device and not _local_flags(vec)
    buf = torch.zeros(size + _TRAILER, dtype=acc, device=device)
    nnz = 0
    if ok:
        vals = vec.values if vec.dtype == acc else vec.values.to(acc)
        if vec.is_dense:
            buf[:size].copy_(vals)
        else:
            buf[:size].scatter_(0, vec.indices, vals)
        nnz = vec.nnz
    trailer = (0 if ok else 1, nnz // _NNZ_SPLIT, nnz % _NNZ_SPLIT, 0)
    if numpy_path(buf):
        buf[size:].numpy()[:] = trailer
    else:
        buf[size:].copy_(torch.tensor(trailer, dtype=acc))
    _backend(g).allreduce(buf, "sum", g, channel=True)
    need_header, hi, lo, _ = (int(x) for x in buf[size:].tolist())
    if need_header:
        return None
    dense = True
    if algorithm == "auto":  # this position stays dense only while the model says so
        model = g.world.cache.get(("costmodel", g.ranks))
        mean = (hi * _NNZ_SPLIT + lo) // g.size
        dense = model is not None and \
            _choose(model, g.size, [mean] * g.size, size, dtype, c) == "dense"
    _steady_record(g, key, vec, dense)
    return SparseVector(None, buf[:size], size, check=False)


def _allgather_sum(g: Group, cur: SparseVector, codec: ValueCodec, seed: int,
                   rows: list[list[int]]) -> SparseVector:
    msg, decoded = _encode(cur, codec, _seed(seed, 0, g.rank), not codec.lossy)
    counts = [_msg_bytes(row[2], cur.size, bool(row[3]), codec, cur.dtype) for row in rows]
    parts = _backend(g).allgatherv(msg, g, channel=True, counts=counts)
    if codec.lossy:
        return _sum_msgs([msg if j == g.rank else parts[j] for j in range(g.size)], cur.size,
                         codec, cur.dtype)
    pieces = [decoded if j == g.rank else _decode(parts[j], cur.size, codec, cur.dtype)
              for j in range(g.size)]
    return merge(pieces)


_IMPL: dict[str, Callable[..., SparseVector]] = {
    "recursive_doubling": _recursive_doubling,
    "split_allgather": _split_allgather,
    "dsar": _dsar,
    "dense": _dense,
    "allgather": _allgather_sum,
}

# -- header agreement ---------------------------------------------------------------------------


def _finite(v: torch.Tensor) -> bool:
    """All values finite? One pass whose result is NaN/inf if any value is (NaN/inf
    propagate); exact check only if it is not finite (which may also be an overflow of
    finite values)."""
    if numpy_path(v) and v.dtype in (torch.float32, torch.float64) and \
            not v.requires_grad:
        a = v.numpy()
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: checked exactly below
            # a BLAS dot product: 2-4x faster than numpy's pairwise sum, and a fraction of
            # torch's call cost on small vectors
            if math.isfinite(float(np.dot(a, a))):
                return True
        return bool(np.isfinite(a).all())
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    if math.isfinite(float(v.sum(dtype=acc))):
        return True
    return bool(torch.isfinite(v).all())


def _local_flags(vec: SparseVector) -> int:
    """Validity bits of this rank's input (see ``_FLAG_TEXT``). The index checks run once per
    vector (remembered on it); the NaN/inf check on every call."""
    flags = 0
    v = vec.values
    if not v.is_floating_point() or v.dtype not in _DTYPE_CODE or v.dim() != 1:
        return 8
    idx = vec.indices
    if idx is None:
        if v.numel() != vec.size:
            return 8
    else:
        if idx.dim() != 1 or idx.numel() != v.numel():
            return 8
        if idx.numel() and not getattr(vec, "_checked", False):
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                flags |= 2
                lo, hi = int(idx.min()), int(idx.max())
            else:  # sorted: the ends are the extremes
                lo, hi = int(idx[0]), int(idx[-1])
            if lo < 0 or hi >= vec.size:
                flags |= 1
            if not flags:
                with contextlib.suppress(AttributeError):
                    vec._checked = True
    if v.numel() and not _finite(v):
        flags |= 4
    return flags


_FLAG_TEXT = {1: "indices out of range [0, size)", 2: "indices not sorted and unique",
              4: "NaN or infinite values", 8: "malformed payload (non-float values or "
              "indices/values length mismatch)"}


def _range_counts(vec: SparseVector, p: int) -> list[int]:
    """Stored entries of ``vec`` in each of the p split ranges (range lengths if dense)."""
    bounds = _bounds(vec.size, p)
    if vec.is_dense or vec.indices is None:
        return [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    if vec.values.numel() != vec.indices.numel():
        return [0] * p
    if numpy_path(vec.indices):
        cuts = np.searchsorted(vec.indices.numpy(), bounds).tolist()
    else:
        cuts = torch.searchsorted(vec.indices, torch.tensor(bounds, device=vec.device)).tolist()
    return [hi - lo for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


_P2P_HEADER_MAX = 8  # groups up to this size swap headers point to point (all posted at once)


def _post_fixed(g: Group, buf: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    """Start an allgather of equal-size uint8 buffers; returns ``finish()`` -> every rank's
    buffer in group-rank order. Small groups post one message to and from every peer at
    once (cheaper than the engine's allgather on gloo, and the caller can work while the
    messages travel); larger groups use the engine's allgather, done before returning."""
    b = _backend(g)
    if g.size > _P2P_HEADER_MAX:
        parts = b.allgather(buf, g, channel=True)
        return lambda: parts
    out = [buf if j == g.rank else torch.empty_like(buf) for j in range(g.size)]
    works = [b.irecv(out[j], j, g, tag=3, channel=True) for j in range(g.size) if j != g.rank]
    works += [b.isend(buf, j, g, tag=3, channel=True) for j in range(g.size) if j != g.rank]

    def finish() -> list[torch.Tensor]:
        for w in works:
            w.wait()
        return out

    return finish


def _eager_cap(g: Group) -> int:
    """Payload bytes per rank the next header carries (same on every rank: agreed history)."""
    hist = g.world.cache.get(("eager", g.ranks))
    if hist is None:
        return _EAGER_DEFAULT
    limit = min(_EAGER_MAX, _EAGER_TOTAL // g.size)
    fits = [x for x in hist if 0 < x <= limit]
    if not fits:
        return 0
    cap = -(-max(fits) // 256) * 256
    # calls that do not fit still carry the capacity: keep it only while the latency it
    # saves the fitting calls outweighs the bytes it costs the others (agreed cost model if
    # this group has one, else typical loopback figures)
    model = g.world.cache.get(("costmodel", g.ranks))
    alpha, beta = (model.alpha_ag, model.beta_ag) if model is not None else (1e-4, 1e-9)
    hit = len(fits) / len(hist)
    if (1 - hit) * (g.size - 1) * cap * beta > hit * alpha:
        return 0
    return cap


def _agree(g: Group, vec: SparseVector, what: str, algorithm: str, op: str,
           codec: ValueCodec, same_size: bool = True,
           payload: Callable[[], tuple[torch.Tensor, Any]] | None = None,
           payload_bytes: Callable[[], int] | None = None,
           meanwhile: Callable[[], Any] | None = None,
           ) -> tuple[list[list[int]], list[torch.Tensor] | None, Any, Any]:
    """One fixed-size allgather: a header per rank (and its whole message when small), then
    the same error on every rank if anything is wrong.

    Header columns: size, dtype, nnz, dense, flags, codec, algorithm, op, message bytes
    needed, message included (0/1), then the nnz in each of the group's p split ranges (so
    split algorithms know every message size in advance). ``payload()`` makes this rank's
    message (and what the receivers will decode), ``payload_bytes()`` its exact size; it is
    only made when it fits the agreed capacity. ``meanwhile()`` runs while the headers
    travel (local work that does not need them). Returns (rows, every rank's message or
    None unless all fitted, this rank's decoded payload or None, ``meanwhile()``'s result).
    """
    if not isinstance(vec, SparseVector):
        raise InputError(f"{what} expects a SparseVector, found {type(vec).__name__}")
    flags = _local_flags(vec)
    p = g.size
    counts = _range_counts(vec, p) if not flags else [0] * p
    cap = _eager_cap(g)
    need = payload_bytes() if payload is not None and payload_bytes is not None and not flags \
        else 0
    msg = mine = None
    if payload is not None and not flags and need <= cap and numpy_path(vec.values):
        msg, mine = payload()
        need = int(msg.numel())
    included = int(msg is not None and need <= cap)
    hb = 8 * (_FIXED + p)
    buf = torch.empty(hb + cap, dtype=torch.uint8)
    raw = buf.numpy()
    raw[:hb].view(np.int64)[:] = (
        vec.size, _DTYPE_CODE.get(vec.values.dtype, 0), vec.nnz if not flags & 8 else 0,
        int(vec.is_dense), flags, codec_id(codec), _ALGO_CODE[algorithm],
        _OP_CODE.get(op, 0), need, included, *counts)
    if included and need:
        raw[hb:hb + need] = msg.numpy()
    finish = _post_fixed(g, buf)
    extra = meanwhile() if meanwhile is not None and not flags else None
    gathered = finish()
    rows = [x[:hb].numpy().view(np.int64).tolist() for x in gathered]
    # the capacity history: every rank records the same numbers (before any error is
    # raised); a call that cannot go eager (explicit algorithm) counts as a miss (0)
    can = len({row[6] for row in rows}) == 1 and rows[0][6] in _EAGER_CODES
    hist = g.world.cache.get(("eager", g.ranks), [])
    top = max(row[8] for row in rows) if can else 0
    g.world.cache[("eager", g.ranks)] = ([*hist, top])[-_EAGER_WINDOW:]

    def table(col: int) -> str:
        return ", ".join(f"rank {g.ranks[i]}: {row[col]}" for i, row in enumerate(rows))

    bad = [(g.ranks[i], row[4]) for i, row in enumerate(rows) if row[4]]
    if bad:
        text = "; ".join(f"rank {rk}: " + ", ".join(t for f, t in _FLAG_TEXT.items() if fl & f)
                         for rk, fl in bad)
        raise InputError(f"{what}: bad input vector on {len(bad)} rank(s) - {text}")
    if same_size and len({row[0] for row in rows}) > 1:
        raise InputError(f"{what}: vector sizes differ across ranks ({table(0)}); every rank "
                         "must pass a vector of the same size")
    if len({row[1] for row in rows}) > 1:
        names = {c: str(d).replace("torch.", "") for d, c in _DTYPE_CODE.items()}
        found = ", ".join(f"rank {g.ranks[i]}: {names.get(row[1], '?')}"
                          for i, row in enumerate(rows))
        raise InputError(f"{what}: value dtypes differ across ranks ({found}); cast every "
                         "rank's values to the same dtype")
    for col, name in ((6, "algorithm"), (5, "codec"), (7, "op")):
        if len({row[col] for row in rows}) > 1:
            raise ConfigurationError(f"{what}: ranks disagree on the {name} argument "
                                     f"(codes {table(col)}); pass the same value on every rank")
    parts = None
    if all(row[9] for row in rows):
        parts = [x[hb:hb + row[8]] for x, row in zip(gathered, rows, strict=True)]
    return rows, parts, mine, extra


def _next_seed(g: Group) -> int:
    key = ("calls", g.ranks)
    calls = g.world.cache.get(key, 0) + 1
    g.world.cache[key] = calls
    return _seed(zlib.crc32(repr(g.ranks).encode()), calls)


def _on_comm_thread() -> bool:
    return threading.current_thread().name.startswith("oncoscale-comm")


def _launch(g: Group, fn: Callable[[], Any], what: str, async_op: bool) -> Any:
    def named() -> Any:
        try:
            return fn()
        except CommunicationError as exc:
            raise CommunicationError(f"rank {g.world.rank}: {what} failed: {exc}") from exc

    if _on_comm_thread():
        result = named()
        return DoneWork(result) if async_op else result
    if not async_op:
        return g.world.run_now(named, what)
    return g.world.submit(named, what)


# -- public API ----------------------------------------------------------------------------------


def choose_algorithm(group: Group, nnz: list[int], size: int, dtype: torch.dtype = torch.float32,
                     codec: str | ValueCodec | None = None) -> str:
    """What ``algorithm="auto"`` picks for per-rank non-zeros ``nnz`` (calibrates if needed;
    collective on first use for the group)."""
    return _choose(calibrated(group), group.size, nnz, size, dtype, get_codec(codec))


def _choose(model: CostModel, p: int, nnz: list[int], size: int, dtype: torch.dtype,
            c: ValueCodec) -> str:
    acc = _acc_dtype(dtype)
    # QSGD values cannot use the engine's allreduce; its split algorithms decode and
    # re-encode every piece, which the model does not price: exchange whole streams instead
    cands = AUTO_CANDIDATES if not (c.lossy and not isinstance(c, CastCodec)) \
        else ("recursive_doubling", "allgather")
    dense_bytes = (c.dtype.itemsize if isinstance(c, CastCodec)
                   else acc.itemsize)
    return model.choose(p, size, nnz, c.value_bytes(acc), index_bytes_for(size), cands,
                        dense_bytes=dense_bytes)


def _likely_dense(g: Group, vec: SparseVector, algorithm: str, c: ValueCodec) -> bool:
    """Will this call (probably) run the engine's dense allreduce? ``"auto"`` asks the
    group's cost model, if already calibrated, as if every rank held this rank's nnz.
    Local guess only: it decides what to prepare while the headers travel, never the
    algorithm."""
    if algorithm == "dense":
        return True
    if algorithm != "auto" or (c.lossy and not isinstance(c, CastCodec)):
        return False
    model = g.world.cache.get(("costmodel", g.ranks))
    return model is not None and _choose(model, g.size, [vec.nnz] * g.size, vec.size,
                                         vec.dtype, c) == "dense"


def sparse_allreduce(vec: SparseVector, algorithm: str = "auto", group: Group | None = None,
                     async_op: bool = False, op: str = "sum",
                     codec: str | ValueCodec | None = None) -> SparseVector | Work:
    """Sum (``op="sum"``) or mean (``op="avg"``) of every rank's ``vec`` over ``group``.

    ``vec``: a :class:`SparseVector` of the same ``size`` and dtype on every rank (sparse or
    dense payload, any number of non-zeros). ``algorithm``: ``"auto"``,
    ``"recursive_doubling"``, ``"split_allgather"``, ``"dsar"``, ``"dense"`` or
    ``"allgather"``. ``codec``: values on the wire as ``None`` (own dtype), ``"fp16"``,
    ``"bf16"`` or QSGD ``"qsgd8"``/``"qsgd4"``/``"qsgd2"`` (or a codec object); half
    inputs are accumulated in float32. Returns the result (sparse or dense payload by the
    stream rule, same dtype as the input), identical on every rank; with ``async_op=True``
    a handle whose ``wait()`` returns it. Collective: every rank of the group calls it.
    """
    g = resolve_group(group)
    if algorithm not in _ALGO_CODE:
        raise ConfigurationError(
            f"algorithm must be one of {('auto', *ALGORITHMS)}, found {algorithm!r}")
    op = check_op(op)
    if op not in _OP_CODE:
        raise ConfigurationError(f"sparse_allreduce supports op 'sum' or 'avg', found {op!r}")
    c = get_codec(codec)
    g._check("sparse_allreduce")

    def run() -> SparseVector:
        seed = _next_seed(g)
        key = _steady_key(g, algorithm, c, op)
        hist = g.world.cache.get(key) if g.size > 1 else None
        steady = hist.predict() if hist is not None else None
        result = _steady_dense(g, vec, c, steady, key, algorithm) if steady is not None \
            else None
        g.world.cache[("last_steady", g.ranks)] = result is not None
        if result is not None:
            g.world.cache[("last_algorithm", g.ranks)] = "dense"
            g.world.cache[("last_eager", g.ranks)] = False
            return _finish(result)
        return _finish(header_path(seed, key))

    def _finish(result: SparseVector) -> SparseVector:
        if op == "avg":
            result = result.scale(1.0 / g.size)
        if result.dtype != vec.dtype:
            result = result.to(vec.dtype)
        if result.values is vec.values:  # never hand back the caller's own tensors
            result = SparseVector(result.indices, vec.values.clone(), vec.size, check=False)
        return result

    def header_path(seed: int, key: tuple) -> SparseVector:
        acc = _acc_dtype(vec.dtype) if isinstance(vec, SparseVector) else torch.float32
        box: list[SparseVector] = []

        def converted() -> SparseVector:  # the input in the accumulation dtype (valid input)
            if not box:
                box.append(vec.to(acc) if vec.dtype != acc else vec)
            return box[0]

        eager = g.size > 1 and algorithm in _EAGER_ALGOS
        # densify while the headers travel when the engine's allreduce is the likely choice
        prepare = g.size > 1 and isinstance(vec, SparseVector) and _likely_dense(
            g, vec, algorithm, c)
        rows, parts, mine, prepared = _agree(
            g, vec, "sparse_allreduce", algorithm, op, c,
            payload=(lambda: _encode(converted(), c, _seed(seed, 0, g.rank), not c.lossy))
            if eager else None,
            payload_bytes=lambda: _msg_bytes(vec.nnz, vec.size, vec.is_dense, c, acc),
            meanwhile=(lambda: _dense_input(converted(), c)) if prepare else None)
        cur = converted()
        if g.size == 1:
            result = cur.compact()
            alg = "none"
        elif parts is not None:  # every rank's message came with the header: sum locally
            alg = "allgather"
            result = _sum_msgs(parts, cur.size, c, acc) if c.lossy else \
                _sum_eager(parts, mine, g.rank, cur.size, c, acc)
        else:
            nnz = [row[2] for row in rows]
            alg = algorithm if algorithm != "auto" else choose_algorithm(g, nnz, vec.size,
                                                                         vec.dtype, c)
            result = _dense(g, cur, c, seed, rows, prepared) if alg == "dense" else \
                _IMPL[alg](g, cur, c, seed, rows)
        if g.size > 1:
            _steady_record(g, key, vec, alg == "dense" and _steady_ok(vec, c, g.size))
        g.world.cache[("last_algorithm", g.ranks)] = alg
        g.world.cache[("last_eager", g.ranks)] = parts is not None
        return result

    return _launch(g, run, f"sparse_allreduce({algorithm})", async_op)


def last_algorithm(group: Group | None = None) -> str | None:
    """The algorithm the latest :func:`sparse_allreduce` on ``group`` ran (``"none"`` for 1
    rank)."""
    g = resolve_group(group)
    return g.world.cache.get(("last_algorithm", g.ranks))


def sparse_allgather(vec: SparseVector, group: Group | None = None, async_op: bool = False,
                     codec: str | ValueCodec | None = None) -> list[SparseVector] | Work:
    """Every rank's ``vec`` (sizes may differ, dtypes must agree), in group-rank order.

    Each stream travels sparse or dense by the stream rule; one allgatherv carries all.
    """
    g = resolve_group(group)
    c = get_codec(codec)
    g._check("sparse_allgather")

    def run() -> list[SparseVector]:
        seed = _next_seed(g)
        eager = g.size > 1
        rows, parts, mine, _ = _agree(
            g, vec, "sparse_allgather", "auto", "sum", c, same_size=False,
            payload=(lambda: _encode(vec, c, _seed(seed, g.rank))) if eager else None,
            payload_bytes=lambda: _msg_bytes(vec.nnz, vec.size, vec.is_dense, c, vec.dtype))
        if parts is None:
            msg, mine = _encode(vec, c, _seed(seed, g.rank))
            counts = [_msg_bytes(row[2], row[0], bool(row[3]), c, vec.dtype) for row in rows]
            parts = _backend(g).allgatherv(msg, g, channel=True, counts=counts)
        return [mine if j == g.rank else _decode(parts[j], rows[j][0], c, vec.dtype)
                for j in range(g.size)]

    return _launch(g, run, "sparse_allgather", async_op)
