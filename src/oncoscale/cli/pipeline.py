"""CLI of the normal-vs-cancer pipeline: `demo`, `gdc build`, `ae train`, `ans`, `report`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from oncoscale.cli._common import console
from oncoscale.cli._common import fail as _fail

gdc_app = typer.Typer(help="Read GDC/TCGA expression downloads.", no_args_is_help=True)
ae_app = typer.Typer(help="Train the expression autoencoder.", no_args_is_help=True)


def _log(msg: str) -> None:
    console.print(f"[cyan]oncoscale[/] {msg}")


def _config(**kw: object):
    from oncoscale.pipeline import PipelineConfig

    return PipelineConfig(**{k: v for k, v in kw.items() if v is not None})


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o",
                             help="Run directory for the data, model, tables and report."),
    epochs: int = typer.Option(60, help="Maximum training epochs (early stopping may end "
                                        "sooner)."),
    n_latent: int = typer.Option(1000, help="Latent nodes of the autoencoder."),
    workers: int = typer.Option(1, help="Training ranks (1 = one process)."),
    seed: int = typer.Option(0, help="Seed for data, weights and embeddings."),
    topology: bool = typer.Option(True, help="Build the latent-space topology datacube."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run the whole pipeline on the embedded synthetic GDC project and write a report.

    Generates GDC STAR-Counts files and a sample sheet, reads them, trains the autoencoder on
    the unpaired tumours, ranks latent nodes by how well they separate matched tumour and
    normal samples (ANS), compares with PCA and t-SNE, and writes OUT/report.html.
    """
    from oncoscale.errors import OncoscaleError
    from oncoscale.pipeline import demo as run_demo

    try:
        cfg = _config(epochs=epochs, n_latent=n_latent, workers=workers, seed=seed,
                      topology=topology)
        summary = run_demo(out, cfg, progress=progress, log=_log)
    except OncoscaleError as exc:
        _fail(exc)
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    t = Table(title="Latent nodes that best separate cancer from matched normal samples")
    for col in ("rank", "node", "SNS (lower = better)", "AUC", "1-threshold accuracy",
                "higher in"):
        t.add_column(col, justify="right")
    for i, row in enumerate(summary["top"], 1):
        t.add_row(str(i), str(row["node"]), f"{row['sns_binary']:.3f}", f"{row['auc']:.3f}",
                  f"{row['threshold_accuracy']:.1%}", row["higher_in"])
    out = Console()
    out.print(t)
    out.print(f"{summary['pairs']} tumour/normal pairs, {summary['training_tumours']} training "
              f"tumours, {summary['genes']} genes, {summary['latent_nodes']} latent nodes; "
              f"{summary['seconds']} s")
    out.print(f"report: {summary['report']}")


@gdc_app.command("build")
def gdc_build(
    sample_sheet: Path = typer.Argument(..., help="GDC sample sheet (TSV from the GDC cart)."),
    data_dir: Path = typer.Option(None, "--data-dir", "-d",
                                  help="Folder of the downloaded files (default: the sample "
                                       "sheet's folder)."),
    out: Path = typer.Option(Path("cohort.h5ad"), "--out", "-o", help="Output .h5ad."),
    value: str = typer.Option("fpkm_uq_unstranded",
                              help="STAR-Counts column to read, e.g. unstranded, tpm_unstranded, "
                                   "fpkm_unstranded, fpkm_uq_unstranded."),
    lenient: bool = typer.Option(False, help="Intersect gene sets and skip unreadable files "
                                             "with a warning instead of stopping."),
    jobs: int = typer.Option(2, help="Parallel reader processes."),
) -> None:
    """Read every expression file of a GDC download into one AnnData (.h5ad).

    Works with STAR-Counts (*.rna_seq.augmented_star_gene_counts.tsv) and legacy HTSeq files.
    Samples are described by the sample sheet: case, sample barcode, sample type, project.
    """
    from oncoscale.errors import OncoscaleError
    from oncoscale.pipeline import build_cohort

    try:
        adata = build_cohort(sample_sheet, data_dir, out, value=value, lenient=lenient,
                             n_jobs=jobs)
    except OncoscaleError as exc:
        _fail(exc)
        return
    _log(f"{adata.n_obs} samples x {adata.n_vars} genes -> {out}")


