"""Closed-form references shared by the tests: a sphere seen by cameras, the sRGB curve."""

import numpy as np
import torch

from monorecon.core.cameras import PerspectiveCameras


def ray_sphere(origins: torch.Tensor, directions: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit ``t`` of unit-direction rays with the sphere |x| = radius, and whether they hit."""
    b = (origins * directions).sum(-1)
    disc = b**2 - ((origins**2).sum(-1) - radius**2)
    return -b - disc.clamp(min=0).sqrt(), disc > 0


def sphere_camera_depth(
    cameras: PerspectiveCameras, radius: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, H, W) camera depth ``-z_camera`` of a sphere (0 where a pixel's ray misses it) and the (V, H, W) hit mask."""
    origins, directions = cameras.get_rays()
    t_hit, hit = ray_sphere(origins - torch.tensor(centre), directions, radius)
    forward = -cameras.c2w[:, None, None, :3, 2]
    return torch.where(hit, t_hit * (directions * forward).sum(-1), torch.zeros_like(t_hit)), hit


def srgb_to_linear(srgb) -> np.ndarray:
    """The sRGB transfer curve of IEC 61966-2-1, display values in [0, 1] -> linear values."""
    srgb = np.asarray(srgb, dtype=np.float64)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear) -> np.ndarray:
    """The inverse of :func:`srgb_to_linear` (linear values in [0, 1] -> display values)."""
    linear = np.asarray(linear, dtype=np.float64)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
