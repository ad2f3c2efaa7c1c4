"""Metrics of the G3DR evaluation: non-flatness of rendered geometry and feature distances between image sets.

**Non-flatness score (NFS)**, after 3DGP (Skorokhodov et al., "3D generation on ImageNet", ICLR 2023), which G3DR
reports: the entropy of the histogram of rendered depth values, high when the depth is spread out (real relief) and
0 for a flat, fronto-parallel billboard. Definition implemented here (the paper's exact binning and normalisation
could not be checked offline): for each image, the depths of its foreground pixels are binned into ``bins`` (64)
equal bins over a *fixed* range ``[near, far]`` (default [4, 6], G3DR's canonical depth range; values outside are
clipped into the end bins), the Shannon entropy ``-sum p log p`` (nats) of the normalised histogram is taken, and
the score is the mean over images. A fixed range (rather than per-image min / max) keeps a flat surface at one bin.
The maximum is ``log(bins)`` (4.16 for 64 bins).

**Fréchet distance** between two sets of image features (FID's formula, Heusel et al. 2017):
``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with sample means and (N - 1)-normalised covariances.
:class:`ImageFeatures` gives FID's Inception-v3 pool features (2048-d) from a local TorchScript file (the
``pt_inception-2015-12-05`` model used by clean-fid / StyleGAN2-ADA, called as ``model(x, return_features=True)`` on
299 x 299 images in [0, 255]) when given; otherwise a documented substitute: global average pools of a VGG16 with
fixed random weights (seed 0; relu2_2, relu3_3, relu4_3 -> 896-d), a "random-network" feature distance that
compares image statistics but is **not comparable with published FID values**.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from monorecon.core.checks import check_tensor
from monorecon.losses.perceptual import VGGFeatures, check_images

__all__ = ["ImageFeatures", "feature_distance", "frechet_distance", "non_flatness_score"]


def non_flatness_score(
    depth: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    *,
    bins: int = 64,
    near: float = 4.0,
    far: float = 6.0,
) -> float:
    """Mean over images of the entropy (nats) of the foreground depth histogram (module docstring).

    Args:
        depth: (N, H, W) rendered depths.
        mask: (N, H, W) bool foreground (default: every pixel); images without foreground are skipped.
        bins, near, far: histogram bins over the fixed range [near, far].

    Raises:
        ValueError: bad shapes / range, or no foreground pixel at all.
    """
    depth = check_tensor(torch.as_tensor(depth, dtype=torch.float64), "depth", (None, None, None))
    mask = torch.ones_like(depth, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    if mask.shape != depth.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match depth {tuple(depth.shape)}")
    if int(bins) != bins or bins < 2 or not far > near:
        raise ValueError(f"need bins >= 2 and far > near, got bins={bins}, near={near}, far={far}")
    scores = []
    for d, m in zip(depth, mask, strict=True):
        values = d[m]
        if values.numel() == 0:
            continue
        index = ((values - near) / (far - near) * bins).floor().clamp(0, bins - 1).long()
        p = torch.bincount(index, minlength=bins).double() / values.numel()
        p = p[p > 0]
        scores.append(float(-(p * p.log()).sum()))
    if not scores:
        raise ValueError("no foreground pixel in any image")
    return float(np.mean(scores))


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two (N, D) feature sets (N >= 2 each)."""
    a = np.asarray(features_a.detach().cpu() if isinstance(features_a, torch.Tensor) else features_a, np.float64)
    b = np.asarray(features_b.detach().cpu() if isinstance(features_b, torch.Tensor) else features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features must be (N >= 2, D) arrays with the same D, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or infinite values")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # a singular product is handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the reference FID code
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


class ImageFeatures(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, D) features for :func:`frechet_distance` (module docstring)."""

    def __init__(self, inception_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.inception = None
        if inception_path is not None:
            path = Path(inception_path)
            if not path.is_file():
                raise ValueError(f"Inception TorchScript file not found: {path}")
            self.inception = torch.jit.load(str(path), map_location="cpu").eval()
        else:
            self.vgg = VGGFeatures("vgg16", None, ("relu2_2", "relu3_3", "relu4_3"), seed=0)
        self.requires_grad_(False)

    @property
    def uses_inception(self) -> bool:
        return self.inception is not None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, "images")
        if self.inception is not None:
            x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 255.0
            return self.inception(x, return_features=True).reshape(images.shape[0], -1)
        if min(images.shape[-2:]) < 32:  # three poolings before relu4_3
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        feats = self.vgg(images)
        return torch.cat([feats[k].mean(dim=(2, 3)) for k in ("relu2_2", "relu3_3", "relu4_3")], dim=1)


def feature_distance(
    images_a: torch.Tensor, images_b: torch.Tensor, extractor: ImageFeatures | None = None, batch_size: int = 32
) -> float:
    """Fréchet distance between the features of two image sets (B, 3, H, W) in [0, 1] (default extractor: the
    substitute of :class:`ImageFeatures`)."""
    extractor = extractor if extractor is not None else ImageFeatures()
    if batch_size < 1 or not math.isfinite(batch_size):
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def features(images: torch.Tensor) -> torch.Tensor:
        check_images(images, "images")
        return torch.cat([extractor(chunk) for chunk in images.split(batch_size)])

    return frechet_distance(features(images_a), features(images_b))
