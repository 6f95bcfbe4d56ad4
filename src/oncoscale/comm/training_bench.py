"""Data-parallel training with compressed gradients vs dense: the GDC autoencoder and a CNN.

Used by ``benchmarks/bench_comm_training.py``. The driver (:func:`run_benchmark`) prepares
two data sets once (cached as ``.npz``), then launches ``torchrun`` jobs of 2 and 4 ranks
(gloo, ``OMP_NUM_THREADS=1``). Every job trains the same model from the same initial
weights with each variant, on the same per-rank batches:

``plain_ddp``      PyTorch DDP, no hook (gloo allreduce; not counted by our backend)
``dense_hook``     :func:`~oncoscale.comm.ddp_comm_hook` without compression (dense
                   allreduce through our backend: the byte reference)
``topk_ef``        ``TopK(0.01)`` of every DDP bucket + error feedback through
                   :func:`~oncoscale.comm.sparse_allreduce` (``auto``: int32 index + fp32 value)
``topk_ef_packed`` the same selection, sent by one allgather of
                   :class:`~oncoscale.comm.compress.BucketPacking` messages (1-byte offsets in
                   255-entry buckets + per-bucket counts + fp32 values)
``topk_ef_packed_fp16`` as above with fp16 values (the rounding goes into the residual)
``topk_ef_packed_fp16_ladam`` as above, compressing each rank's Adam direction
                   (:class:`~oncoscale.comm.compress.LocalAdam`), applied with SGD at Adam's lr
``topk_ef_packed_fp16_ladam_local`` as above with CSER-style local models
                   (``local_error=True``): each rank's gradient is taken at its own model,
                   which already carries its unsent update; evaluated on the shared model
``topk_ef_packed_fp16_ladam_local_vc`` as above with ``LocalAdam(noise_ratio=1/p)``: each
                   rank's Adam second moment estimates that of the p-rank averaged
                   gradient (its per-coordinate noise variance shrunk by 1/p)
``topk_ef_packed_fp16_ladam_local_vc_w`` as above with ``local_weight=1/p``: each rank's
                   local model = shared - its residual / p (its pending update reaches the
                   shared model divided by p; not tuned on this benchmark)
``topk_ef_packed_fp16_dgc`` (models trained with momentum > 0 only) DGC momentum
                   correction (:class:`~oncoscale.comm.compress.MomentumCorrection`): the
                   velocity is kept and compressed on each rank, SGD without momentum

Models: (a) the GDC autoencoder of :mod:`oncoscale.pipeline` (tied ``Autoencoder(genes,
1000)``, Adam) on the demo's synthetic GDC project (``pipeline.DEMO_SYNTHETIC``), metric =
reconstruction MSE on the held-out tumour/normal pairs; (b) a small CNN on synthetic
pathology patches (:func:`oncoscale.datasets.patches.synthetic_patches`), metric =
validation accuracy. Bytes per rank are counted by our backend (``world.stats``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("plain_ddp", "dense_hook", "topk_ef", "topk_ef_packed", "topk_ef_packed_fp16",
            "topk_ef_packed_fp16_ladam", "topk_ef_packed_fp16_ladam_local",
            "topk_ef_packed_fp16_ladam_local_vc", "topk_ef_packed_fp16_ladam_local_vc_w",
            "topk_ef_packed_fp16_dgc")
COMPRESSED = ("topk_ef", "topk_ef_packed", "topk_ef_packed_fp16", "topk_ef_packed_fp16_ladam",
              "topk_ef_packed_fp16_ladam_local", "topk_ef_packed_fp16_ladam_local_vc",
              "topk_ef_packed_fp16_ladam_local_vc_w", "topk_ef_packed_fp16_dgc")
# variants that replace the optimizer by plain SGD (their direction comes from the hook)
SGD_VARIANTS = ("_ladam", "_ladam_local", "_ladam_local_vc", "_ladam_local_vc_w", "_dgc")


# ------------------------------------------------------------------------------ data (driver)
def prepare_autoencoder_data(cache_dir: str | Path, *, quick: bool = False) -> Path:
    """The demo's synthetic GDC project -> preprocessed (train, held-out pairs) as ``.npz``.

    Returns the path of ``ae.npz`` (keys ``train``, ``heldout``: float32 samples x genes in
    [0, 1]); reused when present.
    """
    from oncoscale._io import atomic_path
    from oncoscale.datasets.gdc import make_synthetic_project
    from oncoscale.pipeline import (
        DEMO_SYNTHETIC,
        PipelineConfig,
        build_cohort,
        prepare,
        split_cohorts,
    )

    cache_dir = Path(cache_dir)
    out = cache_dir / ("ae-quick.npz" if quick else "ae.npz")
    if out.exists():
        return out
    sizes = {"n_genes": 2000, "n_train_tumours": 300, "n_pairs": 60} if quick else {}
    project = make_synthetic_project(cache_dir / ("gdc-quick" if quick else "gdc"), seed=0,
                                     **{**DEMO_SYNTHETIC, **sizes})
    cohort = build_cohort(project.sample_sheet, project.data_dir,
                          cache_dir / ("cohort-quick.h5ad" if quick else "cohort.h5ad"),
                          progress=False)
    train, pairs = split_cohorts(cohort)
    train_pp, pairs_pp = prepare(train, pairs, PipelineConfig())

    def dense(x: Any) -> np.ndarray:
        x = x.toarray() if hasattr(x, "toarray") else x
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32))

    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, train=dense(train_pp.X), heldout=dense(pairs_pp.X))
    return out


def prepare_patch_data(cache_dir: str | Path, *, n: int = 2400, size: int = 32,
                       seed: int = 0) -> Path:
    """Synthetic pathology patches, split 75/25 stratified, normalised -> ``.npz``.

    Keys ``x_train``, ``y_train``, ``x_val``, ``y_val`` (float32 N x 3 x size x size, int64).
    """
    from oncoscale._io import atomic_path
    from oncoscale.datasets.patches import synthetic_patches
    from oncoscale.nas.data import PatchSet, channel_stats, split_patches, to_tensor

    out = Path(cache_dir) / f"patches-{n}-{size}-{seed}.npz"
    if out.exists():
        return out
    x, y, _ = synthetic_patches(n, size=max(size, 32), seed=seed)
    sp = split_patches(PatchSet(x, y, ["negative", "positive"]), val=0.25, test=0.0, seed=seed)
    mean, std = channel_stats(sp.train.x)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x_train=to_tensor(sp.train.x, mean, std).numpy(), y_train=sp.train.y,
                 x_val=to_tensor(sp.val.x, mean, std).numpy(), y_val=sp.val.y)
    return out


# ------------------------------------------------------------------------------ models
def small_cnn(n_classes: int = 2) -> Any:
    """A small CNN for 3 x 32 x 32 patches: three strided 3x3 convolutions (16, 32, 64
    channels, ReLU), global average pooling, a linear classifier (about 24 k parameters)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))


