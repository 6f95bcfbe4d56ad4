"""Benchmark of oncoscale.topology.

1. Against nglpy + topopy (same X, f, k, beta; the reference wins nothing if it does not
   install - then a plain-Python brute-force baseline, clearly labelled, is used instead):
   total time, graph agreement (edge Jaccard), surviving maxima and segmentation agreement
   (adjusted Rand index) at several persistence levels.
2. kNN: HNSW against exact FAISS search, recall@k on sampled queries, time of both.
3. End to end `topology.build` on N x 10 samples (default 1M) in a child process: wall time
   per stage and peak resident memory (child + its pruning workers).
4. Datacube query latency p50 / p95 (library calls and HTTP through the explorer).

    .venv/bin/python benchmarks/bench_topology.py            # full run
    .venv/bin/python benchmarks/bench_topology.py --quick    # small sizes, a minute or two

Prints a table and writes bench-out/topology.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def gaussians(n: int, d: int, seed: int = 0, bumps: int = 5, noise: float = 0.01):
    """Uniform samples in [-6, 6]^d, f = sum of Gaussian bumps of different heights + noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-6, 6, size=(n, d))
    C = rng.uniform(-4, 4, size=(bumps, d))
    f = np.zeros(n)
    for i, c in enumerate(C):
        f += (1 + 0.3 * i) * np.exp(-((X - c) ** 2).sum(1) / 2)
    return X, f + rng.normal(0, noise, n)


# --- 1. reference comparison ------------------------------------------------------------------
def _labels(parts: dict, n: int) -> np.ndarray:
    lab = np.empty(n, dtype=np.int64)
    for i, idx in enumerate(parts.values()):
        lab[np.asarray(idx, dtype=np.int64)] = i
    return lab


def run_reference(X, f, k, beta, levels):
    """nglpy + topopy; returns None when they are not importable."""
    try:
        import nglpy
        import topopy
    except Exception as exc:  # noqa: BLE001
        return None, f"nglpy/topopy not importable: {exc}"
    t0 = time.perf_counter()
    g = nglpy.EmptyRegionGraph(max_neighbors=k + 1, relaxed=False, beta=beta)  # k+1: self
    msc = topopy.MorseSmaleComplex(graph=g, gradient="steepest", normalization=None)
    msc.build(X, f)
    seconds = time.perf_counter() - t0
    edges = set()
    for i, nb in g.neighbors().items():
        for j in nb:
            edges.add((min(i, j), max(i, j)))
    rng = float(f.max() - f.min())
    out = {"seconds": seconds, "edges": edges, "levels": {}}
    for p in levels:
        parts = msc.get_partitions(p * rng)
        stable = msc.get_stable_manifolds(p * rng)
        out["levels"][p] = {"labels": _labels(parts, len(f)),
                            "maxima": {int(m) for m in stable},
                            "asc": _labels(stable, len(f))}
    return out, "nglpy + topopy"


