"""TCGA barcodes, GDC sample sheets (both layouts) and tumour/normal pairing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oncoscale.errors import InputError
from oncoscale.expression import pair_tumour_normal, parse_barcode, read_sample_sheet
from oncoscale.expression.barcodes import sample_category

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_parse_full_barcode() -> None:
    b = parse_barcode("TCGA-A7-A0CE-01A-11R-A00Z-07")
    assert (b.tss, b.case, b.sample, b.sample_type_code, b.vial) == (
        "A7", "TCGA-A7-A0CE", "TCGA-A7-A0CE-01A", "01", "A")
    assert (b.portion, b.analyte, b.plate, b.center) == ("11", "R", "A00Z", "07")
    assert b.sample_type == "Primary Tumor" and b.category == "tumour"
    n = parse_barcode("TCGA-A7-A0CE-11B")
    assert n.category == "normal" and n.sample_type == "Solid Tissue Normal" and n.vial == "B"
    p = parse_barcode("TCGA-A7-A0CE")
    assert p.sample is None and p.category is None and p.case == "TCGA-A7-A0CE"


@pytest.mark.parametrize("bad", ["TCGA-A7-A0C", "TCGA_A7_A0CE-01A", "tcga-a7-a0ce-01a",
                                 "TCGA-A7-A0CE-1A", "TCGA-A7-A0CE-00A", "TCGA-A7-A0CE-01A-",
                                 "TARGET-20-PADZCG-04A", ""])
def test_malformed_barcodes(bad: str) -> None:
    with pytest.raises(InputError, match="sheet.tsv, line 7: .*TCGA barcode"):
        parse_barcode(bad, path="sheet.tsv", line=7)


def test_require_sample() -> None:
    with pytest.raises(InputError, match="participant, not a sample"):
        parse_barcode("TCGA-A7-A0CE", require_sample=True)


@pytest.mark.parametrize(("code", "cat"), [(1, "tumour"), (9, "tumour"), (10, "normal"),
                                           (11, "normal"), (19, "normal"), (20, "control"),
                                           (29, "control"), (50, "other")])
def test_sample_category(code: int, cat: str) -> None:
    assert sample_category(code) == cat


@settings(max_examples=200, deadline=None)
@given(tss=st.text(ALNUM, min_size=2, max_size=2), part=st.text(ALNUM, min_size=4, max_size=4),
       code=st.integers(1, 99), vial=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
       portion=st.integers(0, 99), analyte=st.sampled_from("DGHRTWX"),
       plate=st.text(ALNUM, min_size=4, max_size=4), center=st.integers(0, 99),
       depth=st.integers(0, 4))
def test_barcode_round_trip(tss, part, code, vial, portion, analyte, plate, center,
                            depth) -> None:
    fields = [f"TCGA-{tss}-{part}", f"{code:02d}{vial}", f"{portion:02d}{analyte}", plate,
              f"{center:02d}"][: depth + 1]
    text = "-".join(fields)
    b = parse_barcode(text)
    assert b.barcode == text and b.case == f"TCGA-{tss}-{part}" == text[:12]
    if depth >= 1:
        assert b.sample_type_code == f"{code:02d}" and b.vial == vial
        assert b.sample == text[:16]
        assert b.category == sample_category(code)
    if depth >= 4:
        assert b.plate == plate and b.center == f"{center:02d}"


NEW_HEADER = ("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\t"
              "Tissue Type\tTumor Descriptor\tSpecimen Type\tPreservation Method")
OLD_HEADER = ("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\t"
              "Sample Type")
TP, GE = "Transcriptome Profiling", "Gene Expression Quantification"


def sheet(tmp_path: Path, header: str, rows: list[str], name: str = "sheet.tsv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_new_layout(tmp_path: Path) -> None:
    p = sheet(tmp_path, NEW_HEADER, [
        f"id1\tf1.tsv\t{TP}\t{GE}\tTCGA-BRCA\tTCGA-A7-A0CE\tTCGA-A7-A0CE-01A\tTumor\tPrimary\t"
        "Solid Tissue\tOCT",
        f"id2\tf2.tsv\t{TP}\t{GE}\tTCGA-BRCA\tTCGA-A7-A0CE\tTCGA-A7-A0CE-11A\tNormal\t"
        "Not Applicable\tSolid Tissue\tUnknown",
        "",
        "id3\tf3.maf\tSimple Nucleotide Variation\tMasked Somatic Mutation\tTCGA-BRCA\t"
        "TCGA-A7-A0CE, TCGA-A7-A0CE\tTCGA-A7-A0CE-01A, TCGA-A7-A0CE-10A\tTumor, Normal\t"
        "Primary, Not Applicable\tSolid Tissue, Peripheral Blood Components NOS\tOCT, Unknown",
    ])
    df = read_sample_sheet(p)
    assert df.attrs["layout"] == "new"
    assert df["file_id"].tolist() == ["id1", "id2", "id3"]
    assert df["line"].tolist() == [2, 3, 5]
    assert df["sample_type"].tolist() == ["Primary Tumor", "Solid Tissue Normal", "Primary Tumor"]
    assert df["tissue"].tolist() == ["Tumor", "Normal", "Tumor"]
    assert df.loc[2, "samples"] == ("TCGA-A7-A0CE-01A", "TCGA-A7-A0CE-10A")
    assert df.loc[2, "n_samples"] == 2 and df.loc[2, "case"] == "TCGA-A7-A0CE"
    assert df.loc[2, "specimen_type"] == "Solid Tissue"
    assert df.loc[0, "preservation_method"] == "OCT"
    assert df["project"].tolist() == ["TCGA-BRCA"] * 3


def test_old_layout(tmp_path: Path) -> None:
    p = sheet(tmp_path, OLD_HEADER, [
        f"id1\tf1.htseq.counts.gz\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-01A\t"
        "Primary Tumor",
        f"id2\tf2.htseq.counts.gz\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-11A\t"
        "Solid Tissue Normal",
    ])
    df = read_sample_sheet(p)
    assert df.attrs["layout"] == "old"
    assert df["tissue"].tolist() == ["Tumor", "Normal"]
    assert df["category"].tolist() == ["tumour", "normal"]
    assert df["sample_type_code"].tolist() == ["01", "11"]
    assert (df["tumor_descriptor"] == "").all()


@pytest.mark.parametrize(("row", "line", "frag"), [
    (f"id2\tf2\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-424-11A\tSolid Tissue Normal",
     3, "malformed TCGA barcode 'TCGA-05-424-11A'"),
    (f"id2\tf2\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4245\tTCGA-05-4244-11A\tSolid Tissue Normal",
     3, "case id 'TCGA-05-4245' is not the participant"),
    (f"id1\tf1\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-11A\tSolid Tissue Normal",
     3, "listed twice (first at line 2)"),
    (f"id2\t\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-11A\tx", 3, "empty 'File Name'"),
    (f"id2\tf2\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\t\tx", 3, "empty 'Sample ID'"),
    (f"id2\tf2\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-11A\tx\textra", 3,
     "expected 8 tab-separated fields, found 9"),
])
def test_sheet_errors_name_line(tmp_path: Path, row: str, line: int, frag: str) -> None:
    good = f"id1\tf1\t{TP}\t{GE}\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-01A\tPrimary Tumor"
    p = sheet(tmp_path, OLD_HEADER, [good, row])
    with pytest.raises(InputError) as ei:
        read_sample_sheet(p)
    assert f"{p}, line {line}: " in str(ei.value) and frag in str(ei.value), str(ei.value)
    lenient = read_sample_sheet(p, lenient=True)
    assert lenient["error"].isna().tolist() == [True, False]
    assert frag in lenient.loc[1, "error"]


def test_sheet_missing_columns(tmp_path: Path) -> None:
    p = sheet(tmp_path, "File ID\tFile Name\tProject ID", ["a\tb\tc"])
    with pytest.raises(InputError, match=r"line 1: not a GDC sample sheet: missing column"):
        read_sample_sheet(p)
    with pytest.raises(InputError, match="does not exist"):
        read_sample_sheet(tmp_path / "none.tsv")


def obs(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"sample": [r[1] for r in rows], "project": [r[2] for r in rows]},
                        index=[r[0] for r in rows])


def test_pairing_logic() -> None:
    o = obs([
        ("f1", "TCGA-AA-0001-01A", "TCGA-COAD"), ("f2", "TCGA-AA-0001-11A", "TCGA-COAD"),
        ("f3", "TCGA-AA-0002-01A", "TCGA-COAD"),                       # no normal
        ("f4", "TCGA-AA-0003-11A", "TCGA-COAD"),                       # no tumour
        ("f5", "TCGA-AA-0004-01B", "TCGA-COAD"), ("f6", "TCGA-AA-0004-01A", "TCGA-COAD"),
        ("f7", "TCGA-AA-0004-11A", "TCGA-COAD"), ("f8", "TCGA-AA-0004-06A", "TCGA-COAD"),
        ("f9", "TCGA-AA-0005-02A", "TCGA-COAD"), ("f10", "TCGA-AA-0005-11A", "TCGA-COAD"),
        ("f11", "TCGA-AA-0006-10A", "TCGA-COAD"), ("f12", "TCGA-AA-0006-01A", "TCGA-COAD"),
    ])
    p = pair_tumour_normal(o)
    assert p.index.tolist() == ["TCGA-AA-0001", "TCGA-AA-0004"]
    assert p.loc["TCGA-AA-0001", ["tumour", "normal"]].tolist() == ["f1", "f2"]
    assert p.loc["TCGA-AA-0004", "tumour"] == "f6"  # vial A before vial B
    assert p.loc["TCGA-AA-0004", "n_tumour"] == 2
    assert p.loc["TCGA-AA-0004", "tumour_sample"] == "TCGA-AA-0004-01A"
    assert (p["project"] == "TCGA-COAD").all()
    # iterable of barcodes works too; no pairs -> empty frame with the columns
    assert pair_tumour_normal(["TCGA-AA-0001-01A", "TCGA-AA-0001-11A"]).shape[0] == 1
    empty = pair_tumour_normal(["TCGA-AA-0001-01A"])
    assert empty.empty and "tumour" in empty.columns
    with pytest.raises(InputError, match="no 'sample' column"):
        pair_tumour_normal(pd.DataFrame({"x": [1]}))
