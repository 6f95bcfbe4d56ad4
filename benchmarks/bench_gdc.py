"""Benchmark: assemble a GDC-sized cohort (STAR-Counts files + sample sheet) into AnnData.

Writes a synthetic GDC project with ``oncoscale.datasets.gdc.make_synthetic_project``
(real STAR-Counts files, one per ``<file-uuid>/`` folder) and reads it with

* ``oncoscale.expression.read_gdc`` (process pool, preallocated float32 matrix), and
* the naive baseline: ``pandas.read_csv`` of every file (gene id + value column), then
  ``pandas.concat(axis=1)`` and a float32 copy,

each in a fresh subprocess so that peak memory is measured cleanly: the peak resident set of
the reading process (VmHWM) and of the whole process tree (sampled from /proc every 20 ms, so
pool workers count). The goal for ``read_gdc``: the reading process grows by no more than one
file's size plus the float32 matrix.

Full target: 10,000 files x 60,483 genes (``--n-files 10000``: ~45 GB of files, 2.4 GB
matrix). Default: 1,000 x 60,483. ``--quick``: 100 x 20,000.

    .venv/bin/python benchmarks/bench_gdc.py [--n-files N] [--n-genes G] [--quick]

Prints a table and writes ``bench-out/gdc.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- memory probes


def _status_kb(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (psutil-free, from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            parent[int(d)] = ppid
        except (OSError, ValueError):
            continue
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except (OSError, ValueError):
            continue
    return total


class TreeSampler:
    """Samples the process tree's resident memory in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(me))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))


# --------------------------------------------------------------------------- measured runs


def _measure(method: str, sheet: str, value: str, n_jobs: int) -> dict:
    """Runs inside a fresh subprocess: read the cohort once, report time and memory."""
    # import what the readers use before the baseline: the bound concerns data, not code
    import anndata  # noqa: F401
    import numpy as np
    import pandas as pd
    import pyarrow.csv  # noqa: F401
    import tqdm.auto  # noqa: F401

    from oncoscale.expression import read_gdc, read_sample_sheet

    files = None
    if method == "naive":
        s = read_sample_sheet(sheet)
        data = Path(sheet).parent / "data"
        files = [str(data / r.file_id / r.file_name) for r in s.itertuples()]
    base_kb = _status_kb("VmRSS")
    with TreeSampler() as sampler:
        t0 = time.perf_counter()
        if method == "oncoscale":
            a = read_gdc(sheet, value=value, n_jobs=n_jobs, progress=False)
            shape, dtype = a.shape, str(a.X.dtype)
            checksum = float(a.X.sum(dtype=np.float64))  # no float64 copy
        else:
            cols = [pd.read_csv(f, sep="\t", comment="#", usecols=["gene_id", value],
                                index_col="gene_id")[value] for f in files]
            df = pd.concat(cols, axis=1).iloc[4:]  # drop the N_* summary rows
            X = df.to_numpy(dtype=np.float32).T.copy()
            shape, dtype = X.shape, str(X.dtype)
            checksum = float(X.sum(dtype=np.float64))
        seconds = time.perf_counter() - t0
    return {"method": method, "n_jobs": n_jobs if method == "oncoscale" else 1,
            "seconds": seconds, "shape": list(shape), "dtype": dtype, "checksum": checksum,
            "rss_before_bytes": base_kb * 1024, "peak_rss_bytes": _status_kb("VmHWM") * 1024,
            "peak_tree_rss_bytes": sampler.peak}


def _run_measure(method: str, sheet: Path, value: str, n_jobs: int) -> dict:
    cmd = [sys.executable, __file__, "--_measure", method, "--_sheet", str(sheet),
           "--value", value, "--n-jobs", str(n_jobs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-files", type=int, default=1000)
    ap.add_argument("--n-genes", type=int, default=60483)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--value", default="fpkm_uq_unstranded")
    ap.add_argument("--quick", action="store_true", help="100 files x 20,000 genes")
    ap.add_argument("--data-dir", default=str(ROOT / "bench-out" / "gdc-data"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "gdc.json"))
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    ap.add_argument("--_sheet", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(_measure(args._measure, args._sheet, args.value, args.n_jobs)))
        return
    if args.quick:
        args.n_files, args.n_genes = 100, 20000

    from oncoscale.datasets.gdc import make_synthetic_project

    n_pairs = max(1, args.n_files // 10)
    data_dir = Path(args.data_dir) / f"{args.n_files}x{args.n_genes}"
    t0 = time.perf_counter()
    proj = make_synthetic_project(data_dir, n_genes=args.n_genes, n_pairs=n_pairs,
                                  n_train_tumours=args.n_files - 2 * n_pairs,
                                  n_jobs=args.n_jobs, progress=True)
    gen_s = time.perf_counter() - t0
    sizes = [(proj.data_dir / r.file_id / r.file_name).stat().st_size
             for r in proj.samples.itertuples()]
    matrix_bytes = proj.n_files * proj.n_genes * 4
    max_file = max(sizes)
    bound = matrix_bytes + max_file

    runs = [_run_measure("oncoscale", proj.sample_sheet, args.value, args.n_jobs),
            _run_measure("oncoscale", proj.sample_sheet, args.value, 1)]
    if not args.skip_naive:
        runs.append(_run_measure("naive", proj.sample_sheet, args.value, 1))
    for r in runs:
        r["files_per_s"] = proj.n_files / r["seconds"]
        r["growth_bytes"] = r["peak_rss_bytes"] - r["rss_before_bytes"]
        r["growth_over_bound"] = r["growth_bytes"] / bound
    sums = {r["checksum"] for r in runs}
    result = {
        "n_files": proj.n_files, "n_genes": proj.n_genes, "value": args.value,
        "generate_seconds": gen_s, "total_file_bytes": int(sum(sizes)),
        "max_file_bytes": int(max_file), "matrix_bytes": int(matrix_bytes),
        "bound_bytes": int(bound), "same_result": len(sums) == 1, "runs": runs,
        "machine": f"{os.cpu_count()} CPUs (shared, noisy), python {sys.version.split()[0]}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    mb = 1 / 2**20
    print(f"\nGDC cohort: {proj.n_files} files x {proj.n_genes} genes "
          f"({sum(sizes) * mb:,.0f} MiB of STAR-Counts files, largest {max_file * mb:.1f} MiB); "
          f"generated in {gen_s:.1f} s")
    print(f"bound = one file + float32 matrix = {max_file * mb:.1f} + {matrix_bytes * mb:.1f} "
          f"= {bound * mb:.1f} MiB\n")
    hdr = (f"{'method':<22}{'s':>8}{'files/s':>10}{'RSS growth MiB':>16}{'/bound':>8}"
           f"{'peak RSS MiB':>14}{'tree peak MiB':>15}")
    print(hdr)
    print("-" * len(hdr))
    for r in runs:
        name = (f"read_gdc n_jobs={r['n_jobs']}" if r["method"] == "oncoscale"
                else "naive pandas concat")
        print(f"{name:<22}{r['seconds']:>8.1f}{r['files_per_s']:>10.1f}"
              f"{r['growth_bytes'] * mb:>16.0f}{r['growth_over_bound']:>8.2f}"
              f"{r['peak_rss_bytes'] * mb:>14.0f}{r['peak_tree_rss_bytes'] * mb:>15.0f}")
    print(f"\nsame matrix from every method: {result['same_result']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
