"""Assemble a GDC download (sample sheet + expression files) into one AnnData.

:func:`read_gdc` streams the files through a small process pool: each worker parses one file
and returns a float32 vector, which the parent copies into a preallocated
``n_files x n_genes`` float32 matrix. Peak memory is therefore the matrix plus, per worker,
one file (its bytes and its parsed columns) and a bounded queue of finished vectors.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oncoscale._io import atomic_path
from oncoscale.errors import ConfigurationError, InputError
from oncoscale.expression.readers import (
    STAR_VALUE_COLUMNS,
    ParsedFile,
    parse_expression_file,
    sniff_format,
)
from oncoscale.expression.sample_sheet import read_sample_sheet

__all__ = ["read_gdc", "find_sample_sheet", "EXPRESSION_DATA_TYPE"]

EXPRESSION_DATA_TYPE = "Gene Expression Quantification"
_UNS_KEY = "oncoscale_gdc"
_MAX_WARNINGS = 20


class _Problems:
    """Collects what lenient mode skipped; warns for the first few and once in summary."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)
        if len(self.items) <= _MAX_WARNINGS:
            warnings.warn(f"read_gdc (lenient): {msg}", stacklevel=3)


def find_sample_sheet(directory: str | os.PathLike[str]) -> Path:
    """The one ``*sample_sheet*.tsv`` in ``directory`` (not recursive).

    Raises
    ------
    InputError
        If there is none or more than one.
    """
    d = Path(directory)
    found = sorted(p for p in d.glob("*.tsv") if "sample_sheet" in p.name.lower())
    if not found:
        raise InputError("no GDC sample sheet ('*sample_sheet*.tsv') in this folder; pass the "
                         "sample sheet's path instead", path=d)
    if len(found) > 1:
        raise InputError(f"{len(found)} sample sheets in this folder "
                         f"({', '.join(p.name for p in found)}); pass one by path", path=d)
    return found[0]


def _locate(data_dir: Path, file_id: str, file_name: str) -> Path | None:
    """GDC client layout ``data_dir/<file_id>/<file_name>``, else ``data_dir/<file_name>``."""
    if file_id:
        p = data_dir / file_id / file_name
        if p.is_file():
            return p
    p = data_dir / file_name
    return p if p.is_file() else None


def _stat_key(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.name), st.st_size, st.st_mtime_ns]


def _cache_key(sheet: Path, files: Sequence[Path], value: str, lenient: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"value": value, "lenient": lenient, "version": 1,
                         "sheet": _stat_key(sheet)}).encode())
    for f in files:
        h.update(json.dumps(_stat_key(f)).encode())
    return h.hexdigest()


def _cached_key(cache: Path) -> str | None:
    """The cache key stored in an .h5ad cache, read without loading the matrix."""
    import h5py

    try:
        with h5py.File(cache, "r") as f:
            v = f["uns"][_UNS_KEY]["cache_key"][()]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- worker


def _parse_worker(path: str, value: str, fmt: str) -> tuple[Any, ...]:
    """Parse one file for the bulk assembly; errors come back as data (they pickle cleanly)."""
    try:
        pf = parse_expression_file(path, value, fmt=fmt, annotation=False,
                                   check_duplicates=False)
    except InputError as e:
        return ("error", _raw_message(e), e.path, e.line)
    except Exception as e:  # noqa: BLE001 - any failure of one file is reported with its path
        return ("error", f"cannot parse file: {type(e).__name__}: {e}", path, None)
    return ("ok", pf.values, pf.digest)


def _raw_message(e: InputError) -> str:
    """The message of an InputError without its "path, line N: " prefix."""
    msg = str(e)
    if e.path is not None:
        prefix = e.path + (f", line {e.line}" if e.line is not None else "") + ": "
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _pool_context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


# --------------------------------------------------------------------------- main