def _hook_for(variant: str, lr: float = 1e-3, momentum: float = 0.0, world_size: int = 1
              ) -> Any:
    import oncoscale.comm as C
    from oncoscale.comm.compress import LocalAdam, MomentumCorrection, TopK

    if variant == "plain_ddp":
        return None
    if variant == "dense_hook":
        return C.ddp_comm_hook(compressor=None, algorithm="dense")
    if variant == "topk_ef":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True, algorithm="auto")
    if variant == "topk_ef_packed":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather")
    if variant == "topk_ef_packed_fp16":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16")
    if variant == "topk_ef_packed_fp16_ladam":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16",
                               local_adam=LocalAdam())
    if variant == "topk_ef_packed_fp16_ladam_local":  # lr: replaced by the optimizer below
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16",
                               transform=LocalAdam(), local_error=True, lr=lr)
    if variant == "topk_ef_packed_fp16_ladam_local_vc":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16",
                               transform=LocalAdam(noise_ratio=1 / world_size),
                               local_error=True, lr=lr)
    if variant == "topk_ef_packed_fp16_ladam_local_vc_w":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16",
                               transform=LocalAdam(noise_ratio=1 / world_size),
                               local_error=True, lr=lr, local_weight=1 / world_size)
    if variant == "topk_ef_packed_fp16_dgc":
        return C.ddp_comm_hook(compressor=TopK(0.01), error_feedback=True,
                               algorithm="packed_allgather", codec="fp16",
                               transform=MomentumCorrection(momentum))
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


