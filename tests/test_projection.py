"""Input-image colours projected onto a mesh, and the colour transfer (core.projection).

References are independent of the module: a hand-written pinhole projection (focal from the field of view, camera on
+Z looking at the origin, +X right and +Y up in the image) and closed-form visibility of flat squares.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.mesh import Mesh
from monorecon.core.projection import (
    ImageProjection,
    fit_colour_transfer,
    project_image_colours,
    project_image_texture,
)

SIZE, DISTANCE, FOV = 64, 2.0, 40.0


def camera() -> PerspectiveCameras:
    return PerspectiveCameras(orbit_c2w(0.0, 0.0, DISTANCE), SIZE, SIZE, fov_y_deg=FOV)


def square(half: float, z: float, n: int = 9, normal_z: float = 1.0) -> Mesh:
    """An n x n vertex grid over [-half, half]^2 at depth z, facing +Z (or -Z with ``normal_z`` -1)."""
    xs = torch.linspace(-half, half, n)
    y, x = torch.meshgrid(xs, xs, indexing="ij")
    verts = torch.stack([x.flatten(), y.flatten(), torch.full((n * n,), z)], dim=-1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, d], [a, d, c]] if normal_z > 0 else [[a, d, b], [a, c, d]]
    return Mesh(verts, torch.tensor(faces), vertex_colors=torch.full((n * n, 3), 0.5))


def merged(*meshes: Mesh) -> Mesh:
    offsets = np.cumsum([0] + [m.verts.shape[0] for m in meshes[:-1]])
    return Mesh(
        torch.cat([m.verts for m in meshes]),
        torch.cat([m.faces + int(o) for m, o in zip(meshes, offsets, strict=True)]),
        vertex_colors=torch.cat([m.vertex_colors for m in meshes]),
    )


def pinhole(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 2) pixel coordinates (u right, v down) of the camera above, by hand."""
    focal = SIZE / 2 / math.tan(math.radians(FOV / 2))
    depth = DISTANCE - points[:, 2]
    return torch.stack([SIZE / 2 + focal * points[:, 0] / depth, SIZE / 2 - focal * points[:, 1] / depth], dim=-1)


def gradient_image() -> torch.Tensor:
    """(SIZE, SIZE, 3): red = u / SIZE and green = v / SIZE at pixel centres (bilinear lookups are exact), blue 0.3."""
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    return torch.stack([u / SIZE, v / SIZE, torch.full_like(u, 0.3)], dim=-1)


def test_seen_points_get_the_image_colour_at_their_pinhole_projection():
    mesh = square(0.5, 0.0)
    weight, colours = ImageProjection(mesh, camera(), gradient_image()).sample(mesh.verts)
    uv = pinhole(mesh.verts)
    torch.testing.assert_close(weight, torch.ones_like(weight))
    torch.testing.assert_close(colours[:, 0], uv[:, 0] / SIZE, atol=1e-5, rtol=0)
    torch.testing.assert_close(colours[:, 1], uv[:, 1] / SIZE, atol=1e-5, rtol=0)


