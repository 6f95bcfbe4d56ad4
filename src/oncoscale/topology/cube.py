"""Topology-aware datacube in DuckDB: histograms per leaf segment, summed on demand.

Layout of a cube file (all tables plain DuckDB, all queries parameterised SQL):

``meta(key, value)``
    ``format = oncoscale.topology.cube``, ``version``, n, d, bins, graph parameters, ...
``axes(axis, name, lo, hi, bins)``
    axes ``0..d-1`` are the dimensions of X, axis ``d`` is f. Bin ``i`` of an axis covers
    ``[lo + i*w, lo + (i+1)*w)`` with ``w = (hi - lo) / bins`` (the last bin includes ``hi``).
``leaves(leaf, max, min, count, f_min, f_max, f_mean)``
    leaf segments: the Morse-Smale cells at the base persistence level.
``hist1d(leaf, axis, bin, count)``, ``hist2d(leaf, a, b, bin_a, bin_b, count)`` (a < b),
optionally ``hist3d(leaf, a, b, c, bin_a, bin_b, bin_c, count)`` (a < b < c)
    sparse counts per leaf; ``leaf = -1`` holds the whole data. A segment at any persistence
    level is a set of leaves, and its histogram is the SQL sum over them.
``extrema(kind, extremum, value, persistence, parent, saddle, saddle_value, pc1, pc2)``
    the merge tree: every maximum / minimum with its normalised persistence and the extremum
    it merges into (``parent = -1`` for survivors; the view ``merges`` lists the
    cancellations); pc1/pc2 locate it in the data's first two principal components.
``saddles(kind, a, b, saddle, value, pc1, pc2)``
    the highest saddle between every pair of neighbouring leaf regions.
``samples(i, leaf, max, min, f)``, ``edges(src, dst, length)``
    the segmentation and the neighbourhood graph (``samples`` may be left empty).
``sample_bins(leaf, b0, ..., b{d})`` (version 2)
    every sample's leaf and bin on every axis (UTINYINT up to 256 bins, else USMALLINT), in
    sample order: the pre-binned data that `Cube` holds in memory (within its memory
    budget) so that any selection and any brush is an exact bincount over the selected
    samples; ``hist1d`` / ``hist2d`` remain the SQL path (and the whole-data tables).

Version: ``meta.version`` is `CUBE_VERSION`; `Cube` refuses any other version with a clear
error (a version-1 cube has no ``sample_bins``: rebuild it).

Brushing a range on one axis gives conditional histograms of the others, exact up to the bin
of the brush edges (a brush selects whole bins). In SQL mode they come from the 2-D
histograms, and a conditional 2-D histogram under a brush on a third axis needs the optional
3-D histograms; with the sample codes in memory every brush is answered from them.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.topology._validate import check_function, check_points

__all__ = ["CUBE_FORMAT", "CUBE_VERSION", "Cube", "write_cube", "bin_index"]

CUBE_FORMAT = "oncoscale.topology.cube"
CUBE_VERSION = 2  # 2: + sample_bins (per-sample bin codes); older cubes must be rebuilt
_TABLES = ("meta", "axes", "leaves", "hist1d", "hist2d", "extrema", "saddles", "samples",
           "sample_bins")


def bin_index(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin (int32) of every value on the axis ``[lo, hi]`` cut into ``bins`` equal bins.

    Same edges and rule as ``numpy.histogram(values, bins, range=(lo, hi))``: bins are
    half-open except the last, which includes ``hi``; values outside are clipped to the ends.
    A constant axis (``hi == lo``) puts everything in bin 0.
    """
    v = np.asarray(values, dtype=np.float64)
    if not hi > lo:
        return np.zeros(v.shape, dtype=np.int32)
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.floor((v - lo) * (bins / (hi - lo))).astype(np.int64)
    idx = np.clip(idx, 0, bins - 1)
    idx -= v < edges[idx]  # the same corrections numpy applies at the edges
    idx += (v >= edges[np.minimum(idx + 1, bins)]) & (idx != bins - 1)
    return np.clip(idx, 0, bins - 1).astype(np.int32)


