"""The search: failures do not stop it, dead workers are re-queued, a killed search resumes
without repeating evaluations, and the CLI runs, resumes and reports (TorchScript + ONNX).

Searches here are tiny (32 px patches, 3 training steps) so the whole file stays fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from oncoscale.datasets.patches import synthetic_patches, write_patch_folder
from oncoscale.errors import ConfigurationError
from oncoscale.nas.config import config_from_dict
from oncoscale.nas.data import PatchSet, split_patches
from oncoscale.nas.evaluate import Evaluator, PreparedData
from oncoscale.nas.genome import Conv, Genome, Head, Pool, Training
from oncoscale.nas.search import Search, eval_config
from oncoscale.nas.workers import ProcessPool

MARK_RAISE, MARK_NAN, MARK_SLOW, MARK_EXIT, MARK_HANG = 0.0777, 0.0666, 0.0555, 0.0444, 0.0333
MARK_HOG = 0.0222  # allocates HOG_MIB while training
TESTS = Path(__file__).parent


class _NaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


class _Sleep(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


class _Hog(nn.Module):
    """Holds a large buffer for a while, as a memory-hungry candidate would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hog = torch.ones(HOG_MIB * 2**18)  # float32: HOG_MIB MiB, touched
        time.sleep(5.0)
        return x + hog[0] * 0


HOG_MIB = 800


class FaultyEvaluator(Evaluator):
    """The real evaluator, with faults injected on genomes marked by their learning rate."""

    def __init__(self, data, config, *, marker_dir: str = "", log_path: str = "",
                 sleep: float = 0.0) -> None:
        super().__init__(data, config)
        self.marker_dir, self.log_path, self.sleep = marker_dir, log_path, sleep
        self.threads_path = ""  # when set: "<cand_id> <torch threads> <OMP_NUM_THREADS>" lines

    def build(self, genome):
        lr = genome.train.lr
        if lr == MARK_RAISE:
            raise RuntimeError("injected failure")
        if lr == MARK_EXIT:
            marker = Path(self.marker_dir) / "died-once"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        net, info = super().build(genome)
        if lr == MARK_NAN:
            net = nn.Sequential(net, _NaN())
        elif lr == MARK_SLOW:
            net = nn.Sequential(_Sleep(0.8), net)
        elif lr == MARK_HANG:
            net = nn.Sequential(_Sleep(120.0), net)
        elif lr == MARK_HOG:
            net = nn.Sequential(_Hog(), net)
        return net, info

    def __call__(self, genome_json, seed=0, cand_id=None):
        time.sleep(self.sleep)
        result = super().__call__(genome_json, seed, cand_id)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"{cand_id}\n")
        if self.threads_path:
            with open(self.threads_path, "a") as f:
                f.write(f"{cand_id} {torch.get_num_threads()} "
                        f"{os.environ.get('OMP_NUM_THREADS')}\n")
        return result


