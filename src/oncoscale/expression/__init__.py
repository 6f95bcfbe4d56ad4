"""GDC/TCGA expression data: readers, TCGA barcodes, tumour/normal pairing, preprocessing.

Typical use::

    from oncoscale import expression as ex
    adata = ex.read_gdc("gdc_sample_sheet.2026-01-01.tsv")       # files x genes, float32
    table = ex.pair_tumour_normal(adata)                          # participant -> 01 / 11 rows
    train, pairs = ex.split_train_pairs(adata)                    # unpaired tumours / 01+11
    train, pairs = ex.preprocess(train, pairs)                    # log2(1+x), protein coding, [0,1]
"""

from oncoscale.expression.barcodes import (
    SAMPLE_TYPES,
    TCGABarcode,
    pair_tumour_normal,
    parse_barcode,
    sample_category,
    split_train_pairs,
)
from oncoscale.expression.gdc import find_sample_sheet, read_gdc
from oncoscale.expression.preprocess import (
    MinMaxScaler,
    filter_genes,
    gene_variance,
    log2_1p,
    preprocess,
)
from oncoscale.expression.readers import (
    STAR_COLUMNS,
    STAR_VALUE_COLUMNS,
    read_htseq,
    read_star_counts,
    sniff_format,
    strip_version,
)
from oncoscale.expression.sample_sheet import read_sample_sheet

__all__ = [
    "MinMaxScaler",
    "SAMPLE_TYPES",
    "STAR_COLUMNS",
    "STAR_VALUE_COLUMNS",
    "TCGABarcode",
    "filter_genes",
    "find_sample_sheet",
    "gene_variance",
    "log2_1p",
    "pair_tumour_normal",
    "parse_barcode",
    "preprocess",
    "read_gdc",
    "read_htseq",
    "read_sample_sheet",
    "read_star_counts",
    "sample_category",
    "sniff_format",
    "split_train_pairs",
    "strip_version",
]
