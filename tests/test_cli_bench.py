"""`oncoscale bench AREA ...` finds the benchmark scripts of the checkout and passes args on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from oncoscale.cli import app
from oncoscale.cli.bench import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_script_is_an_area() -> None:
    scripts = benchmark_scripts(ROOT)
    on_disk = {p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert set(scripts) == on_disk and {"comm", "topology", "nas"} <= on_disk


def test_unknown_area_is_a_clear_error() -> None:
    res = CliRunner().invoke(app, ["bench", "no_such_area"])
    assert res.exit_code == 2
    assert "unknown benchmark 'no_such_area'" in res.output and "comm" in res.output


def test_arguments_reach_the_script() -> None:
    """An option only the script knows is rejected by the script's own parser (argparse)."""
    exe = Path(sys.executable).with_name("oncoscale")
    proc = subprocess.run([str(exe), "bench", "saliency", "--no-such-flag"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bench_saliency.py: error: unrecognized arguments: --no-such-flag" in proc.stderr
