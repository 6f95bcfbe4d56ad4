"""read_gdc: assembling a GDC download (sample sheet + files) into an AnnData."""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import oncoscale.expression.gdc as gdc_mod
from oncoscale.datasets.gdc import SyntheticGDCProject, make_synthetic_project
from oncoscale.errors import InputError
from oncoscale.expression import (
    pair_tumour_normal,
    preprocess,
    read_gdc,
    read_sample_sheet,
    split_train_pairs,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> SyntheticGDCProject:
    return make_synthetic_project(tmp_path_factory.mktemp("gdc") / "proj", n_genes=300,
                                  n_train_tumours=24, n_pairs=6, seed=3)


@pytest.fixture()
def copy(project: SyntheticGDCProject, tmp_path: Path) -> SyntheticGDCProject:
    """A private copy of the project that a test may damage."""
    root = tmp_path / "proj"
    shutil.copytree(project.root, root)
    return make_synthetic_project(root, n_genes=300, n_train_tumours=24, n_pairs=6, seed=3)


def file_of(p: SyntheticGDCProject, k: int) -> Path:
    r = p.samples.iloc[k]
    return p.data_dir / r.file_id / r.file_name


def sheet_line(p: SyntheticGDCProject, k: int) -> int:
    return k + 2  # header is line 1; the generator writes no blank lines


def test_read_matches_truth(project: SyntheticGDCProject) -> None:
    a = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    assert a.shape == (project.n_files, project.n_genes)
    assert a.X.dtype == np.float32
    assert list(a.var_names) == list(project.genes.index)
    assert (a.var["gene_type"].to_numpy() == project.genes["gene_type"].to_numpy()).all()
    assert (a.var["gene_id_version"].to_numpy()
            == project.genes["gene_id_version"].to_numpy()).all()
    s = project.samples.set_index("file_id").loc[a.obs_names]
    for col in ("case", "sample", "project", "sample_type_code"):
        assert (a.obs[col].astype(str).to_numpy() == s[col].to_numpy()).all(), col
    assert set(a.obs["tissue"]) == {"Tumor", "Normal"}
    assert (a.obs.loc[a.obs["sample_type_code"] == "11", "sample_type"]
            == "Solid Tissue Normal").all()
    assert a.uns["oncoscale_gdc"]["gene_model"] == "GENCODE v36"
    assert a.uns["oncoscale_gdc"]["value"] == "fpkm_uq_unstranded"
    pairs = pair_tumour_normal(a)
    assert pairs.index.tolist() == project.pair_cases
    assert set(pairs["project"]) <= set(project.projects)


def test_split_train_pairs_and_preprocess(project: SyntheticGDCProject) -> None:
    a = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    train, pairs = split_train_pairs(a)
    assert sorted(train.obs["sample"]) == sorted(project.train_samples)
    assert pairs.n_obs == 2 * len(project.pair_cases)
    assert pairs.obs["label"].tolist() == [1] * 6 + [0] * 6
    assert pairs.obs["sample_type_code"].astype(str).tolist() == ["01"] * 6 + ["11"] * 6
    assert pairs.obs["participant"].tolist()[:6] == pairs.obs["participant"].tolist()[6:]
    assert set(train.obs["case"]).isdisjoint(pairs.obs["case"])
    t, p = preprocess(train, pairs)
    assert list(t.var_names) == list(p.var_names)
    assert set(t.var["gene_type"]) == {"protein_coding"}
    assert p.X.min() >= 0 and p.X.max() <= 1


def test_normalised_values_consistent_with_counts(project: SyntheticGDCProject) -> None:
    counts = read_gdc(project.root, value="unstranded", progress=False, n_jobs=1)
    uq = read_gdc(project.root, value="fpkm_uq_unstranded", progress=False, n_jobs=1)
    tpm = read_gdc(project.root, value="tpm_unstranded", progress=False, n_jobs=1)
    c = counts.X.astype(np.float64)
    assert (c == np.round(c)).all() and (c >= 0).all()
    length = project.genes["length"].to_numpy(np.float64)
    pc = ((project.genes["gene_type"] == "protein_coding")
          & ~project.genes.index.str.endswith("_PAR_Y")).to_numpy()
    rm75 = np.maximum(np.quantile(c[:, pc], 0.75, axis=1), 1.0)
    expect_uq = c * 1e9 / (rm75[:, None] * length[None, :])
    np.testing.assert_allclose(uq.X, expect_uq, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tpm.X.sum(axis=1), 1e6, rtol=1e-4)


def test_process_pool_matches_serial(project: SyntheticGDCProject) -> None:
    a = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    b = read_gdc(project.sample_sheet, progress=False, n_jobs=2)
    np.testing.assert_array_equal(a.X, b.X)
    assert (a.obs_names == b.obs_names).all()


def test_broken_pool_falls_back_to_serial(project: SyntheticGDCProject,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def __init__(self, *a, **k) -> None:
            self.n = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def submit(self, fn, *args):
            raise BrokenProcessPool("workers could not start")

    serial = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    monkeypatch.setattr(gdc_mod, "ProcessPoolExecutor", Broken)
    with pytest.warns(RuntimeWarning, match="reading the remaining files in this process"):
        a = read_gdc(project.sample_sheet, progress=False, n_jobs=2)
    np.testing.assert_array_equal(a.X, serial.X)


def test_missing_file_strict_and_lenient(copy: SyntheticGDCProject) -> None:
    victim = file_of(copy, 4)
    victim.unlink()
    with pytest.raises(InputError) as ei:
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    assert f"{copy.sample_sheet}, line {sheet_line(copy, 4)}: " in str(ei.value)
    assert victim.name in str(ei.value) and "not found" in str(ei.value)
    with pytest.warns(UserWarning, match="not found"):
        a = read_gdc(copy.sample_sheet, progress=False, n_jobs=1, lenient=True)
    assert a.n_obs == copy.n_files - 1
    assert len(a.uns["oncoscale_gdc"]["skipped"]) == 1


def _rewrite(path: Path, fn) -> None:
    lines = path.read_text().split("\n")
    path.write_text("\n".join(fn(lines)))


def test_gene_set_mismatch(copy: SyntheticGDCProject, project: SyntheticGDCProject) -> None:
    victim = file_of(copy, 7)
    _rewrite(victim, lambda ls: ls[:10] + ls[11:])  # drop one gene row (line 11)
    dropped = copy.genes.index[10 - 6]
    with pytest.raises(InputError, match="gene set differs") as ei:
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    assert str(victim) in str(ei.value) and dropped in str(ei.value)
    with pytest.warns(UserWarning, match="gene set differs"):
        a = read_gdc(copy.sample_sheet, progress=False, n_jobs=1, lenient=True)
    assert a.n_obs == copy.n_files and a.n_vars == copy.n_genes - 1
    assert dropped not in a.var_names
    ref = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    np.testing.assert_array_equal(a.X, ref[:, a.var_names].X)


def test_gene_order_differs_is_realigned(copy: SyntheticGDCProject) -> None:
    victim = file_of(copy, 5)
    before = read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    _rewrite(victim, lambda ls: ls[:6] + ls[6:-1][::-1] + [""])
    after = read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    np.testing.assert_array_equal(before.X, after.X)


@pytest.mark.parametrize(("k", "n_jobs"), [(0, 1), (9, 1), (20, 2)])
def test_bad_value_names_file_and_line(copy: SyntheticGDCProject, k: int, n_jobs: int) -> None:
    victim = file_of(copy, k)

    def poison(ls: list[str]) -> list[str]:
        f = ls[20].split("\t")
        f[-1] = "nan"
        ls[20] = "\t".join(f)
        return ls

    _rewrite(victim, poison)
    with pytest.raises(InputError) as ei:
        read_gdc(copy.sample_sheet, progress=False, n_jobs=n_jobs)
    assert f"{victim}, line 21: " in str(ei.value) and "not finite" in str(ei.value)
    assert ei.value.path == str(victim) and ei.value.line == 21
    with pytest.warns(UserWarning):
        a = read_gdc(copy.sample_sheet, progress=False, n_jobs=n_jobs, lenient=True)
    assert a.n_obs == copy.n_files - 1
    assert victim.name not in set(a.obs["file"])


def test_truncated_and_corrupt_files(copy: SyntheticGDCProject) -> None:
    victim = file_of(copy, 3)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as ei:
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    assert str(victim) in str(ei.value) and ", line " in str(ei.value)
    victim.write_bytes(gzip.compress(data)[:200])
    with pytest.raises(InputError, match="gzip") as ei:
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    assert str(victim) in str(ei.value)


def test_sheet_problems(copy: SyntheticGDCProject) -> None:
    text = copy.sample_sheet.read_text().split("\n")
    good = list(text)
    f = text[3].split("\t")
    f[6] = f[6][:-4] + "-X1A"  # malformed sample barcode on line 4
    text[3] = "\t".join(f)
    copy.sample_sheet.write_text("\n".join(text))
    with pytest.raises(InputError, match=r"line 4: malformed TCGA barcode"):
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    with pytest.warns(UserWarning, match="malformed TCGA barcode"):
        a = read_gdc(copy.sample_sheet, progress=False, n_jobs=1, lenient=True)
    assert a.n_obs == copy.n_files - 1
    # a file linked to two samples
    f = good[5].split("\t")
    f[6] = f"{f[6]}, {f[5]}-10A"
    good[5] = "\t".join(f)
    copy.sample_sheet.write_text("\n".join(good))
    with pytest.raises(InputError, match=r"line 6: .*linked to 2 samples"):
        read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    with pytest.warns(UserWarning, match="kept the first sample"):
        a = read_gdc(copy.sample_sheet, progress=False, n_jobs=1, lenient=True)
    assert a.n_obs == copy.n_files


def test_folder_input_and_flat_layout(copy: SyntheticGDCProject, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(copy.n_files):
        shutil.copy(file_of(copy, k), flat)
    a = read_gdc(copy.root, flat, progress=False, n_jobs=1)
    b = read_gdc(copy.root, progress=False, n_jobs=1)
    np.testing.assert_array_equal(a.X, b.X)
    shutil.copy(copy.sample_sheet, copy.root / "gdc_sample_sheet.other.tsv")
    with pytest.raises(InputError, match="2 sample sheets"):
        read_gdc(copy.root, progress=False)
    with pytest.raises(InputError, match="no GDC sample sheet"):
        read_gdc(flat, progress=False)


def test_other_data_types_and_versions_ignored(copy: SyntheticGDCProject) -> None:
    before = read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    with open(copy.sample_sheet, "a") as fh:  # a clinical file in the same cart
        fh.write("c0ffee00-0000-4000-8000-000000000000\tnationwidechildrens.org_clinical.xml"
                 "\tClinical\tClinical Supplement\tTCGA-BRCA\tTCGA-A7-A0CE\tTCGA-A7-A0CE-01A"
                 "\tTumor\tPrimary\tSolid Tissue\tUnknown\n")
    # another GENCODE release: same genes, other versions -> still the same gene set
    _rewrite(file_of(copy, 1), lambda ls: ls[:6] + [
        ln.replace(".", ".9", 1) if ln.startswith("ENSG") else ln for ln in ls[6:]])
    after = read_gdc(copy.sample_sheet, progress=False, n_jobs=1)
    np.testing.assert_array_equal(before.X, after.X)
    assert after.uns["oncoscale_gdc"]["n_other_data_types"] == 1


def test_cache_reuse_and_invalidation(copy: SyntheticGDCProject, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "cohort.h5ad"
    a = read_gdc(copy.sample_sheet, cache=cache, progress=False, n_jobs=1)
    assert cache.is_file()

    def boom(*args, **kwargs):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(gdc_mod, "parse_expression_file", boom)
    b = read_gdc(copy.sample_sheet, cache=cache, progress=False, n_jobs=1)
    np.testing.assert_array_equal(a.X, b.X)
    assert (a.obs_names == b.obs_names).all() and (a.var_names == b.var_names).all()
    assert b.uns["oncoscale_gdc"]["cache_key"] == a.uns["oncoscale_gdc"]["cache_key"]
    # another value column, or a touched file, invalidates the cache
    with pytest.raises(AssertionError, match="parsed although"):
        read_gdc(copy.sample_sheet, cache=cache, value="tpm_unstranded", progress=False)
    victim = file_of(copy, 2)
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="parsed although"):
        read_gdc(copy.sample_sheet, cache=cache, progress=False, n_jobs=1)
    monkeypatch.undo()
    c = read_gdc(copy.sample_sheet, cache=cache, progress=False, n_jobs=1)
    assert c.uns["oncoscale_gdc"]["cache_key"] != a.uns["oncoscale_gdc"]["cache_key"]


def test_cache_write_is_atomic(copy: SyntheticGDCProject, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c" / "cohort.h5ad"

    def half_write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF\r\n half")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_write)
    with pytest.raises(OSError, match="disk full"):
        read_gdc(copy.sample_sheet, cache=cache, progress=False, n_jobs=1)
    assert list(cache.parent.iterdir()) == []


def test_legacy_htseq_download(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    genes = [f"ENSG{i:011d}.{i % 7 + 1}" for i in range(1, 51)]
    rows, expect = [], []
    for k, code in enumerate(["01", "11", "01"]):
        fid = f"0000000{k}-aaaa-4bbb-8ccc-dddddddddddd"
        name = f"{fid[:8]}.htseq.counts.gz"
        counts = rng.integers(0, 1000, len(genes))
        expect.append(counts)
        text = "".join(f"{g}\t{c}\n" for g, c in zip(genes, counts, strict=True))
        text += "__no_feature\t10\n__ambiguous\t3\n__too_low_aQual\t0\n"
        (tmp_path / fid).mkdir()
        (tmp_path / fid / name).write_bytes(gzip.compress(text.encode()))
        case = "TCGA-05-4244" if k < 2 else "TCGA-05-4245"
        rows.append(f"{fid}\t{name}\tTranscriptome Profiling\tGene Expression Quantification"
                    f"\tTCGA-LUAD\t{case}\t{case}-{code}A\t"
                    + ("Primary Tumor" if code == "01" else "Solid Tissue Normal"))
    sheet = tmp_path / "gdc_sample_sheet.2018-01-01.tsv"
    sheet.write_text("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\t"
                     "Sample ID\tSample Type\n" + "\n".join(rows) + "\n")
    a = read_gdc(tmp_path, progress=False, n_jobs=1)
    assert a.uns["oncoscale_gdc"]["format"] == "htseq"
    assert a.var_names[0] == "ENSG00000000001" and a.n_vars == 50
    np.testing.assert_array_equal(a.X, np.array(expect, dtype=np.float32))
    assert a.obs["tissue"].tolist() == ["Tumor", "Normal", "Tumor"]
    assert pair_tumour_normal(a).index.tolist() == ["TCGA-05-4244"]
    assert read_sample_sheet(sheet).attrs["layout"] == "old"


def test_h5ad_round_trip(project: SyntheticGDCProject, tmp_path: Path) -> None:
    a = read_gdc(project.sample_sheet, progress=False, n_jobs=1)
    a.write_h5ad(tmp_path / "x.h5ad")
    b = ad.read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_gdc(project.sample_sheet, progress=False, n_jobs=1)  # strict: no warnings