class _Task:
    """Model factory, optimizer, per-rank batches and the held-out metric of one benchmark."""

    def __init__(self, kind: str, data: str, global_batch: int, world: Any,
                 opt: str | None = None, lr: float | None = None, momentum: float = 0.9,
                 seed: int = 0) -> None:
        import torch

        self.opt = opt or ("adam" if kind == "ae" else "sgd")
        self.lr = lr or (1e-3 if self.opt == "adam" else 0.05)
        self.momentum = momentum
        self.seed = seed  # initial weights (every variant starts from the same ones)

        self.kind, self.p, self.rank = kind, world.size, world.rank
        d = np.load(data)
        if kind == "ae":
            self.x = torch.from_numpy(d["train"])
            self.y = None
            self.x_val, self.y_val = torch.from_numpy(d["heldout"]), None
        else:
            self.x, self.y = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"])
            self.x_val, self.y_val = torch.from_numpy(d["x_val"]), torch.from_numpy(d["y_val"])
        self.global_batch = global_batch
        self.per_rank = max(1, global_batch // self.p)

    def model(self) -> Any:
        import torch

        from oncoscale.models.autoencoder import Autoencoder

        torch.manual_seed(self.seed)
        if self.kind == "ae":
            return Autoencoder(self.x.shape[1], 1000)  # as pipeline.train_autoencoder
        return small_cnn(2)

    def optimizer(self, params: Any) -> Any:
        import torch

        if self.opt == "adam":  # the pipeline's optimizer (PipelineConfig.lr = 1e-3)
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)

    def batch(self, step: int) -> tuple[Any, Any]:
        """This rank's share of global batch ``step`` (same on every variant)."""
        import torch

        n = self.x.shape[0]
        per_epoch = n // (self.per_rank * self.p)
        epoch, j = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + epoch))
        lo = (j * self.p + self.rank) * self.per_rank
        b = perm[lo:lo + self.per_rank]
        return self.x[b], (None if self.y is None else self.y[b])

    def loss(self, model: Any, x: Any, y: Any) -> Any:
        import torch.nn.functional as F

        return F.mse_loss(model(x), x) if self.kind == "ae" else F.cross_entropy(model(x), y)

    def evaluate(self, model: Any) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        model.eval()
        with torch.no_grad():
            out = torch.cat([model(xb) for xb in self.x_val.split(256)])
        model.train()
        if self.kind == "ae":
            return {"heldout_mse": float(F.mse_loss(out, self.x_val))}
        return {"val_accuracy": float((out.argmax(1) == self.y_val).float().mean()),
                "val_loss": float(F.cross_entropy(out, self.y_val))}


def _train_variant(task: _Task, world: Any, variant: str, steps: int, eval_every: int = 0
                   ) -> dict[str, Any]:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    net = task.model()
    ddp = DistributedDataParallel(net)
    hook = _hook_for(variant, task.lr, task.momentum, world.size)
    if hook is not None:
        ddp.register_comm_hook(hook.state, hook)
    if variant.endswith(SGD_VARIANTS):  # the direction comes from the hook: apply it with SGD
        opt = torch.optim.SGD(ddp.parameters(), lr=task.lr)
        if hook.state.local_error:
            hook.state.lr = opt  # read the optimizer's lr at every step
    else:
        opt = task.optimizer(ddp.parameters())
    shared = hook.state.shared_parameters if hook is not None else contextlib.nullcontext
    curve: list[tuple[int, float]] = []
    world.barrier()
    world.stats.reset()
    t0 = time.perf_counter()
    paused = 0.0
    for step in range(steps):
        x, y = task.batch(step)
        opt.zero_grad(set_to_none=True)
        task.loss(ddp, x, y).backward()
        opt.step()
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            t1 = time.perf_counter()  # learning curve: not part of the step time
            with shared():  # local_error: the shared model, not this rank's local one
                curve.append((step + 1, next(iter(task.evaluate(net).values()))))
            paused += time.perf_counter() - t1
    world.barrier()
    secs = time.perf_counter() - t0 - paused
    sent = world.stats.reset().bytes_sent
    with shared():
        flat = torch.cat([q.detach().reshape(-1).clone() for q in net.parameters()])
        final = task.evaluate(net)
    sums = world.allgather(torch.stack([flat.sum(), flat.abs().sum()]).double())
    agree = all(bool(torch.allclose(s, sums[0], rtol=1e-9, atol=0)) for s in sums)
    world.stats.reset()
    out: dict[str, Any] = {"ms_per_step": secs / steps * 1e3,
                           "bytes_per_rank": sent if hook is not None else None,
                           "replicas_agree": agree}
    if hook is not None:
        st = hook.state
        out["sent_fraction"] = st.sent_entries / max(1, st.dense_entries)
    out.update(final)
    if eval_every:
        out["curve"] = [*curve, (steps, next(iter(final.values())))]
    return out


