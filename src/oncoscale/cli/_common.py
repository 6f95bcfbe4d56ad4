"""What every CLI module shares: the error console and the clean-exit helper."""

from __future__ import annotations

import typer
from rich.console import Console

#: stderr console for messages and errors; long paths are not wrapped mid-name
console = Console(stderr=True, soft_wrap=True)


def fail(exc: Exception) -> None:
    """Print an oncoscale error without a traceback and exit with status 2."""
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)
