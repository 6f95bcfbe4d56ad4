"""Score one candidate: train it for a budget, measure validation accuracy / AUC and latency.

:class:`Evaluator` is picklable and holds the prepared patches, so worker processes receive it
once and then call it with genome JSON strings. Every outcome is an :class:`EvalResult`;
nothing a candidate does (raise, diverge, run out of time or memory) escapes as an exception.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from oncoscale.errors import ConfigurationError

STATUS_OK, STATUS_FAILED, STATUS_REJECTED = "ok", "failed", "rejected"


@dataclass
class Budget:
    """Training budget of one candidate; training stops at the first limit reached.

    ``epochs`` (passes over the training split), ``steps`` (optimiser steps) and ``seconds``
    (training wall time) are soft limits. ``timeout_s`` is the hard limit on the whole
    evaluation (training + scoring + latency): a candidate past it is recorded as failed
    (the master also kills a worker that overruns it by more than ``grace_s``).
    ``max_memory_mb`` bounds the training memory of a candidate (weights, gradients,
    optimiser state, activations): a candidate whose estimate exceeds it fails before
    training; one whose measured memory (resident set on CPU, allocator peak on CUDA) grows
    by more than this during training fails at that step, wherever it runs; and under
    :class:`~oncoscale.nas.workers.ProcessPool` a worker whose resident memory grows past it
    is killed from outside (both: "memory budget exceeded"); 0 means no limit.
    ``max_params`` bounds the parameter count (rejected when exceeded).
    """

    epochs: float | None = 2.0
    steps: int | None = None
    seconds: float | None = None
    timeout_s: float = 600.0
    grace_s: float = 30.0
    max_memory_mb: float = 4096.0
    max_params: int | None = 5_000_000

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise ConfigurationError("budget needs at least one of epochs, steps, seconds")


@dataclass
class LatencyConfig:
    """Inference latency: median over ``repeats`` timed forward passes after ``warmup``."""

    batch_size: int = 1
    repeats: int = 20
    warmup: int = 3
    device: str | None = None  # None: the training device


@dataclass
class EvalConfig:
    """How candidates are scored."""

    budget: Budget = field(default_factory=Budget)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    metric: str = "accuracy"  # or "auc": the objective maximised by the search
    augment: bool = True
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "auc"):
            raise ConfigurationError(f"metric must be 'accuracy' or 'auc', got {self.metric!r}")


@dataclass
class EvalResult:
    """Outcome of one evaluation. ``latency_ms`` is per batch of ``LatencyConfig.batch_size``."""

    status: str
    accuracy: float = float("nan")
    auc: float = float("nan")
    latency_ms: float = float("nan")
    params: int = 0
    reason: str = ""
    seconds: float = 0.0
    steps: int = 0
    repairs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedData:
    """Train and validation patches (uint8, N x H x W x 3) with normalisation statistics."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    mean: list[float]
    std: list[float]
    description: str = ""
    classes: list[str] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (int(self.x_train.shape[3]), int(self.x_train.shape[1]),
                int(self.x_train.shape[2]))

    @classmethod
    def from_splits(cls, train: Any, val: Any, description: str = "") -> PreparedData:
        from oncoscale.nas.data import channel_stats

        mean, std = channel_stats(train.x)
        return cls(train.x, train.y, val.x, val.y, len(train.classes), mean, std, description,
                   list(train.classes))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(f"device {name!r} requested but CUDA is not available")
    return name


def measure_latency(model: Any, input_shape: tuple[int, int, int], batch_size: int = 1,
                    repeats: int = 20, warmup: int = 3, device: str = "cpu") -> float:
    """Median wall time in milliseconds of one forward pass of a (batch_size, *input_shape)
    batch on ``device`` (after ``warmup`` untimed passes; CUDA is synchronised)."""
    import torch

    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(max(0, warmup)):
            model(x)
        sync()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def make_optimizer(name: str, params: Any, lr: float) -> Any:
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ConfigurationError(f"unknown optimiser {name!r}")