def _worker(argv: list[str]) -> None:
    import torch

    import oncoscale.comm as C

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("ae", "cnn"), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--opt", choices=("adam", "sgd"), default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    world = C.init("torch", timeout=600)
    # the cost model behind algorithm="auto" is calibrated (or read from its cache) on first
    # use: do it here, so that no variant's byte count includes the calibration traffic
    from oncoscale.comm.costmodel import calibrated

    calibrated(world)
    task = _Task(args.model, args.data, args.global_batch, world, args.opt, args.lr,
                 args.momentum, args.seed)
    params = sum(q.numel() for q in task.model().parameters())
    result: dict[str, Any] = {"model": args.model, "p": world.size, "params": params,
                              "seed": args.seed,
                              "steps": args.steps, "global_batch": args.global_batch,
                              "per_rank_batch": task.per_rank, "optimizer": task.opt,
                              "lr": task.lr, "variants": {}}
    for v in args.variants:
        result["variants"][v] = _train_variant(task, world, v, args.steps,
                                                    args.eval_every)
        if world.rank == 0:
            print(f"RESULT {args.model} p={world.size} {v} "
                  f"{json.dumps(result['variants'][v])}", flush=True)
    if world.rank == 0:
        from oncoscale._io import atomic_write_text
        atomic_write_text(args.out, json.dumps(result))
    world.shutdown()


def launch(nproc: int, worker_args: list[str], *, timeout: float = 1800) -> dict[str, Any]:
    """Run :func:`_worker` on ``nproc`` local ranks with torchrun (gloo, 1 thread per rank)."""
    from oncoscale.comm._jobs import run_local_job

    return run_local_job("oncoscale.comm.training_bench", nproc, worker_args, timeout=timeout,
                         what="training job")


# ------------------------------------------------------------------------------ driver
SETTINGS = {  # model -> (steps full, steps quick, optimizer, lr, momentum, eval every)
    "ae": (300, 100, "adam", 1e-3, 0.0, 50),
    "cnn": (600, 200, "sgd", 0.1, 0.0, 100),
}
AE_TOL = 0.01  # goal: held-out MSE at most 1 % (relative) above dense
CNN_TOL = 0.01  # goal: validation accuracy at most 1 point below dense
BYTES_GOAL = 50.0


def goals(job: dict[str, Any]) -> dict[str, Any]:
    """Goal figures of one (model, p) job: metric vs dense (plain DDP), bytes vs the dense hook.

    ``metric_gap``: AE: (MSE - dense MSE) / dense MSE; CNN: dense accuracy - accuracy.
    ``bytes_ratio``: dense-hook bytes / variant bytes (both counted by our backend).
    """
    v = job["variants"]
    ref = v.get("plain_ddp") or v["dense_hook"]
    dense_bytes = v.get("dense_hook", {}).get("bytes_per_rank")
    out: dict[str, Any] = {}
    for name in COMPRESSED:
        if name not in v:
            continue
        r = v[name]
        if job["model"] == "ae":
            gap = (r["heldout_mse"] - ref["heldout_mse"]) / ref["heldout_mse"]
            metric_ok = gap <= AE_TOL
        else:
            gap = ref["val_accuracy"] - r["val_accuracy"]
            metric_ok = gap <= CNN_TOL
        ratio = dense_bytes / r["bytes_per_rank"] if dense_bytes and r["bytes_per_rank"] \
            else None
        out[name] = {"metric_gap": gap, "metric_ok": bool(metric_ok), "bytes_ratio": ratio,
                     "bytes_ok": bool(ratio is not None and ratio >= BYTES_GOAL),
                     "ms_per_step": r["ms_per_step"],
                     "ms_per_step_plain": ref["ms_per_step"]}
        out[name]["pass"] = out[name]["metric_ok"] and out[name]["bytes_ok"]
    return out


def format_table(jobs: list[dict[str, Any]]) -> str:
    """One row per (model, p, variant)."""
    head = (f"{'model':<5} {'p':>2} {'variant':<36} {'metric':>14} {'vs dense':>9} "
            f"{'MB/rank':>9} {'dense/x':>8} {'ms/step':>8} {'sent':>6}")
    lines = [head, "-" * len(head)]
    for job in jobs:
        g = goals(job)
        for name, r in job["variants"].items():
            if job["model"] == "ae":
                metric = f"mse {r['heldout_mse']:.5f}"
            else:
                metric = f"acc {r['val_accuracy'] * 100:6.2f}%"
            gap = g.get(name, {}).get("metric_gap")
            gap_s = "" if gap is None else (f"{gap * 100:+.2f}%" if job["model"] == "ae"
                                            else f"{-gap * 100:+.2f}pt")
            mb = "n/a" if r["bytes_per_rank"] is None else f"{r['bytes_per_rank'] / 1e6:.3f}"
            ratio = g.get(name, {}).get("bytes_ratio")
            ratio_s = "" if ratio is None else f"{ratio:.1f}x"
            sent = r.get("sent_fraction")
            sent_s = "" if sent is None else f"{sent * 100:.2f}%"
            lines.append(f"{job['model']:<5} {job['p']:>2} {name:<36} {metric:>14} {gap_s:>9} "
                         f"{mb:>9} {ratio_s:>8} {r['ms_per_step']:8.2f} {sent_s:>6}")
    return "\n".join(lines)


