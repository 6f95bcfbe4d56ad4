"""A DDP communication hook that sends compressed gradients through our sparse collectives.

>>> hook = ddp_comm_hook(compressor=TopK(0.01), error_feedback=True)
>>> ddp_model.register_comm_hook(hook.state, hook)

Works with plain ``torch.nn.parallel.DistributedDataParallel`` (gloo or NCCL). The hook
averages every gradient bucket over the group (default: the world, adopting the process
group that DDP uses) on oncoscale's communication thread and returns a future, so DDP keeps
overlapping backward computation with communication.

Optimizers with state, with TopK-style compression (see ``benchmarks/comm_training.md``):

* momentum SGD: DGC momentum correction, the velocity is kept and compressed per rank::

    hook = ddp_comm_hook(TopK(0.01), transform=MomentumCorrection(0.9))
    opt = torch.optim.SGD(ddp_model.parameters(), lr=lr)            # no momentum here

* Adam: compress each rank's Adam direction and keep each rank's unsent update in its own
  local model (CSER-style), evaluate/save the shared model::

    hook = ddp_comm_hook(TopK(0.01), transform=LocalAdam(), local_error=True, lr=1e-3)
    opt = torch.optim.SGD(ddp_model.parameters(), lr=1e-3)
    hook.state.lr = opt                                            # follows LR schedulers
    ...
    with hook.state.shared_parameters():
        evaluate(model)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from oncoscale.comm.compress import Compressor, GradientCompression, LocalTransform
from oncoscale.comm.world import Group, default_world
from oncoscale.errors import ConfigurationError

_BucketLayout = tuple[tuple[int, int], ...]  # (id(param), numel) in bucket order


def _split(value: Any, layout: _BucketLayout) -> dict[int, Any] | None:
    """Per-bucket state (a tensor, or a tuple holding tensors, of the bucket's length) ->
    one piece per parameter id; ``None`` if the lengths do not match the layout."""
    n = sum(c for _, c in layout)
    items = value if isinstance(value, tuple) else (value,)
    if any(isinstance(x, torch.Tensor) and x.numel() != n for x in items):
        return None
    out, off = {}, 0
    for pid, c in layout:
        piece = tuple(x[off:off + c] if isinstance(x, torch.Tensor) else x for x in items)
        out[pid] = piece if isinstance(value, tuple) else piece[0]
        off += c
    return out


def _join(pieces: list[Any]) -> Any:
    """Per-parameter pieces (in bucket order) -> one per-bucket state."""
    if not isinstance(pieces[0], tuple):
        return torch.cat(pieces)
    return tuple(torch.cat([p[i] for p in pieces]) if isinstance(x, torch.Tensor) else x
                 for i, x in enumerate(pieces[0]))


def _remap(value: Any, old: _BucketLayout, new: _BucketLayout) -> Any:
    """Per-bucket state laid out by the ``old`` (param id, numel) order -> the ``new`` order;
    ``None`` if ``new`` holds a parameter that ``old`` does not."""
    pieces = _split(value, old)
    if pieces is None or any(pid not in pieces for pid, _ in new):
        return None
    return _join([pieces[pid] for pid, _ in new])


class DDPCompressionState:
    """State of :func:`ddp_comm_hook`: compressor, error-feedback memory per bucket, counters.

    ``sent_entries`` / ``dense_entries`` count the gradient entries sent vs. a dense sync.
    ``transform``: a :class:`~oncoscale.comm.compress.LocalTransform` applied to each rank's
    bucket before compression: :class:`~oncoscale.comm.compress.LocalAdam` (then train with
    ``torch.optim.SGD(lr=adam_lr)``) or :class:`~oncoscale.comm.compress.MomentumCorrection`
    (then ``torch.optim.SGD(lr, momentum=0)``). ``local_adam`` is the older name of the
    same argument.

    ``local_error=True`` (needs ``lr``): CSER-style local models (see
    :class:`~oncoscale.comm.compress.GradientCompression`). Each rank's parameters then
    hold its *local* model (shared model - its unsent residual), so the replicas differ by
    their residuals during training; the shared model, identical on every rank, is kept
    here per bucket and is what to evaluate or save: ``with state.shared_parameters():``.
    ``lr``: the optimizer's learning rate (a float, a zero-argument callable, or the
    optimizer itself, whose first parameter group's ``lr`` is read at every step, so LR
    schedulers work); the optimizer must be plain SGD without momentum or weight decay
    (put momentum in a transform).

    ``local_weight`` (``local_error`` only, default 1): each rank's local model is
    ``shared - local_weight * residual``. With 1 (CSER) a rank's gradient sees its whole
    unsent update, although that update will move the shared model by only 1/p of it
    (the shared model moves by the *average* of what the ranks send); ``local_weight =
    1/p`` puts the local model where the shared one will be once this rank's pending
    update has landed. Measured on the GDC autoencoder (TopK 1 %, ``LocalAdam(noise_ratio=
    1/p)``, 300 steps, single-process simulation, two weight seeds, see
    ``benchmarks/comm_training.md``): held-out MSE vs dense Adam at p = 4: +1.2/+1.3 % with
    1, +0.5/+0.8 % with 0.25, -0.7/-0.8 % with 0.5; at p = 2 with 0.5: -1.3/-1.4 %.
    0.5 was chosen on this benchmark; without the ``noise_ratio`` correction the weight
    alone changes nothing (p = 4, 0.25: +3.7 % vs +3.8 %).
    """

    def __init__(self, compressor: Compressor | None = None, *, error_feedback: bool = True,
                 algorithm: str = "auto", group: Group | None = None,
                 codec: str | None = None, local_adam: LocalTransform | None = None,
                 transform: LocalTransform | None = None, local_error: bool = False,
                 lr: Any = None, local_weight: float = 1.0) -> None:
        if local_adam is not None and transform is not None:
            raise ConfigurationError("give either transform= or local_adam= (the older name "
                                     "of the same argument), not both")
        if local_error and lr is None:
            raise ConfigurationError("local_error=True needs lr= (a float, a callable or the "
                                     "optimizer) to keep the residual in parameter units")
        self.group = group if group is not None else default_world()
        self.sync = GradientCompression(compressor, error_feedback=error_feedback,
                                        algorithm=algorithm, group=self.group, codec=codec,
                                        transform=transform or local_adam,
                                        local_error=local_error)
        if not 0 < local_weight <= 1:
            raise ConfigurationError(f"local_weight must be in (0, 1] (1 / world size: the "
                                     f"local model carries this rank's share of its pending "
                                     f"update), found {local_weight}")
        if local_weight != 1 and not local_error:
            raise ConfigurationError("local_weight applies to the local models of "
                                     "local_error=True only")
        self.local_weight = float(local_weight)
        self.lr = lr
        self._layout: dict[int, tuple[tuple[int, int], ...]] = {}
        self._params: dict[int, list[torch.nn.Parameter]] = {}
        self.shared: dict[Any, torch.Tensor] = {}

    @property
    def local_error(self) -> bool:
        return self.sync.local_error

    def current_lr(self) -> float:
        """The learning rate of this step (from ``lr``: float, callable or optimizer)."""
        lr = self.lr
        if hasattr(lr, "param_groups"):
            return float(lr.param_groups[0]["lr"])
        return float(lr() if callable(lr) else lr)

    @contextlib.contextmanager
    def shared_parameters(self) -> Iterator[None]:
        """With ``local_error``: inside the block, every bucketed parameter holds the shared
        model (identical on every rank); the local models are restored on exit. Without
        ``local_error`` (or before the first step) the parameters are already shared."""
        saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for index, layout in self._layout.items():
                    x = self.shared.get((index, layout))
                    if x is None:
                        continue
                    off = 0
                    for q in self._params[index]:
                        saved.append((q, q.detach().clone()))
                        q.copy_(x[off:off + q.numel()].view_as(q))
                        off += q.numel()
            yield
        finally:
            with torch.no_grad():
                for q, old in saved:
                    q.copy_(old)

    @property
    def transform(self) -> LocalTransform | None:
        return self.sync.transform

    @property
    def local_adam(self) -> LocalTransform | None:  # older name
        return self.sync.transform

    def bucket_key(self, bucket: Any) -> tuple[int, tuple[tuple[int, int], ...]]:
        """Error-feedback key of a DDP bucket: its index and the identity, size and order of
        its parameters. DDP rebuilds its buckets once after the first step (gradient-ready
        order), so the same index may then hold its parameters in another order: the
        residual, the shared model and the transform's state are then re-laid out parameter
        by parameter, also when parameters move between buckets (taken from the old
        buckets' state). A parameter found in no old bucket gets no state (zero residual,
        and with ``local_error`` its current value as the shared model)."""
        index = bucket.index()
        params = list(bucket.parameters())
        layout: _BucketLayout = tuple((id(p), p.numel()) for p in params)
        if self._layout.get(index) != layout:
            self._params[index] = params
            self._layout[index] = layout
            stores = [self.sync.feedback.memory, self.shared]
            if self.sync.transform is not None:
                stores.append(self.sync.transform.state)
            claimed = {pid for lay in self._layout.values() for pid, _ in lay}
            for store in stores:
                # a parameter is in one current bucket: its state is in the one old entry
                # that holds it (the other entries cannot hold a parameter of this layout)
                pool: dict[int, Any] = {}
                for (j, lay), value in list(store.items()):
                    pieces = _split(value, lay)
                    if pieces is not None:
                        pool.update({pid: pieces[pid] for pid, _ in layout if pid in pieces})
                    if self._layout.get(j) != lay and all(pid in claimed for pid, _ in lay):
                        del store[(j, lay)]  # every parameter of it has moved on
                if all(pid in pool for pid, _ in layout):
                    store[(index, layout)] = _join([pool[pid] for pid, _ in layout])
        return (index, layout)

    @property
    def sent_entries(self) -> int:
        return self.sync.sent_entries

    @property
    def dense_entries(self) -> int:
        return self.sync.dense_entries


def _make_hook(default: DDPCompressionState) -> Any:
    # a plain function without annotations: DDP inspects __name__, __qualname__ and the
    # annotations (which must be absent or exactly dist.GradBucket / Future[Tensor])
    def oncoscale_compression_hook(state, bucket):  # noqa: ANN001,ANN202
        st = state if isinstance(state, DDPCompressionState) else default
        buf = bucket.buffer()
        fut = torch.futures.Future()
        key = st.bucket_key(bucket)
        if not st.local_error:
            work = st.sync.reduce(key, buf.detach(), async_op=True)

            def finish(result: Any) -> torch.Tensor:
                return result.to_dense().to(buf.dtype).view(buf.shape)
        else:
            lr = st.current_lr()
            if not lr > 0:  # nothing moves at lr 0 (on every rank alike): no communication
                fut.set_result(torch.zeros_like(buf))
                return fut
            shared = st.shared.get(key)
            if shared is None:  # first step: the parameters are the shared model
                shared = st.shared[key] = torch.cat(
                    [q.detach().reshape(-1) for q in st._params[key[0]]])
            work = st.sync.reduce(key, buf.detach(), async_op=True, lr=lr)
            delta = st.sync.local_delta.pop(key)

            def finish(result: Any) -> torch.Tensor:
                avg = result.to_dense().to(shared.dtype)
                shared.sub_(avg)  # the shared model: what every rank sent, averaged
                # the local model: + this rank's unsent part (x local_weight); SGD(lr)
                # applies it: local = shared - local_weight * residual
                return ((avg + st.local_weight * delta) / lr).to(buf.dtype).view(buf.shape)

        def done(f: Any) -> None:
            try:
                fut.set_result(finish(f.result()))
            except Exception as exc:  # noqa: BLE001 - hand every failure to DDP
                fut.set_exception(exc)

        if hasattr(work, "add_done_callback"):
            work.add_done_callback(done)
        else:  # already complete (called from the communication thread)
            fut.set_result(finish(work.wait()))
        return fut

    oncoscale_compression_hook.state = default
    return oncoscale_compression_hook


def ddp_comm_hook(compressor: Compressor | None = None, error_feedback: bool = True, *,
                  algorithm: str = "auto", group: Group | None = None,
                  codec: str | None = None, local_adam: LocalTransform | None = None,
                  transform: LocalTransform | None = None, local_error: bool = False,
                  lr: Any = None, local_weight: float = 1.0,
                  state: DDPCompressionState | None = None) -> Callable[..., Any]:
    """Build a DDP comm hook; register it with ``model.register_comm_hook(hook.state, hook)``.

    ``compressor``: e.g. ``TopK(0.01)``, ``RandomK(0.01)``, ``Threshold(1e-3)``,
    ``QSGD(8)``, ``TopK(0.01) | QSGD(8)``, or ``None`` (dense). ``algorithm``: one of
    :func:`~oncoscale.comm.sparse_allreduce`'s, or ``"packed_allgather"`` with
    ``TopK(ratio, bucket_size=b)`` (1-byte offsets for b <= 256, one allgather; see
    :class:`~oncoscale.comm.GradientCompression`): the fewest bytes for TopK 1 %.
    ``error_feedback``: keep residuals per bucket. ``codec``: wire format of the values
    (e.g. ``"fp16"``) unless the compressor names one. Returns
    ``hook(state, bucket) -> Future[Tensor]`` with the state at ``hook.state``.
    ``local_adam``: compress Adam's direction computed from each rank's own gradient
    (:class:`~oncoscale.comm.compress.LocalAdam`) and train with plain SGD at Adam's
    learning rate: TopK + error feedback with Adam otherwise slows training by about the
    compression ratio. ``transform``: any
    :class:`~oncoscale.comm.compress.LocalTransform` (``local_adam`` is the older name of
    this argument), e.g. :class:`~oncoscale.comm.compress.MomentumCorrection` (DGC): the
    velocity is kept on each rank and compressed, for momentum SGD; train with
    ``torch.optim.SGD(lr, momentum=0)``. ``state``: reuse an existing
    :class:`DDPCompressionState`. ``local_error`` and ``lr``: CSER-style local models
    (each rank's parameters carry its own unsent update; evaluate or save inside
    ``with hook.state.shared_parameters():``), see :class:`DDPCompressionState`. With
    ``LocalAdam`` and TopK 1 % this brings the GDC autoencoder's held-out MSE within 0.6 % of
    dense Adam at 2 ranks (3.8 % at 4), where plain error feedback stays 20-30 % above it
    (``bench_comm_training``, 300 steps); with ``local_error=True``,
    ``LocalAdam(noise_ratio=1/p)`` and ``local_weight=1/p``: -1.29 % / +0.48 % at 2 / 4
    ranks (BENCHMARKS.md; see :class:`DDPCompressionState`).
    Call it on every rank (it may create the world's communication channel: collective).
    """
    if state is None:
        state = DDPCompressionState(compressor, error_feedback=error_feedback,
                                    algorithm=algorithm, group=group, codec=codec,
                                    local_adam=local_adam, transform=transform,
                                    local_error=local_error, lr=lr,
                                    local_weight=local_weight)
    return _make_hook(state)
