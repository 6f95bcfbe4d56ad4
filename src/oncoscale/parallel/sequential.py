"""Single-process training loop: the reference path of ``oncoscale.parallel.fit``.

:func:`fit_sequential` trains any ``nn.Module`` on one device with seeded mini-batches,
optional validation, metrics, early stopping, atomic checkpoints and exact resume. The
parallel engine dispatches single-process ``fit`` here and its equivalence tests compare
against it. :func:`train_autoencoder` is the one-call autoencoder trainer the GDC pipeline uses.

Reading order of one run (top to bottom in :func:`fit_sequential`):
seed -> split validation -> move model and data to the device -> build the optimizer ->
resume from ``checkpoint_dir`` if a checkpoint is there -> for each epoch: shuffle with the
seeded generator, step over mini-batches, evaluate, record history, early-stopping bookkeeping,
checkpoint -> restore best weights (when early stopping asks) -> :class:`FitResult`.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.parallel.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

__all__ = ["EarlyStopping", "FitResult", "fit_sequential", "fused_optimizer", "train_autoencoder"]

OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]
DataLike = Dataset | torch.Tensor | np.ndarray | tuple | list


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored loss has not improved by more than ``min_delta`` for
    ``patience`` epochs in a row.

    ``monitor``: ``"val_loss"``, ``"train_loss"`` or ``"auto"`` (val_loss when there is
    validation data, else train_loss). ``restore_best``: load the weights of the best epoch
    into the model when training ends (stopped early or not).
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "auto"
    restore_best: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                or self.patience < 1:
            raise ConfigurationError(
                f"early_stopping.patience: expected an integer >= 1, found {self.patience!r}")
        if not (isinstance(self.min_delta, int | float) and self.min_delta >= 0):
            raise ConfigurationError(
                f"early_stopping.min_delta: expected a number >= 0, found {self.min_delta!r}")
        if self.monitor not in ("auto", "val_loss", "train_loss"):
            raise ConfigurationError("early_stopping.monitor: expected 'auto', 'val_loss' or "
                                     f"'train_loss', found {self.monitor!r}")


@dataclass
class FitResult:
    """What :func:`fit_sequential` returns.

    ``history``: one row per completed epoch with columns ``epoch`` (1-based), ``train_loss``,
    ``val_loss`` (NaN without validation), ``train_<metric>`` / ``val_<metric>`` for each
    metric, ``seconds`` (wall time of the epoch: training, evaluation, checkpoint) and
    ``samples_per_s`` (training samples / training-phase seconds).
    ``best_epoch``: 1-based epoch with the lowest monitored loss (val_loss when validation
    exists, else train_loss). ``stopped_early``: early stopping ended the run.
    ``checkpoint``: path of the last checkpoint written or loaded, if any.
    """

    model: nn.Module
    history: pd.DataFrame
    best_epoch: int | None
    stopped_early: bool
    checkpoint: Path | None = None


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class _Tensors:
    """In-memory data: ``x`` (n, ...) and ``y`` (n, ...) or ``None`` meaning y = x."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: torch.Tensor) -> _Tensors:
        return _Tensors(self.x[idx], None if self.y is None else self.y[idx])


@dataclass
class _Items:
    """A map-style ``Dataset`` whose items are ``x`` or ``(x, y)``."""

    dataset: Dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def subset(self, idx: torch.Tensor) -> _Items:
        return _Items(Subset(self.dataset, idx.tolist()))


def _to_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"{what}: expected a numeric array, found dtype {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a))
    if hasattr(a, "toarray"):  # scipy sparse matrix
        return torch.from_numpy(np.ascontiguousarray(a.toarray()))
    raise InputError(f"{what}: expected a torch.Tensor, numpy array, tuple of them or a "
                     f"Dataset, found {type(a).__name__}")