def tiny_config(base: Path, **sections):
    d = {"data": {"source": "unused"},
         "search": {"population": 4, "evaluations": 8, "seed": 1, "baselines": False},
         "budget": {"epochs": 0, "steps": 3, "seconds": 0, "timeout_s": 2.0},
         "latency": {"repeats": 2, "warmup": 1},
         "workers": {"n": 0},
         "space": {"filters": [2, 4], "max_layers": 4, "batch_sizes": [8, 16]}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return config_from_dict(d, base)


def tiny_data() -> PreparedData:
    x, y, _ = synthetic_patches(40, size=32, seed=0)
    sp = split_patches(PatchSet(x, y, ["neg", "pos"]), val=0.25, test=0.0)
    return PreparedData.from_splits(sp.train, sp.val, "tiny synthetic")


def marked(lr: float, filters: int = 4) -> Genome:
    return Genome((Conv(filters, 3, 2, "relu"),), Head(0, 0.0), Training(lr, 8, "adam"))


def make_search(run_dir, log_path="", sleep=0.0, **sections) -> Search:
    cfg = tiny_config(Path(run_dir).parent, **sections)
    ev = FaultyEvaluator(tiny_data(), eval_config(cfg), log_path=str(log_path), sleep=sleep)
    return Search(cfg, run_dir, evaluator=ev)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_failed_candidates_do_not_stop_the_search(tmp_path):
    cfg = tiny_config(tmp_path)
    ev = FaultyEvaluator(tiny_data(), eval_config(cfg))
    seeds = [marked(MARK_RAISE), marked(MARK_NAN), marked(MARK_SLOW),
             Genome((Pool("max", 2),), Head(), Training(1e-3, 8, "adam"))]
    s = Search(cfg, tmp_path / "run", evaluator=ev, seeds=seeds).run()
    h = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(h) == 8 and sorted(h["id"]) == list(range(8))
    by_id = h.set_index("id")
    assert by_id.loc[0, "status"] == "failed"
    assert "error: RuntimeError: injected failure" in by_id.loc[0, "reason"]
    assert by_id.loc[1, "status"] == "failed" and by_id.loc[1, "reason"].startswith("diverged")
    assert by_id.loc[2, "status"] == "failed" and by_id.loc[2, "reason"].startswith("timeout")
    assert by_id.loc[3, "status"] == "rejected" and "no convolution" in by_id.loc[3, "reason"]
    ok = h[h["status"] == "ok"]
    assert len(ok) >= 2  # the random candidates and their children ran after the failures
    assert ok["latency_ms"].gt(0).all() and ok["params"].gt(0).all()
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert len(pareto) >= 1 and set(pareto["id"]) <= set(ok["id"])
    assert set(s.population_) <= set(ok["id"])
    assert {"genome", "accuracy", "latency_ms", "params", "status", "reason", "generation",
            "worker", "seconds"} <= set(h.columns)
    Genome.from_json(h["genome"].iloc[0])  # the stored genome is readable


def test_dead_worker_requeued_hung_and_memory_hungry_workers_killed(tmp_path):
    cfg = tiny_config(tmp_path, search={"population": 4, "evaluations": 4},
                      budget={"timeout_s": 60.0})
    ev = FaultyEvaluator(tiny_data(), eval_config(cfg), marker_dir=str(tmp_path))
    ev.threads_path = str(tmp_path / "threads.log")
    seeds = [marked(MARK_EXIT), marked(MARK_HANG), marked(MARK_HOG), marked(0.001)]
    s = Search(cfg, tmp_path / "run", evaluator=ev, seeds=seeds,
               pool_factory=lambda e: ProcessPool(e, 2, timeout_s=5.0, max_memory_mb=300))
    s.run()
    assert (tmp_path / "died-once").exists()  # the worker really died once
    h = pd.read_csv(tmp_path / "run" / "history.csv").set_index("id")
    assert len(h) == 4
    assert h.loc[0, "status"] == "ok" and h.loc[0, "attempts"] == 1
    assert h.loc[1, "status"] == "failed"
    assert "worker killed" in h.loc[1, "reason"]
    m = re.match(r"memory budget exceeded \((\d+) MiB > 300 MiB\)", h.loc[2, "reason"])
    assert h.loc[2, "status"] == "failed" and m, h.loc[2, "reason"]
    assert 300 < int(m.group(1)) <= HOG_MIB + 100
    assert h.loc[3, "status"] == "ok"
    assert h["worker"].str.startswith("proc-").all()
    # each worker process trains with one thread (torch and OpenMP)
    lines = (tmp_path / "threads.log").read_text().split("\n")
    assert {ln.split(" ", 1)[1] for ln in lines if ln} == {"1 1"}


def test_killed_search_resumes_without_repeating(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "import torch; torch.set_num_threads(1)\n"
              "from test_nas_search import make_search\n"
              f"make_search({str(run_dir)!r}, {str(log)!r}, sleep=0.3,"
              " search={'evaluations': 10}).run()\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    hist = run_dir / "history.csv"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if hist.exists() and len(hist.read_text().splitlines()) >= 1 + 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = pd.read_csv(hist)
    assert 4 <= len(before) < 10, "the search should have been killed mid-way"
    calls_before = len(log.read_text().splitlines())

    resumed = make_search(run_dir, log, search={"evaluations": 10}).run(resume=True)
    after = pd.read_csv(hist)
    assert sorted(after["id"]) == list(range(10))
    new_calls = [int(v) for v in log.read_text().splitlines()[calls_before:]]
    assert not set(new_calls) & set(before["id"]), "an evaluated candidate was re-trained"
    assert len(new_calls) == 10 - len(before)
    pd.testing.assert_frame_equal(after.set_index("id").loc[before["id"]].reset_index(),
                                  before, check_dtype=False)
    assert after["genome"].is_unique

    assert resumed.summary()["evaluations"] == 10

    # more evaluations may be asked for on resume; other changes are refused
    more = make_search(run_dir, search={"evaluations": 12}).run(resume=True)
    assert len(more.finished()) == 12
    with pytest.raises(ConfigurationError, match="differs"):
        make_search(run_dir, search={"population": 5}).run(resume=True)
    with pytest.raises(ConfigurationError, match="already holds a search"):
        make_search(run_dir).run()


def test_cli_run_resume_report(tmp_path):
    import onnx
    from typer.testing import CliRunner

    from oncoscale.cli import app

    write_patch_folder(tmp_path / "patches", n=48, size=32, seed=2)
    (tmp_path / "search.toml").write_text(
        '[data]\nsource = "patches"\ntest = 0.2\n'
        "[search]\npopulation = 3\nevaluations = 4\nbaseline_width = 2\n"
        "[budget]\nepochs = 0\nsteps = 2\nseconds = 0\ntimeout_s = 60\n"
        "[latency]\nrepeats = 2\nwarmup = 1\n"
        '[workers]\nn = 0\n[space]\nfilters = [2, 4]\nmax_layers = 4\n')
    runner = CliRunner()
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["nas", "run", "--config", str(tmp_path / "search.toml"),
                              "--run-dir", str(run_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    h = pd.read_csv(run_dir / "history.csv")
    assert len(h) == 4 and h["origin"].str.startswith("baseline").sum() == 2
    res = runner.invoke(app, ["nas", "run", "--config", str(tmp_path / "search.toml"),
                              "--run-dir", str(run_dir), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "history.csv"), h)  # nothing re-run
    res = runner.invoke(app, ["nas", "run", "--config", str(tmp_path / "search.toml"),
                              "--run-dir", str(run_dir), "--no-progress"])
    assert res.exit_code == 2 and "already holds a search" in " ".join(res.output.split())

    res = runner.invoke(app, ["nas", "report", "--run-dir", str(run_dir), "--select", "best"])
    assert res.exit_code == 0, res.output
    rep = json.loads((run_dir / "report" / "report.json").read_text())
    assert (run_dir / "report" / "pareto.png").stat().st_size > 1000
    (exp,) = rep["exported"]
    d = Path(exp["dir"])
    card = json.loads((d / "model_card.json").read_text())
    assert {"genome", "metrics", "data", "budget"} <= set(card)
    assert card["export"]["onnx"].get("checked") is True
    assert card["metrics"]["test_accuracy"] is not None
    onnx.checker.check_model(onnx.load(str(d / "model.onnx")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        ts = torch.jit.load(str(d / "model.pt"))
    assert ts(torch.randn(5, 3, 32, 32)).shape == (5, 2)
    assert "## Metrics" in (d / "model_card.md").read_text()
    res = runner.invoke(app, ["nas", "report", "--run-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2


def test_config_errors(tmp_path):
    from oncoscale.errors import InputError
    from oncoscale.nas.config import load_config

    p = tmp_path / "s.toml"
    p.write_text("[data]\nsource='x'\n[search]\npopulaton = 3\n")
    with pytest.raises(InputError, match=r"s.toml: unknown key\(s\) \['populaton'\]"):
        load_config(p)
    p.write_text("[data]\nsource='x'\n[workers]\ntransport='carrier-pigeon'\n")
    with pytest.raises(ConfigurationError, match="transport"):
        load_config(p)
    p.write_text("[data\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(p)
    assert np.isfinite(tiny_config(tmp_path).budget.timeout_s)

