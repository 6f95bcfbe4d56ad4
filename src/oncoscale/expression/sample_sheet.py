"""GDC sample sheets (the ``gdc_sample_sheet.<date>.tsv`` the GDC portal exports with a cart).

Two layouts exist. The older one describes each sample with one ``Sample Type`` column::

    File ID  File Name  Data Category  Data Type  Project ID  Case ID  Sample ID  Sample Type

the newer one with ``Tissue Type``, ``Tumor Descriptor``, ``Specimen Type`` (and usually
``Preservation Method``)::

    File ID  File Name  Data Category  Data Type  Project ID  Case ID  Sample ID
    Tissue Type  Tumor Descriptor  Specimen Type  Preservation Method

A file linked to several samples lists them comma separated in one cell
(``"TCGA-AB-1234-01A, TCGA-AB-1234-10A"``); the case cell then repeats the case
(``"TCGA-AB-1234, TCGA-AB-1234"``).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pandas as pd

from oncoscale.errors import InputError
from oncoscale.expression.barcodes import SAMPLE_TYPES, parse_barcode, sample_category

__all__ = ["read_sample_sheet", "SHEET_COLUMNS"]

#: GDC column title -> column name in the DataFrame returned by :func:`read_sample_sheet`.
SHEET_COLUMNS: dict[str, str] = {
    "File ID": "file_id",
    "File Name": "file_name",
    "Data Category": "data_category",
    "Data Type": "data_type",
    "Project ID": "project",
    "Case ID": "case",
    "Sample ID": "sample",
    "Sample Type": "sample_type",
    "Tissue Type": "tissue_type",
    "Tumor Descriptor": "tumor_descriptor",
    "Specimen Type": "specimen_type",
    "Preservation Method": "preservation_method",
}

_TISSUE = {"tumour": "Tumor", "normal": "Normal"}


def _snake(title: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", title.strip().lower()).strip("_")


def _split_cell(cell: str) -> list[str]:
    """``"a, b, a"`` -> ``["a", "b"]`` (order kept, empties and repeats dropped)."""
    out: list[str] = []
    for part in cell.split(","):
        p = part.strip()
        if p and p not in out:
            out.append(p)
    return out


def read_sample_sheet(path: str | os.PathLike[str], *, lenient: bool = False) -> pd.DataFrame:
    """Read a GDC sample sheet (either layout) into one row per file.

    Parameters
    ----------
    path
        The tab-separated sample sheet.
    lenient
        If False (default) a malformed row raises :class:`InputError` naming the sheet and
        the line. If True such rows are kept with the reason in the ``error`` column (None
        for good rows) so that the caller can skip them with a warning.

    Returns
    -------
    pandas.DataFrame
        Index: 0..n-1. Columns, whatever the layout: ``file_id``, ``file_name``,
        ``data_category``, ``data_type``, ``project``, ``case`` (participant barcode),
        ``sample`` (sample barcode; the first one for a multi-sample cell), ``samples``
        (tuple of all sample barcodes in the cell), ``n_samples``, ``sample_type_code``
        (``"01"``...), ``sample_type`` (``"Primary Tumor"``...; from the sheet in the old
        layout, from the code table in the new), ``category`` (``tumour``, ``normal``,
        ``control``, ``other``), ``tissue`` (``Tumor``/``Normal``/...: the sheet's ``Tissue
        Type`` in the new layout, derived from the code in the old), ``tumor_descriptor``
        and ``specimen_type`` (new layout; empty strings in the old), ``layout``
        (``"new"``/``"old"``), ``line`` (1-based line in the sheet), ``error``. Any other
        sheet column is kept under a snake_case name.

    Raises
    ------
    InputError
        Missing required column (``File Name``, ``Sample ID``), an empty file name or sample,
        a malformed TCGA barcode, a case id that is not the sample's participant, the same
        file listed twice, or a row with too many fields.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("sample sheet does not exist" if not path.exists()
                         else "sample sheet is not a file", path=path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise InputError(f"sample sheet is not UTF-8 text ({e.reason})", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read sample sheet: {e}", path=path) from None
    # drop blank lines but remember line numbers
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise InputError("sample sheet is empty", path=path)
    header_line, header = numbered[0]
    titles = [h.strip() for h in header]
    missing = [t for t in ("File Name", "Sample ID") if t not in titles]
    if missing:
        raise InputError(f"not a GDC sample sheet: missing column(s) {missing}; expected at "
                         f"least 'File ID', 'File Name', 'Project ID', 'Case ID', 'Sample ID'; "
                         f"found {titles}", path=path, line=header_line)
    names = [SHEET_COLUMNS.get(t, _snake(t)) for t in titles]
    layout = "new" if "Tissue Type" in titles else "old"
    records = []
    seen_files: dict[str, int] = {}
    for line, r in numbered[1:]:
        cells = [c.strip() for c in r[: len(names)]] + [""] * (len(names) - len(r))
        rec: dict[str, object] = dict(zip(names, cells, strict=True))
        rec["line"] = line
        rec["layout"] = layout
        error = None
        try:
            if len(r) > len(names):
                raise InputError(f"expected {len(names)} tab-separated fields, found {len(r)}",
                                 path=path, line=line)
            _complete_row(rec, path, line, seen_files)
        except InputError as e:
            if not lenient:
                raise
            error = str(e)
            for k, v in (("samples", ()), ("n_samples", 0), ("sample_type_code", ""),
                         ("sample_type", ""), ("category", ""), ("tissue", "")):
                rec.setdefault(k, v)
        rec["error"] = error
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    for c in ("file_id", "data_category", "data_type", "project", "tumor_descriptor",
              "specimen_type"):
        if c not in df.columns:
            df[c] = ""
    front = ["file_id", "file_name", "data_category", "data_type", "project", "case",
             "sample", "samples", "n_samples", "sample_type_code", "sample_type", "category",
             "tissue", "tumor_descriptor", "specimen_type"]
    rest = [c for c in df.columns if c not in front]
    df = df[[c for c in front if c in df.columns] + rest]
    df.attrs.update(path=str(path), layout=layout)
    return df


def _complete_row(rec: dict[str, object], path: Path, line: int,
                  seen_files: dict[str, int]) -> None:
    """Validate one row in place and add the derived columns."""
    rec.setdefault("samples", ())
    rec.setdefault("n_samples", 0)
    for k in ("sample_type_code", "sample_type", "category", "tissue"):
        rec.setdefault(k, "")
    fname = str(rec.get("file_name", ""))
    if not fname:
        raise InputError("empty 'File Name'", path=path, line=line)
    key = str(rec.get("file_id") or "") + "/" + fname
    if key in seen_files:
        raise InputError(f"file {fname!r} is listed twice (first at line {seen_files[key]})",
                         path=path, line=line)
    seen_files[key] = line
    samples = _split_cell(str(rec.get("sample", "")))
    if not samples:
        raise InputError(f"empty 'Sample ID' for file {fname!r}", path=path, line=line)
    parsed = [parse_barcode(s, path=path, line=line, require_sample=True) for s in samples]
    rec["samples"] = tuple(samples)
    rec["n_samples"] = len(samples)
    rec["sample"] = samples[0]
    first = parsed[0]
    cases = _split_cell(str(rec.get("case", "")))
    for c in cases:
        parse_barcode(c, path=path, line=line)
    if not cases:
        cases = [first.case]
    participants = {p.case for p in parsed}
    stray = [c for c in cases if c not in participants]
    if stray:
        raise InputError(f"case id {stray[0]!r} is not the participant of sample(s) "
                         f"{', '.join(samples)} (expected {first.case!r})",
                         path=path, line=line)
    rec["case"] = first.case
    code = first.sample_type_code or ""
    rec["sample_type_code"] = code
    cat = sample_category(code)
    rec["category"] = cat
    if not rec.get("sample_type"):
        rec["sample_type"] = SAMPLE_TYPES.get(code, f"sample type {code}")
    if len(samples) > 1:  # per-sample cells: keep the first sample's value
        for k in ("sample_type", "tissue_type", "tumor_descriptor", "specimen_type",
                  "preservation_method"):
            v = rec.get(k)
            if isinstance(v, str) and "," in v:
                rec[k] = _split_cell(v)[0]
    rec["tissue"] = str(rec.get("tissue_type", "")) or _TISSUE.get(cat, cat.capitalize())
