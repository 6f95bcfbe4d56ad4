"""CLI of the topology area: ``oncoscale topo build`` and ``oncoscale explore``."""

from __future__ import annotations

from pathlib import Path

import typer

from oncoscale.cli._common import console
from oncoscale.cli._common import fail as _fail

topo_app = typer.Typer(help="Topological exploration of a function over high-dimensional "
                            "samples: neighbourhood graph, Morse-Smale complex, datacube.",
                       no_args_is_help=True)


@topo_app.command("build")
def build_cmd(
    data: Path = typer.Argument(..., help="Samples: .parquet, .csv, .npy or .h5ad."),
    x: str = typer.Option(None, "--x", help="Columns of X: names (parquet/csv, comma-separated),"
                          " indices or ranges a:b (npy), X | obsm:KEY | var names (h5ad). "
                          "Default: every numeric column except f."),
    f: str = typer.Option(..., "--f", help="The function: a column name (parquet/csv), a column"
                          " index (npy), obs:COLUMN | obsm:KEY:J | a var name (h5ad)."),
    out: Path = typer.Option(Path("cube.duckdb"), "--out", "-o", help="Cube file to write."),
    k: int = typer.Option(15, help="kNN candidates per sample."),
    beta: float = typer.Option(1.0, help="β of the β-skeleton (1 = Gabriel graph)."),
    relaxed: bool = typer.Option(True, help="Relaxed pruning (test only a sample's own "
                                 "candidates)."),
    bins: int = typer.Option(128, help="Histogram resolution per axis."),
    hist3d: bool = typer.Option(False, help="Also store 3-D histograms (brushing of scatter "
                                "plots and parallel coordinates on a third axis)."),
    bins3d: int = typer.Option(16, help="Resolution of the 3-D histograms."),
    base_persistence: float = typer.Option(0.0, help="Leaves = segments at this normalised "
                                           "persistence (0 = finest)."),
    knn: str = typer.Option("auto", help="kNN search: auto, exact or hnsw."),
    jobs: int = typer.Option(-1, help="Processes for the pruning (-1: all cores)."),
    graph_out: Path = typer.Option(None, help="Also keep the edge list as this Parquet file."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    hierarchy: str = typer.Option("elder", help="Persistence hierarchy: elder (elder rule) or "
                                  "topopy (topopy 1.0.4's cancellation semantics)."),
    ngl: bool = typer.Option(False, help="nglpy's strict graph (needs --no-relaxed)."),
    comm: str = typer.Option("auto", help="Spread the graph over the ranks of an "
                             "oncoscale.comm world: auto (when launched by torchrun, mpiexec "
                             "or srun with more than one rank), torch, mpi, or none."),
) -> None:
    """Build a topology cube (graph -> Morse-Smale complex -> DuckDB datacube).

    Under torchrun / mpiexec / srun every rank runs this same command: the kNN queries and
    the pruning are split over the ranks, the edge list is gathered, and rank 0 writes the
    cube.
    """
    from oncoscale.errors import ConfigurationError, OncoscaleError
    from oncoscale.topology.build import build, load_inputs

    world = None
    try:
        if comm not in ("auto", "torch", "mpi", "none"):
            raise ConfigurationError(f"--comm must be auto, torch, mpi or none, found {comm!r}")
        if comm != "none":
            from oncoscale.comm import discover, init

            if comm != "auto" or discover().size > 1:
                world = init("auto" if comm == "auto" else comm)
        lead = world is None or world.rank == 0
        X, fv, names, fname = load_inputs(data, x, f)
        if lead:
            ranks = "" if world is None else f", graph over {world.size} ranks"
            console.print(f"{data}: {X.shape[0]} samples x {X.shape[1]} dims, f = {fname}"
                          f"{ranks}")
        path = build(X, fv, out, k=k, beta=beta, relaxed=relaxed, bins=bins, hist3d=hist3d,
                     bins3d=bins3d, dims=names, f_name=fname, base_persistence=base_persistence,
                     knn_method=knn, n_jobs=jobs, graph_out=graph_out, progress=progress,
                     extra_meta={"source": str(data)}, world=world, hierarchy=hierarchy,
                     ngl=ngl)
    except OncoscaleError as exc:
        _fail(exc)
    finally:
        if world is not None:
            world.shutdown()
    if lead:
        console.print(f"wrote {path}  (explore it with: oncoscale explore {path})")


def explore_cmd(
    cube: Path = typer.Argument(..., help="A cube written by `oncoscale topo build`."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8050, min=0, max=65535, help="Port to listen on."),
) -> None:
    """Serve the web explorer of a topology cube (Ctrl-C to stop)."""
    from oncoscale.errors import OncoscaleError
    from oncoscale.topology.cube import Cube
    from oncoscale.topology.explorer import serve

    try:
        Cube(cube).close()  # a clear error before the server starts
        console.print(f"explorer of {cube} on http://{host}:{port}/")
        serve(cube, host=host, port=port)
    except OncoscaleError as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    """Add ``topo`` (build) and ``explore`` to the main app."""
    app.add_typer(topo_app, name="topo")
    app.command("explore")(explore_cmd)
