"""The checkpointed, asynchronous NSGA-II search (the master side).

Steady-state asynchronous evolution as in MENNDL: whenever a worker is idle the master
creates a candidate (first the baselines and random genomes of the initial population, then
children of crowded-tournament parents by crossover and/or mutation), and whenever a result
arrives it updates the population by NSGA-II survivor selection over ``(-metric, latency)``.

After **every** evaluation the full state (population, every candidate with its metrics and
status, the queue, the RNG state) is written atomically to ``state.json`` together with
``history.csv`` and ``pareto.csv``; :meth:`Search.run` with ``resume=True`` continues from it
and never re-trains a candidate that already has a result. Candidates that were in flight
when the search stopped are evaluated again (they had no result).

Run directory::

    run_dir/config.toml     settings of the run
    run_dir/state.json      checkpoint
    run_dir/history.csv     one row per finished evaluation
    run_dir/pareto.csv      the current front (non-dominated successful candidates)
    run_dir/weights/<id>.pt trained state_dict of each successful candidate
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoscale._io import atomic_write_text
from oncoscale.errors import CommunicationError, ConfigurationError, InputError
from oncoscale.nas.config import SearchConfig
from oncoscale.nas.evaluate import (
    STATUS_FAILED,
    STATUS_OK,
    Budget,
    EvalConfig,
    EvalResult,
    Evaluator,
    LatencyConfig,
    PreparedData,
)
from oncoscale.nas.genome import Genome, SearchSpace, baselines, random_genome
from oncoscale.nas.selection import nsga2_select, pareto_mask, rank_and_crowding, tournament
from oncoscale.nas.variation import crossover, mutate
from oncoscale.nas.workers import Died, Done, InlinePool, ProcessPool, Task, WorkerPool

HISTORY_COLUMNS = ("id", "genome", "accuracy", "auc", "latency_ms", "params", "status",
                   "reason", "generation", "origin", "worker", "seconds", "steps", "attempts")
STATE_VERSION = 1


@dataclass
class Candidate:
    """A genome the search created, with its result once evaluated."""

    id: int
    genome: str
    generation: int
    origin: str
    seed: int
    attempts: int = 0
    status: str = "pending"
    accuracy: float = float("nan")
    auc: float = float("nan")
    latency_ms: float = float("nan")
    params: int = 0
    reason: str = ""
    worker: str = ""
    seconds: float = 0.0
    steps: int = 0
    repairs: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HISTORY_COLUMNS}


def prepare_data(config: SearchConfig) -> tuple[PreparedData, Any]:
    """Load and split the patches named in ``config.data``; returns (PreparedData, Splits)."""
    from oncoscale.nas.data import load_patches, split_patches

    d = config.data
    labels = str(config.data_path(d.labels)) if d.labels else None
    data = load_patches(config.data_path(d.source), labels=labels, size=d.size or None,
                        limit=d.limit or None)
    splits = split_patches(data, val=d.val, test=d.test, seed=d.seed)
    desc = (f"{data.source}: {len(data)} patches {data.x.shape[1]}x{data.x.shape[2]}, classes "
            f"{data.classes}; train {len(splits.train)} / val {len(splits.val)} / test "
            f"{len(splits.test)} (seed {d.seed})")
    return PreparedData.from_splits(splits.train, splits.val, desc), splits


def eval_config(config: SearchConfig) -> EvalConfig:
    b, lat = config.budget, config.latency
    return EvalConfig(
        budget=Budget(epochs=b.epochs or None, steps=b.steps or None, seconds=b.seconds or None,
                      timeout_s=b.timeout_s, max_memory_mb=b.max_memory_mb,
                      max_params=b.max_params or None),
        latency=LatencyConfig(lat.batch_size, lat.repeats, lat.warmup, lat.device or None),
        metric=config.search.metric, augment=config.data.augment, device=config.workers.device)


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _none_to_nan(v: Any) -> Any:
    return float("nan") if v is None else v


class Search:
    """Asynchronous NSGA-II architecture search over a worker pool.

    Parameters
    ----------
    config : SearchConfig
    run_dir : folder for the checkpoint and tables.
    evaluator : the callable workers run (default: :class:`Evaluator` on the configured data).
    pool_factory : ``evaluator -> WorkerPool`` (default from ``[workers]``).
    progress : show a rich progress display.
    seeds : extra genomes placed in the initial population after the baselines.
    """

    def __init__(self, config: SearchConfig, run_dir: str | os.PathLike[str], *,
                 evaluator: Callable[[str, int, int], EvalResult] | None = None,
                 pool_factory: Callable[[Any], WorkerPool] | None = None,
                 progress: bool = False, seeds: list[Genome] | None = None) -> None:
        self.config = config
        self.seeds = list(seeds or [])
        self.run_dir = Path(run_dir)
        self.space = SearchSpace.from_dict(config.space)
        self.evaluator = evaluator
        self.pool_factory = pool_factory
        self.progress = progress
        self.candidates_: dict[int, Candidate] = {}
        self.population_: list[int] = []
        self.rng_ = np.random.default_rng(config.search.seed)
        self.n_created_ = 0
        self.input_size_: int | None = None
        self.data_description_ = ""
        self.meta_: dict[str, Any] = {"base_dir": config.base_dir}
        self._world: Any = None

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "rng": self.rng_.bit_generator.state,
            "n_created": self.n_created_,
            "population": self.population_,
            "input_size": self.input_size_,
            "data": self.data_description_,
            "meta": self.meta_,
            "candidates": [{k: _nan_to_none(v) for k, v in c.__dict__.items()}
                           for c in self.candidates_.values()],
        }

    def checkpoint(self) -> None:
        """Write state.json, history.csv and pareto.csv atomically."""
        atomic_write_text(self.state_path, json.dumps(self._state(), indent=1))
        atomic_write_text(self.run_dir / "history.csv", _csv(self.history_rows()))
        atomic_write_text(self.run_dir / "pareto.csv", _csv(self.pareto_rows()))

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError("no checkpoint to resume (state.json missing)",
                             path=self.state_path) from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"corrupt checkpoint: {exc}", path=self.state_path) from exc
        if state.get("version") != STATE_VERSION:
            raise InputError(f"checkpoint version {state.get('version')} != {STATE_VERSION}",
                             path=self.state_path)
        old, new = dict(state["config"]), self.config.to_dict()
        for d in (old, new):  # these may change between runs
            d["search"] = {k: v for k, v in d["search"].items() if k != "evaluations"}
            d.pop("workers", None)
        if old != new:
            raise ConfigurationError(
                f"{self.state_path}: the configuration differs from the checkpointed run (only "
                "[search] evaluations and [workers] may change on --resume)")
        self.rng_.bit_generator.state = state["rng"]
        self.n_created_ = int(state["n_created"])
        self.population_ = [int(i) for i in state["population"]]
        self.input_size_ = state.get("input_size")
        self.data_description_ = state.get("data", "")
        self.meta_ = {**state.get("meta", {}), "base_dir": self.config.base_dir}
        self.candidates_ = {}
        for c in state["candidates"]:
            c = {k: _none_to_nan(v) if k in ("accuracy", "auc", "latency_ms") else v
                 for k, v in c.items()}
            self.candidates_[int(c["id"])] = Candidate(**c)

    # ------------------------------------------------------------------ tables
    def finished(self) -> list[Candidate]:
        return [c for c in self.candidates_.values() if c.status != "pending"]

    def history_rows(self) -> list[dict[str, Any]]:
        return [c.row() for c in sorted(self.finished(), key=lambda c: c.id)]

    def _objective(self, c: Candidate) -> tuple[float, float]:
        m = c.auc if self.config.search.metric == "auc" else c.accuracy
        return (-m, c.latency_ms)

    def front(self) -> list[Candidate]:
        """Non-dominated successful candidates (metric up, latency down), fastest first."""
        ok = [c for c in self.candidates_.values()
              if c.status == STATUS_OK and not math.isnan(self._objective(c)[0])]
        if not ok:
            return []
        mask = pareto_mask(np.array([self._objective(c) for c in ok]))
        return sorted((c for c, m in zip(ok, mask, strict=True) if m),
                      key=lambda c: c.latency_ms)

    def pareto_rows(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.front()]

    # ------------------------------------------------------------------ evolution
    def _seed_for(self, cand_id: int) -> int:
        ss = np.random.SeedSequence([self.config.search.seed, cand_id])
        return int(ss.generate_state(1)[0])

    def _known(self) -> set[str]:
        return {c.genome for c in self.candidates_.values()}

    def _create(self) -> Candidate:
        """Create the next candidate (consumes RNG; deterministic given the state)."""
        s = self.config.search
        cid = self.n_created_
        pop = s.population
        known = self._known()
        genome: Genome | None = None
        origin = ""
        if cid < pop:
            seeds = list(baselines(self.input_size_ or 96, s.baseline_width).items()) \
                if s.baselines else []
            seeds += [(f"seed{i}", g) for i, g in enumerate(self.seeds)]
            if cid < len(seeds):
                name, genome = seeds[cid]
                origin = ("baseline:" if not name.startswith("seed") else "seed:") + name
        ok = [i for i in self.population_ if self.candidates_[i].status == STATUS_OK]
        if genome is None and (cid < pop or len(ok) < 2):
            for _ in range(50):
                genome = random_genome(self.space, self.rng_)
                if genome.to_json() not in known:
                    break
            origin = "random"
        if genome is None:
            F = np.array([self._objective(self.candidates_[i]) for i in ok])
            rank, crowd = rank_and_crowding(F)
            for _ in range(50):
                pa = self.candidates_[ok[tournament(rank, crowd, self.rng_)]]
                g1 = Genome.from_json(pa.genome)
                ops: list[str] = []
                if self.rng_.random() < s.crossover:
                    pb = self.candidates_[ok[tournament(rank, crowd, self.rng_)]]
                    g1 = crossover(g1, Genome.from_json(pb.genome), self.space, self.rng_)
                    origin = f"crossover({pa.id},{pb.id})"
                else:
                    origin = f"mutation({pa.id})"
                genome = mutate(g1, self.space, self.rng_, log=ops)
                origin += ":" + "+".join(ops)
                if genome.to_json() not in known:
                    break
        assert genome is not None
        generation = 0 if cid < pop else 1 + (cid - pop) // pop
        cand = Candidate(cid, genome.to_json(), generation, origin, self._seed_for(cid))
        self.candidates_[cid] = cand
        self.n_created_ += 1
        return cand

    def _update_population(self, cand: Candidate) -> None:
        if cand.status != STATUS_OK or math.isnan(self._objective(cand)[0]):
            return
        ids = [*self.population_, cand.id]
        F = np.array([self._objective(self.candidates_[i]) for i in ids])
        keep = nsga2_select(F, self.config.search.population)
        self.population_ = [ids[i] for i in sorted(keep)]

    def _record(self, cand: Candidate, result: EvalResult, worker: str) -> None:
        cand.status = result.status
        cand.accuracy, cand.auc = result.accuracy, result.auc
        cand.latency_ms, cand.params = result.latency_ms, result.params
        cand.reason, cand.seconds, cand.steps = result.reason, result.seconds, result.steps
        cand.repairs, cand.worker = list(result.repairs), worker
        self._update_population(cand)

    # ------------------------------------------------------------------ running
    def _default_evaluator(self) -> Evaluator:
        data, _ = prepare_data(self.config)
        self.data_description_ = data.description
        return Evaluator(data, eval_config(self.config), str(self.run_dir / "weights"))

    def _default_pool(self, evaluator: Any) -> WorkerPool:
        w = self.config.workers
        hard = self.config.budget.timeout_s + 60.0
        if w.transport == "inline" or w.n == 0:
            return InlinePool(evaluator)
        if w.transport == "comm":
            from oncoscale.nas.workers import CommPool

            return CommPool(self._world or _comm_world(), timeout_s=hard)
        return ProcessPool(evaluator, w.n, threads=w.threads, timeout_s=hard,
                           max_memory_mb=self.config.budget.max_memory_mb or None)

    def run(self, resume: bool = False) -> Search:
        """Run until ``[search] evaluations`` candidates have a result; returns ``self``.

        With ``[workers] transport = "comm"`` every rank of the ``oncoscale.comm`` world calls
        this: rank 0 runs the search, the other ranks serve evaluations until it ends. A rank
        that dies has its candidate re-queued on a live rank (``[search] max_requeue`` times);
        when no worker is left a :class:`~oncoscale.errors.CommunicationError` says so (the
        checkpoint holds everything finished). Under ``torchrun --max-restarts`` a restarted
        job resumes from the checkpoint by itself.
        """
        self._world = None
        if self.config.workers.transport == "comm" and self.pool_factory is None:
            self._world = _comm_world()
            if self._world.rank != 0:
                from oncoscale.nas.workers import serve_comm_worker

                evaluator = self.evaluator or self._default_evaluator()
                serve_comm_worker(self._world, evaluator, self.config.workers.threads)
                return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.state_path.exists() and \
                os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
            resume = True  # torchrun --max-restarts restarted the job: carry on from the checkpoint
        if resume:
            self._load()
        elif self.state_path.exists():
            raise ConfigurationError(f"{self.run_dir} already holds a search (state.json); "
                                     "resume it or choose another run directory")
        atomic_write_text(self.run_dir / "config.toml", self.config.to_toml())
        evaluator = self.evaluator
        if evaluator is None:
            evaluator = self._default_evaluator()
        if self.input_size_ is None:
            shape = getattr(getattr(evaluator, "data", None), "input_shape", None)
            self.input_size_ = int(shape[1]) if shape else 96
        data = getattr(evaluator, "data", None)
        if isinstance(data, PreparedData):
            self.data_description_ = self.data_description_ or data.description
            self.meta_.update(input_shape=list(data.input_shape), num_classes=data.num_classes,
                              classes=data.classes, mean=data.mean, std=data.std)
        target = self.config.search.evaluations
        # pending candidates (in flight when the last run stopped) go first
        queue: deque[Task] = deque(
            Task(c.id, c.genome, c.seed, c.attempts)
            for c in sorted(self.candidates_.values(), key=lambda c: c.id)
            if c.status == "pending")
        self.checkpoint()
        if len(self.finished()) >= target and not queue:
            return self
        pool = (self.pool_factory or self._default_pool)(evaluator)
        inflight: dict[int, Task] = {}
        display = _Display(self) if self.progress else None
        try:
            while True:
                while pool.idle() > 0 and (queue or self.n_created_ < target):
                    if not queue:
                        c = self._create()
                        queue.append(Task(c.id, c.genome, c.seed, 0))
                        self.checkpoint()  # the new candidate and the RNG state
                    task = queue.popleft()
                    pool.submit(task)
                    inflight[task.cand_id] = task
                if not inflight and not queue and self.n_created_ >= target:
                    break
                if getattr(pool, "n_alive", 1) == 0:
                    reasons = "; ".join(f"rank {r}: {why}" for r, why in
                                        sorted(getattr(pool, "reasons_", {}).items()))
                    raise CommunicationError(
                        f"all {pool.n_workers} workers are gone ({reasons}); "
                        f"{len(self.finished())} of {target} evaluations done, the search is "
                        f"checkpointed in {self.run_dir} (continue with resume / --resume)")
                for ev in pool.wait(1.0):
                    cand = self.candidates_[ev.task.cand_id]
                    inflight.pop(ev.task.cand_id, None)
                    if isinstance(ev, Done):
                        self._record(cand, ev.result, ev.worker)
                    elif isinstance(ev, Died):
                        cand.attempts += 1
                        if cand.attempts > self.config.search.max_requeue:
                            self._record(cand, EvalResult(
                                STATUS_FAILED, reason=f"worker died {cand.attempts} times "
                                f"({ev.reason})"), ev.worker)
                        else:
                            cand.reason = f"re-queued after worker {ev.worker} died " \
                                          f"({ev.reason})"
                            queue.appendleft(Task(cand.id, cand.genome, cand.seed,
                                                  cand.attempts))
                    self.checkpoint()
                    if display is not None:
                        display.update()
        finally:
            pool.close()
            if display is not None:
                display.close()
        return self

    # ------------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        fin = self.finished()
        return {"evaluations": len(fin),
                "ok": sum(c.status == STATUS_OK for c in fin),
                "failed": sum(c.status == STATUS_FAILED for c in fin),
                "rejected": sum(c.status == "rejected" for c in fin),
                "generation": max((c.generation for c in fin), default=0),
                "front": [(c.id, c.accuracy, c.latency_ms) for c in self.front()]}


def _comm_world() -> Any:
    try:
        from oncoscale import comm
    except ImportError as exc:  # pragma: no cover
        raise ConfigurationError("transport 'comm' needs oncoscale.comm") from exc
    init = getattr(comm, "init", None)
    if init is None:
        raise ConfigurationError("transport 'comm' needs oncoscale.comm.init(); not available")
    return init()


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                        (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


class _Display:
    """rich progress: evaluations done/failed, generation and the current front."""

    def __init__(self, search: Search) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.search = search
        self.progress = Progress(TextColumn("[bold]NAS"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"),
                                 console=Console(stderr=True))
        self.progress.start()
        self.task = self.progress.add_task("", total=search.config.search.evaluations)
        self.t0 = time.monotonic()
        self.update()

    def update(self) -> None:
        s = self.search.summary()
        front = ", ".join(f"#{i} {a:.3f}@{lat:.2f}ms" for i, a, lat in s["front"][:4])
        more = f" +{len(s['front']) - 4}" if len(s["front"]) > 4 else ""
        self.progress.update(
            self.task, completed=s["evaluations"],
            description=f"gen {s['generation']} | ok {s['ok']} failed {s['failed']} "
                        f"rejected {s['rejected']} | front: {front}{more}")

    def close(self) -> None:
        self.update()
        self.progress.stop()


def run_search(config: SearchConfig | str | os.PathLike[str],
               run_dir: str | os.PathLike[str] | None = None, *, resume: bool = False,
               progress: bool = False) -> Search:
    """Load ``config`` (a path to search.toml or a :class:`SearchConfig`) and run the search.

    ``run_dir`` defaults to ``nas-run`` beside the config file.
    """
    from oncoscale.nas.config import load_config

    cfg = config if isinstance(config, SearchConfig) else load_config(config)
    if run_dir is None:
        run_dir = Path(cfg.base_dir) / "nas-run"
    return Search(cfg, run_dir, progress=progress).run(resume=resume)
