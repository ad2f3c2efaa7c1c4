"""Losses: fitting by differentiable rendering (:mod:`.fitting`) and perceptual comparison (:mod:`.perceptual`)."""

from .fitting import (
    chamfer_mask_loss,
    chamfer_texture_loss,
    face_neighbors,
    latent_loss,
    silhouette_loss,
    smoothness_loss,
)
from .perceptual import GradientPyramidFeatures, PerceptualLoss, VGGFeatures, ms_ssim, ssim

__all__ = [
    "GradientPyramidFeatures",
    "PerceptualLoss",
    "VGGFeatures",
    "chamfer_mask_loss",
    "chamfer_texture_loss",
    "face_neighbors",
    "latent_loss",
    "ms_ssim",
    "silhouette_loss",
    "smoothness_loss",
    "ssim",
]
