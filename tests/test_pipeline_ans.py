"""End-to-end tests of the normal-vs-cancer pipeline on a small synthetic GDC project."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oncoscale import pipeline as pl
from oncoscale.cli import app
from oncoscale.errors import ConfigurationError, InputError

SMALL = {"n_genes": 900, "n_train_tumours": 150, "n_pairs": 30, "n_jobs": 1}


def _config(**kw) -> pl.PipelineConfig:
    base = {"n_latent": 48, "epochs": 40, "batch_size": 16, "lr": 3e-3, "top_genes": None,
            "patience": 10, "topology": True}
    base.update(kw)
    return pl.PipelineConfig(**base)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = pl.demo(out, _config(), progress=False, **SMALL)
    return out, summary


def test_demo_writes_every_output(demo_run):
    out, summary = demo_run
    for name in ("cohort.h5ad", "train.h5ad", "pairs.h5ad", "ans.csv", "comparison.csv",
                 "summary.json", "report.html", "cube.duckdb", "model/autoencoder.pt",
                 "model/history.csv", "figures/comparison.png"):
        assert (out / name).is_file(), name
    # no temporary leftovers from atomic writes
    assert not list(out.glob(".*.tmp"))
    pairs = ad.read_h5ad(out / "pairs.h5ad")
    assert pairs.n_obs == 2 * SMALL["n_pairs"]
    assert pairs.obsm["X_ae"].shape == (pairs.n_obs, 48)
    assert pairs.obsm["X_pca"].shape[0] == pairs.n_obs
    assert pairs.obsm["X_tsne"].shape == (pairs.n_obs, 2)
    assert sorted(np.unique(pairs.obs["label"])) == [0, 1]
    # each participant contributes exactly one tumour and one normal
    counts = pairs.obs.groupby("pair", observed=True)["label"].agg(["sum", "count"])
    assert (counts["sum"] == 1).all() and (counts["count"] == 2).all()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["best_node"] == summary["best_node"]


def test_training_cohort_excludes_the_pairs(demo_run):
    out, _ = demo_run
    train = ad.read_h5ad(out / "train.h5ad")
    pairs = ad.read_h5ad(out / "pairs.h5ad")
    assert not set(train.obs["case"]) & set(pairs.obs["case"])
    assert (train.obs["sample_type_code"].astype(str) == "01").all()
    # scaling fitted on the training cohort: its values span [0, 1] per gene
    X = np.asarray(train.X)
    assert X.min() >= 0 and X.max() <= 1
    np.testing.assert_allclose(X.max(axis=0)[X.max(axis=0) > 0], 1.0, atol=1e-6)


def test_best_node_separates_tumour_from_normal(demo_run):
    out, summary = demo_run
    table = pd.read_csv(out / "ans.csv", index_col=0)
    assert len(table) == 48
    assert table["sns_binary"].is_monotonic_increasing
    # a real property of a trained model on data with a tumour program, not a fixed number
    top = table.head(5)
    assert top["auc_separation"].max() > 0.8
    assert summary["best_node"] == int(table.index[0])
    pairs = ad.read_h5ad(out / "pairs.h5ad")
    labels = pairs.obs["label"].to_numpy()
    best = pairs.obsm["X_ae"][:, summary["best_node"]]
    # the table's AUC is the AUC of that node's activations
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, best) == pytest.approx(table.iloc[0]["auc"], abs=1e-6)


def test_report_is_self_contained(demo_run):
    out, summary = demo_run
    html = (out / "report.html").read_text()
    assert f"Node {summary['best_node']}" in html
    assert html.count("data:image/png;base64,") >= 4
    # no external resources: every src= is a data URI
    for src in re.findall(r'src="([^"]+)"', html):
        assert src.startswith("data:"), src
    assert "oncoscale explore" in html
    cmp = pd.read_csv(out / "comparison.csv", index_col=0)
    assert {"ans_node", "pca_best", "tsne"} <= set(cmp.index)


def test_rerun_resumes_from_checkpoint(demo_run, tmp_path):
    out, summary = demo_run
    history = pd.read_csv(out / "model" / "history.csv")
    again = pl.run(next((out / "gdc-data").glob("*sample_sheet*.tsv")),
                   out / "gdc-data" / "data" if (out / "gdc-data" / "data").is_dir() else None,
                   out, _config(), progress=False)
    # the checkpoint already holds the finished run: no epoch is trained again
    assert len(pd.read_csv(out / "model" / "history.csv")) == len(history)
    assert again["best_node"] == summary["best_node"]


def test_split_cohorts_needs_pairs(demo_run):
    out, _ = demo_run
    cohort = ad.read_h5ad(out / "cohort.h5ad")
    tumours_only = cohort[cohort.obs["sample_type_code"].astype(str) == "01"].copy()
    with pytest.raises(InputError, match="solid tissue normal"):
        pl.split_cohorts(tumours_only)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigurationError, match="n_latent"):
        pl.PipelineConfig(n_latent=0)
    with pytest.raises(ConfigurationError, match="validation"):
        pl.PipelineConfig(validation=1.5)


def test_load_model_rejects_foreign_file(tmp_path):
    bad = tmp_path / "autoencoder.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="autoencoder.pt"):
        pl.load_model(bad)
    with pytest.raises(InputError, match="no such model"):
        pl.load_model(tmp_path / "missing.pt")


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["ans", str(tmp_path)])
    assert res.exit_code == 2
    assert "pairs.h5ad" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["gdc", "build", str(tmp_path / "nope.tsv")])
    assert res.exit_code == 2
    assert "nope.tsv" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2


def test_cli_stages_match_the_library(demo_run, tmp_path):
    out, summary = demo_run
    runner = CliRunner()
    res = runner.invoke(app, ["ae", "train", str(out / "cohort.h5ad"), "-o", str(tmp_path),
                              "--n-latent", "16", "--epochs", "3", "--top-genes", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["ans", str(tmp_path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "ans.csv")) == 16
    assert (tmp_path / "report.html").is_file()


@pytest.mark.multiproc
@pytest.mark.parametrize("strategy", ["data", "model"])
def test_training_on_two_ranks(demo_run, tmp_path, strategy):
    """`--workers 2`: real torchrun ranks train the autoencoder data-parallel."""
    out, _ = demo_run
    train = ad.read_h5ad(out / "train.h5ad")
    cfg = _config(workers=2, epochs=4, n_latent=16, strategy=strategy)
    model = pl.train_autoencoder(train, cfg, tmp_path / "model", progress=False)
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    loaded, genes = pl.load_model(tmp_path / "model" / "autoencoder.pt")
    assert genes == list(train.var_names)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    pairs = pl.embed(loaded, ad.read_h5ad(out / "pairs.h5ad"), genes)
    assert pairs.obsm["X_ae"].shape == (pairs.n_obs, 16)
