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
