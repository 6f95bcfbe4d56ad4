"""Benchmark of oncoscale.parallel against PyTorch baselines on the same model and ranks.

    .venv/bin/python benchmarks/bench_parallel.py            # full run
    .venv/bin/python benchmarks/bench_parallel.py --quick    # small models, few steps

For one model (an MLP of equal Linear layers), global batch and number of micro-batches it
measures, in one run: samples/s and per-rank peak memory (max RSS on CPU, max allocated on
CUDA) of sequential training (1 process), PyTorch DDP, torch.distributed.pipelining
ScheduleGPipe / Schedule1F1B on the same stage boundaries, and our data / model
(gpipe, 1f1b) / hybrid strategies; the measured pipeline idle fraction of our model
strategy against the ideal (K-1)/(M+K-1); and the per-rank parameter memory of ResNet-1001
(ResNet-164 with --quick) split into P = 1, 2, 4 partitions, with a short training run on P
ranks. Prints a table and writes bench-out/parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _mlp(width: int, depth: int):
    from torch import nn

    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _data(cfg):
    import torch

    g = torch.Generator().manual_seed(0)
    n = cfg["batch"] * (cfg["steps"] + cfg["warmup"])
    return torch.randn(n, cfg["width"], generator=g), torch.randint(0, 10, (n,), generator=g)


def _opt(p):
    import torch

    return torch.optim.SGD(p, lr=0.01, momentum=0.9)


class _Timer:
    """Times optimizer steps after ``warmup`` steps (a callback of our fit)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times = warmup, []

    def __call__(self, info=None) -> None:
        self.times.append(time.perf_counter())

    def rate(self, batch: int) -> float:
        t = self.times[self.warmup - 1:]
        return batch * (len(t) - 1) / (t[-1] - t[0])


# ----------------------------------------------------------------------------- runners
def run_sequential(cfg) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model, (X, Y) = _mlp(cfg["width"], cfg["depth"]), _data(cfg)
    opt, loss_fn, timer, B = _opt(model.parameters()), nn.CrossEntropyLoss(), \
        _Timer(cfg["warmup"]), cfg["batch"]
    for s in range(cfg["steps"] + cfg["warmup"]):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X[s * B:(s + 1) * B]), Y[s * B:(s + 1) * B]).backward()
        opt.step()
        timer()
    return {"samples_per_s": timer.rate(B)}


def run_ddp(cfg) -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model, (X, Y) = _mlp(cfg["width"], cfg["depth"]), _data(cfg)
    ddp = DistributedDataParallel(model)
    opt, loss_fn, timer, B = _opt(ddp.parameters()), nn.CrossEntropyLoss(), \
        _Timer(cfg["warmup"]), cfg["batch"]
    r, W = dist.get_rank(), dist.get_world_size()
    for s in range(cfg["steps"] + cfg["warmup"]):
        xb = torch.tensor_split(X[s * B:(s + 1) * B], W)[r]
        yb = torch.tensor_split(Y[s * B:(s + 1) * B], W)[r]
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(xb), yb).backward()
        opt.step()
        timer()
    return {"samples_per_s": timer.rate(B)}


def run_torch_pipelining(cfg, schedule: str, starts: list[int]) -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.manual_seed(0)
    model, (X, Y) = _mlp(cfg["width"], cfg["depth"]), _data(cfg)
    r, W = dist.get_rank(), dist.get_world_size()
    children = list(model.children())
    ends = [*starts[1:], len(children)]
    sub = nn.Sequential(*children[starts[r]:ends[r]])
    stage = PipelineStage(sub, r, W, torch.device("cpu"))
    cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    sched = cls(stage, n_microbatches=cfg["micro"], loss_fn=nn.CrossEntropyLoss())
    opt, timer, B = _opt(sub.parameters()), _Timer(cfg["warmup"]), cfg["batch"]
    for s in range(cfg["steps"] + cfg["warmup"]):
        opt.zero_grad(set_to_none=True)
        xb, yb = X[s * B:(s + 1) * B], Y[s * B:(s + 1) * B]
        if r == 0:
            sched.step(xb)
        elif r == W - 1:
            sched.step(target=yb, losses=[])
        else:
            sched.step()
        opt.step()
        timer()
    return {"samples_per_s": timer.rate(B)}


def run_ours(cfg, **kw) -> dict:
    import torch
    from torch import nn

    from oncoscale.parallel import fit

    torch.manual_seed(0)
    model, data = _mlp(cfg["width"], cfg["depth"]), _data(cfg)
    timer = _Timer(cfg["warmup"])
    res = fit(model, data, nn.CrossEntropyLoss(), optimizer=_opt, epochs=1,
              batch_size=cfg["batch"], callbacks=[timer], verbose=False, **kw)
    return {"samples_per_s": timer.rate(cfg["batch"]),
            "idle_fraction": float(res.history.idle_fraction.iloc[-1]),
            "ideal_bubble": res.stats["ideal_bubble"],
            "boundaries": None if res.plan is None else res.plan.boundaries,
            "stage_param_mb": res.stats["stage_param_bytes"] / 2**20}


