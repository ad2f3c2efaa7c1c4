"""Rasteriser: brute-force reference, soft silhouette formula, gradients, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monorecon.core.cameras import OrthographicCameras, PerspectiveCameras, look_at
from monorecon.core.raster import Fragments, blur_radius_for_sigma, rasterize, sharp_silhouette, soft_silhouette


# --------------------------------------------------------------------------------------------------------------------
# Independent reference: a plain loop over pixels and faces (numpy, float64)
# --------------------------------------------------------------------------------------------------------------------
def _segment_sq_dist(p, a, b):
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0)
    q = a + t * ab
    return float(np.dot(p - q, p - q))


def reference_rasterize(verts_ndc, faces, height, width, k, perspective_correct, blur_radius=0.0):
    """Per pixel: solve for barycentrics, keep covering faces, sort by (depth, face index), keep k."""
    verts_ndc, faces = np.asarray(verts_ndc, dtype=np.float64), np.asarray(faces)
    batch = verts_ndc.shape[0]
    short = min(height, width)
    face_index = -np.ones((batch, height, width, k), dtype=np.int64)
    bary_out = np.zeros((batch, height, width, k, 3))
    depth_out = -np.ones((batch, height, width, k))
    dist_out = -np.ones((batch, height, width, k))
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                # Pixel centre in NDC, then in isotropic units (shorter side spans [-1, 1]).
                p_ndc = np.array([(j + 0.5) / width * 2 - 1, 1 - (i + 0.5) / height * 2])
                p = p_ndc * np.array([width, height]) / short
                found = []
                for f, (a, bb, c) in enumerate(faces):
                    tri = verts_ndc[b, [a, bb, c]]
                    z = tri[:, 2]
                    xy = tri[:, :2] * np.array([width, height]) / short
                    if (z <= 0).any():
                        continue
                    m = np.array(
                        [[xy[0, 0] - xy[2, 0], xy[1, 0] - xy[2, 0]], [xy[0, 1] - xy[2, 1], xy[1, 1] - xy[2, 1]]]
                    )
                    if abs(np.linalg.det(m)) < 1e-8:
                        continue
                    l0, l1 = np.linalg.solve(m, p - xy[2])
                    w = np.array([l0, l1, 1 - l0 - l1])
                    inside = (w >= 0).all()
                    d2 = min(_segment_sq_dist(p, xy[0], xy[1]), _segment_sq_dist(p, xy[1], xy[2]),
                             _segment_sq_dist(p, xy[2], xy[0]))  # fmt: skip
                    if not inside and not d2 < blur_radius:
                        continue
                    if not inside:
                        w = np.clip(w, 0, None)
                        w = w / w.sum()
                    if perspective_correct:
                        w = (w / z) / (w / z).sum()
                    found.append((float(w @ z), f, w, -d2 if inside else d2))
                found.sort(key=lambda t: (t[0], t[1]))
                for slot, (d, f, w, sd) in enumerate(found[:k]):
                    face_index[b, i, j, slot] = f
                    bary_out[b, i, j, slot] = w
                    depth_out[b, i, j, slot] = d
                    dist_out[b, i, j, slot] = sd
    return face_index, bary_out, depth_out, dist_out


def random_triangles(batch, num_faces, seed, z_range=(1.0, 4.0), behind=0):
    """Separate random triangles (no shared vertices, so no depth ties), some partly off-screen."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, num_faces, 1, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2
    xy = centres + (torch.rand(batch, num_faces, 3, 2, generator=g, dtype=torch.float64) - 0.5) * 1.8
    z = z_range[0] + torch.rand(batch, num_faces, 3, 1, generator=g, dtype=torch.float64) * (z_range[1] - z_range[0])
    verts = torch.cat([xy, z], dim=-1)
    if behind:
        verts[:, :behind, 0, 2] = -0.5  # one vertex behind the camera: the face must be skipped
    faces = torch.arange(num_faces * 3).reshape(num_faces, 3)
    return verts.reshape(batch, num_faces * 3, 3), faces


