"""One call from samples to an explorable cube: graph -> Morse-Smale -> DuckDB datacube.

Also reads the inputs of ``oncoscale topo build`` from Parquet, CSV, ``.npy`` or ``.h5ad``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oncoscale.errors import InputError
from oncoscale.topology._validate import check_function, check_points

__all__ = ["build", "load_inputs"]


def build(
    X: np.ndarray,
    f: np.ndarray,
    out: str | os.PathLike[str] = "cube.duckdb",
    *,
    k: int = 15,
    beta: float = 1.0,
    relaxed: bool = True,
    bins: int = 128,
    hist3d: bool = False,
    bins3d: int = 16,
    dims: Sequence[str] | None = None,
    f_name: str = "f",
    base_persistence: float = 0.0,
    knn_method: str = "auto",
    n_jobs: int = -1,
    chunk_size: int | None = None,
    graph_out: str | os.PathLike[str] | None = None,
    store_graph: bool = True,
    progress: bool = True,
    extra_meta: dict[str, object] | None = None,
    world: object | None = None,
    hierarchy: str = "elder",
    ngl: bool = False,
) -> Path:
    """Build the cube of f (n,) over samples X (n, d) and write it to ``out``; returns ``out``.

    Runs `neighborhood_graph` (k candidates, β-skeleton pruning; edges stream to
    ``graph_out`` or a temporary Parquet file), `MorseSmale`, then `write_cube` (``bins`` per
    axis; optional 3-D histograms). ``dims`` names the columns of X, ``f_name`` the function.
    ``n_jobs=-1`` prunes on all cores. Progress bars when ``progress``. Timings of the
    stages are stored in the cube's ``meta`` table (``timings``).

    ``hierarchy`` and ``ngl`` as in `MorseSmale` (``hierarchy="topopy", ngl=True,
    relaxed=False``: the segmentation nglpy + topopy compute).

    ``world``: an ``oncoscale.comm`` world (every rank calls ``build`` with the same X and f):
    the kNN queries and pruning chunks are spread over the ranks and the edge list is
    all-gathered (see `neighborhood_graph`); rank 0 then computes the Morse-Smale complex and
    writes the cube (and ``graph_out``), the other ranks return ``out`` as soon as the graph is
    complete (the cube is complete when rank 0 returns).
    """
    from oncoscale.topology.cube import write_cube
    from oncoscale.topology.graph import neighborhood_graph
    from oncoscale.topology.morse import MorseSmale

    X = check_points(X)
    f = check_function(f, X.shape[0])
    out = Path(out)
    if world is not None and int(getattr(world, "rank", 0)) != 0:
        progress = False  # one set of bars per job
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".topo-", dir=out.parent if out.parent.exists()
                                     else None) as tmpdir:
        gpath = Path(graph_out) if graph_out is not None else Path(tmpdir) / "edges.parquet"
        stages = _Stages(progress)
        stages.start("graph")
        t0 = time.perf_counter()
        g = neighborhood_graph(X, k, beta=beta, relaxed=relaxed, out=gpath,
                               chunk_size=chunk_size, n_jobs=n_jobs, knn_method=knn_method,
                               progress=progress, world=world, ngl=ngl)
        timings.update(g.timings)
        if world is not None and int(getattr(world, "rank", 0)) != 0:
            stages.done()
            return out
        t1 = time.perf_counter()
        stages.start("morse-smale")
        ms = MorseSmale(k=k, beta=beta, relaxed=relaxed, hierarchy=hierarchy,
                        ngl=ngl).fit(X, f, graph=g)
        t2 = time.perf_counter()
        stages.start("datacube")
        timings.update(graph_s=t1 - t0, morse_s=t2 - t1)
        meta = {**(extra_meta or {}), "timings": timings}
        if world is not None:
            meta["graph_ranks"] = int(getattr(world, "size", 1))
        write_cube(out, X, f, ms, dims=dims, f_name=f_name, bins=bins, hist3d=hist3d,
                   bins3d=bins3d, base_persistence=base_persistence, store_graph=store_graph,
                   progress=progress, extra_meta=meta)
        stages.done()
    return out


class _Stages:
    """A tiny stage bar (tqdm) over graph -> morse-smale -> datacube."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=3, desc="topology", unit="stage")
        self.n = 0

    def start(self, name: str) -> None:
        if self.bar is not None:
            if self.n:
                self.bar.update()
            self.bar.set_postfix_str(name)
        self.n += 1

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update()
            self.bar.close()


def _parse_columns(spec: str | None) -> list[str] | None:
    if spec is None or spec.strip() in ("", "all"):
        return None
    return [c.strip() for c in spec.split(",") if c.strip()]


