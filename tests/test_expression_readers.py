"""Single-file readers: GDC STAR-Counts and legacy HTSeq, well-formed and malformed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncoscale.errors import InputError
from oncoscale.expression import (
    STAR_VALUE_COLUMNS,
    read_htseq,
    read_star_counts,
    sniff_format,
    strip_version,
)

HEADER = ("gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t"
          "tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded")
SUMMARY = [
    "N_unmapped\t\t\t2375432\t2375432\t2375432\t\t\t",
    "N_multimapping\t\t\t4537286\t4537286\t4537286\t\t\t",
    "N_noFeature\t\t\t2378720\t30364005\t30410606\t\t\t",
    "N_ambiguous\t\t\t3541316\t1233400\t1233622\t\t\t",
]
GENES = [
    "ENSG00000000003.15\tTSPAN6\tprotein_coding\t2654\t1331\t1323\t28.3215\t9.0133\t9.4426",
    "ENSG00000000005.6\tTNMD\tprotein_coding\t4\t2\t2\t0.1272\t0.0405\t0.0424",
    "ENSG00000000419.13\tDPM1\tprotein_coding\t1638\t820\t818\t52.0731\t16.5712\t17.3612",
    "ENSG00000002586.20_PAR_Y\tCD99\tprotein_coding\t0\t0\t0\t0\t0\t0",
    "ENSG00000002586.20\tCD99\tprotein_coding\t3120\t1560\t1560\t96.7\t30.77\t32.24",
    "ENSG00000225972.1\tMTND1P23\tunprocessed_pseudogene\t0\t0\t0\t0\t0\t0",
]


def star_text(genes: list[str] = GENES, *, comment: bool = True) -> str:
    lines = (["# gene-model: GENCODE v36"] if comment else []) + [HEADER, *SUMMARY, *genes]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_star_reads_every_value_column(tmp_path: Path) -> None:
    p = write(tmp_path / "a.rna_seq.augmented_star_gene_counts.tsv", star_text())
    df = read_star_counts(p)
    assert list(df.index) == ["ENSG00000000003", "ENSG00000000005", "ENSG00000000419",
                              "ENSG00000002586_PAR_Y", "ENSG00000002586", "ENSG00000225972"]
    assert df["value"].dtype == np.float32
    assert df.loc["ENSG00000000003", "gene_name"] == "TSPAN6"
    assert df.loc["ENSG00000225972", "gene_type"] == "unprocessed_pseudogene"
    assert df.loc["ENSG00000000003", "gene_id_version"] == "ENSG00000000003.15"
    np.testing.assert_allclose(df["value"].to_numpy()[:3], [9.4426, 0.0424, 17.3612], rtol=1e-6)
    assert df.attrs["gene_model"] == "GENCODE v36"
    cols = {c: i for i, c in enumerate(HEADER.split("\t"))}
    for value in STAR_VALUE_COLUMNS:
        d = read_star_counts(p, value=value)
        expect = [float(g.split("\t")[cols[value]]) for g in GENES]
        np.testing.assert_allclose(d["value"].to_numpy(), expect, rtol=1e-6)
    counts = read_star_counts(p, value="unstranded")
    assert counts.attrs["summary"]["N_noFeature"] == 2378720
    assert set(counts.attrs["summary"]) == {"N_unmapped", "N_multimapping", "N_noFeature",
                                            "N_ambiguous"}


def test_star_gzip_and_no_comment(tmp_path: Path) -> None:
    p = write(tmp_path / "a.tsv.gz", star_text(comment=False), gz=True)
    df = read_star_counts(p, "unstranded")
    assert df.shape[0] == len(GENES)
    assert df.attrs["gene_model"] is None
    assert sniff_format(p) == "star"


def _replace(i: int, col: int, new: str) -> list[str]:
    g = [row.split("\t") for row in GENES]
    g[i][col] = new
    return ["\t".join(r) for r in g]


# (description, text, expected line, expected message fragment)
MALFORMED = [
    ("non-numeric", lambda: star_text(_replace(1, 8, "abc")), 8, "not a number"),
    ("negative", lambda: star_text(_replace(2, 8, "-1.5")), 9, "negative value"),
    ("nan", lambda: star_text(_replace(0, 8, "NaN")), 7, "not finite"),
    ("missing", lambda: star_text(_replace(0, 8, "")), 7, "missing value"),
    ("too few columns", lambda: star_text([*GENES[:2], "ENSG00000000999.1\tX\tprotein_coding\t1",
                                           *GENES[2:]]), 9, "expected 9"),
    ("duplicate id", lambda: star_text([*GENES, GENES[1].replace(".6\t", ".7\t")]), 13,
     "duplicate gene id 'ENSG00000000005'"),
    ("truncated", lambda: star_text().rstrip("\n")[:-25], 12, "truncated"),
    ("summary after genes", lambda: star_text([*GENES, SUMMARY[0]]), 13, "summary row"),
]


@pytest.mark.parametrize(("name", "make", "line", "frag"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_star_malformed_names_file_and_line(tmp_path: Path, name: str, make, line: int,
                                            frag: str) -> None:
    p = write(tmp_path / "bad.tsv", make())
    with pytest.raises(InputError) as ei:
        read_star_counts(p)
    msg = str(ei.value)
    assert str(p) in msg and f"line {line}:" in msg and frag in msg, msg
    assert ei.value.path == str(p) and ei.value.line == line


def test_star_header_problems(tmp_path: Path) -> None:
    p = write(tmp_path / "h.tsv", star_text().replace("fpkm_uq_unstranded", "fpkm_uq"))
    with pytest.raises(InputError, match=r"line 2: value column 'fpkm_uq_unstranded' not in"):
        read_star_counts(p)
    p = write(tmp_path / "h2.tsv", "# gene-model: GENCODE v36\nfoo\tbar\n")
    with pytest.raises(InputError, match="not a STAR-Counts file"):
        read_star_counts(p)
    p = write(tmp_path / "empty.tsv", "")
    with pytest.raises(InputError, match="empty"):
        read_star_counts(p)
    p = write(tmp_path / "nogenes.tsv", "\n".join(["# gene-model: x", HEADER, *SUMMARY]) + "\n")
    with pytest.raises(InputError, match="no gene rows"):
        read_star_counts(p)
    with pytest.raises(InputError, match="does not exist"):
        read_star_counts(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="unknown value column"):
        read_star_counts(p, value="counts")
    with pytest.raises(InputError, match="truncated gzip"):
        read_star_counts(_truncated_gz(tmp_path))


def _truncated_gz(tmp_path: Path) -> Path:
    data = gzip.compress((star_text() * 50).encode())
    p = tmp_path / "trunc.tsv.gz"
    p.write_bytes(data[: len(data) // 2])
    return p


HTSEQ = ("ENSG00000000003.13\t4035\nENSG00000000005.5\t0\nENSG00000000419.11\t1871\n"
         "__no_feature\t2895523\n__ambiguous\t1236541\n__too_low_aQual\t0\n"
         "__not_aligned\t0\n__alignment_not_unique\t5436011\n")


@pytest.mark.parametrize("gz", [False, True])
def test_htseq_reads_and_drops_summary_rows(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / ("x.htseq.counts" + (".gz" if gz else "")), HTSEQ, gz=gz)
    df = read_htseq(p)
    assert list(df.index) == ["ENSG00000000003", "ENSG00000000005", "ENSG00000000419"]
    np.testing.assert_array_equal(df["value"].to_numpy(), np.array([4035, 0, 1871], np.float32))
    assert df.attrs["summary"]["__alignment_not_unique"] == 5436011
    assert sniff_format(p) == "htseq"


def test_htseq_fpkm_uq_floats(tmp_path: Path) -> None:
    p = write(tmp_path / "x.FPKM-UQ.txt.gz", "ENSG1.2\t183145.71\nENSG2.1\t0.0\n", gz=True)
    np.testing.assert_allclose(read_htseq(p)["value"], [183145.71, 0.0], rtol=1e-6)


@pytest.mark.parametrize(("text", "line", "frag"), [
    ("ENSG1.1\t5\nENSG2.1\tfive\n", 2, "not a number"),
    ("ENSG1.1\t5\nENSG2.1\t5\t6\n", 2, "expected 2"),
    ("ENSG1.1\t5\nENSG2.1\t-5\n", 2, "negative"),
    ("ENSG1.1\t5\nENSG1.2\t5\n", 2, "duplicate gene id 'ENSG1'"),
    ("ENSG1.1\t5\nENSG2.1\t7\nENSG3", 3, "truncated"),
    ("gene\tcount\nENSG1.1\t5\n", 1, "not a number"),
])
def test_htseq_malformed(tmp_path: Path, text: str, line: int, frag: str) -> None:
    p = write(tmp_path / "bad.htseq.counts", text)
    with pytest.raises(InputError) as ei:
        read_htseq(p)
    assert f"{p}, line {line}:" in str(ei.value) and frag in str(ei.value), str(ei.value)


def test_strip_version_keeps_par_y() -> None:
    out = strip_version(["ENSG00000002586.20_PAR_Y", "ENSG00000000003.15", "ENSG1"])
    assert list(out) == ["ENSG00000002586_PAR_Y", "ENSG00000000003", "ENSG1"]


gene_rows = st.lists(
    st.tuples(st.integers(0, 10**9), st.integers(1, 99), st.integers(0, 10**7),
              st.floats(0, 1e7, allow_nan=False)),
    min_size=1, max_size=40, unique_by=lambda t: t[0])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=gene_rows, gz=st.booleans())
def test_star_round_trip_property(tmp_path: Path, rows, gz: bool) -> None:
    lines = [f"ENSG{g:011d}.{v}\tG{g}\tlncRNA\t{c}\t{c // 2}\t{c - c // 2}\t{x:.4f}\t{x:.4f}\t"
             f"{x:.4f}" for g, v, c, x in rows]
    p = write(tmp_path / "prop.tsv", star_text(lines), gz=gz)
    counts = read_star_counts(p, "unstranded")
    uq = read_star_counts(p)
    assert list(counts.index) == [f"ENSG{g:011d}" for g, *_ in rows]
    np.testing.assert_array_equal(counts["value"].to_numpy(),
                                  np.array([c for _, _, c, _ in rows], dtype=np.float32))
    np.testing.assert_allclose(uq["value"].to_numpy(),
                               np.array([round(x, 4) for *_, x in rows], dtype=np.float32),
                               rtol=1e-6, atol=1e-4)
