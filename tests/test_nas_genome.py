"""Genome decode / mutate / crossover: every decoded network runs or is rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.models.genome_net import GenomeRejectedError, build_network
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
)
from oncoscale.nas.variation import MUTATIONS, _apply, crossover, mutate


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread avoids oversubscribing the 2 shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SPACE = SearchSpace(filters=(2, 4, 8), max_layers=8)
SHAPES = st.sampled_from([(3, 8, 8), (3, 13, 13), (3, 16, 16), (1, 5, 7)])

conv = st.builds(Conv, st.integers(-1, 9), st.integers(0, 8), st.integers(0, 4),
                 st.sampled_from(["relu", "gelu", "tanh", "bogus"]))
pool = st.builds(Pool, st.sampled_from(["max", "avg", "median"]), st.integers(0, 4))
drop = st.builds(Dropout, st.floats(-0.2, 1.2))
res = st.builds(Residual, st.integers(0, 9), st.integers(1, 3), st.sampled_from(["relu", "elu"]))
layer = st.one_of(conv, pool, st.just(BatchNorm()), drop, res)
any_genome = st.builds(Genome, st.lists(layer, max_size=7).map(tuple),
                       st.builds(Head, st.integers(0, 8), st.floats(0, 0.9)),
                       st.builds(Training, st.floats(1e-4, 1e-1), st.integers(1, 8),
                                 st.sampled_from(["adam", "sgd"])))


def _check_runs_or_rejected(genome: Genome, shape: tuple[int, int, int]) -> str:
    """Decode; a decoded net must give (B, 3) finite logits and backprop; else a reason."""
    try:
        net, info = decode(genome, shape, num_classes=3, max_params=200_000)
    except GenomeRejectedError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        assert isinstance(exc, ConfigurationError)
        return "rejected"
    x = torch.randn(2, *shape)
    out = net.train()(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert net.eval()(x).shape == (2, 3)
    assert info.params == sum(p.numel() for p in net.parameters())
    assert len(info.shapes) <= len(genome.layers)
    for c, h, w in info.shapes:
        assert c >= 1 and h >= 1 and w >= 1
    return "ok"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_genome, SHAPES)
def test_arbitrary_genomes_run_or_are_rejected(genome, shape):
    _check_runs_or_rejected(genome, shape)
    assert Genome.from_json(genome.to_json()).to_json() == genome.to_json()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), SHAPES)
def test_random_mutated_and_crossed_genomes(seed, shape):
    rng = np.random.default_rng(seed)
    a, b = random_genome(SPACE, rng), random_genome(SPACE, rng)
    log: list[str] = []
    child = mutate(a, SPACE, rng, log=log)
    assert log and set(log) <= set(MUTATIONS)
    assert child != a
    x = crossover(a, b, SPACE, rng)
    for g in (a, b, child, x, mutate(x, SPACE, rng)):
        assert 1 <= len(g.layers) <= SPACE.max_layers
        assert Genome.from_json(g.to_json()) == g
        _check_runs_or_rejected(g, shape)


def test_every_mutation_kind_applies():
    rng = np.random.default_rng(0)
    g = Genome((Conv(4, 3, 1, "relu"), BatchNorm(), Pool("max", 2), Dropout(0.1),
                Residual(8, 2, "relu")), Head(16, 0.1), Training(1e-3, 32, "adam"))
    for op in MUTATIONS:
        changed = any(_apply(op, g, SPACE, rng) not in (None, g) for _ in range(10))
        assert changed, op


def test_crossover_mixes_parents():
    rng = np.random.default_rng(1)
    a = Genome(tuple(Conv(2, 3) for _ in range(4)), Head(0, 0.0), Training(1e-3, 16, "sgd"))
    b = Genome(tuple(Conv(8, 5) for _ in range(4)), Head(8, 0.5), Training(1e-2, 64, "adam"))
    kids = [crossover(a, b, SPACE, rng) for _ in range(40)]
    assert any({g.filters for g in k.layers} == {2, 8} for k in kids)
    assert {k.train.optimizer for k in kids} == {"sgd", "adam"}


def test_repairs_and_rejections_are_recorded():
    g = Genome((Conv(4, 4, 2), Pool("max", 2), Pool("max", 2), Pool("max", 2), BatchNorm(),
                BatchNorm(), Conv(4, 3, 2)))
    net, info = decode(g, (3, 8, 8))
    assert any("even kernel 4 made 5" in r for r in info.repairs)
    assert any("pool 2 on a 1x1 map dropped" in r for r in info.repairs)
    assert any("repeated batch-norm dropped" in r for r in info.repairs)
    assert any("stride 2 on a 1x1 map set to 1" in r for r in info.repairs)
    assert net.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 2)
    with pytest.raises(GenomeRejectedError, match="no convolution"):
        decode(Genome((Pool(), BatchNorm())), (3, 8, 8))
    with pytest.raises(GenomeRejectedError, match="no layers"):
        decode(Genome(()), (3, 8, 8))
    with pytest.raises(GenomeRejectedError, match="parameters exceed the limit of 100"):
        decode(Genome((Conv(64, 7),)), (3, 8, 8), max_params=100)
    with pytest.raises(GenomeRejectedError, match="unknown layer type"):
        build_network([{"type": "lstm"}], {}, (3, 8, 8))


def test_shape_inference_matches_forward():
    g = Genome((Conv(4, 5, 2), Pool("avg", 2), Residual(6, 2), Conv(3, 1, 1)))
    net, info = decode(g, (3, 37, 41))
    feats = net[:-1](torch.randn(1, 3, 37, 41))
    assert tuple(feats.shape[1:]) == info.feature_shape == info.shapes[-1]


@pytest.mark.parametrize("size", [32, 96, 100])
def test_baselines_decode(size):
    b = baselines(size, width=4)
    assert set(b) == {"vgg_like", "resnet18_like"}
    for g in b.values():
        net, info = decode(g, (3, size, size))
        assert net(torch.randn(1, 3, size, size)).shape == (1, 2)
    r = b["resnet18_like"]
    assert sum(isinstance(x, Residual) for x in r.layers) == 8  # 4 stages x 2 basic blocks
    assert sum(isinstance(x, Conv) for x in b["vgg_like"].layers) >= 4


def test_from_json_errors():
    with pytest.raises(InputError, match="malformed genome"):
        Genome.from_json('{"l":[["warp",1]]}')
    with pytest.raises(InputError, match="malformed genome"):
        Genome.from_json("not json")
