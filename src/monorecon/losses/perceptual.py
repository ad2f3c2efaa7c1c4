"""Perceptual image comparison: VGG features (plain PyTorch), SSIM / MS-SSIM, an LPIPS-style loss and substitutes.

Images are channel-first ``(B, 3, H, W)`` float tensors with values in [0, 1] (the layout of convolution networks;
renders ``(B, H, W, 3)`` need ``.permute(0, 3, 1, 2)``).

Pretrained weights cannot be downloaded here, so every module works in two modes:

* **With local weights**: :class:`VGGFeatures` builds VGG16 / VGG19 ``features`` with torchvision's layer indices,
  so a torchvision state dict (``features.N.weight`` / ``features.N.bias``, e.g. ``vgg19-dcbb9e9d.pth``) loads from a
  local ``.pth`` or ``.safetensors`` file. :class:`PerceptualLoss` is then LPIPS: unit-normalised VGG16 activations at
  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, squared differences weighted per channel by the LPIPS linear layers
  (``lin{k}.model.1.weight`` of LPIPS' ``vgg.pth`` when given, else all ones), spatial mean, summed over layers.
* **Without weights** (documented substitutes, no learned parameters at all):
  :class:`PerceptualLoss` = ``(1 - MS-SSIM) + grad_weight * multi-scale image-gradient L1``; and
  :class:`GradientPyramidFeatures` replaces VGG19 relu3_1 features (stride 4) for the Chamfer texture feature loss.
  Both compare local structure (edges, contrast, colour layout) rather than raw pixels, which is what the VGG terms
  are used for; they are not trained on natural images, so they are weaker on semantics.

SSIM follows Wang et al. 2004: Gaussian window 11 x 11, sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, statistics
over the *valid* window positions (no padding), population (biased) variances, mean over positions and channels.
MS-SSIM (Wang et al. 2003) uses the weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) over 2x average-pooled scales;
on images too small for five scales (side / 2^(M-1) < 11) it uses the first M feasible scales with renormalised
weights, and clamps the per-scale terms to >= 1e-6 so that the fractional powers stay differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monorecon.core.checks import check_tensor
from monorecon.io.images import IMAGENET_MEAN, IMAGENET_STD
from monorecon.io.weights import read_state_dict

__all__ = [
    "GradientPyramidFeatures",
    "PerceptualLoss",
    "VGGFeatures",
    "chamfer_feature_extractor",
    "check_images",
    "check_perceptual_size",
    "ms_ssim",
    "perceptual_min_size",
    "ssim",
]

# Channel plans of torchvision's VGG configurations "D" (VGG16) and "E" (VGG19); "M" is a 2x2 max pool.
_VGG_PLANS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Side of SSIM's Gaussian window: the smallest image the substitute loss (without VGG weights) can score.
SSIM_WINDOW = 11


def check_images(x: object, name: str, channels: int | None = 3) -> torch.Tensor:
    """Check a (B, C, H, W) float image batch (C = ``channels`` unless None); return it."""
    x = check_tensor(x, name, (None, channels, None, None), floating=True)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    return x


def _check_pair(x: torch.Tensor, y: torch.Tensor, channels: int | None = 3) -> None:
    check_images(x, "x", channels)
    check_images(y, "y", channels)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: x {tuple(x.shape)} vs y {tuple(y.shape)}")


# --------------------------------------------------------------------------------------------------------------------
# VGG features
# --------------------------------------------------------------------------------------------------------------------
class VGGFeatures(nn.Module):
    """Activations of VGG16 / VGG19 ``features`` at named layers (no torchvision needed).

    Layer names: ``conv{b}_{k}`` / ``relu{b}_{k}`` (block b from 1, conv k from 1 inside the block) and ``pool{b}``.
    The module's parameters are named exactly like torchvision's (``features.N.weight``), so its state dicts load.

    Args:
        arch: "vgg16" or "vgg19".
        weights_path: local torchvision state dict (``.pth`` / ``.safetensors``; ``classifier.*`` keys are ignored).
            Without it the weights are random (Kaiming, seeded by ``seed``): usable for shapes and tests only.
        layers: names of the layers returned by :meth:`forward`.
        normalize_input: subtract the ImageNet mean / divide by the std (inputs in [0, 1]), as torchvision expects.
        seed: seed of the random initialisation when no weights are given.

    Weights are frozen (``requires_grad`` False); gradients still flow to the input.
    """

    def __init__(
        self,
        arch: str = "vgg19",
        weights_path: str | Path | None = None,
        layers: Sequence[str] = ("relu3_1",),
        *,
        normalize_input: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if arch not in _VGG_PLANS:
            raise ValueError(f"arch must be one of {sorted(_VGG_PLANS)}, got {arch!r}")
        modules: list[nn.Module] = []
        names: list[str] = []
        channels, block, conv_in_block = 3, 1, 0
        for entry in _VGG_PLANS[arch]:
            if entry == "M":
                modules.append(nn.MaxPool2d(2, 2))
                names.append(f"pool{block}")
                block, conv_in_block = block + 1, 0
                continue
            conv_in_block += 1
            modules += [nn.Conv2d(channels, int(entry), 3, padding=1), nn.ReLU(inplace=False)]
            names += [f"conv{block}_{conv_in_block}", f"relu{block}_{conv_in_block}"]
            channels = int(entry)
        self.features = nn.Sequential(*modules)
        self.layer_index = {name: i for i, name in enumerate(names)}
        layers = tuple(layers)
        unknown = [name for name in layers if name not in self.layer_index]
        if not layers or unknown:
            raise ValueError(f"unknown or no VGG layers {unknown or layers}; valid: {', '.join(names)}")
        self.layers = layers
        self.arch = arch
        self.normalize_input = normalize_input
        self.pretrained = weights_path is not None
        if weights_path is None:
            generator = torch.Generator().manual_seed(seed)
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.in_channels * 9
                    with torch.no_grad():
                        module.weight.copy_(
                            torch.randn(module.weight.shape, generator=generator) * math.sqrt(2 / fan_in)
                        )
                        module.bias.zero_()
        else:
            self.load_weights(weights_path)
        self.requires_grad_(False)
        self.eval()
        # Only run the network up to the deepest requested layer.
        self._last = max(self.layer_index[name] for name in layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, path: str | Path) -> None:
        """Load ``features.*`` tensors from a local torchvision-style state dict; missing or misshaped -> ValueError."""
        state = read_state_dict(path)
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        own = self.state_dict()
        missing = [k for k in own if k not in features]
        if missing:
            raise ValueError(f"{path}: missing VGG tensors {missing[:4]}{'...' if len(missing) > 4 else ''}")
        for key, value in features.items():
            if key not in own:
                raise ValueError(f"{path}: unexpected tensor {key} for {self.arch}")
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        self.load_state_dict(features)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) images in [0, 1] -> {layer name: (B, C_l, H_l, W_l) activations}."""
        x = check_images(images, "images")
        if self.normalize_input:
            x = (x - self.mean) / self.std
        wanted = {self.layer_index[name]: name for name in self.layers}
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features[: self._last + 1]):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