def _index_list(spec: list[str], ncol: int, path) -> list[int]:
    out: list[int] = []
    for item in spec:
        try:
            if ":" in item:
                a, b = item.split(":", 1)
                out.extend(range(int(a or 0), int(b) if b else ncol))
            else:
                out.append(int(item))
        except ValueError:
            raise InputError(f"column of a .npy array must be an index or a range a:b, "
                             f"found {item!r}", path=path) from None
    bad = [i for i in out if not 0 <= i < ncol]
    if bad:
        raise InputError(f"column indices {bad} out of range for {ncol} columns", path=path)
    return out


def load_inputs(path: str | os.PathLike[str], x: str | None, f: str
                ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Read X (n, d), f (n,), the dimension names and f's name from a data file.

    * ``.parquet`` / ``.csv``: ``x`` is a comma-separated list of columns (default: every
      numeric column except ``f``), ``f`` a column name.
    * ``.npy``: a 2-D array; ``x`` lists column indices or ranges ``a:b`` (default: all but
      ``f``), ``f`` a column index.
    * ``.h5ad``: ``x`` is ``X`` (the expression matrix), ``obsm:KEY`` (e.g. ``obsm:X_ae``) or a
      comma-separated list of var names; ``f`` is ``obs:COLUMN``, a var name, or
      ``obsm:KEY:J`` (column J of an obsm matrix).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("input file not found", path=path)
    suffix = path.suffix.lower()
    cols = _parse_columns(x)
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001 - readers raise many types
            raise InputError(f"could not read {suffix[1:]} table: {exc}", path=path) from None
        if f not in df.columns:
            raise InputError(f"column {f!r} for f not found; columns: {list(df.columns)}",
                             path=path)
        if cols is None:
            cols = [c for c in df.columns if c != f and np.issubdtype(df[c].dtype, np.number)]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"columns {missing} not found; columns: {list(df.columns)}",
                             path=path)
        try:
            X = df[cols].to_numpy(dtype=np.float64)
            fv = df[f].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"columns must be numeric: {exc}", path=path) from None
        return _checked(X, fv, [str(c) for c in cols], str(f), path)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"could not read .npy array: {exc}", path=path) from None
        if arr.ndim != 2:
            raise InputError(f".npy input must be 2-D (samples x columns), found shape "
                             f"{arr.shape}", path=path)
        fi = _index_list([f], arr.shape[1], path)
        if len(fi) != 1:
            raise InputError(f"f must name one column, found {f!r}", path=path)
        xi = ([i for i in range(arr.shape[1]) if i != fi[0]] if cols is None
              else _index_list(cols, arr.shape[1], path))
        return _checked(arr[:, xi], arr[:, fi[0]], [f"col{i}" for i in xi], f"col{fi[0]}", path)
    if suffix == ".h5ad":
        return _load_h5ad(path, x, f)
    raise InputError(f"unsupported input type {suffix!r}; expected .parquet, .csv, .npy or "
                     ".h5ad", path=path)


def _dense(a) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


def _load_h5ad(path: Path, x: str | None, f: str):
    import anndata

    try:
        ad = anndata.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"could not read .h5ad file: {exc}", path=path) from None
    spec = x or "X"
    if spec == "X":
        X = _dense(ad.X)
        names = [str(v) for v in ad.var_names]
    elif spec.startswith("obsm:"):
        key = spec[5:]
        if key not in ad.obsm:
            raise InputError(f"obsm key {key!r} not found; keys: {list(ad.obsm.keys())}",
                             path=path)
        X = _dense(ad.obsm[key])
        names = [f"{key}_{j}" for j in range(X.shape[1])]
    else:
        cols = _parse_columns(spec) or []
        missing = [c for c in cols if c not in ad.var_names]
        if missing:
            raise InputError(f"var names {missing} not found", path=path)
        X = _dense(ad[:, cols].X)
        names = cols
    if f.startswith("obs:"):
        col = f[4:]
        if col not in ad.obs.columns:
            raise InputError(f"obs column {col!r} not found; columns: {list(ad.obs.columns)}",
                             path=path)
        fv = ad.obs[col].to_numpy(dtype=np.float64)
        fname = col
    elif f.startswith("obsm:"):
        parts = f.split(":")
        if len(parts) != 3 or parts[1] not in ad.obsm:
            raise InputError(f"f must be obsm:KEY:J with an existing KEY, found {f!r}", path=path)
        try:
            fv = _dense(ad.obsm[parts[1]])[:, int(parts[2])]
        except (ValueError, IndexError):
            raise InputError(f"bad obsm column in {f!r}", path=path) from None
        fname = f"{parts[1]}_{parts[2]}"
    elif f in ad.var_names:
        fv = _dense(ad[:, [f]].X)[:, 0]
        fname = f
    else:
        raise InputError(f"f {f!r} is neither obs:COLUMN, obsm:KEY:J nor a var name", path=path)
    return _checked(X, fv, names, fname, path)


def _checked(X, fv, names, fname, path):
    try:
        X = check_points(X)
        fv = check_function(fv, X.shape[0])
    except InputError as exc:
        raise InputError(str(exc), path=path) from None
    return X, fv, names, fname
