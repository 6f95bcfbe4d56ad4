"""Readers for single GDC expression files: STAR-Counts (current) and HTSeq (legacy).

Both readers parse with the Arrow CSV reader (C++, single thread per call), keep values as
float32 and raise :class:`~oncoscale.errors.InputError` naming the file and the line for
anything malformed: a wrong number of columns, a truncated file, a non-numeric, missing,
NaN/infinite or negative value, duplicate gene ids, a missing value column.

Gene ids are returned without their version (``ENSG00000000003.15`` -> ``ENSG00000000003``);
the ``_PAR_Y`` suffix of pseudo-autosomal copies is kept so those stay distinct
(``ENSG00000002586.20_PAR_Y`` -> ``ENSG00000002586_PAR_Y``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from oncoscale.errors import InputError

__all__ = [
    "STAR_COLUMNS",
    "STAR_VALUE_COLUMNS",
    "read_star_counts",
    "read_htseq",
    "sniff_format",
    "strip_version",
]

#: Header of a GDC ``*.rna_seq.augmented_star_gene_counts.tsv`` file.
STAR_COLUMNS: tuple[str, ...] = (
    "gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
    "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded",
)
#: Columns of a STAR-Counts file that can be read as the expression value.
STAR_VALUE_COLUMNS: tuple[str, ...] = STAR_COLUMNS[3:]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- helpers


def strip_version(ids: pa.Array | np.ndarray | list[str]) -> np.ndarray:
    """Remove the Ensembl version: ``ENSG...15`` -> ``ENSG...``, keeping ``_PAR_Y``.

    Returns an object array of str.
    """
    arr = ids if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(list(ids), pa.string())
    out = pc.replace_substring_regex(arr, pattern=r"^([^.]+)\.[0-9]+", replacement=r"\1")
    return np.asarray(out.to_numpy(zero_copy_only=False), dtype=object)


def _read_bytes(path: Path) -> bytes:
    """Whole file as bytes, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file does not exist", path=path) from None
    except IsADirectoryError:
        raise InputError("expected a file, found a directory", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror or e}", path=path) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise InputError("truncated gzip file (compressed stream ends early)",
                             path=path) from None
        except (OSError, zlib.error) as e:
            raise InputError(f"corrupt gzip file: {e}", path=path) from None
    if not raw.strip():
        raise InputError("file is empty", path=path)
    return raw


def _lines_after(raw: bytes, skip: int) -> tuple[int, int]:
    """Byte offset after the first ``skip`` lines, and that count (<= skip)."""
    pos = 0
    for n in range(skip):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return len(raw), n
        pos = nl + 1
    return pos, skip