@pytest.mark.parametrize("perspective_correct", [True, False])
def test_hard_raster_matches_brute_force(perspective_correct):
    verts, faces = random_triangles(2, 14, seed=1, behind=2)
    height, width, k = 16, 12, 3
    fr = rasterize(verts, faces, height, width, faces_per_pixel=k, perspective_correct=perspective_correct,
                   bin_size=4)  # fmt: skip
    ref_face, ref_bary, ref_depth, ref_dist = reference_rasterize(verts, faces, height, width, k, perspective_correct)
    assert (ref_face >= 0).sum() > 100 and (ref_face[..., 1] >= 0).sum() > 20  # the case is not trivial
    np.testing.assert_array_equal(fr.face_index.numpy(), ref_face)
    np.testing.assert_allclose(fr.bary.numpy(), ref_bary, atol=1e-9)
    np.testing.assert_allclose(fr.depth.numpy(), ref_depth, atol=1e-9)
    np.testing.assert_allclose(fr.dist.numpy(), ref_dist, atol=1e-9)
    assert not bool(((fr.face_index >= 0) & (fr.face_index < 2)).any())  # faces 0, 1 have a vertex behind


def test_blurred_raster_matches_brute_force_on_non_square_image():
    verts, faces = random_triangles(1, 8, seed=2)
    height, width, k, blur = 10, 14, 4, 0.02
    fr = rasterize(verts, faces, height, width, faces_per_pixel=k, blur_radius=blur, bin_size=3)
    ref_face, ref_bary, ref_depth, ref_dist = reference_rasterize(verts, faces, height, width, k, True, blur)
    assert (ref_dist > 0).sum() > 20  # some pixels are covered only through the blur radius
    np.testing.assert_array_equal(fr.face_index.numpy(), ref_face)
    np.testing.assert_allclose(fr.bary.numpy(), ref_bary, atol=1e-9)
    np.testing.assert_allclose(fr.depth.numpy(), ref_depth, atol=1e-9)
    np.testing.assert_allclose(fr.dist.numpy(), ref_dist, atol=1e-9)


@pytest.mark.parametrize("blur", [0.0, 0.004])
def test_subpixel_triangles_match_brute_force(blur):
    """Triangles smaller than a pixel (a dense mesh in a small image): most cover no pixel centre and are skipped
    before any pixel is tested; those that do cover one, or come within the blur radius of one, must all be kept."""
    g = torch.Generator().manual_seed(5)
    n, height, width = 400, 12, 10
    centres = torch.rand(n, 1, 2, generator=g, dtype=torch.float64) * 2.2 - 1.1
    sizes = 0.02 + torch.rand(n, 1, 1, generator=g, dtype=torch.float64) * 0.18  # 0.1 to 1 px
    xy = centres + (torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 0.5) * sizes
    z = 1.0 + torch.rand(n, 3, 1, generator=g, dtype=torch.float64)
    verts, faces = torch.cat([xy, z], -1).reshape(1, n * 3, 3), torch.arange(n * 3).reshape(n, 3)
    fr = rasterize(verts, faces, height, width, faces_per_pixel=2, blur_radius=blur)
    ref_face, _, _, ref_dist = reference_rasterize(verts, faces, height, width, 2, True, blur)
    assert (ref_face >= 0).sum() >= 5  # some pixel centres are covered (or, blurred, reached)
    np.testing.assert_array_equal(fr.face_index.numpy(), ref_face)
    np.testing.assert_allclose(fr.dist.numpy(), ref_dist, atol=1e-9)

    # A tiny triangle with a vertex exactly on a pixel centre covers that pixel (no rounding at its box's edge).
    i, j = 4, 7  # pixel centre in NDC: ((2 j + 1) / W - 1, 1 - (2 i + 1) / H)
    corner = torch.tensor([(2 * j + 1) / width - 1, 1 - (2 * i + 1) / height], dtype=torch.float64)
    tri = torch.stack([corner, corner + torch.tensor([0.03, 0.0]), corner + torch.tensor([0.0, 0.03])])
    exact = torch.cat([tri, torch.full((3, 1), 2.0, dtype=torch.float64)], -1)[None]
    hit = rasterize(exact, torch.tensor([[0, 1, 2]]), height, width).face_index[0, ..., 0]
    assert hit[i, j] == 0 and int((hit >= 0).sum()) == 1


