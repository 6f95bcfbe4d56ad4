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
    the segmentation and the neighbourhood graph.

Brushing a range on one axis gives conditional histograms of the others from the 2-D
histograms (exact up to the bin of the brush edges); a conditional 2-D histogram under a brush
on a third axis needs the optional 3-D histograms.
"""

from __future__ import annotations

import itertools
import json
import os
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
CUBE_VERSION = 1
_TABLES = ("meta", "axes", "leaves", "hist1d", "hist2d", "extrema", "saddles", "samples")


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

    Opening a missing, corrupt or foreign file raises `InputError` naming the file.
    Safe to share between threads (each query runs on its own DuckDB cursor).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
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
            missing = [t for t in _TABLES if t not in have]
            if missing:
                raise InputError(f"not an oncoscale topology cube: missing tables {missing}",
                                 path=self.path)
            self.meta = dict(self._con.execute("SELECT key, value FROM meta").fetchall())
            if self.meta.get("format") != CUBE_FORMAT:
                raise InputError(f"not an oncoscale topology cube: format is "
                                 f"{self.meta.get('format')!r}, expected {CUBE_FORMAT!r}",
                                 path=self.path)
            if int(self.meta.get("version", -1)) > CUBE_VERSION:
                raise InputError(f"cube version {self.meta.get('version')} is newer than this "
                                 f"oncoscale supports ({CUBE_VERSION})", path=self.path)
            self.axes = self._con.execute("SELECT * FROM axes ORDER BY axis").df()
            self.leaves = self._con.execute("SELECT * FROM leaves ORDER BY leaf").df()
            self.extrema = self._con.execute("SELECT * FROM extrema").df().rename(
                columns={"parent": "into"})
            self.saddles_table = self._con.execute("SELECT * FROM saddles").df()
        except InputError:
            self._con.close()
            raise
        except (duckdb.Error, KeyError, ValueError) as exc:
            self._con.close()
            raise InputError(f"corrupt oncoscale topology cube: {exc}", path=self.path) from None
        self.n = int(self.meta["n"])
        self.d = int(self.meta["d"])
        self.bins = int(self.meta["bins"])
        self.bins3d = int(self.meta.get("bins3d", 0))
        self.has_hist3d = self.meta.get("hist3d") == "true" and "hist3d" in have
        self.names = self.axes["name"].tolist()
        self._tables = {
            kind: self.extrema[self.extrema["kind"] == kind].reset_index(drop=True)
            for kind in ("max", "min")
        }
        self._sorted = {}
        self._saddles = {}
        for kind, t in self._tables.items():
            t = t.sort_values("extremum")
            self._sorted[kind] = {c: t[c].to_numpy() for c in
                                  ("extremum", "value", "persistence", "pc1", "pc2")}
            sd = self.saddles_table[self.saddles_table["kind"] == kind]
            sd = sd.sort_values("value", ascending=(kind == "min"), kind="stable")
            self._saddles[kind] = {c: sd[c].to_numpy() for c in
                                   ("a", "b", "saddle", "value", "pc1", "pc2")}
            idx = np.int32 if self.n < 2**31 else np.int64
            for c in ("a", "b"):
                self._saddles[kind][c] = self._saddles[kind][c].astype(idx)
        self._resolve = lru_cache(maxsize=64)(self._resolve_uncached)
        self._lut = lru_cache(maxsize=16)(self._lut_uncached)
        self._leaf_max = self.leaves["max"].to_numpy()
        self._leaf_min = self.leaves["min"].to_numpy()
        self._leaf_segments = lru_cache(maxsize=64)(self._leaf_segments_uncached)
        self._spine_cached = lru_cache(maxsize=64)(self._spine)
        self._segments_cached = lru_cache(maxsize=64)(self._segments)

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
        base = float(self.meta.get("base_persistence", 0.0))
        return np.unique(p[np.isfinite(p) & (p >= base)])

    # --- hierarchy -------------------------------------------------------------------------
    def _lut_uncached(self, persistence: float, kind: str) -> np.ndarray:
        """Dense map sample index -> surviving extremum at ``persistence`` (only entries of
        extrema are meaningful); a gather is much cheaper than a search per query."""
        ids, reps = self._resolve(persistence, kind)
        lut = np.zeros(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)
        lut[ids] = reps
        return lut

    def _resolve_uncached(self, persistence: float, kind: str):
        from oncoscale.topology.morse import resolve

        return resolve(self._tables[kind], persistence)

    def leaf_segments(self, persistence: float = 0.0) -> pd.DataFrame:
        """Leaves with the surviving maximum/minimum and the segment id at ``persistence``."""
        p = _level(persistence)
        p = max(p, float(self.meta.get("base_persistence", 0.0)))
        return self._leaf_segments(p)

    def _leaf_segments_uncached(self, p: float) -> pd.DataFrame:
        lv = self.leaves
        smax = self._lut(p, "max")[self._leaf_max].astype(np.int64)
        smin = self._lut(p, "min")[self._leaf_min].astype(np.int64)
        key = smax * self.n + smin
        _, seg = np.unique(key, return_inverse=True)
        return pd.DataFrame({"leaf": lv["leaf"].to_numpy(), "seg_max": smax, "seg_min": smin,
                             "segment": seg.reshape(-1), "count": lv["count"].to_numpy(),
                             "f_min": lv["f_min"].to_numpy(), "f_max": lv["f_max"].to_numpy(),
                             "f_sum": lv["f_mean"].to_numpy() * lv["count"].to_numpy()})

    def segments(self, persistence: float = 0.0) -> pd.DataFrame:
        """Morse-Smale segments at ``persistence``: segment, max, min, count, f range/mean."""
        p = max(_level(persistence), float(self.meta.get("base_persistence", 0.0)))
        return self._segments_cached(p).copy()

    def _segments(self, persistence: float) -> pd.DataFrame:
        ls = self._leaf_segments(persistence)
        g = ls.groupby("segment", sort=True)
        out = pd.DataFrame({"max": g["seg_max"].first(), "min": g["seg_min"].first(),
                            "count": g["count"].sum(), "f_min": g["f_min"].min(),
                            "f_max": g["f_max"].max(), "n_leaves": g["leaf"].size()})
        out["f_mean"] = g["f_sum"].sum() / out["count"]
        return out.reset_index()

    def select(self, persistence: float = 0.0, segment: int | None = None,
               maximum: int | None = None, minimum: int | None = None) -> np.ndarray | None:
        """Leaf ids of a selection (None = the whole data).

        ``segment``: a segment id of `segments` at ``persistence``; ``maximum`` / ``minimum``:
        the sample index of a surviving extremum, selecting its whole ascending / descending
        region; both given: their Morse-Smale cell.
        """
        if segment is None and maximum is None and minimum is None:
            return None
        ls = self.leaf_segments(persistence)
        mask = np.ones(len(ls), dtype=bool)
        if segment is not None:
            nseg = int(ls["segment"].max()) + 1 if len(ls) else 0
            if isinstance(segment, bool) or not isinstance(segment, int | np.integer) or not (
                    0 <= segment < nseg):
                raise InputError(f"segment must be an integer in [0, {nseg}) at persistence "
                                 f"{persistence}, found {segment!r}")
            mask &= ls["segment"].to_numpy() == segment
        for col, val, kind in (("seg_max", maximum, "max"), ("seg_min", minimum, "min")):
            if val is None:
                continue
            alive = ls[col].to_numpy()
            if not isinstance(val, int | np.integer) or val not in set(alive.tolist()):
                raise InputError(f"{val!r} is not a {kind}imum surviving at persistence "
                                 f"{persistence}")
            mask &= alive == val
        return ls["leaf"].to_numpy()[mask].astype(np.int32)

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
        filters bins; on a third axis it uses the 3-D histograms (ConfigurationError without).
        """
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
        drawn unbrushed). Pairs that need no brush are fetched in one SQL query."""
        axes = list(range(self.d + 1)) if axes is None else [self.axis(x) for x in axes]
        if self.bins % bins:
            raise InputError(f"bins must divide the cube resolution {self.bins}, found {bins}")
        br_axis = None if brush is None else self._brush_bins(brush, self.bins)[0]
        pairs = list(itertools.pairwise(axes))
        if any(a == b for a, b in pairs):
            raise InputError(f"adjacent parallel-coordinate axes must differ, found {axes}")
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
    def spine(self, persistence: float = 0.0) -> dict[str, pd.DataFrame]:
        """Topological spine at ``persistence`` (see `_spine`); cached per level."""
        p = max(_level(persistence), float(self.meta.get("base_persistence", 0.0)))
        return {key: df.copy() for key, df in self._spine_cached(p).items()}

    def _spine(self, persistence: float = 0.0) -> dict[str, pd.DataFrame]:
        """Topological spine at ``persistence``: ``nodes`` (surviving extrema with f value,
        region volume = samples in their ascending/descending region, pc1, pc2) and ``links``
        (the highest saddle between each pair of neighbouring surviving maxima, the lowest
        between minima)."""
        p = max(_level(persistence), float(self.meta.get("base_persistence", 0.0)))
        ls = self._leaf_segments(p)
        counts = ls["count"].to_numpy()
        nodes, links = [], []
        for kind, col in (("max", "seg_max"), ("min", "seg_min")):
            t = self._sorted[kind]
            ext, inv = np.unique(ls[col].to_numpy(), return_inverse=True)
            vol = np.bincount(inv.reshape(-1), weights=counts, minlength=len(ext))
            at = np.searchsorted(t["extremum"], ext)
            nodes.append(pd.DataFrame({"extremum": ext, "kind": kind, "value": t["value"][at],
                                       "persistence": t["persistence"][at],
                                       "volume": vol.astype(np.int64), "pc1": t["pc1"][at],
                                       "pc2": t["pc2"][at]}))
            lut = self._lut(p, kind)
            s = self._saddles[kind]  # sorted best saddle first (highest for maxima)
            ra = lut[s["a"]]
            rb = lut[s["b"]]
            keep = np.flatnonzero(ra != rb)
            ra, rb = ra[keep].astype(np.int64), rb[keep].astype(np.int64)
            a, b = np.minimum(ra, rb), np.maximum(ra, rb)
            _, first = np.unique(a * self.n + b, return_index=True)
            first = np.sort(first)  # the first (best) saddle of every pair, best first
            sel = keep[first]
            links.append(pd.DataFrame({"kind": kind, "a": a[first], "b": b[first],
                                       "saddle": s["saddle"][sel], "value": s["value"][sel],
                                       "pc1": s["pc1"][sel], "pc2": s["pc2"][sel]}))
        return {"nodes": pd.concat(nodes, ignore_index=True),
                "links": pd.concat(links, ignore_index=True)}

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


def _coarsen(h: np.ndarray, res: int) -> np.ndarray:
    n = h.shape[0]
    if res == n:
        return h
    if res < 1 or n % res:
        raise InputError(f"bins must divide the cube resolution {n}, found {res}")
    f = n // res
    return h.reshape(res, f, res, f).sum(axis=(1, 3))
