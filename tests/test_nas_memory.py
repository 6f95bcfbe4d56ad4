"""The memory budget is measured during training in the evaluating process itself (inline and
comm workers have no outside watchdog): a candidate whose memory keeps growing past
``max_memory_mb`` fails with the reason, the same candidate under a larger budget trains."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from oncoscale.nas.evaluate import Evaluator, rss_mib
from oncoscale.nas.search import eval_config

sys.path.insert(0, str(Path(__file__).parent))
_base = importlib.import_module("test_nas_search")  # its tiny config, data and genomes
marked, tiny_config, tiny_data = _base.marked, _base.tiny_config, _base.tiny_data

STEP_MIB = 48


class _Keep(nn.Module):
    """Keeps STEP_MIB more memory at every training forward pass (a leaking candidate)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.kept.append(torch.ones(STEP_MIB * 2**18))  # float32, touched
        return x


class LeakyEvaluator(Evaluator):
    def build(self, genome):
        net, info = super().build(genome)
        return nn.Sequential(_Keep(), net), info


@pytest.mark.skipif(rss_mib() is None, reason="needs Linux /proc")
@pytest.mark.parametrize("budget_mb, ok", [(100, False), (2000, True)])
def test_growing_candidate_fails_against_its_budget(tmp_path, budget_mb, ok):
    cfg = tiny_config(tmp_path, budget={"steps": 6, "timeout_s": 60.0,
                                        "max_memory_mb": budget_mb})
    ev = LeakyEvaluator(tiny_data(), eval_config(cfg))
    res = ev(marked(0.001).to_json(), seed=0, cand_id=0)
    if ok:
        assert res.status == "ok", res.reason
    else:
        assert res.status == "failed"
        assert res.reason.startswith("memory budget exceeded (")
        assert f"MiB > {budget_mb} MiB at training step" in res.reason
        grown = float(res.reason.split("(")[1].split(" MiB")[0])
        step = int(res.reason.rsplit("step ", 1)[1].rstrip(")"))
        assert budget_mb < grown <= step * STEP_MIB + 32 and step < 6
