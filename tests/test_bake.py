"""Texture baking: the baked texels reproduce an analytic colour field on the surface; dilation; textured GLB files."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
import pytest
import torch
import trimesh

from monorecon.core.bake import bake_texture, dilate_texture, rasterize_uv_positions, unwrap_uv
from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh, save_mesh
from paths import SHARED_MESHES
from test_mesh_io import _validator_command

MESH_DIR = SHARED_MESHES
# A linear colour field: exact under barycentric interpolation, so texels inside a chart must match it to float error.
LINEAR_MAP = torch.tensor([[0.4, -0.1, 0.2], [0.1, 0.35, -0.2], [-0.2, 0.15, 0.3]])


def linear_field(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) points in [-1, 1]^3 -> (N, 3) colours in [0.05, 0.95]."""
    return 0.5 + points @ LINEAR_MAP


def wavy_field(points: torch.Tensor) -> torch.Tensor:
    """A smooth non-linear colour field, (N, 3) -> (N, 3) in [0.1, 0.9]."""
    return 0.5 + 0.4 * torch.sin(torch.stack([3 * points[:, 0], 2 * points[:, 1] + points[:, 2], 4 * points[:, 2]], 1))


def sample_texture(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear lookup written from the documented convention (``Mesh``): ``u`` right, ``v`` up from the bottom row,
    texel (i, j) centred at ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``; clamped at the borders."""
    height, width, _ = texture.shape
    x = uvs[:, 0] * width - 0.5
    y = (1.0 - uvs[:, 1]) * height - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, width - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, height - 2)
    fx = np.clip(x - x0, 0.0, 1.0)[:, None]
    fy = np.clip(y - y0, 0.0, 1.0)[:, None]
    top = (1 - fx) * texture[y0, x0] + fx * texture[y0, x0 + 1]
    bottom = (1 - fx) * texture[y0 + 1, x0] + fx * texture[y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom


def sphere(subdivisions: int = 3, radius: float = 0.8) -> Mesh:
    return Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions, radius))


def real_mesh() -> Mesh:
    path = MESH_DIR / "bunny.ply"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return load_mesh(path).normalized(1.6)


def bake_errors(baked: Mesh, field) -> tuple[np.ndarray, np.ndarray]:
    """Largest per-channel error of the texture against ``field`` at every vertex and at every face centroid."""
    texture, uvs = baked.texture.numpy(), baked.uvs.numpy()
    verts, faces = baked.verts.float(), baked.faces
    at_verts = np.abs(sample_texture(texture, uvs) - field(verts).numpy()).max(axis=1)
    centroid_uvs = uvs[faces.numpy()].mean(axis=1)
    at_centroids = np.abs(sample_texture(texture, centroid_uvs) - field(verts[faces].mean(dim=1)).numpy()).max(axis=1)
    return at_verts, at_centroids


# --------------------------------------------------------------------------------------------------------------------
# Baked values
# --------------------------------------------------------------------------------------------------------------------
def test_bake_linear_field_on_sphere_is_exact_inside_charts():
    mesh = sphere()
    baked = bake_texture(mesh, linear_field, resolution=256)
    assert baked.texture.shape == (256, 256, 3)
    assert baked.uvs.shape == (baked.verts.shape[0], 2)
    assert float(baked.uvs.min()) >= 0.0 and float(baked.uvs.max()) <= 1.0
    # The unwrapped mesh is the same surface: every vertex is one of the input vertices.
    distance = torch.cdist(baked.verts.float(), mesh.verts.float(), compute_mode="donot_use_mm_for_euclid_dist")
    distance = distance.min(dim=1).values
    assert float(distance.max()) < 1e-6
    at_verts, at_centroids = bake_errors(baked, linear_field)
    assert at_centroids.max() < 2e-3
    # Vertices lie on chart borders: half their bilinear footprint is dilated (nearest texel) colour.
    assert at_verts.max() < 0.03


def test_bake_clamps_colours_outside_the_unit_range():
    """Colours a field gives outside [0, 1] are baked clamped (a texture holds [0, 1] colours): a field running from
    -1.6 to 2.6 across the sphere's x gives texels 0 on one side, 1 on the other and the clamped field inside
    charts, never values beyond."""

    def steep(points: torch.Tensor) -> torch.Tensor:
        return (0.5 + 2.6 * points[:, :1]).expand(-1, 3)  # x in [-0.8, 0.8] -> [-1.58, 2.58]

    baked = bake_texture(sphere(subdivisions=2), steep, resolution=64)
    assert float(baked.texture.min()) == 0.0 and float(baked.texture.max()) == 1.0
    uvs, faces = baked.uvs.numpy(), baked.faces.numpy()
    centroids = baked.verts.float()[baked.faces].mean(dim=1)
    got = sample_texture(baked.texture.numpy(), uvs[faces].mean(axis=1))
    np.testing.assert_allclose(got, steep(centroids).clamp(0, 1).numpy(), atol=0.1)


def test_bake_vertex_colours_interpolates_them_across_faces():
    """Vertex colours of a linear field, baked without a colour function: a linear field is exactly what barycentric
    interpolation gives inside every face, so the texture must reproduce the field itself at the face centroids."""
    mesh = sphere()
    mesh = Mesh(mesh.verts, mesh.faces, vertex_colors=linear_field(mesh.verts.float()))
    baked = bake_texture(mesh, resolution=256)
    assert baked.texture.shape == (256, 256, 3) and baked.vertex_colors is not None
    at_verts, at_centroids = bake_errors(baked, linear_field)
    assert at_centroids.max() < 2e-3
    assert at_verts.max() < 0.03  # as above: chart borders
    # A colour field that differs from the vertex colours shows the colours came from the vertices, not a field.
    assert bake_errors(baked, wavy_field)[1].max() > 0.05
    with pytest.raises(ValueError, match="no vertex colours"):
        bake_texture(sphere(1), resolution=64)


@pytest.mark.parametrize("resolution", [128, 256])
def test_bake_nonlinear_field_on_real_mesh(resolution):
    baked = bake_texture(real_mesh(), wavy_field, resolution=resolution)
    at_verts, at_centroids = bake_errors(baked, wavy_field)
    # Texel-centre sampling and dilation err by about (field gradient) x (surface length of a texel): the allowed
    # error shrinks with the texel size (the field's gradient is at most 1.8 per unit on a mesh about 1.6 across).
    texel = 1.0 / resolution
    assert np.quantile(at_centroids, 0.99) < 1.5 * texel
    assert at_centroids.max() < 5 * texel
    assert np.quantile(at_verts, 0.99) < 5 * texel
    assert at_verts.max() < 12 * texel


def test_charts_do_not_bleed_into_each_other():
    """Two separate spheres of two constant colours: charts never span both, so every vertex (on chart borders,
    where a neighbouring chart would bleed in under bilinear filtering) and centroid reads its own sphere's colour."""

    def sided(points: torch.Tensor) -> torch.Tensor:
        return torch.where(points[:, :1] > 0, points.new_tensor([0.9, 0.1, 0.1]), points.new_tensor([0.1, 0.1, 0.9]))

    ball = sphere(2, 0.4)
    offset = torch.tensor([0.5, 0.0, 0.0])
    n_verts = ball.verts.shape[0]
    pair = Mesh(torch.cat([ball.verts - offset, ball.verts + offset]), torch.cat([ball.faces, ball.faces + n_verts]))
    baked = bake_texture(pair, sided, resolution=64)
    verts, faces = baked.verts.float(), baked.faces
    sample_uvs = torch.cat([baked.uvs, baked.uvs[faces].mean(dim=1)])
    sample_points = torch.cat([verts, verts[faces].mean(dim=1)])
    error = np.abs(sample_texture(baked.texture.numpy(), sample_uvs.numpy()) - sided(sample_points).numpy())
    assert error.max() < 1e-5


def test_unwrap_keeps_vertex_colours_and_packs_one_atlas():
    mesh = sphere(2)
    colours = (mesh.verts + 1) / 2
    unwrapped = unwrap_uv(Mesh(mesh.verts, mesh.faces, vertex_colors=colours), resolution=128)
    assert torch.allclose(unwrapped.vertex_colors, (unwrapped.verts + 1) / 2)
    assert unwrapped.faces.shape == mesh.faces.shape
    # One atlas: no two faces overlap in UV space, so the UV triangles' areas sum to at most 1.
    tri = unwrapped.uvs[unwrapped.faces].double()
    areas = 0.5 * torch.abs(
        (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
        - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1])
    )
    assert 0.2 < float(areas.sum()) <= 1.0


