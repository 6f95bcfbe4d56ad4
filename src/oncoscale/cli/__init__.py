"""The `oncoscale` command: one Typer app; each area registers its commands from its own module.

Every command is a thin call into the library. Area modules are imported lazily so that
`oncoscale --help` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="oncoscale",
    help="Scalable deep learning for cancer research: GDC expression, autoencoder node "
    "saliency, hybrid-parallel training, sparse collectives, topology, architecture search.",
    no_args_is_help=True,
    add_completion=False,
)

# (module under oncoscale.cli, function that registers commands on `app`)
_AREAS = ("pipeline", "comm", "parallel", "topology", "nas", "bench")

for _area in _AREAS:
    try:
        _mod = importlib.import_module(f"oncoscale.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not written yet
        if exc.name != f"oncoscale.cli.{_area}":
            raise
        continue
    _mod.register(app)


def main() -> None:  # pragma: no cover - console entry
    app()
