"""Shading, textures, normals, blending and the one-call mesh renderer, against analytic values."""

from __future__ import annotations

import math

import pytest
import torch

from monorecon.core.cameras import OrthographicCameras, PerspectiveCameras, WeakPerspectiveCameras, look_at
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render, render_mesh, render_silhouette
from monorecon.core.raster import blur_radius_for_sigma, rasterize, soft_silhouette
from monorecon.core.shading import (
    DirectionalLights,
    Materials,
    PointLights,
    face_normals,
    hard_rgb_blend,
    interpolate_face_attributes,
    interpolate_vertex_attributes,
    lambert_shading,
    phong_shading,
    repeat_uvs,
    sample_texture,
    softmax_rgb_blend,
    uvs_repeat,
    vertex_normals,
)

DT = torch.float64


def front_camera(size=8, scale=1.0):
    """Orthographic camera on +Z looking at the origin; the view spans [-scale, scale]^2 in world x, y."""
    return OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 5.0], dtype=DT)), size, size, scale=scale)


def square(half=1.0):
    """Two-triangle square in the z = 0 plane, facing +Z (counter-clockwise seen from +Z)."""
    verts = torch.tensor([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]], dtype=DT)
    return verts, torch.tensor([[0, 1, 2], [0, 2, 3]])


