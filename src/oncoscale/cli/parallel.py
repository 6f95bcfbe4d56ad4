"""``oncoscale launch``: start N local ranks of a command under torchrun or mpiexec.

    oncoscale launch -n 4 -- python train.py --strategy hybrid
    oncoscale launch -n 4 --backend mpi -- python train.py
    oncoscale launch -n 2 --max-restarts 1 -- python train.py   # torchrun restarts

Every rank gets ``OMP_NUM_THREADS=1`` unless it is set already. ``--dry-run`` prints the
launcher command instead of running it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import typer


def _tool(name: str) -> str:
    """``name`` from this interpreter's bin directory, else from PATH."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise typer.BadParameter(f"{name} not found next to {sys.executable} or on PATH")
    return found


def launch_command(nproc: int, command: list[str], *, backend: str = "torch",
                   max_restarts: int = 0, master_port: int | None = None) -> list[str]:
    """The launcher command line that starts ``nproc`` local ranks of ``command``."""
    if nproc < 1:
        raise typer.BadParameter(f"-n must be >= 1, found {nproc}")
    if not command:
        raise typer.BadParameter("give the command to run after `--`, e.g. "
                                 "`oncoscale launch -n 2 -- python train.py`")
    if backend == "torch":
        cmd = [_tool("torchrun"), f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}"]
        cmd += ["--standalone"] if master_port is None else [
            "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={master_port}"]
        return [*cmd, "--no-python", *command]
    if backend == "mpi":
        if max_restarts:
            raise typer.BadParameter("--max-restarts needs the torch backend (torchrun)")
        cmd = [_tool("mpiexec"), "-n", str(nproc), "--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        return [*cmd, *command]
    raise typer.BadParameter(f"--backend must be 'torch' or 'mpi', found {backend!r}")


def register(app: typer.Typer) -> None:
    """Add ``launch`` to the oncoscale app."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def launch(
        command: list[str] = typer.Argument(None, help="the command every rank runs"),
        nproc: int = typer.Option(2, "-n", "--nproc", help="number of local ranks"),
        backend: str = typer.Option("torch", help="torch (torchrun) or mpi (mpiexec)"),
        max_restarts: int = typer.Option(0, help="torchrun restarts after a rank fails"),
        master_port: int = typer.Option(None, help="fixed rendezvous port (torch)"),
        dry_run: bool = typer.Option(False, help="print the launcher command and exit"),
    ) -> None:
        """Start N local ranks of COMMAND (torchrun or mpiexec), e.g.
        `oncoscale launch -n 4 -- python train.py`."""
        cmd = launch_command(nproc, list(command or []), backend=backend,
                             max_restarts=max_restarts, master_port=master_port)
        if dry_run:
            typer.echo(shlex.join(cmd))
            return
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        if backend == "mpi":
            env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        code = subprocess.run(cmd, env=env).returncode
        raise typer.Exit(code)
