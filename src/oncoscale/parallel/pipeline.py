"""One pipeline stage at run time: receive, compute, send, with non-blocking messages.

Activations go forward and gradients backward between neighbouring stages with
``torch.distributed.isend`` / ``irecv`` (gloo on CPU, NCCL on CUDA). The receive for the
next micro-batch is posted before the current one is computed, so transfers overlap
compute; sends are waited on only at the end of the step. Receive buffers come from a pool
keyed by shape and dtype and are reused across micro-batches and steps.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from oncoscale.errors import CommunicationError
from oncoscale.parallel.layout import Layout
from oncoscale.parallel.partition import TensorMeta
from oncoscale.parallel.replica import GradientSync
from oncoscale.parallel.schedule import make_schedule


class BufferPool:
    """Free tensors by ``(shape, dtype)``; ``get`` reuses one when it can."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = \
            defaultdict(list)
        self.allocated = 0

    def get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        free = self._free[(shape, dtype)]
        if free:
            return free.pop()
        self.allocated += 1
        return torch.empty(shape, dtype=dtype, device=self.device)

    def put(self, t: torch.Tensor) -> None:
        self._free[(tuple(t.shape), t.dtype)].append(t)


class StageRuntime:
    """Runs one stage's share of a pipelined training step.

    Args:
        module: the stage (takes the values of its left cut, returns those of its right cut;
            the last stage returns the model output).
        layout: where this rank sits; neighbours are ``layout.prev_rank/next_rank``.
        in_meta / out_meta: the values crossing the left / right cut.
        loss_fn: ``loss_fn(output, target) -> scalar`` mean over the micro-batch.
        sync: the replica gradient synchroniser of this partition (or None).
    """

    def __init__(self, module: nn.Module, layout: Layout, in_meta: Sequence[TensorMeta],
                 out_meta: Sequence[TensorMeta], device: torch.device,
                 loss_fn: Callable[[Any, Any], torch.Tensor],
                 sync: GradientSync | None = None) -> None:
        self.module = module
        self.layout = layout
        self.in_meta = list(in_meta)
        self.out_meta = list(out_meta)
        self.device = device
        self.loss_fn = loss_fn
        self.sync = sync
        self.pool = BufferPool(device)
        self.wait_s = 0.0
        self.busy_s = 0.0

    # ---------------------------------------------------------------- messages
    def _recv(self, metas: Sequence[TensorMeta], batch: int, src: int,
              only_grad: bool) -> tuple[list[torch.Tensor | None], list[Any]]:
        bufs: list[torch.Tensor | None] = []
        works = []
        for i, meta in enumerate(metas):
            if only_grad and not meta.requires_grad:
                bufs.append(None)
                continue
            buf = self.pool.get((batch, *meta.shape), meta.dtype)
            works.append(dist.irecv(buf, src=src, tag=i))
            bufs.append(buf)
        return bufs, works

    def _wait(self, works: list[Any], what: str) -> None:
        t0 = time.perf_counter()
        try:
            for w in works:
                w.wait()
        except RuntimeError as exc:
            raise CommunicationError(
                f"rank {self.layout.rank} (stage {self.layout.partition_index}): {what} "
                f"failed: {exc}") from exc
        self.wait_s += time.perf_counter() - t0

    # ---------------------------------------------------------------- one step
    def step(self, inputs: Sequence[torch.Tensor] | None, targets: Sequence[Any] | None,
             sizes: Sequence[int], weights: Sequence[float], schedule: str) -> float:
        """Run forward and backward of ``len(sizes)`` micro-batches; return the weighted loss.

        ``inputs`` (first stage) and ``targets`` (last stage) hold one entry per micro-batch;
        ``weights[m]`` scales micro-batch ``m``'s loss (samples / global batch), so the
        returned sum over micro-batches, summed over replicas, is the global-batch loss.
        """
        lay = self.layout
        M = len(sizes)
        t_start = time.perf_counter()
        wait0 = self.wait_s
        first, last = lay.is_first_stage, lay.is_last_stage
        fwd_recv: dict[int, tuple[list[Any], list[Any]]] = {}
        bwd_recv: dict[int, tuple[list[Any], list[Any]]] = {}
        saved: dict[int, tuple[list[torch.Tensor], Any]] = {}
        sends: list[tuple[Any, torch.Tensor]] = []
        loss_sum = torch.zeros((), device=self.device)

        def post_fwd(m: int) -> None:
            if not first and m < M and m not in fwd_recv:
                fwd_recv[m] = self._recv(self.in_meta, sizes[m], lay.prev_rank, False)

        def post_bwd(m: int) -> None:
            if not last and m < M and m not in bwd_recv:
                bwd_recv[m] = self._recv(self.out_meta, sizes[m], lay.next_rank, True)

        ops = make_schedule(schedule, lay.partition_index, lay.num_partitions, M)
        post_fwd(0)
        post_bwd(0)
        try:
            for op, m in ops:
                if op == "F":
                    if first:
                        xs = [inputs[m].to(self.device, non_blocking=True)]  # type: ignore[index]
                        args = xs
                    else:
                        bufs, works = fwd_recv[m]
                        self._wait(works, f"receive of activations for micro-batch {m}")
                        post_fwd(m + 1)
                        xs = [b.detach().requires_grad_(meta.requires_grad)  # type: ignore[union-attr]
                              for b, meta in zip(bufs, self.in_meta, strict=True)]
                        args = [x.clone() if x.requires_grad else x for x in xs]
                    out = self.module(*args)
                    if last:
                        target = targets[m]  # type: ignore[index]
                        loss = self.loss_fn(out, target) * weights[m]
                        loss_sum += loss.detach()
                        saved[m] = (xs, loss)
                    else:
                        outs = list(out) if isinstance(out, (tuple, list)) else [out]
                        saved[m] = (xs, outs)
                        for i, o in enumerate(outs):
                            t = o.detach().contiguous()
                            sends.append((dist.isend(t, dst=lay.next_rank, tag=i), t))
                else:
                    xs, res = saved.pop(m)
                    if self.sync is not None and m == M - 1:
                        self.sync.arm()
                    if last:
                        res.backward()
                    else:
                        bufs, works = bwd_recv.pop(m)
                        self._wait(works, f"receive of gradients for micro-batch {m}")
                        post_bwd(m + 1)
                        outs_g = [(o, g) for o, g, meta in zip(res, bufs, self.out_meta,
                                                               strict=True)
                                  if meta.requires_grad and o.requires_grad]
                        if outs_g:
                            torch.autograd.backward([o for o, _ in outs_g],
                                                    [g for _, g in outs_g])
                        for g in bufs:
                            if g is not None:
                                self.pool.put(g)
                    if not first:
                        for i, (x, meta) in enumerate(zip(xs, self.in_meta, strict=True)):
                            if meta.requires_grad:
                                g = x.grad if x.grad is not None else torch.zeros_like(x)
                                sends.append((dist.isend(g.contiguous(), dst=lay.prev_rank,
                                                         tag=i), g))
                        bufs_in, _ = fwd_recv.pop(m)
                        for b in bufs_in:
                            self.pool.put(b)
                    del xs, res
            self._wait([w for w, _ in sends], "sends")
            if self.sync is not None:
                t0 = time.perf_counter()
                self.sync.finish()
                self.wait_s += time.perf_counter() - t0
        except RuntimeError as exc:
            if isinstance(exc, CommunicationError):
                raise
            raise CommunicationError(
                f"rank {lay.rank} (stage {lay.partition_index}): pipeline step failed: "
                f"{exc}") from exc
        self.last_step_s = time.perf_counter() - t_start
        self.last_wait_s = self.wait_s - wait0
        self.busy_s += self.last_step_s
        return float(loss_sum)