@pytest.mark.parametrize("bin_size", [None, 2, 0])
def test_wide_blur_reaches_every_pixel_within_the_radius_of_a_small_triangle(bin_size):
    """A face counts for every pixel whose squared distance to it is below ``blur_radius``, however far that reaches
    beyond the face's own box (here ~5 px around a ~2 px triangle): the tiles a face is binned to must be grown by
    the blur radius in pixels, or pixels of other tiles lose it. Checked against the brute-force loop."""
    verts = torch.tensor([[[-0.05, -0.04, 2.0], [0.08, -0.04, 2.0], [0.0, 0.07, 2.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    height, width, blur = 24, 20, 0.25  # sqrt(0.25) = 0.5 isotropic units = 5 px on the 20 px short side
    fr = rasterize(verts, faces, height, width, blur_radius=blur, bin_size=bin_size)
    ref_face, _, _, ref_dist = reference_rasterize(verts, faces, height, width, 1, True, blur)
    assert (ref_face >= 0).sum() > 60  # a disc of radius ~5 px, not just the triangle's few pixels
    np.testing.assert_array_equal(fr.face_index.numpy(), ref_face)
    np.testing.assert_allclose(fr.dist.numpy(), ref_dist, atol=1e-9)


@pytest.mark.parametrize("blur", [0.0, 1e-3])
def test_binning_does_not_change_the_result(blur):
    # A closed mesh with shared vertices (ties resolved by face index) at several tile sizes, float32.
    g = torch.Generator().manual_seed(3)
    verts = torch.randn(2, 40, 3, generator=g) * 0.5
    verts[..., 2] += 3.0
    faces = torch.randint(0, 40, (120, 3), generator=g)
    reference = rasterize(verts, faces, 40, 56, faces_per_pixel=6, blur_radius=blur, bin_size=0)
    assert (reference.face_index >= 0).float().mean() > 0.2
    for bin_size in (1, 5, 8, None):
        fr = rasterize(verts, faces, 40, 56, faces_per_pixel=6, blur_radius=blur, bin_size=bin_size)
        assert torch.equal(fr.face_index, reference.face_index)
        torch.testing.assert_close(fr.bary, reference.bary, rtol=0, atol=0)
        torch.testing.assert_close(fr.dist, reference.dist, rtol=0, atol=0)


def test_camera_projection_depth_and_perspective_correct_bary():
    # A tilted plane seen by a perspective camera: the depth at each covered pixel equals the ray-plane intersection.
    cams = PerspectiveCameras(look_at(torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)), 12, 16, fov_y_deg=60.0)
    verts = torch.tensor([[-4, -4, -1.75], [4, -4, 1.25], [4, 4, 1.25], [-4, 4, -1.75]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fr = rasterize(cams.transform_points_ndc(verts), faces, 12, 16)
    assert bool((fr.face_index >= 0).all())
    origins, directions = cams.get_rays(normalize=False)  # unit depth directions
    normal = torch.tensor([-1.5, 0.0, 4.0], dtype=torch.float64)  # plane through the quad: -1.5 x + 4 z = -1
    t = (-1.0 - origins[0] @ normal) / (directions[0] @ normal)
    torch.testing.assert_close(fr.depth[0, ..., 0], t)
    # Perspective-correct barycentrics reproduce the 3-D hit point.
    hit = (fr.bary[0, ..., 0, :, None] * verts[faces[fr.face_index[0, ..., 0]]]).sum(-2)
    torch.testing.assert_close(hit, origins[0] + t[..., None] * directions[0])


def test_orthographic_camera_and_backface_culling():
    cams = OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 5.0])), 8, 8, scale=1.0)
    front = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])  # counter-clockwise seen from +Z
    faces = torch.tensor([[0, 1, 2], [0, 2, 1]])
    ndc = cams.transform_points_ndc(front)
    both = rasterize(ndc, faces, 8, 8, faces_per_pixel=2, perspective_correct=False)
    culled = rasterize(ndc, faces, 8, 8, faces_per_pixel=2, perspective_correct=False, cull_backfaces=True)
    covered = both.face_index[..., 0] >= 0
    assert covered.sum() > 5 and bool((both.face_index[covered] >= 0).all())
    assert bool((culled.face_index[..., 0][covered] == 0).all()) and bool((culled.face_index[..., 1] == -1).all())
    torch.testing.assert_close(both.depth[covered], torch.full_like(both.depth[covered], 5.0))


def test_degenerate_faces_and_vertices_behind_give_no_nan():
    verts = torch.tensor(
        [[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0], [0.1, 0.1, 1.0], [0.1, 0.1, 1.0], [0.2, 0.3, -1.0]]],
        requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 0], [0, 3, 5], [3, 3, 3]])  # ok, zero area, vertex behind, a point
    fr = rasterize(verts, faces, 9, 9, faces_per_pixel=4, blur_radius=0.05)
    assert set(fr.face_index.unique().tolist()) == {-1, 0}
    soft_silhouette(fr, 0.01).sum().backward()
    assert bool(torch.isfinite(verts.grad).all()) and verts.grad[0, :3].abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------------
