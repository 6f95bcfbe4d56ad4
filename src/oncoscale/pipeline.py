"""The normal-vs-cancer pipeline (ANS): GDC files -> autoencoder -> node saliency -> report.

Each stage is a function that reads and writes files in one run directory, so the CLI can run
the stages one at a time (``oncoscale gdc build``, ``ae train``, ``ans``, ``report``) or all at
once (``oncoscale demo``), and an interrupted run picks up from the last finished stage.

Run directory layout::

    cohort.h5ad        every sample read from the GDC files (raw values, float32)
    train.h5ad         the training cohort (tumours outside the pairs), preprocessed
    pairs.h5ad         matched tumour/normal pairs, preprocessed; obsm X_ae, X_pca, X_tsne
    model/             autoencoder.pt (weights + config), checkpoint.pt, history.csv
    ans.csv            one row per latent node (oncoscale.saliency.ans)
    comparison.csv     ANS best node vs best principal component vs t-SNE map
    cube.duckdb        topology datacube of the pairs' latent space (when built)
    report.html        self-contained report
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oncoscale._io import atomic_path, atomic_write_text
from oncoscale.errors import ConfigurationError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad
    import torch

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class PipelineConfig:
    """Settings of the ANS pipeline; defaults follow the published GDC setup where they can.

    Attributes
    ----------
    value: expression column of STAR-Counts files (``fpkm_uq_unstranded`` as in GDC's UQ-FPKM).
    gene_types: keep only genes of these types (``None`` keeps all).
    top_genes: keep the ``top_genes`` most variable genes of the training cohort (``None``: all).
    n_latent: autoencoder latent width (1000 in the published setup).
    epochs, batch_size, lr: training; Adam with learning rate ``lr``.
    validation: fraction of the training cohort held out for early stopping.
    patience: early-stopping patience in epochs.
    bins: ANS histogram bins B.
    seed: seeds data splits, weights, shuffling, t-SNE.
    workers: ranks for training (1: one process; >1: local ranks through torchrun).
    strategy, partitions: how the ranks split the work (``oncoscale.parallel.fit``): "data"
        (every rank a replica), "model" (one pipeline of ``workers`` stages) or "hybrid"
        (``partitions`` stages x ``workers / partitions`` replicas).
    topology: build the latent-space datacube for the explorer.
    """

    value: str = "fpkm_uq_unstranded"
    gene_types: tuple[str, ...] | None = ("protein_coding",)
    top_genes: int | None = 5000
    n_latent: int = 1000
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    validation: float = 0.1
    patience: int = 8
    bins: int = 10
    seed: int = 0
    workers: int = 1
    strategy: str = "data"
    partitions: int = 1
    topology: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_latent", "epochs", "batch_size", "bins", "workers", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigurationError(f"{name}: expected a positive integer, found {v!r}")
        if self.top_genes is not None and self.top_genes <= 0:
            raise ConfigurationError(f"top_genes: expected a positive integer or None, "
                                     f"found {self.top_genes!r}")
        if not 0.0 <= self.validation < 1.0:
            raise ConfigurationError(f"validation: expected a fraction in [0, 1), "
                                     f"found {self.validation}")
        if self.strategy not in ("data", "model", "hybrid"):
            raise ConfigurationError(f"strategy: expected 'data', 'model' or 'hybrid', "
                                     f"found {self.strategy!r}")
        if self.partitions <= 0 or self.workers % self.partitions:
            raise ConfigurationError(f"partitions: expected a divisor of workers="
                                     f"{self.workers}, found {self.partitions}")
        if not self.lr > 0:
            raise ConfigurationError(f"lr: expected a positive learning rate, found {self.lr}")


# ------------------------------------------------------------------------------------------
# stage 1: read GDC files
# ------------------------------------------------------------------------------------------
def build_cohort(sample_sheet: str | Path, data_dir: str | Path | None, out: str | Path, *,
                 value: str = "fpkm_uq_unstranded", lenient: bool = False, n_jobs: int = 2,
                 progress: bool = True) -> ad.AnnData:
    """Read every file named by a GDC sample sheet into one AnnData and cache it to ``out``.

    ``out`` (``.h5ad``) is written atomically and reused when the inputs are unchanged.
    """
    from oncoscale.expression import read_gdc

    return read_gdc(sample_sheet, data_dir=data_dir, value=value, lenient=lenient,
                    cache=Path(out), n_jobs=n_jobs, progress=progress)


def split_cohorts(adata: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Split a cohort into (training tumours, matched tumour/normal pairs).

    The pairs cohort holds, for every participant with both a primary tumour (01) and a solid
    tissue normal (11), those two samples; ``obs["label"]`` is 1 for cancer, 0 for normal and
    ``obs["pair"]`` names the participant. The training cohort is every tumour sample of the
    other participants, so the autoencoder never sees the pairs it is evaluated on.
    """
    from oncoscale.expression import pair_tumour_normal

    obs = adata.obs
    for col in ("case", "sample", "sample_type_code"):
        if col not in obs.columns:
            raise InputError(f"cohort: expected obs column {col!r} (from read_gdc), found "
                             f"columns {list(obs.columns)}")
    pairs = pair_tumour_normal(obs)
    if len(pairs) == 0:
        raise InputError("cohort: no participant has both a primary tumour (01) and a solid "
                         "tissue normal (11) sample, so there is nothing to compare")
    tumour_rows = pairs["tumour"].to_numpy()
    normal_rows = pairs["normal"].to_numpy()
    pair_names = np.concatenate([obs.index.get_indexer(tumour_rows),
                                 obs.index.get_indexer(normal_rows)])
    if (pair_names < 0).any():
        raise InputError("cohort: the pairing named samples that are not in the cohort")
    paired = adata[pair_names].copy()
    paired.obs["label"] = np.r_[np.ones(len(pairs), np.int8), np.zeros(len(pairs), np.int8)]
    cases = pairs.index.to_numpy()
    paired.obs["pair"] = np.r_[cases, cases]
    paired_cases = set(cases)
    code = obs["sample_type_code"].astype(str).str.zfill(2)
    is_tumour = code.str[:2].astype(int).between(1, 9)
    train_mask = is_tumour.to_numpy() & ~obs["case"].isin(paired_cases).to_numpy()
    train = adata[train_mask].copy()
    if train.n_obs < 2:
        raise InputError(f"cohort: expected tumour samples outside the pairs to train on, "
                         f"found {train.n_obs}")
    return train, paired


def prepare(train: ad.AnnData, pairs: ad.AnnData, config: PipelineConfig
            ) -> tuple[ad.AnnData, ad.AnnData]:
    """log2(1+x), gene filters and [0,1] scaling fitted on ``train`` and applied to ``pairs``."""
    from oncoscale.expression import preprocess

    train_pp, pairs_pp = preprocess(train, pairs, gene_types=config.gene_types,
                                    top_n_variance=config.top_genes)
    return train_pp, pairs_pp


# ------------------------------------------------------------------------------------------
# stage 2: train the autoencoder
# ------------------------------------------------------------------------------------------
def _dense(X: Any) -> np.ndarray:
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32))


