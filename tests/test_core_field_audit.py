"""Mutation-audit checks of the triplane decoder, triplane lookup, isosurface extraction and the mesh container.

Every expected number comes from an independent reference: closed-form values, a hand-written numpy computation
or a documented constant, never from an earlier run of the code under test.
"""

from __future__ import annotations

import math

import mcubes
import numpy as np
import pytest
import torch
import trimesh

from monorecon.core.extract import cleanup_mesh, extract_isosurface
from monorecon.core.fields import TriplaneDecoder, trunc_exp
from monorecon.core.mesh import Mesh
from monorecon.core.triplane import sample_triplane, triplane_pyramid
from test_triplane import numpy_mlp


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --------------------------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------------------------
def test_decoder_defaults_are_the_triposr_decoder():
    """``TriplaneDecoder()`` is documented as TripoSR's decoder: SiLU hidden layers, density exp(raw - 1), sigmoid."""
    torch.manual_seed(0)
    decoder = TriplaneDecoder().double()
    assert [type(m).__name__ for m in decoder.layers] == ["Linear", "SiLU"] * 9 + ["Linear"]
    features = np.random.default_rng(0).normal(size=(6, 120))
    raw = numpy_mlp(decoder, features, lambda x: x * _sigmoid(x))
    out = decoder(torch.from_numpy(features))
    np.testing.assert_allclose(out["density"].detach().numpy(), np.exp(raw[:, :1] - 1.0), rtol=1e-10)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), _sigmoid(raw[:, 1:]), rtol=1e-10)
    # exp, not trunc_exp: with raw density 20, d density / d raw = exp(20 - 1), not clamped to exp(15).
    last = decoder.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    decoder(torch.zeros(1, 120, dtype=torch.float64))["density"].sum().backward()
    assert float(last.bias.grad[0]) == pytest.approx(math.exp(19.0), rel=1e-9)


def test_decoder_init_bounds():
    """TripoSR: kaiming_uniform with ReLU gain, |w| <= sqrt(6 / fan_in), biases left at PyTorch's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); G3DR: PyTorch's default init, |w| <= 1/sqrt(fan_in)."""
    torch.manual_seed(0)
    triposr = TriplaneDecoder.triposr()
    for layer in triposr.layers:
        if isinstance(layer, torch.nn.Linear):
            fan_in = layer.weight.shape[1]
            weight, bias = layer.weight.detach().abs(), layer.bias.detach().abs()
            assert float(weight.max()) <= math.sqrt(6 / fan_in)
            if layer.weight.numel() >= 4096:  # enough draws for the maximum to come near the bound
                assert float(weight.max()) > 0.95 * math.sqrt(6 / fan_in)
                # variance of U(-b, b) is b^2 / 3 = 2 / fan_in
                assert float(layer.weight.detach().var()) == pytest.approx(2 / fan_in, rel=0.1)
            assert 0 < float(bias.max()) <= 1 / math.sqrt(fan_in)  # PyTorch's default bias, not zeroed
    g3dr = TriplaneDecoder.g3dr()
    for layer in g3dr.layers:
        if isinstance(layer, torch.nn.Linear):
            assert float(layer.weight.detach().abs().max()) <= 1 / math.sqrt(layer.weight.shape[1])


@pytest.mark.parametrize("kwargs", [{"in_dim": 2.5}, {"hidden_dim": 0}, {"hidden_dim": 3.5}, {"n_hidden_layers": 1.5}])
def test_decoder_rejects_non_positive_or_fractional_sizes(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        TriplaneDecoder(**kwargs)


def test_decoder_under_autocast_keeps_the_feature_precision():
    """Layers may run in bfloat16 under autocast; density and colour keep the float32 features' dtype and match a
    float64 numpy reference to bfloat16 accuracy."""
    torch.manual_seed(0)
    decoder = TriplaneDecoder(8, 16, 2, weight_init=None)
    features = torch.randn(32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(features)
    assert out["density"].dtype == torch.float32 and out["rgb"].dtype == torch.float32
    raw = numpy_mlp(decoder, features.double().numpy(), lambda x: x * _sigmoid(x))
    np.testing.assert_allclose(out["density"].detach().numpy(), np.exp(raw[:, :1] - 1.0), rtol=0.1, atol=0.02)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), _sigmoid(raw[:, 1:]), atol=0.02)