@ae_app.command("train")
def ae_train(
    cohort: Path = typer.Argument(..., help="Cohort .h5ad from `oncoscale gdc build`."),
    out: Path = typer.Option(Path("ans-run"), "--out", "-o", help="Run directory."),
    n_latent: int = typer.Option(1000, help="Latent nodes."),
    epochs: int = typer.Option(60, help="Maximum epochs."),
    batch_size: int = typer.Option(32, help="Mini-batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    top_genes: int = typer.Option(5000, help="Keep this many most variable genes (0 = all)."),
    seed: int = typer.Option(0, help="Random seed."),
    nproc: int = typer.Option(1, help="Training ranks on this machine (>1: data-parallel "
                                      "training through torchrun)."),
    strategy: str = typer.Option("data", help="With --nproc > 1: data (replicas), model "
                                              "(pipeline stages) or hybrid."),
    partitions: int = typer.Option(1, help="Pipeline stages for --strategy hybrid."),
) -> None:
    """Train the autoencoder on the tumours outside the matched pairs, then embed the pairs.

    Writes OUT/train.h5ad, OUT/model/ (weights, checkpoint, history) and OUT/pairs.h5ad with
    the latent activations in obsm['X_ae']. Rerunning resumes from the last checkpoint.
    """
    from oncoscale.errors import OncoscaleError
    from oncoscale.pipeline import (
        embed,
        prepare,
        read_h5ad,
        split_cohorts,
        train_autoencoder,
        write_h5ad,
    )

    try:
        cfg = _config(n_latent=n_latent, epochs=epochs, batch_size=batch_size, lr=lr,
                      top_genes=top_genes or None, seed=seed, workers=nproc,
                      strategy=strategy, partitions=partitions)
        train, pairs = prepare(*split_cohorts(read_h5ad(cohort)), cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_h5ad(train, out / "train.h5ad")
        model = train_autoencoder(train, cfg, out / "model", log=_log)
        write_h5ad(embed(model, pairs), out / "pairs.h5ad")
    except OncoscaleError as exc:
        _fail(exc)
        return
    _log(f"pairs cohort with latent activations -> {out / 'pairs.h5ad'}")


def ans(
    run_dir: Path = typer.Argument(..., help="Run directory of `oncoscale ae train`."),
    bins: int = typer.Option(10, help="Histogram bins on [0, 1]."),
    seed: int = typer.Option(0, help="Seed for t-SNE."),
) -> None:
    """Rank latent nodes by how well they separate matched cancer and normal samples.

    Computes supervised node saliency (SNS) and normalised entropy difference (NED) for every
    node, compares the best node with PCA and t-SNE, and writes ans.csv and comparison.csv.
    """
    from oncoscale.errors import OncoscaleError
    from oncoscale.pipeline import analyse, read_h5ad, write_h5ad

    try:
        cfg = _config(bins=bins, seed=seed)
        result = analyse(read_h5ad(run_dir / "pairs.h5ad"), run_dir, cfg, log=_log)
        write_h5ad(result.pairs, run_dir / "pairs.h5ad")
    except OncoscaleError as exc:
        _fail(exc)
        return
    _log(f"node table -> {run_dir / 'ans.csv'}")


def report(
    run_dir: Path = typer.Argument(..., help="Run directory with ans.csv and pairs.h5ad."),
) -> None:
    """Write RUN_DIR/report.html: top nodes, histograms, PCA/t-SNE comparison, training."""
    from oncoscale.errors import OncoscaleError
    from oncoscale.pipeline import build_report

    try:
        path = build_report(run_dir)
    except OncoscaleError as exc:
        _fail(exc)
        return
    _log(f"report -> {path}")


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the main app."""
    app.command("demo")(demo)
    app.command("ans")(ans)
    app.command("report")(report)
    app.add_typer(gdc_app, name="gdc")
    app.add_typer(ae_app, name="ae")