def train_autoencoder(train: ad.AnnData, config: PipelineConfig, model_dir: str | Path, *,
                      progress: bool = True, log: Log = _quiet) -> torch.nn.Module:
    """Train the GDC autoencoder on the (preprocessed) training cohort.

    Checkpoints go to ``model_dir/checkpoint.pt`` every epoch, so a rerun resumes; the final
    weights and config land in ``model_dir/autoencoder.pt``, the history in ``history.csv``.
    """
    import torch

    from oncoscale.models.autoencoder import Autoencoder, pearson_correlation
    from oncoscale.parallel import fit
    from oncoscale.parallel.sequential import fused_optimizer

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if config.workers > 1:
        return _train_on_ranks(train, config, model_dir, log=log)
    X = _dense(train.X)
    torch.manual_seed(config.seed)
    model = Autoencoder(X.shape[1], config.n_latent)
    lr = config.lr
    t0 = time.perf_counter()
    result = fit(
        model, X, torch.nn.functional.mse_loss,
        optimizer=lambda params: fused_optimizer("adam", params, lr=lr),
        epochs=config.epochs, batch_size=config.batch_size,
        validation=config.validation or None,
        metrics={"pearson": pearson_correlation},
        early_stopping=config.patience if config.validation else None,
        checkpoint_dir=model_dir, seed=config.seed, verbose=progress,
    )
    model = result.model
    seconds = time.perf_counter() - t0
    history: pd.DataFrame = result.history
    with atomic_path(model_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    save_model(model, model_dir / "autoencoder.pt", genes=list(train.var_names),
               config=config)
    last = history.iloc[-1] if len(history) else None
    if last is not None:
        log(f"trained {len(history)} epochs in {seconds:.1f} s; best epoch {result.best_epoch}; "
            f"train pearson {last.get('train_pearson', float('nan')):.3f}, "
            f"val pearson {last.get('val_pearson', float('nan')):.3f}")
    return model


def _train_on_ranks(train: ad.AnnData, config: PipelineConfig, model_dir: Path, *,
                    log: Log = _quiet) -> torch.nn.Module:
    """Train with ``config.workers`` local ranks (torchrun, data parallel) and load the result.

    The ranks run :func:`_rank_main` (``python -m oncoscale.pipeline``); each reads the
    training matrix, trains its replica with :func:`oncoscale.parallel.fit` (gradients
    allreduced every step, per-rank checkpoints in ``model_dir``), and rank 0 writes
    ``autoencoder.pt`` and ``history.csv``. The parallel engine has no validation split or
    early stopping: every epoch is trained.
    """
    import subprocess
    import sys

    X = _dense(train.X)
    data_path = model_dir / "train_X.npy"
    with atomic_path(data_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, X)
    cfg_path = atomic_write_text(model_dir / "config.json",
                                 json.dumps({**asdict(config), "genes": list(train.var_names)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={config.workers}", "-m", "oncoscale.pipeline",
           str(data_path), str(cfg_path), str(model_dir)]
    log(f"training on {config.workers} ranks ({config.strategy} parallel): "
        f"{' '.join(cmd[2:])}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ConfigurationError(f"training on {config.workers} ranks failed "
                                 f"(exit {proc.returncode}):\n{tail}")
    model, _ = load_model(model_dir / "autoencoder.pt")
    history = pd.read_csv(model_dir / "history.csv")
    if len(history):
        log(f"trained {len(history)} epochs on {config.workers} ranks; last train loss "
            f"{history['train_loss'].iloc[-1]:.5f}")
    return model


def _rank_main(argv: list[str]) -> None:
    """One rank of :func:`_train_on_ranks`: ``python -m oncoscale.pipeline X.npy cfg.json dir``."""
    import torch

    from oncoscale.models.autoencoder import Autoencoder
    from oncoscale.parallel import fit
    from oncoscale.parallel.sequential import fused_optimizer

    data_path, cfg_path, model_dir = Path(argv[0]), Path(argv[1]), Path(argv[2])
    raw = json.loads(cfg_path.read_text())
    genes = raw.pop("genes")
    raw["gene_types"] = tuple(raw["gene_types"]) if raw["gene_types"] else None
    config = PipelineConfig(**raw)
    X = np.load(data_path)
    torch.manual_seed(config.seed)
    model = Autoencoder(X.shape[1], config.n_latent)
    lr = config.lr
    P = {"data": 1, "model": config.workers}.get(config.strategy, config.partitions)
    result = fit(model, X, torch.nn.functional.mse_loss,
                 optimizer=lambda params: fused_optimizer("adam", params, lr=lr),
                 epochs=config.epochs, batch_size=config.batch_size, strategy=config.strategy,
                 num_partitions=P, num_replicas=config.workers // P,
                 checkpoint_dir=model_dir / "ranks", gather_on_rank0=True,
                 seed=config.seed, verbose=False)
    if int(os.environ.get("RANK", "0")) == 0:
        with atomic_path(model_dir / "history.csv") as tmp:
            result.history.to_csv(tmp, index=False)
        save_model(result.model, model_dir / "autoencoder.pt", genes=genes, config=config)


def save_model(model: torch.nn.Module, path: str | Path, *, genes: list[str],
               config: PipelineConfig) -> Path:
    """Save autoencoder weights with the gene order and config needed to reuse them."""
    import torch

    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "n_inputs": int(model.n_inputs), "n_latent": int(model.n_latent),
        "genes": genes, "config": asdict(config),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(path: str | Path) -> tuple[torch.nn.Module, list[str]]:
    """Load an autoencoder saved by :func:`save_model`; returns (model, gene order)."""
    import torch

    from oncoscale.models.autoencoder import Autoencoder

    path = Path(path)
    if not path.is_file():
        raise InputError("no such model file (train one with `oncoscale ae train`)", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        model = Autoencoder(payload["n_inputs"], payload["n_latent"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, EOFError, OSError,
            pickle.UnpicklingError) as exc:
        raise InputError(f"not an oncoscale autoencoder file ({exc})", path=path) from exc
    model.eval()
    return model, list(payload["genes"])


def embed(model: torch.nn.Module, pairs: ad.AnnData, genes: list[str] | None = None
          ) -> ad.AnnData:
    """Store the latent activations of ``pairs`` in ``obsm["X_ae"]`` (n_samples x n_latent)."""
    from oncoscale.models.autoencoder import latent

    if genes is not None and list(pairs.var_names) != list(genes):
        missing = [g for g in genes if g not in pairs.var_names]
        if missing:
            raise InputError(f"pairs cohort lacks {len(missing)} genes the model was trained "
                             f"on (first: {missing[:3]})")
        pairs = pairs[:, genes].copy()
    pairs.obsm["X_ae"] = latent(model, _dense(pairs.X))
    return pairs


# ------------------------------------------------------------------------------------------
# stage 3: node saliency and the comparison with PCA / t-SNE
# ------------------------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    """Tables and embeddings of stage 3 (also written to the run directory)."""

    ans: pd.DataFrame
    comparison: pd.DataFrame
    pairs: ad.AnnData


def analyse(pairs: ad.AnnData, out_dir: str | Path, config: PipelineConfig, *,
            log: Log = _quiet) -> AnalysisResult:
    """ANS on ``obsm["X_ae"]`` + PCA/t-SNE comparison; writes ans.csv, comparison.csv."""
    from oncoscale import saliency

    out_dir = Path(out_dir)
    if "X_ae" not in pairs.obsm:
        raise InputError("pairs cohort has no obsm['X_ae'] (run `oncoscale ae train` first)")
    labels = pairs.obs["label"].to_numpy().astype(int)
    acts = np.asarray(pairs.obsm["X_ae"], dtype=np.float64)
    table = saliency.ans(acts, labels, bins=config.bins)
    table = table.sort_values("sns_binary", kind="stable")
    pairs.uns["ans_top_nodes"] = table.index.to_numpy()[:20].astype(np.int64)
    with atomic_path(out_dir / "ans.csv") as tmp:
        table.to_csv(tmp)
    cmp = saliency.compare(acts, labels, ans_table=table, features=_dense(pairs.X),
                           seed=config.seed, bins=config.bins)
    pairs.obsm["X_pca"] = cmp.pca
    pairs.obsm["X_tsne"] = cmp.tsne
    with atomic_path(out_dir / "comparison.csv") as tmp:
        cmp.table.to_csv(tmp)
    names = ("normal", "cancer")
    _save_png(saliency.plot_node_histograms(acts, labels, ans_table=table, top=8,
                                            bins=config.bins, class_names=names),
              out_dir / "figures" / "node_histograms.png")
    _save_png(saliency.plot_saliency_curves(table), out_dir / "figures" / "saliency_curves.png")
    _save_png(saliency.plot_comparison(cmp, class_names=names),
              out_dir / "figures" / "comparison.png")
    best = int(table.index[0])
    first = table.iloc[0]
    log(f"best node {best}: sns_binary {first['sns_binary']:.3f}, "
        f"AUC {first['auc']:.3f} (separation {first['auc_separation']:.3f})")
    return AnalysisResult(ans=table, comparison=cmp.table, pairs=pairs)


def _save_png(fig: Any, path: Path) -> Path:
    from oncoscale.saliency import figure_to_png

    with atomic_path(path) as tmp:
        tmp.write_bytes(figure_to_png(fig, dpi=110, close=True))
    return path


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write an AnnData atomically."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an AnnData with a clear error when the file is missing or not h5ad."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py raises several types for a foreign file
        raise InputError(f"not a readable .h5ad file ({type(exc).__name__}: {exc})",
                         path=path) from exc


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (what the run did and found)."""
    return atomic_write_text(Path(out_dir) / "summary.json",
                             json.dumps(summary, indent=2, default=str))


# ------------------------------------------------------------------------------------------
# stage 4: the report
# ------------------------------------------------------------------------------------------
def build_report(out_dir: str | Path, *, title: str = "Autoencoder node saliency: "
                 "normal vs cancer") -> Path:
    """Assemble ``report.html`` from a run directory's outputs (self-contained)."""
    from oncoscale.report import Report

    out_dir = Path(out_dir)
    pairs = read_h5ad(out_dir / "pairs.h5ad")
    for name in ("ans.csv", "comparison.csv"):
        if not (out_dir / name).is_file():
            raise InputError(f"missing {name} (run `oncoscale ans` first)", path=out_dir)
    table = pd.read_csv(out_dir / "ans.csv", index_col=0)
    comparison = pd.read_csv(out_dir / "comparison.csv", index_col=0)
    summary = {}
    if (out_dir / "summary.json").is_file():
        summary = json.loads((out_dir / "summary.json").read_text())
    acts = np.asarray(pairs.obsm["X_ae"], dtype=np.float64)
    best = int(table.index[0])
    row = table.iloc[0]

    r = Report(title, subtitle=f"{pairs.n_obs // 2} matched tumour/normal pairs, "
               f"{acts.shape[1]} latent nodes, {pairs.n_vars} genes")
    r.section("Summary")
    r.text(
        f"Node {best} separates cancer from matched normal samples best by supervised node "
        f"saliency (SNS, binary reference, lower is better: {row['sns_binary']:.3f}). Its "
        f"activation is {'higher' if row['mean1'] > row['mean0'] else 'lower'} in cancer "
        f"(mean {row['mean1']:.3f} vs {row['mean0']:.3f} in normal); one threshold on it "
        f"classifies {row['threshold_accuracy']:.1%} of samples correctly; ROC AUC "
        f"{row['auc']:.3f} (separation max(AUC, 1-AUC) = {row['auc_separation']:.3f}). "
        f"NED below both class NEDs (the published sign of a good "
        f"classifier node): {'yes' if bool(row['ned_below_classes']) else 'no'}."
    )
    if summary:
        r.key_values({k: v for k, v in summary.items() if not isinstance(v, dict | list)})
    r.section("Top nodes by supervised node saliency")
    cols = [c for c in ("sns_binary", "sns_increasing", "ned", "ned0", "ned1",
                        "ned_below_classes", "mean0", "mean1", "threshold_accuracy", "auc",
                        "auc_separation") if c in table.columns]
    r.table(table[cols].head(20), caption="20 best nodes (all nodes in ans.csv)")
    for name, caption in (
        ("node_histograms.png", "Activations of the top nodes: stacked histograms of cancer "
                                "and normal samples in the ANS bins."),
        ("saliency_curves.png", "SNS and NED over nodes ranked by SNS."),
    ):
        if (out_dir / "figures" / name).is_file():
            r.figure((out_dir / "figures" / name).read_bytes(), caption=caption)
    r.section("Comparison with PCA and t-SNE")
    r.text("The same pairs cohort, embedded by PCA of the expression profiles and by t-SNE. "
           "For each method, the coordinate that separates the classes best: AUC of that single "
           "coordinate, cross-validated accuracy of a classifier on it, and the silhouette "
           "score of the labels.")
    r.table(comparison, caption="Separation of cancer and normal samples")
    fig_path = out_dir / "figures" / "comparison.png"
    if fig_path.is_file():
        r.figure(fig_path.read_bytes(),
                 caption="The two best ANS nodes, PC1 vs PC2 of the expression profiles and "
                         "the t-SNE map, coloured by sample type.")
    hist_path = out_dir / "model" / "history.csv"
    if hist_path.is_file():
        history = pd.read_csv(hist_path)
        r.section("Autoencoder training")
        r.figure(_history_figure(history), caption="Training and validation loss per epoch.")
        r.table(history.tail(5), caption="Last epochs", index=False)
    cube = out_dir / "cube.duckdb"
    if cube.is_file():
        r.section("Topology of the latent space")
        r.text("A topological datacube of the pairs' latent space (f = the best node's "
               "activation) was written to cube.duckdb. Explore it interactively with:")
        r.html(f"<pre>oncoscale explore {cube}</pre>")
        r.link("cube.duckdb", "cube.duckdb")
    r.section("Files")
    r.text("ans.csv (all nodes), comparison.csv, pairs.h5ad (obsm X_ae, X_pca, X_tsne; continue "
           "in scanpy), train.h5ad, model/autoencoder.pt, summary.json.")
    return r.write(out_dir / "report.html")


def _history_figure(history: pd.DataFrame) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(history["epoch"], history["train_loss"], label="train")
    if "val_loss" in history and history["val_loss"].notna().any():
        ax.plot(history["epoch"], history["val_loss"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------
# everything: the demo
# ------------------------------------------------------------------------------------------
def run(sample_sheet: str | Path, data_dir: str | Path | None, out_dir: str | Path,
        config: PipelineConfig | None = None, *, progress: bool = True,
        log: Log = _quiet) -> dict[str, Any]:
    """Run every stage on GDC files; returns the summary (also in ``summary.json``)."""
    config = config or PipelineConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = build_cohort(sample_sheet, data_dir, out_dir / "cohort.h5ad", value=config.value,
                          progress=progress)
    log(f"read {cohort.n_obs} samples x {cohort.n_vars} genes")
    train, pairs = split_cohorts(cohort)
    train, pairs = prepare(train, pairs, config)
    write_h5ad(train, out_dir / "train.h5ad")
    log(f"training cohort {train.n_obs} tumours, pairs cohort {pairs.n_obs // 2} pairs, "
        f"{train.n_vars} genes after filtering")
    model = train_autoencoder(train, config, out_dir / "model", progress=progress, log=log)
    pairs = embed(model, pairs)
    result = analyse(pairs, out_dir, config, log=log)
    pairs = result.pairs
    if config.topology:
        _build_cube(pairs, result.ans, out_dir, config, progress=progress, log=log)
    write_h5ad(pairs, out_dir / "pairs.h5ad")
    top = result.ans.head(5)
    summary = {
        "samples": int(cohort.n_obs), "genes": int(train.n_vars),
        "training_tumours": int(train.n_obs), "pairs": int(pairs.n_obs // 2),
        "latent_nodes": int(config.n_latent), "best_node": int(top.index[0]),
        "best_node_auc": float(top.iloc[0]["auc"]),
        "best_node_auc_separation": float(top.iloc[0]["auc_separation"]),
        "best_node_higher_in": "cancer" if top.iloc[0]["mean1"] > top.iloc[0]["mean0"]
        else "normal",
        "best_node_sns_binary": float(top.iloc[0]["sns_binary"]),
        "top_nodes": [int(i) for i in top.index],
        "top": [{"node": int(i), "sns_binary": float(r["sns_binary"]), "auc": float(r["auc"]),
                 "threshold_accuracy": float(r["threshold_accuracy"]),
                 "higher_in": "cancer" if r["mean1"] > r["mean0"] else "normal"}
                for i, r in top.iterrows()],
        "seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(config),
    }
    write_summary(out_dir, summary)
    report = build_report(out_dir)
    summary["report"] = str(report)
    return summary


def _build_cube(pairs: ad.AnnData, table: pd.DataFrame, out_dir: Path, config: PipelineConfig,
                *, progress: bool = True, log: Log = _quiet) -> Path | None:
    """Topological datacube of the latent space (PCA-reduced), f = best node's activation."""
    try:
        from oncoscale import topology
    except ImportError:  # pragma: no cover - topology is part of the package
        return None
    best = int(table.index[0])
    acts = np.asarray(pairs.obsm["X_ae"], dtype=np.float64)
    from sklearn.decomposition import PCA

    n_comp = min(5, acts.shape[0] - 1, acts.shape[1])
    X = PCA(n_components=n_comp, random_state=config.seed).fit_transform(acts)
    f = acts[:, best]
    path = topology.build(X, f, out=out_dir / "cube.duckdb",
                          k=min(15, max(2, X.shape[0] - 1)), progress=progress,
                          dims=[f"PC{i + 1}" for i in range(n_comp)], f_name=f"node_{best}")
    log(f"topology datacube of the latent space: {path}")
    return Path(path)


#: The demo's synthetic project: 3 tumour types, 600 unpaired tumours, 100 matched pairs; the
#: tumour-vs-normal program covers 15% of protein-coding genes (TCGA tumour/normal differences
#: are large), so an autoencoder trained only on tumours learns nodes that follow it.
DEMO_SYNTHETIC: dict[str, Any] = {"tumour_program_fraction": 0.15, "n_jobs": 2}


def demo(out_dir: str | Path, config: PipelineConfig | None = None, *, progress: bool = True,
         log: Log = _quiet, **synthetic: Any) -> dict[str, Any]:
    """Generate the embedded synthetic GDC project and run the whole pipeline on it."""
    from oncoscale.datasets.gdc import make_synthetic_project

    out_dir = Path(out_dir)
    params = {**DEMO_SYNTHETIC, **synthetic}
    project = make_synthetic_project(out_dir / "gdc-data", seed=(config or PipelineConfig()).seed,
                                     **params)
    log(f"synthetic GDC project written to {project.data_dir}")
    return run(project.sample_sheet, project.data_dir, out_dir, config, progress=progress,
               log=log)


if __name__ == "__main__":  # one rank of a multi-rank training run
    import sys

    _rank_main(sys.argv[1:])  # oncoscale.comm shuts its world down at exit