def test_uv_positions_follow_the_texture_row_convention():
    """One triangle over the upper-left part of UV space: covered texels are counted from the top row (v = 1) and
    their positions interpolate the vertices (computed by hand from the texel centres)."""
    low = 0.03  # v of the bottom-left corner; keeps texel centres off the slanted edge
    verts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, low]])
    mesh = Mesh(verts, torch.tensor([[0, 2, 1]]), uvs=uvs)
    positions, covered = rasterize_uv_positions(mesh, 16)
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    u, v = (cols + 0.5) / 16, 1 - (rows + 0.5) / 16
    assert torch.equal(covered, v >= low + (1 - low) * u)
    assert covered[0, :-1].all() and not covered[-1, 1:].any()  # row 0 is v = 1 (the wide top of the triangle)
    # Barycentric weights at (u, v): w1 = u, w2 = (1 - v) / (1 - low); so x = u and y = (1 - v) / (1 - low).
    assert torch.allclose(positions[..., 0][covered], u[covered], atol=1e-5)
    assert torch.allclose(positions[..., 1][covered], ((1 - v) / (1 - low))[covered], atol=1e-5)
    assert float(positions[~covered].abs().max()) == 0.0


# --------------------------------------------------------------------------------------------------------------------
# Dilation
# --------------------------------------------------------------------------------------------------------------------
def test_dilation_copies_the_nearest_covered_texel():
    rng = np.random.default_rng(3)
    covered = rng.random((20, 24)) < 0.15
    texture = rng.random((20, 24, 3)).astype(np.float32)
    dilated = dilate_texture(texture, covered)
    assert np.array_equal(dilated[covered], texture[covered])
    covered_ij = np.argwhere(covered)
    for i, j in np.argwhere(~covered):
        distances = np.hypot(covered_ij[:, 0] - i, covered_ij[:, 1] - j)
        nearest = covered_ij[distances <= distances.min() + 1e-9]  # ties: any of them
        assert any(np.array_equal(dilated[i, j], texture[a, b]) for a, b in nearest), (i, j)


