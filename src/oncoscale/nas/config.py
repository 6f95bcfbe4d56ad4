"""``search.toml``: the settings of one search, read into :class:`SearchConfig`.

Example (every key optional except ``data.source``)::

    [data]
    source = "patches"        # class folder, PCam .h5 (x) or .npy/.npz; relative to this file
    labels = ""               # PCam *_y.h5 or a .npy of labels when separate
    size = 0                  # resize folder images to size x size (0: keep)
    limit = 0                 # read only the first N patches of an HDF5 file (0: all)
    val = 0.2                 # validation fraction (the accuracy objective)
    test = 0.1                # held-out test fraction (reported by `nas report`)
    seed = 0
    augment = true            # random flips / 90-degree rotations while training

    [search]
    population = 8            # NSGA-II population size
    evaluations = 24          # total candidates trained, baselines included
    seed = 0
    crossover = 0.5           # probability that a child comes from crossover (then mutated)
    baselines = true          # seed with the VGG-like and ResNet-18-like networks
    baseline_width = 16       # base width of the baselines (ResNet-18 proper: 64)
    metric = "accuracy"       # or "auc"
    max_requeue = 2           # a candidate whose worker died more often is recorded failed

    [budget]                  # per candidate; see oncoscale.nas.evaluate.Budget
    epochs = 1.0
    steps = 0                 # 0: no step limit
    seconds = 30.0            # 0: no time limit on training
    timeout_s = 180.0         # hard limit on one evaluation -> status failed (timeout)
    max_memory_mb = 2048      # per candidate (0: none): estimate checked first; workers whose
                              # memory grows past it are killed (status failed)
    max_params = 2000000

    [latency]
    batch_size = 1
    repeats = 20
    warmup = 3
    device = "cpu"            # the target device of the latency objective

    [workers]
    n = 2                     # worker processes (0: evaluate in this process)
    threads = 1               # torch threads per worker
    transport = "process"     # "process", "inline" or "comm" (an oncoscale.comm world:
                              # a dead or silent rank's candidate is re-queued)
    device = "cpu"            # training device: "cpu", "cuda" or "auto"

    [space]                   # see oncoscale.nas.genome.SearchSpace
    max_layers = 12
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oncoscale.errors import ConfigurationError, InputError


@dataclass
class DataConfig:
    source: str = ""
    labels: str = ""
    size: int = 0
    limit: int = 0
    val: float = 0.2
    test: float = 0.1
    seed: int = 0
    augment: bool = True


@dataclass
class SearchSettings:
    population: int = 8
    evaluations: int = 24
    seed: int = 0
    crossover: float = 0.5
    baselines: bool = True
    baseline_width: int = 16
    metric: str = "accuracy"
    max_requeue: int = 2


@dataclass
class BudgetConfig:
    epochs: float = 1.0
    steps: int = 0
    seconds: float = 30.0
    timeout_s: float = 180.0
    max_memory_mb: float = 2048.0
    max_params: int = 2_000_000


@dataclass
class LatencySettings:
    batch_size: int = 1
    repeats: int = 20
    warmup: int = 3
    device: str = "cpu"


@dataclass
class WorkerSettings:
    n: int = 2
    threads: int = 1
    transport: str = "process"
    device: str = "cpu"


@dataclass
class SearchConfig:
    """All settings of a search; ``base_dir`` resolves relative data paths."""

    data: DataConfig = field(default_factory=DataConfig)
    search: SearchSettings = field(default_factory=SearchSettings)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    latency: LatencySettings = field(default_factory=LatencySettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    space: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."

    def validate(self) -> SearchConfig:
        s = self.search
        if s.population < 2:
            raise ConfigurationError(f"[search] population must be >= 2, got {s.population}")
        if s.evaluations < 1:
            raise ConfigurationError(f"[search] evaluations must be >= 1, got {s.evaluations}")
        if not 0.0 <= s.crossover <= 1.0:
            raise ConfigurationError(f"[search] crossover must be in [0, 1], got {s.crossover}")
        if s.metric not in ("accuracy", "auc"):
            raise ConfigurationError(f"[search] metric must be 'accuracy' or 'auc', got "
                                     f"{s.metric!r}")
        if self.workers.transport not in ("process", "inline", "comm"):
            raise ConfigurationError("[workers] transport must be 'process', 'inline' or "
                                     f"'comm', got {self.workers.transport!r}")
        if self.workers.n < 0:
            raise ConfigurationError(f"[workers] n must be >= 0, got {self.workers.n}")
        b = self.budget
        if b.epochs <= 0 and b.steps <= 0 and b.seconds <= 0:
            raise ConfigurationError("[budget] needs epochs, steps or seconds > 0")
        if not self.data.source:
            raise ConfigurationError("[data] source is required (a class folder, .h5, "
                                     ".npy or .npz)")
        from oncoscale.nas.genome import SearchSpace

        SearchSpace.from_dict(self.space)
        return self

    def data_path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else Path(self.base_dir) / p

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("base_dir")
        return d

    def to_toml(self) -> str:
        """Serialise (flat tables of scalars and lists) so the run directory keeps a copy."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for k, v in values.items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


_SECTIONS = {"data": DataConfig, "search": SearchSettings, "budget": BudgetConfig,
             "latency": LatencySettings, "workers": WorkerSettings}


def config_from_dict(d: dict[str, Any], base_dir: str | os.PathLike[str] = ".",
                     path: str | os.PathLike[str] | None = None) -> SearchConfig:
    """Build and validate a :class:`SearchConfig` from nested dicts (TOML tables)."""
    unknown = set(d) - set(_SECTIONS) - {"space"}
    if unknown:
        raise InputError(f"unknown table(s) {sorted(unknown)}; expected "
                         f"{sorted([*_SECTIONS, 'space'])}", path=path)
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = d.get(name, {})
        bad = set(table) - set(cls.__dataclass_fields__)
        if bad:
            raise InputError(f"unknown key(s) {sorted(bad)} in [{name}]; known: "
                             f"{sorted(cls.__dataclass_fields__)}", path=path)
        kwargs[name] = cls(**table)
    cfg = SearchConfig(**kwargs, space=dict(d.get("space", {})), base_dir=str(base_dir))
    return cfg.validate()


def load_config(path: str | os.PathLike[str]) -> SearchConfig:
    """Read ``search.toml``; relative data paths are taken from the file's folder."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("config file not found", path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", path=path) from exc
    try:
        return config_from_dict(d, path.parent.resolve(), path)
    except TypeError as exc:
        raise InputError(f"bad value type: {exc}", path=path) from exc
