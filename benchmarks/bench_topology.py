"""Benchmark of oncoscale.topology.

1. Against nglpy + topopy (same X, f, k, beta; the reference wins nothing if it does not
   install - then a plain-Python brute-force baseline, clearly labelled, is used instead):
   total time, graph agreement (edge Jaccard), surviving maxima and segmentation agreement
   (adjusted Rand index) at several persistence levels. Ours runs like with like:
   ``MorseSmale(relaxed=False, ngl=True, hierarchy="topopy")`` (nglpy's strict graph,
   topopy's cancellation semantics); the ARI of our complex on the reference's own graph
   (topology step alone) and of our defaults (own strict pruning, elder rule) are reported
   too.
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
    from oncoscale.topology.graph import Graph

    rows = []
    for n in sizes:
        X, f = gaussians(n, d, seed=n)
        t0 = time.perf_counter()
        # like with like: nglpy's strict graph and topopy's cancellation semantics
        ms = MorseSmale(k=k, beta=beta, relaxed=False, ngl=True, hierarchy="topopy").fit(X, f)
        ours_s = time.perf_counter() - t0
        # our defaults (own strict pruning, elder rule), for comparison
        t0 = time.perf_counter()
        elder = MorseSmale(k=k, beta=beta, relaxed=False).fit(X, f)
        elder_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        MorseSmale(k=k, beta=beta, relaxed=True, n_jobs=2).fit(X, f)
        ours_relaxed_s = time.perf_counter() - t0
        ref, name = run_reference(X, f, k, beta, levels)
        if ref is None:
            ref, name = run_bruteforce(X, f, k, beta, levels)
        ours_edges = set(map(tuple, ms.graph_.edges.tolist()))
        jac = len(ours_edges & ref["edges"]) / max(1, len(ours_edges | ref["edges"]))
        # our Morse-Smale complex on the reference's own graph: isolates the topology step
        re = np.array(sorted(ref["edges"]), dtype=np.int64).reshape(-1, 2)
        rg = Graph(n=n, edges=re, lengths=np.linalg.norm(X[re[:, 0]] - X[re[:, 1]], axis=1),
                   k=k, beta=beta, relaxed=False, knn_method="reference", knn_recall=1.0)
        same = MorseSmale(k=k, hierarchy="topopy").fit(X, f, graph=rg)
        row = {"n": n, "d": d, "k": k, "beta": beta, "baseline": name,
               "ours": "MorseSmale(relaxed=False, ngl=True, hierarchy='topopy')",
               "ours_s": ours_s, "ours_relaxed_2proc_s": ours_relaxed_s,
               "ours_defaults_strict_s": elder_s,
               "baseline_s": ref["seconds"], "speedup": ref["seconds"] / ours_s,
               "edge_jaccard": jac, "levels": {}}
        for p, lv in ref["levels"].items():
            mine = set(ms.maxima(p).tolist())
            row["levels"][str(p)] = {
                "maxima_ours": len(mine), "maxima_baseline": len(lv["maxima"]),
                "maxima_common": len(mine & lv["maxima"]),
                "ari_segmentation": float(adjusted_rand_score(lv["labels"], ms.segmentation(p))),
                "ari_ascending": float(adjusted_rand_score(lv["asc"], ms.regions(p, "max"))),
                "identical": _same_partition(lv["labels"], ms.segmentation(p)),
                # our complex on the reference's graph (topology step alone)
                "ari_segmentation_same_graph": float(adjusted_rand_score(
                    lv["labels"], same.segmentation(p))),
                "identical_same_graph": _same_partition(lv["labels"], same.segmentation(p)),
                # our defaults (own strict graph, elder rule), for information
                "ari_segmentation_defaults": float(adjusted_rand_score(
                    lv["labels"], elder.segmentation(p))),
            }
        rows.append(row)
        print(f"  n={n}: ours {ours_s:.2f}s (defaults, strict {elder_s:.2f}s; relaxed, 2 proc "
              f"{ours_relaxed_s:.2f}s), {name} {ref['seconds']:.2f}s, x{row['speedup']:.1f}, "
              f"edges J={jac:.5f}", flush=True)
        for p, lv in row["levels"].items():
            print(f"    p={p}: maxima ours/ref/common {lv['maxima_ours']}/"
                  f"{lv['maxima_baseline']}/{lv['maxima_common']}, ARI {lv['ari_segmentation']:.5f}"
                  f" identical {lv['identical']} (on the reference graph "
                  f"{lv['ari_segmentation_same_graph']:.5f}; our defaults "
                  f"{lv['ari_segmentation_defaults']:.4f})", flush=True)
    results["reference"] = rows
    big = max(rows, key=lambda r: r["n"])
    worst = min(lv["ari_segmentation"] for lv in big["levels"].values())
    goal = big["n"] >= 100_000 and big["speedup"] >= 20 and worst >= 0.99
    results["reference_goal"] = {"n": big["n"], "speedup": big["speedup"], "min_ari": worst,
                                 "pass": bool(goal)}
    print(f"  goal (n >= 100k: >= 20x faster, ARI >= 0.99 at every level): n={big['n']} "
          f"x{big['speedup']:.1f}, min ARI {worst:.4f} -> {'PASS' if goal else 'FAIL'}",
          flush=True)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings are the same partition (a one-to-one map between labels)."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


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
LATENCY_GOAL_MS = 50.0


def _latency_queries(cube, rng, count: int) -> list[dict]:
    """Random explorer queries: a level the slider offers (one of the 2000 highest levels, as
    the explorer's /api/meta lists them, so nearly every query is the first at its level; or,
    in 1 query of 20, its leftmost position p = 0, no simplification), a
    selection (none, a random segment, or a random surviving maximum's region), random axes and
    a random brush on 3 queries in 4 (any axis, so often a third axis for 2-D views)."""
    levels = cube.levels()[-2000:]
    lo_ax, hi_ax = cube.axes["lo"].to_numpy(), cube.axes["hi"].to_numpy()
    d = cube.d
    out = []
    for _ in range(count):
        p = float(levels[rng.integers(len(levels))]) if len(levels) else 0.0
        if rng.random() < 0.05:
            p = 0.0
        kind = rng.integers(3)
        sel = {}
        if kind == 1:
            sel = {"seg": int(rng.integers(len(cube.segments(p))))}
        elif kind == 2:
            nodes = cube.spine(p)["nodes"]
            maxima = nodes.loc[nodes["kind"] == "max", "extremum"].to_numpy()
            sel = {"max": int(rng.choice(maxima))}
        a, b = (int(x) for x in rng.choice(d + 1, 2, replace=False))
        brush = None
        if rng.random() < 0.75:
            c = int(rng.integers(d + 1))
            blo, bhi = sorted(rng.uniform(lo_ax[c], hi_ax[c], 2))
            brush = (c, float(blo), float(bhi))
        out.append({"p": p, "sel": sel, "a": a, "b": b, "brush": brush})
    return out


def _library_call(cube, endpoint: str, q: dict):
    """The cube calls one explorer endpoint makes (same as explorer/server.py, with its caps
    on the spine and segment lists; the JSON encoding is only in the HTTP figures)."""
    from oncoscale.topology.explorer import server

    p, brush = q["p"], q["brush"]
    if endpoint == "spine":
        return cube.spine(p, server.SPINE_MAX_NODES, server.SPINE_MAX_LINKS)
    if endpoint == "segments":
        return cube.segments(p, largest=server.SEGMENTS_LIMIT)
    leaves = cube.select(p, segment=q["sel"].get("seg"), maximum=q["sel"].get("max"))
    if endpoint == "hist":
        h = cube.hist1d(q["a"], p, leaves)
        return h if brush is None else cube.hist1d(q["a"], p, leaves, brush)
    if endpoint == "hist2d":
        ok = brush is not None and cube.brushable(q["b"], q["a"], brush[0])
        return cube.hist2d(q["b"], q["a"], p, leaves, brush if ok else None, bins=64)
    return cube.pcoords(None, p, leaves, brush, bins=32)


def _url(base: str, endpoint: str, q: dict) -> str:
    from urllib.parse import urlencode

    params: dict = {"p": repr(q["p"])}
    if endpoint not in ("spine", "segments"):
        params.update(q["sel"])
        if q["brush"] is not None:
            params.update(baxis=q["brush"][0], blo=repr(q["brush"][1]),
                          bhi=repr(q["brush"][2]))
    if endpoint == "hist":
        params["axis"] = q["a"]
    elif endpoint == "hist2d":
        params.update(a=q["b"], b=q["a"], bins=64)
    elif endpoint == "pcoords":
        params["bins"] = 32
    return f"{base}api/{endpoint}?{urlencode(params)}"


def latency(cube_path, queries, results):
    """p50 / p95 per explorer endpoint, as library calls (a freshly opened cube, so nothing
    is cached from generating the queries) and over HTTP (a fresh explorer in its own
    process: its response cache starts empty), against the 50 ms goal. Every level
    is new to a query with high probability; the page refresh (all requests one slider
    move issues, in order) is timed too, for information."""
    from oncoscale.topology import Cube

    endpoints = ("spine", "segments", "hist", "hist2d", "pcoords")
    rng = np.random.default_rng(0)
    with Cube(cube_path) as probe:
        info = {"n": probe.n, "d": probe.d, "bins": probe.bins, "leaves": len(probe.leaves),
                "extrema": len(probe.extrema), "in_memory": probe.in_memory,
                "checkpoints": [float(x) for x in probe._checkpoint_levels]}
        qs = _latency_queries(probe, rng, queries)
        names = probe.names
    print(f"  cube: n={info['n']} d={info['d']} bins={info['bins']} leaves={info['leaves']} "
          f"extrema={info['extrema']}, {queries} random queries per endpoint, levels among "
          f"the 2000 highest (and 0); load average {os.getloadavg()[0]:.1f}", flush=True)
    t = time.perf_counter()
    cube = Cube(cube_path).warm()
    info["open_s"] = time.perf_counter() - t
    times: dict = {}
    try:
        for ep in endpoints:  # interleave: each query's endpoints run back to back
            times[f"lib {ep}"] = []
        for q in qs:
            for ep in endpoints:
                t = time.perf_counter()
                _library_call(cube, ep, q)
                times[f"lib {ep}"].append(time.perf_counter() - t)
    finally:
        cube.close()
    # the explorer in its own process, as `oncoscale explore` runs it; one keep-alive
    # connection, as a browser uses
    import http.client
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = ("from oncoscale.topology.explorer import serve; "
            f"serve({str(cube_path)!r}, host='127.0.0.1', port={port})")
    with Cube(cube_path) as probe:
        http_q = _latency_queries(probe, np.random.default_rng(1), queries)
    t = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/api/meta")
                conn.getresponse().read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t > 300:
                    raise RuntimeError("the explorer did not start") from None
                time.sleep(0.2)
        info["server_start_s"] = time.perf_counter() - t

        def get(url: str) -> None:
            nonlocal conn
            try:
                conn.request("GET", url)
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError):  # idle keep-alive
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", url)
                r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}")

        for ep in endpoints:
            times[f"http {ep}"] = []
        refresh = []
        for q in http_q:
            t0 = time.perf_counter()
            for ep in endpoints:
                t = time.perf_counter()
                get(_url("/", ep, q))
                times[f"http {ep}"].append(time.perf_counter() - t)
            for a in range(len(names)):  # the rest of a page refresh: every 1-D histogram
                if a != q["a"]:
                    get(_url("/", "hist", {**q, "a": a}))
            refresh.append(time.perf_counter() - t0)
        conn.close()
    finally:
        server.terminate()
        server.wait(30)
    out: dict = {"cube": info, "goal_p95_ms": LATENCY_GOAL_MS, "endpoints": {}}
    print(f"  open + warm: {info['open_s']:.2f} s, explorer start (process, open, warm, first "
          f"answer): {info['server_start_s']:.2f} s (once per server start; not a query)")
    print(f"  {'endpoint':16s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}  goal p95<50ms")
    for name, ts in times.items():
        ms = np.array(ts) * 1000
        row = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
               "max_ms": float(ms.max()), "count": len(ts)}
        row["pass"] = row["p95_ms"] < LATENCY_GOAL_MS
        out["endpoints"][name] = row
        print(f"  {name:16s} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['max_ms']:8.1f}  "
              f"{'PASS' if row['pass'] else 'FAIL'}", flush=True)
    ms = np.array(refresh) * 1000
    out["page_refresh"] = {"p50_ms": float(np.percentile(ms, 50)),
                           "p95_ms": float(np.percentile(ms, 95)),
                           "requests": len(endpoints) + len(names) - 1}
    print(f"  page refresh ({out['page_refresh']['requests']} requests, sequential): p50 "
          f"{out['page_refresh']['p50_ms']:.1f} ms, p95 {out['page_refresh']['p95_ms']:.1f} ms "
          f"(information)")
    out["all_pass"] = all(r["pass"] for r in out["endpoints"].values())
    out["load_avg_end"] = os.getloadavg()
    print(f"  p95 < {LATENCY_GOAL_MS:.0f} ms for every endpoint: "
          f"{'PASS' if out['all_pass'] else 'FAIL'}", flush=True)
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