# Soft silhouette (SPEC §4) on hand-built triangles
# --------------------------------------------------------------------------------------------------------------------
#: Pixel centres (x and y) of the 4 x 4 hand-built images below.
_CENTRES = [-0.75, -0.25, 0.25, 0.75]


def _two_triangles(sigma: float, requires_grad: bool = False) -> tuple[torch.Tensor, Fragments, float]:
    """4 x 4 image of two triangles: A is huge with its right edge on x = -0.3 (other edges far away), B has its
    lower edge on y = 0.1. The squared distance of pixel centres to A is (x + 0.3)^2 (negative inside), to B
    (y - 0.1)^2. Returns the vertices, the fragments and the blur distance of ``sigma``."""
    verts = torch.tensor(
        [[[-0.3, -9.0, 2.0], [-0.3, 9.0, 2.0], [-9.0, 0.0, 2.0], [-9.0, 0.1, 3.0], [9.0, 0.1, 3.0], [0.0, 9.0, 3.0]]],
        dtype=torch.float64, requires_grad=requires_grad,
    )  # fmt: skip
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(verts, faces, 4, 4, faces_per_pixel=2, blur_radius=blur_radius_for_sigma(sigma))
    return verts, fr, math.log(1 / 1e-4 - 1) * sigma


def test_soft_silhouette_formula_on_hand_built_triangles():
    sigma = 0.05
    _, fr, blur = _two_triangles(sigma)
    centres = _CENTRES
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i, y in enumerate(reversed(centres)):  # row 0 is the top (y = 0.75)
        for j, x in enumerate(centres):
            dist_a = (x + 0.3) ** 2 if x > -0.3 else -((x + 0.3) ** 2)  # inside A where x < -0.3
            dist_b = (y - 0.1) ** 2 if y < 0.1 else -((y - 0.1) ** 2)  # inside B where y > 0.1
            miss = 1.0
            for d in (dist_a, dist_b):
                if d < blur:
                    miss *= 1 - 1 / (1 + math.exp(d / sigma))
            expected[i, j] = 1 - miss
    torch.testing.assert_close(soft_silhouette(fr, sigma)[0], expected, rtol=0, atol=1e-5)


def test_sharp_silhouette_on_hand_built_triangles():
    # Covered pixels (inside A or B) are exactly 1, the others the larger of the two faces' sigmoid(-d / sigma) (not
    # their probabilistic sum); covered pixels keep that maximum's gradient.
    sigma = 0.05
    verts, fr, blur = _two_triangles(sigma, requires_grad=True)
    centres = _CENTRES
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i, y in enumerate(reversed(centres)):
        for j, x in enumerate(centres):
            if x < -0.3 or y > 0.1:
                expected[i, j] = 1.0
                continue
            dists = [d for d in ((x + 0.3) ** 2, (y - 0.1) ** 2) if d < blur]
            expected[i, j] = max((1 / (1 + math.exp(d / sigma)) for d in dists), default=0.0)
    alpha = sharp_silhouette(fr, sigma)[0]
    torch.testing.assert_close(alpha.detach(), expected, rtol=0, atol=1e-6)
    alpha[0, 0].backward()  # covered (inside B), yet differentiable through the soft maximum
    assert verts.grad is not None and bool(verts.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="sigma"):
        sharp_silhouette(fr, 0.0)


def test_sharp_silhouette_is_one_on_interior_edges_through_pixel_centres():
    """A square of four triangles whose shared edges x = -0.25 and y = 0.25 run through pixel centres of a 4 x 4
    image: the pixel centres on them are covered (closed triangles, as the hard coverage says), so 1."""
    corners = [[-1.0, -1.0], [-0.25, -1.0], [1.0, -1.0], [1.0, 0.25], [1.0, 1.0], [-0.25, 1.0], [-1.0, 1.0]]
    verts = torch.tensor([[*xy, 1.0] for xy in [*corners, [-0.25, 0.25]]], dtype=torch.float64)[None]
    faces = torch.tensor([[0, 1, 7], [1, 2, 3], [1, 3, 7], [7, 3, 4], [7, 4, 5], [0, 7, 6], [7, 5, 6]])
    fragments = rasterize(verts, faces, 4, 4, faces_per_pixel=4, blur_radius=blur_radius_for_sigma(1e-4))
    assert bool(fragments.covers.any(-1).all())
    torch.testing.assert_close(sharp_silhouette(fragments, 1e-4), torch.ones(1, 4, 4, dtype=torch.float64))


