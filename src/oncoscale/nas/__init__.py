"""oncoscale.nas: evolutionary architecture search for pathology patches (MENNDL-style).

Two objectives (validation accuracy or AUC up, inference latency down), NSGA-II selection,
asynchronous master/worker evaluation, checkpointed resumable runs::

    from oncoscale import nas
    cfg = nas.load_config("search.toml")
    search = nas.Search(cfg, "runs/a", progress=True).run()      # or .run(resume=True)
    search.front()                                               # list[Candidate]
    nas.make_report("runs/a")                                    # plot, TorchScript/ONNX, cards

Modules: ``genome`` (genes, JSON, baselines), ``variation`` (mutation, crossover),
``selection`` (NSGA-II, hypervolume), ``evaluate`` (training budget, latency),
``workers`` (inline / process / comm pools), ``search`` (the checkpointed loop),
``data`` (PCam HDF5, image folders, NumPy; splits, augmentation), ``report``, ``demo``
(``oncoscale.nas.demo.demo(out_dir)``).
Importing this package does not import torch.
"""

from __future__ import annotations

from typing import Any

from oncoscale.nas.config import SearchConfig, config_from_dict, load_config
from oncoscale.nas.data import (
    ClassImbalanceWarning,
    PatchSet,
    Splits,
    load_image_folder,
    load_numpy,
    load_patches,
    load_pcam_h5,
    split_patches,
)
from oncoscale.nas.evaluate import (
    Budget,
    EvalConfig,
    EvalResult,
    Evaluator,
    LatencyConfig,
    PreparedData,
    measure_latency,
)
from oncoscale.nas.genome import (
    BatchNorm,
    Conv,
    Dropout,
    Genome,
    Head,
    Pool,
    Residual,
    SearchSpace,
    Training,
    baselines,
    decode,
    random_genome,
    resnet18_like,
    vgg_like,
)
from oncoscale.nas.search import Candidate, Search, prepare_data, run_search
from oncoscale.nas.selection import (
    crowding_distance,
    hypervolume_2d,
    non_dominated_sort,
    nsga2_select,
    pareto_mask,
)
from oncoscale.nas.variation import crossover, mutate
from oncoscale.nas.workers import CommPool, InlinePool, ProcessPool, serve_comm_worker

__all__ = [
    "BatchNorm", "Budget", "Candidate", "ClassImbalanceWarning", "CommPool", "Conv", "Dropout",
    "EvalConfig", "EvalResult", "Evaluator", "Genome", "Head", "InlinePool", "LatencyConfig",
    "PatchSet", "Pool", "PreparedData", "ProcessPool", "Residual", "Search", "SearchConfig",
    "SearchSpace", "Splits", "Training", "baselines", "config_from_dict", "crossover",
    "crowding_distance", "decode", "hypervolume_2d", "load_config", "load_image_folder",
    "load_numpy", "load_patches", "load_pcam_h5", "make_report", "measure_latency", "mutate",
    "non_dominated_sort", "nsga2_select", "pareto_mask", "prepare_data", "random_genome",
    "resnet18_like", "run_search", "serve_comm_worker", "split_patches", "vgg_like",
]


def __getattr__(name: str) -> Any:
    """``make_report`` loads matplotlib/pandas only when asked for."""
    if name == "make_report":
        from oncoscale.nas.report import make_report

        return make_report
    raise AttributeError(f"module 'oncoscale.nas' has no attribute {name!r}")
