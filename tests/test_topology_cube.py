"""Datacube: histograms equal direct numpy histograms, segments are sums of leaves, brushing,
the spine, bad cube files, and the `oncoscale topo build` command."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.topology import Cube, MorseSmale, build, write_cube


def bumps(n=2500, d=3, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-6, 6, size=(n, d))
    centres = np.array([[-3.0] * d, [3.0] * d, [3.0, -3.0] + [0.0] * (d - 2)])
    f = sum((1 + i) * np.exp(-((X - c) ** 2).sum(1) / 2) for i, c in enumerate(centres))
    return X, f + rng.normal(0, 0.01, n)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    X, f = bumps()
    ms = MorseSmale(k=12).fit(X, f)
    path = tmp_path_factory.mktemp("cube") / "cube.duckdb"
    write_cube(path, X, f, ms, bins=32, hist3d=True, bins3d=8, dims=["a", "b", "c"],
               f_name="y")
    cube = Cube(path)
    sql = Cube(path, memory_budget=0)  # the same file answered by SQL over the leaf tables
    assert cube.in_memory and not sql.in_memory
    yield X, f, ms, cube, sql
    cube.close()
    sql.close()


@pytest.fixture(params=["memory", "sql"])
def mode(request, fitted):
    """(X, f, ms, cube, in_memory): every histogram test runs on both query paths."""
    X, f, ms, cube, sql = fitted
    return X, f, ms, (cube if request.param == "memory" else sql), request.param == "memory"


def edges_of(v, bins):
    return np.linspace(v.min(), v.max(), bins + 1)


def test_whole_data_histograms_equal_numpy(mode):
    X, f, ms, cube, _ = mode
    data = np.column_stack([X, f])
    assert cube.names == ["a", "b", "c", "y"] and cube.bins == 32
    for a in range(4):
        ref, _ = np.histogram(data[:, a], bins=32, range=(data[:, a].min(), data[:, a].max()))
        assert np.array_equal(cube.hist1d(a), ref)
        for b in range(4):
            if a == b:
                continue
            ref2, _, _ = np.histogram2d(data[:, a], data[:, b],
                                        bins=[edges_of(data[:, a], 32), edges_of(data[:, b], 32)])
            assert np.array_equal(cube.hist2d(a, b), ref2.astype(np.int64))
    assert np.array_equal(cube.hist1d("y"), cube.hist1d(3))
    assert cube.hist2d(0, 1, bins=8).sum() == X.shape[0]


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3])
def test_segments_are_sums_of_leaves_and_match_the_segmentation(mode, p):
    X, f, ms, cube, _ = mode
    data = np.column_stack([X, f])
    segs = cube.segments(p)
    up, down = ms.regions(p, "max"), ms.regions(p, "min")
    stored = cube._sql("SELECT i, leaf FROM samples ORDER BY i")
    assert np.array_equal(stored["i"], np.arange(len(f)))
    sample_leaf = stored["leaf"]
    assert len(segs) == len(np.unique(up * len(f) + down))
    top = cube.segments(p, largest=3)
    ref = segs.sort_values(["count", "segment"], ascending=[False, True]).head(3)
    pd.testing.assert_frame_equal(top.reset_index(drop=True), ref.reset_index(drop=True))
    assert top.attrs["total"] == len(segs)
    with pytest.raises(InputError, match="largest"):
        cube.segments(p, largest=0)
    assert segs["count"].sum() == len(f)
    for _, s in segs.sort_values("count").tail(4).iterrows():
        members = (up == s["max"]) & (down == s["min"])
        assert members.sum() == s["count"]
        assert np.isclose(f[members].max(), s["f_max"])
        leaves = cube.select(p, segment=int(s["segment"]))
        for a in (0, 3):
            rng = (data[:, a].min(), data[:, a].max())
            ref, _ = np.histogram(data[members, a], bins=32, range=rng)
            got = cube.hist1d(a, p, leaves)
            assert np.array_equal(got, ref)
            # leaf by leaf: a few leaves of the segment against the samples stored in them
            some = leaves[:12]
            in_some = np.isin(sample_leaf, some)
            ref_some, _ = np.histogram(data[in_some, a], bins=32, range=rng)
            assert np.array_equal(sum(cube.hist1d(a, p, np.array([lf])) for lf in some),
                                  ref_some)
            assert np.array_equal(cube.hist1d(a, p, some), ref_some)
    # the ascending region of a surviving maximum
    m = int(ms.maxima(p)[0])
    reg = up == m
    got = cube.hist1d(1, p, cube.select(p, maximum=m))
    ref, _ = np.histogram(X[reg, 1], bins=32, range=(X[:, 1].min(), X[:, 1].max()))
    assert np.array_equal(got, ref)


def test_brushing_gives_conditional_histograms(mode):
    X, f, ms, cube, in_memory = mode
    data = np.column_stack([X, f])
    bins = np.column_stack([np.clip(np.digitize(data[:, a], edges_of(data[:, a], 32)) - 1, 0, 31)
                            for a in range(4)])
    lo, hi = -1.0, 2.5
    e = edges_of(X[:, 0], 32)
    b_lo, b_hi = np.searchsorted(e, lo, "right") - 1, np.searchsorted(e, hi, "right") - 1
    mask = (bins[:, 0] >= b_lo) & (bins[:, 0] <= b_hi)
    for a in (1, 2, 3):
        ref = np.bincount(bins[mask, a], minlength=32)
        assert np.array_equal(cube.hist1d(a, brush=(0, lo, hi)), ref)
    same = cube.hist1d(0, brush=("a", lo, hi))
    assert same.sum() == mask.sum() and same[:b_lo].sum() == 0
    # brushing within a segment
    leaves = cube.select(0.05, segment=0)
    seg_mask = np.isin(ms.segmentation(0.05), [0])
    ref = np.bincount(bins[mask & seg_mask, 3], minlength=32)
    assert np.array_equal(cube.hist1d(3, 0.05, leaves, brush=(0, lo, hi)), ref)
    with pytest.raises(InputError, match="lo <= hi"):
        cube.hist1d(1, brush=(0, 2.0, 1.0))
    with pytest.raises(InputError, match="unknown axis"):
        cube.hist1d("nope")
    with pytest.raises(InputError, match="axis must be"):
        cube.hist1d(4)
    # a brush on a third axis: exact at the cube's resolution from the in-memory codes ...
    c_lo, c_hi = (np.searchsorted(edges_of(X[:, 2], 32), v, "right") - 1 for v in (-2.0, 2.0))
    m32 = (bins[:, 2] >= c_lo) & (bins[:, 2] <= c_hi)
    sample_leaf = cube._sql("SELECT i, leaf FROM samples ORDER BY i")["leaf"]
    most = np.arange(len(cube.leaves) - 5, dtype=np.int32)  # > half: counted as a complement
    for sel, p, members in ((None, 0.0, np.ones(len(f), bool)),
                            (cube.select(0.05, segment=0), 0.05, ms.segmentation(0.05) == 0),
                            (cube.select(0.05, segment=1), 0.05, ms.segmentation(0.05) == 1),
                            (most, 0.0, np.isin(sample_leaf, most))):
        rows = m32 & members
        if sel is most:
            assert np.array_equal(cube.hist1d(3, 0.0, most),
                                  np.bincount(bins[members, 3], minlength=32))
        ref32 = np.zeros((32, 32), dtype=np.int64)
        np.add.at(ref32, (bins[rows, 1], bins[rows, 0]), 1)
        if in_memory:
            assert cube.brushable(1, 0, 2)
            assert np.array_equal(cube.hist2d(1, 0, p, sel, brush=(2, -2.0, 2.0)), ref32)
            assert np.array_equal(cube.hist2d(1, 0, p, sel, brush=(2, -2.0, 2.0), bins=8),
                                  ref32.reshape(8, 4, 8, 4).sum(axis=(1, 3)))
    if in_memory:
        # a brush holding most samples is counted as the whole minus its outside
        w_lo, w_hi = (np.searchsorted(edges_of(X[:, 2], 32), v, "right") - 1
                      for v in (-5.5, 5.5))
        wide = (bins[:, 2] >= w_lo) & (bins[:, 2] <= w_hi)
        assert 2 * wide.sum() > len(f)
        ref_w = np.zeros((16, 16), dtype=np.int64)
        np.add.at(ref_w, (bins[wide, 1] // 2, bins[wide, 0] // 2), 1)
        assert np.array_equal(cube.hist2d(1, 0, brush=(2, -5.5, 5.5), bins=16), ref_w)
        # pcoords: every adjacent pair brushed, equal to the joint histograms
        for (h, ok), (a, b) in zip(cube.pcoords([3, 0, 1, 2], 0.05, leaves, (2, -2.0, 2.0),
                                                bins=16),
                                   [(3, 0), (0, 1), (1, 2)], strict=True):
            assert ok and np.array_equal(
                h, cube.hist2d(a, b, 0.05, leaves, brush=(2, -2.0, 2.0), bins=16))
            m = m32 & seg_mask
            ref16 = np.zeros((16, 16), dtype=np.int64)
            np.add.at(ref16, (bins[m, a] // 2, bins[m, b] // 2), 1)
            assert np.array_equal(h, ref16)
        return
    # ... and from the 3-D histograms (8 bins) in SQL mode
    e8 = [np.linspace(data[:, a].min(), data[:, a].max(), 9) for a in range(4)]
    b8 = np.column_stack([np.clip(np.digitize(data[:, a], e8[a]) - 1, 0, 7) for a in range(4)])
    c_lo, c_hi = (np.searchsorted(e8[2], v, "right") - 1 for v in (-2.0, 2.0))
    m3 = (b8[:, 2] >= c_lo) & (b8[:, 2] <= c_hi)
    ref2 = np.zeros((8, 8), dtype=np.int64)
    np.add.at(ref2, (b8[m3, 1], b8[m3, 0]), 1)
    assert np.array_equal(cube.hist2d(1, 0, brush=(2, -2.0, 2.0)), ref2)
    leaves = cube.select(0.05, segment=0)
    for (h, ok), (a, b) in zip(cube.pcoords([3, 0, 1, 2], 0.05, leaves, bins=16),
                               [(3, 0), (0, 1), (1, 2)], strict=True):
        assert not ok and np.array_equal(h, cube.hist2d(a, b, 0.05, leaves, bins=16))
        assert ok is False
    pc = cube.pcoords(bins=8, brush=(2, -2.0, 2.0))
    assert len(pc) == 3 and all(ok for _, ok in pc)


def test_spine_and_merges(fitted):
    X, f, ms, cube, _ = fitted
    for p in (0.0, 0.1, 0.5):
        sp = cube.spine(p)
        nodes = sp["nodes"]
        assert set(nodes.loc[nodes.kind == "max", "extremum"]) == set(ms.maxima(p).tolist())
        assert set(nodes.loc[nodes.kind == "min", "extremum"]) == set(ms.minima(p).tolist())
        assert nodes.loc[nodes.kind == "max", "volume"].sum() == len(f)
        links = sp["links"]
        ref = ms.saddles(p, "max")
        got = links[links.kind == "max"]
        assert set(zip(got.a, got.b, strict=True)) == set(zip(ref.a, ref.b, strict=True))
    assert len(cube.spine(0.1)["nodes"].query("kind == 'max'")) == 3
    # hierarchy checkpoints (levels with 1/2, 1/4, ... of the extrema): the spine, segments
    # and selections reduced from them equal those computed from the base level
    class Fine(Cube):
        _CHECKPOINT_FACTOR, _CHECKPOINT_MIN = 2, 2

    levels = cube.levels()
    with Fine(cube.path) as fine, Cube(cube.path) as plain:
        plain._checkpoints = plain._checkpoints[:1]
        plain._checkpoint_levels = plain._checkpoint_levels[:1]
        assert len(fine._checkpoints) >= 4
        probe = np.concatenate([levels[::7], levels[-12:], fine._checkpoint_levels,
                                [0.0, 1.0]])
        for p in probe:
            a, b = fine.spine(p), plain.spine(p)
            for key in ("nodes", "links"):
                pd.testing.assert_frame_equal(a[key], b[key])
            pd.testing.assert_frame_equal(fine.segments(p), plain.segments(p))
            pd.testing.assert_frame_equal(fine.leaf_segments(p), plain.leaf_segments(p))
            assert set(a["nodes"].query("kind == 'max'").extremum) == set(ms.maxima(p).tolist())
            assert np.array_equal(fine.select(p, segment=0), plain.select(p, segment=0))
            m = int(ms.maxima(p)[0])
            assert np.array_equal(fine.select(p, maximum=m), plain.select(p, maximum=m))
            got = fine.segments(p)
            lab = ms.segmentation(p)
            assert sorted(got["count"]) == sorted(np.bincount(lab).tolist())
            # capped views: the most persistent extrema, the links among them (all of them
            # when the link cap is high; every kept extremum's best link when it is low)
            full = plain.spine(p)
            for kind in ("max", "min"):
                nd = full["nodes"][full["nodes"]["kind"] == kind]
                top = set(nd.sort_values(["persistence", "extremum"], ascending=[False, True])
                          ["extremum"][:3])
                ln = full["links"][(full["links"]["kind"] == kind) & full["links"]["a"].isin(top)
                                   & full["links"]["b"].isin(top)]
                wide = fine.spine(p, max_nodes=3, max_links=10**6)
                got_n = wide["nodes"][wide["nodes"]["kind"] == kind]
                got_l = wide["links"][wide["links"]["kind"] == kind]
                assert set(got_n["extremum"]) == top
                assert wide["nodes"].attrs["total"][kind] == len(nd)
                pd.testing.assert_frame_equal(got_l.reset_index(drop=True),
                                              ln.reset_index(drop=True))
                one = fine.spine(p, max_nodes=3, max_links=1)
                one_l = one["links"][one["links"]["kind"] == kind]
                best = set()
                for v in top:  # the first (best) link touching v
                    at = np.flatnonzero((ln["a"].to_numpy() == v) | (ln["b"].to_numpy() == v))
                    best |= {int(at[0])} if len(at) else set()
                want = sorted(best) if len(ln) > 1 else list(range(len(ln)))
                if len(want) < 1 <= len(ln):
                    want = sorted(set(want) | {0})
                pd.testing.assert_frame_equal(one_l.reset_index(drop=True),
                                              ln.iloc[want].reset_index(drop=True))
    merges = cube.merges()
    assert len(merges) == len(ms.merges_)
    assert len(cube.levels()) > 0 and cube.levels().max() <= 1.0


def test_without_3d_a_third_axis_brush_is_refused(tmp_path):
    X, f = bumps(n=600)
    ms = MorseSmale(k=8).fit(X, f)
    path = write_cube(tmp_path / "c.duckdb", X, f, ms, bins=16, store_graph=False)
    with Cube(path) as cube:  # in memory: exact, no 3-D tables needed
        assert cube.hist2d(0, 1, brush=(2, 0.0, 1.0)).sum() < len(f)
    with Cube(path, memory_budget=0) as cube:
        with pytest.raises(ConfigurationError, match="3-D"):
            cube.hist2d(0, 1, brush=(2, 0.0, 1.0))
        pc = cube.pcoords(bins=16, brush=(2, 0.0, 1.0))
        assert [ok for _, ok in pc] == [False, True, True]  # pairs (0,1), (1,2), (2,3)
    with pytest.raises(ConfigurationError, match="bins"):
        write_cube(tmp_path / "d.duckdb", X, f, ms, bins=1)
    # more than 256 bins: 2-byte codes, same answers in memory and by SQL
    wide = write_cube(tmp_path / "w.duckdb", X, f, ms, bins=300, store_graph=False)
    data = np.column_stack([X, f])
    with Cube(wide) as mem, Cube(wide, memory_budget=0) as sql:
        assert mem._codes.dtype == np.uint16
        for a in range(4):
            ref, _ = np.histogram(data[:, a], bins=300, range=(data[:, a].min(),
                                                              data[:, a].max()))
            assert np.array_equal(mem.hist1d(a), ref) and np.array_equal(sql.hist1d(a), ref)
        leaves = mem.select(0.05, segment=0)
        assert np.array_equal(mem.hist2d(0, 3, 0.05, leaves, brush=(3, 0.2, 2.0), bins=30),
                              sql.hist2d(0, 3, 0.05, leaves, brush=(3, 0.2, 2.0), bins=30))


def test_bad_cube_files_give_clear_errors(tmp_path):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(InputError, match="not found"):
        Cube(missing)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(InputError, match="junk.duckdb.*not a DuckDB database"):
        Cube(junk)
    text = tmp_path / "notes.duckdb"
    text.write_text("hello\n")
    with pytest.raises(InputError, match="not a DuckDB database"):
        Cube(text)
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE t(x INTEGER)")
    con.close()
    with pytest.raises(InputError, match="not an oncoscale topology cube: missing tables"):
        Cube(foreign)
    X, f = bumps(n=300)
    good = build(X, f, out=tmp_path / "good.duckdb", k=6, bins=8, progress=False)
    con = duckdb.connect(str(good))
    con.execute("UPDATE meta SET value = 'something.else' WHERE key = 'format'")
    con.close()
    with pytest.raises(InputError, match="format is 'something.else'"):
        Cube(good)
    con = duckdb.connect(str(good))
    con.execute("UPDATE meta SET value = 'oncoscale.topology.cube' WHERE key = 'format'")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
    con.close()
    with pytest.raises(InputError, match="good.duckdb.*version 1 is written by an older "
                                         "oncoscale; rebuild it"):
        Cube(good)
    con = duckdb.connect(str(good))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    con.close()
    with pytest.raises(InputError, match="version 99 is newer"):
        Cube(good)
    # a truncated cube
    trunc = tmp_path / "trunc.duckdb"
    good2 = build(X, f, out=tmp_path / "good2.duckdb", k=6, bins=8, progress=False)
    trunc.write_bytes(good2.read_bytes()[:5000])
    with pytest.raises(InputError, match="trunc.duckdb"):
        Cube(trunc)


def test_cli_topo_build_from_each_format(tmp_path):
    import anndata

    from oncoscale.cli import app

    X, f = bumps(n=400)
    df = pd.DataFrame(X, columns=["u", "v", "w"]).assign(score=f, label="x")
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    np.save(tmp_path / "d.npy", np.column_stack([X, f]))
    ad = anndata.AnnData(X=X.astype(np.float32), obs=pd.DataFrame({"score": f},
                                                                  index=[str(i) for i in
                                                                         range(len(f))]))
    ad.obsm["X_ae"] = X[:, :2]
    ad.write_h5ad(tmp_path / "d.h5ad")
    runner = CliRunner()
    cases = [("d.csv", ["--f", "score"], ["u", "v", "w", "score"]),
             ("d.parquet", ["--x", "u,w", "--f", "score"], ["u", "w", "score"]),
             ("d.npy", ["--x", "0:3", "--f", "3"], ["col0", "col1", "col2", "col3"]),
             ("d.h5ad", ["--x", "obsm:X_ae", "--f", "obs:score"], ["X_ae_0", "X_ae_1", "score"])]
    for name, opts, axes in cases:
        out = tmp_path / (name + ".duckdb")
        res = runner.invoke(app, ["topo", "build", str(tmp_path / name), *opts, "-o", str(out),
                                  "--k", "8", "--bins", "16", "--no-progress", "--jobs", "1"])
        assert res.exit_code == 0, res.output
        with Cube(out) as cube:
            assert cube.names == axes and cube.n == 400
            assert cube.meta["source"].endswith(name)
    res = runner.invoke(app, ["topo", "build", str(tmp_path / "d.csv"), "--f", "nope",
                              "-o", str(tmp_path / "x.duckdb"), "--no-progress"])
    assert res.exit_code == 2 and "column 'nope'" in res.output
    bad = df.copy()
    bad.loc[3, "v"] = np.nan
    bad.to_csv(tmp_path / "bad.csv", index=False)
    res = runner.invoke(app, ["topo", "build", str(tmp_path / "bad.csv"), "--f", "score",
                              "-o", str(tmp_path / "y.duckdb"), "--no-progress"])
    assert res.exit_code == 2 and "bad.csv" in res.output and "sample 3" in res.output
    assert not (tmp_path / "y.duckdb").exists()
