"""``fit``: data-, model- and hybrid-parallel training of any PyTorch model in one call.

Reading order of one run (top to bottom in :func:`fit`):
join the world -> choose the layout (replicas x partitions) -> single process? hand over to
``fit_sequential`` -> trace and profile the model, balance and print the plan -> build this
rank's stage, its replica gradient sync and its optimizer -> resume from the newest
checkpoint every rank holds -> for each epoch and global batch: take this replica's shard,
split it into micro-batches, run the pipeline schedule, sum gradients over replicas, step ->
checkpoint -> gather the model on rank 0 when asked -> :class:`ParallelFitResult`.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from oncoscale.errors import CommunicationError, ConfigurationError
from oncoscale.parallel import _dist
from oncoscale.parallel.balance import Plan, make_plan, resolve_boundaries
from oncoscale.parallel.layout import Layout
from oncoscale.parallel.partition import profile_units, split_graph
from oncoscale.parallel.pipeline import StageRuntime
from oncoscale.parallel.replica import GradientSync
from oncoscale.parallel.schedule import SCHEDULES, bubble_fraction

STRATEGIES = ("auto", "data", "model", "hybrid")


def resolve_layout(strategy: str, world_size: int, num_partitions: int | None,
                   num_replicas: int | None) -> tuple[int, int]:
    """``(P, R)`` for ``strategy`` on ``world_size`` ranks; ConfigurationError if impossible."""
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"strategy must be one of {STRATEGIES}, found {strategy!r}")
    P, R = num_partitions, num_replicas
    for name, v in (("num_partitions", P), ("num_replicas", R)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigurationError(f"{name} must be a positive integer, found {v!r}")
    if strategy == "data":
        if P not in (None, 1):
            raise ConfigurationError(f"strategy='data' keeps the whole model on every rank; "
                                     f"num_partitions must be 1, found {P}")
        P, R = 1, R or world_size
    elif strategy == "model":
        if R not in (None, 1):
            raise ConfigurationError(f"strategy='model' uses one replica; num_replicas must "
                                     f"be 1, found {R}")
        P, R = P or world_size, 1
    else:  # auto / hybrid
        if P is None and R is None:
            if strategy == "hybrid":
                raise ConfigurationError("strategy='hybrid' needs num_partitions or "
                                         "num_replicas")
            P, R = 1, world_size
        elif P is None:
            P = max(1, world_size // R)  # type: ignore[operator]
        elif R is None:
            R = max(1, world_size // P)
    assert P is not None and R is not None
    if world_size != P * R:
        raise ConfigurationError(
            f"world size {world_size} != num_partitions x num_replicas = {P} x {R} = {P * R}; "
            f"launch {P * R} ranks (e.g. `oncoscale launch -n {P * R} -- ...` or torchrun "
            f"--nproc-per-node {P * R}) or change the layout")
    return P, R


@dataclass
class ParallelFitResult:
    """What :func:`fit` returns on every rank (also unpacks as ``model, history``).

    ``model``: the user's model; its parameters in this rank's stage are trained (all of
    them when ``num_partitions == 1``, or on rank 0 with ``gather_on_rank0=True``).
    ``history``: one row per epoch: ``epoch``, ``train_loss`` (global-batch mean over the
    epoch, identical on every rank), ``val_loss`` (NaN), ``seconds``, ``samples_per_s``,
    ``idle_fraction`` (this rank's measured waiting share).
    ``stage``: this rank's stage module; ``plan``: the partition plan (None when P == 1);
    ``layout``: where this rank sits; ``stats``: step losses, ideal bubble, peak memory.
    """

    model: nn.Module
    history: pd.DataFrame
    stage: nn.Module | None = None
    plan: Plan | None = None
    layout: Layout | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False
    checkpoint: Path | None = None

    def __iter__(self):  # noqa: ANN204 - tuple-style unpacking: model, history = fit(...)
        yield self.model
        yield self.history


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def fit(model: nn.Module, data: Any, loss_fn: Callable[[Any, Any], torch.Tensor], *,
        optimizer: Callable[[Any], torch.optim.Optimizer], epochs: int = 1,
        batch_size: int = 64, strategy: str = "auto", num_partitions: int | None = None,
        num_replicas: int | None = None, micro_batches: int | None = None,
        schedule: str = "1f1b", compressor: Any = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None, resume: bool = True,
        balance: str | Sequence[int] | Sequence[str] | None = None,
        gather_on_rank0: bool = False, seed: int = 0, bucket_cap_mb: float = 25.0,
        max_steps: int | None = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        verbose: bool = True, device: str | torch.device | None = None,
        backend: str = "auto", target: Any = None, sync_buffers: bool = True,
        **sequential_kwargs: Any,
        ) -> Any:
    """Train ``model`` with data, model (pipeline) or hybrid parallelism.

    Run it in every rank of a job started by ``torchrun`` / ``mpiexec`` / ``srun`` (or
    ``oncoscale launch -n N -- python script.py``) with ``num_partitions x num_replicas``
    ranks. One process with ``strategy`` "auto"/"data", one partition and one micro-batch is
    plain training (:func:`oncoscale.parallel.sequential.fit_sequential`).

    Args:
        model: any ``nn.Module`` taking one input tensor ``(batch, ...)``. ``nn.Sequential``
            splits at child boundaries; other modules are traced with ``torch.fx``.
        data: a ``Dataset`` (items ``x`` or ``(x, y)``), a tensor or a tuple ``(x,)`` /
            ``(x, y)``; a lone ``x`` is its own target. Every rank passes the same data.
        loss_fn: ``loss_fn(output, target) -> scalar``, a mean over the (micro-)batch.
        optimizer: ``params -> torch.optim.Optimizer``; each partition builds its own.
        epochs, batch_size: passes over the data; global mini-batch size (split over the
            replicas, then into micro-batches; gradients equal those of the whole batch).
        strategy: "data" (P=1), "model" (R=1), "hybrid" (P x R) or "auto" (from the given
            sizes, else data parallel over the world).
        num_partitions, num_replicas: ``P`` pipeline stages, ``R`` replicas.
        micro_batches: ``M`` per replica and step (default 1 when P == 1, else 2 P).
        schedule: "gpipe" or "1f1b".
        compressor: optional gradient compressor for the replica allreduce (see
            :mod:`oncoscale.parallel.replica` for the interface).
        checkpoint_dir, checkpoint_every, resume: per-rank atomic checkpoints every
            ``checkpoint_every`` steps (default: each epoch) into ``checkpoint_dir/step-S/``;
            with ``resume`` the newest step that every rank saved is loaded.
        balance: None/"auto"/"time"/"memory"/"params"/"layers" (profiled linear partition), a
            list of P unit counts, or P-1 names of the first module of stages 1..P-1.
        gather_on_rank0: copy every stage's trained state into ``model`` on rank 0.
        seed: seeds the global RNGs and the shuffling generator (as ``fit_sequential``).
        bucket_cap_mb: size of the gradient allreduce buckets.
        max_steps: stop after this many optimizer steps in total (for tests and benchmarks).
        callbacks: functions called after every step with a dict (``step``, ``epoch``,
            ``loss``, ``rank``, ``layout``).
        verbose: print the plan (rank 0) and show progress.
        device: default ``cuda:<local_rank>`` when available, else CPU.
        backend: passed to ``oncoscale.comm.init``.
        target: targets for tensor ``data`` when not in a tuple.
        sync_buffers: after every optimizer step, average the floating-point buffers
            (batch-norm running mean and variance) over the replicas of each partition, so
            every replica holds the same model (integer buffers such as
            ``num_batches_tracked`` already agree). False keeps per-replica statistics.

    Returns:
        :class:`ParallelFitResult` (unpacks as ``model, history``), or the
        ``fit_sequential`` ``FitResult`` for a single plain process.
    """
    if schedule not in SCHEDULES:
        raise ConfigurationError(f"schedule must be one of {SCHEDULES}, found {schedule!r}")
    world_size_env = _dist.launched_size()
    launched = world_size_env > 1 or dist.is_initialized()
    P, R = resolve_layout(strategy, world_size_env if launched else 1, num_partitions,
                          num_replicas)
    plain = (P == 1 and R == 1 and micro_batches in (None, 1) and compressor is None
             and balance is None and max_steps is None and not callbacks)
    if plain and not launched:
        from oncoscale.parallel.sequential import fit_sequential
        return fit_sequential(model, data, loss_fn, optimizer=optimizer, epochs=epochs,
                              batch_size=batch_size, checkpoint_dir=checkpoint_dir,
                              resume=resume, seed=seed, device=device, progress=verbose,
                              target=target, **sequential_kwargs)
    if sequential_kwargs:
        raise ConfigurationError(
            f"these options need a single plain process: {sorted(sequential_kwargs)}")
    world = _dist.init_world(backend) if launched else _dist.WorldInfo(
        0, 1, 0, torch.device("cpu"))
    P, R = resolve_layout(strategy, world.size, num_partitions, num_replicas)
    dev = torch.device(device) if device is not None else world.device
    M = int(micro_batches) if micro_batches is not None else (1 if P == 1 else 2 * P)
    if M < 1:
        raise ConfigurationError(f"micro_batches must be >= 1, found {micro_batches}")
    return _Engine(model, data, loss_fn, optimizer=optimizer, epochs=epochs,
                   batch_size=batch_size, P=P, R=R, M=M, schedule=schedule,
                   compressor=compressor, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, resume=resume, balance=balance,
                   gather_on_rank0=gather_on_rank0, seed=seed, bucket_cap_mb=bucket_cap_mb,
                   max_steps=max_steps, callbacks=callbacks, verbose=verbose, device=dev,
                   world=world, target=target, sync_buffers=sync_buffers).run()


class _BufferSync:
    """Average a stage's floating-point buffers over its replica group (one flat allreduce).

    Batch norm keeps running statistics of the batches each replica saw; without this the
    replicas of a data-parallel run drift apart in those buffers (DDP broadcasts rank 0's
    instead; the mean keeps every replica's batches in the statistics).
    """

    def __init__(self, stage: nn.Module, group: Any, replicas: int) -> None:
        self.buffers = [b for b in stage.buffers() if b.is_floating_point()]
        self.group, self.replicas = group, replicas

    def __call__(self) -> None:
        if not self.buffers:
            return
        flat = torch.cat([b.detach().reshape(-1) for b in self.buffers])
        try:
            dist.all_reduce(flat, group=self.group)
        except RuntimeError as exc:
            raise CommunicationError(f"replica buffer allreduce failed: {exc}") from exc
        flat /= self.replicas
        offset = 0
        with torch.no_grad():
            for b in self.buffers:
                n = b.numel()
                b.copy_(flat[offset:offset + n].view_as(b))
                offset += n


class _Engine:
    """One rank's share of a parallel run (built and driven by :func:`fit`)."""

    def __init__(self, model: nn.Module, data: Any, loss_fn: Callable[[Any, Any], torch.Tensor],
                 *, optimizer: Callable[[Any], torch.optim.Optimizer], epochs: int,
                 batch_size: int, P: int, R: int, M: int, schedule: str, compressor: Any,
                 checkpoint_dir: Any, checkpoint_every: int | None, resume: bool,
                 balance: Any, gather_on_rank0: bool, seed: int, bucket_cap_mb: float,
                 max_steps: int | None, callbacks: Sequence[Callable[[dict[str, Any]], None]],
                 verbose: bool, device: torch.device, world: _dist.WorldInfo,
                 target: Any, sync_buffers: bool = True) -> None:
        from oncoscale.parallel import sequential as seq

        self.seq = seq
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.epochs = seq._positive_int(epochs, "epochs")
        self.batch_size = seq._positive_int(batch_size, "batch_size")
        self.P, self.R, self.M, self.schedule = P, R, M, schedule
        self.compressor, self.balance = compressor, balance
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every, self.resume = checkpoint_every, resume
        self.gather_on_rank0, self.seed, self.bucket_cap_mb = gather_on_rank0, seed, bucket_cap_mb
        self.max_steps, self.callbacks, self.verbose = max_steps, list(callbacks), verbose
        self.device, self.world = device, world
        self.sync_buffers = bool(sync_buffers)
        self.layout = Layout(R, P, world.rank)
        self.source = seq._as_source(data, target, "data")
        self.plan: Plan | None = None

    # ------------------------------------------------------------------ setup
    def _log(self, msg: str) -> None:
        if self.verbose and self.world.rank == 0:
            print(msg, flush=True)

    def _groups(self) -> tuple[Any, Any]:
        """(torch ProcessGroup, oncoscale.comm Group or None) of this partition's replicas.

        Collective over the world."""
        lay, world = self.layout, self.world
        if world.size == 1:
            return None, None
        cw = world.comm_world
        if cw is not None and hasattr(cw, "layout"):
            group = cw.layout(replicas=self.R, partitions=self.P).partition_group
            return group.torch_group, group
        groups = [_dist.new_group(world, [lay.rank_of(r, p) for r in range(self.R)])
                  for p in range(self.P)]
        return groups[lay.partition_index], None

    def _build_stage(self, example: torch.Tensor) -> tuple[nn.Module, list, list, set[int],
                                                           dict[tuple[int, ...], list[int]]]:
        """Trace, profile, balance; returns (stage, in_meta, out_meta, late ids, tied)."""
        model = self.model
        if self.P == 1:
            late = _multi_use_params(model)
            return model, [], [], late, {}
        sg = split_graph(model)
        inflight = self.M if self.schedule == "gpipe" else self.P
        profile_units(sg, example, repeats=2 if self.world.rank == 0 else 1)
        starts = resolve_boundaries(sg, self.P, self.balance, inflight=inflight)
        if self.world.rank == 0:  # a resumed run keeps the partition it was saved with
            starts = self._saved_boundaries() or starts
        starts = _dist.broadcast_object(starts, 0, self.world)
        plan = make_plan(sg, starts)
        self.plan = plan
        self._log(f"oncoscale.parallel plan: {self.P} partitions x {self.R} replicas, "
                  f"{self.M} micro-batches, schedule {self.schedule}, "
                  f"ideal bubble {bubble_fraction(self.P, self.M):.1%}\n{plan.table()}")
        ends = [*starts[1:], sg.num_units]
        k = self.layout.partition_index
        stage, in_meta, out_meta = sg.build_stage(starts[k], ends[k])
        # parameters used by several stages (tied weights) and several units of this stage
        owners: dict[int, list[int]] = {}
        for s, (a, b) in enumerate(zip(starts, ends, strict=True)):
            for pid in sg.stage_params(a, b):
                owners.setdefault(pid, []).append(s)
        tied: dict[tuple[int, ...], list[int]] = {}
        for pid, stages in owners.items():
            if len(stages) > 1:
                tied.setdefault(tuple(stages), []).append(pid)
        uses: dict[int, int] = {}
        for ids in sg.unit_params[starts[k]:ends[k]]:
            for pid in ids:
                uses[pid] = uses.get(pid, 0) + 1
        late = {pid for pid, n in uses.items() if n > 1}
        return stage, in_meta, out_meta, late, tied

    # ------------------------------------------------------------------ run
    def run(self) -> ParallelFitResult:
        seq, lay, world = self.seq, self.layout, self.world
        seq._seed_all(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.model.to(self.device)
        dtype = seq._param_dtype(self.model)
        batches = seq._Batches(self.source, self.batch_size, self.device, dtype, "data")
        n_train = len(self.source)
        steps_per_epoch = len(batches)
        first_x, _ = next(batches.iterate(None))
        mb = max(1, math.ceil(min(self.batch_size, n_train) / self.R / self.M))
        example = first_x[:mb]

        stage, in_meta, out_meta, late, tied = self._build_stage(example)
        stage.to(self.device)
        stage.train()
        replica_group, comm_group = self._groups()
        tied_ids: set[int] = set()
        tied_groups: list[tuple[Any, list[nn.Parameter]]] = []
        by_id = {id(p): p for p in self.model.parameters()}
        for stages in sorted(tied):
            ranks = sorted(lay.rank_of(r, s) for r in range(self.R) for s in stages)
            g = _dist.new_group(world, ranks)
            if lay.partition_index in stages:
                params = [by_id[pid] for pid in sorted(tied[stages], key=_order(self.model))]
                tied_groups.append((g, params))
                tied_ids |= set(tied[stages])
        local = [p for p in stage.parameters() if id(p) not in tied_ids]
        sync = GradientSync(local, replica_group, group_size=self.R,
                            bucket_cap_mb=self.bucket_cap_mb, compressor=self.compressor,
                            late=late, comm_group=comm_group) if self.R > 1 else None
        runtime = StageRuntime(stage, lay, in_meta, out_meta, self.device, self.loss_fn, sync)
        # a stage may hold no parameters (e.g. an activation alone); it has no optimizer
        opt = seq._make_optimizer(self.optimizer, stage) if any(
            p.requires_grad for p in stage.parameters()) else _NoOptimizer()

        buffer_sync = _BufferSync(stage, replica_group, self.R) \
            if self.R > 1 and self.sync_buffers else None

        # resume -------------------------------------------------------------------------
        every = self.checkpoint_every or steps_per_epoch
        state = self._load(stage, opt) if self.checkpoint_dir is not None and self.resume \
            else None
        rows: list[dict[str, float]] = []
        step, epoch, skip, acc = 0, 0, 0, 0.0
        gen_state = generator.get_state()
        step_losses: list[float] = []
        if state is not None:
            rows = [dict(zip(state["history"]["columns"], r, strict=True))
                    for r in state["history"]["rows"]]
            step, epoch, skip = int(state["step"]), int(state["epoch"]), int(state["skip"])
            acc = float(state["acc"])
            step_losses = [float(v) for v in state["step_losses"]]
            gen_state = state["gen_epoch_start"]
            self.seq.restore_rng_state(state["rng"])
            self._log(f"oncoscale.parallel: resumed from step {step} (epoch {epoch + 1})")
        generator.set_state(gen_state)

        # train --------------------------------------------------------------------------
        wait_total = busy_total = 0.0
        done = False
        t_epoch = time.perf_counter()
        samples_epoch = 0
        while epoch < self.epochs and not done:
            gen_epoch_start = generator.get_state()
            order = torch.randperm(n_train, generator=generator)
            for i, (xb, yb) in enumerate(batches.iterate(order)):
                if i < skip:
                    continue
                N = int(xb.shape[0])
                x_r = torch.tensor_split(xb, self.R)[lay.replica_index]
                y_r = torch.tensor_split(yb, self.R)[lay.replica_index]
                xs = [c for c in torch.tensor_split(x_r, self.M) if c.shape[0] > 0]
                ys = [c for c in torch.tensor_split(y_r, self.M) if c.shape[0] > 0]
                sizes = [int(c.shape[0]) for c in xs]
                opt.zero_grad(set_to_none=True)
                loss = runtime.step(xs, ys, sizes, [s / N for s in sizes], self.schedule)
                for g, params in tied_groups:
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        dist.all_reduce(p.grad, group=g)
                opt.step()
                if buffer_sync is not None:
                    buffer_sync()
                wait_total += runtime.last_wait_s
                busy_total += runtime.last_step_s
                step += 1
                samples_epoch += N
                acc += loss * N / n_train
                step_losses.append(loss)
                for cb in self.callbacks:
                    cb({"step": step, "epoch": epoch, "loss": loss, "rank": world.rank,
                        "layout": lay})
                if self.max_steps is not None and step >= self.max_steps:
                    done = True
                if self.checkpoint_dir is not None and step % every == 0 \
                        and i + 1 < steps_per_epoch and not done:
                    self._save(stage, opt, step, epoch, i + 1, acc, rows, step_losses,
                               gen_epoch_start)
                if done:
                    break
            skip = 0
            seconds = time.perf_counter() - t_epoch
            total = self._allreduce_scalar(acc if lay.is_last_stage else 0.0)
            rows.append({"epoch": epoch + 1, "train_loss": total, "val_loss": math.nan,
                         "seconds": seconds,
                         "samples_per_s": samples_epoch / seconds if seconds > 0 else math.nan,
                         "idle_fraction": wait_total / busy_total if busy_total else math.nan})
            epoch += 1
            acc, samples_epoch, wait_total, busy_total = 0.0, 0, 0.0, 0.0
            t_epoch = time.perf_counter()
            if self.checkpoint_dir is not None and (step % every == 0 or epoch == self.epochs
                                                    or done):
                self._save(stage, opt, step, epoch, 0, 0.0, rows, step_losses,
                           generator.get_state())
        if sync is not None:
            sync.close()

        if self.gather_on_rank0 and self.P > 1 and world.size > 1:
            self._gather(stage)
        history = pd.DataFrame(rows, columns=["epoch", "train_loss", "val_loss", "seconds",
                                              "samples_per_s", "idle_fraction"])
        history["epoch"] = history["epoch"].astype(int)
        # step losses are per-replica partial sums on last stages; sum them over the world
        losses = self._allreduce_vector(step_losses if lay.is_last_stage else
                                        [0.0] * len(step_losses))
        stats = {"step_losses": losses,
                 "ideal_bubble": bubble_fraction(self.P, self.M),
                 "peak_memory_bytes": _peak_memory_bytes(self.device),
                 "stage_param_bytes": sum(p.numel() * p.element_size()
                                          for p in stage.parameters()),
                 "recv_buffers_allocated": runtime.pool.allocated,
                 "buckets": 0 if sync is None else len(sync.buckets),
                 "buckets_launched_in_backward": 0 if sync is None
                 else sync.launched_in_backward}
        ckpt = self._latest_dir()
        return ParallelFitResult(model=self.model, history=history, stage=stage,
                                 plan=self.plan, layout=lay, stats=stats,
                                 checkpoint=ckpt)

    # ------------------------------------------------------------------ collectives
    def _allreduce_scalar(self, value: float) -> float:
        return self._allreduce_vector([value])[0]

    def _allreduce_vector(self, values: list[float]) -> list[float]:
        if self.world.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def _gather(self, stage: nn.Module) -> None:
        lay = self.layout
        mine = None
        if lay.replica_index == 0:
            mine = {k: v.detach().cpu() for k, v in stage.state_dict().items()}
        box: list[Any] = [None] * self.world.size if self.world.rank == 0 else None  # type: ignore
        dist.gather_object(mine, box, dst=0)
        if self.world.rank == 0:
            merged: dict[str, torch.Tensor] = {}
            for part in box:  # type: ignore[union-attr]
                if part:
                    merged.update(part)
            self.model.load_state_dict(merged, strict=False)

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> dict[str, Any]:
        return {"n_train": len(self.source), "batch_size": self.batch_size,
                "seed": int(self.seed), "P": self.P, "R": self.R, "M": self.M,
                "boundaries": [] if self.plan is None else list(self.plan.boundaries)}

    def _step_dir(self, step: int) -> Path:
        assert self.checkpoint_dir is not None
        return self.checkpoint_dir / f"step-{step:08d}"

    def _save(self, stage: nn.Module, opt: torch.optim.Optimizer, step: int, epoch: int,
              skip: int, acc: float, rows: list[dict[str, float]], step_losses: list[float],
              gen_epoch_start: torch.Tensor) -> None:
        seq = self.seq
        columns = list(rows[0]) if rows else []
        path = seq.checkpoint_path(self._step_dir(step), rank=self.world.rank)
        seq.save_checkpoint(path, {
            "step": step, "epoch": epoch, "skip": skip, "acc": acc,
            "model": stage.state_dict(), "optimizer": opt.state_dict(),
            "rng": seq.capture_rng_state(), "gen_epoch_start": gen_epoch_start,
            "history": {"columns": columns,
                        "rows": [[float(r[c]) for c in columns] for r in rows]},
            "step_losses": list(step_losses), "fingerprint": self._fingerprint()})
        _dist.barrier(self.world)  # every rank holds `step` before anyone drops older ones
        for old in self._steps_saved():
            if old < step:
                f = seq.checkpoint_path(self._step_dir(old), rank=self.world.rank)
                f.unlink(missing_ok=True)
                if self.world.rank == 0:
                    shutil.rmtree(self._step_dir(old), ignore_errors=True)

    def _saved_boundaries(self) -> list[int] | None:
        """Stage boundaries of the newest checkpoint of this rank (None if none / new run)."""
        if self.checkpoint_dir is None or not self.resume:
            return None
        steps = self._steps_saved()
        if not steps:
            return None
        path = self.seq.checkpoint_path(self._step_dir(steps[-1]), rank=self.world.rank)
        saved = self.seq.load_checkpoint(path).get("fingerprint", {}).get("boundaries")
        return list(saved) if saved and len(saved) == self.P else None

    def _steps_saved(self) -> list[int]:
        assert self.checkpoint_dir is not None
        if not self.checkpoint_dir.is_dir():
            return []
        out = []
        for d in self.checkpoint_dir.glob("step-*"):
            f = self.seq.checkpoint_path(d, rank=self.world.rank)
            if f.is_file():
                out.append(int(d.name.split("-")[1]))
        return sorted(out)

    def _latest_dir(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        steps = self._steps_saved()
        return self._step_dir(steps[-1]) if steps else None

    def _load(self, stage: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        steps = self._steps_saved()
        mine = steps[-1] if steps else -1
        # the newest step every rank holds (a rank may have died between two saves)
        agreed = -int(self._allreduce_max(-mine))
        if agreed < 0:
            return None
        path = self.seq.checkpoint_path(self._step_dir(agreed), rank=self.world.rank)
        state = self.seq.load_checkpoint(path)
        if state.get("fingerprint") != self._fingerprint():
            raise ConfigurationError(
                f"{path}: checkpoint was written by another run ({state.get('fingerprint')} "
                f"vs {self._fingerprint()}); use resume=False or another checkpoint_dir")
        stage.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return state

    def _allreduce_max(self, value: float) -> float:
        if self.world.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


class _NoOptimizer:
    """Stand-in optimizer of a stage without parameters."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def step(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _order(model: nn.Module) -> Callable[[int], int]:
    pos = {id(p): i for i, p in enumerate(model.parameters())}
    return lambda pid: pos.get(pid, 0)


def _multi_use_params(model: nn.Module) -> set[int]:
    """ids of parameters reachable from more than one module (tied weights)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, n in seen.items() if n > 1}