def run_resnet_memory(cfg) -> dict:
    """Per-rank parameter bytes of a deep ResNet split into P stages, and a short run."""
    import torch
    from torch import nn

    from oncoscale.models.resnet import ResNet
    from oncoscale.parallel import fit

    torch.manual_seed(0)
    model = ResNet(cfg["resnet_depth"], num_classes=10)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    X = torch.randn(8, 3, 32, 32)
    Y = torch.randint(0, 10, (8,))
    t0 = time.perf_counter()
    res = fit(model, (X, Y), nn.CrossEntropyLoss(), optimizer=_opt, epochs=1,
              batch_size=cfg["resnet_batch"], strategy="model", micro_batches=2,
              max_steps=cfg["resnet_steps"], balance="params", verbose=False)
    return {"total_param_mb": total / 2**20,
            "stage_param_mb": res.stats["stage_param_bytes"] / 2**20,
            "seconds": time.perf_counter() - t0,
            "losses": res.stats["step_losses"],
            "boundaries": res.plan.boundaries if res.plan else None}


JOBS = {
    "ddp": (run_ddp, {}),
    "ours data": (run_ours, {"strategy": "data"}),
    "ours model gpipe": (run_ours, {"strategy": "model", "schedule": "gpipe"}),
    "ours model 1f1b": (run_ours, {"strategy": "model", "schedule": "1f1b"}),
    "torch.pipelining gpipe": (run_torch_pipelining, {"schedule": "gpipe"}),
    "torch.pipelining 1f1b": (run_torch_pipelining, {"schedule": "1f1b"}),
    "ours hybrid 2x2 1f1b": (run_ours, {"strategy": "hybrid", "num_partitions": 2,
                                        "num_replicas": 2, "schedule": "1f1b"}),
}


def worker(cfg: dict, out_dir: Path) -> None:
    """One configuration in a fresh set of processes, so peak memory is its own."""
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from oncoscale.comm import init

    world = init()
    r, W = dist.get_rank(), dist.get_world_size()
    import oncoscale.parallel.engine  # noqa: F401 - imports (pandas, ...) are not the config's
    import oncoscale.parallel.sequential  # noqa: F401

    base = _current_rss_mb()  # interpreter, torch, comm layer, oncoscale and pandas
    dist.barrier()
    name = cfg["job"]
    try:
        if name.startswith("resnet"):
            row = run_resnet_memory(cfg)
        else:
            fn, kw = JOBS[name]
            kw = dict(kw)
            if fn is run_ours and kw["strategy"] != "data":
                kw["micro_batches"] = cfg["micro"]
            if fn is run_torch_pipelining:
                row = fn(cfg, kw["schedule"], cfg["boundaries"])
            else:
                row = fn(cfg, **kw)
        row.update(peak_rss_mb=_rss_mb(), added_rss_mb=_rss_mb() - base)
    except Exception as exc:  # noqa: BLE001 - report what a baseline cannot run
        row = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    (out_dir / f"rank{r}.json").write_text(json.dumps([{"name": name, "world": W, "rank": r,
                                                         **row}]))
    dist.barrier()
    world.shutdown()


# ----------------------------------------------------------------------------- driver
def launch(cfg: dict, nproc: int, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("rank*.json"):
        f.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
           f"--nproc-per-node={nproc}", str(HERE), "--worker", json.dumps(cfg), str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    complete = all((out_dir / f"rank{r}.json").exists() for r in range(nproc))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
        if not complete:
            raise SystemExit(f"benchmark launch of {cfg['job']!r} on {nproc} ranks failed")
        print(f"warning: {cfg['job']!r} on {nproc} ranks wrote its results but exited with "
              f"{proc.returncode}", file=sys.stderr)
    rows = []
    for r in range(nproc):
        rows += json.loads((out_dir / f"rank{r}.json").read_text())
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (name, world): best and all samples/s of rank 0 (repeats), memory per
    rank (peak RSS and RSS added by the configuration, max over repeats), idle fractions."""
    out: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["name"], row["world"])
        s = out.setdefault(key, {"name": row["name"], "ranks": row["world"],
                                 "samples_per_s_all": [], "peak_rss_mb": {},
                                 "added_rss_mb": {}, "idle_by_rank": {},
                                 "stage_param_mb_by_rank": {}})
        if "error" in row:
            s["error"] = row["error"]
            continue
        r = row["rank"]
        s["peak_rss_mb"][r] = round(max(s["peak_rss_mb"].get(r, 0), row["peak_rss_mb"]), 1)
        s["added_rss_mb"][r] = round(max(s["added_rss_mb"].get(r, 0), row["added_rss_mb"]), 1)
        if "idle_fraction" in row and not str(row["name"]).startswith("ours data"):
            s["idle_by_rank"].setdefault(r, []).append(round(row["idle_fraction"], 3))
            s["ideal_bubble"] = row["ideal_bubble"]
        if "stage_param_mb" in row:
            s["stage_param_mb_by_rank"][r] = round(row["stage_param_mb"], 2)
        if r == 0:
            if "samples_per_s" in row:
                s["samples_per_s_all"].append(round(row["samples_per_s"], 1))
            for k in ("total_param_mb", "seconds", "losses"):
                if k in row:
                    s[k] = row[k]
    for s in out.values():
        if s["samples_per_s_all"]:
            s["samples_per_s"] = max(s["samples_per_s_all"])
        if s["idle_by_rank"]:
            # mean over ranks of the best (lowest) idle fraction seen over repeats
            s["idle_fraction"] = sum(min(v) for v in s["idle_by_rank"].values()) / len(
                s["idle_by_rank"])
    return list(out.values())


def sequential_in_subprocess(cfg: dict) -> list[dict]:
    """Sequential training in its own single-threaded process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE), "--sequential", json.dumps(cfg)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit("sequential baseline failed")
    return [json.loads(proc.stdout.strip().splitlines()[-1])]