def pixel_world_xy(size, scale=1.0):
    """(size, size, 2) world x, y of the pixel centres of :func:`front_camera` (row 0 at the top)."""
    c = (torch.arange(size, dtype=DT) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-c * scale, c * scale, indexing="ij")
    return torch.stack([x, y], dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# Lighting
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle_deg", [0.0, 35.0, 80.0, 120.0])
def test_lambert_square_under_directional_light(angle_deg):
    verts, faces = square()
    a = math.radians(angle_deg)
    lights = DirectionalLights(direction=(0.0, math.sin(a), math.cos(a)), ambient_color=(0.2, 0.1, 0.3),
                               diffuse_color=(0.7, 0.8, 0.6))  # fmt: skip
    albedo = torch.tensor([0.9, 0.5, 0.25], dtype=DT)
    out = render_mesh(verts, faces, front_camera(), vertex_colors=albedo.expand(4, 3), lights=lights, shading="lambert")
    expected = albedo * (
        torch.tensor([0.2, 0.1, 0.3], dtype=DT) + torch.tensor([0.7, 0.8, 0.6]) * max(0.0, math.cos(a))
    )
    torch.testing.assert_close(out["rgb"][0], expected.expand(8, 8, 3))
    torch.testing.assert_close(out["alpha"][0], torch.ones(8, 8, dtype=DT))
    torch.testing.assert_close(out["normals"][0], torch.tensor([0.0, 0, 1], dtype=DT).expand(8, 8, 3))


def test_lambert_square_under_point_light_per_pixel():
    verts, faces = square()
    location = torch.tensor([0.3, -0.4, 1.5], dtype=DT)
    lights = PointLights(location=location, ambient_color=(0.1, 0.1, 0.1), diffuse_color=(0.9, 0.9, 0.9))
    out = render_mesh(verts, faces, front_camera(), lights=lights, shading="lambert")
    xy = pixel_world_xy(8)
    to_light = location - torch.cat([xy, torch.zeros(8, 8, 1, dtype=DT)], dim=-1)
    cos = to_light[..., 2] / to_light.norm(dim=-1)  # n = +Z
    torch.testing.assert_close(out["rgb"][0], (0.1 + 0.9 * cos)[..., None].expand(8, 8, 3))


def test_phong_highlight_analytic():
    n = torch.tensor([[0.0, 0.0, 2.0]], dtype=DT)  # not unit: normalised inside
    a, b = math.radians(30), math.radians(10)
    lights = DirectionalLights(direction=(math.sin(a), 0.0, math.cos(a)), ambient_color=(0.1,) * 3,
                               diffuse_color=(0.5,) * 3, specular_color=(0.4,) * 3)  # fmt: skip
    view = torch.tensor([[-math.sin(b), 0.0, math.cos(b)]], dtype=DT) * 3
    materials = Materials(specular_color=(1.0, 0.5, 0.0), shininess=8.0)
    colors = torch.tensor([[0.8, 0.6, 0.4]], dtype=DT)
    points = torch.zeros(1, 3, dtype=DT)
    got = phong_shading(colors, n, points, lights, view, materials)
    # Reflected light direction (-sin a, 0, cos a); its cosine with the view direction is cos(a - b).
    expected = colors * (0.1 + 0.5 * math.cos(a)) + 0.4 * torch.tensor([1.0, 0.5, 0.0], dtype=DT) * math.cos(a - b) ** 8
    torch.testing.assert_close(got, expected)
    # Light behind the surface: ambient only, no highlight even if the mirror direction faces the viewer.
    behind = DirectionalLights(direction=(0.0, 0.0, -1.0), ambient_color=(0.1,) * 3, specular_color=(1.0,) * 3)
    got = phong_shading(colors, n, points, behind, torch.tensor([[0.0, 0.0, -1.0]], dtype=DT), materials)
    torch.testing.assert_close(got, colors * 0.1)
    torch.testing.assert_close(lambert_shading(colors, n, points, behind), colors * 0.1)


@pytest.mark.parametrize("shading", ["phong", "flat", "lambert"])
def test_default_headlight_render_of_a_square_facing_a_perspective_camera(shading):
    """The default light is a headlight (from the camera towards the scene; docs: a surface facing the camera with
    albedo 1 renders at about 1 under Phong). By hand, for the white square z = 0 seen from (0, 0, 3): n = l = +Z,
    so ambient + diffuse = 0.35 + 0.55; the mirror direction is +Z and the direction to the viewer from the point p
    is (c - p) / |c - p|, so the highlight is 0.1 (3 / |c - p|) ** 64 (not for Lambert). Flat shading uses the face
    normals, which face the camera too."""
    verts, faces = square()
    size, fov = 8, 30.0
    camera = PerspectiveCameras(look_at(torch.tensor([0.0, 0.0, 3.0], dtype=DT)), size, size, fov_y_deg=fov)
    out = render_mesh(verts, faces, camera, shading=shading)
    xy = pixel_world_xy(size, scale=3.0 * math.tan(math.radians(fov / 2)))  # the plane z = 0 at depth 3
    cosine = 3.0 / (xy.square().sum(-1) + 9.0).sqrt()
    expected = 0.9 + (0.0 if shading == "lambert" else 0.1) * cosine**64
    torch.testing.assert_close(out["rgb"][0], expected[..., None].expand(size, size, 3))
    torch.testing.assert_close(out["normals"][0], torch.tensor([0.0, 0, 1], dtype=DT).expand(size, size, 3))


def test_batched_light_parameters_broadcast_per_batch_element():
    colors = torch.ones(2, 5, 3, dtype=DT)
    normals = torch.tensor([0.0, 0.0, 1.0], dtype=DT).expand(2, 5, 3)
    lights = DirectionalLights(direction=torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=DT),
                               ambient_color=(0.0,) * 3, diffuse_color=(1.0,) * 3)  # fmt: skip
    out = lambert_shading(colors, normals, torch.zeros(2, 5, 3, dtype=DT), lights)
    torch.testing.assert_close(out[0], torch.ones(5, 3, dtype=DT))
    torch.testing.assert_close(out[1], torch.zeros(5, 3, dtype=DT))
    bad = DirectionalLights(direction=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="light direction"):
        lambert_shading(colors, normals, torch.zeros(2, 5, 3, dtype=DT), bad)


# --------------------------------------------------------------------------------------------------------------------
# Textures and interpolation
# --------------------------------------------------------------------------------------------------------------------
def test_texture_lookup_convention():
    texture = torch.arange(4 * 3 * 3, dtype=DT).reshape(4, 3, 3)  # 4 rows, 3 columns, row 0 at the top
    # Texel (row r, column c) has its centre at ((c + 0.5) / 3, 1 - (r + 0.5) / 4).
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij")
    uv = torch.stack([(cols + 0.5) / 3, 1 - (rows + 0.5) / 4], dim=-1).to(DT)
    torch.testing.assert_close(sample_texture(texture, uv[None])[0], texture)
    # (u, v) near (0, 0) is the bottom-left texel; halfway between two texel centres is their mean; borders clamp.
    probe = torch.tensor([[[0.01, 0.01], [1 / 3, 1 - 0.5 / 4], [-3.0, 2.0]]], dtype=DT)
    expected = torch.stack([texture[3, 0], (texture[0, 0] + texture[0, 1]) / 2, texture[0, 0]])
    torch.testing.assert_close(sample_texture(texture, probe)[0], expected)