def sniff_format(path: PathLike) -> str:
    """``"star"`` for a STAR-Counts file (``# gene-model`` comment or ``gene_id`` header),
    ``"htseq"`` for a two-column legacy file. Reads only the first bytes (gunzipping)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(p, "rb") as fh:
            first = fh.read(4096)
    except FileNotFoundError:
        raise InputError("file does not exist", path=p) from None
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read file: {e}", path=p) from None
    for ln in first.splitlines():
        s = ln.strip()
        if not s:
            continue
        if s.startswith(b"#") or s.startswith(b"gene_id\t") or s == b"gene_id":
            return "star"
        return "htseq"
    return "htseq"


def _bad_value_message(kind: str, value: float | None, column: str) -> str:
    if kind == "missing":
        return f"missing value in column {column!r} (expected a number >= 0)"
    if kind == "nonfinite":
        return f"value {value!r} in column {column!r} is not finite (expected a number >= 0)"
    return f"negative value {value!r} in column {column!r} (expected a number >= 0)"


def _locate_bad_line(raw: bytes, path: Path, first_line: int, n_cols: int,
                     numeric: dict[int, str], fallback: str,
                     optional_prefix: bytes | None = None) -> InputError:
    """Scan ``raw`` (slow, error path only) for the first malformed row from ``first_line``.

    ``numeric`` maps column index -> column name for columns that must parse as numbers.
    Rows whose first field starts with ``optional_prefix`` may leave numeric cells empty.
    """
    lines = raw.split(b"\n")
    ends_with_newline = raw.endswith(b"\n")
    for i in range(first_line - 1, len(lines)):
        ln = lines[i]
        last = i == len(lines) - 1
        if last and not ln:
            break  # trailing newline
        text = ln.rstrip(b"\r")
        if not text.strip():
            continue
        fields = text.split(b"\t")
        lineno = i + 1
        if len(fields) != n_cols:
            trunc = last and not ends_with_newline
            what = "file is truncated: last line is incomplete, " if trunc else ""
            return InputError(f"{what}expected {n_cols} tab-separated columns, found "
                              f"{len(fields)}: {text[:80].decode('utf-8', 'replace')!r}",
                              path=path, line=lineno)
        optional = optional_prefix is not None and fields[0].startswith(optional_prefix)
        for j, name in numeric.items():
            cell = fields[j].strip()
            if not cell:
                if optional:
                    continue
                return InputError(_bad_value_message("missing", None, name), path=path,
                                  line=lineno)
            try:
                float(cell)
            except ValueError:
                return InputError(f"value {cell.decode('utf-8', 'replace')!r} in column "
                                  f"{name!r} is not a number", path=path, line=lineno)
    return InputError(f"cannot parse file: {fallback}", path=path)


def _data_row_line(raw: bytes, header_lines: int, row: int) -> int:
    """1-based line number of data row ``row`` (0-based, blank lines skipped)."""
    lines = raw.split(b"\n")
    k = -1
    for i in range(header_lines, len(lines)):
        if lines[i].strip():
            k += 1
            if k == row:
                return i + 1
    return header_lines + row + 1


def _check_values(values: pa.ChunkedArray | pa.Array, raw: bytes, path: Path,
                  header_lines: int, row_offset: int, column: str) -> np.ndarray:
    """float64 Arrow column -> float32 numpy, raising on missing/NaN/inf/negative values."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if arr.null_count:
        bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(_bad_value_message("missing", None, column), path=path,
                         line=_data_row_line(raw, header_lines, row_offset + bad))
    v = arr.to_numpy()
    finite = np.isfinite(v)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(_bad_value_message("nonfinite", float(v[bad]), column), path=path,
                         line=_data_row_line(raw, header_lines, row_offset + bad))
    if (v < 0).any():
        bad = int(np.flatnonzero(v < 0)[0])
        raise InputError(_bad_value_message("negative", float(v[bad]), column), path=path,
                         line=_data_row_line(raw, header_lines, row_offset + bad))
    return v.astype(np.float32)


def _check_duplicates(ids: np.ndarray, raw: bytes, path: Path, header_lines: int,
                      row_offset: int) -> None:
    dup = pd.Index(ids).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[i])[0])
        raise InputError(
            f"duplicate gene id {ids[i]!r} (after removing the version; first seen at line "
            f"{_data_row_line(raw, header_lines, row_offset + first)})",
            path=path, line=_data_row_line(raw, header_lines, row_offset + i))