def test_blur_radius_for_sigma():
    assert blur_radius_for_sigma(1e-4) == pytest.approx(math.log(9999.0) * 1e-4)
    with pytest.raises(ValueError, match="sigma"):
        blur_radius_for_sigma(0.0)


# --------------------------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------------------------
def test_gradcheck_soft_silhouette_wrt_vertices():
    verts = torch.tensor(
        [[[-0.6, -0.5, 2.0], [0.55, -0.4, 2.5], [0.1, 0.6, 3.0], [-0.2, -0.1, 2.2], [0.7, 0.3, 2.4], [0.0, 0.8, 2.6]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    sigma = 0.02

    def fn(v):
        return soft_silhouette(rasterize(v, faces, 7, 6, faces_per_pixel=4, blur_radius=blur_radius_for_sigma(sigma)),
                               sigma)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (verts,), eps=1e-6, atol=1e-5)


def test_gradcheck_soft_silhouette_wrt_camera_position_and_focal():
    verts = torch.tensor([[-0.6, -0.5, 0.0], [0.55, -0.4, 0.2], [0.1, 0.6, -0.3]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    sigma = 0.02

    def fn(eye, focal):
        cams = PerspectiveCameras(look_at(eye), 6, 7, focal=focal)
        fr = rasterize(cams.transform_points_ndc(verts), faces, 6, 7, faces_per_pixel=2,
                       blur_radius=blur_radius_for_sigma(sigma))  # fmt: skip
        return soft_silhouette(fr, sigma)

    eye = torch.tensor([0.3, 0.2, 3.0], dtype=torch.float64, requires_grad=True)
    focal = torch.tensor([[6.0, 6.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (eye, focal), eps=1e-6, atol=1e-5)


def test_hard_raster_gradients_reach_vertices_through_bary_and_depth():
    verts = torch.tensor([[[-0.5, -0.5, 2.0], [0.5, -0.5, 3.0], [0.0, 0.5, 4.0]]], requires_grad=True)
    fr = rasterize(verts, torch.tensor([[0, 1, 2]]), 8, 8)
    (fr.depth.clamp_min(0).sum() + fr.bary[..., 0].sum()).backward()
    assert verts.grad.abs().sum() > 0 and bool(torch.isfinite(verts.grad).all())


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verts", "faces", "size", "kwargs", "match"),
    [
        (torch.zeros(1, 0, 3), torch.zeros(0, 3, dtype=torch.long), (4, 4), {}, "no vertices"),
        (torch.rand(1, 3, 3), torch.zeros(0, 3, dtype=torch.long), (4, 4), {}, "empty"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 3]]), (4, 4), {}, "out of range"),
        (torch.rand(1, 3, 3), torch.tensor([[0, -1, 2]]), (4, 4), {}, "out of range"),
        (torch.tensor([[[0.0, 0, 1], [1, 0, 1], [0, float("nan"), 1]]]), torch.tensor([[0, 1, 2]]), (4, 4), {}, "NaN"),
        (torch.rand(3, 3), torch.tensor([[0, 1, 2]]), (4, 4), {}, "verts_ndc must have shape"),
        (torch.rand(1, 3, 2), torch.tensor([[0, 1, 2]]), (4, 4), {}, "verts_ndc must have shape"),
        (torch.rand(1, 3, 3), torch.tensor([0, 1, 2]), (4, 4), {}, "faces must have shape"),
        (torch.rand(1, 3, 3), torch.tensor([[0.0, 1, 2]]), (4, 4), {}, "faces must be an integer"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (4, 100000), {}, "width"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (0, 4), {}, "height"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (4, 4), {"faces_per_pixel": 0}, "faces_per_pixel"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (4, 4), {"blur_radius": -1.0}, "blur_radius"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (4, 4), {"bin_size": -2}, "bin_size"),
        (torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), (16000, 16000), {"faces_per_pixel": 20}, "too large"),
    ],
)
def test_rasterize_rejects_bad_input(verts, faces, size, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rasterize(verts, faces, *size, **kwargs)


def test_soft_silhouette_rejects_bad_sigma():
    fr = rasterize(torch.rand(1, 3, 3) + 1, torch.tensor([[0, 1, 2]]), 4, 4)
    with pytest.raises(ValueError, match="sigma"):
        soft_silhouette(fr, -1.0)