def test_textured_square_renders_its_texels():
    # The square fills the view exactly and its UVs span [0, 1]: pixel (i, j) shows texel (i, j).
    verts, faces = square()
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=DT)
    texture = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    out = render_mesh(verts, faces, front_camera(), uvs=uvs, texture=texture, shading="unlit")
    torch.testing.assert_close(out["rgb"][0], texture)
    # Same through separate UV indices (face_uvs) and a Mesh object.
    out = render_mesh(verts, faces, front_camera(), uvs=uvs.flip(0), face_uvs=3 - faces, texture=texture,
                      shading="unlit")  # fmt: skip
    torch.testing.assert_close(out["rgb"][0], texture)
    mesh = Mesh(verts=verts, faces=faces, uvs=uvs, texture=texture)
    torch.testing.assert_close(render(mesh, front_camera(), shading="unlit")["rgb"][0], texture)


def test_a_tiling_texture_repeats_across_the_square():
    """UVs 0..2 over a 4 x 4 texture on a square filling an 8 x 8 view: the texture shows twice across (glTF's
    repeating wrap), so pixel (i, j) shows texel (i mod 4, j mod 4); it was clamped to the last row and column."""
    verts, faces = square()
    uvs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]], dtype=DT)
    texture = torch.rand(4, 4, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    out = render_mesh(verts, faces, front_camera(), uvs=uvs, texture=texture, shading="unlit")
    torch.testing.assert_close(out["rgb"][0], texture.repeat(2, 2, 1))


def test_repeat_uvs_wraps_beyond_rounding_and_clamps_within_it():
    uv = torch.tensor([[1.0 + 1e-6, -1e-6], [1.25, -0.25], [2.0, 3.5], [0.5, 1.0]])
    expected = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.0, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(repeat_uvs(uv), expected)
    assert uvs_repeat(uv) and not uvs_repeat(uv[[0, 3]])


def test_interpolate_face_attributes_known_weights():
    face_index = torch.tensor([[[[1, -1]]]])  # (1, 1, 1, 2)
    bary = torch.tensor([[[[[0.2, 0.3, 0.5], [0.3, 0.3, 0.4]]]]], dtype=DT)
    attrs = torch.arange(2 * 3 * 2, dtype=DT).reshape(2, 3, 2)  # face 1 corners: (6, 7), (8, 9), (10, 11)
    out = interpolate_face_attributes(face_index, bary, attrs)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[0.2 * 6 + 0.3 * 8 + 0.5 * 10, 0.2 * 7 + 0.3 * 9 + 5.5],
                                                           [0.0, 0.0]], dtype=DT))  # fmt: skip
    batched = torch.stack([attrs, attrs + 100])
    out2 = interpolate_face_attributes(face_index.expand(2, -1, -1, -1), bary.expand(2, -1, -1, -1, -1), batched)
    torch.testing.assert_close(out2[1, 0, 0, 0], out[0, 0, 0, 0] + 100)
    with pytest.raises(ValueError, match="face_attributes"):
        interpolate_face_attributes(face_index, bary, torch.zeros(2, 4, 2))


def test_interpolate_vertex_positions_gives_pixel_positions():
    verts, faces = square(0.75)
    cams = front_camera(8)
    fr = rasterize(cams.transform_points_ndc(verts), faces, 8, 8, perspective_correct=False)
    points = interpolate_vertex_attributes(fr, faces, verts)[0, ..., 0, :]
    covered = fr.mask[0, ..., 0]
    assert covered.sum() == 36  # pixel centres at |x|, |y| < 0.75
    torch.testing.assert_close(points[covered][:, :2], pixel_world_xy(8)[covered])
    assert bool((points[~covered] == 0).all())


