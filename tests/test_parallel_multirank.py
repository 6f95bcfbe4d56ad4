"""Multi-rank tests of oncoscale.parallel with real processes (torchrun).

Each launch runs a battery of checks inside the workers (this same file run as a script),
so torch is imported a few times only. Every check trains a fresh model with one strategy
and compares the parameters gathered on rank 0 (and the loss history) with
``fit_sequential`` on the same data, seed and optimizer.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
TORCHRUN = Path(sys.executable).with_name("torchrun")
ATOL = 2e-5


# ----------------------------------------------------------------------------- worker side
def _models():
    import torch
    from torch import nn

    from oncoscale.models.resnet import ResNet

    def mlp():
        return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(),
                             nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def autoencoder():
        try:
            from oncoscale.models.autoencoder import Autoencoder
            return Autoencoder(12, 4, hidden=(8,), tied=True)
        except ImportError:  # pragma: no cover - stand-in until the model exists
            return nn.Sequential(nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 12))

    def resnet(depth=8, norm="group"):
        return ResNet(depth, num_classes=3, norm=norm, width=4)

    g = torch.Generator().manual_seed(1)
    data = {
        "mlp": (torch.randn(37, 12, generator=g), torch.randn(37, 3, generator=g)),
        "ae": (torch.rand(29, 12, generator=g),),
        "img": (torch.randn(20, 3, 32, 32, generator=g), torch.randint(0, 3, (20,), generator=g)),
    }
    return {"mlp": mlp, "ae": autoencoder, "resnet": resnet}, data


def _compare(model, ref) -> float:
    worst = 0.0
    ref_state = ref.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            worst = max(worst, float((v - ref_state[k]).abs().max()))
    return worst


def _equivalence(name, make, data, loss, *, epochs=2, batch_size=16, lr=0.05, **kw):
    import torch

    from oncoscale.parallel import fit
    from oncoscale.parallel.sequential import fit_sequential

    torch.manual_seed(0)
    model = make()
    ref = copy.deepcopy(model)
    opt = lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)  # noqa: E731
    seq = fit_sequential(ref, data, loss, optimizer=opt, epochs=epochs,
                         batch_size=batch_size, progress=False)
    res = fit(model, data, loss, optimizer=opt, epochs=epochs, batch_size=batch_size,
              gather_on_rank0=True, verbose=False, **kw)
    rank = int(os.environ["RANK"])
    out = {"check": name, "rank": rank,
           "loss_diff": max(abs(a - b) for a, b in zip(res.history.train_loss,
                                                         seq.history.train_loss, strict=True)),
           "idle": float(res.history.idle_fraction.iloc[-1]),
           "buffers": res.stats["recv_buffers_allocated"],
           "overlapped": res.stats["buckets_launched_in_backward"]}
    if rank == 0:
        out["param_diff"] = _compare(model, ref)
    return out


def _expect_error(name, fn, kind, text):
    try:
        fn()
    except kind as exc:
        return {"check": name, "rank": int(os.environ["RANK"]), "ok": text in str(exc),
                "message": str(exc)}
    return {"check": name, "rank": int(os.environ["RANK"]), "ok": False, "message": "no error"}


def _batchnorm_replicas(data, loss) -> dict:
    """Data parallel with batch norm: replicas see different batches, so their running
    statistics differ unless the engine averages them; with ``sync_buffers=False`` they must
    differ (the check would pass vacuously otherwise)."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from oncoscale.parallel import fit

    def gathered_stats(sync: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                              nn.Linear(16, 3))
        fit(model, data, loss, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), epochs=1,
            batch_size=16, strategy="data", verbose=False, sync_buffers=sync)
        bn = model[1]
        mine = torch.cat([bn.running_mean, bn.running_var])
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        return torch.stack(every)

    synced, free = gathered_stats(True), gathered_stats(False)
    spread_synced = float((synced - synced[0]).abs().max())
    spread_free = float((free - free[0]).abs().max())
    return {"check": "batchnorm-buffers-R2", "rank": int(os.environ["RANK"]),
            "ok": spread_synced < 1e-6 and spread_free > 1e-4,
            "message": f"spread synced {spread_synced:.2e}, unsynced {spread_free:.2e}"}


