"""CLI of the communication layer: `oncoscale comm bench`, `oncoscale comm info`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

comm_app = typer.Typer(help="Sparse collectives (SparCML): benchmark and launch diagnostics.",
                       no_args_is_help=True)


@comm_app.command("bench")
def bench(
    quick: bool = typer.Option(False, "--quick", help="1M-entry vectors only, 3 repeats."),
    world_sizes: str = typer.Option("2,4", help="Comma-separated world sizes (torchrun jobs)."),
    sizes: str = typer.Option("", help="Comma-separated vector sizes (default 1M,10M; "
                                       "1M with --quick)."),
    repeats: int = typer.Option(0, help="Timed repeats per case (default 5, 3 with --quick)."),
    out: Path = typer.Option(Path("bench-out/comm.json"), "--out", "-o",
                             help="JSON output (written atomically)."),
) -> None:
    """Time sparse allreduce algorithms vs dense and gloo sparse COO (bytes vs the model)."""
    from oncoscale.comm.bench import run_benchmark

    run_benchmark(quick=quick, world_sizes=tuple(int(x) for x in world_sizes.split(",") if x),
                  sizes=tuple(int(x) for x in sizes.split(",") if x) or None,
                  repeats=repeats or None, out=out)


@comm_app.command("info")
def info() -> None:
    """Print what this process discovered from its launcher (rank, size, master address)."""
    from dataclasses import asdict

    from oncoscale.comm import discover

    typer.echo(json.dumps(asdict(discover()), indent=1))


def register(app: typer.Typer) -> None:
    """Add the `comm` command group to the main app."""
    app.add_typer(comm_app, name="comm")