# --------------------------------------------------------------------------------------------------------------------
# Normals
# --------------------------------------------------------------------------------------------------------------------
def test_normals_of_octahedron_and_degenerate_faces():
    verts = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=DT)
    faces = []
    for x in (0, 1):
        for y in (2, 3):
            for z in (4, 5):
                # Orient each face outwards: (v1 - v0) x (v2 - v0) along the face centre.
                tri = [x, y, z]
                n = torch.linalg.cross(verts[y] - verts[x], verts[z] - verts[x])
                faces.append(tri if float(n @ verts[tri].mean(0)) > 0 else [x, z, y])
    faces = torch.tensor(faces)
    torch.testing.assert_close(vertex_normals(verts, faces), verts)  # by symmetry
    centres = verts[faces].mean(1)
    torch.testing.assert_close(face_normals(verts, faces), centres / centres.norm(dim=-1, keepdim=True))
    batched = torch.stack([verts, 2 * verts])
    torch.testing.assert_close(vertex_normals(batched, faces), torch.stack([verts, verts]))
    flat = face_normals(torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), torch.tensor([[0, 1, 2]]))
    assert bool((flat == 0).all())


def test_vertex_normals_weight_each_face_by_its_area():
    """A vertex shared by a large face (area 2, normal +Z) and a small one (area 1/8, normal +X) gets the area-weighted
    mean ``normalize(2 (0, 0, 1) + 1/8 (1, 0, 0))`` (the documented weighting): an unweighted mean of the two unit
    normals would tilt it 45 degrees. Vertices of one face only take that face's normal."""
    verts = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0.5, 0], [0, 0, 0.5]], dtype=DT)
    faces = torch.tensor([[0, 1, 2], [0, 3, 4]])
    normals = vertex_normals(verts, faces)
    shared = torch.tensor([0.125, 0.0, 2.0], dtype=DT)
    torch.testing.assert_close(normals[0], shared / shared.norm())
    torch.testing.assert_close(normals[1], torch.tensor([0.0, 0.0, 1.0], dtype=DT))
    torch.testing.assert_close(normals[4], torch.tensor([1.0, 0.0, 0.0], dtype=DT))


# --------------------------------------------------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------------------------------------------------
def hand_built_pair():
    """Triangle A (depth 2) with its right edge on x = -0.3, triangle B (depth 3) with its lower edge on y = 0.1;
    other edges far away (see tests/test_raster.py). Image 4 x 4."""
    verts = torch.tensor(
        [[[-0.3, -9.0, 2.0], [-0.3, 9.0, 2.0], [-9.0, 0.0, 2.0], [-9.0, 0.1, 3.0], [9.0, 0.1, 3.0], [0.0, 9.0, 3.0]]],
        dtype=DT,
    )
    return verts, torch.tensor([[0, 1, 2], [3, 4, 5]])


def test_softmax_rgb_blend_formula_on_hand_built_triangles():
    verts, faces = hand_built_pair()
    sigma, gamma, znear, zfar = 0.05, 0.5, 1.0, 10.0
    background = torch.tensor([0.2, 0.4, 0.6], dtype=DT)
    colours = {0: torch.tensor([1.0, 0.0, 0.0], dtype=DT), 1: torch.tensor([0.0, 1.0, 0.0], dtype=DT)}
    fr = rasterize(verts, faces, 4, 4, faces_per_pixel=2, blur_radius=blur_radius_for_sigma(sigma))
    per_fragment = torch.where(fr.face_index[..., None] == 0, colours[0], colours[1]) * fr.mask[..., None]
    got = softmax_rgb_blend(per_fragment, fr, sigma, gamma, znear, zfar, background)[0]

    centres = [-0.75, -0.25, 0.25, 0.75]
    blur = math.log(1 / 1e-4 - 1) * sigma
    for i, y in enumerate(reversed(centres)):
        for j, x in enumerate(centres):
            dist_a = (x + 0.3) ** 2 if x > -0.3 else -((x + 0.3) ** 2)
            dist_b = (y - 0.1) ** 2 if y < 0.1 else -((y - 0.1) ** 2)
            near = [(d, z, colours[f]) for f, (d, z) in enumerate([(dist_a, 2.0), (dist_b, 3.0)]) if d < blur]
            p = [1 / (1 + math.exp(d / sigma)) for d, _, _ in near]
            zinv = [(zfar - z) / (zfar - znear) for _, z, _ in near]
            zmax = max([*zinv, 1e-10])
            w = [pj * math.exp((zj - zmax) / gamma) for pj, zj in zip(p, zinv, strict=True)]
            delta = max(math.exp((1e-10 - zmax) / gamma), 1e-10)
            rgb = (sum(wj * c for wj, (_, _, c) in zip(w, near, strict=True)) + delta * background) / (sum(w) + delta)
            alpha = 1 - math.prod(1 - pj for pj in p)
            torch.testing.assert_close(got[i, j, :3], rgb, rtol=0, atol=1e-5)
            assert got[i, j, 3].item() == pytest.approx(alpha, abs=1e-5)


