"""Neural radiance fields decoded from triplane features (TripoSR's NeRF MLP and G3DR's decoder).

A field maps a feature vector per point to a volume density (>= 0, per world unit when rendered with world-distance
steps) and an RGB colour in [0, 1] (up to G3DR's slightly widened sigmoid).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TriplaneDecoder", "trunc_exp"]


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)), so a large raw density cannot blow up the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` forward; backward multiplies by ``exp(clamp(x, max=15))`` instead of ``exp(x)``."""
    return _TruncExp.apply(x)


def _sigmoid_wide(x: torch.Tensor) -> torch.Tensor:
    # G3DR: lets the colour reach exactly 0 and 1 with finite logits.
    return torch.sigmoid(x) * 1.002 - 0.001


_HIDDEN_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "softplus": nn.Softplus}
_DENSITY_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "softplus": F.softplus,
    "trunc_exp": trunc_exp,
}
_COLOR_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "sigmoid_wide": _sigmoid_wide,
}
_WEIGHT_INITS = (None, "kaiming_uniform")


def _choice(value: object, options, name: str):
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(o for o in options if o is not None)}, got {value!r}")
    return value


class TriplaneDecoder(nn.Module):
    """MLP ``in_dim -> hidden_dim x n_hidden_layers -> 4`` giving density and colour.

    ``self.layers`` is an ``nn.Sequential`` [Linear, act, Linear, act, ..., Linear] (``n_hidden_layers`` Linear + act
    pairs, then the output Linear), so TripoSR's checkpoint keys ``decoder.layers.{0,2,...,18}.{weight,bias}`` load
    unchanged for ``in_dim=120, hidden_dim=64, n_hidden_layers=9`` (the defaults).

    Outputs: ``density = density_activation(raw[..., 0:1] + density_bias)`` and
    ``rgb = color_activation(raw[..., 1:4])``. TripoSR: exp with bias -1; G3DR: softplus with bias -1 and
    ``sigmoid(x) * 1.002 - 0.001``.

    Args:
        in_dim: feature size per point (TripoSR 3 x 40 = 120, G3DR 64).
        hidden_dim: width of the hidden layers.
        n_hidden_layers: number of hidden Linear + activation pairs (>= 1).
        activation: "silu", "relu" or "softplus" (hidden layers).
        density_activation: "exp", "softplus" or "trunc_exp".
        density_bias: added to the raw density before the activation.
        color_activation: "sigmoid" or "sigmoid_wide".
        weight_init: "kaiming_uniform" (TripoSR's init: ReLU gain, default biases) or None (PyTorch default).
    """

    def __init__(
        self,
        in_dim: int = 120,
        hidden_dim: int = 64,
        n_hidden_layers: int = 9,
        *,
        activation: str = "silu",
        density_activation: str = "exp",
        density_bias: float = -1.0,
        color_activation: str = "sigmoid",
        weight_init: str | None = "kaiming_uniform",
    ) -> None:
        super().__init__()
        for label, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("n_hidden_layers", n_hidden_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        make_activation = _HIDDEN_ACTIVATIONS[_choice(activation, _HIDDEN_ACTIVATIONS, "activation")]
        self.density_activation = _choice(density_activation, _DENSITY_ACTIVATIONS, "density_activation")
        self.color_activation = _choice(color_activation, _COLOR_ACTIVATIONS, "color_activation")
        _choice(weight_init, _WEIGHT_INITS, "weight_init")
        self.in_dim, self.density_bias = int(in_dim), float(density_bias)
        layers: list[nn.Module] = []
        width = self.in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), make_activation()]
            width = hidden_dim
        layers.append(nn.Linear(width, 4))
        if weight_init == "kaiming_uniform":
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        self.layers = nn.Sequential(*layers)

    @classmethod
    def triposr(cls) -> TriplaneDecoder:
        """TripoSR's decoder: 120 -> 64 x 9 (SiLU) -> 4, density exp(raw - 1), colour sigmoid."""
        return cls(120, 64, 9, activation="silu", density_activation="exp", density_bias=-1.0)

    @classmethod
    def g3dr(cls, in_dim: int = 64) -> TriplaneDecoder:
        """G3DR's decoder: in_dim -> 64 (softplus) -> 4, density softplus(raw - 1), colour sigmoid * 1.002 - 0.001."""
        return cls(
            in_dim, 64, 1, activation="softplus", density_activation="softplus", density_bias=-1.0,
            color_activation="sigmoid_wide", weight_init=None,
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(…, in_dim) features -> dict(density (…, 1), rgb (…, 3))."""
        if not isinstance(features, torch.Tensor) or features.dim() < 1 or features.shape[-1] != self.in_dim:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must have shape (..., {self.in_dim}), got {got}")
        # Under autocast the layers may run in bfloat16; activations and rendering keep the features' precision.
        raw = self.layers(features).to(features.dtype)
        density = _DENSITY_ACTIVATIONS[self.density_activation](raw[..., 0:1] + self.density_bias)
        rgb = _COLOR_ACTIVATIONS[self.color_activation](raw[..., 1:4])
        return {"density": density, "rgb": rgb}
