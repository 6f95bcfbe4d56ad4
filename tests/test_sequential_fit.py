"""Single-process training loop: convergence, early stopping, checkpoints, exact resume,
determinism, input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.models import Autoencoder, pearson_correlation
from oncoscale.parallel.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from oncoscale.parallel.sequential import (
    EarlyStopping,
    fit_sequential,
    train_autoencoder,
)


def adam(lr: float = 1e-2):
    return lambda p: torch.optim.Adam(p, lr=lr)


def toy_profiles(n: int = 96, genes: int = 24, seed: int = 0) -> np.ndarray:
    """Low-rank profiles in [0, 1]: learnable structure for a small autoencoder."""
    rng = np.random.default_rng(seed)
    z = rng.random((n, 3))
    w = rng.random((3, genes))
    x = z @ w
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def make_ae(seed: int = 0, **kw) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(24, 6, **kw)


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_loss_decreases_and_history_columns() -> None:
    X = toy_profiles()
    res = fit_sequential(make_ae(), X, nn.MSELoss(), optimizer=adam(), epochs=15,
                         batch_size=16, validation=0.25,
                         metrics={"pearson": pearson_correlation}, progress=False)
    h = res.history
    assert list(h.columns) == ["epoch", "train_loss", "val_loss", "train_pearson",
                               "val_pearson", "seconds", "samples_per_s"]
    assert h["epoch"].tolist() == list(range(1, 16))
    assert h["train_loss"].iloc[-1] < 0.5 * h["train_loss"].iloc[0]
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]
    assert h["val_pearson"].iloc[-1] > h["val_pearson"].iloc[0]
    assert (h["samples_per_s"] > 0).all() and (h["seconds"] > 0).all()
    assert res.best_epoch == int(h["val_loss"].idxmin()) + 1
    assert not res.stopped_early and res.checkpoint is None


def test_train_autoencoder_reports_pearson() -> None:
    X = toy_profiles(seed=1)
    model, res = train_autoencoder(X, n_latent=6, epochs=12, batch_size=16, lr=1e-2,
                                   progress=False)
    assert isinstance(model, Autoencoder) and not model.training
    assert {"train_pearson", "val_pearson"} <= set(res.history.columns)
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]"):
        train_autoencoder(X * 3, n_latent=4, epochs=1, progress=False)


def test_data_forms_give_identical_training() -> None:
    """numpy, tensor, (x,) tuple, TensorDataset and a custom Dataset: same batches, same
    result bit for bit."""
    X = toy_profiles(n=40)

    class Rows(Dataset):
        def __len__(self) -> int:
            return len(X)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(X[i])

    forms = [X, torch.from_numpy(X), (X,), TensorDataset(torch.from_numpy(X)), Rows(),
             (X, X)]
    models = []
    for data in forms:
        m = make_ae(seed=5)
        fit_sequential(m, data, nn.MSELoss(), optimizer=adam(), epochs=2, batch_size=7,
                       validation=0.2, progress=False)
        models.append(m)
    for m in models[1:]:
        assert params_equal(models[0], m)


def test_supervised_tuple_and_target() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    r1 = fit_sequential(a, (x, y), nn.MSELoss(), optimizer=adam(0.05), epochs=30,
                        batch_size=16, progress=False)
    fit_sequential(b, x, nn.MSELoss(), optimizer=adam(0.05), epochs=30, batch_size=16,
                   target=y, progress=False)
    assert params_equal(a, b)
    assert r1.history["train_loss"].iloc[-1] < 0.1 * r1.history["train_loss"].iloc[0]


def test_early_stopping_triggers_and_restores_best() -> None:
    """Train toward y = 2x while validating on y = -2x: validation only gets worse, so the
    best epoch is the first and training stops after `patience` more epochs."""
    x = torch.linspace(-1, 1, 32).unsqueeze(1)

    def model() -> nn.Module:
        torch.manual_seed(0)
        m = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            m.weight.fill_(0.0)
        return m

    stop = EarlyStopping(patience=2, min_delta=0.0)
    res = fit_sequential(model(), (x, 2 * x), nn.MSELoss(), optimizer=adam(0.1), epochs=20,
                         batch_size=8, validation=(x, -2 * x), early_stopping=stop,
                         progress=False)
    assert res.stopped_early
    assert len(res.history) == 3 and res.best_epoch == 1
    one_epoch = model()
    fit_sequential(one_epoch, (x, 2 * x), nn.MSELoss(), optimizer=adam(0.1), epochs=1,
                   batch_size=8, progress=False)
    assert params_equal(res.model, one_epoch)
    # without early stopping the same run goes all the way
    full = fit_sequential(model(), (x, 2 * x), nn.MSELoss(), optimizer=adam(0.1), epochs=5,
                          batch_size=8, validation=(x, -2 * x), progress=False)
    assert not full.stopped_early and len(full.history) == 5
    # min_delta: improvements smaller than it do not count
    flat = fit_sequential(model(), (x, 2 * x), nn.MSELoss(), optimizer=adam(1e-4), epochs=20,
                          batch_size=8, early_stopping=(2, 10.0), progress=False)
    assert flat.stopped_early and len(flat.history) == 3


def test_exact_resume_after_kill_equals_straight_run(tmp_path: Path) -> None:
    """4 epochs straight == 2 epochs, a crash in the middle of epoch 3, resume to 4 —
    bitwise on CPU, with dropout (global RNG), shuffling and Adam state in play."""
    X = toy_profiles(n=60)
    kw = dict(optimizer=adam(), batch_size=8, validation=0.2, seed=11, progress=False,
              metrics={"pearson": pearson_correlation}, early_stopping=10)

    straight = make_ae(seed=3, dropout=0.2)
    r_straight = fit_sequential(straight, X, nn.MSELoss(), epochs=4, **kw)

    calls = {"n": 0}
    calls_per_epoch = 6 + 2  # 48 training samples / 8, then 12 validation samples / 8

    def dying_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2 * calls_per_epoch + 3:
            raise KeyboardInterrupt("killed")
        return nn.functional.mse_loss(pred, target)

    ckdir = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        fit_sequential(make_ae(seed=3, dropout=0.2), X, dying_loss, epochs=4,
                       checkpoint_dir=ckdir, **kw)
    assert load_checkpoint(checkpoint_path(ckdir))["epoch"] == 2
    # scramble global RNGs as a fresh process would have them
    torch.manual_seed(999)
    np.random.seed(999)
    resumed = make_ae(seed=42, dropout=0.2)  # different init: must be overwritten
    r_resumed = fit_sequential(resumed, X, nn.MSELoss(), epochs=4, checkpoint_dir=ckdir, **kw)
    assert params_equal(straight, resumed)
    for col in ("train_loss", "val_loss", "train_pearson", "val_pearson"):
        assert r_straight.history[col].tolist() == r_resumed.history[col].tolist(), col
    assert r_resumed.best_epoch == r_straight.best_epoch
    # a finished run resumes to nothing and returns the saved history
    again = make_ae(seed=1, dropout=0.2)
    r_again = fit_sequential(again, X, nn.MSELoss(), epochs=4, checkpoint_dir=ckdir, **kw)
    assert params_equal(again, straight) and len(r_again.history) == 4
    # a different run in the same directory is refused, not silently mixed
    with pytest.raises(ConfigurationError, match="batch_size"):
        fit_sequential(make_ae(), X, nn.MSELoss(), epochs=4, checkpoint_dir=ckdir,
                       **{**kw, "batch_size": 9})


def test_determinism_same_seed_same_result_other_seed_differs() -> None:
    X = toy_profiles(n=48)

    def run(seed: int) -> nn.Module:
        m = make_ae(seed=0, dropout=0.1)
        fit_sequential(m, X, nn.MSELoss(), optimizer=adam(), epochs=2, batch_size=8,
                       validation=0.25, seed=seed, progress=False)
        return m

    a, b, c = run(1), run(1), run(2)
    assert params_equal(a, b)
    assert not params_equal(a, c)


def test_checkpoint_save_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, {"epoch": 1, "w": torch.arange(5)})
    before = target.read_bytes()

    class Exploding:
        def __reduce__(self):
            raise RuntimeError("disk full halfway")

    big = torch.zeros(200_000)  # written before the failing entry: a real partial write
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, {"epoch": 2, "big": big, "bad": Exploding()})
    assert target.read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left
    assert load_checkpoint(target)["epoch"] == 1
    # a fresh target is not created at all by a failed save
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "new.pt", {"bad": Exploding()})
    assert not (tmp_path / "new.pt").exists()
    # truncated / foreign files are reported with their path
    (tmp_path / "trunc.pt").write_bytes(before[: len(before) // 2])
    with pytest.raises(InputError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip(tmp_path: Path) -> None:
    import random

    g = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "r.pt", {"rng": capture_rng_state(g)})
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g))
    g2 = torch.Generator().manual_seed(0)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], g2)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g2))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and torch.equal(expected[3], got[3])


def test_bad_inputs() -> None:
    X = toy_profiles(n=20)
    fit = lambda m, d, **kw: fit_sequential(  # noqa: E731
        m, d, nn.MSELoss(), optimizer=adam(), epochs=1, progress=False, **kw)
    with pytest.raises(InputError, match=r"expected shape \(batch, 24\), found \(\d+, 23\)"):
        fit(make_ae(), X[:, :23])
    bad = X.copy()
    bad[4, 7] = np.nan
    with pytest.raises(InputError, match="NaN.*sample 4, feature 7"):
        fit(make_ae(), bad)
    with pytest.raises(InputError, match="NaN"):
        fit(make_ae(), X, validation=bad)
    for size in (0, -3, 2.5):
        with pytest.raises(ConfigurationError, match="batch_size"):
            fit(make_ae(), X, batch_size=size)
    with pytest.raises(ConfigurationError, match="validation"):
        fit(make_ae(), X, validation=1.5)
    with pytest.raises(InputError, match="at least one sample"):
        fit(make_ae(), X[:0])
    with pytest.raises(InputError, match="20 samples vs 19 targets"):
        fit(make_ae(), X, target=X[:19])
    with pytest.raises(ConfigurationError, match="optimizer"):
        fit_sequential(make_ae(), X, nn.MSELoss(), optimizer="adam", progress=False)
    with pytest.raises(ConfigurationError, match="scalar"):
        fit_sequential(make_ae(), X, nn.MSELoss(reduction="none"), optimizer=adam(),
                       progress=False)
    with pytest.raises(ConfigurationError, match="parallel engine"):
        fit(make_ae(), X, strategy="model", num_partitions=2)
    with pytest.raises(ConfigurationError, match="val_loss"):
        fit(make_ae(), X, early_stopping={"patience": 2, "monitor": "val_loss"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_within_tolerance() -> None:
    X = toy_profiles(n=64)
    cpu, gpu = make_ae(seed=2), make_ae(seed=2)
    kw = dict(optimizer=adam(), epochs=3, batch_size=16, validation=0.25, progress=False)
    fit_sequential(cpu, X, nn.MSELoss(), device="cpu", **kw)
    res = fit_sequential(gpu, X, nn.MSELoss(), device="cuda", **kw)
    assert next(res.model.parameters()).is_cuda
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-3, atol=1e-4)


def test_checkpoint_every_and_final_checkpoint(tmp_path: Path) -> None:
    X = toy_profiles(n=16)
    n = {"calls": 0}

    def loss_dies_in_epoch_4(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n["calls"] += 1
        if n["calls"] > 3 * 2:  # 2 batches per epoch, no validation
            raise RuntimeError("node lost")
        return nn.functional.mse_loss(pred, target)

    with pytest.raises(RuntimeError, match="node lost"):
        fit_sequential(make_ae(), X, loss_dies_in_epoch_4, optimizer=adam(), epochs=5,
                       batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2,
                       progress=False)
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert state["epoch"] == 2 and len(state["history"]["rows"]) == 2  # epoch 3 not saved
    res = fit_sequential(make_ae(), X, nn.MSELoss(), optimizer=adam(), epochs=5, batch_size=8,
                         checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert load_checkpoint(checkpoint_path(tmp_path))["epoch"] == 5  # the end is always saved
    assert res.checkpoint == checkpoint_path(tmp_path) and len(res.history) == 5
    # resume=False starts over and overwrites
    res = fit_sequential(make_ae(), X, nn.MSELoss(), optimizer=adam(), epochs=1, batch_size=8,
                         checkpoint_dir=tmp_path, resume=False, progress=False)
    assert len(res.history) == 1
    assert load_checkpoint(checkpoint_path(tmp_path))["epoch"] == 1


def test_num_threads_is_scoped_to_the_call() -> None:
    X = toy_profiles(n=16)
    before = torch.get_num_threads()
    res = fit_sequential(make_ae(), X, nn.MSELoss(), optimizer=adam(), epochs=1, batch_size=8,
                         num_threads=1, progress=False)
    assert torch.get_num_threads() == before and len(res.history) == 1
    with pytest.raises(ConfigurationError, match="num_threads"):
        fit_sequential(make_ae(), X, nn.MSELoss(), optimizer=adam(), num_threads=0,
                       progress=False)
    assert torch.get_num_threads() == before