def _check_finite(t: torch.Tensor, what: str, chunk_elems: int = 1 << 24) -> None:
    """Raise InputError naming the count and first position of NaN/inf values (checked in
    row chunks so a cohort-sized matrix needs no full-size boolean copy)."""
    if not t.is_floating_point() or t.numel() == 0:
        return
    rows = max(1, chunk_elems // max(1, t[0].numel()))
    for start in range(0, t.shape[0], rows):
        part = t[start:start + rows]
        if bool(torch.isfinite(part).all()):
            continue
        n_bad = sum(int((~torch.isfinite(t[s:s + rows])).sum())
                    for s in range(start, t.shape[0], rows))
        first = tuple(int(i) for i in (~torch.isfinite(part)).nonzero()[0])
        first = (first[0] + start, *first[1:])
        where = f"sample {first[0]}" + (f", feature {first[1]}" if len(first) > 1 else "")
        raise InputError(f"{what}: expected finite values, found {n_bad} NaN/inf "
                         f"(first at {where})")


def _as_source(data: DataLike, target: Any, what: str) -> _Tensors | _Items:
    if isinstance(data, TensorDataset) and target is None and len(data.tensors) in (1, 2):
        data = tuple(data.tensors)
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        if target is not None:
            raise ConfigurationError(f"{what}: target= is only for tensor/array data; a "
                                     "Dataset must yield (x, y) items itself")
        if len(data) == 0:  # type: ignore[arg-type]
            raise InputError(f"{what}: expected at least one sample, found an empty Dataset")
        return _Items(data)
    if isinstance(data, tuple | list):
        if not 1 <= len(data) <= 2:
            raise InputError(f"{what}: expected (x,) or (x, y), found a sequence of "
                             f"{len(data)} items")
        if len(data) == 2 and target is not None:
            raise ConfigurationError(f"{what}: give the target either in the (x, y) tuple or "
                                     "as target=, not both")
        x = _to_tensor(data[0], f"{what} x")
        y = _to_tensor(data[1], f"{what} y") if len(data) == 2 else None
    else:
        x, y = _to_tensor(data, what), None
    if target is not None:
        y = _to_tensor(target, f"{what} target")
    if x.dim() == 0 or x.shape[0] == 0:
        raise InputError(f"{what}: expected at least one sample, found shape {tuple(x.shape)}")
    if y is not None and y.shape[0] != x.shape[0]:
        raise InputError(f"{what}: inputs and targets differ in length: {x.shape[0]} samples "
                         f"vs {y.shape[0]} targets")
    _check_finite(x, what)
    if y is not None:
        _check_finite(y, f"{what} target")
    return _Tensors(x, y)


def _cast(t: torch.Tensor, device: torch.device, dtype: torch.dtype,
          non_blocking: bool = False) -> torch.Tensor:
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
    return t.to(device=device, non_blocking=non_blocking)


class _Batches:
    """Mini-batches of a source in a given order, on ``device``.

    Tensor data is indexed directly (no per-sample collation); it lives on the device when it
    fits (CPU always; CUDA when under a quarter of the free memory), else it stays in pinned
    host memory and each batch is copied asynchronously.
    """

    def __init__(self, source: _Tensors | _Items, batch_size: int, device: torch.device,
                 dtype: torch.dtype, what: str) -> None:
        self.source, self.batch_size, self.device, self.dtype, self.what = (
            source, batch_size, device, dtype, what)
        self.n = len(source)
        self.on_device = True
        if isinstance(source, _Tensors):
            nbytes = source.x.nbytes + (0 if source.y is None else source.y.nbytes)
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                self.on_device = nbytes < free // 4
            if self.on_device:
                self.x = _cast(source.x, device, dtype)
                self.y = None if source.y is None else _cast(source.y, device, dtype)
            else:
                self.x = source.x.pin_memory()
                self.y = None if source.y is None else source.y.pin_memory()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def iterate(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches; ``order`` is a permutation (CPU) or None for 0..n-1."""
        if isinstance(self.source, _Items):
            yield from self._iterate_items(order)
            return
        bs = self.batch_size
        if order is not None and self.on_device:
            order = order.to(self.device)
        for start in range(0, self.n, bs):
            if order is None:
                xb = self.x[start:start + bs]
                yb = None if self.y is None else self.y[start:start + bs]
            else:
                idx = order[start:start + bs]
                xb = self.x.index_select(0, idx)
                yb = None if self.y is None else self.y.index_select(0, idx)
            if not self.on_device:
                xb = _cast(xb, self.device, self.dtype, non_blocking=True)
                yb = None if yb is None else _cast(yb, self.device, self.dtype, True)
            yield xb, (xb if yb is None else yb)

    def _iterate_items(self, order: torch.Tensor | None
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = range(self.n) if order is None else order.tolist()
        loader = DataLoader(self.source.dataset, batch_size=self.batch_size,  # type: ignore
                            sampler=sampler, num_workers=0,
                            pin_memory=self.device.type == "cuda")
        for item in loader:
            if isinstance(item, list | tuple):
                if len(item) == 1:
                    xb, yb = item[0], None
                elif len(item) == 2:
                    xb, yb = item
                else:
                    raise InputError(f"{self.what}: Dataset items must be x or (x, y), found "
                                     f"{len(item)} fields")
            else:
                xb, yb = item, None
            _check_finite(xb, self.what)
            xb = _cast(xb, self.device, self.dtype, non_blocking=True)
            if yb is None:
                yield xb, xb
            else:
                _check_finite(yb, f"{self.what} target")
                yield xb, _cast(yb, self.device, self.dtype, non_blocking=True)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device: {device!r} asked for but CUDA is not available")
    return dev


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigurationError(f"{name}: expected a positive integer, found {value!r}")
    return int(value)


def _early_stopping(spec: Any) -> EarlyStopping | None:
    if spec is None or spec is False:
        return None
    if isinstance(spec, EarlyStopping):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return EarlyStopping(patience=spec)
    if isinstance(spec, Mapping):
        return EarlyStopping(**spec)
    if isinstance(spec, tuple) and len(spec) == 2:
        return EarlyStopping(patience=spec[0], min_delta=spec[1])
    raise ConfigurationError("early_stopping: expected None, a patience (int), (patience, "
                             f"min_delta), a dict or EarlyStopping, found {spec!r}")


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copy of the state dict; tensors shared under several keys (tied weights)
    are copied once and stay shared."""
    memo: dict[tuple[Any, ...], torch.Tensor] = {}
    out = {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), v.stride(), v.dtype)
        if key not in memo:
            memo[key] = v.detach().clone()
        out[k] = memo[key]
    return out


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_optimizer(optimizer: Any, model: nn.Module) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if not callable(optimizer):
        raise ConfigurationError("optimizer: expected a callable params -> torch optimizer "
                                 f"(e.g. lambda p: torch.optim.Adam(p, lr=1e-3)), found "
                                 f"{optimizer!r}")
    opt = optimizer(model.parameters())
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigurationError("optimizer: the callable must return a torch.optim.Optimizer, "
                                 f"returned {type(opt).__name__}")
    return opt


@torch.no_grad()
def _evaluate(model: nn.Module, batches: _Batches, loss_fn: LossFn,
              metrics: Mapping[str, MetricFn]) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        sums = _Sums(metrics)
        for xb, yb in batches.iterate(None):
            pred = model(xb)
            sums.add(loss_fn(pred, yb), pred, yb, xb.shape[0])
        return sums.means()
    finally:
        model.train(was_training)


class _Sums:
    """Sample-weighted sums of loss and metrics, kept on the device (one sync per epoch)."""

    def __init__(self, metrics: Mapping[str, MetricFn]) -> None:
        self.metrics = metrics
        self.totals: dict[str, Any] = {"loss": 0.0, **{k: 0.0 for k in metrics}}
        self.n = 0

    def add(self, loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n: int) -> None:
        self.totals["loss"] = self.totals["loss"] + loss.detach() * n
        if self.metrics:
            with torch.no_grad():
                p = pred.detach()
                for name, fn in self.metrics.items():
                    self.totals[name] = self.totals[name] + fn(p, target) * n
        self.n += n

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.n for k, v in self.totals.items()}


