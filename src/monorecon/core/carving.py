"""Silhouette carving: the visual hull of one view, as a weight on a field's density.

An object seen by a camera lies inside the cone of its silhouette: a point that projects onto the background (or
outside the image, or lies behind the camera) cannot be part of it. :class:`SilhouetteHull` gives each world point a
weight in [0, 1] (1 inside the cone, 0 outside, a one-pixel bilinear ramp at the outline) that multiplies a predicted
density, so a single-image model's field is cut to the input silhouette.

Carving cannot add what the model missed; :meth:`SilhouetteHull.filled` does the converse: every ray through the
silhouette hits the object, so where a field's density stays below the surface level all along such a ray, it is
scaled up on that ray (:class:`SilhouetteFill`) until its peak crosses the level, and the surface appears where the
field put the most density. Together the field becomes consistent with the input silhouette from both sides.

With several views and their depth maps, :func:`depth_hull_occupancy` gives the multi-view analogue: the points that
every view sees at or behind its visible surface, a solid that contains the object (e.g. occupancy labels for
training).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .cameras import Cameras
from .checks import check_tensor
from .volume import ray_aabb, uniform_samples

__all__ = ["SilhouetteFill", "SilhouetteHull", "depth_hull_occupancy"]


class SilhouetteHull:
    """The cone of one camera's silhouette, as a per-point weight.

    Args:
        camera: one camera (batch size 1) whose image is ``mask``; its ``height`` / ``width`` may differ from the
            mask's (only the normalised image coordinates are used).
        mask: (H, W) alpha or mask in [0, 1]; pixels above ``threshold`` are the object.
        margin: grow the silhouette by this fraction of the image's larger side before carving (default 0: the
            outline itself, with a one-pixel bilinear ramp across it), e.g. for a mask that is slightly too tight.
        threshold: alpha level of the silhouette.

    Calling it with (N, 3) world points returns (N,) weights in [0, 1].

    Raises:
        ValueError: several cameras, a mask that is not (H, W), non-finite, outside [0, 1] or empty, or a margin /
            threshold outside [0, 1).
    """

    def __init__(
        self,
        camera: Cameras,
        mask: torch.Tensor | np.ndarray,
        margin: float = 0.0,
        threshold: float = 0.5,
    ) -> None:
        if not isinstance(camera, Cameras) or camera.batch_size != 1:
            raise ValueError("SilhouetteHull needs exactly one camera")
        mask = check_tensor(torch.as_tensor(mask, dtype=torch.float32), "mask", (None, None))
        if bool((mask < 0).any()) or bool((mask > 1).any()):
            raise ValueError("mask must hold values in [0, 1]")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must lie in [0, 1), got {margin}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
        inside = (mask > threshold).cpu().numpy()
        if not inside.any():
            raise ValueError("the silhouette is empty (no pixel above the threshold)")
        radius = margin * max(inside.shape)
        if radius > 0:  # grow by a disk: pixels within `radius` of the silhouette
            inside = ndimage.distance_transform_edt(~inside) <= radius
        self.camera = camera
        self.mask = torch.from_numpy(inside.astype(np.float32))[None, None].to(camera.c2w.device)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points -> (N,) weights: bilinear sample of the grown silhouette at their projections."""
        points = check_tensor(points, "points", (None, 3), floating=True)
        return _sample(self.mask, *_project(self.camera, points), padding="zeros").to(points)

    @torch.no_grad()
    def filled(
        self,
        density: Callable[[torch.Tensor], torch.Tensor],
        level: float,
        box_radius: float,
        *,
        resolution: int = 128,
        n_samples: int = 160,
        headroom: float = 1.1,
        max_gain: float = 20.0,
    ) -> SilhouetteFill:
        """This hull, with the density raised on silhouette rays that never reach ``level`` (see the module docstring).

        For each pixel of the silhouette (at most ``resolution`` pixels along the longer side), ``n_samples`` points
        of its ray inside the box ``[-box_radius, box_radius]^3`` give the peak of ``density`` x hull weight; the
        ray's gain is ``headroom * level / peak``, clipped to ``[1, max_gain]`` (a ray with almost no density stays
        empty rather than turning noise into surface). Rays that already reach the level keep gain 1.

        Args:
            density: (N, 3) world points -> (N,) density (the field without carving).
            level: the iso-level the surface will be extracted at (> 0).
            box_radius: half side of the field's box (> 0).
            resolution, n_samples: gain-map size and samples per ray.
            headroom: how far above ``level`` a raised ray's peak goes (>= 1).
            max_gain: largest factor a ray's density is multiplied by (>= 1).

        Returns:
            A :class:`SilhouetteFill`: weights (hull x gain) in ``[0, max_gain]``.

        Raises:
            ValueError: bad arguments, or NaN densities on the silhouette's rays.
        """
        if not (math.isfinite(level) and level > 0 and math.isfinite(box_radius) and box_radius > 0):
            raise ValueError(f"level and box_radius must be positive and finite, got {level}, {box_radius}")
        if not (math.isfinite(headroom) and headroom >= 1 and math.isfinite(max_gain) and max_gain >= 1):
            raise ValueError(f"headroom and max_gain must be finite and >= 1, got {headroom}, {max_gain}")
        if int(resolution) != resolution or resolution < 1 or int(n_samples) != n_samples or n_samples < 2:
            raise ValueError(f"resolution must be >= 1 and n_samples >= 2 (integers), got {resolution}, {n_samples}")
        height, width = self.mask.shape[-2:]
        scale = min(1.0, resolution / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        inside = F.interpolate(self.mask, size=size, mode="area")[0, 0] > 0.5
        camera = self.camera.resized(*size)
        origins, directions = (rays[0][inside] for rays in camera.get_rays(normalize=True))
        t_near, t_far, hit = ray_aabb(origins, directions, [-box_radius] * 3, [box_radius] * 3)
        _, t = uniform_samples(t_near, t_far, int(n_samples))

        def ray_peak(rays: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
            points = (origins[rays, None] + directions[rays, None] * depths[..., None]).reshape(-1, 3)
            along = density(points).reshape(-1) * self(points)
            if bool(torch.isnan(along).any()):
                raise ValueError("the density is NaN on rays of the input silhouette")
            return along.reshape(depths.shape).amax(dim=1)

        # Every 4th sample first: a ray whose peak there already reaches headroom * level keeps gain 1 whatever the
        # other samples hold, so only the others are sampled in full (the same gains, at about 40 % of the queries).
        every_ray = torch.arange(len(t), device=t.device)
        peak = ray_peak(every_ray, t[:, ::4])
        open_rays = every_ray[peak < headroom * level]
        if len(open_rays):
            rest = torch.ones(t.shape[1], dtype=torch.bool, device=t.device)
            rest[::4] = False
            peak[open_rays] = torch.maximum(peak[open_rays], ray_peak(open_rays, t[open_rays][:, rest]))
        peak = torch.where(hit, peak, torch.zeros_like(peak))
        gain = torch.ones(size, dtype=torch.float32, device=self.mask.device)
        gain[inside] = (headroom * level / peak.clamp_min(1e-12)).clamp(1.0, max_gain).float()
        return SilhouetteFill(self, gain)


class SilhouetteFill:
    """A :class:`SilhouetteHull` times a per-pixel gain: the density weight of :meth:`SilhouetteHull.filled`.

    Args:
        hull: the silhouette's hull (its camera projects points onto the gain map).
        gain: (h, w) factors >= 1, one per pixel of the hull's image at this size (1 outside the silhouette).

    Calling it with (N, 3) world points returns (N,) weights: the hull's weight times the gain, bilinearly
    sampled at their projections.
    """

    def __init__(self, hull: SilhouetteHull, gain: torch.Tensor) -> None:
        gain = check_tensor(torch.as_tensor(gain, dtype=torch.float32), "gain", (None, None))
        if not bool((gain >= 1).all()):
            raise ValueError("gain must be >= 1 everywhere")
        self.hull = hull
        self.gain = gain[None, None].to(hull.mask.device)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points -> (N,) weights in [0, max gain]."""
        points = check_tensor(points, "points", (None, 3), floating=True)
        grid, in_front = _project(self.hull.camera, points)  # once for both images: this runs on every field query
        hull = _sample(self.hull.mask, grid, in_front, padding="zeros")
        return (hull * _sample(self.gain, grid, in_front, padding="border")).to(points)


def depth_hull_occupancy(
    cameras: Cameras, depth: torch.Tensor, points: torch.Tensor, tolerance: float = 0.0
) -> torch.Tensor:
    """Whether world points lie inside the depth hull of V views: (N,) bool.

    A point is inside when, in every view, it projects onto a pixel of the object (depth > 0, nearest pixel) and lies
    at or behind that pixel's visible surface (its camera depth >= the map's depth - ``tolerance``). The object lies
    inside its depth hull; the two agree wherever every part of the surface is seen by some view (a concavity that
    no view sees is counted inside).

    Args:
        cameras: V cameras; their ``height`` / ``width`` are the depth maps' size.
        depth: (V, H, W) camera depths ``-z_camera`` of the visible surface, 0 on the background.
        points: (N, 3) world points.
        tolerance: depth slack (world units, >= 0) for points on the surface.

    Raises:
        ValueError: maps whose count or size does not match the cameras, non-finite or negative depths or points,
            or a negative tolerance.
    """
    depth = check_tensor(depth, "depth", (cameras.batch_size, cameras.height, cameras.width), floating=True)
    if bool((depth < 0).any()):
        raise ValueError("depth must be >= 0 (0 on the background)")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    screen = cameras.transform_points_screen(check_tensor(points, "points", (None, 3), floating=True))  # (V, N, 3)
    column, row = screen[..., 0].floor().long(), screen[..., 1].floor().long()
    in_image = (column >= 0) & (column < cameras.width) & (row >= 0) & (row < cameras.height) & (screen[..., 2] > 0)
    views = torch.arange(cameras.batch_size, device=depth.device)[:, None]
    surface = depth[views, row.clamp(0, cameras.height - 1), column.clamp(0, cameras.width - 1)]
    return (in_image & (surface > 0) & (screen[..., 2] >= surface - tolerance)).all(dim=0)


def _project(camera: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) world points -> grid_sample coordinates (1, 1, N, 2) of their projections, and (N,) in front of it."""
    ndc = camera.transform_points_ndc(points.to(camera.c2w))[0]
    # grid_sample's y runs down the image, NDC's y up; align_corners=False puts -1 / 1 on the image border.
    grid = torch.stack([ndc[:, 0], -ndc[:, 1]], dim=-1).to(torch.float32)
    return grid[None, None], ndc[:, 2] > 0


def _sample(image: torch.Tensor, grid: torch.Tensor, in_front: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear sample of a (1, 1, h, w) image at projected points (0 behind the camera) -> (N,)."""
    values = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=False)[0, 0, 0]
    return torch.where(in_front, values, torch.zeros_like(values))
