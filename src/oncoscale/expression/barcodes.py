"""TCGA barcodes and tumour / normal pairing.

A TCGA barcode such as ``TCGA-A7-A0CE-01A-11R-A00Z-07`` reads, field by field:

=========  =======  ==========================================================
field      example  meaning
=========  =======  ==========================================================
program    TCGA     always ``TCGA``
tss        A7       tissue source site
           A0CE     participant (the case); ``TCGA-A7-A0CE`` is the first 12
                    characters and names the participant
sample     01       sample type code: 01-09 tumour, 10-19 normal, 20-29 control
vial       A        vial letter (A is the first)
portion    11       portion number
analyte    R        analyte (R = RNA, D = DNA, ...)
plate      A00Z     plate
center     07       sequencing / characterisation centre
=========  =======  ==========================================================

The project (``TCGA-BRCA``, ...) is not part of the barcode; it comes from the GDC sample
sheet. :func:`parse_barcode` accepts any prefix of the full barcode from the participant
(12 characters) on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from oncoscale.errors import InputError

__all__ = [
    "SAMPLE_TYPES",
    "TCGABarcode",
    "parse_barcode",
    "sample_category",
    "pair_tumour_normal",
    "split_train_pairs",
]

#: GDC sample type codes (https://gdc.cancer.gov/resources-tcga-users/tcga-code-tables).
SAMPLE_TYPES: dict[str, str] = {
    "01": "Primary Tumor",
    "02": "Recurrent Tumor",
    "03": "Primary Blood Derived Cancer - Peripheral Blood",
    "04": "Recurrent Blood Derived Cancer - Bone Marrow",
    "05": "Additional - New Primary",
    "06": "Metastatic",
    "07": "Additional Metastatic",
    "08": "Human Tumor Original Cells",
    "09": "Primary Blood Derived Cancer - Bone Marrow",
    "10": "Blood Derived Normal",
    "11": "Solid Tissue Normal",
    "12": "Buccal Cell Normal",
    "13": "EBV Immortalized Normal",
    "14": "Bone Marrow Normal",
    "15": "sample type 15",
    "16": "sample type 16",
    "20": "Control Analyte",
    "40": "Recurrent Blood Derived Cancer - Peripheral Blood",
    "50": "Cell Lines",
    "60": "Primary Xenograft Tissue",
    "61": "Cell Line Derived Xenograft Tissue",
    "99": "sample type 99",
}

_BARCODE_RE = re.compile(
    r"""^TCGA-(?P<tss>[A-Z0-9]{2})-(?P<participant>[A-Z0-9]{4})
        (?:-(?P<sample>\d{2})(?P<vial>[A-Z])?
          (?:-(?P<portion>\d{2})(?P<analyte>[A-Z])?
            (?:-(?P<plate>[A-Z0-9]{4})
              (?:-(?P<center>[A-Z0-9]{2}))?
            )?
          )?
        )?$""",
    re.VERBOSE,
)

_EXAMPLE = "TCGA-A7-A0CE-01A-11R-A00Z-07"


def sample_category(code: int | str) -> str:
    """Category of a TCGA sample type code: ``tumour`` (01-09), ``normal`` (10-19),
    ``control`` (20-29) or ``other`` (30-99)."""
    c = int(code)
    if 1 <= c <= 9:
        return "tumour"
    if 10 <= c <= 19:
        return "normal"
    if 20 <= c <= 29:
        return "control"
    return "other"


@dataclass(frozen=True)
class TCGABarcode:
    """One parsed TCGA barcode; fields after the participant are ``None`` when absent."""

    barcode: str
    tss: str
    participant: str
    sample_type_code: str | None = None
    vial: str | None = None
    portion: str | None = None
    analyte: str | None = None
    plate: str | None = None
    center: str | None = None

    @property
    def case(self) -> str:
        """The participant barcode (first 12 characters), e.g. ``TCGA-A7-A0CE``."""
        return self.barcode[:12]

    @property
    def sample(self) -> str | None:
        """The sample barcode with vial, e.g. ``TCGA-A7-A0CE-01A`` (``None`` if absent)."""
        if self.sample_type_code is None:
            return None
        return self.barcode[:15] + (self.vial or "")

    @property
    def sample_type(self) -> str | None:
        """GDC name of the sample type code, e.g. ``Primary Tumor``."""
        if self.sample_type_code is None:
            return None
        return SAMPLE_TYPES.get(self.sample_type_code, f"sample type {self.sample_type_code}")

    @property
    def category(self) -> str | None:
        """``tumour``, ``normal``, ``control`` or ``other`` (see :func:`sample_category`)."""
        if self.sample_type_code is None:
            return None
        return sample_category(self.sample_type_code)

    def as_dict(self) -> dict[str, Any]:
        """All fields and derived properties as a plain dict."""
        d = asdict(self)
        d.update(case=self.case, sample=self.sample, sample_type=self.sample_type,
                 category=self.category)
        return d


def parse_barcode(barcode: str, *, path: str | os.PathLike[str] | None = None,
                  line: int | None = None, require_sample: bool = False) -> TCGABarcode:
    """Parse a TCGA barcode (participant level or longer).

    Parameters
    ----------
    barcode
        e.g. ``"TCGA-A7-A0CE"``, ``"TCGA-A7-A0CE-01A"`` or ``"TCGA-A7-A0CE-01A-11R-A00Z-07"``.
        Surrounding white space is ignored; letters must be upper case as the GDC writes them.
    path, line
        Where the barcode was read from; named in the error message.
    require_sample
        Also require the sample type code (at least ``TCGA-XX-XXXX-NN``).

    Raises
    ------
    InputError
        If the barcode is malformed, its sample type code is ``00``, or the sample part is
        missing while ``require_sample`` is set.
    """
    if not isinstance(barcode, str):
        raise InputError(f"expected a TCGA barcode string like {_EXAMPLE!r}, found "
                         f"{type(barcode).__name__} {barcode!r}", path=path, line=line)
    text = barcode.strip()
    m = _BARCODE_RE.match(text)
    if m is None:
        raise InputError(f"malformed TCGA barcode {barcode!r}: expected the form "
                         f"TCGA-<site:2>-<participant:4>[-<sample:2><vial>[-<portion:2>"
                         f"<analyte>[-<plate:4>[-<center:2>]]]], e.g. {_EXAMPLE!r}",
                         path=path, line=line)
    g = m.groupdict()
    if g["sample"] == "00":
        raise InputError(f"malformed TCGA barcode {barcode!r}: sample type code 00 does not "
                         "exist (expected 01-99)", path=path, line=line)
    if require_sample and g["sample"] is None:
        raise InputError(f"TCGA barcode {barcode!r} names a participant, not a sample: "
                         f"expected a sample barcode like 'TCGA-A7-A0CE-01A'",
                         path=path, line=line)
    return TCGABarcode(barcode=text, tss=g["tss"], participant=text[:12],
                       sample_type_code=g["sample"], vial=g["vial"], portion=g["portion"],
                       analyte=g["analyte"], plate=g["plate"], center=g["center"])


def pair_tumour_normal(samples: Any, *, tumour_code: str = "01",
                       normal_code: str = "11") -> pd.DataFrame:
    """Pair each participant's primary tumour (01) with its solid tissue normal (11).

    Parameters
    ----------
    samples
        An AnnData (its ``obs`` is used), an ``obs``-like DataFrame with a ``sample``
        column of sample barcodes (optional ``project`` column), or an iterable of sample
        barcodes. Rows are identified by the DataFrame index (the AnnData ``obs_names``) or,
        for an iterable, by the barcode itself.
    tumour_code, normal_code
        Sample type codes to pair (defaults: 01 Primary Tumor, 11 Solid Tissue Normal).

    Returns
    -------
    pandas.DataFrame
        One row per participant that has both, index ``participant`` (sorted), columns
        ``project``, ``tumour`` and ``normal`` (row identifiers: obs names), ``tumour_sample``
        and ``normal_sample`` (barcodes), ``n_tumour`` and ``n_normal`` (how many candidates
        there were). When a participant has several tumour (or normal) profiles, the one with
        the lowest vial letter is taken, ties broken by row order.
    """
    if hasattr(samples, "obs") and isinstance(samples.obs, pd.DataFrame):
        obs = samples.obs
    elif isinstance(samples, pd.DataFrame):
        obs = samples
    elif isinstance(samples, Iterable) and not isinstance(samples, str | bytes):
        vals = [str(s) for s in samples]
        obs = pd.DataFrame({"sample": vals}, index=pd.Index(vals))
    else:
        raise InputError("pair_tumour_normal expects an AnnData, an obs DataFrame with a "
                         f"'sample' column or an iterable of barcodes; found "
                         f"{type(samples).__name__}")
    if "sample" not in obs.columns:
        raise InputError("pair_tumour_normal: the obs table has no 'sample' column "
                         f"(found columns {list(obs.columns)})")
    projects = obs["project"].astype(str).to_numpy() if "project" in obs.columns else None
    records = []
    for pos, (name, s) in enumerate(zip(obs.index, obs["sample"].astype(str), strict=True)):
        bc = parse_barcode(s, require_sample=True)
        if bc.sample_type_code not in (tumour_code, normal_code):
            continue
        records.append((bc.case, bc.sample_type_code, bc.vial or "", pos, str(name),
                        bc.sample, None if projects is None else projects[pos]))
    cols = ["participant", "code", "vial", "pos", "name", "sample", "project"]
    df = pd.DataFrame.from_records(records, columns=cols)
    out_cols = ["project", "tumour", "normal", "tumour_sample", "normal_sample",
                "n_tumour", "n_normal"]
    if df.empty:
        return pd.DataFrame(columns=out_cols, index=pd.Index([], name="participant"))
    df = df.sort_values(["participant", "code", "vial", "pos"], kind="stable")
    tum = df[df["code"] == tumour_code]
    nor = df[df["code"] == normal_code]
    t_first = tum.groupby("participant", sort=True).first()
    n_first = nor.groupby("participant", sort=True).first()
    both = t_first.index.intersection(n_first.index)
    t_first, n_first = t_first.loc[both], n_first.loc[both]
    out = pd.DataFrame({
        "project": t_first["project"],
        "tumour": t_first["name"],
        "normal": n_first["name"],
        "tumour_sample": t_first["sample"],
        "normal_sample": n_first["sample"],
        "n_tumour": tum.groupby("participant").size().loc[both].astype(int),
        "n_normal": nor.groupby("participant").size().loc[both].astype(int),
    }, index=both)
    out.index.name = "participant"
    return out.sort_index()


def split_train_pairs(adata: Any, *, tumour_code: str = "01",
                      normal_code: str = "11") -> tuple[Any, Any]:
    """Split an expression AnnData into the training tumours and the tumour/normal pairs.

    The pairs cohort holds, for every participant with both, the primary tumour (01) and
    the solid tissue normal (11) chosen by :func:`pair_tumour_normal` - tumours first, then
    normals in the same participant order - with ``obs["label"]`` = 1 for tumour, 0 for
    normal and ``obs["participant"]``. The training cohort holds every other tumour sample
    (codes 01-09) of participants that are *not* in the pairs, so no participant is in both.

    Parameters
    ----------
    adata
        AnnData with ``obs["sample"]`` barcodes (as :func:`oncoscale.expression.read_gdc`
        returns).

    Returns
    -------
    (train, pairs)
        Two AnnData copies (n_train x n_genes, 2 n_pairs x n_genes).
    """
    pairs = pair_tumour_normal(adata, tumour_code=tumour_code, normal_code=normal_code)
    obs = adata.obs
    cats = []
    cases = []
    for s in obs["sample"].astype(str):
        bc = parse_barcode(s, require_sample=True)
        cats.append(bc.category)
        cases.append(bc.case)
    cats_arr = pd.Series(cats, index=obs.index)
    in_pairs = pd.Series(cases, index=obs.index).isin(pairs.index)
    train = adata[((cats_arr == "tumour") & ~in_pairs).to_numpy()].copy()
    order = list(pairs["tumour"]) + list(pairs["normal"])
    pair_ad = adata[adata.obs_names.get_indexer(order)].copy()
    pair_ad.obs["label"] = [1] * len(pairs) + [0] * len(pairs)
    pair_ad.obs["participant"] = list(pairs.index) * 2
    return train, pair_ad