# --------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------
def fit_sequential(model: nn.Module, data: DataLike, loss_fn: LossFn, *,
                   optimizer: OptimizerFactory | torch.optim.Optimizer,
                   epochs: int = 10, batch_size: int = 64,
                   validation: float | DataLike | None = None,
                   metrics: Mapping[str, MetricFn] | None = None,
                   early_stopping: EarlyStopping | int | Mapping[str, Any] | None = None,
                   checkpoint_dir: str | os.PathLike[str] | None = None,
                   checkpoint_every: int = 1, resume: bool = True, seed: int = 0,
                   device: str | torch.device | None = None, progress: bool = True,
                   target: torch.Tensor | np.ndarray | None = None,
                   num_threads: int | None = None, **ignored: Any) -> FitResult:
    """Train ``model`` on one device; the single-process path of ``oncoscale.parallel.fit``.

    Parameters
    ----------
    model:
        Any ``nn.Module``; moved to ``device`` and trained in place.
    data:
        ``Dataset`` (items ``x`` or ``(x, y)``), a tensor / numpy array ``(n, ...)``, or a tuple
        ``(x,)`` / ``(x, y)`` of them. A lone ``x`` without ``target`` is its own target
        (autoencoder). Floating data is cast to the model's parameter dtype. Tensor data is
        checked for NaN/inf up front (Dataset batches as they are read).
    loss_fn:
        ``loss_fn(pred, target) -> scalar tensor`` (a mean over the batch).
    optimizer:
        Callable ``params -> torch.optim.Optimizer`` (built after the model is on ``device``),
        or a ready optimizer over this model's parameters.
    epochs, batch_size:
        Total epochs (on resume: the target count, not additional ones) and mini-batch size
        (the last batch of an epoch may be smaller).
    validation:
        ``None``, a fraction in (0, 1) split off ``data`` by a seeded permutation, or explicit
        validation data in any form ``data`` accepts.
    metrics:
        ``{name: fn(pred, target) -> number}`` evaluated without gradients on every batch and
        averaged weighted by batch size; recorded as ``train_<name>`` and ``val_<name>``.
    early_stopping:
        ``None``, a patience (int), ``(patience, min_delta)``, a dict or :class:`EarlyStopping`.
    checkpoint_dir, checkpoint_every, resume:
        Write ``checkpoint_dir/checkpoint.pt`` atomically every ``checkpoint_every`` epochs and
        at the end (model, optimizer, every RNG state, epoch, history, early-stopping state).
        With ``resume`` an existing checkpoint there is loaded and training continues exactly
        where it stopped (bitwise identical on CPU to an uninterrupted run).
    seed:
        Seeds python, numpy and torch global RNGs and the shuffling generator.
    device:
        ``None``/``"auto"`` (CUDA when available, else CPU), or any torch device.
    progress:
        Show a tqdm progress bar over the batches.
    target:
        Targets for tensor/array ``data`` when not given in a tuple.
    num_threads:
        CPU threads for torch during this call (restored afterwards); ``None`` keeps the
        current setting. On a machine shared with other jobs, fewer threads than cores avoids
        OpenMP threads waiting on descheduled peers (see benchmarks/autoencoder.md).

    Speed: tensor data is indexed directly on the device (no per-sample collation), gradients
    are dropped rather than zeroed, and losses/metrics stay on the device until the end of the
    epoch (one host sync per epoch). The optimizer step is often the largest overhead left:
    pass a fused one (``fused_optimizer("adam", p, lr=...)`` or ``torch.optim.Adam(p,
    fused=True)``); see benchmarks/autoencoder.md.

    Keyword arguments meant for the parallel engine (``strategy``, ``num_partitions``, ...)
    are accepted and ignored here when they describe a single process.

    Returns
    -------
    FitResult
    """
    _check_single_process(ignored)
    if num_threads is None:
        return _fit(model, data, loss_fn, optimizer, epochs, batch_size, validation, metrics,
                    early_stopping, checkpoint_dir, checkpoint_every, resume, seed, device,
                    progress, target)
    previous = torch.get_num_threads()
    torch.set_num_threads(_positive_int(num_threads, "num_threads"))
    try:
        return _fit(model, data, loss_fn, optimizer, epochs, batch_size, validation, metrics,
                    early_stopping, checkpoint_dir, checkpoint_every, resume, seed, device,
                    progress, target)
    finally:
        torch.set_num_threads(previous)