def _ids_digest(ids: pa.Array) -> str:
    """Order-sensitive digest of a string array (cheap: hashes the Arrow buffers)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    ids = ids.cast(pa.large_string()) if ids.type != pa.large_string() else ids
    bufs = ids.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64)[ids.offset: ids.offset + len(ids) + 1]
    h = hashlib.blake2b(digest_size=16)
    h.update((offs - offs[0]).tobytes())
    if bufs[2] is not None:
        h.update(memoryview(bufs[2])[int(offs[0]): int(offs[-1])])
    return h.hexdigest()


# --------------------------------------------------------------------------- parsed file


@dataclass
class ParsedFile:
    """One parsed expression file (internal exchange format; values float32)."""

    path: str
    format: str
    values: np.ndarray                       # (n_genes,) float32
    digest: str                              # digest of the versioned gene id column
    gene_ids: np.ndarray | None = None       # (n_genes,) unversioned ids, object
    gene_ids_version: np.ndarray | None = None
    gene_names: np.ndarray | None = None
    gene_types: np.ndarray | None = None
    gene_model: str | None = None
    summary: dict[str, float] = field(default_factory=dict)


def _csv_read(raw: bytes, skip: int, names: list[str], include: list[str],
              types: dict[str, pa.DataType]) -> pa.Table:
    return pcsv.read_csv(
        pa.BufferReader(raw),
        read_options=pcsv.ReadOptions(skip_rows=skip, column_names=names, use_threads=False,
                                      block_size=1 << 24),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False,
                                        ignore_empty_lines=True),
        convert_options=pcsv.ConvertOptions(include_columns=include, column_types=types,
                                            null_values=[""], strings_can_be_null=False,
                                            quoted_strings_can_be_null=False),
    )


def parse_star(path: PathLike, value: str = "fpkm_uq_unstranded", *,
               annotation: bool = True, check_duplicates: bool = True) -> ParsedFile:
    """Parse one STAR-Counts file (see :func:`read_star_counts`) into a :class:`ParsedFile`.

    ``annotation=False`` skips gene ids/names/types (only values and the id digest are kept),
    which is what the bulk assembly needs for every file but the first.
    """
    path = Path(path)
    if value not in STAR_VALUE_COLUMNS:
        raise InputError(f"unknown value column {value!r}; expected one of "
                         f"{', '.join(STAR_VALUE_COLUMNS)}")
    raw = _read_bytes(path)
    # comment lines ("# gene-model: GENCODE v36"), then the header
    n_comment, pos, gene_model = 0, 0, None
    while True:
        nl = raw.find(b"\n", pos)
        line = raw[pos: nl if nl >= 0 else len(raw)]
        if not line.startswith(b"#"):
            break
        text = line[1:].decode("utf-8", "replace").strip()
        if text.lower().startswith("gene-model:"):
            gene_model = text.split(":", 1)[1].strip()
        n_comment += 1
        if nl < 0:
            raise InputError("file has comment lines but no header", path=path)
        pos = nl + 1
    nl = raw.find(b"\n", pos)
    header = raw[pos: nl if nl >= 0 else len(raw)].rstrip(b"\r").decode("utf-8", "replace")
    cols = header.split("\t")
    header_line = n_comment + 1
    if cols[0] != "gene_id":
        raise InputError(
            "not a STAR-Counts file: expected a header starting with 'gene_id' "
            f"({' '.join(STAR_COLUMNS)}), found {header[:80]!r}", path=path, line=header_line)
    if len(set(cols)) != len(cols):
        raise InputError(f"duplicate column names in header: {cols}", path=path,
                         line=header_line)
    if value not in cols:
        raise InputError(f"value column {value!r} not in header; found columns "
                         f"{', '.join(cols)}", path=path, line=header_line)
    include = ["gene_id", value]
    if annotation:
        include += [c for c in ("gene_name", "gene_type") if c in cols]
    header_lines = n_comment + 1
    try:
        tab = _csv_read(raw, header_lines, cols, include,
                        {"gene_id": pa.string(), value: pa.float64(),
                         "gene_name": pa.string(), "gene_type": pa.string()})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        numeric = {cols.index(c): c for c in cols if c in STAR_VALUE_COLUMNS}
        raise _locate_bad_line(raw, path, header_lines + 1, len(cols), numeric, str(e),
                               optional_prefix=b"N_") from None
    ids = tab.column("gene_id").combine_chunks()
    is_summary = pc.starts_with(ids, "N_").to_numpy(zero_copy_only=False)
    n_summary = int(is_summary.sum())
    if n_summary and not is_summary[:n_summary].all():
        where = int(np.flatnonzero(is_summary)[-1])
        raise InputError(f"summary row {ids[where].as_py()!r} after the gene rows (expected "
                         "the N_* rows before the first gene)", path=path,
                         line=_data_row_line(raw, header_lines, where))
    vals_all = tab.column(value).combine_chunks()
    summary = {}
    for i in range(n_summary):
        v = vals_all[i].as_py()
        if v is not None:
            summary[ids[i].as_py()] = float(v)
    gene_ids_v = ids.slice(n_summary)
    if len(gene_ids_v) == 0:
        raise InputError("no gene rows after the header (empty or truncated file)", path=path)
    values = _check_values(vals_all.slice(n_summary), raw, path, header_lines, n_summary, value)
    pf = ParsedFile(path=str(path), format="star", values=values,
                    digest=_ids_digest(gene_ids_v), gene_model=gene_model, summary=summary)
    if annotation or check_duplicates:
        uv = strip_version(gene_ids_v)
        if check_duplicates:
            _check_duplicates(uv, raw, path, header_lines, n_summary)
        if annotation:
            pf.gene_ids = uv
            pf.gene_ids_version = np.asarray(gene_ids_v.to_numpy(zero_copy_only=False),
                                             dtype=object)
            for c, attr in (("gene_name", "gene_names"), ("gene_type", "gene_types")):
                if c in include:
                    col = tab.column(c).combine_chunks().slice(n_summary)
                    setattr(pf, attr, np.asarray(col.to_numpy(zero_copy_only=False),
                                                 dtype=object))
    return pf


def parse_htseq(path: PathLike, *, annotation: bool = True,
                check_duplicates: bool = True) -> ParsedFile:
    """Parse one legacy HTSeq file (see :func:`read_htseq`) into a :class:`ParsedFile`."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        tab = _csv_read(raw, 0, ["gene_id", "value"], ["gene_id", "value"],
                        {"gene_id": pa.string(), "value": pa.float64()})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _locate_bad_line(raw, path, 1, 2, {1: "value"}, str(e)) from None
    ids = tab.column("gene_id").combine_chunks()
    special = pc.starts_with(ids, "__").to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(~special)
    if keep.size == 0:
        raise InputError("no gene rows (only '__' summary rows or nothing)", path=path)
    vals_all = tab.column("value").combine_chunks()
    summary = {ids[i].as_py(): float(vals_all[i].as_py())
               for i in np.flatnonzero(special) if vals_all[i].is_valid}
    n_lead = int(keep[0])
    if not (keep == np.arange(n_lead, n_lead + keep.size)).all():
        # '__' rows interleaved with genes: take the gene rows wherever they are
        idx = pa.array(keep)
        gene_ids_v = ids.take(idx)
        vals = vals_all.take(idx)
        try:
            values = _check_values(vals, raw, path, 0, 0, "value")
        except InputError:  # recompute the right line number on the slow path
            v = vals.to_numpy(zero_copy_only=False)
            bad = int(np.flatnonzero(~(np.isfinite(v) & (v >= 0)))[0])
            raise InputError(_bad_value_message("negative" if v[bad] < 0 else "nonfinite",
                                                float(v[bad]), "value"), path=path,
                             line=_data_row_line(raw, 0, int(keep[bad]))) from None
    else:
        gene_ids_v = ids.slice(n_lead, keep.size)
        values = _check_values(vals_all.slice(n_lead, keep.size), raw, path, 0, n_lead,
                               "value")
    pf = ParsedFile(path=str(path), format="htseq", values=values,
                    digest=_ids_digest(gene_ids_v), summary=summary)
    if annotation or check_duplicates:
        uv = strip_version(gene_ids_v)
        if check_duplicates:
            try:
                _check_duplicates(uv, raw, path, 0, n_lead)
            except InputError:
                if keep.size and n_lead + keep.size == keep[-1] + 1:
                    raise
                i = int(np.flatnonzero(pd.Index(uv).duplicated())[0])
                raise InputError(f"duplicate gene id {uv[i]!r} (after removing the version)",
                                 path=path, line=_data_row_line(raw, 0, int(keep[i]))) from None
        if annotation:
            pf.gene_ids = uv
            pf.gene_ids_version = np.asarray(gene_ids_v.to_numpy(zero_copy_only=False),
                                             dtype=object)
    return pf