# --------------------------------------------------------------------------------------------------------------------
# Weight-free substitute features
# --------------------------------------------------------------------------------------------------------------------
class GradientPyramidFeatures(nn.Module):
    """Weight-free substitute for VGG19 relu3_1 features: local colour and edge descriptors at stride ``stride``.

    For (B, 3, H, W) images in [0, 1], returns (B, 15, H / stride, W / stride) (floor) made of, per output cell:

    * the mean colour of the cell (3 channels);
    * the mean colour over a 3x larger neighbourhood (3), i.e. the next pyramid level, giving context;
    * the mean x- and y- central-difference gradients of each colour channel over the cell (6), scaled by ``stride``
      so that they are per-cell colour changes;
    * the mean gradient magnitude of the luminance over the cell (3 copies weighted by channel: R, G, B luminance
      parts), which responds to texture even where signed gradients cancel.

    Deterministic, differentiable w.r.t. the input, no parameters.
    """

    def __init__(self, stride: int = 4) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return 15

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = check_images(images, "images")
        s = self.stride
        if x.shape[-1] < s or x.shape[-2] < s:
            raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the feature stride {s}")
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * 0.5
        gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * 0.5
        magnitude = (gx.square() + gy.square() + 1e-12).sqrt() * self.luma
        cell = F.avg_pool2d(x, s)
        context = F.avg_pool2d(cell, 3, stride=1, padding=1, count_include_pad=False)
        grads = F.avg_pool2d(torch.cat([gx, gy], dim=1), s) * s
        edges = F.avg_pool2d(magnitude, s) * s
        return torch.cat([cell, context, grads, edges], dim=1)


