"""Trivial single-view baselines the learned model must beat (both read only the input silhouette).

Both assume the canonical input camera of the TripoSR model (``orbit_c2w(0, 0, 1.9)``, fov 40 deg, looking at the
origin) unless another camera is given, and return meshes in that camera's world frame.

* :func:`sphere_baseline`: the sphere whose image is the disc of the silhouette's area centred on its centroid. Its
  centre lies on the ray through the centroid at the depth of the origin (the object is assumed centred), its radius
  ``R`` solves ``r / f = R / sqrt(D^2 - R^2)`` (exact apparent radius of a sphere at distance ``D``).
* :func:`inflation_baseline`: the visual hull of the single view, inflated: a point of the viewing frustum is inside
  when its pixel is foreground and its depth lies within ``thickness_scale * h(pixel)`` of the depth of the origin,
  the half-thickness profile ``h`` a function of ``dt``, the Euclidean distance transform of the mask (pixels),
  converted to world units at that depth (``* D / f``). Profile ``"cone"`` (the default): ``h = dt``; ``"round"``:
  ``h = sqrt(dt (2 R - dt))`` with ``R`` the largest ``dt``, which makes a disc a sphere and thin parts thicker.
  Thin parts get thin, the silhouette's core thick; meshed by marching cubes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.ndimage import distance_transform_edt

from ..core.cameras import PerspectiveCameras
from ..core.checks import check_tensor
from ..core.extract import extract_isosurface
from ..core.mesh import Mesh
from ..models.triposr.model import input_camera

__all__ = ["inflation_baseline", "sphere_baseline"]


def _mask(alpha: torch.Tensor | np.ndarray) -> torch.Tensor:
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    check_tensor(alpha, "alpha", (None, None))
    mask = alpha > 0.5
    if not bool(mask.any()):
        raise ValueError("the input silhouette is empty (no pixel with alpha > 0.5)")
    return mask


def _camera_for(mask: torch.Tensor, camera: PerspectiveCameras | None) -> PerspectiveCameras:
    """The given camera, or the default square input camera, checked to image exactly ``mask``'s pixels."""
    height, width = mask.shape
    if camera is None:
        if height != width:
            raise ValueError(f"the default input camera is square: pass the camera of this {height}x{width} silhouette")
        camera = input_camera(height)
    if (camera.height, camera.width) != (height, width):
        raise ValueError(
            f"the silhouette is {height}x{width} pixels but the camera's image is {camera.height}x{camera.width}"
        )
    return camera


def _focal_and_distance(camera: PerspectiveCameras) -> tuple[float, float]:
    focal = float(camera.K[0, 1, 1])
    distance = float(camera.position[0].norm())
    return focal, distance


def sphere_baseline(alpha: torch.Tensor | np.ndarray, camera: PerspectiveCameras | None = None) -> Mesh:
    """Sphere fitted to the silhouette (see the module docstring).

    Args:
        alpha: (H, W) input mask in [0, 1].
        camera: the input camera, of the mask's size (default :func:`monorecon.models.triposr.model.input_camera` of
            the image size, for a square mask).

    Returns:
        An icosphere mesh (642 vertices) in the camera's world frame.

    Raises:
        ValueError: an empty silhouette, or a camera whose image size is not the mask's.
    """
    mask = _mask(alpha)
    camera = _camera_for(mask, camera)
    focal, distance = _focal_and_distance(camera)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    uv = torch.stack([cols.float().mean() + 0.5, rows.float().mean() + 0.5])
    ratio = math.sqrt(mask.sum().item() / math.pi) / focal
    radius = distance * ratio / math.sqrt(1.0 + ratio * ratio)
    origin, direction = camera.ndc_to_camera_ray(camera.pixel_to_ndc(uv)[None, None])
    direction = direction[0, 0] / -direction[0, 0, 2]  # unit depth
    centre_camera = origin[0, 0] + direction * distance
    centre = camera.camera_to_world(centre_camera[None, None])[0, 0]
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    verts = torch.from_numpy(np.asarray(sphere.vertices, dtype=np.float32)) + centre.float()
    return Mesh(verts, torch.from_numpy(np.asarray(sphere.faces, dtype=np.int64)))


def inflation_baseline(
    alpha: torch.Tensor | np.ndarray,
    camera: PerspectiveCameras | None = None,
    resolution: int = 96,
    thickness_scale: float = 1.0,
    bounds: float = 0.87,
    profile: str = "cone",
) -> Mesh:
    """Single-view visual hull inflated by the silhouette's distance transform (see the module docstring).

    Args:
        alpha: (H, W) input mask in [0, 1].
        camera: the input camera, of the mask's size (default :func:`monorecon.models.triposr.model.input_camera` of
            the image size, for a square mask).
        resolution: marching-cubes grid samples per axis over ``[-bounds, bounds]^3``.
        thickness_scale: half-thickness per unit of distance-transform (world units at the origin's depth).
        bounds: half side of the meshed cube.
        profile: ``"cone"`` or ``"round"`` half-thickness profile (see the module docstring).

    Returns:
        The inflated mesh in the camera's world frame.

    Raises:
        ValueError: an empty silhouette, a camera whose image size is not the mask's, or a bad setting.
    """
    if not (math.isfinite(thickness_scale) and thickness_scale > 0):
        raise ValueError(f"thickness_scale must be a positive number, got {thickness_scale}")
    if profile not in ("cone", "round"):
        raise ValueError(f"profile must be 'cone' or 'round', got {profile!r}")
    mask = _mask(alpha)
    height, width = mask.shape
    camera = _camera_for(mask, camera)
    focal, distance = _focal_and_distance(camera)
    # Distance to the nearest background pixel, from pixel centres; 0.5 px shift puts the zero on the mask edge.
    dt = distance_transform_edt(mask.numpy()) - 0.5
    if profile == "round":
        dt = np.sqrt(np.clip(dt, 0.0, None) * (2.0 * dt.max() - dt))
    half_thickness = torch.from_numpy(np.where(mask.numpy(), dt, -1.0)).float() * (thickness_scale * distance / focal)

    def occupancy(points: torch.Tensor) -> torch.Tensor:
        screen = camera.transform_points_screen(points)[0]  # (N, 3) u, v, depth
        grid = torch.stack([screen[:, 0] / width * 2.0 - 1.0, screen[:, 1] / height * 2.0 - 1.0], dim=-1)
        h = F.grid_sample(
            half_thickness[None, None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False
        )[0, 0, 0]
        # Signed: positive inside the slab |depth - D| < h of a foreground pixel, and inside the viewing frustum (a
        # silhouette cut by the image's border must not spill out of it): the distance to the image's border in
        # pixels, times depth / f, is linear in the point, zero on the frustum's sides.
        u, v, depth = screen.unbind(-1)
        border = torch.minimum(torch.minimum(u, width - u), torch.minimum(v, height - v)) * (depth / focal)
        return torch.minimum(h - (depth - distance).abs(), border)

    return extract_isosurface(occupancy, resolution, 0.0, bounds)