def battery(world: int) -> list[dict]:
    import torch
    from torch import nn

    from oncoscale.errors import ConfigurationError
    from oncoscale.parallel import TopKCompressor, fit

    make, data = _models()
    mse, ce = nn.MSELoss(), nn.CrossEntropyLoss()
    out = []
    opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    if world == 4:
        out.append(_equivalence("mlp-data-R4", make["mlp"], data["mlp"], mse, strategy="data"))
        out.append(_equivalence("mlp-model-P4-gpipe", make["mlp"], data["mlp"], mse,
                                strategy="model", micro_batches=4, schedule="gpipe"))
        out.append(_equivalence("mlp-model-P4-1f1b-M3", make["mlp"], data["mlp"], mse,
                                strategy="model", micro_batches=3, schedule="1f1b"))
        out.append(_equivalence("mlp-hybrid-2x2-1f1b", make["mlp"], data["mlp"], mse,
                                strategy="hybrid", num_partitions=2, num_replicas=2,
                                micro_batches=3, schedule="1f1b"))
        out.append(_equivalence("ae-tied-hybrid-2x2-gpipe", make["ae"], data["ae"], mse,
                                strategy="hybrid", num_partitions=2, num_replicas=2,
                                micro_batches=2, schedule="gpipe", balance="layers"))
        out.append(_equivalence("resnet-skip-hybrid-2x2", make["resnet"], data["img"], ce,
                                strategy="hybrid", num_partitions=2, num_replicas=2,
                                micro_batches=2, batch_size=8, epochs=1,
                                balance=["layer2.0.conv2"]))
        out.append(_equivalence("resnet-model-P4-1f1b", make["resnet"], data["img"], ce,
                                strategy="model", micro_batches=4, batch_size=8, epochs=1,
                                schedule="1f1b"))
        out.append(_equivalence("mlp-data-R4-compressor", make["mlp"], data["mlp"], mse,
                                strategy="data", compressor=TopKCompressor(ratio=1.0)))
        from oncoscale.comm.compress import GradientCompression, TopK
        out.append(_equivalence("mlp-hybrid-2x2-comm-topk", make["mlp"], data["mlp"], mse,
                                strategy="hybrid", num_partitions=2, num_replicas=2,
                                micro_batches=2, compressor=TopK(1.0)))
        # a GradientCompression with its own algorithm (the packed allgather) runs over each
        # partition's replica group (it was handed to sparse_allreduce, which refused it)
        out.append(_equivalence("mlp-hybrid-2x2-packed-allgather", make["mlp"], data["mlp"],
                                mse, strategy="hybrid", num_partitions=2, num_replicas=2,
                                micro_batches=2, compressor=GradientCompression(
                                    TopK(1.0), algorithm="packed_allgather")))
        # ResNet-110 (batch norm) trains hybrid 2 partitions x 2 replicas for two steps
        torch.manual_seed(0)
        r110 = make["resnet"](110, "batch")
        before = [p.detach().clone() for p in r110.parameters()]
        res = fit(r110, data["img"], ce, optimizer=opt, epochs=1, batch_size=8,
                  strategy="hybrid", num_partitions=2, num_replicas=2, micro_batches=2,
                  max_steps=2, verbose=False)
        changed = sum(int(not torch.equal(a, b)) for a, b in zip(before, r110.parameters(),
                                                                   strict=True))
        out.append({"check": "resnet110-hybrid-2x2", "rank": int(os.environ["RANK"]),
                    "ok": bool(torch.isfinite(torch.tensor(res.stats["step_losses"])).all())
                    and changed > 0 and len(res.stats["step_losses"]) == 2,
                    "message": f"changed={changed} losses={res.stats['step_losses']}"})
        out.append(_expect_error(
            "error-world-size", lambda: fit(make["mlp"](), data["mlp"], mse, optimizer=opt,
                                            num_partitions=3, num_replicas=1, verbose=False),
            ConfigurationError, "world size 4 != num_partitions x num_replicas = 3 x 1"))
        out.append(_expect_error(
            "error-too-few-layers",
            lambda: fit(nn.Sequential(nn.Linear(12, 3), nn.ReLU()), data["mlp"], mse,
                        optimizer=opt, strategy="model", verbose=False),
            ConfigurationError, "partitions"))
    else:
        out.append(_equivalence("mlp-data-R2", make["mlp"], data["mlp"], mse, strategy="data",
                                micro_batches=3, bucket_cap_mb=0.002))
        out.append(_equivalence("mlp-model-P2-gpipe", make["mlp"], data["mlp"], mse,
                                strategy="model", micro_batches=4, schedule="gpipe",
                                balance="time"))
        out.append(_equivalence("ae-model-P2-1f1b", make["ae"], data["ae"], mse,
                                strategy="model", micro_batches=3, balance="memory"))
        out.append(_equivalence("resnet-skip-model-P2-gpipe", make["resnet"], data["img"], ce,
                                strategy="model", micro_batches=2, batch_size=8, epochs=1,
                                schedule="gpipe", balance=["layer1.0.conv2"]))
        out.append(_batchnorm_replicas(data["mlp"], mse))
        from torch.utils.data import TensorDataset
        out.append(_equivalence("dataset-resnet-none-data-R2", lambda: make["resnet"](8, "none"),
                                TensorDataset(*data["img"]), ce, strategy="data",
                                batch_size=8, epochs=1))
    return out