def test_dilation_edge_cases_and_baked_texture_has_no_holes():
    texture = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    assert np.array_equal(dilate_texture(texture, np.ones((8, 8), bool)), texture)
    assert np.array_equal(dilate_texture(texture, np.zeros((8, 8), bool)), texture)
    baked = bake_texture(sphere(2), linear_field, resolution=64)
    # The field lies in [0.05, 0.95]: an unfilled texel would still hold the initial 0.
    assert float(baked.texture.min()) > 0.04


def test_bake_rejects_bad_input():
    with pytest.raises(ValueError, match="texture resolution"):
        bake_texture(sphere(1), linear_field, resolution=8)
    with pytest.raises(ValueError, match="no UVs"):
        rasterize_uv_positions(sphere(1), 32)


# --------------------------------------------------------------------------------------------------------------------
# Textured GLB
# --------------------------------------------------------------------------------------------------------------------
def test_baked_glb_is_valid_and_loads_with_its_texture(tmp_path):
    command = _validator_command()
    baked = bake_texture(sphere(2), wavy_field, resolution=64)
    path = save_mesh(baked, tmp_path / "baked.glb")
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and ": 0 errors, 0 warnings" in result.stdout, result.stdout + result.stderr
    loaded = trimesh.load(path, force="mesh")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    image = loaded.visual.material.baseColorTexture
    assert image is not None and image.size == (64, 64)
    # Round trip through the file: the texture sampled at the loaded UVs still reproduces the field.
    texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colours = sample_texture(texture, np.asarray(loaded.visual.uv))
    expected = wavy_field(torch.from_numpy(np.asarray(loaded.vertices, dtype=np.float32))).numpy()
    assert np.abs(colours - expected).max() < 0.08