def rss_mib(pid: int | None = None) -> float | None:
    """Resident memory of process ``pid`` (default: this one) in MiB (Linux ``/proc``;
    None where unavailable)."""
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _memory_now_mib(device: str) -> float | None:
    """What the memory budget watches: CUDA allocator peak on a GPU, else resident memory."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mib()


class _TimeoutError(Exception):
    pass


class _MemoryBudgetError(Exception):
    pass


class _DivergedError(Exception):
    pass


class Evaluator:
    """Train-and-score callable: ``evaluator(genome_json, seed, cand_id) -> EvalResult``.

    Parameters
    ----------
    data : PreparedData
    config : EvalConfig
    weights_dir : folder where the trained ``state_dict`` of each successful candidate is
        saved as ``<cand_id>.pt`` (None: not saved).
    """

    def __init__(self, data: PreparedData, config: EvalConfig | None = None,
                 weights_dir: str | None = None) -> None:
        self.data = data
        self.config = config or EvalConfig()
        self.weights_dir = weights_dir
        self._tensors: tuple[Any, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tensors"] = None
        return state

    def setup(self) -> None:
        """Convert the patches to normalised float tensors once per process."""
        from oncoscale.nas.data import to_tensor

        if self._tensors is None:
            import sklearn.metrics  # noqa: F401  (import once here, not inside a timed task)
            import torch

            import oncoscale.models.genome_net  # noqa: F401
            import oncoscale.nas.genome  # noqa: F401

            # warm-up: the first optimiser step imports torch internals lazily (seconds on a
            # busy machine); pay that here, not inside the first candidate's time budget
            warm = torch.nn.Conv2d(3, 2, 3)
            for name in ("adam", "sgd"):
                opt = make_optimizer(name, warm.parameters(), 1e-3)
                warm(torch.zeros(2, 3, 5, 5)).sum().backward()
                opt.step()
            d = self.data
            self._tensors = (to_tensor(d.x_train, d.mean, d.std), torch.from_numpy(d.y_train),
                             to_tensor(d.x_val, d.mean, d.std), torch.from_numpy(d.y_val))

    # -- the pieces, overridable (tests inject faults by subclassing)
    def build(self, genome: Any) -> tuple[Any, Any]:
        from oncoscale.nas.genome import decode

        return decode(genome, self.data.input_shape, self.data.num_classes,
                      max_params=self.config.budget.max_params)

    def __call__(self, genome_json: str, seed: int = 0, cand_id: int | None = None
                 ) -> EvalResult:
        from oncoscale.models.genome_net import GenomeRejectedError
        from oncoscale.nas.genome import Genome

        t0 = time.perf_counter()
        result = EvalResult(STATUS_FAILED)
        try:
            genome = Genome.from_json(genome_json)
            result = self._evaluate(genome, seed, cand_id, t0)
        except GenomeRejectedError as exc:
            result = EvalResult(STATUS_REJECTED, reason=exc.reason)
        except _TimeoutError as exc:
            result.status, result.reason = STATUS_FAILED, f"timeout: {exc}"
        except _DivergedError as exc:
            result.status, result.reason = STATUS_FAILED, f"diverged: {exc}"
        except _MemoryBudgetError as exc:
            result.status, result.reason = STATUS_FAILED, f"memory budget exceeded ({exc})"
        except MemoryError as exc:
            result.status, result.reason = STATUS_FAILED, f"memory: {exc}"
        except Exception as exc:  # a candidate must never stop the search
            msg = str(exc)
            if "out of memory" in msg.lower() or "can't allocate" in msg.lower():
                result.status, result.reason = STATUS_FAILED, f"memory: {msg[:200]}"
            else:
                tb = traceback.extract_tb(exc.__traceback__)
                where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
                result.status = STATUS_FAILED
                result.reason = f"error: {type(exc).__name__}: {msg[:200]}{where}"
        result.seconds = time.perf_counter() - t0
        return result

    def _evaluate(self, genome: Any, seed: int, cand_id: int | None, t0: float) -> EvalResult:
        import torch
        import torch.nn.functional as F

        from oncoscale.models.genome_net import activation_bytes
        from oncoscale.nas.data import augment_batch

        cfg, budget = self.config, self.config.budget
        device = resolve_device(cfg.device)
        torch.manual_seed(seed)
        net, info = self.build(genome)
        res = EvalResult(STATUS_FAILED, params=info.params, repairs=list(info.repairs))
        bs = int(genome.train.batch_size)
        mem_mb = (info.params * 4 * 4 + activation_bytes(info, bs)) / 2**20
        if budget.max_memory_mb and mem_mb > budget.max_memory_mb:  # 0: no limit
            res.reason = (f"memory: estimated {mem_mb:.0f} MiB for training exceeds the "
                          f"budget of {budget.max_memory_mb:.0f} MiB")
            return res
        self.setup()
        assert self._tensors is not None
        xtr, ytr, xva, yva = self._tensors
        net = net.to(device)
        opt = make_optimizer(genome.train.optimizer, net.parameters(), genome.train.lr)
        n = xtr.shape[0]
        steps_per_epoch = max(1, math.ceil(n / bs))
        max_steps = math.inf
        if budget.epochs is not None:
            max_steps = max(1, int(round(budget.epochs * steps_per_epoch)))
        if budget.steps is not None:
            max_steps = min(max_steps, budget.steps)
        gen = torch.Generator().manual_seed(seed)
        # the measured limit, checked after every step (inline and comm workers too; worker
        # processes are also watched from outside, which catches a single huge step)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        base_mib = _memory_now_mib(device) if budget.max_memory_mb else None
        t_train = time.perf_counter()
        step, perm, pos = 0, torch.randperm(n, generator=gen), 0
        net.train()
        while step < max_steps:
            if pos + bs > n and pos > 0:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + bs]
            pos += bs
            xb, yb = xtr[idx], ytr[idx]
            if cfg.augment:
                xb = augment_batch(xb, gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(net(xb), yb)
            if not torch.isfinite(loss):
                raise _DivergedError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if base_mib is not None:
                grown = (_memory_now_mib(device) or base_mib) - base_mib
                if grown > budget.max_memory_mb:
                    raise _MemoryBudgetError(f"{grown:.0f} MiB > {budget.max_memory_mb:.0f} MiB "
                                             f"at training step {step}")
            now = time.perf_counter()
            if now - t0 > budget.timeout_s:
                raise _TimeoutError(f"evaluation passed {budget.timeout_s:g} s at training step "
                               f"{step}")
            if budget.seconds is not None and now - t_train >= budget.seconds:
                break
        res.steps = step
        # -- validation
        net.eval()
        outs = []
        with torch.inference_mode():
            for i in range(0, xva.shape[0], cfg.eval_batch_size):
                outs.append(net(xva[i:i + cfg.eval_batch_size].to(device)).float().cpu())
        logits = torch.cat(outs)
        if not torch.isfinite(logits).all():
            raise _DivergedError("validation logits are not finite")
        pred = logits.argmax(1).numpy()
        y = yva.numpy()
        res.accuracy = float((pred == y).mean())
        res.auc = _auc(torch.softmax(logits, 1).numpy(), y, self.data.num_classes)
        # -- latency on the target device
        lat = cfg.latency
        res.latency_ms = measure_latency(net, self.data.input_shape, lat.batch_size,
                                         lat.repeats, lat.warmup,
                                         resolve_device(lat.device or device))
        if time.perf_counter() - t0 > budget.timeout_s:
            raise _TimeoutError(f"evaluation passed {budget.timeout_s:g} s while scoring")
        if self.weights_dir is not None and cand_id is not None:
            from oncoscale._io import atomic_path

            with atomic_path(os.path.join(self.weights_dir, f"{cand_id}.pt")) as tmp:
                torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp)
        res.status = STATUS_OK
        return res


def _auc(prob: np.ndarray, y: np.ndarray, k: int) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    try:
        if k == 2:
            return float(roc_auc_score(y, prob[:, 1]))
        return float(roc_auc_score(y, prob, multi_class="ovr", labels=list(range(k))))
    except ValueError:
        return float("nan")
