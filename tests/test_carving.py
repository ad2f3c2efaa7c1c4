"""Silhouette carving and filling (core.carving) and their use by the TripoSR model and the API.

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

from analytic import sphere_camera_depth
from monorecon.api import (
    ReconstructOptions,
    input_silhouette_hull,
    input_view_weight,
    load_model,
    model_silhouette_fill,
    reconstruct_full,
)
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.carving import SilhouetteFill, SilhouetteHull, depth_hull_occupancy
from monorecon.core.extract import extract_isosurface
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


def test_margin_is_a_fraction_of_the_larger_image_side():
    """On a 16 x 64 mask, ``margin`` 4 / 64 grows a one-pixel silhouette by 4 pixels (a fraction of the *larger*
    side, as documented), not by 1 (of the smaller). Pixel centres are checked through a hand pinhole: there the
    bilinear weight is the grown mask's value, 1 within 4 pixels of the silhouette pixel and 0 beyond."""
    height, width = 16, 64
    camera = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), height, width, fov_y_deg=40.0)
    mask = torch.zeros(height, width)
    mask[8, 32] = 1.0
    hull = SilhouetteHull(camera, mask, margin=4 / 64)
    focal = 0.5 * height / math.tan(math.radians(20.0))
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(20, 45), indexing="ij")
    u, v = cols.flatten() + 0.5, rows.flatten() + 0.5
    points = torch.stack([(u - width / 2) * 1.9 / focal, -(v - height / 2) * 1.9 / focal, torch.zeros_like(u)], -1)
    expected = (((rows - 8) ** 2 + (cols - 32) ** 2) <= 16).flatten().float()
    torch.testing.assert_close(hull(points), expected, atol=1e-5, rtol=0)


def test_mask_values_equal_to_the_threshold_are_background():
    """Pixels *above* ``threshold`` are the object (documented): a half-alpha background at exactly the default 0.5
    is carved away, and a lower threshold keeps it."""
    mask = torch.full((8, 8), 0.5)
    mask[:, :4] = 1.0
    points = torch.tensor([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0]])  # pixels u = 2.27 and 5.73 (hand pinhole, 8 px)
    assert SilhouetteHull(input_camera(8), mask)(points).tolist() == [1.0, 0.0]
    assert SilhouetteHull(input_camera(8), mask, threshold=0.4)(points).tolist() == [1.0, 1.0]


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


def _half_spheres(points: torch.Tensor, left: float, right: float, radius: float = 0.3) -> torch.Tensor:
    """Density ``left`` / ``right`` in the x < 0 / x >= 0 halves of a ball at the origin, 0 outside."""
    inside = points.norm(dim=-1) < radius
    return torch.where(inside, torch.where(points[:, 0] < 0, left, right), 0.0)


def _ball_hull(size: int = 64, radius: float = 0.3) -> SilhouetteHull:
    """The hull of a disk one pixel wider than the ball's outline seen by the input camera (some rays miss it)."""
    focal = 0.5 * size / math.tan(math.radians(20.0))
    outline = focal * math.tan(math.asin(radius / 1.9))
    return SilhouetteHull(input_camera(size), disk_mask(size, (size / 2, size / 2), outline + 1.0))


def test_fill_raises_rays_that_never_reach_the_level():
    hull = _ball_hull()
    field = lambda points: _half_spheres(points, 3.0, 12.0)  # noqa: E731
    fill = hull.filled(field, level=7.0, box_radius=0.87, headroom=1.1, max_gain=20.0)
    # Away from the seam at x = 0 (one pixel of bilinear blend) and the outline, the gain is the ray's own.
    left, right = torch.tensor([[-0.15, 0.05, 0.1], [-0.2, -0.1, 0.0]]), torch.tensor([[0.15, 0.05, -0.1]])
    torch.testing.assert_close(fill(left), hull(left) * 1.1 * 7.0 / 3.0)  # faint half: raised to 1.1 x the level
    torch.testing.assert_close(fill(right), hull(right))  # already above the level: untouched
    assert fill(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 2.5]])).tolist() == [0.0, 0.0]  # outside, behind: carved
    resolution, voxel = 64, 2 * 0.87 / 63

    def mesh_of(weight):
        return extract_isosurface(lambda p: field(p) * weight(p), resolution, 7.0, bounds=0.87)

    filled, carved = mesh_of(fill), mesh_of(hull)
    # Carving alone keeps only the bright half; filled, the whole ball (radius 0.3) comes back.
    assert float(carved.verts[:, 0].min()) > -voxel
    assert float(filled.verts[:, 0].min()) < -0.3 + voxel and float(filled.verts[:, 0].max()) > 0.3 - voxel
    radii = filled.verts.norm(dim=-1)
    assert float((radii - 0.3).abs().max()) < voxel