def test_hard_rgb_blend_takes_nearest_and_background():
    verts, faces = hand_built_pair()
    fr = rasterize(verts, faces, 4, 4, faces_per_pixel=2)
    colors = torch.stack([fr.face_index.to(DT), -fr.face_index.to(DT), fr.depth], dim=-1)
    out = hard_rgb_blend(colors, fr, background=(7.0, 8.0, 9.0))[0]
    # Column 0 (x = -0.75) is inside A (depth 2), rows 0-1 (y > 0.1) inside B (depth 3); A is in front.
    assert out[2, 0].tolist() == [0.0, 0.0, 2.0, 1.0]
    assert out[0, 3].tolist() == [1.0, -1.0, 3.0, 1.0]
    assert out[3, 3].tolist() == [7.0, 8.0, 9.0, 0.0]


# --------------------------------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------------------------------
def uv_sphere(radius=1.0, rings=24, segments=48):
    """Closed UV sphere with outward counter-clockwise faces (independent of the code under test)."""
    theta = torch.linspace(0, math.pi, rings + 1, dtype=DT)[1:-1]
    phi = torch.arange(segments, dtype=DT) * 2 * math.pi / segments
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([t.sin() * p.sin(), t.cos(), t.sin() * p.cos()], dim=-1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1, 0], [0, -1, 0]], dtype=DT), ring]) * radius
    faces = []
    idx = lambda r, s: 2 + r * segments + s % segments  # noqa: E731
    for s in range(segments):
        faces.append([0, idx(0, s), idx(0, s + 1)])
        faces.append([1, idx(rings - 2, s + 1), idx(rings - 2, s)])
        for r in range(rings - 2):
            faces += [[idx(r, s), idx(r + 1, s), idx(r + 1, s + 1)], [idx(r, s), idx(r + 1, s + 1), idx(r, s + 1)]]
    return verts, torch.tensor(faces)


def test_sphere_silhouette_area_and_depth():
    verts, faces = uv_sphere(0.8)
    size = 64
    cams = front_camera(size)
    out = render_mesh(verts, faces, cams, shading="unlit", cull_backfaces=True)
    coverage = out["alpha"][0].mean().item()
    assert coverage == pytest.approx(math.pi * 0.8**2 / 4, rel=0.02)  # disc area / view area
    # Depth of the front surface at each covered pixel: 5 - sqrt(r^2 - x^2 - y^2).
    xy = pixel_world_xy(size)
    inside = xy.norm(dim=-1) < 0.6  # away from the polygonal rim (facets deviate most there)
    expected = 5 - (0.64 - (xy**2).sum(-1)).clamp_min(0).sqrt()
    # Flat facets sag up to r (1 - cos 5.3 deg) = 3.4e-3 below the sphere, more in depth on oblique facets.
    torch.testing.assert_close(out["depth"][0][inside], expected[inside], atol=6e-3, rtol=0)
    assert bool((out["depth"][0][out["alpha"][0] == 0] == 0).all())
    # Outward normals on the visible side face the camera.
    assert bool((out["normals"][0][inside][:, 2] > 0.6).all())
    hard = render_silhouette(verts, faces, cams, None)
    torch.testing.assert_close(hard, out["alpha"])