def read_gdc(
    sample_sheet_or_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    value: str = "fpkm_uq_unstranded",
    lenient: bool = False,
    cache: str | os.PathLike[str] | None = None,
    n_jobs: int = 2,
    progress: bool = True,
) -> Any:
    """Read a GDC RNA-seq download into an AnnData (samples x genes, float32).

    Parameters
    ----------
    sample_sheet_or_dir
        The GDC sample sheet (``gdc_sample_sheet.<date>.tsv``), or a folder holding exactly
        one ``*sample_sheet*.tsv``.
    data_dir
        Where the files are: either as ``gdc-client`` lays them out
        (``data_dir/<File ID>/<File Name>``) or flat (``data_dir/<File Name>``). Default: the
        sample sheet's folder, then its ``data/`` subfolder.
    value
        STAR-Counts column to read (default ``fpkm_uq_unstranded``; also ``unstranded``,
        ``stranded_first``, ``stranded_second``, ``tpm_unstranded``, ``fpkm_unstranded``).
        Legacy HTSeq files have one value column and ignore this.
    lenient
        Strict (default): the first problem raises :class:`InputError` naming the file
        (and line). Lenient: bad sample-sheet rows (malformed barcode, several samples in
        one row - the first is kept), files that are missing, unreadable, truncated or hold
        NaN/negative values are skipped; genes not present in every file are dropped (the
        gene set becomes the intersection; that needs one temporary copy of the matrix).
        Each problem is reported with
        :func:`warnings.warn` (the first 20) and a summary warning; the list is stored in
        ``adata.uns["oncoscale_gdc"]["skipped"]``. Duplicate gene ids in the first file
        are always an error.
    cache
        Optional ``.h5ad`` path. If it exists and was built from the same sample sheet and
        files (names, sizes, modification times), ``value`` and ``lenient``, it is loaded
        instead; otherwise the result is written there atomically (temporary file + rename).
    n_jobs
        Worker processes parsing files (1: parse in this process; -1: one per CPU). Files
        are parsed in parallel and copied into the matrix in sample-sheet order. Workers
        start with the ``forkserver`` method (safe when the caller already runs threads,
        e.g. torch), so a script must call ``read_gdc`` under
        ``if __name__ == "__main__":``; if the pool cannot start, the remaining files are
        read in this process with a warning. Fewer than 17 files are always read in this
        process.
    progress
        Show a progress bar (tqdm).

    Returns
    -------
    anndata.AnnData
        ``X``: float32 (n_files x n_genes), the chosen value. ``obs`` (index: GDC file id):
        ``file`` (file name), ``file_id``, ``case`` (participant barcode), ``sample``
        (sample barcode), ``project``, ``sample_type`` (e.g. ``Primary Tumor``),
        ``sample_type_code`` (``"01"``), ``category`` (tumour / normal / control / other),
        ``tissue`` (``Tumor`` / ``Normal``), ``tumor_descriptor``, ``specimen_type``.
        ``var`` (index: Ensembl gene id without version): ``gene_id_version``,
        ``gene_name``, ``gene_type`` (empty for HTSeq files, which carry no annotation).
        ``uns["oncoscale_gdc"]``: value, format, gene_model, sample_sheet, data_dir,
        n_files_listed, skipped, cache_key.

    Raises
    ------
    InputError
        Naming the file (and line): malformed sample sheet or barcode, a listed file that is
        missing, an unreadable/truncated file, a NaN/negative value, duplicate gene ids, a
        gene set that differs from the first file's.
    """
    import anndata as ad
    from tqdm.auto import tqdm

    if value not in STAR_VALUE_COLUMNS:
        raise InputError(f"unknown value column {value!r}; expected one of "
                         f"{', '.join(STAR_VALUE_COLUMNS)}")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise ConfigurationError(f"n_jobs must be >= 1 or -1 (all cores), got {n_jobs}")
    src = Path(sample_sheet_or_dir)
    if src.is_dir():
        sheet_path = find_sample_sheet(src)
    elif src.is_file():
        sheet_path = src
    else:
        raise InputError("sample sheet or folder does not exist", path=src)
    if data_dir is None:
        search = [sheet_path.parent / "data", sheet_path.parent]
        search = [d for d in search if d.is_dir()]
    else:
        search = [Path(data_dir)]
        if not search[0].is_dir():
            raise InputError("data folder does not exist", path=search[0])
    ddir = search[0]

    problems = _Problems()
    sheet = read_sample_sheet(sheet_path, lenient=lenient)
    n_listed = len(sheet)
    if lenient:
        for msg in sheet.loc[sheet["error"].notna(), "error"]:
            problems.add(f"skipped sample-sheet row: {msg}")
        sheet = sheet[sheet["error"].isna()]
    # a cart may hold other data types (clinical, mutations): keep the expression files
    dtypes = sheet["data_type"].astype(str)
    n_other = 0
    if (dtypes == EXPRESSION_DATA_TYPE).any():
        n_other = int((dtypes != EXPRESSION_DATA_TYPE).sum())
        sheet = sheet[dtypes == EXPRESSION_DATA_TYPE]
    multi = sheet["n_samples"] > 1
    for r in sheet[multi].itertuples():
        msg = (f"file {r.file_name!r} is linked to {r.n_samples} samples "
               f"({', '.join(r.samples)}); one expression profile needs one sample")
        if not lenient:
            raise InputError(msg, path=sheet_path, line=int(r.line))
        problems.add(f"{sheet_path}, line {r.line}: {msg}; kept the first sample")
    # resolve paths
    paths: list[Path] = []
    keep_rows: list[int] = []
    missing: list[tuple[int, str]] = []
    for i, r in enumerate(sheet.itertuples()):
        p = None
        for d in search:
            p = _locate(d, str(r.file_id), str(r.file_name))
            if p is not None:
                break
        if p is None:
            missing.append((int(r.line), str(r.file_name)))
            continue
        paths.append(p)
        keep_rows.append(i)
    if missing:
        line, name = missing[0]
        where = "' or '".join(f"{d}/<File ID>/{name}' or '{d}/{name}" for d in search)
        more = f" ({len(missing) - 1} more listed files are missing too)" if len(missing) > 1 \
            else ""
        msg = f"listed file {name!r} not found (looked for '{where}'){more}"
        if not lenient:
            raise InputError(msg, path=sheet_path, line=line)
        for line, name in missing:
            problems.add(f"{sheet_path}, line {line}: listed file {name!r} not found in "
                         f"{' or '.join(map(str, search))}")
    sheet = sheet.iloc[keep_rows].reset_index(drop=True)
    if len(paths) == 0:
        raise InputError("no expression files to read (the sample sheet lists none that "
                         "exist)", path=sheet_path)

    key = _cache_key(sheet_path, paths, value, lenient)
    if cache is not None:
        cache = Path(cache)
        if cache.is_file() and _cached_key(cache) == key:
            return ad.read_h5ad(cache)

    # ---- reference file: the first one that parses (strict: the first one)
    ref: ParsedFile | None = None
    fmt = ""
    start = 0
    while start < len(paths):
        try:
            fmt = sniff_format(paths[start])
            ref = parse_expression_file(paths[start], value, fmt=fmt)
            break
        except InputError as e:
            if not lenient:
                raise
            problems.add(f"skipped file: {e}")
            start += 1
    if ref is None:
        raise InputError("none of the listed files could be read (lenient mode skipped them "
                         "all; see the warnings)", path=sheet_path)
    assert ref.gene_ids is not None
    ref_index = pd.Index(ref.gene_ids)
    n_genes = len(ref_index)
    n_files = len(paths)
    X = np.empty((n_files - start, n_genes), dtype=np.float32)
    gene_present = np.ones(n_genes, dtype=bool)
    layouts: dict[str, np.ndarray | None] = {ref.digest: None}
    rows: list[int] = []

    def place(i: int, values: np.ndarray, digest: str) -> None:
        """Copy file i's vector into the next matrix row, re-ordering if its genes differ."""
        nonlocal gene_present
        if digest not in layouts:
            try:
                layouts[digest] = _align(paths[i], value, fmt, ref_index, ref.path, lenient,
                                         problems)
            except InputError as e:
                if not lenient:
                    raise
                problems.add(f"skipped file: {e}")
                return
        take = layouts[digest]
        r = len(rows)
        if take is None:
            if values.shape[0] != n_genes:  # same digest cannot differ in length
                raise InputError(f"expected {n_genes} genes, found {values.shape[0]}",
                                 path=paths[i])
            X[r] = values
        else:
            ok = take >= 0
            X[r, ok] = values[take[ok]]
            if not ok.all():
                X[r, ~ok] = 0.0
                gene_present &= ok
        rows.append(i)

    bar = tqdm(total=n_files, desc="reading GDC files", unit="file", disable=not progress)
    try:
        place(start, ref.values, ref.digest)
        bar.update(1 + start)
        todo = range(start + 1, n_files)

        def handle(i: int, res: tuple[Any, ...]) -> None:
            if res[0] == "error":
                err = InputError(res[1], path=res[2], line=res[3])
                if not lenient:
                    raise err
                problems.add(f"skipped file: {err}")
            else:
                place(i, res[1], res[2])
            bar.update(1)

        next_i = todo.start  # files before next_i are placed or skipped
        if n_jobs > 1 and len(todo) >= 16:
            window = 4 * n_jobs
            try:
                with ProcessPoolExecutor(max_workers=n_jobs, mp_context=_pool_context()) as ex:
                    pending: deque[tuple[int, Future[tuple[Any, ...]]]] = deque()
                    try:
                        for i in todo:
                            pending.append((i, ex.submit(_parse_worker, str(paths[i]), value,
                                                         fmt)))
                            if len(pending) >= window:
                                j, fut = pending.popleft()
                                handle(j, fut.result())
                                next_i = j + 1
                        while pending:
                            j, fut = pending.popleft()
                            handle(j, fut.result())
                            next_i = j + 1
                    except BaseException:
                        for _, fut in pending:
                            fut.cancel()
                        raise
            except BrokenProcessPool as e:
                warnings.warn(
                    f"read_gdc: the reader process pool failed ({e}); reading the remaining "
                    "files in this process. In a script, start the work under "
                    "`if __name__ == '__main__':` so worker processes can start, or pass "
                    "n_jobs=1.", RuntimeWarning, stacklevel=2)
        for i in range(next_i, todo.stop):
            handle(i, _parse_worker(str(paths[i]), value, fmt))
    finally:
        bar.close()

    # ---- assemble
    n_ok = len(rows)
    if n_ok < X.shape[0]:
        X = X[:n_ok]
    var = pd.DataFrame({
        "gene_id_version": ref.gene_ids_version,
        "gene_name": ref.gene_names if ref.gene_names is not None else "",
        "gene_type": ref.gene_types if ref.gene_types is not None else "",
    }, index=pd.Index(ref.gene_ids, name="gene_id"))
    n_dropped = int((~gene_present).sum())
    if n_dropped:
        var = var[gene_present]
        X = np.ascontiguousarray(X[:, gene_present])
    s = sheet.iloc[rows]
    ids = s["file_id"].astype(str)
    index = ids if (ids != "").all() and ids.is_unique else s["file_name"].astype(str)
    obs = pd.DataFrame({
        "file": s["file_name"].astype(str).to_numpy(),
        "file_id": ids.to_numpy(),
        "case": s["case"].astype(str).to_numpy(),
        "sample": s["sample"].astype(str).to_numpy(),
        "project": s["project"].astype(str).to_numpy(),
        "sample_type": s["sample_type"].astype(str).to_numpy(),
        "sample_type_code": s["sample_type_code"].astype(str).to_numpy(),
        "category": s["category"].astype(str).to_numpy(),
        "tissue": s["tissue"].astype(str).to_numpy(),
        "tumor_descriptor": s["tumor_descriptor"].astype(str).to_numpy(),
        "specimen_type": s["specimen_type"].astype(str).to_numpy(),
    }, index=pd.Index(index.to_numpy()))
    for c in ("project", "sample_type", "sample_type_code", "category", "tissue",
              "tumor_descriptor", "specimen_type"):
        obs[c] = obs[c].astype("category")
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns[_UNS_KEY] = {
        "value": value if fmt == "star" else "htseq",
        "format": fmt,
        "gene_model": ref.gene_model or "",
        "sample_sheet": str(sheet_path),
        "data_dir": str(ddir),
        "sheet_layout": str(sheet.attrs.get("layout", "")),
        "n_files_listed": n_listed,
        "n_other_data_types": n_other,
        "n_genes_dropped": n_dropped,
        "lenient": lenient,
        "skipped": np.array(problems.items, dtype=object) if problems.items
        else np.array([], dtype=str),
        "cache_key": key,
    }
    if problems.items:
        warnings.warn(f"read_gdc (lenient): {len(problems.items)} problem(s); read "
                      f"{n_ok} of {n_listed} listed files, dropped {n_dropped} genes not in "
                      f"every file; details in adata.uns['{_UNS_KEY}']['skipped']",
                      stacklevel=2)
    if cache is not None:
        with atomic_path(cache) as tmp:
            adata.write_h5ad(tmp)
    return adata


