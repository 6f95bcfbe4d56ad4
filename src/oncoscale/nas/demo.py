"""``oncoscale nas demo``: synthetic patches -> image folder -> search -> report, in minutes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from oncoscale._io import atomic_write_text

DEMO_TOML = """# written by `oncoscale nas demo`
# edit, then: oncoscale nas run --config {name}
[data]
source = "patches"
val = 0.2
test = 0.15
seed = {seed}

[search]
population = 8
evaluations = {evaluations}
seed = {seed}
baselines = true
baseline_width = 16

[budget]
epochs = {epochs}
seconds = {seconds}
timeout_s = 120
max_memory_mb = 2048
max_params = 1000000

[latency]
batch_size = 1
repeats = 15
warmup = 3
device = "cpu"

[workers]
n = {workers}
threads = 1
transport = "process"

[space]
filters = [4, 8, 12, 16, 24, 32, 48, 64]
max_layers = 10
"""


def demo(out_dir: str | os.PathLike[str] = "nas-demo", *, n_patches: int = 1200,
         evaluations: int = 32, workers: int = 2, epochs: float = 3.0, seconds: float = 12.0,
         seed: int = 0, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Write synthetic TIL patches as a PNG class folder, search, and report.

    Layout: ``out_dir/patches/<class>/*.png``, ``out_dir/search.toml``, ``out_dir/run``
    (history.csv, pareto.csv, report/). Returns the report summary plus the search summary.
    """
    from oncoscale.datasets.patches import write_patch_folder
    from oncoscale.nas.config import load_config
    from oncoscale.nas.report import make_report
    from oncoscale.nas.search import Search

    out = Path(out_dir)
    patches = out / "patches"
    if not (patches / "til_positive").is_dir() or \
            sum(1 for _ in patches.rglob("*.png")) != n_patches:
        write_patch_folder(patches, n=n_patches, size=100, seed=seed)
    cfg_path = out / "search.toml"
    if not resume or not cfg_path.exists():
        atomic_write_text(cfg_path, DEMO_TOML.format(
            name=cfg_path.name, seed=seed, evaluations=evaluations, epochs=epochs,
            seconds=seconds, workers=workers))
    cfg = load_config(cfg_path)
    run_dir = out / "run"
    search = Search(cfg, run_dir, progress=progress)
    search.run(resume=resume and (run_dir / "state.json").exists())
    summary = make_report(run_dir, select="front", max_export=3)
    summary["search"] = search.summary()
    summary["run_dir"] = str(run_dir)
    return summary