def format_goals(jobs: list[dict[str, Any]]) -> str:
    lines = [f"goals: metric within 1 % of dense (AE: relative held-out MSE; CNN: <= 1 point "
             f"of validation accuracy), bytes >= {BYTES_GOAL:.0f}x fewer than the dense hook"]
    for job in jobs:
        for name, r in goals(job).items():
            gap = (f"{r['metric_gap'] * 100:+.2f}% MSE" if job["model"] == "ae"
                   else f"{-r['metric_gap'] * 100:+.2f} pt acc")
            ratio = "n/a" if r["bytes_ratio"] is None else f"{r['bytes_ratio']:.1f}x"
            lines.append(
                f"  {job['model']:<3} p={job['p']} {name:<32} metric {gap:>14} "
                f"[{'pass' if r['metric_ok'] else 'FAIL'}]  bytes {ratio:>7} "
                f"[{'pass' if r['bytes_ok'] else 'FAIL'}]  {r['ms_per_step']:.1f} vs "
                f"{r['ms_per_step_plain']:.1f} ms/step plain  -> "
                f"{'PASS' if r['pass'] else 'FAIL'}")
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "loadavg_at_start": load}


def run_benchmark(*, quick: bool = False, world_sizes: tuple[int, ...] = (2, 4),
                  models: tuple[str, ...] = ("ae", "cnn"), variants: tuple[str, ...] = VARIANTS,
                  steps: dict[str, int] | None = None, out: str | Path =
                  "bench-out/comm_training.json", cache_dir: str | Path =
                  "bench-out/comm_training_data", log: Any = print,
                  cnn_momentum: float | None = None, cnn_lr: float | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Prepare data, run every (model, world size) job, print the table and goals, write JSON.

    ``cnn_momentum`` / ``cnn_lr``: train the CNN with momentum SGD instead of the default
    (plain SGD, lr 0.1); the ``_dgc`` variant (momentum correction) runs only then.
    ``seed``: seed of the initial weights (the batches do not depend on it)."""
    from oncoscale._io import atomic_write_text

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": _machine(), "quick": quick, "jobs": []}
    data = {}
    if "ae" in models:
        data["ae"] = prepare_autoencoder_data(cache_dir, quick=quick)
    if "cnn" in models:
        data["cnn"] = prepare_patch_data(cache_dir, n=1200 if quick else 2400)
    for model in models:
        full, short, opt, lr, mom, every = SETTINGS[model]
        n_steps = (steps or {}).get(model, short if quick else full)
        if model == "cnn" and cnn_momentum is not None:
            mom = cnn_momentum
        if model == "cnn" and cnn_lr is not None:
            lr = cnn_lr
        # LocalAdam replaces Adam: only for the model trained with Adam; DGC momentum
        # correction replaces momentum SGD: only where the model is trained with momentum
        mine = [v for v in variants
                if (opt == "adam" or not v.endswith(("_ladam", "_ladam_local",
                                                     "_ladam_local_vc", "_ladam_local_vc_w")))
                and (mom > 0 or not v.endswith("_dgc"))]
        for p in world_sizes:
            t0 = time.perf_counter()
            job = launch(p, ["--model", model, "--data", str(data[model]), "--steps",
                             str(n_steps), "--opt", opt, "--lr", str(lr), "--momentum",
                             str(mom), "--eval-every", str(every), "--seed", str(seed),
                             "--variants", *mine])
            job["wall_s"] = time.perf_counter() - t0
            job["goals"] = goals(job)
            result["jobs"].append(job)
            log(f"{model} p={p}: {n_steps} steps x {len(mine)} variants in "
                f"{job['wall_s']:.0f} s")
    result["wall_s"] = time.perf_counter() - t_start
    result["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(format_table(result["jobs"]))
    log(format_goals(result["jobs"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    log(f"wrote {out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2:])