def _align(path: Path, value: str, fmt: str, ref_index: pd.Index, ref_path: str,
           lenient: bool, problems: _Problems) -> np.ndarray | None:
    """Map a file whose gene-id column differs from the reference onto the reference genes.

    Returns ``take`` with ``values[take[j]]`` the value of reference gene j (-1: absent), or
    None if the unversioned ids match the reference in order.
    """
    pf = parse_expression_file(path, value, fmt=fmt, annotation=True)
    ids = pd.Index(pf.gene_ids)
    if ids.equals(ref_index):
        return None
    take = ids.get_indexer(ref_index)
    absent = ref_index[take < 0]
    extra = ids.difference(ref_index)
    if len(absent) == 0 and len(extra) == 0:
        return take  # same genes, other order
    msg = (f"gene set differs from the first file ({ref_path}): {len(absent)} of its "
           f"{len(ref_index)} genes missing here"
           + (f" (e.g. {', '.join(map(str, absent[:3]))})" if len(absent) else "")
           + f", {len(extra)} extra"
           + (f" (e.g. {', '.join(map(str, extra[:3]))})" if len(extra) else ""))
    if len(absent) and len(ids) < len(ref_index) and len(extra) == 0:
        msg += "; the file may be truncated"
    if not lenient:
        raise InputError(msg, path=path)
    problems.add(f"{path}: {msg}; keeping the genes common to all files")
    return take

