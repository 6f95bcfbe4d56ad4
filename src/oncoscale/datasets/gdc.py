"""A deterministic synthetic GDC RNA-seq project, written in the real GDC file formats.

:func:`make_synthetic_project` writes what a user gets from the GDC portal after adding
files to a cart and downloading them with ``gdc-client``: a sample sheet
(``gdc_sample_sheet.<date>.tsv``) and one STAR-Counts file per GDC file, each in a folder
named by its file UUID::

    out_dir/
      gdc_sample_sheet.2026-01-01.tsv
      data/<file-uuid>/<uuid>.rna_seq.augmented_star_gene_counts.tsv
      ...

The cohort has several tumour types (``projects``), a large cohort of unpaired primary
tumours (sample type 01) for training and ``n_pairs`` participants with a primary tumour
(01) and a solid tissue normal (11).

Expression model, per gene g and sample s (natural-log scale)::

    log mu[s, g] = base[g] + tissue[project(s), g] + purity[s] * tumour[project(s), g]
                   + (Z[s] @ L)[g] + eps[s, g]
    counts[s, g] ~ NegativeBinomial(mean = lib[s] * softmax(log mu[s])[g], dispersion[g])

``base`` depends on the gene type (protein-coding genes are the most expressed, pseudogenes
and small RNAs the least), ``tissue`` is a sparse tissue-specific program per project,
``tumour`` is the tumour-vs-normal program (a few percent of the protein-coding genes, fold
changes of 1.5x-4x up or down, partly project specific) scaled by the sample's tumour
purity (Beta(6, 3) for tumours, 0 for normals), ``Z @ L`` are a few shared latent factors,
``eps`` is gene-level biological noise and ``lib`` the library size (log-normal). No single
gene separates tumour from normal perfectly; together the program genes do.

``tpm_unstranded``, ``fpkm_unstranded`` and ``fpkm_uq_unstranded`` are computed from the
unstranded counts and the gene lengths exactly as the GDC mRNA pipeline documents
(FPKM normalised by the protein-coding read total, FPKM-UQ by the 75th-percentile
protein-coding count), rounded to 4 decimals.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oncoscale._io import atomic_path, atomic_write_text
from oncoscale.errors import ConfigurationError

__all__ = ["SyntheticGDCProject", "make_synthetic_project", "DEFAULT_PROJECTS"]

DEFAULT_PROJECTS: tuple[str, ...] = ("TCGA-BRCA", "TCGA-LUAD", "TCGA-KIRC")

#: A few real tissue-source-site codes per project (used to build case barcodes).
_TSS: dict[str, tuple[str, ...]] = {
    "TCGA-BRCA": ("A7", "A2", "BH", "E2", "AR", "D8"),
    "TCGA-LUAD": ("05", "44", "55", "78", "49", "MP"),
    "TCGA-KIRC": ("B0", "CJ", "CZ", "A3", "AK", "BP"),
    "TCGA-COAD": ("AA", "A6", "CM", "AZ", "D5", "G4"),
    "TCGA-PRAD": ("EJ", "KK", "HC", "CH", "G9", "J4"),
    "TCGA-LIHC": ("DD", "BC", "ED", "CC", "G3", "ZS"),
    "TCGA-THCA": ("BJ", "EL", "DJ", "E8", "ET", "FY"),
    "TCGA-LUSC": ("22", "33", "56", "60", "85", "NC"),
    "TCGA-HNSC": ("CV", "CN", "BA", "CR", "D6", "HD"),
    "TCGA-STAD": ("BR", "CG", "VQ", "HU", "D7", "FP"),
}

#: (gene type, share of genes, mean log abundance, sd, median length bp, length sd (log))
_GENE_TYPES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("protein_coding", 0.330, 1.5, 1.6, 3000.0, 0.7),
    ("lncRNA", 0.279, -1.5, 1.8, 1200.0, 0.8),
    ("processed_pseudogene", 0.168, -3.5, 1.8, 900.0, 0.5),
    ("unprocessed_pseudogene", 0.043, -3.0, 1.8, 1500.0, 0.7),
    ("misc_RNA", 0.036, -3.0, 2.0, 300.0, 0.3),
    ("snRNA", 0.031, -2.5, 2.0, 110.0, 0.2),
    ("miRNA", 0.031, -3.5, 2.0, 80.0, 0.1),
    ("TEC", 0.017, -2.0, 1.5, 1500.0, 0.6),
    ("snoRNA", 0.016, -2.0, 2.0, 100.0, 0.3),
    ("transcribed_unprocessed_pseudogene", 0.016, -1.0, 1.5, 2000.0, 0.7),
    ("transcribed_processed_pseudogene", 0.008, -1.5, 1.5, 1200.0, 0.6),
    ("rRNA_pseudogene", 0.008, -4.0, 1.5, 120.0, 0.2),
    ("IG_V_pseudogene", 0.004, -4.0, 1.5, 350.0, 0.2),
    ("TR_V_gene", 0.004, -2.5, 2.0, 450.0, 0.2),
    ("scaRNA", 0.003, -3.0, 1.5, 250.0, 0.3),
    ("rRNA", 0.003, -2.0, 2.5, 120.0, 0.2),
    ("misc_pseudogene", 0.003, -4.0, 1.5, 800.0, 0.5),
)

_STAR_HEADER = ("gene_id", "gene_name", "gene_type", "unstranded", "stranded_first",
                "stranded_second", "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded")
_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
_FILE_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
_MANIFEST = ".oncoscale_synthetic.json"


@dataclass(frozen=True)
class SyntheticGDCProject:
    """Paths of a written synthetic GDC project and the truth it was generated from.

    Attributes
    ----------
    root, sample_sheet, data_dir
        The output folder, the sample sheet, and the folder holding ``<file-uuid>/`` folders
        (pass ``sample_sheet`` to :func:`oncoscale.expression.read_gdc`).
    genes
        One row per gene in file order (n_genes rows): index ``gene_id`` (no version),
        columns ``gene_id_version``, ``gene_name``, ``gene_type``, ``length`` (bp),
        ``tumour_program`` (bool), ``tumour_log2fc`` (mean tumour-vs-normal log2 fold
        change over projects at purity 1), ``tissue_program`` (bool).
    samples
        One row per file (n_files rows, sample-sheet order): ``file_id``, ``file_name``,
        ``case``, ``sample``, ``project``, ``sample_type_code``, ``cohort`` (``"train"`` for
        the unpaired tumours, ``"pairs"`` for the matched tumour/normal participants),
        ``purity``, ``library_size``.
    tumour_program_genes
        Unversioned ids of the tumour-vs-normal program genes.
    tissue_program_genes
        Project -> unversioned ids of its tissue-specific program genes.
    """

    root: Path
    sample_sheet: Path
    data_dir: Path
    genes: pd.DataFrame
    samples: pd.DataFrame
    tumour_program_genes: tuple[str, ...]
    tissue_program_genes: dict[str, tuple[str, ...]]
    projects: tuple[str, ...]
    seed: int
    layout: str

    @property
    def n_files(self) -> int:
        """Number of expression files (= rows of the sample sheet)."""
        return len(self.samples)

    @property
    def n_genes(self) -> int:
        """Number of gene rows per file."""
        return len(self.genes)

    @property
    def train_samples(self) -> list[str]:
        """Sample barcodes of the unpaired training tumours."""
        return self.samples.loc[self.samples["cohort"] == "train", "sample"].tolist()

    @property
    def pair_cases(self) -> list[str]:
        """Participants with a matched primary tumour (01) and solid tissue normal (11)."""
        s = self.samples[self.samples["cohort"] == "pairs"]
        return sorted(s["case"].unique().tolist())


# --------------------------------------------------------------------------- genes


def _symbol(rng: np.random.Generator) -> str:
    letters = "ABCDEFGHIKLMNPRSTVWZ"
    k = int(rng.integers(2, 5))
    stem = "".join(letters[i] for i in rng.integers(0, len(letters), size=k))
    return stem + str(int(rng.integers(1, 30))) if rng.random() < 0.7 else stem


def _gene_name(gtype: str, rng: np.random.Generator) -> str:
    r = int(rng.integers(1, 99999))
    if gtype == "protein_coding":
        return _symbol(rng)
    if gtype in ("lncRNA", "TEC"):
        if rng.random() < 0.4:
            return f"LINC{r % 3000:05d}"
        return f"A{'CLP'[r % 3]}{r:06d}.{1 + r % 4}"
    if gtype.endswith("pseudogene"):
        return f"{_symbol(rng)}P{1 + r % 40}"
    if gtype == "miRNA":
        return f"MIR{r % 5000}"
    if gtype == "snRNA":
        return f"RNU6-{r % 1300}P" if rng.random() < 0.6 else "U6"
    if gtype == "snoRNA":
        return f"SNORD{r % 120}" if rng.random() < 0.5 else f"SNORA{r % 80}"
    if gtype == "misc_RNA":
        return "Y_RNA" if rng.random() < 0.5 else f"7SK.{r % 300}"
    if gtype == "scaRNA":
        return f"SCARNA{r % 30}"
    if gtype == "rRNA":
        return f"RNA5SP{r % 500}"
    if gtype.startswith(("IG_", "TR_")):
        return f"{gtype[:2]}{'ABGDK'[r % 5]}V{r % 60}-{1 + r % 9}"
    return _symbol(rng)


def _make_genes(n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    shares = np.array([t[1] for t in _GENE_TYPES])
    counts = np.floor(shares / shares.sum() * n_genes).astype(int)
    counts[0] += n_genes - counts.sum()  # remainder to protein_coding
    type_idx = np.repeat(np.arange(len(_GENE_TYPES)), counts)
    rng.shuffle(type_idx)
    types = np.array([_GENE_TYPES[i][0] for i in type_idx], dtype=object)
    nums = np.sort(rng.choice(np.arange(1, 300_000), size=n_genes, replace=False))
    versions = rng.integers(1, 20, size=n_genes)
    ids = np.array([f"ENSG{n:011d}" for n in nums], dtype=object)
    ids_v = np.array([f"{i}.{v}" for i, v in zip(ids, versions, strict=True)], dtype=object)
    # pseudo-autosomal Y copies (as in GENCODE): same id and version plus "_PAR_Y"
    n_par = int(round(n_genes * 0.0007))
    if n_par:
        par = np.sort(rng.choice(np.arange(n_genes - 1), size=n_par, replace=False))
        for p in par:  # the copy replaces the next row, keeping n_genes rows
            ids[p + 1] = ids[p] + "_PAR_Y"
            ids_v[p + 1] = ids_v[p] + "_PAR_Y"
            types[p + 1] = types[p]
    names = np.array([_gene_name(t, rng) for t in types], dtype=object)
    if n_par:
        for p in par:
            names[p + 1] = names[p]
    spec = {t[0]: t for t in _GENE_TYPES}
    med = np.array([spec[t][4] for t in types])
    lsd = np.array([spec[t][5] for t in types])
    length = np.maximum(60, np.round(med * np.exp(rng.normal(0.0, lsd)))).astype(np.int64)
    mu = np.array([spec[t][2] for t in types]) + rng.normal(0, 1, n_genes) * np.array(
        [spec[t][3] for t in types])
    genes = pd.DataFrame({"gene_id_version": ids_v, "gene_name": names, "gene_type": types,
                          "length": length, "base": mu},
                         index=pd.Index(ids, name="gene_id"))
    genes["par_y"] = genes.index.str.endswith("_PAR_Y")
    return genes


# --------------------------------------------------------------------------- samples


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _participants(n: int, projects: tuple[str, ...], rng: np.random.Generator,
                  used: set[str]) -> list[tuple[str, str]]:
    """``n`` (project, case barcode) pairs, projects round-robin, unique barcodes."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNPQRSTUVWXYZ"))
    out = []
    for k in range(n):
        project = projects[k % len(projects)]
        tss_list = _TSS.get(project, ("ZZ", "ZY", "ZX"))
        while True:
            tss = tss_list[int(rng.integers(len(tss_list)))]
            part = "".join(alphabet[rng.integers(0, len(alphabet), size=4)])
            case = f"TCGA-{tss}-{part}"
            if case not in used:
                used.add(case)
                break
        out.append((project, case))
    return out


