"""The synthetic GDC project generator: determinism, file formats, truth, round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oncoscale.datasets.gdc import make_synthetic_project
from oncoscale.errors import ConfigurationError
from oncoscale.expression import (
    pair_tumour_normal,
    read_gdc,
    read_sample_sheet,
    read_star_counts,
)


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_whatever_n_jobs(tmp_path: Path) -> None:
    kw = dict(n_genes=200, n_train_tumours=12, n_pairs=4, seed=11)
    a = make_synthetic_project(tmp_path / "a", **kw)
    b = make_synthetic_project(tmp_path / "b", n_jobs=2, **kw)
    c = make_synthetic_project(tmp_path / "c", **{**kw, "seed": 12})
    da, db, dc = digest_tree(a.root), digest_tree(b.root), digest_tree(c.root)
    assert da == db
    assert len(da) == a.n_files + 2  # files + sample sheet + manifest
    assert set(da.values()).isdisjoint(v for k, v in dc.items() if k.endswith(".tsv"))
    assert a.tumour_program_genes == b.tumour_program_genes


def test_layout_and_truth(tmp_path: Path) -> None:
    p = make_synthetic_project(tmp_path / "p", n_genes=3000, n_train_tumours=30, n_pairs=20,
                               projects=("TCGA-COAD", "TCGA-PRAD"), layout="old", seed=5)
    sheet = read_sample_sheet(p.sample_sheet)
    assert sheet.attrs["layout"] == "old"
    assert set(sheet["sample_type"]) == {"Primary Tumor", "Solid Tissue Normal"}
    assert p.n_files == 30 + 2 * 20 == len(sheet)
    assert set(sheet["project"]) == {"TCGA-COAD", "TCGA-PRAD"}
    # every file sits in data/<file id>/<file name>
    for r in sheet.itertuples():
        assert (p.data_dir / r.file_id / r.file_name).is_file()
        assert r.file_name.endswith(".rna_seq.augmented_star_gene_counts.tsv")
    one = read_star_counts(p.data_dir / sheet.file_id[0] / sheet.file_name[0], "unstranded")
    assert one.attrs["gene_model"] == "GENCODE v36"
    assert set(one.attrs["summary"]) == {"N_unmapped", "N_multimapping", "N_noFeature",
                                         "N_ambiguous"}
    assert one["gene_id_version"].str.match(r"^ENSG\d{11}\.\d+(_PAR_Y)?$").all()
    assert one.index.str.endswith("_PAR_Y").sum() == 2
    types = p.genes["gene_type"].value_counts()
    assert types.index[0] == "protein_coding" and {"lncRNA", "miRNA", "snRNA"} <= set(types.index)
    assert (p.genes.loc[list(p.tumour_program_genes), "gene_type"] == "protein_coding").all()
    assert len(p.tumour_program_genes) == p.genes["tumour_program"].sum() > 0
    # the program separates paired tumour from normal better than other genes, not perfectly
    a = read_gdc(p.sample_sheet, progress=False, n_jobs=1)
    pairs = pair_tumour_normal(a)
    assert pairs.index.tolist() == p.pair_cases
    x = np.log2(1 + a.X)
    t = x[a.obs_names.get_indexer(pairs["tumour"])]
    n = x[a.obs_names.get_indexer(pairs["normal"])]
    d = t - n
    tstat = np.abs(d.mean(0)) / (d.std(0, ddof=1) / np.sqrt(len(d)) + 1e-9)
    prog = a.var_names.isin(p.tumour_program_genes)
    assert np.median(tstat[prog]) > 3 * np.median(tstat[~prog & (x.mean(0) > 3)])
    assert (d[:, prog] != 0).any()


def test_reuse_and_errors(tmp_path: Path) -> None:
    kw = dict(n_genes=50, n_train_tumours=3, n_pairs=1)
    p = make_synthetic_project(tmp_path / "r", **kw)
    mtime = p.sample_sheet.stat().st_mtime_ns
    q = make_synthetic_project(tmp_path / "r", **kw)
    assert q.sample_sheet.stat().st_mtime_ns == mtime
    r = make_synthetic_project(tmp_path / "r", **{**kw, "seed": 1})
    assert r.sample_sheet.stat().st_mtime_ns != mtime
    for bad in (dict(layout="x"), dict(projects=()), dict(n_genes=3),
                dict(n_train_tumours=0, n_pairs=0), dict(tumour_program_fraction=0.0)):
        with pytest.raises(ConfigurationError):
            make_synthetic_project(tmp_path / "e", **{**kw, **bad})


@settings(max_examples=6, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n_genes=st.integers(10, 120), n_train=st.integers(0, 5), n_pairs=st.integers(0, 3),
       seed=st.integers(0, 2**31), layout=st.sampled_from(["new", "old"]),
       value=st.sampled_from(["unstranded", "tpm_unstranded", "fpkm_uq_unstranded"]))
def test_generator_reader_round_trip(tmp_path_factory, n_genes, n_train, n_pairs, seed,
                                     layout, value) -> None:
    assume(n_train + n_pairs > 0)
    out = tmp_path_factory.mktemp("rt")
    p = make_synthetic_project(out, n_genes=n_genes, n_train_tumours=n_train,
                               n_pairs=n_pairs, seed=seed, layout=layout)
    a = read_gdc(p.sample_sheet, value=value, progress=False, n_jobs=1)
    assert a.shape == (n_train + 2 * n_pairs, n_genes)
    assert list(a.var_names) == list(p.genes.index)
    assert sorted(a.obs["sample"]) == sorted(p.samples["sample"])
    assert np.isfinite(a.X).all() and (a.X >= 0).all()
    assert len(pair_tumour_normal(a)) == n_pairs
    assert (a.obs["category"] == "tumour").sum() == n_train + n_pairs