def test_fill_of_a_mask_larger_than_its_gain_map_is_the_same_fill():
    # `filled` computes its gains on at most `resolution` pixels: a 256-pixel mask (as `reconstruct` prepares its
    # input at 512) must give the fill of the same silhouette at 64 pixels, i.e. its rays must be the same rays.
    field = lambda points: _half_spheres(points, 3.0, 12.0)  # noqa: E731
    hulls = [_ball_hull(size) for size in (64, 256)]
    fills = [hull.filled(field, level=7.0, box_radius=0.87, resolution=64) for hull in hulls]
    assert fills[1].gain.shape[-2:] == (64, 64)
    points = torch.tensor([[-0.15, 0.05, 0.1], [-0.2, -0.1, 0.0], [-0.05, 0.2, -0.2], [0.15, 0.05, -0.1]])
    expected = hulls[0](points) * torch.tensor([1.1 * 7.0 / 3.0] * 3 + [1.0])  # faint half raised, bright kept
    for fill in fills:
        torch.testing.assert_close(fill(points), expected)


def test_fill_gains_are_those_of_every_sample_of_every_ray():
    """`filled` samples every 4th point of a ray first and the rest only where needed: its gains must equal the
    brute-force peak over all samples. A thin shell (Gaussian of width 0.01, finer than the first pass's 0.044 step)
    makes the first pass miss the peak on many rays, some of which the full pass finds above the level."""
    from monorecon.core.volume import ray_aabb, uniform_samples

    hull, level, n_samples = _ball_hull(), 7.0, 160

    def shell(points: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.exp(-(((points.norm(dim=-1) - 0.3) / 0.01) ** 2))

    fill = hull.filled(shell, level=level, box_radius=0.87, n_samples=n_samples)
    inside = hull.mask[0, 0] > 0.5  # the mask is at the gain map's size here (64 <= resolution)
    origins, directions = (rays[0][inside] for rays in hull.camera.get_rays(normalize=True))
    t_near, t_far, hit = ray_aabb(origins, directions, [-0.87] * 3, [0.87] * 3)
    _, t = uniform_samples(t_near, t_far, n_samples)
    points = (origins[:, None] + directions[:, None] * t[..., None]).reshape(-1, 3)
    along = (shell(points) * hull(points)).reshape(t.shape)

    def gains(peak: torch.Tensor) -> torch.Tensor:
        return (1.1 * level / torch.where(hit, peak, 0.0).clamp_min(1e-12)).clamp(1.0, 20.0)

    expected = gains(along.amax(dim=1))
    assert torch.equal(fill.gain[0, 0][inside], expected)
    first_pass = gains(along[:, ::4].amax(dim=1))
    assert int(((first_pass > 1) & (expected == 1)).sum()) > 20  # the second pass decides these rays
    assert int((expected > 1).sum()) > 20  # and some rays are raised all the same


def test_fill_gain_is_capped_and_checked():
    hull = _ball_hull()
    fill = hull.filled(lambda points: _half_spheres(points, 0.1, 0.1), level=7.0, box_radius=0.87, max_gain=20.0)
    centre = torch.zeros(1, 3)
    assert float(fill(centre)) == pytest.approx(20.0)  # 7.7 / 0.1 clipped: noise is not made into surface
    field = lambda points: points[:, 0]  # noqa: E731
    for kwargs, message in [
        ({"level": 0.0}, "level"), ({"level": float("nan")}, "level"), ({"box_radius": -1.0}, "box_radius"),
        ({"headroom": 0.5}, "headroom"), ({"max_gain": float("inf")}, "max_gain"), ({"resolution": 0}, "resolution"),
        ({"n_samples": 1}, "n_samples"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            hull.filled(field, **{"level": 7.0, "box_radius": 0.87, **kwargs})
    with pytest.raises(ValueError, match=">= 1"):
        SilhouetteFill(hull, torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        hull.filled(lambda points: torch.full((len(points),), float("nan")), level=7.0, box_radius=0.87)


def test_fill_gain_does_not_fade_at_the_image_border():
    """The gains are factors >= 1 (1 outside the silhouette): near the image border a filled weight is the hull's
    weight times the ray's gain, not a gain faded towards 0 beyond the gain map's last pixel centre. A full mask
    (hull 1 up to the outer half pixel), a constant density 0.1 and level 1 give every ray the gain 1.1 / 0.1 = 11;
    at NDC x = 0.95 of an 8-pixel mask the hull's bilinear weight is 1 - (0.95 - 0.875) / 0.25 = 0.7 by hand."""
    hull = SilhouetteHull(input_camera(8), torch.ones(8, 8))
    fill = hull.filled(lambda points: torch.full((len(points),), 0.1), level=1.0, box_radius=0.87, resolution=4)
    half_width = 1.9 * math.tan(math.radians(20.0))  # world half-width of the view in the plane z = 0
    points = torch.tensor([[0.0, 0.0, 0.0], [0.95 * half_width, 0.0, 0.0], [0.0, -0.95 * half_width, 0.0]])
    torch.testing.assert_close(hull(points), torch.tensor([1.0, 0.7, 0.7]), atol=1e-5, rtol=0)
    torch.testing.assert_close(fill(points), torch.tensor([11.0, 0.7 * 11.0, 0.7 * 11.0]), atol=1e-4, rtol=0)


def test_reconstruct_fill_follows_the_model_and_the_option():
    model = load_triposr(REF_WEIGHTS).eval()
    assert not model_silhouette_fill(model)  # TripoSR weights: no fill unless asked
    assert model_silhouette_fill(load_model())  # the bundled model was validated with it
    code = torch.randn(1, *model.scene_code_shape, generator=torch.Generator().manual_seed(0))
    alpha = disk_mask(32, (13.0, 18.0), 8.0).numpy()
    assert isinstance(input_view_weight(model, code, alpha, 5.0), SilhouetteHull)
    assert isinstance(input_view_weight(model, code, alpha, 5.0, fill=True), SilhouetteFill)
    assert input_view_weight(model, code, np.ones((8, 8), dtype=np.float32), 5.0, fill=True) is None
    with pytest.raises(ValueError, match="fill"):
        ReconstructOptions(fill="no")  # a string would otherwise be true
    # A level few rays of this random-weight field reach: filled, the surface spans most of the silhouette (the rays
    # whose peak times the largest gain, 20, reaches the level), still inside it.
    resolution = 48
    options = {"mc_resolution": resolution, "threshold": 100.0}
    filled = reconstruct_full(EXAMPLE, model, ReconstructOptions(**options, fill=True))
    carved = reconstruct_full(EXAMPLE, model, ReconstructOptions(**options))
    alpha = filled.prepared.alpha > 0.5
    size = alpha.shape[0]
    voxel_pixels = 2 * 0.87 / (resolution - 1) * 0.5 * size / math.tan(math.radians(20.0)) / (1.9 - 0.87)

    def pixels(verts: torch.Tensor) -> np.ndarray:
        return pinhole_pixels(verts, size).long().clamp(0, size - 1).numpy()

    def coverage(verts: torch.Tensor) -> float:  # share of the silhouette within a voxel of a vertex
        hit = np.zeros_like(alpha)
        hit[pixels(verts)[:, 1], pixels(verts)[:, 0]] = True
        return float((ndimage.distance_transform_edt(~hit) <= voxel_pixels)[alpha].mean())

    assert coverage(carved.mesh.verts) < 0.2 and coverage(filled.mesh.verts) > 0.5
    outside = ndimage.distance_transform_edt(~alpha)
    assert float(outside[pixels(filled.mesh.verts)[:, 1], pixels(filled.mesh.verts)[:, 0]].max()) < voxel_pixels + 1


# --------------------------------------------------------------------------------------------------------------------
# depth hull of several views
# --------------------------------------------------------------------------------------------------------------------
def test_depth_hull_of_a_sphere_is_the_sphere():
    radius = 0.4
    azimuths = torch.tensor([0.0, 60.0, 120.0, 180.0, 240.0, 300.0, 30.0, 210.0])
    elevations = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 70.0, -70.0])
    cameras = PerspectiveCameras(orbit_c2w(azimuths, elevations, 1.9), 96, 96, fov_y_deg=40.0)
    depth, _ = sphere_camera_depth(cameras, radius)
    points = (torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.6
    inside = depth_hull_occupancy(cameras, depth, points)
    distance = points.norm(dim=-1)
    assert bool(inside[distance < radius - 0.01].all())  # the hull contains the object
    outside = distance > radius + 0.03
    assert inside[outside].float().mean() < 0.01  # and is tight where the views surround it
    # In front of the visible surface, inside the silhouette cone of view 0 (azimuth 0 looks from +Z): outside.
    front = torch.tensor([[0.0, 0.0, radius + 0.05], [0.1, -0.1, radius]])
    assert not depth_hull_occupancy(cameras, depth, front).any()
    assert depth_hull_occupancy(cameras, depth, torch.tensor([[0.0, 0.0, radius - 0.02]])).all()


def test_depth_hull_tolerance_and_bad_arguments():
    cameras = PerspectiveCameras(orbit_c2w(torch.tensor([0.0]), torch.tensor([0.0]), 1.9), 32, 32, fov_y_deg=40.0)
    depth, _ = sphere_camera_depth(cameras, 0.4)
    just_in_front = torch.tensor([[0.0, 0.0, 0.41]])  # camera depth 1.49, the surface is at 1.5
    assert not depth_hull_occupancy(cameras, depth, just_in_front).any()
    assert depth_hull_occupancy(cameras, depth, just_in_front, tolerance=0.02).all()
    with pytest.raises(ValueError, match="tolerance"):
        depth_hull_occupancy(cameras, depth, just_in_front, tolerance=-1.0)
    with pytest.raises(ValueError, match="depth"):
        depth_hull_occupancy(cameras, depth[:, :16], just_in_front)
    with pytest.raises(ValueError, match="depth must be >= 0"):
        depth_hull_occupancy(cameras, -depth, just_in_front)
    with pytest.raises(ValueError, match="depth contains NaN"):
        depth_hull_occupancy(cameras, torch.full_like(depth, float("nan")), just_in_front)
    with pytest.raises(ValueError, match="points contains NaN"):
        depth_hull_occupancy(cameras, depth, torch.tensor([[float("nan"), 0.0, 0.0]]))


# --------------------------------------------------------------------------------------------------------------------
# Fill gain map: size, silhouette pixels, default sampling; depth hull on a non-square, asymmetric view
# --------------------------------------------------------------------------------------------------------------------
def test_fill_gain_map_has_at_most_resolution_pixels_on_the_longer_side():
    """The gain map keeps the mask's aspect with the longer side at ``resolution`` (128 by default): a 30 x 100 mask
    at resolution 32 gives 32 * 30 / 100 = 9.6 -> 10 rows (a 100 x 30 mask 10 columns), a 256-pixel mask 128 x 128,
    a smaller mask its own size."""
    density = lambda points: torch.ones(len(points))  # noqa: E731  (every ray reaches the level: gains 1)
    wide = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), 30, 100, fov_y_deg=40.0)
    gain = SilhouetteHull(wide, torch.ones(30, 100)).filled(density, 0.5, 0.87, resolution=32).gain
    assert gain.shape[-2:] == (10, 32)
    tall = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), 100, 30, fov_y_deg=40.0)
    gain = SilhouetteHull(tall, torch.ones(100, 30)).filled(density, 0.5, 0.87, resolution=32).gain
    assert gain.shape[-2:] == (32, 10)
    big = SilhouetteHull(input_camera(256), disk_mask(256, (128.0, 128.0), 60.0))
    assert big.filled(density, 0.5, 0.87, n_samples=8).gain.shape[-2:] == (128, 128)
    small = SilhouetteHull(input_camera(40), disk_mask(40, (20.0, 20.0), 10.0))
    assert small.filled(density, 0.5, 0.87, n_samples=8).gain.shape[-2:] == (40, 40)