def test_perspective_batch_and_soft_render_consistency():
    verts, faces = uv_sphere(0.6, rings=12, segments=24)
    eyes = torch.tensor([[0.0, 0.0, 3.0], [2.0, 1.0, 2.0]], dtype=DT)
    cams = PerspectiveCameras(look_at(eyes), 24, 32, fov_y_deg=40.0, znear=0.5, zfar=20.0)
    colors = (verts + 1) / 2
    hard = render_mesh(verts.float(), faces, PerspectiveCameras(look_at(eyes.float()), 24, 32, fov_y_deg=40.0),
                       vertex_colors=colors.float())  # fmt: skip
    assert hard["rgb"].shape == (2, 24, 32, 3) and hard["face_index"].shape == (2, 24, 32)
    # Nearest depth at the image centre is the distance to the sphere minus the radius (up to tessellation).
    centre = hard["depth"][:, 11:13, 15:17].amin(dim=(1, 2))
    torch.testing.assert_close(centre, eyes.float().norm(dim=-1) - 0.6, atol=0.03, rtol=0)
    sigma = 1e-3
    soft = render_mesh(verts, faces, cams, vertex_colors=colors, soft=True, sigma=sigma, gamma=1e-3)
    sil = render_silhouette(verts, faces, cams, sigma, faces_per_pixel=50)
    torch.testing.assert_close(soft["alpha"], sil)
    fr = soft["fragments"]
    torch.testing.assert_close(sil, soft_silhouette(fr, sigma))
    # Two pixels or more inside the silhouette (blur radius ~1.2 px) the soft image is close to the hard one: it
    # blends in neighbouring faces, shaded at their points nearest to the pixel.
    solid = -torch.nn.functional.max_pool2d(-hard["alpha"][:, None], 5, stride=1, padding=2)[:, 0] == 1
    assert solid.sum() > 100
    hard64 = render_mesh(verts, faces, cams, vertex_colors=colors)
    difference = (soft["rgb"][solid] - hard64["rgb"][solid]).abs()
    assert difference.mean() < 5e-3 and difference.max() < 0.05

    # The nearest face, its depth and normal are those of a face covering the pixel: a soft render also finds faces
    # within the blur radius outside the outline (nearer than the covering one near the rim), which must not leak.
    found = soft["fragments"].face_index[..., 0] >= 0
    assert int(found.sum()) > int(hard64["face_index"].ge(0).sum()) + 20
    for key in ("face_index", "depth", "normals"):
        torch.testing.assert_close(soft[key], hard64[key], rtol=0, atol=1e-12)


def test_phong_shininess_per_camera():
    """A (B,) shininess is one exponent per camera: the same images as each camera rendered with its own."""
    verts, faces = uv_sphere(0.6, rings=8, segments=16)
    eyes = torch.tensor([[0.0, 0.0, 3.0], [0.0, 3.0, 0.1]], dtype=DT)
    cams = PerspectiveCameras(look_at(eyes), 12, 12, fov_y_deg=40.0)
    both = render_mesh(verts, faces, cams, materials=Materials(shininess=torch.tensor([4.0, 200.0], dtype=DT)))
    for i, exponent in enumerate((4.0, 200.0)):
        alone = render_mesh(verts, faces, cams[i], materials=Materials(shininess=exponent))
        torch.testing.assert_close(both["rgb"][i], alone["rgb"][0])


def test_weak_perspective_square_coverage():
    # v' = s v + (tx, ty): the unit square [-1, 1]^2 lands on [tx - s, tx + s] x [ty - s, ty + s] in NDC.
    verts, faces = square()
    cams = WeakPerspectiveCameras(torch.tensor([0.5], dtype=DT), torch.tensor([[0.2, -0.1]], dtype=DT),
                                  torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=DT), 16, 16)  # fmt: skip
    out = render_mesh(verts, faces, cams, shading="unlit")
    xy = pixel_world_xy(16)  # NDC of the pixel centres (scale 1)
    expected = ((xy[..., 0] - 0.2).abs() < 0.5) & ((xy[..., 1] + 0.1).abs() < 0.5)
    assert torch.equal(out["alpha"][0] == 1, expected)


