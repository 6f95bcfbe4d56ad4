"""`oncoscale bench AREA [ARGS...]`: run one benchmark script of the source checkout.

The benchmark scripts live in ``benchmarks/bench_<area>.py`` of the repository (they run our
code and the named baseline in the same run, print a table and write ``bench-out/<area>.json``).
Arguments after the area go to the script unchanged, e.g. ``oncoscale bench comm --quick``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from oncoscale.cli._common import console

#: the repository root when oncoscale runs from a source checkout (src layout)
_REPO = Path(__file__).resolve().parents[3]


def benchmark_scripts(root: Path = _REPO) -> dict[str, Path]:
    """Area name -> script path of every ``benchmarks/bench_<area>.py`` under ``root``."""
    folder = root / "benchmarks"
    return {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))}


def register(app: typer.Typer) -> None:
    """Add the `bench` command to the main app."""

    @app.command("bench", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})
    def bench(
        ctx: typer.Context,
        area: str = typer.Argument(..., help="Which benchmark: comm, comm_training, parallel, "
                                             "topology, nas, saliency, autoencoder, gdc."),
    ) -> None:
        """Run benchmarks/bench_AREA.py; extra arguments go to it (`-- --help` for its help)."""
        scripts = benchmark_scripts()
        if not scripts:
            console.print(f"[bold red]error:[/] no benchmarks/ folder next to {_REPO / 'src'}; "
                          "the benchmark scripts ship with the source checkout, not the wheel")
            raise typer.Exit(code=2)
        if area not in scripts:
            console.print(f"[bold red]error:[/] unknown benchmark {area!r}; expected one of "
                          f"{', '.join(scripts)}")
            raise typer.Exit(code=2)
        rc = subprocess.call([sys.executable, str(scripts[area]), *ctx.args], cwd=_REPO)
        raise typer.Exit(code=rc)