def run_bruteforce(X, f, k, beta, levels):
    """Plain-Python baseline (used only if nglpy/topopy are unavailable): scipy kNN, a Python
    loop for the Gabriel test, networkx-style dict adjacency, steepest ascent by loops."""
    from scipy.spatial import cKDTree

    t0 = time.perf_counter()
    n = len(f)
    _, nb = cKDTree(X).query(X, k + 1)
    edges = set()
    for p in range(n):
        for q in nb[p, 1:]:
            a, b = X[p], X[q]
            c, r2 = (a + b) / 2, ((a - b) ** 2).sum() / 4
            if not any(((X[r] - c) ** 2).sum() < r2 for r in nb[p, 1:] if r != q):
                edges.add((min(p, int(q)), max(p, int(q))))
    adj = {i: [] for i in range(n)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    up = list(range(n))
    for p in range(n):
        best, bs = p, 0.0
        for q in adj[p]:
            s = (f[q] - f[p]) / max(np.linalg.norm(X[q] - X[p]), 1e-300)
            if s > bs:
                best, bs = q, s
        up[p] = best
    seconds = time.perf_counter() - t0
    lab = np.array([_root(up, i) for i in range(n)])
    return {"seconds": seconds, "edges": edges,
            "levels": {0.0: {"labels": lab, "maxima": set(lab.tolist()), "asc": lab}}}, \
        "brute-force Python baseline (NOT nglpy/topopy)"


def _root(up, i):
    while up[i] != i:
        i = up[i]
    return i


def compare(sizes, d, k, beta, levels, results):
    from sklearn.metrics import adjusted_rand_score

    from oncoscale.topology import MorseSmale

    rows = []
    for n in sizes:
        X, f = gaussians(n, d, seed=n)
        t0 = time.perf_counter()
        ms = MorseSmale(k=k, beta=beta, relaxed=False).fit(X, f)
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        MorseSmale(k=k, beta=beta, relaxed=True, n_jobs=2).fit(X, f)
        ours_relaxed_s = time.perf_counter() - t0
        ref, name = run_reference(X, f, k, beta, levels)
        if ref is None:
            ref, name = run_bruteforce(X, f, k, beta, levels)
        ours_edges = set(map(tuple, ms.graph_.edges.tolist()))
        jac = len(ours_edges & ref["edges"]) / max(1, len(ours_edges | ref["edges"]))
        row = {"n": n, "d": d, "k": k, "beta": beta, "baseline": name,
               "ours_s": ours_s, "ours_relaxed_2proc_s": ours_relaxed_s,
               "baseline_s": ref["seconds"], "speedup": ref["seconds"] / ours_s,
               "edge_jaccard": jac, "levels": {}}
        for p, lv in ref["levels"].items():
            mine = set(ms.maxima(p).tolist())
            row["levels"][str(p)] = {
                "maxima_ours": len(mine), "maxima_baseline": len(lv["maxima"]),
                "maxima_common": len(mine & lv["maxima"]),
                "ari_segmentation": float(adjusted_rand_score(lv["labels"], ms.segmentation(p))),
                "ari_ascending": float(adjusted_rand_score(lv["asc"], ms.regions(p, "max"))),
            }
        rows.append(row)
        print(f"  n={n}: ours {ours_s:.2f}s (relaxed, 2 proc {ours_relaxed_s:.2f}s), "
              f"{name} {ref['seconds']:.2f}s, x{row['speedup']:.1f}, edges J={jac:.4f}",
              flush=True)
    results["reference"] = rows


# --- 2. kNN recall ----------------------------------------------------------------------------
def knn_recall(n, d, k, results):
    from oncoscale.topology.graph import knn

    X, _ = gaussians(n, d, seed=1)
    t0 = time.perf_counter()
    exact = knn(X, k, method="exact")
    te = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = knn(X, k, method="hnsw", recall_sample=2000)
    ta = time.perf_counter() - t0
    full = float(np.mean([len(np.intersect1d(a, b)) for a, b in
                          zip(exact.indices, approx.indices, strict=True)]) / k)
    results["knn"] = {"n": n, "d": d, "k": k, "exact_s": te, "hnsw_s": ta,
                      "recall_sampled": approx.recall, "recall_sample": approx.recall_sample,
                      "recall_all_queries": full}
    print(f"  n={n} d={d}: exact {te:.1f}s, HNSW {ta:.1f}s, recall@{k} sampled "
          f"{approx.recall:.4f}, all queries {full:.4f}", flush=True)


# --- 3. end to end ----------------------------------------------------------------------------
_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from bench_topology import gaussians
from oncoscale.topology import build, Cube
X, f = gaussians({n}, {d}, seed=2)
t0 = time.perf_counter()
build(X, f, out={out!r}, k={k}, n_jobs={jobs}, progress=False, bins=128)
total = time.perf_counter() - t0
with Cube({out!r}) as c:
    meta = dict(c.meta)
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"total_s": total, "timings": json.loads(meta["timings"]),
                  "n_leaves": int(meta["n_leaves"]), "n_edges": int(meta["n_edges"]),
                  "knn_method": meta["knn_method"], "knn_recall": float(meta["knn_recall"]),
                  "peak_rss_mb_main": self_kb / 1024, "peak_rss_mb_workers": child_kb / 1024}}))