def _fit(model: nn.Module, data: DataLike, loss_fn: LossFn, optimizer: Any, epochs: int,
         batch_size: int, validation: Any, metrics: Mapping[str, MetricFn] | None,
         early_stopping: Any, checkpoint_dir: str | os.PathLike[str] | None,
         checkpoint_every: int, resume: bool, seed: int, device: Any, progress: bool,
         target: Any) -> FitResult:
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    stopper = _early_stopping(early_stopping)
    metrics = dict(metrics or {})
    for name in metrics:
        if name == "loss":
            raise ConfigurationError("metrics: 'loss' is reserved for the loss column")
    if not callable(loss_fn):
        raise ConfigurationError(f"loss_fn: expected a callable (pred, target), found {loss_fn!r}")
    dev = _resolve_device(device)

    # 1. seed, data, split -------------------------------------------------------------------
    _seed_all(seed)
    generator = torch.Generator().manual_seed(seed)
    train_src = _as_source(data, target, "data")
    val_src: _Tensors | _Items | None = None
    if isinstance(validation, float) and not isinstance(validation, bool):
        if not 0.0 < validation < 1.0:
            raise ConfigurationError(
                f"validation: expected a fraction in (0, 1), found {validation}")
        n = len(train_src)
        n_val = max(1, round(validation * n))
        if n - n_val < 1:
            raise InputError(f"validation={validation} leaves no training samples "
                             f"(found {n} samples)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        val_src = train_src.subset(perm[:n_val].sort().values)
        train_src = train_src.subset(perm[n_val:].sort().values)
    elif validation is not None:
        val_src = _as_source(validation, None, "validation")

    model.to(dev)
    dtype = _param_dtype(model)
    train_batches = _Batches(train_src, batch_size, dev, dtype, "data")
    val_batches = (None if val_src is None
                   else _Batches(val_src, batch_size, dev, dtype, "validation"))
    opt = _make_optimizer(optimizer, model)
    monitor = "val_loss" if val_batches is not None else "train_loss"
    if stopper is not None and stopper.monitor != "auto":
        if stopper.monitor == "val_loss" and val_batches is None:
            raise ConfigurationError("early_stopping monitors val_loss but no validation was "
                                     "given (pass validation=0.1 or validation data)")
        monitor = stopper.monitor

    # 2. resume ------------------------------------------------------------------------------
    fingerprint = {"n_train": len(train_src), "n_val": 0 if val_src is None else len(val_src),
                   "batch_size": batch_size, "seed": int(seed)}
    ckpt_file = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir)
    rows: list[dict[str, float]] = []
    best = {"value": None, "epoch": None, "wait": 0, "state": None}
    start_epoch, stopped_early = 0, False
    if ckpt_file is not None and resume and ckpt_file.is_file():
        state = load_checkpoint(ckpt_file)
        _check_fingerprint(state.get("fingerprint", {}), fingerprint, ckpt_file)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"{ckpt_file}: checkpoint does not match this model/optimizer ({exc}); "
                "use resume=False or another checkpoint_dir") from exc
        restore_rng_state(state["rng"], generator)
        rows = [dict(zip(state["history"]["columns"], r, strict=True))
                for r in state["history"]["rows"]]
        best = dict(state["best"])
        start_epoch, stopped_early = int(state["epoch"]), bool(state["stopped_early"])

    # 3. epochs ------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    n_train = len(train_src)
    steps = len(train_batches)
    bar = tqdm(total=epochs * steps, initial=min(start_epoch, epochs) * steps,
               disable=not progress, unit="batch", desc="fit", dynamic_ncols=True)
    checked_loss = False
    try:
        for epoch in range(start_epoch, epochs):
            if stopped_early:
                break
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(n_train, generator=generator)
            sums = _Sums(metrics)
            for xb, yb in train_batches.iterate(order):
                opt.zero_grad(set_to_none=True)
                pred = model(xb)
                loss = loss_fn(pred, yb)
                if not checked_loss:
                    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                        raise ConfigurationError(
                            "loss_fn: expected a scalar tensor (use reduction='mean'), found "
                            f"{getattr(loss, 'shape', type(loss).__name__)}")
                    checked_loss = True
                loss.backward()
                opt.step()
                sums.add(loss, pred, yb, xb.shape[0])
                bar.update(1)
            train = sums.means()  # the one host sync of the training phase
            t_train = time.perf_counter() - t0
            val = ({} if val_batches is None
                   else _evaluate(model, val_batches, loss_fn, metrics))
            row = {"epoch": epoch + 1, "train_loss": train["loss"],
                   "val_loss": val.get("loss", math.nan)}
            for name in metrics:
                row[f"train_{name}"] = train[name]
                row[f"val_{name}"] = val.get(name, math.nan)
            value = row[monitor]
            if math.isfinite(value) and (best["value"] is None or value < best["value"] - (
                    stopper.min_delta if stopper else 0.0)):
                best.update(value=value, epoch=epoch + 1, wait=0)
                if stopper is not None and stopper.restore_best:
                    best["state"] = _clone_state(model)
            else:
                best["wait"] = int(best["wait"]) + 1
                if stopper is not None and best["wait"] >= stopper.patience:
                    stopped_early = True
            if not math.isfinite(train["loss"]):
                warnings.warn(f"epoch {epoch + 1}: training loss is {train['loss']}",
                              RuntimeWarning, stacklevel=2)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", "val_loss")
                             if math.isfinite(row[k])}, refresh=False)
            row["samples_per_s"] = n_train / t_train if t_train > 0 else math.nan
            last = stopped_early or epoch + 1 == epochs
            if ckpt_file is not None and ((epoch + 1) % checkpoint_every == 0 or last):
                row["seconds"] = time.perf_counter() - t0
                _save(ckpt_file, model, opt, generator, rows + [row], best, epoch + 1,
                      stopped_early, fingerprint)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    finally:
        bar.close()

    # 4. result ------------------------------------------------------------------------------
    if stopper is not None and stopper.restore_best and best["state"] is not None:
        model.load_state_dict(best["state"])
    columns = ["epoch", "train_loss", "val_loss",
               *(f"{p}_{m}" for m in metrics for p in ("train", "val")),
               "seconds", "samples_per_s"]
    history = pd.DataFrame(rows, columns=columns)
    history["epoch"] = history["epoch"].astype(int)
    return FitResult(model=model, history=history, best_epoch=best["epoch"],
                     stopped_early=stopped_early,
                     checkpoint=ckpt_file if ckpt_file is not None and ckpt_file.is_file()
                     else None)


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
          generator: torch.Generator, rows: list[dict[str, float]], best: dict[str, Any],
          epoch: int, stopped_early: bool, fingerprint: dict[str, int]) -> None:
    columns = list(rows[0]) if rows else []
    save_checkpoint(path, {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": capture_rng_state(generator),
        "history": {"columns": columns,
                    "rows": [[float(r[c]) for c in columns] for r in rows]},
        "best": {"value": best["value"], "epoch": best["epoch"], "wait": int(best["wait"]),
                 "state": best["state"]},
        "stopped_early": stopped_early,
        "fingerprint": fingerprint,
    })