def test_trunc_exp_backward_scales_the_incoming_gradient():
    """d/dx sum(w * trunc_exp(x)) = w * exp(min(x, 15)) for a non-uniform upstream gradient w."""
    x = torch.tensor([-2.0, 0.5, 14.0, 16.0, 30.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([3.0, -1.5, 0.25, 2.0, -0.5], dtype=torch.float64)
    (trunc_exp(x) * w).sum().backward()
    expected = w.numpy() * np.exp(np.minimum(x.detach().numpy(), 15.0))
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def test_decoder_and_lookup_refuse_scalar_features_and_integer_planes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 1\)"):
        TriplaneDecoder(1, 4, 1)(torch.tensor(1.0))
    with pytest.raises(ValueError, match="planes must be a floating-point tensor"):
        sample_triplane(torch.zeros(1, 3, 1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------------------------------------------------
# Pyramid
# --------------------------------------------------------------------------------------------------------------------
def test_pyramid_level_two_is_a_direct_antialiased_downsample_by_four():
    """Each level comes from the full-resolution planes: antialiased bilinear by 4 is the separable triangle filter
    [1, 3, 5, 7, 7, 5, 3, 1] / 32 (not the [1, 3, 3, 1] / 8 filter applied twice)."""
    gen = torch.Generator().manual_seed(4)
    planes = torch.rand(1, 3, 1, 32, 48, generator=gen, dtype=torch.float64)
    levels = triplane_pyramid(planes, 3)
    assert tuple(levels[2].shape) == (1, 3, 1, 8, 12)
    taps = np.array([1.0, 3.0, 5.0, 7.0, 7.0, 5.0, 3.0, 1.0]) / 32
    for k in range(3):
        image = planes[0, k, 0].numpy()
        for i in range(1, 7):
            for j in range(1, 11):
                window = image[4 * i - 2 : 4 * i + 6, 4 * j - 2 : 4 * j + 6]
                assert levels[2][0, k, 0, i, j].item() == pytest.approx(taps @ window @ taps, abs=1e-12)


def test_pyramid_rejects_widths_that_do_not_halve_and_fractional_levels():
    with pytest.raises(ValueError, match="halved"):
        triplane_pyramid(torch.zeros(1, 3, 1, 16, 20), 4)  # 16 halves 3 times, 20 does not
    with pytest.raises(ValueError, match="n_levels"):
        triplane_pyramid(torch.zeros(1, 3, 1, 16, 16), 2.5)


# --------------------------------------------------------------------------------------------------------------------
# Isosurface extraction
# --------------------------------------------------------------------------------------------------------------------
def _sphere(points):
    return 0.55 - points.norm(dim=-1)


def _recording(field, sizes):
    def query(points):
        sizes.append(len(points))
        return field(points)

    return query


def test_coarse_to_fine_default_coarse_grid_is_every_fourth_sample():
    """The first query is the whole coarse grid: by default every 4th sample, ceil(32 / 4) + 1 = 9 per axis."""
    seen = []

    def recording(points):
        seen.append(points.clone())
        return _sphere(points)

    extract_isosurface(recording, 33, 0.0, 1.0, method="coarse_to_fine", block_size=8)
    coarse = seen[0]
    assert coarse.shape == (9**3, 3)
    expected_axis = np.linspace(-1.0, 1.0, 9).astype(np.float32)
    for axis in range(3):
        np.testing.assert_array_equal(np.unique(coarse[:, axis].numpy()), expected_axis)


@pytest.mark.parametrize(("plane", "slabs"), [(0.3, 13), (0.9, 9)])
def test_coarse_to_fine_queries_exactly_the_samples_of_the_dilated_straddling_cells(plane, slabs):
    """Plane x = plane, resolution 65, coarse every 4th sample (17 per axis, cells of 1/8). x = 0.3 lies in coarse
    cell 10 (0.25..0.375): dilated to cells 9..11, fine x indices 36..48 (13 slabs). x = 0.9 lies in the last cell
    (15): dilated to 14..15, fine indices 56..64 (9 slabs). Queries: the 17^3 coarse samples, then each needed fine
    sample once."""
    sizes = []
    mesh = extract_isosurface(
        _recording(lambda p: plane - p[:, 0], sizes), 65, 0.0, 1.0, method="coarse_to_fine", block_size=24
    )
    assert sum(sizes) == 17**3 + slabs * 65 * 65
    np.testing.assert_allclose(mesh.verts[:, 0].numpy(), plane, atol=1e-6)
    assert mesh.num_verts == 65 * 65


def test_bounds_as_low_high_pair_and_inverted_box():
    """``(lo, hi)`` spans [lo, hi]^3: resolution 15 over (-0.8, 0.6) puts samples every 0.1, and every vertex has at
    least two coordinates on those samples (it lies on a grid edge)."""
    mesh = extract_isosurface(_sphere, 15, 0.0, (-0.8, 0.6))
    grid = -0.8 + 0.1 * np.arange(15)
    verts = mesh.verts.double().numpy()
    on_grid = np.abs(verts[..., None] - grid).min(-1) < 1e-6
    assert (on_grid.sum(axis=1) >= 2).all()
    assert verts.min() >= -0.8 - 1e-6 and verts.max() <= 0.6 + 1e-6
    np.testing.assert_allclose(np.linalg.norm(verts, axis=1), 0.55, atol=0.1 * 0.3)
    with pytest.raises(ValueError, match="bounds"):
        extract_isosurface(_sphere, 8, 0.0, ((-1.0, -1.0, 1.0), (1.0, 1.0, -1.0)))  # z inverted


def test_infinite_threshold_is_refused():
    for threshold in (float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            extract_isosurface(_sphere, 8, threshold, 1.0)


def test_vertices_are_float32_and_column_densities_are_accepted():
    """Documented: float32 vertices; query_fn may return (N,) or (N, 1)."""
    mesh = extract_isosurface(lambda p: _sphere(p)[:, None], 24, 0.0, 1.0)
    assert mesh.verts.dtype == torch.float32
    cell = 2.0 / 23
    np.testing.assert_allclose(mesh.verts.norm(dim=-1).numpy(), 0.55, atol=0.25 * cell)


def test_no_surface_error_reports_the_range_of_all_queried_densities():
    """density = -0.5 - |p| on a 5^3 grid over [-1, 1]^3: minimum -0.5 - sqrt(3) at the corners, maximum -0.5 at the
    centre sample; queried in 8 blocks, 7 points at a time, the range covers every query."""
    with pytest.raises(ValueError, match=r"\[-2\.23205, -0\.5\]"):
        extract_isosurface(lambda p: -0.5 - p.norm(dim=-1), 5, 0.0, 1.0, block_size=2, chunk_size=7)


def test_vertex_and_face_order_is_canonical():
    """Vertices sorted by (lower grid point x, y, z, edge axis), faces start at their smallest index and are sorted;
    the keys are recomputed from the world positions."""
    resolution = 13
    mesh = extract_isosurface(
        lambda p: 0.45 - (p - p.new_tensor([0.1, -0.05, 0.0])).norm(dim=-1), resolution, 0.0, 1.0, block_size=4
    )
    grid = (mesh.verts.double().numpy() + 1.0) * (resolution - 1) / 2.0
    rounded = np.round(grid)
    integral = np.abs(grid - rounded) < 1e-4
    assert (integral.sum(axis=1) >= 2).all()
    axis = np.where(integral.all(axis=1), 3, np.argmin(integral, axis=1))
    lower = np.where(integral, rounded, np.floor(grid)).astype(np.int64)
    keys = [(*point, a) for point, a in zip(lower.tolist(), axis.tolist(), strict=True)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    faces = mesh.faces.numpy()
    assert ((faces[:, 0] < faces[:, 1]) & (faces[:, 0] < faces[:, 2])).all()
    assert [tuple(f) for f in faces.tolist()] == sorted(tuple(f) for f in faces.tolist())


def test_coarse_to_fine_on_a_field_with_ties_matches_dense():
    """A 0 / 1 cube at threshold 0: the outside samples equal the threshold and count as outside, for the coarse
    classification too; the coarse-to-fine mesh is the dense one (a second method)."""

    def cube(points):
        return (points.abs().amax(-1) < 0.45).float()

    dense = extract_isosurface(cube, 33, 0.0, 1.0, block_size=8)
    fast = extract_isosurface(cube, 33, 0.0, 1.0, block_size=8, method="coarse_to_fine")
    assert torch.equal(fast.faces, dense.faces) and torch.equal(fast.verts, dense.verts)


def _grid_lookup(values):
    """query_fn reading a (R, R, R) array at the samples of [-1, 1]^3."""
    resolution = values.shape[0]

    def lookup(points):
        index = torch.round((points.double() + 1.0) * (resolution - 1) / 2).long()
        return torch.from_numpy(values)[index[:, 0], index[:, 1], index[:, 2]]

    return lookup


def _triangles(verts, faces):
    """Sorted oriented triangles of rounded positions, each starting at its smallest corner; degenerate ones out."""
    corners = [[tuple(round(c, 6) for c in corner) for corner in face] for face in verts[faces].tolist()]
    corners = [face for face in corners if len(set(face)) == 3]
    return sorted(tuple(face[k:] + face[:k]) for face in corners for k in [face.index(min(face))])


def _single_pass_triangles(values):
    """Reference: one PyMCubes pass over the whole grid, in world coordinates of [-1, 1]^3."""
    verts, faces = mcubes.marching_cubes(values, 0.0)
    return _triangles(-1.0 + verts * (2.0 / (values.shape[0] - 1)), faces.astype(np.int64))


def test_blocks_and_ties_on_an_integer_field_give_the_single_pass_triangles():
    """Densities in {-1, 0, 1} at threshold 0: many vertices sit on samples (ties) next to vertices half-way along
    edges. Reference: one PyMCubes pass over the whole grid, vertices welded by position, degenerate triangles
    dropped; compared as oriented triangles of world positions."""
    values = np.random.default_rng(7).integers(-1, 2, size=(9, 9, 9)).astype(np.float64)
    values[[0, -1]], values[:, [0, -1]], values[:, :, [0, -1]] = -1.0, -1.0, -1.0
    expected = _single_pass_triangles(values)
    assert len(expected) > 100
    for block_size in (3, 8):
        mesh = extract_isosurface(_grid_lookup(values), 9, 0.0, 1.0, block_size=block_size)
        assert _triangles(mesh.verts.double().numpy(), mesh.faces.numpy()) == expected
        assert torch.unique(mesh.verts, dim=0).shape[0] == mesh.num_verts  # coincident vertices welded


def test_a_vertex_on_a_sample_and_one_on_the_edge_leaving_it_stay_apart():
    """Sample (1, 1, 1) = 1e-17 next to -1e10: interpolation puts vertices exactly on it, while the x edge to a
    -1e-17 sample gets a vertex half-way: two vertices with the same lower grid point, different keys."""
    values = -np.ones((5, 5, 5))
    values[1:3, 1:3, 1:3] = 1.0
    values[1, 1, 1], values[1, 0, 1], values[2, 1, 1] = 1e-17, -1e10, -1e-17
    expected = _single_pass_triangles(values)
    assert any((-0.5, -0.5, -0.5) in face and (-0.25, -0.5, -0.5) in face for face in expected)
    for block_size in (2, 4):
        mesh = extract_isosurface(_grid_lookup(values), 5, 0.0, 1.0, block_size=block_size)
        assert _triangles(mesh.verts.double().numpy(), mesh.faces.numpy()) == expected


def test_coarse_grid_is_queried_in_whole_slabs_of_at_most_one_chunk():
    """17 coarse samples per axis: a 17 x 17 slab is 289 points, so a 600-point chunk takes 2 slabs per call
    (578 points, the last call 1 slab), not chunks cut across slabs from one array of the whole grid."""
    sizes = []
    extract_isosurface(_recording(_sphere, sizes), 65, 0.0, 1.0, method="coarse_to_fine", chunk_size=600)
    assert sizes[:9] == [578] * 8 + [289]


# --------------------------------------------------------------------------------------------------------------------
# Clean-up
# --------------------------------------------------------------------------------------------------------------------
def _octahedron():
    verts = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return Mesh(verts, faces)


def test_octahedron_is_closed_and_outward():
    mesh = _octahedron()
    assert mesh.is_closed
    centroids = mesh.verts[mesh.faces].mean(1)
    assert bool(((mesh.face_normals * centroids).sum(-1) > 0).all())


@pytest.mark.parametrize(("iterations", "scale"), [(1, 0.5), (2, 0.5 * 1.53), (3, 0.5 * 1.53 * 0.5)])
def test_taubin_smoothing_of_the_octahedron_matches_the_closed_form(iterations, scale):
    """Each vertex of the regular octahedron has its 4 neighbours averaging to the origin: the Laplacian is -v, so a
    lambda step (0.5) scales by 1 - 0.5 and a mu step (-0.53) by 1 + 0.53, alternately."""
    smooth = cleanup_mesh(_octahedron(), min_component_fraction=0.0, smooth_iterations=iterations)
    torch.testing.assert_close(smooth.verts, _octahedron().verts * scale, rtol=0, atol=1e-6)


def test_cleanup_fraction_of_one_is_refused():
    with pytest.raises(ValueError, match="min_component_fraction"):
        cleanup_mesh(_octahedron(), min_component_fraction=1.0)


def test_decimation_carries_colours_from_the_nearest_original_vertex():
    pytest.importorskip("fast_simplification")
    sphere = trimesh.creation.icosphere(subdivisions=3)
    colors = torch.from_numpy(np.random.default_rng(5).random((len(sphere.vertices), 3)).astype(np.float32))
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces), vertex_colors=colors)
    decimated = cleanup_mesh(mesh, min_component_fraction=0.0, target_faces=300)
    assert decimated.num_faces < mesh.num_faces
    distances = ((decimated.verts.double()[:, None] - mesh.verts.double()[None]) ** 2).sum(-1).sqrt()
    # Collapses may put a vertex half-way between two originals: any vertex within float32 rounding of the
    # nearest distance is a valid source of the colour.
    candidates = distances <= distances.min(dim=1, keepdim=True).values + 1e-6
    same_colour = (decimated.vertex_colors[:, None] == colors[None]).all(-1)
    assert bool((candidates & same_colour).any(dim=1).all())


def test_target_faces_at_or_above_the_face_count_leaves_the_mesh_alone():
    pytest.importorskip("fast_simplification")
    sphere = trimesh.creation.icosphere(subdivisions=1)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    for target in (mesh.num_faces, mesh.num_faces + 1):
        kept = cleanup_mesh(mesh, min_component_fraction=0.0, target_faces=target)
        assert torch.equal(kept.faces, mesh.faces) and torch.equal(kept.verts, mesh.verts)


# --------------------------------------------------------------------------------------------------------------------
# Mesh container
# --------------------------------------------------------------------------------------------------------------------
def test_mesh_refuses_an_index_equal_to_the_vertex_count_and_an_empty_face_list():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="out of range"):
        Mesh(verts, torch.tensor([[0, 1, 3]]))  # valid indices are 0..2
    with pytest.raises(ValueError, match="empty"):
        Mesh(verts, torch.zeros(0, 3, dtype=torch.long))
    assert Mesh(verts, torch.tensor([[0, 1, 2]])).num_faces == 1


def test_placement_heights_at_the_documented_limits_are_accepted():
    """[1e-6, 1e3] is inclusive: the octahedron (2 tall) scales by height / 2 exactly at both ends."""
    mesh = _octahedron()
    for height in (1e-6, 1e3):
        placed = mesh.placed(height, "center")
        assert float(placed.bounds[1, 1] - placed.bounds[0, 1]) == pytest.approx(height, rel=1e-6)
    for height in (0.99e-6, 1.01e3, float("inf")):
        with pytest.raises(ValueError, match="height must lie"):
            mesh.placed(height)


def test_normalized_refuses_a_zero_box():
    with pytest.raises(ValueError, match="box must be positive"):
        _octahedron().normalized(0.0)
    torch.testing.assert_close(_octahedron().normalized(1.0).verts, _octahedron().verts / 2)


def test_ply_colours_of_another_vertex_count_are_ignored():
    """trimesh's raw PLY data is used for colours only when it has one row per vertex."""
    sphere = trimesh.creation.icosphere(subdivisions=0)
    count = len(sphere.vertices)
    visual = trimesh.visual.TextureVisuals(uv=np.zeros((count, 2)))
    tm = trimesh.Trimesh(sphere.vertices, sphere.faces, visual=visual, process=False)
    for rows, expected in ((count, True), (count + 1, False)):
        data = np.zeros(rows, dtype=[("red", "u1"), ("green", "u1"), ("blue", "u1")])
        data["red"] = 255
        tm.metadata["_ply_raw"] = {"vertex": {"data": data}}
        colours = Mesh.from_trimesh(tm).vertex_colors
        assert (colours is not None) == expected
        if expected:
            torch.testing.assert_close(colours, torch.tensor([[1.0, 0.0, 0.0]]).expand(count, 3))


def test_a_surface_that_collapses_to_a_point_is_no_surface():
    """One sample a hair above the level among samples far below it: marching cubes puts every vertex on that
    sample, the weld drops every face, and the caller gets the documented no-surface error (not an empty Mesh)."""
    with pytest.raises(ValueError, match=r"no surface at threshold 0\.0"):
        extract_isosurface(lambda p: torch.where((p - 0.5).norm(dim=-1) < 1e-3, 1e-9, -1.0), 5, 0.0, 1.0)


@pytest.mark.parametrize("kwargs", [{"hidden_dim": 64.0}, {"n_hidden_layers": 2.0}, {"in_dim": True}])
def test_decoder_sizes_must_be_integers_not_integral_floats_or_bools(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        TriplaneDecoder(**kwargs)