def parse_expression_file(path: PathLike, value: str = "fpkm_uq_unstranded", *,
                          fmt: str | None = None, annotation: bool = True,
                          check_duplicates: bool = True) -> ParsedFile:
    """Parse a STAR-Counts or HTSeq file, sniffing the format when ``fmt`` is None."""
    fmt = fmt or sniff_format(path)
    if fmt == "star":
        return parse_star(path, value, annotation=annotation, check_duplicates=check_duplicates)
    if fmt == "htseq":
        return parse_htseq(path, annotation=annotation, check_duplicates=check_duplicates)
    raise InputError(f"unknown expression file format {fmt!r}; expected 'star' or 'htseq'")


# --------------------------------------------------------------------------- public readers


def read_star_counts(path: PathLike, value: str = "fpkm_uq_unstranded") -> pd.DataFrame:
    """Read one GDC STAR-Counts file (``*.rna_seq.augmented_star_gene_counts.tsv``).

    The file has a ``# gene-model: GENCODE v36`` comment line, the header
    ``gene_id gene_name gene_type unstranded stranded_first stranded_second tpm_unstranded
    fpkm_unstranded fpkm_uq_unstranded`` (tab separated), four summary rows
    ``N_unmapped``, ``N_multimapping``, ``N_noFeature``, ``N_ambiguous`` and then one row
    per gene with a versioned Ensembl id. A gzipped file is read transparently.

    Parameters
    ----------
    path
        The file.
    value
        Which column to read: ``unstranded``, ``stranded_first``, ``stranded_second``
        (read counts), ``tpm_unstranded``, ``fpkm_unstranded`` or ``fpkm_uq_unstranded``
        (default; upper-quartile normalised FPKM as used by the published GDC autoencoder).

    Returns
    -------
    pandas.DataFrame
        One row per gene (n_genes rows), index ``gene_id`` (without version), columns
        ``gene_id_version``, ``gene_name``, ``gene_type`` (str) and ``value`` (float32).
        ``df.attrs`` holds ``gene_model`` (e.g. ``"GENCODE v36"``), ``value`` (the column
        name) and ``summary`` (the N_* rows' values, where the column has them).

    Raises
    ------
    InputError
        Naming the file and line: missing header or value column, wrong number of columns,
        truncated file, non-numeric/missing/NaN/negative value, duplicate gene id.
    """
    pf = parse_star(path, value)
    df = pd.DataFrame({"gene_id_version": pf.gene_ids_version,
                       "gene_name": pf.gene_names, "gene_type": pf.gene_types,
                       "value": pf.values}, index=pd.Index(pf.gene_ids, name="gene_id"))
    df.attrs.update(gene_model=pf.gene_model, value=value, summary=pf.summary,
                    path=str(path))
    return df


def read_htseq(path: PathLike) -> pd.DataFrame:
    """Read one legacy GDC HTSeq file (``*.htseq.counts[.gz]``, also ``*.FPKM[-UQ].txt[.gz]``).

    Two tab-separated columns, no header: a versioned Ensembl gene id and a number. Rows
    whose id starts with ``__`` (``__no_feature``, ``__ambiguous``, ``__too_low_aQual``,
    ``__not_aligned``, ``__alignment_not_unique``) are summary rows and are dropped (their
    values land in ``df.attrs["summary"]``). Gzip is detected from the content.

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (without version), columns ``gene_id_version`` and ``value``
        (float32).

    Raises
    ------
    InputError
        Naming the file and line, as :func:`read_star_counts`.
    """
    pf = parse_htseq(path)
    df = pd.DataFrame({"gene_id_version": pf.gene_ids_version, "value": pf.values},
                      index=pd.Index(pf.gene_ids, name="gene_id"))
    df.attrs.update(summary=pf.summary, path=str(path))
    return df
