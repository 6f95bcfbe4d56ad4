"""Fully-connected autoencoder for expression profiles (the GDC / ANS setup of Fan et al.).

The default mirrors the published configuration: ``n_inputs`` genes -> 1000-node sigmoid
latent layer -> tied-weight decoder (its weight is the encoder weight transposed, with its
own bias) -> sigmoid output, trained with MSE and monitored with Pearson correlation.

Shapes: inputs are ``(batch, n_inputs)`` float tensors (genes scaled to [0, 1] when the
output activation is a sigmoid), latents ``(batch, n_latent)``.

The model is an ordinary ``nn.Module`` built from two ``nn.Sequential`` halves, so it is
traceable by ``torch.fx`` as a flat chain of modules, and :meth:`Autoencoder.as_sequential`
returns one flat ``nn.Sequential`` over the *same* modules (training either trains both).
With ``tied=True`` an encoder ``nn.Linear`` and its decoder :class:`TiedLinear` hold the same
``nn.Parameter`` object; a model-parallel split that puts them on different ranks must treat
that weight as shared (``model.tied_pairs()`` lists the pairs by module name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from oncoscale.errors import ConfigurationError, InputError

__all__ = ["Autoencoder", "TiedLinear", "latent", "pearson_correlation"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "linear": nn.Identity,
    "identity": nn.Identity,
}


def _activation(name: str | None, what: str) -> nn.Module:
    key = "identity" if name is None else str(name).lower()
    if key not in _ACTIVATIONS:
        raise ConfigurationError(
            f"{what}: expected one of {sorted(_ACTIVATIONS)} or None, found {name!r}")
    return _ACTIVATIONS[key]()


class TiedLinear(nn.Module):
    """Decoder layer whose weight is the transpose of an encoder ``nn.Linear``'s weight.

    ``y = x @ W + b`` where ``W`` (shape ``(in_features, out_features)`` of *this* layer, i.e.
    the encoder's ``(out, in)``) is the very same ``nn.Parameter`` as ``source.weight``.
    Only the bias (shape ``(out_features,)``) belongs to this layer.
    """

    def __init__(self, source: nn.Linear, bias: bool = True) -> None:
        super().__init__()
        # Same Parameter object: model.parameters() yields it once; the optimizer sees it once.
        self.weight = source.weight
        self.in_features = source.out_features
        self.out_features = source.in_features
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=source.weight.device,
                                                 dtype=source.weight.dtype))
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``.

        Computed as ``x @ W`` (not ``F.linear(x, W.t())``) so autograd produces this layer's
        weight gradient in ``W``'s own ``(out, in)`` layout: adding it to the encoder's
        gradient is then a contiguous add, not a strided transpose-add over the whole matrix.
        """
        if self.bias is not None and not isinstance(x, torch.fx.Proxy) and x.dim() == 2:
            return torch.addmm(self.bias, x, self.weight)  # bias added inside the GEMM
        y = torch.matmul(x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, tied=True")


class Autoencoder(nn.Module):
    """Fully-connected autoencoder, tied weights by default.

    Parameters
    ----------
    n_inputs:
        Number of input features (genes).
    n_latent:
        Width of the latent (bottleneck) layer; 1000 in the published GDC setup.
    hidden:
        Widths of extra encoder layers between input and latent, e.g. ``(2000,)`` gives
        ``n_inputs -> 2000 -> n_latent -> 2000 -> n_inputs``. Hidden layers use
        ``latent_activation`` and are tied too when ``tied``.
    tied:
        When true each decoder layer reuses the transposed weight of its mirror encoder layer
        (one shared ``nn.Parameter``) and owns only its bias.
    latent_activation, output_activation:
        ``"sigmoid"`` (default), ``"relu"``, ``"tanh"``, ``"elu"``, ``"gelu"``,
        ``"leaky_relu"``, or ``"linear"``/``None``.
    dropout:
        Dropout probability applied after every encoder activation (latent included) during
        training; 0 disables it.

    Attributes ``encoder`` and ``decoder`` are ``nn.Sequential``; ``forward(x)`` returns the
    reconstruction ``(batch, n_inputs)``.
    """

    def __init__(self, n_inputs: int, n_latent: int = 1000, *, hidden: Sequence[int] = (),
                 tied: bool = True, latent_activation: str | None = "sigmoid",
                 output_activation: str | None = "sigmoid", dropout: float = 0.0) -> None:
        super().__init__()
        widths = [n_inputs, *hidden, n_latent]
        for name, value in (("n_inputs", n_inputs), ("n_latent", n_latent),
                            *((f"hidden[{i}]", h) for i, h in enumerate(hidden))):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ConfigurationError(f"{name}: expected a positive integer, found {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigurationError(f"dropout: expected a probability in [0, 1), found {dropout}")
        self.n_inputs = int(n_inputs)
        self.n_latent = int(n_latent)
        self.hidden = tuple(int(h) for h in hidden)
        self.tied = bool(tied)
        self.latent_activation = latent_activation
        self.output_activation = output_activation
        self.dropout = float(dropout)

        enc: list[nn.Module] = []
        linears: list[nn.Linear] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            lin = nn.Linear(a, b)
            linears.append(lin)
            enc += [lin, _activation(latent_activation, "latent_activation")]
            if self.dropout > 0:
                enc.append(nn.Dropout(self.dropout))
        dec: list[nn.Module] = []
        for i, lin in enumerate(reversed(linears)):
            last = i == len(linears) - 1
            dec.append(TiedLinear(lin) if self.tied else nn.Linear(lin.out_features,
                                                                   lin.in_features))
            dec.append(_activation(output_activation if last else latent_activation,
                                   "output_activation" if last else "latent_activation"))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    # -- checks ---------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, width: int, what: str) -> None:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: shapes are not known
            return
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{what}: expected a torch.Tensor, found {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != width:
            raise InputError(f"{what}: expected shape (batch, {width}), "
                             f"found {tuple(x.shape)}")

    # -- API ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations: ``(batch, n_inputs) -> (batch, n_latent)``."""
        self._check(x, self.n_inputs, "input features (genes)")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction from latents: ``(batch, n_latent) -> (batch, n_inputs)``."""
        self._check(z, self.n_latent, "latent nodes")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(batch, n_inputs) -> (batch, n_inputs)``."""
        self._check(x, self.n_inputs, "input features (genes)")
        return self.decoder(self.encoder(x))

    def as_sequential(self) -> nn.Sequential:
        """A flat ``nn.Sequential`` over the same modules (shared parameters, not copies)."""
        return nn.Sequential(*self.encoder, *self.decoder)

    def tied_pairs(self) -> list[tuple[str, str]]:
        """``(encoder module name, decoder module name)`` pairs that share one weight."""
        names = {id(m): n for n, m in self.named_modules()}
        return [(names[id(e)], names[id(d)])
                for d in self.decoder if isinstance(d, TiedLinear)
                for e in self.encoder if isinstance(e, nn.Linear) and e.weight is d.weight]

    def extra_repr(self) -> str:
        return (f"n_inputs={self.n_inputs}, n_latent={self.n_latent}, hidden={self.hidden}, "
                f"tied={self.tied}")


def pearson_correlation(x: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean",
                        eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation between reconstructions and inputs.

    ``x``, ``y``: ``(batch, features)`` (a 1-D pair is treated as one sample).
    ``reduction="mean"`` (default): r of each sample across its features, averaged over the
    batch (the per-profile agreement the ANS paper reports). ``"none"``: the ``(batch,)``
    vector of per-sample r. ``"overall"``: one r over all entries flattened.
    A sample with zero variance in ``x`` or ``y`` gets r = 0 (``eps`` guards the division).
    Returns a 0-d tensor (or ``(batch,)``) on the inputs' device; no host sync.
    """
    if x.shape != y.shape:
        raise InputError(f"pearson_correlation: shapes differ, {tuple(x.shape)} vs "
                         f"{tuple(y.shape)}")
    x = x.detach().float()
    y = y.detach().float()
    if reduction == "overall":
        x, y = x.reshape(1, -1), y.reshape(1, -1)
    elif x.dim() == 1:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    elif x.dim() != 2:
        x, y = x.flatten(1), y.flatten(1)
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    num = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    r = num / den.clamp_min(eps)
    if reduction == "none":
        return r
    if reduction in ("mean", "overall"):
        return r.mean()
    raise ConfigurationError(
        f"reduction: expected 'mean', 'none' or 'overall', found {reduction!r}")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def latent(model: Autoencoder | nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 1024,
           *, device: str | torch.device | None = None) -> np.ndarray:
    """Latent activations of ``X`` (``(n_samples, n_inputs)``) -> ``(n_samples, n_latent)``.

    Runs ``model.encode`` (or ``model.encoder``) in eval mode without gradients, in batches
    of ``batch_size`` rows, on ``device`` (default: the model's own device; ``"auto"`` picks
    CUDA when present; the model is moved there) and returns a float32 numpy array. The
    model's train/eval mode is restored afterwards.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size <= 0:
        raise InputError(f"batch_size: expected a positive integer, found {batch_size!r}")
    if isinstance(X, np.ndarray):
        if not np.issubdtype(X.dtype, np.number):
            raise InputError(f"X: expected a numeric array, found dtype {X.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise InputError(f"X: expected a 2-D array (samples, features), found "
                         f"{getattr(X, 'shape', type(X).__name__)}")
    n_inputs = getattr(model, "n_inputs", None)
    if n_inputs is not None and X.shape[1] != n_inputs:
        raise InputError(f"X: expected {n_inputs} features (the model's n_inputs), "
                         f"found {X.shape[1]}")
    encode = getattr(model, "encode", None) or model.encoder
    params = list(model.parameters())
    dev = _resolve_device(device) if device is not None else (
        params[0].device if params else torch.device("cpu"))
    dtype = params[0].dtype if params else torch.get_default_dtype()
    if params and params[0].device != dev:
        model.to(dev)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, X.shape[0], batch_size):
            xb = X[start:start + batch_size].to(device=dev, dtype=dtype, non_blocking=True)
            out.append(encode(xb).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        width = getattr(model, "n_latent", 0)
        return np.zeros((0, width), dtype=np.float32)
    return torch.cat(out).numpy()
