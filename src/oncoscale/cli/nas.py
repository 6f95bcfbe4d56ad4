"""CLI of the architecture search: ``oncoscale nas run | report | demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from oncoscale.cli._common import console
from oncoscale.cli._common import fail as _fail

nas_app = typer.Typer(help="Evolutionary architecture search for pathology patches "
                           "(accuracy and inference speed, NSGA-II, many workers).",
                      no_args_is_help=True)


def _print_front(run_dir: Path) -> None:
    import pandas as pd
    from rich.table import Table

    front = pd.read_csv(run_dir / "pareto.csv")
    t = Table(title=f"Pareto front ({run_dir / 'pareto.csv'})")
    for col in ("id", "accuracy", "auc", "latency_ms", "params", "origin"):
        t.add_column(col)
    for _, r in front.iterrows():
        t.add_row(str(r["id"]), f"{r['accuracy']:.4f}", f"{r['auc']:.4f}",
                  f"{r['latency_ms']:.3f}", str(r["params"]), str(r["origin"])[:40])
    Console().print(t)


@nas_app.command("run")
def run(
    config: Path = typer.Option(..., "--config", "-c", help="search.toml with the settings."),
    run_dir: Path = typer.Option(None, "--run-dir", "-o",
                                 help="Run directory (default: nas-run beside the config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in RUN_DIR "
                                "without re-training evaluated candidates."),
    progress: bool = typer.Option(True, help="Show the progress display."),
) -> None:
    """Run (or resume) a search; writes history.csv, pareto.csv and state.json."""
    from oncoscale.errors import OncoscaleError
    from oncoscale.nas.config import load_config
    from oncoscale.nas.search import Search

    try:
        cfg = load_config(config)
        rd = run_dir if run_dir is not None else Path(cfg.base_dir) / "nas-run"
        search = Search(cfg, rd, progress=progress).run(resume=resume)
    except OncoscaleError as exc:
        _fail(exc)
        return
    world = getattr(search, "_world", None)
    if world is None or world.rank == 0:  # comm worker ranks have nothing to show
        _print_front(rd)


@nas_app.command("report")
def report(
    run_dir: Path = typer.Option(..., "--run-dir", "-r", help="A search's run directory."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default RUN_DIR/report)."),
    select: str = typer.Option("front", help="'front', 'best', 'fastest' or ids like '3,7'."),
    max_export: int = typer.Option(5, help="With --select front: at most this many networks."),
) -> None:
    """Pareto plot, TorchScript + ONNX export of chosen networks, model cards."""
    from oncoscale.errors import OncoscaleError
    from oncoscale.nas.report import make_report

    try:
        summary = make_report(run_dir, out, select=select, max_export=max_export)
    except OncoscaleError as exc:
        _fail(exc)
        return
    console.print(f"Pareto plot: {summary['pareto_plot']}")
    for e in summary["exported"]:
        console.print(f"  net {e['id']}: val acc {e['val_accuracy']:.4f}, "
                      f"{e['latency_ms']:.3f} ms, {e['params']} params -> {e['dir']}")


@nas_app.command("demo")
def demo(
    out: Path = typer.Option(Path("nas-demo"), "--out", "-o", help="Output folder."),
    evaluations: int = typer.Option(32, help="Candidates to train (baselines included)."),
    workers: int = typer.Option(2, help="Worker processes (1 torch thread each)."),
    patches: int = typer.Option(1200, help="Synthetic patches to write."),
    seed: int = typer.Option(0, help="Seed of data and search."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo."),
    progress: bool = typer.Option(True, help="Show the progress display."),
) -> None:
    """Short search on synthetic TIL patches (PNG folder), then the report. ~3-5 min, 2 cores."""
    from oncoscale.errors import OncoscaleError
    from oncoscale.nas.demo import demo as run_demo

    try:
        summary = run_demo(out, n_patches=patches, evaluations=evaluations, workers=workers,
                           seed=seed, progress=progress, resume=resume)
    except OncoscaleError as exc:
        _fail(exc)
        return
    _print_front(Path(summary["run_dir"]))
    console.print(f"Pareto plot: {summary['pareto_plot']}")
    for e in summary["exported"]:
        console.print(f"  exported net {e['id']} -> {e['dir']} (model.pt, model.onnx, "
                      "model_card.md)")


def register(app: typer.Typer) -> None:
    """Add the ``nas`` command group to the oncoscale app."""
    app.add_typer(nas_app, name="nas")