"""


def end_to_end(n, d, k, jobs, out, results):
    code = _CHILD.format(bench=str(Path(__file__).parent), n=n, d=d, k=k, jobs=jobs,
                         out=str(out))
    env = dict(os.environ, OMP_NUM_THREADS=str(jobs))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(n=n, d=d, k=k, jobs=jobs, wall_with_startup_s=wall,
               cube_mb=Path(out).stat().st_size / 2**20)
    results["end_to_end"] = res
    print(f"  n={n} x {d}: build {res['total_s']:.1f}s ({res['timings']}), peak RSS main "
          f"{res['peak_rss_mb_main']:.0f} MB, workers {res['peak_rss_mb_workers']:.0f} MB, "
          f"cube {res['cube_mb']:.0f} MB", flush=True)


# --- 4. query latency -------------------------------------------------------------------------
def latency(cube_path, queries, results):
    import urllib.request

    from oncoscale.topology import Cube, explorer

    rng = np.random.default_rng(0)
    kinds = {"hist1d_segment": [], "hist1d_brushed": [], "hist2d_segment": [],
             "pcoords_brushed": [], "spine": []}
    with Cube(cube_path) as cube:
        levels = cube.levels()
        d = cube.d
        for i in range(queries):
            p = float(levels[-rng.integers(1, min(40, len(levels)) + 1)]) if len(levels) else 0.0
            segs = cube.segments(p)
            seg = int(rng.integers(len(segs)))
            t = time.perf_counter()
            leaves = cube.select(p, segment=seg)
            cube.hist1d(int(rng.integers(d + 1)), p, leaves)
            kinds["hist1d_segment"].append(time.perf_counter() - t)
            a, b = rng.choice(d + 1, 2, replace=False)
            lo, hi = sorted(rng.uniform(cube.axes["lo"][b], cube.axes["hi"][b], 2))
            t = time.perf_counter()
            cube.hist1d(int(a), p, cube.select(p, segment=seg), brush=(int(b), lo, hi))
            kinds["hist1d_brushed"].append(time.perf_counter() - t)
            t = time.perf_counter()
            cube.hist2d(int(a), int(b), p, cube.select(p, segment=seg), bins=64)
            kinds["hist2d_segment"].append(time.perf_counter() - t)
            if i % 4 == 0:
                t = time.perf_counter()
                cube.pcoords(None, p, cube.select(p, segment=seg), brush=(int(b), lo, hi),
                             bins=32)
                kinds["pcoords_brushed"].append(time.perf_counter() - t)
                t = time.perf_counter()
                cube.spine(p)
                kinds["spine"].append(time.perf_counter() - t)
        handle = explorer.start(cube_path)
        http = []
        try:
            for _ in range(queries):
                p = float(levels[-rng.integers(1, min(40, len(levels)) + 1)])
                a, b = rng.choice(d + 1, 2, replace=False)
                lo, hi = sorted(rng.uniform(cube.axes["lo"][b], cube.axes["hi"][b], 2))
                url = (f"{handle.url}api/hist?axis={a}&p={p}&seg=0&baxis={b}&blo={lo}"
                       f"&bhi={hi}")
                t = time.perf_counter()
                with urllib.request.urlopen(url) as r:
                    r.read()
                http.append(time.perf_counter() - t)
        finally:
            handle.stop()
        kinds["http_hist_brushed"] = http
    out = {}
    for name, ts in kinds.items():
        ms = np.array(ts) * 1000
        out[name] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                     "count": len(ts)}
        print(f"  {name:20s} p50 {out[name]['p50_ms']:7.2f} ms   p95 "
              f"{out[name]['p95_ms']:7.2f} ms   ({len(ts)} queries)", flush=True)
    results["latency"] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    ap.add_argument("--ref-sizes", type=str, default=None,
                    help="comma-separated n for the nglpy/topopy comparison")
    ap.add_argument("--large", type=int, default=None, help="n of the end-to-end run")
    ap.add_argument("--knn-n", type=int, default=None, help="n of the kNN recall run")
    ap.add_argument("--jobs", type=int, default=2, help="processes / threads (2 = goal machine)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--skip", type=str, default="", help="comma list: reference,knn,e2e,latency")
    ap.add_argument("--cube", type=Path, default=None,
                    help="keep the end-to-end cube at this path (or, with --skip e2e, measure "
                         "the latency of this existing cube)")
    args = ap.parse_args()
    q = args.quick
    ref_sizes = ([int(s) for s in args.ref_sizes.split(",")] if args.ref_sizes
                 else ([2000, 5000] if q else [10_000, 50_000, 100_000]))
    large = args.large or (50_000 if q else 1_000_000)
    knn_n = args.knn_n or (20_000 if q else 200_000)
    queries = args.queries or (40 if q else 200)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(),
                                 "load_avg_start": os.getloadavg()},
                     "args": vars(args)}
    out_dir = ROOT / "bench-out"
    out_dir.mkdir(exist_ok=True)
    if "reference" not in skip:
        print("[1] against nglpy + topopy (d=4, k=15, beta=1)", flush=True)
        compare(ref_sizes, 4, 15, 1.0, [0.0, 0.05, 0.2], results)
    if "knn" not in skip:
        print("[2] kNN recall: HNSW vs exact FAISS", flush=True)
        knn_recall(knn_n, 10, 15, results)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cube = args.cube or Path(tmp) / "bench.duckdb"
        if "e2e" not in skip:
            print(f"[3] end to end build, {large} x 10, {args.jobs} processes", flush=True)
            end_to_end(large, 10, 15, args.jobs, cube, results)
        if "latency" not in skip:
            if not cube.exists():
                from oncoscale.topology import build

                X, f = gaussians(min(large, 50_000), 10, seed=2)
                build(X, f, out=cube, progress=False)
            print("[4] datacube query latency", flush=True)
            latency(cube, queries, results)
    results["machine"]["load_avg_end"] = os.getloadavg()
    path = out_dir / "topology.json"
    if skip and path.exists():  # a partial run updates the sections it ran
        old = json.loads(path.read_text())
        runs = old.pop("runs", {})
        runs[",".join(sorted(skip)) or "all"] = {"machine": results.pop("machine"),
                                                 "args": results.pop("args")}
        old.update(results)
        old["runs"] = runs
        results = old
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out_dir / 'topology.json'}")


if __name__ == "__main__":
    main()
