"""Single-process tests of oncoscale.parallel: schedules, balancing, partitioning, errors,
the single-process paths of fit, the ResNet family and the launch command."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from oncoscale.errors import ConfigurationError
from oncoscale.models.resnet import ResNet
from oncoscale.parallel import (
    Layout,
    TopKCompressor,
    bubble_fraction,
    fit,
    linear_partition,
    make_schedule,
    resolve_layout,
    split_graph,
)
from oncoscale.parallel.balance import make_plan, resolve_boundaries
from oncoscale.parallel.partition import profile_units

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- schedules
@settings(max_examples=60, deadline=None)
@given(K=st.integers(1, 6), M=st.integers(1, 9), name=st.sampled_from(["gpipe", "1f1b"]))
def test_schedules_run_every_microbatch_once_and_respect_dependencies(K, M, name):
    ops = {k: make_schedule(name, k, K, M) for k in range(K)}
    for k, seq in ops.items():
        assert sorted(m for op, m in seq if op == "F") == list(range(M))
        assert [m for op, m in seq if op == "B"] == list(range(M))  # B order matches on all
        for m in range(M):
            assert seq.index(("F", m)) < seq.index(("B", m))
        if name == "1f1b":  # at most K - k micro-batches in flight
            inflight = peak = 0
            for op, _ in seq:
                inflight += 1 if op == "F" else -1
                peak = max(peak, inflight)
            assert peak <= K - k
    # simulate the pipeline with blocking receives: it must finish (no deadlock)
    done, pos = set(), dict.fromkeys(range(K), 0)
    progress = True
    while progress:
        progress = False
        for k in range(K):
            if pos[k] == len(ops[k]):
                continue
            op, m = ops[k][pos[k]]
            ready = (op == "F" and (k == 0 or ("F", k - 1, m) in done)) or \
                    (op == "B" and (k == K - 1 or ("B", k + 1, m) in done))
            if ready:
                done.add((op, k, m))
                pos[k] += 1
                progress = True
    assert all(pos[k] == len(ops[k]) for k in range(K))


def test_bubble_fraction_and_unknown_schedule():
    assert bubble_fraction(4, 12) == pytest.approx(3 / 15)
    assert bubble_fraction(1, 5) == 0
    with pytest.raises(ConfigurationError, match="schedule must be one of"):
        make_schedule("zero-bubble", 0, 2, 2)


# ----------------------------------------------------------------------------- balancing
def _brute(costs, parts, allowed):
    best = None
    for cuts in itertools.combinations(sorted(allowed), parts - 1):
        bounds = [0, *cuts, len(costs)]
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        best = worst if best is None else min(best, worst)
    return best


@settings(max_examples=80, deadline=None)
@given(costs=st.lists(st.floats(0, 10), min_size=1, max_size=9), data=st.data())
def test_linear_partition_is_optimal_non_empty_and_uses_allowed_cuts(costs, data):
    n = len(costs)
    allowed = data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=n)) if n > 1 else set()
    allowed = {c for c in allowed if 1 <= c < n}
    parts = data.draw(st.integers(1, len(allowed) + 1))
    starts = linear_partition(costs, parts, sorted(allowed))
    assert len(starts) == parts and starts[0] == 0
    assert all(a < b for a, b in itertools.pairwise([*starts, n]))  # never an empty stage
    assert set(starts[1:]) <= allowed
    worst = max(sum(costs[a:b]) for a, b in itertools.pairwise([*starts, n]))
    assert worst == pytest.approx(_brute(costs, parts, allowed), rel=1e-9, abs=1e-9)


def test_linear_partition_does_not_dump_remainder_on_last_stage():
    assert linear_partition([1.0] * 10, 3) in ([0, 3, 6], [0, 4, 7], [0, 3, 7], [0, 4, 8])
    assert linear_partition([1, 1, 1, 1, 10, 1], 3) == [0, 4, 5]


def test_too_few_cut_points_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="cannot split 3 layers into 5 partitions"):
        linear_partition([1, 1, 1], 5)


# ----------------------------------------------------------------------------- partitioning
def _resnet_graph(depth=8, norm="group"):
    torch.manual_seed(0)
    model = ResNet(depth, num_classes=3, norm=norm, width=4)
    sg = split_graph(model)
    profile_units(sg, torch.randn(2, 3, 32, 32))
    return model, sg


def _run_stages(sg, starts, x):
    ends = [*starts[1:], sg.num_units]
    vals = (x,)
    crossing = []
    for a, b in zip(starts, ends, strict=True):
        stage, in_meta, out_meta = sg.build_stage(a, b)
        out = stage(*vals)
        crossing.append(len(out_meta))
        vals = out if isinstance(out, tuple) else (out,)
    return vals[0], crossing


def test_resnet_split_inside_a_block_sends_the_skip_tensor_and_matches_the_full_model():
    model, sg = _resnet_graph()
    starts = resolve_boundaries(sg, 3, ["layer1.0.conv2", "layer2.0.bn2"])
    x = torch.randn(4, 3, 32, 32)
    out, crossing = _run_stages(sg, starts, x)
    assert crossing[0] == 2 and crossing[1] == 2  # activation + identity branch
    torch.testing.assert_close(out, model(x))
    # gradients flow back through the crossing tensors
    ref = copy.deepcopy(model)
    out.sum().backward()
    ref(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("mode", ["auto", "time", "memory", "params", "layers"])
def test_every_balance_mode_gives_non_empty_valid_stages_and_a_plan(mode):
    _, sg = _resnet_graph()
    starts = resolve_boundaries(sg, 4, mode)
    assert len(starts) == 4 and all(sg.valid[c] for c in starts[1:])
    plan = make_plan(sg, starts)
    table = plan.table()
    assert table.count("\n") == 5 and "params" in table
    assert sum(s.params for s in plan.stages) == sum(p.numel() for p in sg.model.parameters())


def test_explicit_boundaries_errors():
    _, sg = _resnet_graph()
    with pytest.raises(ConfigurationError, match="names no unit"):
        resolve_boundaries(sg, 2, ["layer9"])
    with pytest.raises(ConfigurationError, match="must give 2 positive unit counts"):
        resolve_boundaries(sg, 2, [1, 1])
    with pytest.raises(ConfigurationError, match="must name 1 modules"):
        resolve_boundaries(sg, 2, ["layer2", "layer3"])


def test_fewer_layers_than_partitions():
    sg = split_graph(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    profile_units(sg, torch.randn(2, 4))
    with pytest.raises(ConfigurationError, match="has 2 layers but 3 partitions"):
        resolve_boundaries(sg, 3)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.lin(x)
        return x


def test_untraceable_model_names_the_op_and_suggests_sequential():
    with pytest.raises(ConfigurationError) as info:
        split_graph(_DataDependent())
    msg = str(info.value)
    assert "if x.sum() > 0" in msg and "nn.Sequential" in msg and "explicit boundaries" in msg


def test_profiling_leaves_training_state_untouched():
    torch.manual_seed(0)
    model = ResNet(8, num_classes=3, norm="batch", width=4)
    before = copy.deepcopy(model.state_dict())
    sg = split_graph(model)
    profile_units(sg, torch.randn(2, 3, 32, 32))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- layout / fit
def test_layout_numbering_and_layout_errors():
    lay = Layout(num_replicas=2, num_partitions=3, rank=4)
    assert (lay.replica_index, lay.partition_index) == (1, 1)
    assert lay.pipeline_ranks == [3, 4, 5] and lay.replica_ranks == [1, 4]
    assert (lay.prev_rank, lay.next_rank) == (3, 5)
    assert resolve_layout("auto", 4, None, None) == (1, 4)
    assert resolve_layout("model", 4, None, None) == (4, 1)
    assert resolve_layout("hybrid", 4, 2, None) == (2, 2)
    with pytest.raises(ConfigurationError, match="world size 4 != .* 3 x 1"):
        resolve_layout("model", 4, 3, None)
    with pytest.raises(ConfigurationError, match="strategy must be one of"):
        resolve_layout("pipeline", 4, None, None)


def test_single_process_fit_is_plain_training_and_multi_partition_is_an_error():
    torch.manual_seed(0)
    X, Y = torch.randn(30, 6), torch.randn(30, 2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    res = fit(model, (X, Y), nn.MSELoss(), optimizer=opt, epochs=2, batch_size=8,
              verbose=False)
    assert type(res).__name__ == "FitResult" and len(res.history) == 2
    with pytest.raises(ConfigurationError, match="world size 1 != .* 2 x 1"):
        fit(model, (X, Y), nn.MSELoss(), optimizer=opt, strategy="model", num_partitions=2)


def test_single_process_micro_batches_and_compressor_match_plain_training():
    from oncoscale.parallel.sequential import fit_sequential

    torch.manual_seed(0)
    X, Y = torch.randn(27, 6), torch.randn(27, 2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    ref = copy.deepcopy(model)
    opt = lambda p: torch.optim.Adam(p, lr=0.01)  # noqa: E731
    seq = fit_sequential(ref, (X, Y), nn.MSELoss(), optimizer=opt, epochs=2, batch_size=8,
                         progress=False)
    res = fit(model, (X, Y), nn.MSELoss(), optimizer=opt, epochs=2, batch_size=8,
              micro_batches=3, verbose=False)
    model_out, history = res  # unpacks as (model, history)
    assert model_out is model
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert history.train_loss.tolist() == pytest.approx(seq.history.train_loss.tolist(),
                                                        abs=1e-6)


def test_topk_compressor_error_feedback_keeps_what_it_drops():
    comp = TopKCompressor(ratio=0.25)
    g = torch.tensor([4.0, -1.0, 0.5, 0.1, 3.0, 0.0, -2.0, 0.2])
    sent = comp.decompress(comp.compress(g, "b0"), g)
    assert int((sent != 0).sum()) == 2
    torch.testing.assert_close(sent + comp.residuals["b0"], g)
    sent2 = comp.decompress(comp.compress(torch.zeros(8), "b0"), g)
    assert int((sent2 != 0).sum()) == 2  # the residual is sent next time


# ----------------------------------------------------------------------------- models / cli
@pytest.mark.parametrize(("depth", "block", "millions"),
                         [(20, "basic", 0.27), (110, "basic", 1.73), (164, "bottleneck", 1.70)])
def test_resnet_family_matches_published_sizes(depth, block, millions):
    model = ResNet(depth)
    assert model.block == block
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)


def test_resnet_shapes_and_bad_depth():
    assert ResNet(8, num_classes=5, width=4)(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigurationError, match="6n\\+2"):
        ResNet(21, block="basic")
    with pytest.raises(ConfigurationError, match="norm"):
        ResNet(20, norm="layer")


def test_launch_command_lines():
    from oncoscale.cli.parallel import launch_command

    cmd = launch_command(4, ["python", "train.py"], max_restarts=2)
    assert cmd[0].endswith("torchrun") and "--nproc-per-node=4" in cmd
    assert "--max-restarts=2" in cmd and cmd[-3:] == ["--no-python", "python", "train.py"]
    mpi = launch_command(2, ["python", "t.py"], backend="mpi")
    assert mpi[0].endswith("mpiexec") and mpi[1:3] == ["-n", "2"] and mpi[-2:] == ["python",
                                                                                  "t.py"]