def _sequential_main(cfg: dict) -> None:
    import torch

    torch.set_num_threads(1)
    base = _current_rss_mb()
    row = run_sequential(cfg)
    row.update(peak_rss_mb=_rss_mb(), added_rss_mb=_rss_mb() - base)
    print(json.dumps({"name": "sequential", "world": 1, "rank": 0, **row}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, few steps")
    ap.add_argument("--worker", nargs=2, metavar=("CFG", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--sequential", metavar="CFG", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "parallel.json"))
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker[0]), Path(args.worker[1]))
        return
    if args.sequential:
        _sequential_main(json.loads(args.sequential))
        return
    quick = args.quick
    cfg = {"job": "throughput", "width": 256 if quick else 1024, "depth": 8,
           "batch": 64, "micro": 4, "steps": 5 if quick else 20, "warmup": 3,
           "repeats": 1 if quick else 2,
           "resnet_depth": 164 if quick else 1001, "resnet_batch": 4, "resnet_steps": 1}
    tmp = ROOT / "bench-out" / "parallel-tmp"
    t0 = time.time()
    rows = sequential_in_subprocess(cfg)
    # every configuration in its own launch (fresh processes: peak memory is its own);
    # the pipelined pairs alternate, repeated, so load changes hit both engines alike
    boundaries = None
    for name in ("ddp", "ours data"):
        rows += launch(dict(cfg, job=name), 2, tmp)
    for _rep in range(cfg["repeats"]):
        for sched in ("gpipe", "1f1b"):
            ours = launch(dict(cfg, job=f"ours model {sched}"), 2, tmp)
            rows += ours
            boundaries = boundaries or ours[0].get("boundaries")
            rows += launch(dict(cfg, job=f"torch.pipelining {sched}", boundaries=boundaries),
                           2, tmp)
    for name in ("ddp", "ours data", "ours hybrid 2x2 1f1b", "ours model 1f1b"):
        rows += launch(dict(cfg, job=name), 4, tmp)
    for P in (2, 4):
        rows += launch(dict(cfg, job=f"resnet-{cfg['resnet_depth']} model P{P}"), P, tmp)
    table = summarise(rows)
    print(f"\noncoscale.parallel benchmark ({'quick' if quick else 'full'}): MLP "
          f"{cfg['depth']}x{cfg['width']}, global batch {cfg['batch']}, "
          f"{cfg['micro']} micro-batches, CPU, 1 thread per rank\n")
    head = (f"{'config':<24}{'ranks':>6}{'samples/s':>11}{'(runs)':<16}{'idle':>6}"
            f"{'ideal':>7}  peak RSS MB per rank (above torch baseline)")
    print(head)
    print("-" * len(head))
    for s in table:
        if "samples_per_s" not in s:
            continue
        idle = f"{s['idle_fraction']:.2f}" if "idle_fraction" in s else "-"
        ideal = f"{s['ideal_bubble']:.2f}" if "ideal_bubble" in s else "-"
        runs = "(" + ", ".join(f"{v:.0f}" for v in s["samples_per_s_all"]) + ")"
        mem = " ".join(f"{s['peak_rss_mb'][r]:.0f}({s['added_rss_mb'][r]:.0f})"
                       for r in sorted(s["peak_rss_mb"]))
        print(f"{s['name']:<24}{s['ranks']:>6}{s['samples_per_s']:>11.1f} {runs:<15}{idle:>6}"
              f"{ideal:>7}  {mem}")
    for s in table:
        if "error" in s:
            print(f"{s['name']:<26}{s['ranks']:>6}  could not run: {s['error']}")
    print("\nper-rank parameter memory of the deep ResNet (model strategy, balance='params')")
    for s in table:
        if "total_param_mb" in s:
            print(f"{s['name']:<26} total {s['total_param_mb']:.1f} MB, per rank "
                  f"{list(s['stage_param_mb_by_rank'].values())} MB (1/P = "
                  f"{s['total_param_mb'] / s['ranks']:.1f} MB), peak RSS "
                  f"{list(s['peak_rss_mb'].values())} MB, "
                  f"{s.get('seconds', 0):.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from oncoscale._io import atomic_write_text

    atomic_write_text(out, json.dumps({"config": cfg, "rows": rows, "summary": table,
                                       "seconds": time.time() - t0}, indent=1))
    print(f"\nwrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
