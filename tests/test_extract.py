"""Marching-cubes extraction (dense, block-wise, coarse-to-fine) and mesh clean-up."""

from __future__ import annotations

import importlib.util
import math
import sys
import tracemalloc

import mcubes
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from monorecon.api import ReconstructOptions
from monorecon.core.extract import cleanup_mesh, extract_isosurface
from monorecon.core.mesh import Mesh

RADIUS = 0.55


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    """Positive inside a sphere of radius RADIUS (threshold 0)."""
    return RADIUS - points.norm(dim=-1)


def blobs_density(points: torch.Tensor) -> torch.Tensor:
    """Union of two spheres and a torus (max of signed distances): several pieces, thin parts, a hole."""
    big = 0.45 - (points - points.new_tensor([-0.3, 0.1, 0.0])).norm(dim=-1)
    small = 0.2 - (points - points.new_tensor([0.55, 0.45, 0.2])).norm(dim=-1)
    x, y, z = (points - points.new_tensor([0.3, -0.45, 0.0])).unbind(-1)
    torus = 0.1 - torch.sqrt((torch.sqrt(x**2 + z**2) - 0.35) ** 2 + y**2)
    return torch.maximum(torch.maximum(big, small), torus)


def signed_volume(mesh: Mesh) -> float:
    v0, v1, v2 = mesh.verts.double()[mesh.faces].unbind(1)
    return float((v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6)


def assert_closed_manifold(faces: np.ndarray) -> None:
    """Every directed edge appears once and its reverse once: closed, consistently oriented surface."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys = edges[:, 0] * (faces.max() + 1) + edges[:, 1]
    reverse = edges[:, 1] * (faces.max() + 1) + edges[:, 0]
    assert len(np.unique(keys)) == len(keys), "an edge is used twice in the same direction"
    assert np.isin(reverse, keys).all(), "an edge has no opposite: the surface has a hole"


def f_score(a: Mesh, b: Mesh, tau: float, queries: int = 20_000, reference: int = 400_000) -> float:
    """F-score at ``tau`` between surfaces: query samples of one against dense samples of the other, both ways."""

    def fraction_near(x: Mesh, y: Mesh) -> float:
        points = trimesh.sample.sample_surface(x.to_trimesh(), queries, seed=0)[0]
        dense = trimesh.sample.sample_surface(y.to_trimesh(), reference, seed=1)[0]
        return float((cKDTree(dense).query(points)[0] < tau).mean())

    precision, recall = fraction_near(a, b), fraction_near(b, a)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def reference_marching_cubes(density, resolution: int, threshold: float, radius: float):
    """Single pass of PyMCubes over the whole grid, evaluated here independently: (verts (N, 3) world, faces)."""
    axis = np.linspace(-radius, radius, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    values = density(torch.from_numpy(grid.astype(np.float32))).double().numpy()
    verts, faces = mcubes.marching_cubes(values.reshape(resolution, resolution, resolution), threshold)
    return -radius + verts * (2 * radius / (resolution - 1)), faces.astype(np.int64)


def canonical_faces(verts: np.ndarray, faces: np.ndarray, reference_verts: np.ndarray) -> set[tuple[int, ...]]:
    """Faces as rotation-normalised triples of reference vertex ids (matched by position)."""
    distance, ids = cKDTree(reference_verts).query(verts)
    assert distance.max() < 1e-6
    assert len(np.unique(ids)) == len(ids)
    mapped = ids[faces]
    shift = np.argmin(mapped, axis=1)
    rotated = np.take_along_axis(mapped, (shift[:, None] + np.arange(3)) % 3, axis=1)
    return {tuple(face) for face in rotated.tolist()}


# --------------------------------------------------------------------------------------------------------------------
# Dense extraction
# --------------------------------------------------------------------------------------------------------------------
def test_sphere_radius_orientation_and_topology():
    resolution = 48
    mesh = extract_isosurface(sphere_density, resolution, 0.0, 1.0)
    cell = 2.0 / (resolution - 1)
    radii = mesh.verts.norm(dim=-1)
    assert float((radii - RADIUS).abs().max()) < 0.25 * cell
    # Outward: every face normal points away from the centre, and the enclosed volume is positive.
    centroids = mesh.verts[mesh.faces].mean(1)
    assert bool(((mesh.face_normals * centroids).sum(-1) > 0).all())
    assert signed_volume(mesh) == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)
    faces = mesh.faces.numpy()
    assert_closed_manifold(faces)
    edges = len(faces) * 3 // 2
    assert mesh.num_verts - edges + mesh.num_faces == 2  # Euler characteristic of a sphere


def test_blockwise_equals_single_pass_reference():
    resolution, threshold = 33, 0.0
    reference_verts, reference_faces = reference_marching_cubes(blobs_density, resolution, threshold, 1.0)
    expected = canonical_faces(reference_verts, reference_faces, reference_verts)
    meshes = [extract_isosurface(blobs_density, resolution, threshold, 1.0, block_size=b) for b in (5, 11, 32, 128)]
    for mesh in meshes:
        assert mesh.num_verts == len(reference_verts)
        assert canonical_faces(mesh.verts.double().numpy(), mesh.faces.numpy(), reference_verts) == expected
    # Deterministic order, independent of the block size.
    for mesh in meshes[1:]:
        assert torch.equal(mesh.faces, meshes[0].faces)
        torch.testing.assert_close(mesh.verts, meshes[0].verts, rtol=0, atol=1e-6)
    assert_closed_manifold(meshes[0].faces.numpy())


def test_deterministic_and_independent_of_chunking():
    first = extract_isosurface(blobs_density, 29, 0.0, 1.0, block_size=8, chunk_size=1000)
    second = extract_isosurface(blobs_density, 29, 0.0, 1.0, block_size=8, chunk_size=1000)
    third = extract_isosurface(blobs_density, 29, 0.0, 1.0, block_size=13, chunk_size=777)
    assert torch.equal(first.verts, second.verts) and torch.equal(first.faces, second.faces)
    assert torch.equal(first.faces, third.faces)


def test_batch_dependent_field_stays_watertight():
    """A field whose values change with each call (as batched MLPs may; exaggerated here) opens no crack."""
    generator = torch.Generator().manual_seed(0)

    def jittery(points: torch.Tensor) -> torch.Tensor:
        return sphere_density(points) + 1e-2 * torch.randn(len(points), generator=generator)

    mesh = extract_isosurface(jittery, 30, 0.0, 1.0, block_size=6, chunk_size=500)
    assert_closed_manifold(mesh.faces.numpy())


def test_box_bounds_and_axis_order():
    """An ellipsoid in a non-cubic box: each world axis keeps its own extent (no axis swap)."""
    semi_axes = torch.tensor([0.6, 0.3, 0.15])

    def ellipsoid(points: torch.Tensor) -> torch.Tensor:
        return 1.0 - ((points - torch.tensor([0.1, 0.0, 0.0])) / semi_axes).pow(2).sum(-1)

    bounds = ((-0.6, -0.4, -0.2), (0.8, 0.4, 0.2))
    mesh = extract_isosurface(ellipsoid, 41, 0.0, bounds, block_size=16)
    extent = mesh.bounds[1] - mesh.bounds[0]
    cell = (torch.tensor(bounds[1]) - torch.tensor(bounds[0])) / 40
    assert bool(((extent - 2 * semi_axes).abs() < 2 * cell).all())
    assert bool((mesh.verts.amin(0) >= torch.tensor(bounds[0])).all())
    assert bool((mesh.verts.amax(0) <= torch.tensor(bounds[1])).all())
    assert signed_volume(mesh) > 0


def test_density_is_inside_and_ties_are_outside():
    """Density above the threshold is inside; samples equal to it count as outside (surface through them)."""

    def cube(points: torch.Tensor) -> torch.Tensor:
        return (points.abs().amax(-1) < 0.5).float()  # 1 inside, exactly 0 (== threshold) outside

    mesh = extract_isosurface(cube, 12, 0.0, 1.0, block_size=4)
    assert signed_volume(mesh) > 0
    faces = mesh.faces.numpy()
    assert ((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])).all()
    # Vertices sit on the outside samples (t = 1): coordinates on the grid.
    grid = np.linspace(-1, 1, 12)
    on_grid = np.abs(mesh.verts.numpy()[..., None] - grid).min(-1) < 1e-6
    assert on_grid.all()
    single = extract_isosurface(cube, 12, 0.0, 1.0, block_size=128)
    assert torch.equal(single.faces, mesh.faces) and torch.allclose(single.verts, mesh.verts)


def test_a_threshold_within_float32_rounding_of_the_samples_gives_the_tie_mesh():
    """At threshold 1e-9 of a 0 / 1 field every vertex rounds (float32) onto an outside sample: the same surface as
    threshold 0, whose vertices sit on those samples (the same oriented triangles), with no coincident vertices or
    zero-area faces."""

    def ball(points: torch.Tensor) -> torch.Tensor:
        return (points.norm(dim=-1) < 0.55).float()

    def triangles(mesh) -> list[tuple]:
        corners = [[tuple(corner) for corner in face] for face in mesh.verts[mesh.faces].tolist()]
        return sorted(tuple(face[k:] + face[:k]) for face in corners for k in [face.index(min(face))])

    tie, near = extract_isosurface(ball, 33, 0.0, 1.0), extract_isosurface(ball, 33, 1e-9, 1.0)
    assert torch.unique(near.verts, dim=0).shape[0] == near.num_verts
    assert bool((near.face_areas > 0).all()) and near.is_closed
    assert triangles(near) == triangles(tie)


def test_query_chunks_and_memory_are_bounded():
    sizes = []

    def recording(points: torch.Tensor) -> torch.Tensor:
        sizes.append(len(points))
        return sphere_density(points)

    resolution = 161
    tracemalloc.start()
    mesh = extract_isosurface(recording, resolution, 0.0, 1.0, block_size=16, chunk_size=4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(sizes) <= 4096
    assert sum(sizes) == resolution**3  # every sample queried exactly once
    full_grid_bytes = resolution**3 * 8
    assert peak < full_grid_bytes / 2, f"peak {peak / 1e6:.1f} MB is not bounded by the block size"
    assert mesh.num_faces > 0


# --------------------------------------------------------------------------------------------------------------------
# Coarse to fine
# --------------------------------------------------------------------------------------------------------------------
# The coarse grid is queried a few 17 x 17 slabs at a time: all at once, 2 per call (the last call with 1), 1 per call.
@pytest.mark.parametrize(
    ("resolution", "coarse", "chunk_size"), [(65, None, 262_144), (61, 13, 262_144), (65, None, 600), (65, None, 200)]
)
def test_coarse_to_fine_matches_dense(resolution, coarse, chunk_size):
    calls = {"dense": 0, "coarse_to_fine": 0}

    def counting(method):
        def density(points):
            calls[method] += len(points)
            return blobs_density(points)

        return density

    dense = extract_isosurface(counting("dense"), resolution, 0.0, 1.0, block_size=24)
    fast = extract_isosurface(
        counting("coarse_to_fine"),
        resolution,
        0.0,
        1.0,
        block_size=24,
        method="coarse_to_fine",
        coarse_resolution=coarse,
        chunk_size=chunk_size,
    )
    assert f_score(fast, dense, 0.005) >= 0.99
    assert calls["coarse_to_fine"] < 0.5 * calls["dense"]
    # On this smooth field the coarse grid finds every surface cell: the meshes are the same.
    assert torch.equal(fast.faces, dense.faces) and torch.equal(fast.verts, dense.verts)
    assert_closed_manifold(fast.faces.numpy())


@pytest.mark.slow
def test_coarse_to_fine_512():
    mesh = extract_isosurface(sphere_density, 512, 0.0, 1.0, method="coarse_to_fine")
    assert float((mesh.verts.norm(dim=-1) - RADIUS).abs().max()) < 2.0 / 511
    assert_closed_manifold(mesh.faces.numpy())


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 1}, "resolution"),
        ({"resolution": 4096}, "resolution"),
        ({"resolution": 16.5}, "resolution"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"bounds": (1.0, -1.0)}, "bounds"),
        ({"bounds": (1.0, 2.0, 3.0)}, "bounds"),
        ({"bounds": -1.0}, "bounds"),
        ({"method": "sparse"}, "method"),
        ({"block_size": 0}, "block_size"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"method": "coarse_to_fine", "coarse_resolution": 1}, "coarse_resolution"),
        ({"method": "coarse_to_fine", "coarse_resolution": 64}, "coarse_resolution"),
        ({"query_fn": lambda p: p}, "shape"),
        ({"query_fn": lambda p: torch.full((len(p),), float("nan"))}, "NaN"),
        ({"query_fn": lambda p: p.norm(dim=-1).numpy()}, "torch.Tensor"),
        ({"query_fn": "sphere"}, "callable"),
        ({"query_fn": lambda p: -torch.ones(len(p))}, "no surface"),
    ],
)
def test_extract_rejects_bad_input(kwargs, message):
    arguments = {"query_fn": sphere_density, "resolution": 16, "threshold": 0.0, "bounds": 1.0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        extract_isosurface(**arguments)


# --------------------------------------------------------------------------------------------------------------------
# Clean-up
# --------------------------------------------------------------------------------------------------------------------
def _two_spheres() -> Mesh:
    big = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=0, radius=0.1)
    small.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([big, small])
    colors = torch.from_numpy(np.random.default_rng(0).random((len(both.vertices), 3)).astype(np.float32))
    return Mesh(torch.tensor(both.vertices, dtype=torch.float32), torch.tensor(both.faces), vertex_colors=colors)


def test_cleanup_drops_small_components():
    mesh = _two_spheres()
    big_faces = mesh.num_faces - 20  # icosphere(0) has 20 faces, appended last
    cleaned = cleanup_mesh(mesh, min_component_fraction=0.05)
    assert cleaned.num_faces == big_faces and cleaned.num_verts == mesh.num_verts - 12
    assert bool((cleaned.verts[:, 0] < 2.0).all())
    torch.testing.assert_close(cleaned.vertex_colors, mesh.vertex_colors[: cleaned.num_verts])
    assert torch.equal(cleaned.faces, mesh.faces[:big_faces])
    kept = cleanup_mesh(mesh, min_component_fraction=0.0)
    assert kept.num_faces == mesh.num_faces


def test_cleanup_always_keeps_the_largest_piece():
    """The largest piece is kept even when it holds less than ``min_component_fraction`` of the faces (documented):
    with 0.99, the 1280-face sphere (98.5 % of the faces) stays and only the 20-face one goes, not the whole mesh."""
    mesh = _two_spheres()
    big_faces = mesh.num_faces - 20
    assert big_faces < 0.99 * mesh.num_faces
    cleaned = cleanup_mesh(mesh, min_component_fraction=0.99)
    assert cleaned.num_faces == big_faces
    assert torch.equal(cleaned.faces, mesh.faces[:big_faces])


def test_cleanup_fraction_threshold_is_inclusive_and_exact():
    """A piece is kept when it holds at least ``min_component_fraction`` of all faces: the 20-face sphere of 1300
    faces (1.54 %) stays at 0.015 and goes at 0.016."""
    mesh = _two_spheres()
    assert mesh.num_faces == 1300
    assert cleanup_mesh(mesh, min_component_fraction=20 / 1300).num_faces == 1300  # exactly the fraction: kept
    assert cleanup_mesh(mesh, min_component_fraction=0.015).num_faces == 1300
    assert cleanup_mesh(mesh, min_component_fraction=0.016).num_faces == 1280


def test_cleanup_keeps_pieces_split_only_at_uv_seams():
    """Vertices duplicated at a seam (same position) do not make separate components."""
    tm = trimesh.creation.icosphere(subdivisions=2)
    verts = torch.tensor(tm.vertices, dtype=torch.float32)
    faces = torch.tensor(tm.faces)
    upper = verts[faces].mean(1)[:, 1] > 0
    # Give the lower half its own copies of every vertex: index-disconnected, position-connected.
    split_faces = faces.clone()
    split_faces[~upper] += len(verts)
    mesh = Mesh(torch.cat([verts, verts]), split_faces, uvs=torch.zeros(2 * len(verts), 2))
    cleaned = cleanup_mesh(mesh, min_component_fraction=0.6)
    assert cleaned.num_faces == mesh.num_faces


def test_cleanup_decimation():
    mesh = _two_spheres()
    if importlib.util.find_spec("fast_simplification") is None:
        with pytest.raises(ImportError, match="fast-simplification"):
            cleanup_mesh(mesh, target_faces=200)
        pytest.skip("fast_simplification is not installed")
    decimated = cleanup_mesh(mesh, min_component_fraction=0.05, target_faces=200)
    assert 150 <= decimated.num_faces <= 220
    assert float((decimated.verts.norm(dim=-1) - 1.0).abs().max()) < 0.1  # still the unit sphere
    assert decimated.vertex_colors is not None and signed_volume(decimated) > 3.5


def test_cleanup_decimation_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # import fails
    with pytest.raises(ImportError, match="fast-simplification"):
        cleanup_mesh(_two_spheres(), target_faces=100)


def test_cleanup_smoothing_removes_noise_and_keeps_the_volume():
    """A unit sphere with 2 % radial noise: Taubin smoothing brings the vertices back near radius 1 (the analytic
    surface) and keeps the ball's volume; faces, colours and vertex order are kept."""
    sphere = trimesh.creation.icosphere(subdivisions=4)
    rng = np.random.default_rng(0)
    verts = sphere.vertices * (1.0 + 0.02 * rng.standard_normal((len(sphere.vertices), 1)))
    colors = torch.from_numpy(rng.random((len(verts), 3)).astype(np.float32))
    noisy = Mesh(torch.tensor(verts, dtype=torch.float32), torch.tensor(sphere.faces), vertex_colors=colors)
    smooth = cleanup_mesh(noisy, min_component_fraction=0.0, smooth_iterations=20)
    assert torch.equal(smooth.faces, noisy.faces) and torch.equal(smooth.vertex_colors, noisy.vertex_colors)
    error = lambda mesh: float((mesh.verts.double().norm(dim=-1) - 1.0).abs().mean())  # noqa: E731
    assert error(noisy) > 0.015 and error(smooth) < 0.45 * error(noisy)  # Taubin passes the lowest frequencies
    assert signed_volume(smooth) == pytest.approx(4.0 / 3.0 * math.pi, rel=0.02)
    assert torch.equal(cleanup_mesh(noisy, min_component_fraction=0.0).verts, noisy.verts)  # 0: off


def test_cleanup_rejects_bad_input():
    mesh = _two_spheres()
    with pytest.raises(ValueError, match="min_component_fraction"):
        cleanup_mesh(mesh, min_component_fraction=1.5)
    with pytest.raises(ValueError, match="target_faces"):
        cleanup_mesh(mesh, target_faces=0)
    with_uvs = Mesh(mesh.verts, mesh.faces, uvs=torch.zeros(mesh.num_verts, 2))
    with pytest.raises(ValueError, match="UVs"):
        cleanup_mesh(with_uvs, target_faces=100)
    with pytest.raises(ValueError, match="cannot smooth a mesh with UVs"):
        cleanup_mesh(with_uvs, smooth_iterations=5)
    for iterations in (-1, 10001, 2.5, True, "5"):
        with pytest.raises(ValueError, match="smooth_iterations"):
            cleanup_mesh(mesh, smooth_iterations=iterations)
        with pytest.raises(ValueError, match="smooth_iterations"):  # refused before any model work
            ReconstructOptions(smooth_iterations=iterations)
    assert cleanup_mesh(mesh, min_component_fraction=0.0, smooth_iterations=np.int64(1)).num_faces == mesh.num_faces


def test_no_surface_message_names_the_grid_spacing_that_can_miss_a_thin_part():
    """A slab 0.1 thick falls between the samples of a 5-per-axis grid over [-1, 1] (spacing 0.5): the error names
    the resolution and the spacing; 41 samples per axis (spacing 0.05) find the slab."""

    def slab(points: torch.Tensor) -> torch.Tensor:
        return ((points[:, 1] - 0.2).abs() < 0.05).float()

    with pytest.raises(ValueError, match=r"no surface at threshold 0\.5: .* at 5 samples per axis \(parts thinner than "
                       r"the spacing, 0\.5, can fall between samples"):  # fmt: skip
        extract_isosurface(slab, 5, 0.5, bounds=1.0)
    mesh = extract_isosurface(slab, 41, 0.5, bounds=1.0)
    assert abs(float(mesh.verts[:, 1].mean()) - 0.2) < 0.03
