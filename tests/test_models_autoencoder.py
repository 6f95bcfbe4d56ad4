"""Autoencoder model, Pearson metric and latent helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.models import Autoencoder, TiedLinear, latent, pearson_correlation


@settings(max_examples=15, deadline=None)
@given(n_inputs=st.integers(1, 40), n_latent=st.integers(1, 20),
       hidden=st.lists(st.integers(1, 15), max_size=2), batch=st.integers(1, 6),
       tied=st.booleans())
def test_shapes(n_inputs: int, n_latent: int, hidden: list[int], batch: int, tied: bool) -> None:
    m = Autoencoder(n_inputs, n_latent, hidden=hidden, tied=tied)
    x = torch.rand(batch, n_inputs)
    z = m.encode(x).detach()
    assert z.shape == (batch, n_latent)
    assert m.decode(z).shape == (batch, n_inputs)
    assert m(x).shape == (batch, n_inputs)
    # sigmoid latent and output stay in (0, 1)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    n_layers = len(hidden) + 1
    weights = [p for n, p in m.named_parameters() if n.endswith("weight")]
    assert len(weights) == (n_layers if tied else 2 * n_layers)
    assert len(list(m.parameters())) == len(weights) + 2 * n_layers  # every layer has a bias


def test_default_mirrors_published_setup() -> None:
    m = Autoencoder(30)
    assert m.n_latent == 1000
    assert isinstance(m.encoder[0], nn.Linear) and isinstance(m.encoder[1], nn.Sigmoid)
    assert isinstance(m.decoder[0], TiedLinear) and isinstance(m.decoder[1], nn.Sigmoid)
    # the decoder weight IS the encoder weight (one Parameter), the bias is its own
    assert m.decoder[0].weight is m.encoder[0].weight
    assert m.decoder[0].bias is not m.encoder[0].bias
    assert m.decoder[0].bias.shape == (30,)
    assert len(list(m.parameters())) == 3
    assert m.tied_pairs() == [("encoder.0", "decoder.0")]
    x = torch.rand(4, 30)
    W, b, c = m.encoder[0].weight, m.encoder[0].bias, m.decoder[0].bias
    expected = torch.sigmoid(torch.sigmoid(x @ W.T + b) @ W + c)
    torch.testing.assert_close(m(x), expected)


def test_tied_weights_shared_through_training_and_hidden_layers() -> None:
    torch.manual_seed(0)
    m = Autoencoder(12, 3, hidden=(6,))
    assert [p for p in m.tied_pairs()] == [("encoder.2", "decoder.0"), ("encoder.0", "decoder.2")]
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.rand(8, 12)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(m(x), x).backward()
        opt.step()
    assert m.decoder[2].weight is m.encoder[0].weight
    assert torch.equal(m.state_dict()["decoder.2.weight"], m.state_dict()["encoder.0.weight"])


def test_gradient_flows_and_tied_gradient_is_sum_of_both_uses() -> None:
    torch.manual_seed(1)
    tied = Autoencoder(10, 4)
    untied = Autoencoder(10, 4, tied=False)
    with torch.no_grad():
        untied.encoder[0].weight.copy_(tied.encoder[0].weight)
        untied.encoder[0].bias.copy_(tied.encoder[0].bias)
        untied.decoder[0].weight.copy_(tied.encoder[0].weight.T)
        untied.decoder[0].bias.copy_(tied.decoder[0].bias)
    x = torch.rand(5, 10)
    for m in (tied, untied):
        nn.functional.mse_loss(m(x), x).backward()
    for name, p in tied.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    torch.testing.assert_close(
        tied.encoder[0].weight.grad,
        untied.encoder[0].weight.grad + untied.decoder[0].weight.grad.T)


def test_fx_trace_and_sequential_view_match_forward() -> None:
    torch.manual_seed(2)
    m = Autoencoder(16, 5, hidden=(8,), dropout=0.0)
    x = torch.rand(3, 16)
    gm = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(gm(x), m(x))
    seq = m.as_sequential()
    assert isinstance(seq, nn.Sequential)
    torch.testing.assert_close(seq(x), m(x))
    # same parameters, not copies
    assert {id(p) for p in seq.parameters()} == {id(p) for p in m.parameters()}


def test_dropout_only_in_training() -> None:
    m = Autoencoder(20, 6, dropout=0.5)
    x = torch.rand(4, 20)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.equal(a, m(x))


def test_wrong_feature_count_names_expected_and_found() -> None:
    m = Autoencoder(20, 4)
    with pytest.raises(InputError, match=r"expected shape \(batch, 20\), found \(2, 19\)"):
        m(torch.rand(2, 19))
    with pytest.raises(InputError, match=r"\(batch, 4\)"):
        m.decode(torch.rand(2, 5))
    with pytest.raises(InputError, match="expected 20 features.*found 21"):
        latent(m, np.zeros((3, 21), dtype=np.float32))


@pytest.mark.parametrize("kwargs", [{"n_latent": 0}, {"hidden": (3, -1)}, {"dropout": 1.0},
                                    {"latent_activation": "softplus2"}])
def test_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        Autoencoder(10, **{"n_latent": 3, **kwargs})


def test_pearson_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((7, 30))
    y = x + 0.3 * rng.standard_normal((7, 30))
    per_sample = [np.corrcoef(x[i], y[i])[0, 1] for i in range(7)]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(pearson_correlation(tx, ty, reduction="none").numpy(),
                               per_sample, rtol=1e-5)
    np.testing.assert_allclose(float(pearson_correlation(tx, ty)), np.mean(per_sample),
                               rtol=1e-5)
    np.testing.assert_allclose(float(pearson_correlation(tx, ty, reduction="overall")),
                               np.corrcoef(x.ravel(), y.ravel())[0, 1], rtol=1e-5)
    # a constant profile has no defined r: reported as 0, not NaN
    assert float(pearson_correlation(torch.ones(1, 5), torch.rand(1, 5))) == 0.0
    with pytest.raises(InputError, match="shapes differ"):
        pearson_correlation(tx, ty[:, :3])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=3, max_size=20),
       st.floats(0.01, 10), st.floats(-5, 5))
def test_pearson_properties(values: list[float], scale: float, shift: float) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    if float(x.std()) < 1e-3:
        return
    y = scale * x + shift
    assert abs(float(pearson_correlation(x, y)) - 1.0) < 1e-6
    assert abs(float(pearson_correlation(x, -y)) + 1.0) < 1e-6
    r = float(pearson_correlation(x, torch.tensor(values[::-1], dtype=torch.float64)))
    assert -1.0 - 1e-9 <= r <= 1.0 + 1e-9


def test_latent_helper() -> None:
    torch.manual_seed(3)
    m = Autoencoder(25, 7, dropout=0.3)
    m.train()
    X = np.random.default_rng(1).random((53, 25))  # float64 input is cast to the model dtype
    Z = latent(m, X, batch_size=10)
    assert Z.shape == (53, 7) and Z.dtype == np.float32
    assert m.training  # mode restored
    m.eval()
    expected = m.encode(torch.from_numpy(X).float()).detach().numpy()
    np.testing.assert_allclose(Z, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="batch_size"):
        latent(m, X, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latent_on_cuda_matches_cpu() -> None:
    torch.manual_seed(4)
    m = Autoencoder(25, 7)
    X = np.random.default_rng(2).random((40, 25)).astype(np.float32)
    cpu = latent(m, X)
    gpu = latent(m, X, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)
