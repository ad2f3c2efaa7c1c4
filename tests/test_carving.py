"""Silhouette carving (core.carving.SilhouetteHull) and its use by the TripoSR model and the API.

References are independent of the module: a hand-written pinhole projection (focal from the field of view) and the
documented frame (camera on +Z looking at the origin, +X right and +Y up in the image).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from monorecon.api import ReconstructOptions, input_silhouette_hull, reconstruct_full
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.carving import SilhouetteHull
from monorecon.models.triposr import load_triposr
from monorecon.models.triposr.model import input_camera

REF_WEIGHTS = Path(__file__).parent / "data" / "triposr_ref" / "model.safetensors"
EXAMPLE = Path(__file__).parents[1] / "examples" / "mug.png"


def pinhole_pixels(points: torch.Tensor, size: int, distance: float = 1.9, fov_deg: float = 40.0) -> torch.Tensor:
    """(N, 3) world points -> (N, 2) pixel (u, v) for a camera at (0, 0, distance) looking at the origin."""
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    depth = distance - points[:, 2]
    return torch.stack([size / 2 + focal * points[:, 0] / depth, size / 2 - focal * points[:, 1] / depth], dim=-1)


def disk_mask(size: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((u - centre[0]) ** 2 + (v - centre[1]) ** 2) <= radius**2).float()


def test_weights_follow_the_image_frame():
    size = 64
    left, top = torch.zeros(size, size), torch.zeros(size, size)
    left[:, : size // 2] = 1.0
    top[: size // 2] = 1.0
    points = torch.tensor([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, -0.3, 0.0]])
    assert SilhouetteHull(input_camera(size), left)(points[:2]).tolist() == [1.0, 0.0]  # +X is right
    assert SilhouetteHull(input_camera(size), top)(points[2:]).tolist() == [1.0, 0.0]  # +Y is up
    full = SilhouetteHull(input_camera(size), torch.ones(size, size))
    behind_and_outside = torch.tensor([[0.0, 0.0, 2.5], [0.0, 0.0, 30.0], [5.0, 0.0, 0.0], [0.0, -4.0, 0.5]])
    assert full(behind_and_outside).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_weights_are_the_silhouette_cone():
    size, radius, centre = 96, 20.0, (40.0, 52.0)
    hull = SilhouetteHull(input_camera(size), disk_mask(size, centre, radius))
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    weights = hull(points)
    uv = pinhole_pixels(points, size)
    distance = ((uv[:, 0] - centre[0]) ** 2 + (uv[:, 1] - centre[1]) ** 2).sqrt()
    # A pixel's bilinear footprint reaches sqrt(2) pixels from its centre.
    inside, outside = distance < radius - 1.5, distance > radius + 1.5
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert float(weights[inside].min()) > 1 - 1e-5 and float(weights[outside].max()) == 0.0
    assert bool(((weights >= 0) & (weights <= 1)).all())
    # A camera of another image size sees the same normalised silhouette.
    assert torch.equal(SilhouetteHull(input_camera(2 * size), disk_mask(size, centre, radius))(points), weights)


def test_margin_grows_the_silhouette():
    size, radius = 128, 30.0
    mask = disk_mask(size, (64.0, 64.0), radius)
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    distance = (pinhole_pixels(points, size) - 64.0).norm(dim=-1)
    grown = SilhouetteHull(input_camera(size), mask, margin=4 / 128)(points)
    band = (distance > radius + 1.5) & (distance < radius + 2.5)
    assert band.sum() > 100 and float(grown[band].min()) > 1 - 1e-5
    assert float(grown[distance > radius + 4.0 + 1.5].max()) == 0.0


@pytest.mark.parametrize(
    "mask, kwargs, message",
    [
        (torch.zeros(16, 16), {}, "empty"),
        (torch.full((16, 16), 2.0), {}, r"\[0, 1\]"),
        (torch.full((16, 16), float("nan")), {}, "non-finite|NaN|finite"),
        (torch.ones(16, 16, 1), {}, "shape"),
        (torch.ones(16, 16), {"margin": -0.1}, "margin"),
        (torch.ones(16, 16), {"threshold": 1.0}, "threshold"),
    ],
)
def test_bad_masks_are_refused(mask, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SilhouetteHull(input_camera(16), mask, **kwargs)


def test_input_hull_is_none_when_nothing_is_background():
    assert input_silhouette_hull(np.ones((8, 8), dtype=np.float32)) is None  # background kept: nothing to carve
    hull = input_silhouette_hull(disk_mask(32, (16.0, 16.0), 6.0).numpy())
    assert hull(torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0]])).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        input_silhouette_hull(np.zeros((8, 8), dtype=np.float32))


def test_one_camera_only():
    two = PerspectiveCameras(torch.cat([orbit_c2w(0.0, 0.0, 1.9), orbit_c2w(90.0, 0.0, 1.9)]), 16, 16, fov_y_deg=40.0)
    with pytest.raises(ValueError, match="one camera"):
        SilhouetteHull(two, torch.ones(16, 16))


def test_model_query_render_and_mesh_respect_the_hull():
    model = load_triposr(REF_WEIGHTS).eval()
    size = 32
    mask = disk_mask(size, (13.0, 18.0), 8.0)
    hull = SilhouetteHull(input_camera(size), mask)
    code = torch.randn(model.scene_code_shape, generator=torch.Generator().manual_seed(0))
    points = torch.rand(4000, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    with torch.no_grad():
        density, rgb = model.query(code, points)
        carved_density, carved_rgb = model.query(code, points, carve=hull)
        assert torch.equal(carved_rgb, rgb)
        torch.testing.assert_close(carved_density, density * hull(points)[:, None])
        opacity = model.render(code, input_camera(size), n_samples=32, carve=hull)["opacity"][0, ..., 0]
        background = ~torch.from_numpy(ndimage.binary_dilation(mask.numpy() > 0.5))
        assert float(opacity[background].max()) < 1e-6
        level = float(carved_density[carved_density > 0].median())
        mesh = model.extract_mesh(code, 48, level, carve=hull)
    uv = pinhole_pixels(mesh.verts, size)
    assert float(((uv - torch.tensor([13.0, 18.0])).norm(dim=-1)).max()) < 8.0 + 1.0


def test_reconstruct_carves_by_default_and_can_be_told_not_to():
    model = load_triposr(REF_WEIGHTS).eval()
    resolution = 48
    carved = reconstruct_full(EXAMPLE, model, ReconstructOptions(mc_resolution=resolution, threshold=1.0))
    plain = reconstruct_full(EXAMPLE, model, ReconstructOptions(mc_resolution=resolution, threshold=1.0, carve=False))
    alpha = carved.prepared.alpha > 0.5
    size = alpha.shape[0]
    outside_distance = ndimage.distance_transform_edt(~alpha)  # pixels to the silhouette

    def farthest_outside(verts: torch.Tensor) -> float:
        uv = pinhole_pixels(verts, size).long().clamp(0, size - 1).numpy()
        return float(outside_distance[uv[:, 1], uv[:, 0]].max())

    # Marching cubes puts a vertex up to one grid step from the carved grid points: one voxel seen from the nearest
    # depth of the box (1.9 - 0.87).
    voxel = 2 * 0.87 / (resolution - 1)
    tolerance = voxel * 0.5 * size / math.tan(math.radians(20.0)) / (1.9 - 0.87) + 1.0
    assert farthest_outside(carved.mesh.verts) < tolerance
    assert farthest_outside(plain.mesh.verts) > 2 * tolerance  # the random-weight field fills the box
    assert np.array_equal(plain.prepared.alpha, carved.prepared.alpha)