def chamfer_feature_extractor(weights_path: str | Path | None = None) -> nn.Module:
    """Feature map for the MeshInversion Chamfer texture feature loss: (B, 3, H, W) in [0, 1] -> (B, C, H/4, W/4).

    With ``weights_path`` (a local torchvision VGG19 state dict): VGG19 relu3_1 activations, as the official code.
    Without: :class:`GradientPyramidFeatures` (stride 4, same resolution as relu3_1).
    """
    if weights_path is None:
        return GradientPyramidFeatures(stride=4)
    return _SingleLayer(VGGFeatures("vgg19", weights_path, ("relu3_1",)), "relu3_1")


class _SingleLayer(nn.Module):
    """Wraps :class:`VGGFeatures` to return one layer's tensor."""

    def __init__(self, vgg: VGGFeatures, layer: str) -> None:
        super().__init__()
        self.vgg, self.layer = vgg, layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vgg(images)[self.layer]


# --------------------------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------------------------
def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian weights centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (w / w.sum()).to(dtype=dtype, device=device)


def _ssim_terms(
    x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, data_range: float, k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image SSIM and contrast-structure means, each (B,), over valid window positions and channels."""
    channels = x.shape[1]
    size = window.shape[0]
    kernel_x = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    kernel_y = window.view(1, 1, size, 1).expand(channels, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kernel_x, groups=channels), kernel_y, groups=channels)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)
    return (luminance * cs_map).flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window_size: int = SSIM_WINDOW,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of two (B, C, H, W) image batches -> (B,).

    Gaussian window (``window_size``, ``sigma``), valid positions only (no padding), population statistics, mean
    over positions and channels. ``data_range`` is the value span (1 for images in [0, 1]).
    """
    _check_pair(x, y, channels=None)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the SSIM window {window_size}")
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    return _ssim_terms(x, y, window, data_range, k1, k2)[0]


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window_size: int = SSIM_WINDOW,
    sigma: float = 1.5,
    data_range: float = 1.0,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of (B, C, H, W) batches -> (B,).

    ``prod_{j<M} cs_j^{w_j} * ssim_M^{w_M}`` over 2x average-pooled scales; M is reduced (weights renormalised) for
    images too small for all scales; terms are clamped to >= 1e-6 before the powers (see module docstring).
    """
    _check_pair(x, y, channels=None)
    side = min(x.shape[-2:])
    if side < window_size:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the SSIM window {window_size}")
    scales = 1
    while scales < len(weights) and side // 2**scales >= window_size:
        scales += 1
    w = torch.tensor(list(weights)[:scales], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    result = x.new_ones(x.shape[0])
    for level in range(scales):
        full, cs = _ssim_terms(x, y, window, data_range, 0.01, 0.03)
        term = full if level == scales - 1 else cs
        result = result * term.clamp_min(1e-6) ** w[level]
        if level < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


def gradient_l1(x: torch.Tensor, y: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Mean absolute difference of forward-difference image gradients, averaged over ``scales`` 2x pyramid levels
    (levels smaller than 2 pixels are skipped) -> (B,)."""
    _check_pair(x, y, channels=None)
    total, used = x.new_zeros(x.shape[0]), 0
    for level in range(scales):
        if min(x.shape[-2:]) < 2:
            break
        dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
        dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
        total = total + 0.5 * (dx.abs().flatten(1).mean(1) + dy.abs().flatten(1).mean(1))
        used += 1
        if level < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return total / max(used, 1)


# --------------------------------------------------------------------------------------------------------------------
# Perceptual loss
# --------------------------------------------------------------------------------------------------------------------
def perceptual_min_size(uses_vgg: bool, layers: Sequence[str] = LPIPS_LAYERS) -> int:
    """The smallest image side :class:`PerceptualLoss` scores: MS-SSIM's window for the substitute; with VGG, a side
    that keeps one pixel at the deepest of ``layers`` (each 2x2 pooling before it halves the side)."""
    if not uses_vgg:
        return SSIM_WINDOW
    pools = [int(name[4:].split("_")[0]) - (not name.startswith("pool")) for name in layers]  # relu5_3: 4 before
    return 2 ** max(pools)


def check_perceptual_size(side: int, uses_vgg: bool, name: str, weights_option: str) -> None:
    """Refuse (``ValueError`` naming ``name`` and the loss) images of ``side`` pixels too small for
    :class:`PerceptualLoss` (:func:`perceptual_min_size`): a training config checks it before any work, not at the
    first step that scores one. ``weights_option``: the config key of the VGG weights, for the message."""
    smallest = perceptual_min_size(uses_vgg)
    if side < smallest:
        kind = f"VGG ({weights_option})" if uses_vgg else f"MS-SSIM (no {weights_option})"
        raise ValueError(f"{name} must be at least {smallest} for the perceptual loss by {kind}, got {side}")


class PerceptualLoss(nn.Module):
    """LPIPS-style perceptual distance of (B, 3, H, W) image batches in [0, 1] -> (B,) (0 for identical images).

    Args:
        weights_path: local torchvision VGG16 state dict. Given: LPIPS (see module docstring). None: the substitute
            ``(1 - MS-SSIM) + grad_weight * gradient_l1``. Images must be at least :func:`perceptual_min_size`
            pixels on a side (11 for the substitute, 16 for LPIPS' layers).
        lpips_weights_path: local LPIPS linear-layer file (``lin0.model.1.weight`` ... ``lin4``); only with
            ``weights_path``. Without it every channel has weight 1.
        layers: VGG16 layers of the LPIPS distance (default LPIPS' five).
        grad_weight: weight of the gradient term of the substitute.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        lpips_weights_path: str | Path | None = None,
        *,
        layers: Sequence[str] = LPIPS_LAYERS,
        grad_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if lpips_weights_path is not None and weights_path is None:
            raise ValueError("lpips_weights_path needs weights_path (the VGG16 features they were trained on)")
        self.grad_weight = grad_weight
        self.vgg: VGGFeatures | None = None
        if weights_path is not None:
            self.vgg = VGGFeatures("vgg16", weights_path, layers)
            channels = [self.vgg.features[self.vgg.layer_index[name] - 1].out_channels for name in layers]
            if lpips_weights_path is None:
                weights = [torch.ones(c) for c in channels]
            else:
                state = read_state_dict(lpips_weights_path)
                weights = []
                for k, c in enumerate(channels):
                    key = f"lin{k}.model.1.weight"
                    if key not in state or state[key].numel() != c:
                        raise ValueError(f"{lpips_weights_path}: needs {key} with {c} values")
                    weights.append(state[key].reshape(c).float())
            for k, w in enumerate(weights):
                self.register_buffer(f"lin{k}", w.view(1, -1, 1, 1), persistent=False)

    @property
    def uses_vgg(self) -> bool:
        return self.vgg is not None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        if self.vgg is None:
            return (1.0 - ms_ssim(x, y)) + self.grad_weight * gradient_l1(x, y)
        smallest = perceptual_min_size(True, self.vgg.layers)
        if min(x.shape[-2:]) < smallest:
            raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than {smallest}, the least VGG's "
                             f"layers {list(self.vgg.layers)} can score")  # fmt: skip
        fx, fy = self.vgg(x), self.vgg(y)
        total = x.new_zeros(x.shape[0])
        for k, name in enumerate(self.vgg.layers):
            nx = fx[name] / (fx[name].square().sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy[name] / (fy[name].square().sum(1, keepdim=True).sqrt() + 1e-10)
            weight = getattr(self, f"lin{k}").to(x)
            total = total + ((nx - ny).square() * weight).sum(1).flatten(1).mean(1)
        return total