def test_orthographic_camera_sees_the_plane_at_x_over_scale():
    """A parallel projection: u = (x / scale + 1) / 2 * SIZE whatever the depth, and a tilted plane's facing cosine
    is its normal's z component everywhere (not the direction to a camera position)."""
    from monorecon.core.cameras import OrthographicCameras

    ortho = OrthographicCameras(orbit_c2w(0.0, 0.0, DISTANCE), SIZE, SIZE, scale=0.8)
    mesh = square(0.5, 0.0)
    points = square(0.45, 0.0).verts  # on the square, off its outline (whose own pixel may lie just outside it)
    weight, colours = ImageProjection(mesh, ortho, gradient_image()).sample(points)
    torch.testing.assert_close(weight, torch.ones_like(weight))
    torch.testing.assert_close(colours[:, 0], (points[:, 0] / 0.8 + 1) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(colours[:, 1], (1 - points[:, 1] / 0.8) / 2, atol=1e-5, rtol=0)
    tilt = math.radians(75.0)  # cosine 0.259 -> weight (0.259 - 0.1) / 0.3 at every point, even off-axis
    rotation = torch.tensor(
        [[math.cos(tilt), 0.0, math.sin(tilt)], [0.0, 1.0, 0.0], [-math.sin(tilt), 0.0, math.cos(tilt)]]
    )
    tilted = Mesh(mesh.verts @ rotation.T, mesh.faces, vertex_colors=mesh.vertex_colors)
    points = torch.tensor([[0.0, 0.3, 0.0], [0.1, -0.3, -0.1 * math.tan(tilt)]])  # on the tilted plane
    weight, _ = ImageProjection(tilted, ortho, gradient_image()).sample(points)
    torch.testing.assert_close(weight, torch.full((2,), (math.cos(tilt) - 0.1) / 0.3), atol=0.01, rtol=0)


def test_hidden_points_behind_the_seen_surface_get_no_weight():
    front, back = square(0.2, 0.3, n=5), square(0.6, -0.3, n=13)
    mesh = merged(front, back)
    weight, _ = ImageProjection(mesh, camera(), gradient_image()).sample(back.verts)
    # a back vertex is hidden when its line of sight to the camera crosses the front square (|x|, |y| < 0.2 at z 0.3)
    scale = (DISTANCE - 0.3) / (DISTANCE + 0.3)
    hidden = (back.verts[:, :2].abs() * scale < 0.2 - 0.01).all(-1)
    clear = (back.verts[:, :2].abs() * scale > 0.2 + 0.01).any(-1)
    assert hidden.sum() >= 9 and clear.sum() >= 100
    assert (weight[hidden] == 0).all()
    torch.testing.assert_close(weight[clear], torch.ones(int(clear.sum())))


def test_weight_ramps_with_the_facing_cosine_and_is_zero_from_behind():
    image = gradient_image()
    for tilt_deg, expected in ((0.0, 1.0), (75.0, (math.cos(math.radians(75.0)) - 0.1) / 0.3), (88.0, 0.0)):
        tilt = math.radians(tilt_deg)
        rotation = torch.tensor(
            [[math.cos(tilt), 0.0, math.sin(tilt)], [0.0, 1.0, 0.0], [-math.sin(tilt), 0.0, math.cos(tilt)]]
        )
        mesh = square(0.3, 0.0, n=3)
        mesh = Mesh(mesh.verts @ rotation.T, mesh.faces, vertex_colors=mesh.vertex_colors)
        centre = torch.zeros(1, 3)  # on the surface, seen along the optical axis: cosine = cos(tilt)
        weight, _ = ImageProjection(mesh, camera(), image).sample(centre)
        assert weight.item() == pytest.approx(expected, abs=0.02), tilt_deg
    away = square(0.3, 0.0, n=3, normal_z=-1.0)
    weight, _ = ImageProjection(away, camera(), image).sample(torch.zeros(1, 3))
    assert weight.item() == 0.0


def test_alpha_scales_the_weight_and_points_outside_the_image_get_none():
    mesh = square(0.5, 0.0)
    alpha = torch.ones(SIZE, SIZE)
    alpha[:, : SIZE // 2] = 0.0  # left half is background
    projection = ImageProjection(mesh, camera(), gradient_image(), alpha)
    weight, _ = projection.sample(mesh.verts)
    uv = pinhole(mesh.verts)
    assert (weight[uv[:, 0] < SIZE / 2 - 1] == 0).all()
    assert (weight[uv[:, 0] > SIZE / 2 + 1] == 1).all()
    far = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # outside the view; behind the camera
    assert (projection.sample(far)[0] == 0).all()


def test_colour_transfer_recovers_a_known_affine_map_and_stays_near_identity_on_little_data():
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(500, 3, generator=generator) * 0.6 + 0.2
    matrix = torch.tensor([[1.2, 0.1, 0.0], [0.0, 0.9, -0.1], [0.05, 0.0, 1.1]])
    offset = torch.tensor([0.05, -0.02, 0.03])
    target = source @ matrix + offset
    transfer = fit_colour_transfer(source, target, torch.ones(500), ridge=0.0)
    torch.testing.assert_close(transfer(source), target.clamp(0, 1), atol=1e-5, rtol=0)
    # too little weight: identity
    few = fit_colour_transfer(source, target, torch.full((500,), 0.01))
    torch.testing.assert_close(few(source), source)
    # one colour seen: the ridge keeps the map near the identity for other colours
    grey = torch.full((200, 3), 0.5)
    shifted = fit_colour_transfer(grey, grey + 0.1, torch.ones(200))
    assert torch.allclose(shifted(grey), grey + 0.1, atol=0.02)
    other = torch.tensor([[0.9, 0.1, 0.2]])
    assert (shifted(other) - other).abs().max() < 0.15


def test_project_image_colours_blends_vertices_and_texels_alike():
    front, back = square(0.2, 0.3, n=5), square(0.6, -0.3, n=13)
    mesh = merged(front, back)
    image = gradient_image()
    coloured, recolour = project_image_colours(mesh, camera(), image, transfer=False)
    weight, seen = ImageProjection(mesh, camera(), image).sample(mesh.verts)
    expected = torch.lerp(mesh.vertex_colors, seen, weight[:, None])
    torch.testing.assert_close(coloured.vertex_colors, expected)
    torch.testing.assert_close(recolour(mesh.verts, mesh.vertex_colors), expected)
    hidden = weight == 0
    assert hidden.any() and (coloured.vertex_colors[hidden] == 0.5).all()  # unseen: the model's colour, untouched
    # with the transfer, unseen vertices move towards the colours seen
    transferred, _ = project_image_colours(mesh, camera(), image)
    assert not torch.allclose(transferred.vertex_colors[hidden], mesh.vertex_colors[hidden])


def test_texture_texels_take_the_image_colour_at_their_surface_points():
    """A square facing the camera whose UVs span the texture: texel (i, j) lies at u = (j + 0.5) / T, v = 1 - (i + 0.5)
    / T, i.e. x = u - 0.5, y = v - 0.5 on the square, and takes the image colour at that point's pinhole projection."""
    plain = square(0.5, 0.0)
    uvs = plain.verts[:, :2] + 0.5
    size = 16
    mesh = Mesh(plain.verts, plain.faces, uvs=uvs, texture=torch.full((size, size, 3), 0.5))
    coloured = project_image_texture(mesh, camera(), gradient_image(), transfer=False)
    centres = (torch.arange(size) + 0.5) / size
    v, u = torch.meshgrid(1.0 - centres, centres, indexing="ij")
    points = torch.stack([u - 0.5, v - 0.5, torch.zeros_like(u)], dim=-1).reshape(-1, 3)
    expected = pinhole(points) / SIZE
    torch.testing.assert_close(coloured.texture[..., 0].reshape(-1), expected[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(coloured.texture[..., 1].reshape(-1), expected[:, 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(coloured.verts, mesh.verts)
    torch.testing.assert_close(coloured.uvs, mesh.uvs)
    assert (mesh.texture == 0.5).all()  # the input mesh is left as it was
    # behind an occluder nothing is seen: the texture keeps its colour (no transfer) or is mapped (transfer)
    hidden = merged(square(0.7, 0.3, n=3), plain)
    hidden = Mesh(hidden.verts, hidden.faces, uvs=torch.cat([torch.full((9, 2), 0.01), uvs]),
                  texture=torch.full((size, size, 3), 0.5))  # fmt: skip
    kept = project_image_texture(hidden, camera(), gradient_image(), transfer=False)
    assert (kept.texture == 0.5).all()  # every texel is the hidden square's (the occluder's UVs collapse to a point)
    with pytest.raises(ValueError, match="square UV texture"):
        project_image_texture(plain, camera(), gradient_image())


def test_texture_transfer_maps_uncovered_texels_as_the_unseen_covered_ones():
    """With ``transfer``, one colour map is applied to the whole texture, texels outside the UV atlas too (texture
    filtering and mip-maps read them): an uncovered texel must come out as a covered but hidden texel of the same
    colour (weight 0: the mapped colour), not keep the model's colour."""
    size = 16
    seen = square(0.3, 0.3, n=3)  # in front, fully seen; UVs in the lower-left quarter of the atlas
    hidden = square(0.2, -0.3, n=3)  # behind it and smaller: fully occluded; UVs in the upper-right quarter
    mesh = merged(seen, hidden)
    uvs = torch.cat([(seen.verts[:, :2] + 0.3) / 0.6 * 0.45 + 0.02, (hidden.verts[:, :2] + 0.2) / 0.4 * 0.4 + 0.55])
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    texture = torch.stack([cols / size, rows / size, torch.full((size, size), 0.5)], dim=-1)
    texture[:, size // 2 :] = 0.4  # the right half (hidden square's texels and uncovered ones) one grey
    mesh = Mesh(mesh.verts, mesh.faces, uvs=uvs, texture=texture)
    out = project_image_texture(mesh, camera(), gradient_image()).texture
    hidden_texel = out[2, 12]  # u = 12.5 / 16, v = 1 - 2.5 / 16: inside the hidden square's chart
    uncovered = out[10:15, 10:15].reshape(-1, 3)  # u, v in (0.6, 0.95) x (0.06, 0.38): no chart there
    assert not torch.allclose(hidden_texel, torch.full((3,), 0.4), atol=1e-3)  # the transfer moved the grey
    torch.testing.assert_close(uncovered, hidden_texel.expand_as(uncovered))


def test_bad_inputs_are_refused():
    mesh = square(0.5, 0.0)
    with pytest.raises(ValueError, match="vertex colours"):
        project_image_colours(Mesh(mesh.verts, mesh.faces), camera(), gradient_image())
    bad = gradient_image()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image"):
        ImageProjection(mesh, camera(), bad)
    with pytest.raises(ValueError, match="image values"):
        ImageProjection(mesh, camera(), gradient_image() * 2)
    with pytest.raises(ValueError, match="alpha"):
        ImageProjection(mesh, camera(), gradient_image(), torch.ones(SIZE, SIZE + 1))
    with pytest.raises(ValueError, match="one camera"):
        two = PerspectiveCameras(orbit_c2w(torch.tensor([0.0, 90.0]), 0.0, DISTANCE), SIZE, SIZE, fov_y_deg=FOV)
        ImageProjection(mesh, two, gradient_image())
    with pytest.raises(ValueError, match="facing"):
        ImageProjection(mesh, camera(), gradient_image(), facing=(0.5, 0.2))
    with pytest.raises(ValueError, match="depth_tolerance"):
        ImageProjection(mesh, camera(), gradient_image(), depth_tolerance=0.0)
    colours = torch.rand(10, 3)
    with pytest.raises(ValueError, match="target"):
        fit_colour_transfer(colours, torch.rand(9, 3), torch.ones(10))
    nan_colours = colours.clone()
    nan_colours[3, 1] = float("nan")
    with pytest.raises(ValueError, match="source"):
        fit_colour_transfer(nan_colours, colours, torch.ones(10))


# --------------------------------------------------------------------------------------------------------------------
# Visibility, camera size, colour transfer: closed forms and an independent least-squares solution
# --------------------------------------------------------------------------------------------------------------------
def test_depth_tolerance_decides_how_far_behind_the_surface_a_point_is_still_seen():
    """The plane z = 0 seen from z = 2: its rendered view depth is 2 on every pixel, and a point at z = -d lies d
    behind it (view depth 2 + d), so it is seen (weight 1, facing the camera) for d below the tolerance (0.02 by
    default) and hidden beyond it."""
    mesh = square(0.5, 0.0)
    points = torch.tensor([[0.1, -0.1, -0.015], [-0.1, 0.05, -0.025], [0.0, 0.2, -0.04], [0.05, 0.1, -0.06]])
    weight, _ = ImageProjection(mesh, camera(), gradient_image()).sample(points)
    torch.testing.assert_close(weight, torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    weight, _ = ImageProjection(mesh, camera(), gradient_image(), depth_tolerance=0.05).sample(points)
    torch.testing.assert_close(weight, torch.tensor([1.0, 1.0, 1.0, 0.0]), atol=1e-3, rtol=0)


def test_points_behind_a_parallel_camera_are_not_seen():
    """A parallel projection maps a point behind the camera (z > 2) onto the same pixel as the surface in front of
    it, facing the camera's axis: it still is not in the photo."""
    from monorecon.core.cameras import OrthographicCameras

    ortho = OrthographicCameras(orbit_c2w(0.0, 0.0, DISTANCE), SIZE, SIZE, scale=0.8)
    projection = ImageProjection(square(0.5, 0.0), ortho, gradient_image())
    weight, _ = projection.sample(torch.tensor([[0.1, 0.1, 0.0], [0.1, 0.1, 2.5], [-0.2, 0.1, 4.0]]))
    assert weight.tolist() == [1.0, 0.0, 0.0]


def test_camera_of_another_image_size_is_resized_to_the_image():
    """A camera built for 2 * SIZE pixels and a SIZE-pixel photo: the camera is resized (same rays), so a point takes
    the photo's colour at its pinhole projection in the photo's own pixels."""
    big = PerspectiveCameras(orbit_c2w(0.0, 0.0, DISTANCE), 2 * SIZE, 2 * SIZE, fov_y_deg=FOV)
    mesh = square(0.5, 0.0)
    points = square(0.4, 0.0, n=5).verts
    weight, colours = ImageProjection(mesh, big, gradient_image()).sample(points)
    uv = pinhole(points)
    torch.testing.assert_close(weight, torch.ones_like(weight))
    torch.testing.assert_close(colours[:, :2], uv / SIZE, atol=1e-5, rtol=0)


def _ridge_reference(source, target, weight, ridge):
    """min sum_i w_i |[s_i, 1] X - t_i|^2 + ridge * sum(w) * |X - [I; 0]|^2, as one stacked least-squares problem."""
    source, target, weight = (np.asarray(a, dtype=np.float64) for a in (source, target, weight))
    design = np.concatenate([source, np.ones((len(source), 1))], axis=1)
    penalty = math.sqrt(ridge * weight.sum())
    rows = np.concatenate([np.sqrt(weight)[:, None] * design, penalty * np.eye(4)])
    rhs = np.concatenate([np.sqrt(weight)[:, None] * target, penalty * np.vstack([np.eye(3), np.zeros((1, 3))])])
    solution = np.linalg.lstsq(rows, rhs, rcond=None)[0]
    return lambda colours: np.clip(np.asarray(colours, dtype=np.float64) @ solution[:3] + solution[3], 0.0, 1.0)


def test_colour_transfer_is_the_weighted_ridge_solution():
    """The fit solves the documented objective (weights, and a ridge ``ridge * sum(weight)`` towards the identity,
    0.05 by default), checked against a stacked least-squares solution; a total weight of exactly ``min_weight`` is
    not below it and is fitted."""
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(60, 3, generator=generator)
    target = (source.flip(-1) * 0.5 + 0.2 + 0.1 * torch.rand(60, 3, generator=generator)).clamp(0, 1)
    weight = 0.5 + torch.rand(60, generator=generator)  # total about 60: above min_weight
    probe = torch.rand(40, 3, generator=generator)
    for kwargs in ({}, {"ridge": 0.3}, {"ridge": 0.01}):
        got = fit_colour_transfer(source, target, weight, **kwargs)(probe)
        expected = _ridge_reference(source, target, weight, kwargs.get("ridge", 0.05))(probe)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    exact = torch.full((60,), 0.5)
    exact[:4] = 1.0  # total weight exactly 32 = min_weight
    got = fit_colour_transfer(source, target, exact)(probe)
    np.testing.assert_allclose(got.numpy(), _ridge_reference(source, target, exact, 0.05)(probe), atol=1e-5)
    assert not torch.allclose(got, probe, atol=0.05)


def test_colour_transfer_is_fitted_on_the_seen_part_only():
    """Model colours that already equal the photo wherever the photo sees them: the best map is the identity, so the
    hidden vertices (behind the front square, with a model colour unlike the photo's there) keep their colours; so
    does every other vertex, and ``recolour`` of the vertices gives the same colours, transfer included."""
    front, back = square(0.2, 0.3, n=5), square(0.6, -0.3, n=13)
    mesh = merged(front, back)
    image = gradient_image()
    uv = pinhole(mesh.verts)
    colours = torch.cat([uv / SIZE, torch.full((len(uv), 1), 0.3)], dim=-1)  # the photo at each vertex's pixel
    scale = (DISTANCE - 0.3) / (DISTANCE + 0.3)
    hidden = torch.cat([torch.zeros(25, dtype=torch.bool), (back.verts[:, :2].abs() * scale < 0.2 - 0.01).all(-1)])
    colours[hidden] = torch.tensor([0.9, 0.1, 0.6])
    mesh = Mesh(mesh.verts, mesh.faces, vertex_colors=colours)
    coloured, recolour = project_image_colours(mesh, camera(), image)
    torch.testing.assert_close(coloured.vertex_colors, colours, atol=1e-4, rtol=0)
    # a model darker than the photo: the transfer brightens the hidden vertices, and recolour does the same
    dark = Mesh(mesh.verts, mesh.faces, vertex_colors=colours * 0.5)
    coloured, recolour = project_image_colours(dark, camera(), image)
    assert float((coloured.vertex_colors[hidden] - dark.vertex_colors[hidden]).min()) > 0.05
    torch.testing.assert_close(recolour(dark.verts, dark.vertex_colors), coloured.vertex_colors, atol=1e-5, rtol=0)


def test_weight_is_proportional_to_a_partial_alpha():
    """The weight is multiplied by the alpha itself (documented), not by a thresholded mask: a constant alpha a gives
    weight a on a surface squarely facing the camera, and 0 for a = 0."""
    mesh = square(0.5, 0.0)
    points = square(0.4, 0.0, n=4).verts
    for level in (0.0, 0.3, 0.7, 1.0):
        alpha = torch.full((SIZE, SIZE), level)
        weight, _ = ImageProjection(mesh, camera(), gradient_image(), alpha).sample(points)
        torch.testing.assert_close(weight, torch.full_like(weight, level), atol=1e-6, rtol=0)


def test_identity_transfer_on_little_data_still_clamps_to_the_unit_range():
    """Below ``min_weight`` the map is the identity, but still clamped to [0, 1] like every fitted map."""
    colours = torch.tensor([[-0.2, 0.5, 1.3], [0.1, 1.5, 0.9]])
    few = fit_colour_transfer(torch.rand(10, 3), torch.rand(10, 3), torch.ones(10))
    torch.testing.assert_close(few(colours), torch.tensor([[0.0, 0.5, 1.0], [0.1, 1.0, 0.9]]))


def test_facing_cosine_uses_the_direction_from_each_point_to_the_camera():
    """A plane through the origin tilted 75 degrees about y (normal n = (sin t, 0, cos t)): at a point p on it the
    cosine between n and the direction to the camera c = (0, 0, 2) is n . c / |c - p| = 2 cos t / |c - p| (n . p = 0),
    which differs along the tilted direction e = (cos t, 0, -sin t) from the cosine at the centre, cos t."""
    tilt = math.radians(75.0)
    rotation = torch.tensor(
        [[math.cos(tilt), 0.0, math.sin(tilt)], [0.0, 1.0, 0.0], [-math.sin(tilt), 0.0, math.cos(tilt)]]
    )
    plain = square(0.6, 0.0, n=3)
    mesh = Mesh(plain.verts @ rotation.T, plain.faces, vertex_colors=plain.vertex_colors)
    along = torch.tensor([math.cos(tilt), 0.0, -math.sin(tilt)])
    points = torch.stack([s * along for s in (-0.3, 0.0, 0.3)])
    cosine = 2.0 * math.cos(tilt) / (torch.tensor([0.0, 0.0, DISTANCE]) - points).norm(dim=-1)
    # on so steep a plane the depth changes by about 0.1 across a pixel: a tolerance above that (the point's pixel
    # is compared with the depth at its centre) keeps every point seen, so the weight is the facing ramp alone
    projection = ImageProjection(mesh, camera(), gradient_image(), depth_tolerance=0.3)
    weight, _ = projection.sample(points)
    torch.testing.assert_close(weight, ((cosine - 0.1) / 0.3).clamp(0, 1), atol=0.01, rtol=0)
    assert float(weight[0] - weight[2]) > 0.2  # 0.67 nearer the camera, 0.42 farther


def test_non_square_image_is_sampled_over_its_whole_height_and_width():
    """A 64-row, 40-column photo and its camera (vertical field of view 40 degrees): points over the whole plane in
    view, near the bottom and right edges too, take the photo's colour at their hand pinhole projection."""
    height, width = 64, 40
    tall = PerspectiveCameras(orbit_c2w(0.0, 0.0, DISTANCE), height, width, fov_y_deg=FOV)
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    image = torch.stack([u / width, v / height, torch.full_like(u, 0.3)], dim=-1)
    focal = height / 2 / math.tan(math.radians(FOV / 2))
    pixels = torch.tensor([[3.5, 60.2], [37.1, 55.0], [20.0, 32.0], [2.2, 4.7], [36.6, 8.3]])  # (u, v) in the photo
    points = torch.stack(
        [
            (pixels[:, 0] - width / 2) * DISTANCE / focal,
            -(pixels[:, 1] - height / 2) * DISTANCE / focal,
            torch.zeros(5),
        ],
        dim=-1,
    )
    weight, colours = ImageProjection(square(1.0, 0.0), tall, image).sample(points)
    torch.testing.assert_close(weight, torch.ones(5))
    torch.testing.assert_close(colours[:, 0], pixels[:, 0] / width, atol=1e-5, rtol=0)
    torch.testing.assert_close(colours[:, 1], pixels[:, 1] / height, atol=1e-5, rtol=0)
