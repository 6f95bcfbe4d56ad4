"""Replica gradient synchronisation: bucketed allreduce overlapped with the backward pass.

Gradients of one partition are summed over its replica group. The loss of every
micro-batch is pre-scaled by ``samples / global batch``, so after the sum each gradient is
the gradient of the global-batch mean, exactly as in sequential training.

Buckets are filled in reverse parameter order (the order gradients become ready) and
launched strictly in bucket order as soon as the last micro-batch's backward has
accumulated every gradient in them (``register_post_accumulate_grad_hook``), so the
allreduce of early buckets runs while backward continues.

Compressors
-----------
``compressor`` may be an ``oncoscale.comm`` compressor (``TopK``, ``RandomK``, ``Threshold``,
``QSGD`` or a composition such as ``TopK(0.01) | QSGD(8)``; it is wrapped in
``oncoscale.comm.compress.ErrorFeedback`` with one residual per bucket and reduced with
``oncoscale.comm.sparse_allreduce`` over the replica group), an
``oncoscale.comm.compress.GradientCompression`` (its error feedback, algorithm - the packed
allgather too -, codec and transform such as ``LocalAdam`` or ``MomentumCorrection`` are used,
over the replica group; ``local_error=True`` is for ``ddp_comm_hook`` only), or any object with

* ``allreduce(tensor, group=...) -> Tensor`` (the sum over the group, e.g. a sparse
  collective with error feedback from ``oncoscale.comm``) - used as is; or
* ``compress(tensor, name) -> payload`` and ``decompress(payload, like) -> Tensor``: the
  payload (any picklable object of tensors, e.g. ``(indices, values)``) is all-gathered in
  the replica group and the decompressed payloads are summed. Error feedback (the residual
  ``tensor - decompress(compress(tensor))``) is the compressor's own state, keyed by
  ``name`` (one name per bucket, stable across steps).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from oncoscale.errors import CommunicationError, ConfigurationError


class GradientSync:
    """Sum the gradients of ``params`` over ``group`` in buckets of ``bucket_cap_mb``."""

    def __init__(self, params: list[nn.Parameter], group: Any, *, group_size: int,
                 bucket_cap_mb: float = 25.0, compressor: Any = None,
                 late: set[int] | None = None, comm_group: Any = None) -> None:
        late = late or set()
        self.group = group
        self.comm_group = comm_group
        self._feedback: Any = None
        self.group_size = group_size
        self.compressor = compressor
        self.params = [p for p in params if p.requires_grad]
        cap = max(1, int(bucket_cap_mb * 2**20))
        self.buckets: list[list[nn.Parameter]] = []
        current: list[nn.Parameter] = []
        size = 0
        hooked = [p for p in self.params if id(p) not in late]
        for p in reversed(hooked):
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > cap or p.dtype != current[0].dtype):
                self.buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(current)
        # parameters used more than once per micro-batch get one last bucket, sent in finish()
        late_params = [p for p in self.params if id(p) in late]
        if late_params:
            self.buckets.append(late_params)
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self._pending = [0] * len(self.buckets)
        self._next = 0
        self._works: list[tuple[int, torch.Tensor, Any]] = []
        self.armed = False
        self.launched_in_backward = 0  # buckets whose allreduce started during backward
        self._hooks = []
        if group_size > 1 and compressor is None:
            self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad)
                           for p in hooked]

    @property
    def active(self) -> bool:
        return self.group_size > 1

    def arm(self) -> None:
        """Call before the backward of the last micro-batch of a step."""
        self.armed = True

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self.armed:
            return
        b = self._bucket_of[id(p)]
        self._pending[b] += 1
        while self._next < len(self.buckets) and \
                self._pending[self._next] >= len(self.buckets[self._next]):
            self._launch(self._next)
            self.launched_in_backward += 1
            self._next += 1

    def _flat(self, b: int) -> torch.Tensor:
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                 for p in self.buckets[b]]
        return torch.cat(parts)

    def _launch(self, b: int) -> None:
        flat = self._flat(b)
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        self._works.append((b, flat, work))

    def finish(self) -> None:
        """Launch what the hooks did not, wait for every bucket and write gradients back."""
        if not self.active:
            self.armed = False
            return
        try:
            if self.compressor is not None:
                for b in range(len(self.buckets)):
                    self._works.append((b, self._compressed(b), None))
            else:
                while self._next < len(self.buckets):
                    self._launch(self._next)
                    self._next += 1
            for b, flat, work in self._works:
                if work is not None:
                    work.wait()
                offset = 0
                for p in self.buckets[b]:
                    n = p.numel()
                    view = flat[offset:offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = view.clone()
                    else:
                        p.grad.copy_(view)
                    offset += n
        except RuntimeError as exc:
            raise CommunicationError(f"replica gradient allreduce failed: {exc}") from exc
        finally:
            self._works = []
            self._pending = [0] * len(self.buckets)
            self._next = 0
            self.armed = False

    def _compressed(self, b: int) -> torch.Tensor:
        flat = self._flat(b)
        comp = self.compressor
        sparse = self._comm_reduce(b, flat)
        if sparse is not None:
            return sparse
        if hasattr(comp, "allreduce"):
            out = comp.allreduce(flat, group=self.group)
            return out.wait() if hasattr(out, "wait") and not isinstance(out, torch.Tensor) \
                else out
        payload = comp.compress(flat, f"bucket{b}")
        gathered: list[Any] = [None] * self.group_size
        dist.all_gather_object(gathered, payload, group=self.group)
        total = torch.zeros_like(flat)
        for item in gathered:
            total += comp.decompress(item, flat)
        return total

    def _comm_reduce(self, b: int, flat: torch.Tensor) -> torch.Tensor | None:
        """Sum over the replicas through an ``oncoscale.comm`` compressor (None if not one)."""
        try:
            from oncoscale.comm.collectives import sparse_allreduce
            from oncoscale.comm.compress import Compressor, ErrorFeedback, GradientCompression
        except ImportError:  # pragma: no cover - comm layer absent
            return None
        comp = self.compressor
        if not isinstance(comp, GradientCompression | Compressor):
            return None
        if self.comm_group is None:
            raise CommunicationError("an oncoscale.comm compressor needs the comm layer's "
                                     "replica group (launch through oncoscale.comm.init)")
        if isinstance(comp, GradientCompression):
            # its own transform, wire format and algorithm (packed allgather too), over this
            # rank's replica group; local_error's shared/local models are ddp_comm_hook's
            if comp.local_error:
                raise ConfigurationError(
                    "GradientCompression(local_error=True) needs the shared and local models "
                    "that ddp_comm_hook keeps; the hybrid engine does not: pass "
                    "local_error=False here (or train with DDP and the hook)")
            if comp.group is None:
                comp.group = self.comm_group
            elif comp.group is not self.comm_group:
                raise ConfigurationError("this GradientCompression is bound to another group "
                                         "than the engine's replica group")
            out = comp.reduce(f"bucket{b}", flat, op="sum")
        else:
            if self._feedback is None:
                self._feedback = ErrorFeedback(comp, True)
            vec = self._feedback.compress(f"bucket{b}", flat)
            out = sparse_allreduce(vec, "auto", group=self.comm_group, op="sum",
                                   codec=comp.codec)
        return out.to_dense().to(flat.dtype).reshape(-1)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class TopKCompressor:
    """Reference compressor: keep the ``ratio`` largest-magnitude entries, error feedback.

    ``compress(tensor, name) -> (indices, values)``; the dropped part is remembered per
    ``name`` and added to the next tensor of that name (residual memory).
    """

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True) -> None:
        self.ratio = ratio
        self.error_feedback = error_feedback
        self.residuals: dict[str, torch.Tensor] = {}

    def compress(self, tensor: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = tensor
        if self.error_feedback and name in self.residuals:
            x = x + self.residuals[name]
        k = max(1, int(self.ratio * x.numel()))
        idx = torch.topk(x.abs(), k, sorted=False).indices
        vals = x[idx]
        if self.error_feedback:
            res = x.clone()
            res[idx] = 0
            self.residuals[name] = res
        return idx, vals

    def decompress(self, payload: tuple[torch.Tensor, torch.Tensor],
                   like: torch.Tensor) -> torch.Tensor:
        idx, vals = payload
        out = torch.zeros_like(like)
        out[idx] = vals
        return out
