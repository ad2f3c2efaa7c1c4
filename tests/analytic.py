"""Closed-form references shared by the tests: a sphere seen by cameras."""

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