# --------------------------------------------------------------------------- file writer

_GENE_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _GENE_STATE.clear()
    _GENE_STATE.update(state)


def _sample_counts(st: dict[str, Any], proj: int, purity: float, lib: float,
                   seed: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    n = st["base"].shape[0]
    z = rng.normal(0.0, 1.0, st["loadings"].shape[0])
    logmu = (st["base"] + st["tissue"][proj] + purity * st["tumour"][proj]
             + z @ st["loadings"] + rng.normal(0.0, 1.0, n) * st["noise_sd"])
    logmu -= logmu.max()
    p = np.exp(logmu)
    p /= p.sum()
    mean = lib * p
    phi = st["dispersion"]
    lam = rng.gamma(1.0 / phi, mean * phi)
    counts = rng.poisson(lam).astype(np.int64)
    counts[st["par_y"]] = 0
    return counts, rng


def _render_file(st: dict[str, Any], proj: int, purity: float, lib: float,
                 seed: int) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    counts, rng = _sample_counts(st, proj, purity, lib, seed)
    first = rng.binomial(counts, 0.5)
    rest = counts - first
    second = rest - rng.binomial(rest, 0.01)
    length = st["length"]
    pc_mask = st["protein_coding"]
    rate = counts / (length / 1e3)
    tpm = rate / max(rate.sum(), 1e-12) * 1e6
    rmt = max(float(counts[pc_mask].sum()), 1.0)
    rm75 = max(float(np.quantile(counts[pc_mask], 0.75)), 1.0) if pc_mask.any() else 1.0
    fpkm = counts * 1e9 / (rmt * length)
    fpkm_uq = counts * 1e9 / (rm75 * length)
    total = float(counts.sum())
    u = rng.uniform(size=4)
    n_unmapped = int(total * (0.02 + 0.04 * u[0]))
    n_multi = int(total * (0.05 + 0.07 * u[1]))
    nofeat = int(total * (0.03 + 0.04 * u[2]))
    amb = int(total * (0.03 + 0.03 * u[3]))
    summary_counts = np.array([
        [n_unmapped, n_unmapped, n_unmapped],
        [n_multi, n_multi, n_multi],
        [nofeat, nofeat + int(0.5 * total), nofeat + int(0.5 * total)],
        [amb, amb // 4, amb // 4],
    ], dtype=np.int64)

    def col_int(summary: np.ndarray, v: np.ndarray) -> pa.Array:
        return pa.array(np.concatenate([summary, v]))

    def col_float(v: np.ndarray) -> pa.Array:
        vals = np.concatenate([np.zeros(4), np.round(v, 4)])
        mask = np.zeros(vals.shape[0], bool)
        mask[:4] = True
        return pa.array(vals, mask=mask)

    table = pa.table([
        st["id_col"], st["name_col"], st["type_col"],
        col_int(summary_counts[:, 0], counts), col_int(summary_counts[:, 1], first),
        col_int(summary_counts[:, 2], second),
        col_float(tpm), col_float(fpkm), col_float(fpkm_uq),
    ], names=list(_STAR_HEADER))
    buf = io.BytesIO()
    buf.write(f"# gene-model: {st['gene_model']}\n".encode())
    pcsv.write_csv(table, buf, pcsv.WriteOptions(delimiter="\t", quoting_style="none",
                                                 quoting_header="none", batch_size=8192))
    return buf.getvalue()


def _write_one(job: tuple[str, int, float, float, int]) -> str:
    path, proj, purity, lib, seed = job
    data = _render_file(_GENE_STATE, proj, purity, lib, seed)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name("." + p.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return path


# --------------------------------------------------------------------------- public


def make_synthetic_project(
    out_dir: str | os.PathLike[str],
    *,
    n_genes: int = 5000,
    n_train_tumours: int = 600,
    n_pairs: int = 100,
    projects: tuple[str, ...] | list[str] = DEFAULT_PROJECTS,
    seed: int = 0,
    layout: str = "new",
    tumour_program_fraction: float = 0.04,
    n_factors: int = 6,
    library_size: float = 50e6,
    gene_model: str = "GENCODE v36",
    n_jobs: int = 1,
    progress: bool = False,
    reuse: bool = True,
) -> SyntheticGDCProject:
    """Write a synthetic GDC RNA-seq project (STAR-Counts files + sample sheet).

    Deterministic: the same arguments give byte-identical files, whatever ``n_jobs``.

    Parameters
    ----------
    out_dir
        Output folder (created). The sample sheet is written last, atomically, so a folder
        with a sample sheet is complete.
    n_genes
        Gene rows per file (GDC STAR-Counts files have 60,660).
    n_train_tumours
        Unpaired primary tumours (01), split round-robin over ``projects``.
    n_pairs
        Participants with a primary tumour (01) and a solid tissue normal (11).
    projects
        GDC project ids (tumour types), e.g. ``("TCGA-BRCA", "TCGA-LUAD", "TCGA-KIRC")``.
    seed
        Seed of everything (genes, samples, counts, UUIDs).
    layout
        Sample-sheet layout: ``"new"`` (Tissue Type / Tumor Descriptor / Specimen Type /
        Preservation Method) or ``"old"`` (Sample Type).
    tumour_program_fraction
        Share of the protein-coding genes in the tumour-vs-normal program.
    n_factors
        Number of shared latent factors (correlated gene modules) in every sample.
    library_size
        Median read count over all 60,660 genes; scaled by ``n_genes / 60660`` so per-gene
        counts stay realistic for small gene sets.
    gene_model
        Written in the ``# gene-model:`` comment line.
    n_jobs
        Processes that render and write files (1: in this process).
    progress
        Show a progress bar (tqdm) while writing files.
    reuse
        If ``out_dir`` already holds a complete project written with the same arguments
        (a manifest with the same parameters, the sample sheet and every data file exist),
        do not rewrite it.

    Returns
    -------
    SyntheticGDCProject
        Paths and generating truth (program genes, cohorts).
    """
    if layout not in ("new", "old"):
        raise ConfigurationError(f"layout must be 'new' or 'old', got {layout!r}")
    projects = tuple(projects)
    if not projects:
        raise ConfigurationError("projects must name at least one GDC project")
    if n_genes < 10:
        raise ConfigurationError(f"n_genes must be >= 10, got {n_genes}")
    if n_train_tumours < 0 or n_pairs < 0 or n_train_tumours + n_pairs == 0:
        raise ConfigurationError("need n_train_tumours >= 0, n_pairs >= 0 and at least one "
                                 f"sample; got {n_train_tumours} and {n_pairs}")
    if not 0 < tumour_program_fraction < 1:
        raise ConfigurationError("tumour_program_fraction must be in (0, 1), got "
                                 f"{tumour_program_fraction}")
    root = Path(out_dir)
    params = dict(n_genes=n_genes, n_train_tumours=n_train_tumours, n_pairs=n_pairs,
                  projects=list(projects), seed=seed, layout=layout,
                  tumour_program_fraction=tumour_program_fraction, n_factors=n_factors,
                  library_size=library_size, gene_model=gene_model, version=1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6DC]))

    # ---- genes and programs
    genes = _make_genes(n_genes, rng)
    n_proj = len(projects)
    pc_idx = np.flatnonzero((genes["gene_type"] == "protein_coding").to_numpy()
                            & ~genes["par_y"].to_numpy())
    expressed = pc_idx[genes["base"].to_numpy()[pc_idx] > 0.0]
    pool = expressed if expressed.size >= 20 else pc_idx
    n_prog = max(min(5, pool.size), int(round(tumour_program_fraction * pc_idx.size)))
    prog = np.sort(rng.choice(pool, size=min(n_prog, pool.size), replace=False))
    log2fc = rng.choice([-1.0, 1.0], size=prog.size) * rng.uniform(0.6, 2.0, size=prog.size)
    tumour = np.zeros((n_proj, n_genes))
    for j in range(n_proj):
        active = rng.random(prog.size) < 0.75  # a quarter of program genes idle per project
        tumour[j, prog] = np.log(2.0) * log2fc * rng.uniform(0.6, 1.4, prog.size) * active
    tissue = np.zeros((n_proj, n_genes))
    tissue_sets: dict[str, tuple[str, ...]] = {}
    candidates = np.flatnonzero(~genes["par_y"].to_numpy())
    for j, project in enumerate(projects):
        k = max(1, int(round(0.06 * n_genes)))
        tg = np.sort(rng.choice(candidates, size=min(k, candidates.size), replace=False))
        tissue[j, tg] = rng.normal(0.0, 1.5, size=tg.size)
        tissue_sets[project] = tuple(genes.index[tg])
    loadings = rng.normal(0.0, 1.0, (n_factors, n_genes)) * (
        rng.random((n_factors, n_genes)) < 0.05) * 0.5
    dispersion = 0.05 + 0.25 * np.exp(rng.normal(0, 0.5, n_genes)) * (
        genes["base"].to_numpy() < 0)
    noise_sd = 0.25 + 0.15 * rng.random(n_genes)
    genes["tumour_program"] = False
    genes.iloc[prog, genes.columns.get_loc("tumour_program")] = True
    genes["tumour_log2fc"] = tumour.mean(axis=0) / np.log(2.0)
    genes["tissue_program"] = (tissue != 0).any(axis=0)

    # ---- participants, samples, files
    used: set[str] = set()
    train = _participants(n_train_tumours, projects, rng, used)
    pairs = _participants(n_pairs, projects, rng, used)
    lib_scale = library_size * n_genes / 60660.0
    rows = []
    for cohort, members, codes in (("train", train, ("01",)), ("pairs", pairs, ("01", "11"))):
        for project, case in members:
            for code in codes:
                purity = float(rng.beta(6.0, 3.0)) if code == "01" else 0.0
                rows.append(dict(
                    file_id=_uuid(rng), file_name=_uuid(rng) + _FILE_SUFFIX, case=case,
                    sample=f"{case}-{code}A", project=project, sample_type_code=code,
                    cohort=cohort, purity=purity,
                    library_size=float(lib_scale * np.exp(rng.normal(0.0, 0.35))),
                    preservation=str(rng.choice(["Unknown", "OCT", "FFPE"], p=[.7, .2, .1])),
                    seed=int(rng.integers(0, 2**63 - 1))))
    samples = pd.DataFrame(rows)
    samples = samples.iloc[rng.permutation(len(samples))].reset_index(drop=True)
    data_dir = root / "data"
    sheet = root / "gdc_sample_sheet.2026-01-01.tsv"
    genes_out = genes.drop(columns=["base", "par_y"])
    project_obj = SyntheticGDCProject(
        root=root, sample_sheet=sheet, data_dir=data_dir, genes=genes_out,
        samples=samples.drop(columns=["seed", "preservation"]),
        tumour_program_genes=tuple(genes.index[prog]), tissue_program_genes=tissue_sets,
        projects=projects, seed=seed, layout=layout)

    manifest = root / _MANIFEST
    if reuse and sheet.is_file() and manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == params and all(
                    (data_dir / r.file_id / r.file_name).is_file()
                    for r in samples.itertuples()):
                return project_obj
        except (OSError, ValueError):
            pass

    # ---- write the files
    import pyarrow as pa

    n_sum = len(_SUMMARY_ROWS)
    state = dict(
        base=genes["base"].to_numpy(), tissue=tissue, tumour=tumour, loadings=loadings,
        dispersion=dispersion, noise_sd=noise_sd, par_y=genes["par_y"].to_numpy(),
        length=genes["length"].to_numpy().astype(np.float64),
        protein_coding=(genes["gene_type"] == "protein_coding").to_numpy()
        & ~genes["par_y"].to_numpy(),
        id_col=pa.array(list(_SUMMARY_ROWS) + genes["gene_id_version"].tolist(), pa.string()),
        name_col=pa.array([None] * n_sum + genes["gene_name"].tolist(), pa.string()),
        type_col=pa.array([None] * n_sum + genes["gene_type"].tolist(), pa.string()),
        gene_model=gene_model)
    proj_index = {p: j for j, p in enumerate(projects)}
    jobs = [(str(data_dir / r.file_id / r.file_name), proj_index[r.project], r.purity,
             r.library_size, r.seed) for r in samples.itertuples()]
    root.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        manifest.unlink()
    if sheet.exists():
        sheet.unlink()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="writing synthetic GDC files", unit="file",
               disable=not progress)
    try:
        if n_jobs <= 1:
            _init_worker(state)
            for job in jobs:
                _write_one(job)
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods()
                                 else "spawn")
            with ProcessPoolExecutor(max_workers=n_jobs, initializer=_init_worker,
                                     initargs=(state,), mp_context=ctx) as ex:
                for _ in ex.map(_write_one, jobs, chunksize=4):
                    bar.update(1)
    finally:
        bar.close()
        _GENE_STATE.clear()

    # ---- the sample sheet, last
    if layout == "new":
        extra = {
            "Tissue Type": np.where(samples["sample_type_code"] == "01", "Tumor", "Normal"),
            "Tumor Descriptor": np.where(samples["sample_type_code"] == "01", "Primary",
                                         "Not Applicable"),
            "Specimen Type": "Solid Tissue",
            "Preservation Method": samples["preservation"].to_numpy(),
        }
    else:
        extra = {"Sample Type": np.where(samples["sample_type_code"] == "01",
                                         "Primary Tumor", "Solid Tissue Normal")}
    sheet_df = pd.DataFrame({
        "File ID": samples["file_id"], "File Name": samples["file_name"],
        "Data Category": "Transcriptome Profiling",
        "Data Type": "Gene Expression Quantification",
        "Project ID": samples["project"], "Case ID": samples["case"],
        "Sample ID": samples["sample"], **extra})
    with atomic_path(sheet) as tmp:
        sheet_df.to_csv(tmp, sep="\t", index=False)
    atomic_write_text(manifest, json.dumps(params, sort_keys=True))
    return project_obj