def _check_fingerprint(saved: Mapping[str, Any], now: Mapping[str, Any], path: Path) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in now.items()
             if saved.get(k) != v]
    if diffs:
        raise ConfigurationError(
            f"{path}: cannot resume exactly, the run differs from the checkpointed one ("
            + "; ".join(diffs) + "); use resume=False or another checkpoint_dir")


_PARALLEL_DEFAULTS = {"strategy": ("auto", "data", None), "num_partitions": (1, None),
                      "num_replicas": (1, None), "micro_batches": (1, None),
                      "schedule": None, "compressor": (None,), "balance": (None,)}


def _check_single_process(extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if key not in _PARALLEL_DEFAULTS:
            raise TypeError(f"fit_sequential() got an unexpected keyword argument {key!r}")
        allowed = _PARALLEL_DEFAULTS[key]
        if allowed is not None and value not in allowed:
            raise ConfigurationError(
                f"{key}={value!r} needs the parallel engine (oncoscale.parallel.fit under "
                "torchrun/mpiexec); fit_sequential runs one process")


def fused_optimizer(name: str, params: Iterator[nn.Parameter], *, lr: float,
                    weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``name="adam"``) or ``SGD`` with momentum (``"sgd"``), using the
    fused single-pass kernel where this torch build supports it for the parameters' device
    and dtype, else the default implementation.

    The fused Adam step reads and writes each parameter once instead of about ten times; on
    the 20,000-gene autoencoder it is the difference between ~8 ms and ~130 ms per step on
    CPU (see benchmarks/autoencoder.md).
    """
    params = list(params)
    kind = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}.get(name)
    if kind is None:
        raise ConfigurationError(f"optimizer: expected 'adam' or 'sgd', found {name!r}")
    extra: dict[str, Any] = {"momentum": momentum} if name == "sgd" else {}
    try:
        return kind(params, lr=lr, weight_decay=weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, lr=lr, weight_decay=weight_decay, **extra)


# --------------------------------------------------------------------------------------------
# the autoencoder convenience trainer
# --------------------------------------------------------------------------------------------
def train_autoencoder(X: np.ndarray | torch.Tensor, *, n_latent: int = 1000,
                      hidden: tuple[int, ...] = (), tied: bool = True, epochs: int = 50,
                      batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam",
                      weight_decay: float = 0.0, dropout: float = 0.0,
                      latent_activation: str | None = "sigmoid",
                      output_activation: str | None = "sigmoid",
                      validation: float | np.ndarray | None = 0.1,
                      early_stopping: EarlyStopping | int | None = 10,
                      checkpoint_dir: str | os.PathLike[str] | None = None,
                      checkpoint_every: int = 1, resume: bool = True, seed: int = 0,
                      device: str | torch.device | None = None, progress: bool = True,
                      num_threads: int | None = None) -> tuple[nn.Module, FitResult]:
    """Build and train the GDC autoencoder on ``X`` (``(n_samples, n_genes)``, scaled to
    [0, 1] for the default sigmoid output) with MSE loss and Pearson correlation reported.

    The model (:class:`oncoscale.models.Autoencoder`) is initialised after seeding with
    ``seed``, so the whole run is reproducible. ``optimizer``: ``"adam"`` or ``"sgd"``
    (momentum 0.9), learning rate ``lr``. Other arguments as in :func:`fit_sequential`.
    History columns: ``train_loss``/``val_loss`` (MSE) and ``train_pearson``/``val_pearson``
    (mean per-sample Pearson r between input and reconstruction).
    Returns ``(model, FitResult)``; the model is left in eval mode.
    """
    from oncoscale.models.autoencoder import Autoencoder, pearson_correlation

    Xt = _to_tensor(X, "X")
    if Xt.dim() != 2:
        raise InputError(f"X: expected a 2-D matrix (samples, genes), found shape "
                         f"{tuple(Xt.shape)}")
    _check_finite(Xt, "X")
    if output_activation == "sigmoid" and Xt.numel() and (
            float(Xt.min()) < 0.0 or float(Xt.max()) > 1.0):
        warnings.warn("X has values outside [0, 1] but the output activation is a sigmoid; "
                      "scale genes to [0, 1] first (expression.preprocess)", UserWarning,
                      stacklevel=2)
    opt_name = str(optimizer).lower()
    if opt_name not in ("adam", "sgd"):
        raise ConfigurationError(f"optimizer: expected 'adam' or 'sgd', found {optimizer!r}")

    def make_opt(p: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        return fused_optimizer(opt_name, p, lr=lr, weight_decay=weight_decay)

    torch.manual_seed(seed)
    model = Autoencoder(int(Xt.shape[1]), n_latent, hidden=hidden, tied=tied,
                        latent_activation=latent_activation,
                        output_activation=output_activation, dropout=dropout)
    result = fit_sequential(model, Xt, nn.MSELoss(), optimizer=make_opt, epochs=epochs,
                            batch_size=batch_size, validation=validation,
                            metrics={"pearson": pearson_correlation},
                            early_stopping=early_stopping, checkpoint_dir=checkpoint_dir,
                            checkpoint_every=checkpoint_every, resume=resume, seed=seed,
                            device=device, progress=progress, num_threads=num_threads)
    model.eval()
    return model, result