def test_gradients_reach_every_input():
    verts, faces = uv_sphere(0.7, rings=6, segments=8)
    verts = verts.clone().requires_grad_()
    texture = torch.rand(4, 4, 3, dtype=DT, requires_grad=True)
    uvs = (verts.detach()[:, :2] + 1) / 2
    eye = torch.tensor([0.2, 0.3, 3.0], dtype=DT, requires_grad=True)
    light_dir = torch.tensor([0.3, 0.5, 1.0], dtype=DT, requires_grad=True)
    light_color = torch.tensor([0.6, 0.6, 0.6], dtype=DT, requires_grad=True)
    shininess = torch.tensor(10.0, dtype=DT, requires_grad=True)
    cams = PerspectiveCameras(look_at(eye), 12, 12, fov_y_deg=45.0)
    lights = DirectionalLights(direction=light_dir, diffuse_color=light_color)
    out = render_mesh(verts, faces, cams, uvs=uvs, texture=texture, lights=lights,
                      materials=Materials(shininess=shininess), soft=True, sigma=1e-3, gamma=1e-2)  # fmt: skip
    (out["rgb"] * torch.linspace(0, 1, 3, dtype=DT)).sum().backward()
    for name, x in [("verts", verts), ("texture", texture), ("eye", eye), ("light direction", light_dir),
                    ("light colour", light_color), ("shininess", shininess)]:  # fmt: skip
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()), name
        assert x.grad.abs().sum() > 0, name


def test_gradcheck_shading_wrt_light_and_texture():
    texture = torch.rand(3, 3, 3, dtype=DT, requires_grad=True)
    direction = torch.tensor([0.2, 0.4, 1.0], dtype=DT, requires_grad=True)
    uv = torch.rand(1, 6, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    normals = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    normals[..., 2] = normals[..., 2].abs() + 1

    def fn(tex, d):
        lights = DirectionalLights(direction=d)
        view = torch.tensor([0.0, 0.0, 1.0], dtype=DT).expand(1, 6, 3)
        return phong_shading(sample_texture(tex, uv), normals, torch.zeros(1, 6, 3, dtype=DT), lights, view)

    assert torch.autograd.gradcheck(fn, (texture, direction))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shading": "toon"}, "shading"),
        ({"texture": torch.rand(2, 2, 3)}, "without uvs"),
        ({"vertex_colors": torch.rand(5, 3)}, "vertex_colors"),
        ({"vertex_colors": torch.rand(4, 4)}, "vertex_colors"),
        ({"uvs": torch.rand(4, 2), "face_uvs": torch.tensor([[0, 1, 9], [0, 1, 2]]), "texture": torch.rand(2, 2, 3)},
         "face_uvs"),
        ({"uvs": torch.rand(3, 2), "texture": torch.rand(2, 2, 3)}, "uvs"),
        ({"normals": torch.rand(2, 4, 3)}, "normals"),
        ({"normals": torch.rand(3, 3)}, "normals has 3 rows, the mesh has 4 vertices"),
        ({"normals": torch.rand(5, 3)}, "normals has 5 rows, the mesh has 4 vertices"),
        ({"uvs": torch.rand(4, 2), "texture": torch.rand(3, 8, 8)}, r"texture must be \(Ht, Wt, 3\)"),
    ],
)  # fmt: skip
def test_render_mesh_rejects_bad_input(kwargs, match):
    verts, faces = square()
    verts = verts.float()
    cams = OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 5.0])), 4, 4)
    with pytest.raises(ValueError, match=match):
        render_mesh(verts, faces, cams, **kwargs)


def test_render_rejects_bad_geometry():
    cams = OrthographicCameras(look_at(torch.tensor([0.0, 0.0, 5.0])), 4, 4)
    verts, faces = square()
    with pytest.raises(ValueError, match="verts"):
        render_mesh(torch.rand(3, 4, 3), faces, cams)  # 3 vertex sets for 1 camera
    with pytest.raises(ValueError, match="out of range"):
        render_mesh(verts.float(), faces + 2, cams)
    with pytest.raises(ValueError, match="NaN"):
        render_silhouette(torch.full((4, 3), float("nan")), faces, cams)
    with pytest.raises(ValueError, match="texture"):
        sample_texture(torch.rand(2, 2), torch.rand(1, 3, 2))
    with pytest.raises(ValueError, match="sigma"):
        fr = rasterize(torch.rand(1, 3, 3) + 1, torch.tensor([[0, 1, 2]]), 4, 4)
        softmax_rgb_blend(torch.zeros(1, 4, 4, 1, 3), fr, sigma=0.0)