def _pca2(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first two principal directions (2, d), fitted on <= 100k samples."""
    rng = np.random.default_rng(seed)
    sub = X if X.shape[0] <= 100_000 else X[rng.choice(X.shape[0], 100_000, replace=False)]
    mu = sub.mean(axis=0)
    _, _, vt = np.linalg.svd(sub - mu, full_matrices=False)
    comps = np.zeros((2, X.shape[1]))
    comps[: min(2, vt.shape[0])] = vt[:2]
    return mu, comps


def write_cube(
    out: str | os.PathLike[str],
    X: np.ndarray,
    f: np.ndarray,
    ms,
    *,
    dims: Sequence[str] | None = None,
    f_name: str = "f",
    bins: int = 128,
    hist3d: bool = False,
    bins3d: int = 16,
    base_persistence: float = 0.0,
    store_graph: bool = True,
    store_samples: bool = True,
    progress: bool = False,
    extra_meta: dict[str, object] | None = None,
) -> Path:
    """Write the datacube of a fitted `MorseSmale` ``ms`` of f (n,) over X (n, d) to ``out``.

    ``bins`` is the resolution of the 1-D and 2-D histograms, ``bins3d`` of the optional 3-D
    ones. Leaves are the Morse-Smale cells at ``base_persistence`` (0: the finest). The file
    is written atomically.
    """
    import duckdb
    import pyarrow as pa

    from oncoscale._io import atomic_path

    X = check_points(X)
    n, d = X.shape
    f = check_function(f, n)
    if not hasattr(ms, "graph_") or ms.n_samples_ != n:
        raise ConfigurationError("ms must be a MorseSmale fitted on the same X and f")
    if not (isinstance(bins, int | np.integer) and 2 <= bins <= 4096):
        raise ConfigurationError(f"bins must be an integer in [2, 4096], found {bins!r}")
    if not (isinstance(bins3d, int | np.integer) and 2 <= bins3d <= 256):
        raise ConfigurationError(f"bins3d must be an integer in [2, 256], found {bins3d!r}")
    names = [f"x{j}" for j in range(d)] if dims is None else [str(s) for s in dims]
    if len(names) != d:
        raise ConfigurationError(f"dims names {len(names)} columns but X has {d}")
    names.append(str(f_name))
    if len(set(names)) != len(names):
        raise ConfigurationError(f"axis names must be unique, found {names}")

    up = ms.regions(base_persistence, "max")
    down = ms.regions(base_persistence, "min")
    pairs, leaf = np.unique(up * n + down, return_inverse=True)
    leaf = leaf.reshape(-1).astype(np.int32)
    L = pairs.shape[0]
    lmax, lmin = pairs // n, pairs % n
    cnt = np.bincount(leaf, minlength=L)
    fsum = np.bincount(leaf, weights=f, minlength=L)
    fmin = np.full(L, np.inf)
    np.minimum.at(fmin, leaf, f)
    fmax = np.full(L, -np.inf)
    np.maximum.at(fmax, leaf, f)

    data = np.concatenate([X, f[:, None]], axis=1)  # (n, d+1)
    lo = data.min(axis=0)
    hi = data.max(axis=0)
    B = np.stack([bin_index(data[:, a], lo[a], hi[a], bins) for a in range(d + 1)], axis=1)
    mu, comps = _pca2(X)

    steps = ["hist1d", "hist2d"] + (["hist3d"] if hist3d else []) + ["tables"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="cube", unit="step", leave=False)

    with atomic_path(out) as tmp:
        tmp.unlink()
        con = duckdb.connect(str(tmp))
        try:
            con.execute("CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
            meta = {
                "format": CUBE_FORMAT, "version": str(CUBE_VERSION), "n": str(n), "d": str(d),
                "bins": str(bins), "bins3d": str(bins3d if hist3d else 0),
                "hist3d": str(bool(hist3d)).lower(), "f_name": str(f_name),
                "base_persistence": repr(float(base_persistence)),
                "f_range": repr(float(ms.f_range_)), "k": str(ms.graph_.k),
                "beta": repr(ms.graph_.beta), "relaxed": str(ms.graph_.relaxed).lower(),
                "knn_method": ms.graph_.knn_method, "knn_recall": repr(ms.graph_.knn_recall),
                "n_edges": str(ms.graph_.n_edges), "n_leaves": str(L),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for key, val in (extra_meta or {}).items():
                meta[str(key)] = val if isinstance(val, str) else json.dumps(val)
            con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            con.execute("CREATE TABLE axes(axis SMALLINT, name VARCHAR, lo DOUBLE, hi DOUBLE, "
                        "bins INTEGER)")
            con.executemany("INSERT INTO axes VALUES (?, ?, ?, ?, ?)",
                            [(a, names[a], float(lo[a]), float(hi[a]), int(bins))
                             for a in range(d + 1)])

            def put(table: str, cols: dict[str, np.ndarray]) -> None:
                arrow = pa.table(cols)  # noqa: F841 - read by DuckDB's replacement scan
                con.execute(f"INSERT INTO {table} SELECT * FROM arrow")

            con.execute("CREATE TABLE leaves(leaf INTEGER, max BIGINT, min BIGINT, "
                        "count BIGINT, f_min DOUBLE, f_max DOUBLE, f_mean DOUBLE)")
            put("leaves", {"leaf": np.arange(L, dtype=np.int32), "max": lmax, "min": lmin,
                           "count": cnt.astype(np.int64), "f_min": fmin, "f_max": fmax,
                           "f_mean": fsum / np.maximum(cnt, 1)})

            con.execute("CREATE TABLE hist1d(leaf INTEGER, axis SMALLINT, bin SMALLINT, "
                        "count BIGINT)")
            for a in range(d + 1):
                whole = np.bincount(B[:, a], minlength=bins)
                nz = np.flatnonzero(whole)
                key = leaf.astype(np.int64) * bins + B[:, a]
                k_u, k_c = np.unique(key, return_counts=True)
                put("hist1d", {
                    "leaf": np.concatenate([np.full(nz.shape, -1), k_u // bins]).astype(np.int32),
                    "axis": np.full(nz.shape[0] + k_u.shape[0], a, dtype=np.int16),
                    "bin": np.concatenate([nz, k_u % bins]).astype(np.int16),
                    "count": np.concatenate([whole[nz], k_c]).astype(np.int64)})
            if bar is not None:
                bar.update()

            con.execute("CREATE TABLE hist2d(leaf INTEGER, a SMALLINT, b SMALLINT, "
                        "bin_a SMALLINT, bin_b SMALLINT, count BIGINT)")
            bb = bins * bins
            for a, b in itertools.combinations(range(d + 1), 2):
                cell = B[:, a].astype(np.int64) * bins + B[:, b]
                whole = np.bincount(cell, minlength=bb)
                nz = np.flatnonzero(whole)
                k_u, k_c = np.unique(leaf.astype(np.int64) * bb + cell, return_counts=True)
                cells = np.concatenate([nz, k_u % bb])
                m = cells.shape[0]
                put("hist2d", {
                    "leaf": np.concatenate([np.full(nz.shape, -1), k_u // bb]).astype(np.int32),
                    "a": np.full(m, a, dtype=np.int16), "b": np.full(m, b, dtype=np.int16),
                    "bin_a": (cells // bins).astype(np.int16),
                    "bin_b": (cells % bins).astype(np.int16),
                    "count": np.concatenate([whole[nz], k_c]).astype(np.int64)})
            if bar is not None:
                bar.update()

            if hist3d:
                con.execute("CREATE TABLE hist3d(leaf INTEGER, a SMALLINT, b SMALLINT, "
                            "c SMALLINT, bin_a SMALLINT, bin_b SMALLINT, bin_c SMALLINT, "
                            "count BIGINT)")
                B3 = np.stack([bin_index(data[:, a], lo[a], hi[a], bins3d)
                               for a in range(d + 1)], axis=1).astype(np.int64)
                b3 = bins3d ** 3
                for a, b, c in itertools.combinations(range(d + 1), 3):
                    cell = (B3[:, a] * bins3d + B3[:, b]) * bins3d + B3[:, c]
                    whole = np.bincount(cell, minlength=b3)
                    nz = np.flatnonzero(whole)
                    k_u, k_c = np.unique(leaf.astype(np.int64) * b3 + cell, return_counts=True)
                    cells = np.concatenate([nz, k_u % b3])
                    m = cells.shape[0]
                    put("hist3d", {
                        "leaf": np.concatenate([np.full(nz.shape, -1), k_u // b3]
                                               ).astype(np.int32),
                        "a": np.full(m, a, dtype=np.int16), "b": np.full(m, b, dtype=np.int16),
                        "c": np.full(m, c, dtype=np.int16),
                        "bin_a": (cells // (bins3d * bins3d)).astype(np.int16),
                        "bin_b": (cells // bins3d % bins3d).astype(np.int16),
                        "bin_c": (cells % bins3d).astype(np.int16),
                        "count": np.concatenate([whole[nz], k_c]).astype(np.int64)})
                if bar is not None:
                    bar.update()

            con.execute("CREATE TABLE extrema(kind VARCHAR, extremum BIGINT, value DOUBLE, "
                        "persistence DOUBLE, parent BIGINT, saddle BIGINT, saddle_value DOUBLE, "
                        "pc1 DOUBLE, pc2 DOUBLE)")
            for kind, t in (("max", ms.maxima_), ("min", ms.minima_)):
                e = t["extremum"].to_numpy()
                pc = (X[e] - mu) @ comps.T
                put("extrema", {"kind": np.full(e.shape[0], kind), "extremum": e,
                                "value": t["value"].to_numpy(),
                                "persistence": t["persistence"].to_numpy(),
                                "parent": t["into"].to_numpy(), "saddle": t["saddle"].to_numpy(),
                                "saddle_value": t["saddle_value"].to_numpy(),
                                "pc1": pc[:, 0], "pc2": pc[:, 1]})
            s = ms.saddles_
            spc = (X[s["saddle"].to_numpy()] - mu) @ comps.T
            con.execute("CREATE TABLE saddles(kind VARCHAR, a BIGINT, b BIGINT, saddle BIGINT, "
                        "value DOUBLE, pc1 DOUBLE, pc2 DOUBLE)")
            put("saddles", {"kind": s["kind"].to_numpy().astype(str), "a": s["a"].to_numpy(),
                            "b": s["b"].to_numpy(), "saddle": s["saddle"].to_numpy(),
                            "value": s["value"].to_numpy(), "pc1": spc[:, 0], "pc2": spc[:, 1]})
            code = "UTINYINT" if bins <= 256 else "USMALLINT"
            con.execute("CREATE TABLE sample_bins(leaf INTEGER, " + ", ".join(
                f"b{a} {code}" for a in range(d + 1)) + ")")
            cdt = np.uint8 if bins <= 256 else np.uint16
            put("sample_bins", {"leaf": leaf, **{f"b{a}": B[:, a].astype(cdt)
                                                 for a in range(d + 1)}})
            con.execute("CREATE TABLE samples(i BIGINT, leaf INTEGER, max BIGINT, min BIGINT, "
                        "f DOUBLE)")
            if store_samples:
                put("samples", {"i": np.arange(n, dtype=np.int64), "leaf": leaf,
                                "max": ms.ascending_, "min": ms.descending_, "f": f})
            con.execute("CREATE TABLE edges(src BIGINT, dst BIGINT, length DOUBLE)")
            if store_graph:
                g = ms.graph_
                if g.path is not None and Path(g.path).exists():
                    con.execute("INSERT INTO edges SELECT src, dst, length FROM read_parquet(?)",
                                [str(g.path)])
                else:
                    put("edges", {"src": g.edges[:, 0], "dst": g.edges[:, 1],
                                  "length": g.lengths})
            con.execute("CREATE VIEW merges AS SELECT kind, extremum AS dying, parent AS survivor, "
                        "saddle, saddle_value, persistence FROM extrema WHERE parent >= 0 "
                        "ORDER BY persistence")
            con.execute("CHECKPOINT")
            if bar is not None:
                bar.update()
        finally:
            con.close()
            if bar is not None:
                bar.close()
    return Path(out)


class Cube:
    """Read-only access to a cube file; every query returns numpy arrays / DataFrames.

    Opening a missing, corrupt, foreign or other-version file raises `InputError` naming the
    file. Safe to share between threads (SQL runs on its own DuckDB cursor; the in-memory
    state is built at open and only read afterwards, caches are filled idempotently).

    ``memory_budget`` (bytes, default 256 MiB; None = no limit) bounds the per-sample bin codes
    held in memory (``n * (d + 1)`` bytes when ``bins <= 256``, 2 bytes each above, plus 4
    bytes per sample for its leaf) and the joint codes of axis pairs cached for 2-D counts
    (2n bytes each, as many as the rest of the budget holds, at least 2d + 2, at most 128).
    Within the budget every histogram, brushed or not, is a
    bincount over the selected samples' codes (exact at the cube's resolution, brushes on any
    axis); over it (or with ``memory_budget=0``) queries are SQL sums over the sparse per-leaf
    histogram tables. The persistence hierarchy (segments and spine at every level) is
    always resolved in memory from checkpoints computed at open (see `_build_hierarchy`).
    """

    def __init__(self, path: str | os.PathLike[str],
                 memory_budget: int | None = 256 * 2**20) -> None:
        import duckdb

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("cube file not found", path=self.path)
        try:
            self._con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.Error as exc:
            raise InputError(f"not a DuckDB database (corrupt or foreign file): {exc}",
                             path=self.path) from None
        try:
            self._con.execute("SET enable_progress_bar = false")
            have = {r[0] for r in self._con.execute(
                "SELECT table_name FROM information_schema.tables").fetchall()}
            if "meta" not in have:
                raise InputError("not an oncoscale topology cube: missing tables ['meta']",
                                 path=self.path)
            self.meta = dict(self._con.execute("SELECT key, value FROM meta").fetchall())
            if self.meta.get("format") != CUBE_FORMAT:
                raise InputError(f"not an oncoscale topology cube: format is "
                                 f"{self.meta.get('format')!r}, expected {CUBE_FORMAT!r}",
                                 path=self.path)
            version = int(self.meta.get("version", -1))
            if version != CUBE_VERSION:
                how = ("newer than this oncoscale supports" if version > CUBE_VERSION else
                       "written by an older oncoscale; rebuild it with `oncoscale topo build`")
                raise InputError(f"cube version {version} is {how} (this oncoscale reads "
                                 f"version {CUBE_VERSION})", path=self.path)
            missing = [t for t in _TABLES if t not in have]
            if missing:
                raise InputError(f"not an oncoscale topology cube: missing tables {missing}",
                                 path=self.path)
            self.axes = self._con.execute("SELECT * FROM axes ORDER BY axis").df()
            self.leaves = self._con.execute("SELECT * FROM leaves ORDER BY leaf").df()
            self.extrema = self._con.execute("SELECT * FROM extrema").df().rename(
                columns={"parent": "into"})
            self.n = int(self.meta["n"])
            self.d = int(self.meta["d"])
            self.bins = int(self.meta["bins"])
            self._saddles = {
                kind: self._con.execute(
                    "SELECT a, b, saddle, value, pc1, pc2 FROM saddles WHERE kind = ? "
                    f"ORDER BY value {'DESC' if kind == 'max' else 'ASC'}, a, b",
                    [kind]).fetchnumpy()
                for kind in ("max", "min")}
            self._codes, self._sample_leaf = self._load_codes(memory_budget)
        except InputError:
            self._con.close()
            raise
        except (duckdb.Error, KeyError, ValueError) as exc:
            self._con.close()
            raise InputError(f"corrupt oncoscale topology cube: {exc}", path=self.path) from None
        self.bins3d = int(self.meta.get("bins3d", 0))
        self.has_hist3d = self.meta.get("hist3d") == "true" and "hist3d" in have
        self.names = self.axes["name"].tolist()
        self._base = float(self.meta.get("base_persistence", 0.0))
        self._tables = {
            kind: self.extrema[self.extrema["kind"] == kind].reset_index(drop=True)
            for kind in ("max", "min")
        }
        self._sorted = {}
        for kind, t in self._tables.items():
            t = t.sort_values("extremum")
            self._sorted[kind] = {c: t[c].to_numpy() for c in
                                  ("extremum", "value", "persistence", "pc1", "pc2", "into")}
        self._reps = lru_cache(maxsize=256)(self._reps_uncached)
        self._level_state = lru_cache(maxsize=256)(self._level_state_uncached)
        self._spine_cached = lru_cache(maxsize=256)(self._spine)
        self._segments_cached = lru_cache(maxsize=256)(self._segments)
        self._segment_order = lru_cache(maxsize=256)(self._segment_order_uncached)
        self._select_cached = lru_cache(maxsize=256)(self._select)
        self._lock = threading.Lock()
        self._rows_cache: dict = {}  # (id(leaves), brush bins) -> (leaves, rows); bounded
        self._whole = None  # whole-data 1-D and 2-D histograms, loaded once
        # joint codes of axis pairs (2n bytes each), as many as the memory budget leaves room
        # for (at least the 10-20 a parallel-coordinates view needs), first in first out
        room = (memory_budget or 2**62) - self.n * (self.d + 5)
        self._pairs: dict = {}
        self._pair_limit = int(max(2 * self.d + 2, min(128, room // max(2 * self.n, 1))))
        self._hist_cache: dict = {}  # whole-data / brush-only histograms; bounded
        self._build_hierarchy()

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Cube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sql(self, query: str, params: Sequence[object] = ()):
        cur = self._con.cursor()
        try:
            return cur.execute(query, list(params)).fetchnumpy()
        finally:
            cur.close()

    def _load_codes(self, budget: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-sample bin codes (d+1, n) and leaf (n,) if they fit ``budget`` bytes."""
        dtype = np.uint8 if self.bins <= 256 else np.uint16
        need = self.n * (self.d + 1) * np.dtype(dtype).itemsize + self.n * 4
        if budget is not None and need > budget:
            return None, None
        r = self._sql("SELECT * FROM sample_bins")
        leaf = np.asarray(r["leaf"], dtype=np.int32)
        if leaf.shape[0] != self.n:
            raise InputError(f"corrupt oncoscale topology cube: sample_bins has "
                             f"{leaf.shape[0]} rows, expected n = {self.n}", path=self.path)
        codes = np.empty((self.d + 1, self.n), dtype=dtype)
        for a in range(self.d + 1):
            codes[a] = r[f"b{a}"]
        if codes.size and int(codes.max()) >= self.bins:
            raise InputError("corrupt oncoscale topology cube: a bin code is out of range",
                             path=self.path)
        return codes, leaf

    def warm(self, pcoords_bins: int | None = 32) -> Cube:
        """Load what the first queries would otherwise load: the whole-data histograms, the
        persistence ranks of the base-level spine view and (in memory) the joint codes of the
        default parallel-coordinate pairs at ``pcoords_bins`` (all dims, then f)."""
        if self._codes is not None:
            self._whole_tables()
            if pcoords_bins and self.bins % pcoords_bins == 0:
                for a in range(self.d):
                    self._pair_codes(a, a + 1, pcoords_bins)
        for kind in ("max", "min"):  # the persistence ranks of the base-level spine view
            self._base_links_among(kind, np.zeros(0, dtype=np.int64))
        self.segments(self._base, largest=1)  # the base level's (largest) segment table
        return self

    @property
    def in_memory(self) -> bool:
        """Whether histograms are computed from in-memory sample codes (else SQL)."""
        return self._codes is not None

    # --- validation ------------------------------------------------------------------------
    def axis(self, a: int | str) -> int:
        """Axis number of a name or number (the last axis is f); unknown -> InputError."""
        if isinstance(a, str):
            if a in self.names:
                return self.names.index(a)
            raise InputError(f"unknown axis {a!r}; known: {self.names}")
        if isinstance(a, bool) or not isinstance(a, int | np.integer) or not (
                0 <= a <= self.d):
            raise InputError(f"axis must be an integer in [0, {self.d}] or a name, found {a!r}")
        return int(a)

    def levels(self) -> np.ndarray:
        """Sorted distinct finite persistence levels at which the segmentation changes."""
        p = self.extrema["persistence"].to_numpy()
        return np.unique(p[np.isfinite(p) & (p >= self._base)])

    def _p(self, persistence: object) -> float:
        return max(_level(persistence), self._base)

    # --- hierarchy -------------------------------------------------------------------------
    # Extrema are addressed by their index in the sorted extremum ids of their kind (so index
    # order is sample-index order). ``_reps(p, kind)`` maps every extremum to the index of
    # the extremum it has merged into at level p. Levels nest, so the segments and the spine
    # links at p can be computed from those at any lower level: `_build_hierarchy` keeps
    # checkpoints (a level, its segment table, the leaf -> segment map and its reduced saddle
    # links), each with about 8x fewer extrema than the one below; a query at p starts from
    # the highest checkpoint <= p, so its cost is that of a few thousand rows, not of the
    # 10^5-10^6 leaves and 10^6-10^7 saddle records of the base level.
    def _reps_uncached(self, p: float, kind: str) -> np.ndarray:
        t = self._sorted[kind]
        E = t["extremum"].shape[0]
        if E == 0:
            return np.zeros(0, dtype=np.int64)
        if "_into" not in t:  # the index each extremum merges into (-1: none), once
            tgt = np.clip(np.searchsorted(t["extremum"], t["into"]), 0, E - 1)
            ok = (t["into"] >= 0) & (t["extremum"][tgt] == t["into"])
            t["_into"] = np.where(ok, tgt, -1)
        into = t["_into"]
        valid = (t["persistence"] < p) & (into >= 0)
        up = np.where(valid, into, np.arange(E))
        while True:  # pointer jumping to the surviving extremum
            nxt = up[up]
            if np.array_equal(nxt, up):
                return up
            up = nxt

    def _ext_index(self, kind: str, sample_ids: np.ndarray) -> np.ndarray:
        """Extremum index (int32) of sample ids that must be extrema of ``kind``."""
        ids = self._sorted[kind]["extremum"]
        lut = np.full(self.n, -1, dtype=np.int32)
        lut[ids] = np.arange(ids.shape[0], dtype=np.int32)
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        if sample_ids.size and (sample_ids.min() < 0 or sample_ids.max() >= self.n):
            raise InputError("corrupt oncoscale topology cube: a sample index is out of range",
                             path=self.path)
        at = lut[sample_ids]
        if at.size and at.min() < 0:
            raise InputError("corrupt oncoscale topology cube: a leaf or saddle refers to an "
                             "unknown extremum", path=self.path)
        return at

    _CHECKPOINT_FACTOR = 1.5  # extrema per checkpoint shrink by this factor ...
    _CHECKPOINT_MIN = 64  # ... down to this many

    def _build_hierarchy(self) -> None:
        lv = self.leaves
        cnt = lv["count"].to_numpy().astype(np.int64)
        self._leaf_ext = {"max": self._ext_index("max", lv["max"].to_numpy()),
                          "min": self._ext_index("min", lv["min"].to_numpy())}
        self._own_volume = {k: np.bincount(self._leaf_ext[k], weights=cnt,
                                           minlength=len(self._sorted[k]["extremum"]))
                            for k in ("max", "min")}
        links0 = {}
        for kind in ("max", "min"):
            s = self._saddles[kind]
            links0[kind] = (self._ext_index(kind, s.pop("a")), self._ext_index(kind, s.pop("b")),
                            np.arange(s["saddle"].shape[0], dtype=np.int32))
        seg0 = {"max": self._leaf_ext["max"], "min": self._leaf_ext["min"], "count": cnt,
                "f_min": lv["f_min"].to_numpy(), "f_max": lv["f_max"].to_numpy(),
                "f_sum": lv["f_mean"].to_numpy() * cnt, "n_leaves": np.ones(len(lv), np.int64)}
        # checkpoint 0: the leaves (the base segmentation) and the raw saddle records
        self._checkpoints = [(self._base, seg0, np.arange(len(lv), dtype=np.int32), links0)]
        pers = self.extrema["persistence"].to_numpy()
        pers = np.sort(pers[pers >= self._base])  # inf (component roots) last
        total = pers.shape[0]
        # the first checkpoint: past the noise (1/8 of the extrema), and at or below the
        # levels the explorer's slider offers (its 2000 highest) unless that is most of them
        target = min(total // 2, max(total // max(8, self._CHECKPOINT_FACTOR), 2500))
        while target >= self._CHECKPOINT_MIN:
            p = float(pers[total - target])
            if not np.isfinite(p) or p <= self._checkpoints[-1][0]:
                break
            prev = self._checkpoints[-1]
            seg, remap = self._reduce_segments(prev[1], p)
            links = {k: self._reduce_links(prev[3][k], p, k) for k in ("max", "min")}
            self._checkpoints.append((p, seg, remap[prev[2]], links))
            target = int(target / self._CHECKPOINT_FACTOR)
        self._checkpoint_levels = np.array([c[0] for c in self._checkpoints])
        self._base_link_count = {k: len(links0[k][0]) for k in ("max", "min")}
        self._base_rank: dict = {}

    def _checkpoint(self, p: float):
        return self._checkpoints[int(np.searchsorted(self._checkpoint_levels, p, "right")) - 1]

    def _reduce_segments(self, seg: dict, p: float) -> tuple[dict, np.ndarray]:
        """Merge a segment table into the segments at level p; returns (table, old -> new)."""
        rmax = self._reps(p, "max")[seg["max"]]
        rmin = self._reps(p, "min")[seg["min"]]
        key = rmax * max(len(self._sorted["min"]["extremum"]), 1) + rmin
        u, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
        m = u.shape[0]
        first = np.zeros(m, dtype=np.int64)
        first[inv[::-1]] = np.arange(inv.shape[0])[::-1]
        f_min = np.full(m, np.inf)
        np.minimum.at(f_min, inv, seg["f_min"])
        f_max = np.full(m, -np.inf)
        np.maximum.at(f_max, inv, seg["f_max"])
        out = {"max": rmax[first], "min": rmin[first],
               "count": np.bincount(inv, weights=seg["count"], minlength=m).astype(np.int64),
               "f_min": f_min, "f_max": f_max,
               "f_sum": np.bincount(inv, weights=seg["f_sum"], minlength=m),
               "n_leaves": np.bincount(inv, weights=seg["n_leaves"], minlength=m
                                       ).astype(np.int64)}
        return out, inv.astype(np.int32)

    def _reduce_links(self, links, p: float, kind: str):
        """Best saddle (first record, records are best first) of every pair of regions at p."""
        A, B, sel = links
        rep = self._reps(p, kind)
        ra, rb = rep[A], rep[B]
        keep = np.flatnonzero(ra != rb)
        ra, rb = ra[keep], rb[keep]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        _, first = np.unique(lo.astype(np.int64) * max(rep.shape[0], 1) + hi, return_index=True)
        first = np.sort(first)
        return lo[first], hi[first], sel[keep[first]]

    def _level_state_uncached(self, p: float):
        """(segment table at p, leaf -> segment (L,)), from the highest checkpoint <= p."""
        level, seg, leaf_seg, _ = self._checkpoint(p)
        if level == p:
            return seg, leaf_seg
        seg_p, remap = self._reduce_segments(seg, p)
        return seg_p, remap[leaf_seg]

    def leaf_segments(self, persistence: float = 0.0) -> pd.DataFrame:
        """Leaves with the surviving maximum/minimum and the segment id at ``persistence``."""
        p = self._p(persistence)
        seg, leaf_seg = self._level_state(p)
        lv = self.leaves
        return pd.DataFrame({"leaf": lv["leaf"].to_numpy(),
                             "seg_max": self._sorted["max"]["extremum"][seg["max"]][leaf_seg],
                             "seg_min": self._sorted["min"]["extremum"][seg["min"]][leaf_seg],
                             "segment": leaf_seg, "count": lv["count"].to_numpy(),
                             "f_min": lv["f_min"].to_numpy(), "f_max": lv["f_max"].to_numpy(),
                             "f_sum": lv["f_mean"].to_numpy() * lv["count"].to_numpy()})

    def segments(self, persistence: float = 0.0, largest: int | None = None) -> pd.DataFrame:
        """Morse-Smale segments at ``persistence``: segment, max, min, count, f range/mean.

        ``largest``: only that many segments, the largest first (ties by segment id); the
        total is ``len(segments(p))`` or ``attrs["total"]`` of the capped frame."""
        p = self._p(persistence)
        segs = self._segments_cached(p)
        if largest is None:
            return segs.copy()
        if isinstance(largest, bool) or not isinstance(largest, int | np.integer) or largest < 1:
            raise InputError(f"largest must be a positive integer or None, found {largest!r}")
        out = segs.iloc[self._segment_order(p)[:largest]].copy()
        out.attrs["total"] = len(segs)
        return out

    def _segment_order_uncached(self, p: float) -> np.ndarray:
        cnt = self._segments_cached(p)["count"].to_numpy()
        return np.lexsort((np.arange(cnt.shape[0]), -cnt))

    def _segments(self, p: float) -> pd.DataFrame:
        seg, _ = self._level_state(p)
        out = pd.DataFrame({"segment": np.arange(seg["count"].shape[0]),
                            "max": self._sorted["max"]["extremum"][seg["max"]],
                            "min": self._sorted["min"]["extremum"][seg["min"]],
                            "count": seg["count"], "f_min": seg["f_min"],
                            "f_max": seg["f_max"], "n_leaves": seg["n_leaves"]})
        out["f_mean"] = seg["f_sum"] / np.maximum(out["count"].to_numpy(), 1)
        return out

    def select(self, persistence: float = 0.0, segment: int | None = None,
               maximum: int | None = None, minimum: int | None = None) -> np.ndarray | None:
        """Leaf ids (sorted, read-only) of a selection (None = the whole data).

        ``segment``: a segment id of `segments` at ``persistence``; ``maximum`` / ``minimum``:
        the sample index of a surviving extremum, selecting its whole ascending / descending
        region; both given: their Morse-Smale cell.
        """
        if segment is None and maximum is None and minimum is None:
            return None
        p = self._p(persistence)
        seg, _ = self._level_state(p)
        nseg = seg["count"].shape[0]
        if segment is not None and (
                isinstance(segment, bool) or not isinstance(segment, int | np.integer)
                or not 0 <= segment < nseg):
            raise InputError(f"segment must be an integer in [0, {nseg}) at persistence "
                             f"{persistence}, found {segment!r}")
        for val, kind in ((maximum, "max"), (minimum, "min")):
            if val is None:
                continue
            ok = isinstance(val, int | np.integer) and not isinstance(val, bool)
            if ok:
                ids = self._sorted[kind]["extremum"]
                at = int(np.searchsorted(ids, val))
                ok = at < len(ids) and ids[at] == val and self._reps(p, kind)[at] == at \
                    and bool(np.any(seg[kind] == at))
            if not ok:
                raise InputError(f"{val!r} is not a {kind}imum surviving at persistence "
                                 f"{persistence}")
        return self._select_cached(p, None if segment is None else int(segment),
                                   None if maximum is None else int(maximum),
                                   None if minimum is None else int(minimum))

    def _select(self, p: float, segment, maximum, minimum) -> np.ndarray:
        seg, leaf_seg = self._level_state(p)
        keep = np.ones(seg["count"].shape[0], dtype=bool)
        if segment is not None:
            keep[:] = False
            keep[segment] = True
        for val, kind in ((maximum, "max"), (minimum, "min")):
            if val is not None:
                at = int(np.searchsorted(self._sorted[kind]["extremum"], val))
                keep &= seg[kind] == at
        out = np.flatnonzero(keep[leaf_seg]).astype(np.int32)
        out.flags.writeable = False
        return out

    # --- in-memory histograms --------------------------------------------------------------
    # A histogram of a selection is a bincount of the selected samples' codes. Rows are
    # chosen once per (selection, brush) and cached; a selection holding more than half of
    # its base (all samples, or the brushed ones) is counted as base minus the complement,
    # so no query counts more than half of the samples. Base histograms (whole data, brushed
    # or not) come from the stored whole-data tables where they can, else one pass, cached.
    _CACHE_ITEMS = 64  # entries of up to ~2n bytes (pair codes) or a few MB (views)

    def _remember(self, cache: dict, key, value, limit: int | None = None):
        with self._lock:  # server threads share the caches
            while len(cache) >= (limit or self._CACHE_ITEMS):
                cache.pop(next(iter(cache)))
            cache[key] = value
        return value

    def _whole_tables(self) -> tuple[np.ndarray, dict]:
        hit = self._whole
        if hit is None:
            B = self.bins
            w1 = np.zeros((self.d + 1, B), dtype=np.int64)
            r = self._sql("SELECT axis, bin, count FROM hist1d WHERE leaf = -1")
            w1[r["axis"].astype(np.int64), r["bin"].astype(np.int64)] = r["count"]
            pairs: dict = {}
            if (self.d + 1) * self.d // 2 * B * B * 8 <= 64 * 2**20:  # else per pair, lazily
                r = self._sql("SELECT a, b, bin_a, bin_b, count FROM hist2d WHERE leaf = -1 "
                              "ORDER BY a, b")
                key = r["a"].astype(np.int64) * (self.d + 1) + r["b"]
                cuts = np.flatnonzero(np.diff(key)) + 1
                for part in np.split(np.arange(key.shape[0]), cuts):
                    if part.size:
                        h = np.zeros((B, B), dtype=np.int64)
                        h[r["bin_a"][part].astype(np.int64),
                          r["bin_b"][part].astype(np.int64)] = r["count"][part]
                        pairs[divmod(int(key[part[0]]), self.d + 1)] = h
            hit = self._whole = (w1, pairs)
        return hit

    def _whole2(self, a: int, b: int) -> np.ndarray:
        """Whole-data joint histogram (bins, bins) of axes a (rows) and b; do not modify."""
        pairs = self._whole_tables()[1]
        lo, hi = min(a, b), max(a, b)
        h = pairs.get((lo, hi))
        if h is None:
            key = ("whole2", lo, hi)
            h = self._hist_cache.get(key)
            if h is None:
                h = self._remember(self._hist_cache, key, self._count(None, (lo, hi), self.bins))
        return h if a < b else h.T

    def _brush_mask(self, br: tuple[int, int, int]) -> np.ndarray:
        key = ("mask", br)
        hit = self._hist_cache.get(key)
        if hit is None:
            col = self._codes[br[0]]
            hit = self._remember(self._hist_cache, key, (col >= br[1]) & (col <= br[2]))
        return hit

    def _count(self, rows: np.ndarray | None, axes: tuple[int, ...], res: int) -> np.ndarray:
        step = self.bins // res
        code = None
        for a in axes:
            col = self._codes[a] if rows is None else self._codes[a][rows]
            col = col.astype(np.intp) if step == 1 else (col // step).astype(np.intp)
            code = col if code is None else code * res + col
        return np.bincount(code, minlength=res ** len(axes)).reshape((res,) * len(axes))

    def _base_hist(self, br, axes: tuple[int, ...], res: int) -> np.ndarray:
        """Histogram of all samples (inside the brush ``br`` if given); do not modify."""
        if len(axes) == 1 and (br is None or br[0] == axes[0]):
            h = self._whole_tables()[0][axes[0]].copy()
            if br is not None:
                h[: br[1]] = 0
                h[br[2] + 1:] = 0
            return _coarsen1(h, res)
        if br is not None and len(axes) == 1:
            h2 = self._whole2(axes[0], br[0])
            return _coarsen1(h2[:, br[1]: br[2] + 1].sum(axis=1), res)
        if len(axes) == 2 and (br is None or br[0] in axes):
            h = self._whole2(*axes)
            if br is not None:
                h = h.copy()
                if br[0] == axes[0]:
                    h[: br[1]] = 0
                    h[br[2] + 1:] = 0
                else:
                    h[:, : br[1]] = 0
                    h[:, br[2] + 1:] = 0
            return _coarsen(h, res)
        key = ("base", br, axes, res)
        hit = self._hist_cache.get(key)
        if hit is None:
            if br is None:
                hit = self._count_rows(None, axes, res)
            else:  # a brush on a third axis: count the smaller side of it
                bm = self._brush_mask(br)
                if 2 * int(np.count_nonzero(bm)) > self.n:
                    hit = (self._base_hist(None, axes, res)
                           - self._count_rows(np.flatnonzero(~bm), axes, res))
                else:
                    hit = self._count_rows(np.flatnonzero(bm), axes, res)
            hit = self._remember(self._hist_cache, key, hit)
        return hit

    def _count_rows(self, rows: np.ndarray | None, axes: tuple[int, ...], res: int):
        if len(axes) == 2 and res * res <= 65536:  # one gather of a cached pair code
            pc = self._pair_codes(axes[0], axes[1], res)
            return np.bincount(pc if rows is None else pc[rows],
                               minlength=res * res).reshape(res, res)
        return self._count(rows, axes, res)

    def _plan(self, leaves: np.ndarray, br) -> tuple[bool, np.ndarray]:
        """(complement, rows): the histogram is base - count(rows) if complement, else
        count(rows). Cached per (leaves object, brush)."""
        key = (id(leaves), br)
        hit = self._rows_cache.get(key)
        if hit is not None and hit[0] is leaves:
            return hit[1]
        ids = np.asarray(leaves, dtype=np.int64)
        L = len(self.leaves)
        if ids.size and (ids.min() < 0 or ids.max() >= L):
            raise InputError(f"leaf ids must be in [0, {L}), found {ids.min()}..{ids.max()}")
        lm = np.zeros(L, dtype=bool)
        lm[ids] = True
        sel = lm[self._sample_leaf]
        if br is None:
            inside, total = sel, self.n
        else:
            bm = self._brush_mask(br)
            inside, total = sel & bm, int(np.count_nonzero(bm))
        if np.count_nonzero(inside) > total // 2:
            np.logical_not(sel, out=sel)
            plan = (True, np.flatnonzero(sel if br is None else sel & bm).astype(np.int32))
        else:
            plan = (False, np.flatnonzero(inside).astype(np.int32))
        self._remember(self._rows_cache, key, (leaves, plan), limit=16)
        return plan

    def _fast_hist(self, pairs: list[tuple[int, ...]], leaves, br, res: int) -> list:
        if leaves is None:
            return [self._base_hist(br, axes, res).copy() for axes in pairs]
        complement, rows = self._plan(leaves, br)
        step = self.bins // res
        cols: dict[int, np.ndarray] = {}
        out = []
        for axes in pairs:
            if len(axes) == 2 and res * res <= 65536:
                h = self._count_rows(rows, axes, res)
                out.append(self._base_hist(br, axes, res) - h if complement else h)
                continue
            code = None
            for a in axes:
                if a not in cols:
                    c = self._codes[a][rows]
                    cols[a] = c.astype(np.intp) if step == 1 else (c // step).astype(np.intp)
                code = cols[a] if code is None else code * res + cols[a]
            h = np.bincount(code, minlength=res ** len(axes)).reshape((res,) * len(axes))
            out.append(self._base_hist(br, axes, res) - h if complement else h)
        return out

    def _pair_codes(self, a: int, b: int, res: int) -> np.ndarray:
        """(n,) uint16 joint bin of axes a, b at resolution ``res`` (cached, bounded)."""
        key = (a, b, res)
        hit = self._pairs.get(key)
        if hit is None:
            step = self.bins // res
            ca, cb = self._codes[a], self._codes[b]
            if step > 1:
                ca, cb = ca // step, cb // step
            code = ca.astype(np.uint16) * np.uint16(res) + cb
            hit = self._remember(self._pairs, key, code.astype(np.uint16, copy=False),
                                 limit=self._pair_limit)
        return hit

    def brushable(self, a: int, b: int | None, brush_axis: int) -> bool:
        """Whether a histogram of axes a (and b) can honour a brush on ``brush_axis``."""
        if self._codes is not None or brush_axis in (a, b):
            return True
        return b is not None and self.has_hist3d

    # --- histograms ------------------------------------------------------------------------
    def _brush_bins(self, brush, bins: int) -> tuple[int, int, int] | None:
        if brush is None:
            return None
        try:
            axis, lo, hi = brush
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            raise InputError(f"brush must be (axis, lo, hi), found {brush!r}") from None
        ax = self.axis(axis)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise InputError(f"brush range must be finite with lo <= hi, found [{lo}, {hi}]")
        row = self.axes.iloc[ax]
        b = bin_index(np.array([lo, hi]), row["lo"], row["hi"], bins)
        return ax, int(b[0]), int(b[1])

    def _leaf_clause(self, leaves: np.ndarray | None, params: list) -> str:
        if leaves is None:
            params.append(-1)
            return "leaf = ?"
        params.append(np.asarray(leaves).tolist())
        return "leaf IN (SELECT UNNEST(?::INTEGER[]))"

    def _complement(self, leaves: np.ndarray | None) -> np.ndarray | None:
        """Leaves outside a selection that covers more than half of them (None otherwise):
        such a histogram is computed as the whole data minus the complement (fewer rows)."""
        if leaves is None or len(leaves) <= len(self.leaves) // 2:
            return None
        mask = np.ones(len(self.leaves), dtype=bool)
        mask[np.asarray(leaves, dtype=np.int64)] = False
        return np.flatnonzero(mask).astype(np.int32)

    def hist1d(self, axis: int | str, persistence: float = 0.0, leaves: np.ndarray | None = None,
               brush: tuple | None = None) -> np.ndarray:
        """Counts (bins,) of ``axis`` over a selection of ``leaves`` (None = all data),
        optionally conditional on ``brush = (axis, lo, hi)`` in data units."""
        if self._codes is not None:
            a = self.axis(axis)
            return self._fast_hist([(a,)], leaves, self._brush_bins(brush, self.bins),
                                   self.bins)[0]
        comp = self._complement(leaves)
        if comp is not None:
            return self.hist1d(axis, persistence, None, brush) - (
                self.hist1d(axis, persistence, comp, brush) if len(comp) else 0)
        a = self.axis(axis)
        br = self._brush_bins(brush, self.bins)
        params: list = []
        if br is None or br[0] == a:
            where = self._leaf_clause(leaves, params)
            q = f"SELECT bin, SUM(count) AS c FROM hist1d WHERE {where} AND axis = ?"
            params.append(a)
            if br is not None:
                q += " AND bin BETWEEN ? AND ?"
                params += [br[1], br[2]]
            r = self._sql(q + " GROUP BY bin", params)
            out = np.zeros(self.bins, dtype=np.int64)
            out[r["bin"].astype(np.int64)] = r["c"]
            return out
        c = br[0]
        lo_ax, hi_ax = min(a, c), max(a, c)
        mine, other = ("bin_a", "bin_b") if a < c else ("bin_b", "bin_a")
        where = self._leaf_clause(leaves, params)
        params += [lo_ax, hi_ax, br[1], br[2]]
        r = self._sql(f"SELECT {mine} AS bin, SUM(count) AS c FROM hist2d WHERE {where} "
                      f"AND a = ? AND b = ? AND {other} BETWEEN ? AND ? GROUP BY {mine}", params)
        out = np.zeros(self.bins, dtype=np.int64)
        out[r["bin"].astype(np.int64)] = r["c"]
        return out

    def hist2d(self, a: int | str, b: int | str, persistence: float = 0.0,
               leaves: np.ndarray | None = None, brush: tuple | None = None,
               bins: int | None = None) -> np.ndarray:
        """Joint counts (bins, bins) of axes ``a`` (rows) and ``b`` (columns) over ``leaves``.

        ``bins`` (a divisor of the cube's resolution) coarsens the result. ``brush`` on a or b
        filters bins. A brush on a third axis is exact (at the cube's resolution) when the
        sample codes are in memory; otherwise it uses the 3-D histograms (at their coarser
        resolution ``bins3d``; ConfigurationError without them).
        """
        if self._codes is not None:
            a, b = self.axis(a), self.axis(b)
            if a == b:
                raise InputError(f"a 2-D histogram needs two different axes, found {a} twice")
            res = self.bins if bins is None else int(bins)
            if res < 1 or self.bins % res:
                raise InputError(f"bins must divide the cube resolution {self.bins}, found "
                                 f"{bins}")
            return self._fast_hist([(a, b)], leaves, self._brush_bins(brush, self.bins), res)[0]
        comp = self._complement(leaves)
        if comp is not None:
            whole = self.hist2d(a, b, persistence, None, brush, bins)
            return whole - (self.hist2d(a, b, persistence, comp, brush, bins) if len(comp)
                            else 0)
        a, b = self.axis(a), self.axis(b)
        if a == b:
            raise InputError(f"a 2-D histogram needs two different axes, found {a} twice")
        res = self.bins if bins is None else int(bins)
        params: list = []
        where = self._leaf_clause(leaves, params)
        br = self._brush_bins(brush, self.bins)
        lo_ax, hi_ax = min(a, b), max(a, b)
        if br is not None and br[0] not in (a, b):
            if not self.has_hist3d:
                raise ConfigurationError("brushing a 2-D histogram on a third axis needs the "
                                         "3-D histograms (build the cube with hist3d=True)")
            return self._hist2d_by3d(a, b, br, brush, where, params, res)
        params += [lo_ax, hi_ax]
        q = f"SELECT bin_a, bin_b, SUM(count) AS c FROM hist2d WHERE {where} AND a = ? AND b = ?"
        if br is not None:
            col = "bin_a" if br[0] == lo_ax else "bin_b"
            q += f" AND {col} BETWEEN ? AND ?"
            params += [br[1], br[2]]
        r = self._sql(q + " GROUP BY bin_a, bin_b", params)
        out = np.zeros((self.bins, self.bins), dtype=np.int64)
        np.add.at(out, (r["bin_a"].astype(np.int64), r["bin_b"].astype(np.int64)), r["c"])
        if a > b:
            out = out.T
        return _coarsen(out, res)

    def _hist2d_by3d(self, a, b, br, brush, where, params, res) -> np.ndarray:
        c, _, _ = br
        ax3 = sorted((a, b, c))
        cols = {ax3[0]: "bin_a", ax3[1]: "bin_b", ax3[2]: "bin_c"}
        b3 = self._brush_bins(brush, self.bins3d)
        params += [ax3[0], ax3[1], ax3[2], b3[1], b3[2]]
        r = self._sql(f"SELECT {cols[a]} AS x, {cols[b]} AS y, SUM(count) AS c FROM hist3d "
                      f"WHERE {where} AND a = ? AND b = ? AND c = ? AND {cols[c]} BETWEEN ? AND ?"
                      " GROUP BY x, y", params)
        out = np.zeros((self.bins3d, self.bins3d), dtype=np.int64)
        np.add.at(out, (r["x"].astype(np.int64), r["y"].astype(np.int64)), r["c"])
        return out

    def pcoords(self, axes: Sequence[int | str] | None = None, persistence: float = 0.0,
                leaves: np.ndarray | None = None, brush: tuple | None = None,
                bins: int = 32) -> list[tuple[np.ndarray, bool]]:
        """Density parallel coordinates: for each pair of adjacent ``axes`` (default: all dims,
        then f) the joint histogram (bins, bins) of the selection, and whether it honours the
        brush (a brush on a third axis needs the 3-D histograms; without them that pair is
        drawn unbrushed; with the sample codes in memory every pair honours it). In SQL mode
        pairs that need no brush are fetched in one SQL query."""
        axes = list(range(self.d + 1)) if axes is None else [self.axis(x) for x in axes]
        if self.bins % bins:
            raise InputError(f"bins must divide the cube resolution {self.bins}, found {bins}")
        br_axis = None if brush is None else self._brush_bins(brush, self.bins)[0]
        pairs = list(itertools.pairwise(axes))
        if any(a == b for a, b in pairs):
            raise InputError(f"adjacent parallel-coordinate axes must differ, found {axes}")
        if self._codes is not None:
            hs = self._fast_hist(pairs, leaves, self._brush_bins(brush, self.bins), bins)
            return [(h, brush is not None) for h in hs]
        plain = [(a, b) for a, b in pairs if brush is None or
                 (br_axis not in (a, b) and not self.has_hist3d)]
        fetched = self._hist2d_many(plain, leaves, bins) if plain else {}
        out = []
        for a, b in pairs:
            if (a, b) in fetched:
                out.append((fetched[(a, b)], False))
            else:
                out.append((self.hist2d(a, b, persistence, leaves, brush, bins=bins), True))
        return out

    def _hist2d_many(self, pairs, leaves, bins) -> dict:
        """Unbrushed joint histograms of several axis pairs at resolution ``bins`` (one query)."""
        comp = self._complement(leaves)
        if comp is not None:
            whole = self._hist2d_many(pairs, None, bins)
            part = self._hist2d_many(pairs, comp, bins) if len(comp) else {}
            return {k: v - part.get(k, 0) for k, v in whole.items()}
        step = self.bins // bins
        keys = sorted({min(a, b) * 4096 + max(a, b) for a, b in pairs})
        params: list = [step, step]  # positional: in the order they appear in the SQL
        where = self._leaf_clause(leaves, params)
        params.append(keys)
        r = self._sql(f"SELECT a, b, bin_a // ? AS x, bin_b // ? AS y, SUM(count) AS c "
                      f"FROM hist2d WHERE {where} AND a::INTEGER * 4096 + b IN "
                      f"(SELECT UNNEST(?::INTEGER[])) GROUP BY a, b, x, y", params)
        found: dict = {}
        for key in keys:
            lo_ax, hi_ax = divmod(key, 4096)
            m = (r["a"] == lo_ax) & (r["b"] == hi_ax)
            h = np.zeros((bins, bins), dtype=np.int64)
            np.add.at(h, (r["x"][m].astype(np.int64), r["y"][m].astype(np.int64)), r["c"][m])
            found[(lo_ax, hi_ax)] = h
        return {(a, b): (found[(a, b)] if a < b else found[(b, a)].T) for a, b in pairs}

    # --- spine -----------------------------------------------------------------------------
    def spine(self, persistence: float = 0.0, max_nodes: int | None = None,
              max_links: int | None = None) -> dict[str, pd.DataFrame]:
        """Topological spine at ``persistence`` (see `_spine`); cached per level.

        ``max_nodes`` / ``max_links`` (per kind; None = all) give a drawable view of a level
        with thousands of extrema: the ``max_nodes`` most persistent extrema of each kind,
        and of the links among them first every kept extremum's best link (its highest
        saddle for maxima, lowest for minima), then the other links best first, up to
        ``max_links``. The totals before capping are in
        ``nodes.attrs["total"]`` / ``links.attrs["total"]`` (per kind; the links total is
        None where nodes were capped above the base level: counting them would cost the full
        reduction).
        """
        p = self._p(persistence)
        if max_nodes is None and max_links is None:
            return {key: df.copy() for key, df in self._spine_cached(p).items()}
        for name, v in (("max_nodes", max_nodes), ("max_links", max_links)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)
                                  or v < 1):
                raise InputError(f"{name} must be a positive integer or None, found {v!r}")
        return {key: df.copy() for key, df in self._spine_view(p, max_nodes, max_links).items()}

    def _spine_view(self, p: float, max_nodes: int | None, max_links: int | None):
        key = ("spine", p, max_nodes, max_links)
        hit = self._hist_cache.get(key)
        if hit is not None:
            return hit
        nodes_out, links_out = [], []
        totals_n, totals_l = {}, {}
        for kind in ("max", "min"):
            nd = self._spine_nodes(p, kind)
            totals_n[kind] = len(nd)
            if max_nodes is not None and len(nd) > max_nodes:
                pers = nd["persistence"].to_numpy()
                order = np.lexsort((nd["extremum"].to_numpy(), -pers))  # most persistent
                nd = nd.iloc[np.sort(order[:max_nodes])]
                kept = self._ext_index(kind, nd["extremum"].to_numpy())
                if p == self._base:  # the base level: only records among the kept extrema
                    records = self._base_links_among(kind, kept)
                    totals_l[kind] = int(self._base_link_count[kind])
                else:
                    records = self._checkpoint(p)[3][kind]
                    totals_l[kind] = None  # not counted (would cost the full reduction)
                lo, hi, sel = self._links_among(p, kind, records, kept)
            else:
                kept = self._ext_index(kind, nd["extremum"].to_numpy())
                lo, hi, sel = self._links_among(p, kind, self._checkpoint(p)[3][kind], kept)
                totals_l[kind] = len(lo)
            if max_links is not None and len(lo) > max_links:
                # every kept extremum's best link (links are best first), then the others
                m = lo.shape[0]
                best = np.full(kept.shape[0], m, dtype=np.int64)
                np.minimum.at(best, lo, np.arange(m))
                np.minimum.at(best, hi, np.arange(m))
                take = np.zeros(m, dtype=bool)
                take[best[best < m]] = True
                take[np.flatnonzero(~take)[: max(0, max_links - int(take.sum()))]] = True
                take = np.flatnonzero(take)
                lo, hi, sel = lo[take], hi[take], sel[take]
            nodes_out.append(nd)
            links_out.append(self._links_frame(kind, kept[lo], kept[hi], sel))
        out = {"nodes": pd.concat(nodes_out, ignore_index=True),
               "links": pd.concat(links_out, ignore_index=True)}
        out["nodes"].attrs["total"] = totals_n
        out["links"].attrs["total"] = totals_l
        return self._remember(self._hist_cache, key, out)

    def _links_among(self, p: float, kind: str, records, kept: np.ndarray):
        """`_reduce_links` restricted to pairs of regions whose extrema (at p) are both in
        ``kept`` (sorted extremum indices): a dense first-occurrence table over kept x kept.
        Returns the pairs as positions in ``kept``."""
        A, B, sel = records
        rep = self._reps(p, kind)
        K = kept.shape[0]
        pos = np.full(rep.shape[0], -1, dtype=np.int64)
        pos[kept] = np.arange(K)
        pa, pb = pos[rep[A]], pos[rep[B]]
        idx = np.flatnonzero((pa >= 0) & (pb >= 0) & (pa != pb))
        pa, pb = pa[idx], pb[idx]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        key = lo * K + hi
        m = key.shape[0]
        if K * K <= 4_000_000:
            first = np.full(K * K, m, dtype=np.int64)
            np.minimum.at(first, key, np.arange(m))
            first = np.sort(first[first < m])
        else:
            first = np.sort(np.unique(key, return_index=True)[1])
        return lo[first], hi[first], sel[idx[first]]  # lo, hi: positions in ``kept``

    def _base_links_among(self, kind: str, kept: np.ndarray):
        """Base-level saddle records whose two extrema are both in ``kept`` (the most
        persistent ones), best first: a prefix of the records ordered by the persistence
        rank of their lesser extremum (computed once)."""
        if kind not in self._base_rank:
            t = self._sorted[kind]
            order = np.lexsort((t["extremum"], -t["persistence"]))
            rank = np.empty(order.shape[0], dtype=np.int32)
            rank[order] = np.arange(order.shape[0], dtype=np.int32)
            A, B, _ = self._checkpoints[0][3][kind]
            worst = np.maximum(rank[A], rank[B])
            by = np.argsort(worst, kind="stable").astype(np.int32)
            self._base_rank[kind] = (rank, worst[by], by)
        rank, worst_sorted, by = self._base_rank[kind]
        cut = int(rank[kept].max()) + 1 if len(kept) else 0
        idx = np.sort(by[: int(np.searchsorted(worst_sorted, cut))])
        A, B, sel = self._checkpoints[0][3][kind]
        return A[idx], B[idx], sel[idx]

    def _spine(self, p: float) -> dict[str, pd.DataFrame]:
        """Topological spine at ``p``: ``nodes`` (surviving extrema with f value, region
        volume = samples in their ascending/descending region, pc1, pc2) and ``links`` (the
        highest saddle between each pair of neighbouring surviving maxima, the lowest between
        minima), reduced from the highest hierarchy checkpoint <= p."""
        kinds = ("max", "min")
        return {"nodes": pd.concat([self._spine_nodes(p, k) for k in kinds], ignore_index=True),
                "links": pd.concat([self._spine_links(p, k) for k in kinds], ignore_index=True)}

    def _spine_nodes(self, p: float, kind: str) -> pd.DataFrame:
        t = self._sorted[kind]
        rep = self._reps(p, kind)
        vol = np.bincount(rep, weights=self._own_volume[kind], minlength=rep.shape[0])
        at = np.flatnonzero(vol > 0)
        return pd.DataFrame({"extremum": t["extremum"][at], "kind": kind,
                             "value": t["value"][at], "persistence": t["persistence"][at],
                             "volume": vol[at].astype(np.int64), "pc1": t["pc1"][at],
                             "pc2": t["pc2"][at]})

    def _spine_links(self, p: float, kind: str) -> pd.DataFrame:
        lo, hi, sel = self._reduce_links(self._checkpoint(p)[3][kind], p, kind)
        return self._links_frame(kind, lo, hi, sel)

    def _links_frame(self, kind: str, lo, hi, sel) -> pd.DataFrame:
        t = self._sorted[kind]
        s = self._saddles[kind]
        return pd.DataFrame({"kind": kind, "a": t["extremum"][lo], "b": t["extremum"][hi],
                             "saddle": s["saddle"][sel], "value": s["value"][sel],
                             "pc1": s["pc1"][sel], "pc2": s["pc2"][sel]})

    def merges(self) -> pd.DataFrame:
        """The cancellation sequence, lowest persistence first."""
        return pd.DataFrame(self._sql("SELECT * FROM merges ORDER BY persistence, kind, dying"))


def _level(persistence: object) -> float:
    try:
        p = float(persistence)
    except (TypeError, ValueError):
        raise InputError(f"persistence must be a number in [0, 1], found {persistence!r}") from None
    if not (0.0 <= p <= 1.0):
        raise InputError(f"persistence must be a number in [0, 1], found {persistence!r}")
    return p


def _coarsen1(h: np.ndarray, res: int) -> np.ndarray:
    n = h.shape[0]
    return h if res == n else h.reshape(res, n // res).sum(axis=1)


def _coarsen(h: np.ndarray, res: int) -> np.ndarray:
    n = h.shape[0]
    if res == n:
        return h
    if res < 1 or n % res:
        raise InputError(f"bins must divide the cube resolution {n}, found {res}")
    f = n // res
    return h.reshape(res, f, res, f).sum(axis=(1, 3))
