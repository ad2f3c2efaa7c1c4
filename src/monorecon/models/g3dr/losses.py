"""G3DR's loss terms (official code values) and the image encoders they use.

Terms (images (B, 3, H, W) in [0, 1], depth / opacity (B, H, W)):

* :func:`masked_l1`: mean absolute error over the foreground pixels (all pixels without a mask) -> rgb (weight 1)
  and depth (weight 2) on canonical views.
* :func:`opacity_loss`: ``mean(1 - sum_i w_i)`` (over the foreground when a mask is given), weight ramping 0 -> 1.
* :func:`tv_loss`: the official "TV" on the rendered novel-view depth, ``mean((d[:, :, 1:] - d[:, :, :-1])^2) +
  mean((d[:, 1:] - d[:, :-1])^2)`` (squared differences, weight 0.1).
* :func:`embedding_l1`: L1 between image embeddings of the novel render and the input (weight 0.35). The paper uses
  CLIP ViT-B/16 image embeddings (:class:`SemanticEncoder` loads them from a local Hugging Face folder); without
  weights a documented substitute is used (see :class:`SemanticEncoder`).
* perceptual: :class:`monorecon.losses.perceptual.PerceptualLoss` (LPIPS with local VGG16 weights, else the MS-SSIM +
  gradient substitute); on novel views only the deep layers count (:func:`deep_perceptual_loss`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monorecon.core.checks import check_tensor
from monorecon.losses.perceptual import GradientPyramidFeatures, PerceptualLoss, check_images

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DeepPerceptualLoss",
    "SemanticEncoder",
    "embedding_l1",
    "masked_l1",
    "opacity_loss",
    "tv_loss",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``|pred - target|`` over the pixels where ``mask`` (B, H, W) is true (all pixels without a mask).

    ``pred`` / ``target``: (B, H, W) or (B, H, W, C) / (B, C, H, W) with ``channels_first``-agnostic handling: the
    mask is broadcast over a trailing channel axis when ``pred`` has 4 dims and the mask matches its first three.
    Returns 0 when the mask selects nothing.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    error = (pred - target).abs()
    if mask is None:
        return error.mean()
    mask = mask.to(error.dtype)
    if error.dim() == 4:
        if mask.shape == error.shape[:3]:
            mask = mask[..., None]
        elif mask.shape == (error.shape[0], *error.shape[2:]):
            mask = mask[:, None]
        else:
            raise ValueError(f"mask {tuple(mask.shape)} does not fit {tuple(error.shape)}")
    elif mask.shape != error.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit {tuple(error.shape)}")
    mask = mask.expand_as(error)
    return (error * mask).sum() / mask.sum().clamp_min(1.0)


def opacity_loss(opacity: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(1 - opacity)`` over the (B, H, W) pixels selected by ``mask`` (all without a mask)."""
    check_tensor(opacity, "opacity", (None, None, None), floating=True)
    return masked_l1(opacity, torch.ones_like(opacity), mask)


def tv_loss(depth: torch.Tensor) -> torch.Tensor:
    """Official G3DR "TV" of a (B, H, W) map: mean squared horizontal plus mean squared vertical differences."""
    check_tensor(depth, "depth", (None, None, None), floating=True)
    dx = depth[:, :, 1:] - depth[:, :, :-1]
    dy = depth[:, 1:, :] - depth[:, :-1, :]
    return dx.square().mean() + dy.square().mean()


def embedding_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two (B, D) embeddings."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"embeddings must both be (B, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.l1_loss(a, b)


class SemanticEncoder(nn.Module):
    """Image embedding for the semantic loss: (B, 3, H, W) in [0, 1] -> (B, D).

    * ``clip_path`` given: CLIP ViT-B/16 image embeddings (``CLIPVisionModelWithProjection`` of ``transformers`` from a
      local folder, e.g. a download of ``openai/clip-vit-base-patch16``): bilinear resize to 224 (as the official
      code) and CLIP's mean / std normalisation; D = 512.
    * otherwise the weight-free substitute: per-channel spatial mean and standard deviation of
      :class:`~monorecon.losses.perceptual.GradientPyramidFeatures` (cell colour, context colour, colour gradients and
      edge energy at stride 4), D = 30: a global colour / texture statistic that, like the CLIP embedding, does not
      depend on where things are in the image, so it can compare a novel view with the input. It carries no learned
      semantics.
    Frozen; gradients flow to the input.
    """

    def __init__(self, clip_path: str | Path | None = None) -> None:
        super().__init__()
        self.clip = None
        if clip_path is not None:
            path = Path(clip_path)
            if not path.is_dir():
                raise ValueError(f"CLIP weights folder not found: {path}")
            from transformers import CLIPVisionModelWithProjection

            self.clip = CLIPVisionModelWithProjection.from_pretrained(str(path)).eval()
            self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.features = GradientPyramidFeatures(stride=4)
        self.requires_grad_(False)

    @property
    def uses_clip(self) -> bool:
        return self.clip is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, "images")
        if self.clip is not None:
            x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
            return self.clip(pixel_values=(x - self.mean) / self.std).image_embeds
        features = self.features(images).flatten(2)
        return torch.cat([features.mean(-1), features.std(-1, unbiased=False)], dim=-1)


class DeepPerceptualLoss(nn.Module):
    """The novel-view perceptual term, (B,) per image pair.

    With local VGG16 weights: LPIPS restricted to the last two of its five layers (relu4_3, relu5_3), as the official
    code (layer weights [0, 0, 0, 1, 1]). Without weights, a substitute in the same spirit (coarse content, tolerant
    to the shifts between a novel view and the input that the deep layers' large receptive fields absorb): the mean
    absolute difference of :class:`~monorecon.losses.perceptual.GradientPyramidFeatures` averaged over a
    ``grid x grid`` (2 x 2) layout of cells. (The full-image substitute of :class:`PerceptualLoss`, MS-SSIM, is
    pixel-aligned: between a rotated render and the input it would reward flat, billboard-like geometry.)
    """

    def __init__(self, vgg_path: str | Path | None = None, lpips_path: str | Path | None = None, grid: int = 2) -> None:
        super().__init__()
        self.grid = grid
        if vgg_path is not None:
            self.loss = PerceptualLoss(vgg_path, None, layers=("relu4_3", "relu5_3"))
            if lpips_path is not None:
                full = PerceptualLoss(vgg_path, lpips_path)  # the LPIPS channel weights of layers 4 and 5
                self.loss.register_buffer("lin0", full.lin3, persistent=False)
                self.loss.register_buffer("lin1", full.lin4, persistent=False)
        else:
            self.loss = None
            self.features = GradientPyramidFeatures(stride=4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss is not None:
            return self.loss(x, y)
        if x.shape != y.shape:
            raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        fx = F.adaptive_avg_pool2d(self.features(x), self.grid)
        fy = F.adaptive_avg_pool2d(self.features(y), self.grid)
        return (fx - fy).abs().flatten(1).mean(1)
