"""Benchmark of the sparse collectives and of compressed data-parallel training.

``run_benchmark`` launches ``torchrun`` jobs of 2 and 4 ranks (gloo on CPU, or NCCL when
CUDA is present) that time, for each vector size and density: our algorithms and
``"auto"``, the engine's dense allreduce, torch's gloo sparse COO ``all_reduce``, the plain
allgather of (index, value) pairs and ``auto`` with 8-bit QSGD values; bytes sent per rank
are measured and compared with the cost model. A training job compares DDP with TopK 1 % +
error feedback against dense DDP. Used by ``benchmarks/bench_comm.py`` and
``oncoscale comm bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DENSITIES = (0.0001, 0.001, 0.01, 0.1, 0.5)
OURS = ("recursive_doubling", "split_allgather", "dsar", "auto")


def _time(fn: Any, barrier: Any, repeats: int) -> tuple[float, Any]:
    fn()  # warm-up (connections, calibration)
    times, out = [], None
    for _ in range(repeats):
        barrier()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _collectives(args: argparse.Namespace) -> list[dict]:
    import torch
    import torch.distributed as dist

    import oncoscale.comm as C
    from oncoscale.comm.costmodel import calibrated
    from oncoscale.comm.sparse import index_bytes_for

    world = C.init("torch", timeout=600)
    p, rank = world.size, world.rank
    model = calibrated(world)
    rows: list[dict] = []
    for n in args.sizes:
        for d in args.densities:
            k = max(1, int(round(d * n)))
            gen = torch.Generator().manual_seed(1000 + rank)
            idx = torch.randperm(n, generator=gen)[:k].sort().values
            vals = torch.randn(k, generator=gen)
            vec = C.SparseVector(idx, vals, n)
            dense_ref = vec.to_dense().clone()
            world.allreduce(dense_ref)
            row: dict[str, Any] = {"p": p, "n": n, "density": d, "nnz_per_rank": k}

            def ours(alg: str, codec: str | None = None, v: C.SparseVector = vec) -> Any:
                return C.sparse_allreduce(v, alg, codec=codec)

            methods = {a: (lambda a=a: ours(a)) for a in OURS}
            methods["allgather"] = lambda: ours("allgather")
            methods["auto_qsgd8"] = lambda: ours("auto", "qsgd8")
            methods["ours_dense"] = lambda: ours("dense")

            def engine_dense(v: C.SparseVector = vec) -> Any:
                t = v.to_dense().clone()
                dist.all_reduce(t)
                return t

            def gloo_sparse(coo: torch.Tensor = vec.to_torch()) -> Any:
                t = coo.clone()
                dist.all_reduce(t)
                return t.coalesce()

            methods["dense_allreduce"] = engine_dense
            if not args.skip_coo:
                methods["gloo_sparse_coo"] = gloo_sparse
            for name, fn in methods.items():
                world.stats.reset()
                secs, out = _time(fn, world.barrier, args.repeats)
                sent = world.stats.reset().bytes_sent / (args.repeats + 1)
                res = out.to_dense() if isinstance(out, C.SparseVector) else out.to_dense() \
                    if getattr(out, "is_sparse", False) else out
                err = float((res - dense_ref).abs().max()) / max(1.0,
                                                                 float(dense_ref.abs().max()))
                row[f"t_{name}"] = secs
                row[f"err_{name}"] = err
                if name in OURS or name in ("allgather", "ours_dense"):
                    alg = {"auto": C.last_algorithm(world), "ours_dense": "dense"}.get(name, name)
                    if name == "auto":
                        row["auto_choice"] = alg
                    pred = model.predict(alg, p, n, [k] * p, 4, index_bytes_for(n))
                    row[f"bytes_{name}"] = sent
                    row[f"bytes_model_{name}"] = pred.bytes_per_rank
                    row[f"t_model_{name}"] = pred.seconds
            if rank == 0:
                print(json.dumps(row), flush=True)
            rows.append(row)
    world.shutdown()
    return rows


def _training(args: argparse.Namespace) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    import oncoscale.comm as C

    world = C.init("torch", timeout=600)
    p, rank = world.size, world.rank
    torch.manual_seed(0)
    n_samples, n_in, n_cls = 2048, 64, 10
    centers = torch.randn(n_cls, n_in) * 1.5
    labels = torch.randint(0, n_cls, (n_samples,))
    X = centers[labels] + torch.randn(n_samples, n_in)
    per = n_samples // p
    Xs, ys = X[rank * per:(rank + 1) * per], labels[rank * per:(rank + 1) * per]

    def net() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(n_in, 512), torch.nn.ReLU(),
                                   torch.nn.Linear(512, 256), torch.nn.ReLU(),
                                   torch.nn.Linear(256, n_cls))

    def train(hook: Any) -> dict:
        m = net()
        model = DistributedDataParallel(m, bucket_cap_mb=100)
        if hook is not None:
            model.register_comm_hook(hook.state, hook)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        world.stats.reset()
        world.barrier()
        t0 = time.perf_counter()
        for step in range(args.steps):
            b = torch.arange(step * 64, step * 64 + 64) % per
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xs[b]), ys[b]).backward()
            opt.step()
        world.barrier()
        secs = (time.perf_counter() - t0) / args.steps
        sent = world.stats.reset().bytes_sent
        with torch.no_grad():
            logits = m(X)
            loss = float(torch.nn.functional.cross_entropy(logits, labels))
            acc = float((logits.argmax(1) == labels).float().mean())
        return {"loss": loss, "accuracy": acc, "s_per_step": secs, "bytes_per_rank": sent}

    params = sum(q.numel() for q in net().parameters())
    plain = train(None)
    dense_hook = train(C.ddp_comm_hook(compressor=None, algorithm="dense"))
    topk = train(C.ddp_comm_hook(compressor=C.TopK(0.01), error_feedback=True,
                                 algorithm="recursive_doubling"))
    topk_auto = train(C.ddp_comm_hook(compressor=C.TopK(0.01), error_feedback=True))
    topk_fp16 = train(C.ddp_comm_hook(compressor=C.TopK(0.01), error_feedback=True,
                                      algorithm="recursive_doubling", codec="fp16"))
    out = {"p": p, "params": params, "steps": args.steps, "plain_ddp": plain,
           "dense_via_oncoscale": dense_hook, "topk1_ef": topk, "topk1_ef_auto": topk_auto,
           "topk1_ef_fp16": topk_fp16,
           "bytes_ratio_fp16": dense_hook["bytes_per_rank"] / max(1, topk_fp16["bytes_per_rank"]),
           "loss_ratio": topk["loss"] / plain["loss"],
           "bytes_ratio": dense_hook["bytes_per_rank"] / max(1, topk["bytes_per_rank"])}
    if rank == 0:
        print(json.dumps(out), flush=True)
    world.shutdown()
    return out


def _worker(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("collectives", "training"), required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--skip-coo", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result = _collectives(args) if args.part == "collectives" else _training(args)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(result))
    # leave without C++ static destructors: gloo sometimes aborts there ("terminate called
    # without an active exception") after a clean shutdown, which would fail the job
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(nproc: int, extra: list[str], timeout: float) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), "-m", "oncoscale.comm.bench", "--worker",
               *extra, "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"benchmark job failed ({' '.join(cmd)}):\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(out.read_text())


def _fmt_table(rows: list[dict]) -> str:
    cols = ["recursive_doubling", "split_allgather", "dsar", "auto", "auto_qsgd8", "allgather",
            "dense_allreduce", "gloo_sparse_coo"]
    short = ["rec_dbl", "split_ag", "dsar", "auto", "auto_q8", "allgath", "dense", "gloo_coo"]
    head = f"{'p':>2} {'n':>9} {'dens':>7} " + " ".join(f"{s:>9}" for s in short) + \
        f" {'auto->':>18} {'dense/auto':>10} {'best/auto':>9} {'MB auto':>8} {'MB model':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ts = [r.get(f"t_{c}") for c in cols]
        cells = " ".join(f"{t * 1e3:9.2f}" if t is not None else f"{'-':>9}" for t in ts)
        best_base = min(x for x in (r.get("t_dense_allreduce"), r.get("t_gloo_sparse_coo"))
                        if x is not None)
        lines.append(
            f"{r['p']:>2} {r['n']:>9} {r['density'] * 100:6.2f}% {cells} "
            f"{r.get('auto_choice', '?'):>18} {r['t_dense_allreduce'] / r['t_auto']:10.2f} "
            f"{best_base / r['t_auto']:9.2f} {r['bytes_auto'] / 1e6:8.3f} "
            f"{r['bytes_model_auto'] / 1e6:8.3f}")
    return "\n".join(lines)


def run_benchmark(*, quick: bool = False, world_sizes: tuple[int, ...] = (2, 4),
                  sizes: tuple[int, ...] | None = None, repeats: int | None = None,
                  steps: int | None = None, out: str | Path = "bench-out/comm.json",
                  training: bool = True) -> dict:
    """Run the whole benchmark; print tables; write JSON to ``out`` atomically."""
    from oncoscale._io import atomic_write_text

    sizes = sizes or ((1_000_000,) if quick else (1_000_000, 10_000_000))
    repeats = repeats or (3 if quick else 5)
    steps = steps or 300
    result: dict[str, Any] = {"machine": _machine(), "collectives": [], "training": []}
    for p in world_sizes:
        extra = ["--part", "collectives", "--repeats", str(repeats), "--sizes",
                 *map(str, sizes)]
        rows = _launch(p, extra, timeout=3600)
        result["collectives"].extend(rows)
        print(_fmt_table(rows), flush=True)
    if training:
        for p in world_sizes[:1] if quick else world_sizes:
            tr = _launch(p, ["--part", "training", "--steps", str(steps)], timeout=3600)
            result["training"].append(tr)
            print(_fmt_training(tr), flush=True)
    result["goals"] = _goals(result["collectives"])
    print(json.dumps(result["goals"], indent=1))
    atomic_write_text(out, json.dumps(result, indent=1))
    return result


def _fmt_training(tr: dict) -> str:
    lines = [f"training p={tr['p']} params={tr['params']} steps={tr['steps']}"]
    for name in ("plain_ddp", "dense_via_oncoscale", "topk1_ef", "topk1_ef_auto",
                 "topk1_ef_fp16"):
        r = tr[name]
        lines.append(f"  {name:<20} loss {r['loss']:.4f} acc {r['accuracy']:.3f} "
                     f"{r['s_per_step'] * 1e3:7.2f} ms/step  {r['bytes_per_rank'] / 1e6:9.3f} MB")
    lines.append(f"  loss ratio topk/plain {tr['loss_ratio']:.4f}, "
                 f"bytes dense/topk {tr['bytes_ratio']:.1f}x (fp16 values "
                 f"{tr['bytes_ratio_fp16']:.1f}x)")
    return "\n".join(lines)


def _goals(rows: list[dict]) -> dict:
    out: dict[str, Any] = {}
    at01 = [r["t_dense_allreduce"] / r["t_auto"] for r in rows if r["density"] == 0.001]
    out["speedup_auto_vs_dense_at_0.1pct"] = at01
    out["auto_over_best_baseline_max"] = max(
        r["t_auto"] / min(x for x in (r["t_dense_allreduce"], r.get("t_gloo_sparse_coo"))
                          if x is not None) for r in rows)
    out["qsgd8_speedup_over_auto"] = {f"p{r['p']} n{r['n']} d{r['density']}":
                                      r["t_auto"] / r["t_auto_qsgd8"] for r in rows}
    return out


def _machine() -> dict:
    import platform

    import torch
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2:])
    else:
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--out", default="bench-out/comm.json")
        ns = ap.parse_args()
        run_benchmark(quick=ns.quick, out=ns.out)
