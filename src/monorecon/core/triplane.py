"""Triplane feature lookup (TripoSR / EG3D style) and G3DR's multi-resolution triplane pyramid.

A triplane is a tensor ``(B, 3, C, H, W)``: three feature images of C channels. A point ``p = (p0, p1, p2)`` in
[-1, 1]^3 reads plane 0 at ``(p0, p1)``, plane 1 at ``(p0, p2)`` and plane 2 at ``(p1, p2)``. In each pair the first
coordinate is the ``grid_sample`` x (the column, along W) and the second the row (along H). Lookups are bilinear with
``align_corners=False`` (-1 and +1 are the outer edges of the border pixels, so pixel ``j`` has its centre at
``(2 j + 1) / W - 1``) and zero padding (features fade to 0 over the outer half pixel and are 0 outside).

The module is frame-agnostic: callers map their own frame onto ``(p0, p1, p2)`` (TripoSR: ``p0, p1, p2 = x, y, z`` of
its z-up frame divided by the radius 0.87).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .checks import check_tensor

__all__ = ["sample_triplane", "sample_triplane_pyramid", "triplane_pyramid"]

_REDUCTIONS = ("concat", "mean", "sum")
# (column coordinate, row coordinate) of each plane.
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def _check_planes(planes: torch.Tensor, name: str = "planes") -> torch.Tensor:
    return check_tensor(planes, name, (None, 3, None, None, None), floating=True)


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, reduce: str = "concat") -> torch.Tensor:
    """Bilinear triplane lookup.

    Args:
        planes: (B, 3, C, H, W) features.
        points: (B, N, 3) coordinates ``(p0, p1, p2)``, [-1, 1] spans the planes (outside reads zeros).
        reduce: "concat" -> (B, N, 3C) in the order [plane 0 | plane 1 | plane 2]; "mean" or "sum" over the three
            planes -> (B, N, C).

    Returns:
        Features, differentiable w.r.t. ``planes`` and ``points``.
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
    planes = _check_planes(planes)
    points = check_tensor(points, "points", (None, None, 3), floating=True)
    batch, _, channels, height, width = planes.shape
    if points.shape[0] != batch:
        raise ValueError(f"points batch {points.shape[0]} does not match planes batch {batch}")
    if points.dtype != planes.dtype:
        raise ValueError(f"points dtype {points.dtype} differs from planes dtype {planes.dtype}")
    n_points = points.shape[1]
    pair_index = torch.tensor([axis for axes in _PLANE_AXES for axis in axes], device=points.device)
    grid = points.index_select(-1, pair_index).view(batch, n_points, 3, 2).transpose(1, 2)  # (B, 3, N, 2)
    sampled = F.grid_sample(
        planes.reshape(batch * 3, channels, height, width),
        grid.reshape(batch * 3, 1, n_points, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).view(batch, 3, channels, n_points)
    if reduce == "concat":
        return sampled.permute(0, 3, 1, 2).reshape(batch, n_points, 3 * channels)
    reduced = sampled.mean(dim=1) if reduce == "mean" else sampled.sum(dim=1)
    return reduced.transpose(1, 2)


def triplane_pyramid(planes: torch.Tensor, n_levels: int = 3) -> list[torch.Tensor]:
    """G3DR's multi-resolution triplanes: level ``l`` is ``planes`` downsampled by ``2**l``.

    Downsampling is antialiased bilinear (``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``),
    each level computed from the full-resolution planes.

    Args:
        planes: (B, 3, C, H, W), H and W divisible by ``2**(n_levels - 1)``.
        n_levels: number of levels (>= 1); level 0 is ``planes`` itself.

    Returns:
        ``n_levels`` tensors (B, 3, C, H / 2^l, W / 2^l).
    """
    planes = _check_planes(planes)
    if int(n_levels) != n_levels or n_levels < 1:
        raise ValueError(f"n_levels must be a positive integer, got {n_levels}")
    batch, _, channels, height, width = planes.shape
    factor = 2 ** (n_levels - 1)
    if height % factor or width % factor:
        raise ValueError(f"planes of size {height}x{width} cannot be halved {n_levels - 1} times exactly")
    flat = planes.reshape(batch * 3, channels, height, width)
    levels = [planes]
    for level in range(1, n_levels):
        size = (height >> level, width >> level)
        small = F.interpolate(flat, size=size, mode="bilinear", antialias=True, align_corners=False)
        levels.append(small.view(batch, 3, channels, *size))
    return levels


def sample_triplane_pyramid(pyramid: Sequence[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """G3DR lookup: sample every level at the same points, sum over levels, then average over the 3 planes.

    Args:
        pyramid: levels (B, 3, C, H_l, W_l), e.g. from :func:`triplane_pyramid`.
        points: (B, N, 3) in [-1, 1] (plane convention of :func:`sample_triplane`).

    Returns:
        (B, N, C) features.
    """
    if len(pyramid) == 0:
        raise ValueError("pyramid must contain at least one level")
    channels = {level.shape[2] for level in pyramid if isinstance(level, torch.Tensor) and level.dim() == 5}
    if len(channels) > 1:
        raise ValueError(f"pyramid levels have different channel counts {sorted(channels)}")
    # Summing levels and averaging planes commute (both linear): sum over levels of the per-level plane mean.
    features = sample_triplane(pyramid[0], points, reduce="mean")
    for level in pyramid[1:]:
        features = features + sample_triplane(level, points, reduce="mean")
    return features