# --------------------------------------------------------------------------------------------------------------------
# Atlas padding, vertex-colour clamping, chunked colour queries
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [64, 128])
def test_charts_are_separated_by_the_padding_plus_one_texel(resolution):
    """``unwrap_uv`` keeps ``padding`` (default 4) empty texels around every chart plus one for bilinear filtering: at
    the atlas's own resolution, texel centres of two different charts (connected components of the unwrapped faces,
    which share vertices only within a chart) lie at least padding + 2 texels apart."""
    from scipy import ndimage, sparse

    from monorecon.core.bake import rasterize_uv_attributes

    unwrapped = unwrap_uv(sphere(2), resolution)
    faces = unwrapped.faces.numpy()
    n_verts = unwrapped.verts.shape[0]
    incidence = sparse.coo_matrix(
        (np.ones(faces.size), (np.repeat(np.arange(len(faces)), 3), faces.ravel())), shape=(len(faces), n_verts)
    ).tocsr()
    n_charts, chart = sparse.csgraph.connected_components(incidence.T @ incidence)
    assert n_charts > 1
    values, covered = rasterize_uv_attributes(
        unwrapped, torch.from_numpy(chart.astype(np.float32))[:, None], resolution
    )
    ids = np.where(covered.numpy(), np.rint(values[..., 0].numpy()).astype(int), -1)
    for c in range(n_charts):
        mine = ids == c
        others = (ids >= 0) & ~mine
        if mine.any() and others.any():
            assert ndimage.distance_transform_edt(~mine)[others].min() >= 4 + 2, c


def test_bake_in_small_chunks_colours_every_covered_texel():
    """``chunk_size`` only splits the ``colour_fn`` calls: with chunks of 1000 points every covered texel still holds
    the field at its own surface point, and the calls see each texel exactly once."""
    calls = []

    def counted(points: torch.Tensor) -> torch.Tensor:
        calls.append(len(points))
        return linear_field(points)

    baked = bake_texture(sphere(2), counted, resolution=64, chunk_size=1000)
    positions, covered = rasterize_uv_positions(baked, 64)
    assert sum(calls) == int(covered.sum()) and max(calls) == 1000 and len(calls) > 2
    torch.testing.assert_close(baked.texture[covered], linear_field(positions[covered]), atol=1e-5, rtol=0)


def test_a_crash_of_xatlas_is_an_error_not_the_end_of_the_process():
    """xatlas 0.0.11 crashes (segmentation fault) on a regular 81,920-face icosphere; in its child process that is a
    one-line ValueError here."""
    sphere = trimesh.creation.icosphere(subdivisions=6)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    with pytest.raises(ValueError, match=r"^UV unwrapping \(xatlas\) failed on this mesh of 81920 faces: crashed "):
        unwrap_uv(mesh, 1024)


def test_other_threads_run_while_xatlas_unwraps():
    """xatlas holds Python's global lock while it works: in this process a server's other threads would stop."""
    sphere = trimesh.creation.icosphere(subdivisions=4)  # ~1 s of xatlas here
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    ticks, done = [], threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        unwrap_uv(mesh, 512)
    finally:
        done.set()
        ticker.join()
    assert max(np.diff(ticks)) < 0.3  # the longest pause of the ticking thread