def test_fill_raises_only_pixels_mostly_inside_the_silhouette():
    """An 8 x 8 mask filled at 4 x 4: a gain pixel covers 2 x 2 mask pixels and is a silhouette ray when most of
    them are the object. The upper-left 4 x 4 block is 2 x 2 gain pixels whose rays see a hull of 1 and the density
    0.1, so gain 1.1 * 1 / 0.1 = 11 by hand; a lone object pixel (6, 6) covers a quarter of gain pixel (3, 3),
    which is not a silhouette ray and keeps gain 1 (not the capped 1.1 / 0.025 of its faint ray)."""
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1.0
    mask[6, 6] = 1.0
    hull = SilhouetteHull(input_camera(8), mask)
    fill = hull.filled(lambda points: torch.full((len(points),), 0.1), level=1.0, box_radius=0.87, resolution=4)
    expected = torch.ones(4, 4)
    expected[:2, :2] = 11.0
    torch.testing.assert_close(fill.gain[0, 0], expected, atol=1e-4, rtol=0)


def test_fill_default_sampling_is_160_samples_per_ray():
    """The default ``n_samples`` (160) decides which thin shells a ray finds: the default fill equals a brute-force
    peak over 160 uniform samples in the box on every silhouette ray (64-pixel mask: one ray per mask pixel)."""
    from monorecon.core.volume import ray_aabb, uniform_samples

    hull, level = _ball_hull(), 7.0

    def shell(points: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.exp(-(((points.norm(dim=-1) - 0.3) / 0.01) ** 2))

    fill = hull.filled(shell, level=level, box_radius=0.87)
    inside = hull.mask[0, 0] > 0.5
    origins, directions = (rays[0][inside] for rays in hull.camera.get_rays(normalize=True))
    t_near, t_far, _ = ray_aabb(origins, directions, [-0.87] * 3, [0.87] * 3)
    _, t = uniform_samples(t_near, t_far, 160)
    points = (origins[:, None] + directions[:, None] * t[..., None]).reshape(-1, 3)
    peak = (shell(points) * hull(points)).reshape(t.shape).amax(dim=1)
    torch.testing.assert_close(fill.gain[0, 0][inside], (1.1 * level / peak.clamp_min(1e-12)).clamp(1.0, 20.0))


def test_depth_hull_on_a_non_square_view_of_a_corner_block():
    """One 24 x 40 view whose depth map holds the plane z = 0 (depth 1.9) only on its upper-left 8 x 12 pixels: a
    point projecting (hand pinhole) into that block is inside at or behind the plane, outside in front of it; a point
    projecting elsewhere is outside at any depth."""
    height, width = 24, 40
    camera = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), height, width, fov_y_deg=40.0)
    depth = torch.zeros(1, height, width)
    depth[0, :8, :12] = 1.9
    focal = 0.5 * height / math.tan(math.radians(20.0))
    pixels = torch.tensor([[2, 3], [7, 11], [5, 0], [0, 9], [8, 3], [2, 12], [12, 20], [20, 35], [3, 30]])  # row, col
    in_block = (pixels[:, 0] < 8) & (pixels[:, 1] < 12)
    for z, behind in ((-0.2, True), (0.0, True), (0.1, False)):
        scale = (1.9 - z) / focal  # pixel centre (col + 0.5, row + 0.5) back-projected to the plane z
        x = (pixels[:, 1] + 0.5 - width / 2) * scale
        y = -(pixels[:, 0] + 0.5 - height / 2) * scale
        points = torch.stack([x, y, torch.full_like(x, z)], dim=-1)
        assert torch.equal(depth_hull_occupancy(camera, depth, points), in_block & behind), z