def resume_worker(ckpt: str, marker: str) -> list[dict]:
    """Model-parallel run that rank 1 kills on step 5 of its first attempt."""
    import torch
    from torch import nn

    from oncoscale.parallel import fit
    from oncoscale.parallel.sequential import fit_sequential

    make, data = _models()
    torch.manual_seed(0)
    model = make["mlp"]()
    ref = copy.deepcopy(model)
    opt = lambda p: torch.optim.Adam(p, lr=0.01)  # noqa: E731
    seq = fit_sequential(ref, data["mlp"], nn.MSELoss(), optimizer=opt, epochs=3,
                         batch_size=8, progress=False)
    rank = int(os.environ["RANK"])

    def kill(info):
        if info["step"] == 5 and rank == 1 and not os.path.exists(marker):
            Path(marker).write_text("killed")
            os._exit(17)

    res = fit(model, data["mlp"], nn.MSELoss(), optimizer=opt, epochs=3, batch_size=8,
              strategy="model", micro_batches=2, checkpoint_dir=ckpt, checkpoint_every=2,
              callbacks=[kill], gather_on_rank0=True, verbose=True)
    out = {"check": "resume", "rank": rank,
           "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
           "loss_diff": max(abs(a - b) for a, b in zip(res.history.train_loss,
                                                         seq.history.train_loss, strict=True)),
           "epochs": len(res.history)}
    if rank == 0:
        out["param_diff"] = _compare(model, ref)
    return [out]


def _worker_main() -> None:
    import torch

    torch.set_num_threads(1)
    mode = sys.argv[1]
    rows = (battery(int(os.environ["WORLD_SIZE"])) if mode == "battery"
            else resume_worker(sys.argv[2], sys.argv[3]))
    path = Path(os.environ["ONCOSCALE_TEST_OUT"]) / f"rank{os.environ['RANK']}.json"
    path.write_text(json.dumps(rows))
    from oncoscale.comm import init

    world = init()  # the world fit() joined; shut it down cleanly (barrier, then teardown)
    world.barrier()
    world.shutdown()


# ----------------------------------------------------------------------------- pytest side
def _launch(tmp_path: Path, nproc: int, *args: str, restarts: int = 0,
            timeout: int = 240) -> tuple[list[dict], str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ONCOSCALE_TEST_OUT=str(tmp_path),
               PYTHONUNBUFFERED="1")
    cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={restarts}", str(HERE), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    rows = []
    for r in range(nproc):
        rows += json.loads((tmp_path / f"rank{r}.json").read_text())
    return rows, log


def _check_rows(rows: list[dict]) -> None:
    failures = []
    for row in rows:
        if "param_diff" in row and not row["param_diff"] < ATOL:
            failures.append(row)
        if "loss_diff" in row and not row["loss_diff"] < ATOL:
            failures.append(row)
        if "ok" in row and not row["ok"]:
            failures.append(row)
    assert not failures, json.dumps(failures, indent=1)


pytestmark = [pytest.mark.multiproc,
              pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")]


@pytest.mark.slow
def test_four_ranks_every_strategy_matches_sequential(tmp_path: Path) -> None:
    rows, _ = _launch(tmp_path, 4, "battery")
    checks = {r["check"] for r in rows}
    assert {"mlp-hybrid-2x2-1f1b", "resnet110-hybrid-2x2", "ae-tied-hybrid-2x2-gpipe",
            "error-world-size", "mlp-hybrid-2x2-packed-allgather"} <= checks
    assert len([r for r in rows if "param_diff" in r]) == 10
    _check_rows(rows)


def test_two_ranks_model_and_data_parallel_match_sequential(tmp_path: Path) -> None:
    rows, _ = _launch(tmp_path, 2, "battery")
    assert len([r for r in rows if "param_diff" in r]) == 5
    assert {r["check"] for r in rows} >= {"batchnorm-buffers-R2"}
    # receive buffers are reused: 6 steps x 4 micro-batches, but GPipe needs at most 4 in
    # flight per shape (micro-batch sizes 4, 2 and 1 occur) -> at most 8 allocations
    gpipe = [r for r in rows if r["check"] == "mlp-model-P2-gpipe"]
    assert all(0 < r["buffers"] <= 8 for r in gpipe), gpipe
    # small buckets: allreduces start from the gradient hooks, during the backward pass
    data = [r for r in rows if r["check"] == "mlp-data-R2"]
    assert all(r["overlapped"] > 0 for r in data), data
    _check_rows(rows)


def test_killed_rank_resumes_from_checkpoint(tmp_path: Path) -> None:
    ckpt, marker = tmp_path / "ckpt", tmp_path / "killed.marker"
    rows, log = _launch(tmp_path, 2, "resume", str(ckpt), str(marker), restarts=1)
    assert marker.exists(), "the kill callback never fired"
    assert "resumed from step 4" in log, log[-3000:]
    assert all(r["restart"] == 1 for r in rows), rows
    assert all(r["epochs"] == 3 for r in rows)
    _check_rows(rows)
    steps = sorted(p.name for p in ckpt.iterdir())
    assert len(steps) == 1, steps  # older steps are dropped once every rank saved a newer one
    shutil.rmtree(ckpt)


if __name__ == "__main__":
    _worker_main()
