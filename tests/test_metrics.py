"""Metrics and alignment against analytic values and known transforms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from monorecon.core.mesh import Mesh
from monorecon.eval.align import (
    align_meshes,
    align_point_clouds,
    candidate_rotations,
    cube_rotations,
    normalize_to_unit_box,
)
from monorecon.eval.metrics import (
    chamfer_and_fscore,
    mask_iou,
    psnr,
    sample_surface,
    solid_occupancy,
    ssim,
    volume_iou,
    winding_number,
)
from paths import SHARED_MESHES

MESHES = str(SHARED_MESHES)


def _sphere_points(radius: float, n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def _box(extents, centre) -> Mesh:
    tm = trimesh.creation.box(extents=extents)
    tm.apply_translation(centre)
    return Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))


def _rotation(axis, angle_deg: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(math.radians(angle_deg), axis)[:3, :3]


def test_concentric_spheres_chamfer_is_radius_gap():
    # Every point of one sphere is |r1 - r2| from the other sphere (along its radius): CD = |r1 - r2|.
    r1, r2 = 0.5, 0.8
    inner, outer = _sphere_points(r1, 20000, 0), _sphere_points(r2, 20000, 1)
    out = chamfer_and_fscore(inner, outer, thresholds=(0.2, 0.5))
    assert out["chamfer"] == pytest.approx(r2 - r1, rel=2e-3)
    assert out["fscore@0.2"] == 0.0
    assert out["fscore@0.5"] == 1.0


def test_identical_meshes_score_perfectly():
    mesh = _box((1.0, 0.6, 0.4), (0.0, 0.0, 0.0))
    points = sample_surface(mesh, 5000, seed=3)
    out = chamfer_and_fscore(points, points)
    assert out["chamfer"] == 0.0
    assert out["fscore@0.1"] == 1.0
    # Two independent samplings of the same surface: tiny CD, F-score 1 at 0.1.
    other = sample_surface(mesh, 5000, seed=4)
    assert chamfer_and_fscore(points, other)["fscore@0.1"] == 1.0


def test_fscore_precision_recall_on_hand_made_sets():
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    pred = np.array([[0.0, 0.05, 0], [1, 0.05, 0], [10, 0, 0]])  # 2 of 3 close; gt 0 and 1 covered
    out = chamfer_and_fscore(pred, gt, thresholds=(0.1,))
    assert out["precision@0.1"] == pytest.approx(2 / 3)
    assert out["recall@0.1"] == pytest.approx(2 / 4)
    assert out["fscore@0.1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_chamfer_averages_both_directional_means_by_hand():
    """CD = (mean_p min_q |p - q| + mean_q min_p |q - p|) / 2, unsquared, on sets whose two directions differ."""
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    pred = np.array([[0.0, 0.05, 0], [1, 0.05, 0], [10, 0, 0]])
    pred_to_gt = (0.05 + 0.05 + 7.0) / 3
    gt_to_pred = (0.05 + 0.05 + math.hypot(1.0, 0.05) + math.hypot(2.0, 0.05)) / 4
    assert chamfer_and_fscore(pred, gt)["chamfer"] == pytest.approx((pred_to_gt + gt_to_pred) / 2, rel=1e-12)
    assert chamfer_and_fscore(gt, pred)["chamfer"] == pytest.approx((pred_to_gt + gt_to_pred) / 2, rel=1e-12)


def test_sample_surface_is_deterministic_and_on_surface():
    mesh = _box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    a, b = sample_surface(mesh, 1000, seed=7), sample_surface(mesh, 1000, seed=7)
    np.testing.assert_array_equal(a, b)
    # On the unit cube surface: the largest |coordinate| is 0.5.
    np.testing.assert_allclose(np.abs(a).max(axis=1), 0.5, atol=1e-6)


def test_sample_surface_is_area_weighted():
    """Two separate triangles of areas 0.5 and 1.5 (in the planes z = 0 and z = 1): a quarter of the points on the
    first, three quarters on the second, each inside its triangle."""
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]])
    mesh = Mesh(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]))
    points = sample_surface(mesh, 20000, seed=5)
    on_big = points[:, 2] == 1.0
    assert np.isin(points[:, 2], [0.0, 1.0]).all()
    assert on_big.mean() == pytest.approx(0.75, abs=0.015)  # binomial SD 0.003
    assert (points[~on_big, 0] + points[~on_big, 1] <= 1 + 1e-12).all()
    assert (points[on_big, 0] / 3 + points[on_big, 1] <= 1 + 1e-12).all()


def test_winding_number_inside_outside():
    mesh = _box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.3, 0.2], [0.9, 0.0, 0.0], [0.0, 2.0, 0.0]])
    w = winding_number(mesh, points)
    np.testing.assert_allclose(w.numpy(), [1.0, 1.0, 0.0, 0.0], atol=1e-9)


def test_volume_iou_of_offset_boxes():
    # Unit boxes offset by 0.5 along x: intersection 0.5, union 1.5 -> 1/3. Grid cells of 1/16 align with the faces.
    a = _box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    b = _box((1.0, 1.0, 1.0), (0.5, 0.0, 0.0))
    assert volume_iou(a, b, resolution=32, bounds=(-1.0, 1.0)) == pytest.approx(1 / 3, abs=1e-9)
    assert volume_iou(a, a, resolution=16) == 1.0
    c = _box((0.5, 0.5, 0.5), (3.0, 0.0, 0.0))
    assert volume_iou(a, c, resolution=16) == 0.0


def test_volume_iou_default_grid_is_both_boxes_padded_by_one_cell(monkeypatch):
    """Without bounds the grid spans the union of both bounding boxes (here -0.5 .. 1.5 on the widest axis), padded
    by one cell ((1.5 - -0.5) / 8 = 0.25) on each side."""
    from monorecon.eval import metrics

    grids = []
    real = metrics.solid_occupancy
    monkeypatch.setattr(
        metrics, "solid_occupancy", lambda mesh, lo, hi, r: grids.append((lo, hi, r)) or real(mesh, lo, hi, r)
    )
    a = _box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    b = _box((1.0, 1.0, 1.0), (1.0, 0.0, 0.0))
    assert metrics.volume_iou(a, b, resolution=8) == 0.0  # touching, not overlapping
    assert grids == [pytest.approx((-0.75, 1.75, 8))] * 2


def _trimesh_to_mesh(tm: trimesh.Trimesh) -> Mesh:
    return Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))


def test_solid_occupancy_matches_winding_numbers():
    """The ray-crossing occupancy against the generalised winding number (an independent, brute-force definition) at
    every cell centre: a torus (a hole through it), two overlapping closed spheres (inside both: winding number 2)
    and the teapot of ``../shared/data``, which is not closed."""
    second = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    second.apply_translation([0.3, 0.1, 0.0])
    overlapping = trimesh.util.concatenate([trimesh.creation.icosphere(subdivisions=3, radius=0.4), second])
    teapot = trimesh.load(f"{MESHES}/teapot.ply", force="mesh", process=False)
    assert not teapot.is_watertight
    teapot.apply_scale(1.0 / teapot.extents.max())
    teapot.apply_translation(-teapot.bounds.mean(0))
    resolution, lo, hi = 16, -0.55, 0.55
    axis = lo + (np.arange(resolution) + 0.5) * (hi - lo) / resolution
    centres = torch.tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    for tm in (trimesh.creation.torus(0.35, 0.15), overlapping, teapot):
        mesh = _trimesh_to_mesh(tm)
        expected = (winding_number(mesh, centres) > 0.5).numpy().reshape((resolution,) * 3)
        occupancy = solid_occupancy(mesh, lo, hi, resolution)
        assert 0.05 < expected.mean() < 0.6
        np.testing.assert_array_equal(occupancy, expected)


def test_solid_occupancy_rejects_absurd_grids():
    box = _box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for lo, hi, resolution in ((0.5, -0.5, 8), (-1.0, math.nan, 8), (-1.0, 1.0, 0)):
        with pytest.raises(ValueError, match=r"resolution|bounds"):
            solid_occupancy(box, lo, hi, resolution)


def test_volume_iou_of_concentric_spheres():
    inner = _trimesh_to_mesh(trimesh.creation.icosphere(subdivisions=5, radius=0.5))
    outer = _trimesh_to_mesh(trimesh.creation.icosphere(subdivisions=5, radius=0.8))
    assert volume_iou(inner, outer, resolution=64) == pytest.approx((0.5 / 0.8) ** 3, abs=0.01)


def test_psnr_of_known_mse():
    target = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pred = target + 0.1  # MSE 0.01 -> 20 dB
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-9)
    assert psnr(target, target) == float("inf")
    assert psnr(pred * 2, target * 2, max_value=2.0) == pytest.approx(20.0, abs=1e-9)


def test_ssim_and_mask_iou():
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert ssim(image, 1.0 - image) < 0.5
    a = torch.zeros(10, 10)
    b = torch.zeros(10, 10)
    a[:, :6] = 1.0  # 60 pixels
    b[:, 4:] = 1.0  # 60 pixels, overlap 20
    assert mask_iou(a, b) == pytest.approx(20 / 100)
    assert mask_iou(torch.zeros(4, 4), torch.zeros(4, 4)) == 1.0


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="point array"):
        chamfer_and_fscore(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        chamfer_and_fscore(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="thresholds"):
        chamfer_and_fscore(np.zeros((4, 3)), np.zeros((4, 3)), thresholds=(-1.0,))
    with pytest.raises(ValueError, match="target"):
        psnr(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="n_points"):
        sample_surface(_box((1, 1, 1), (0, 0, 0)), 0)
    with pytest.raises(ValueError, match="resolution"):
        volume_iou(_box((1, 1, 1), (0, 0, 0)), _box((1, 1, 1), (0, 0, 0)), resolution=1)


def test_cube_rotations_are_the_24_proper_ones():
    rotations = cube_rotations()
    assert rotations.shape == (24, 3, 3)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0)
    assert len({r.tobytes() for r in rotations}) == 24


def test_candidate_rotations_are_cube_rotations_then_uniform_proper_rotations():
    """The search starts from the 24 cube rotations, then seeded rotations: every one proper (orthonormal, det +1);
    uniform on SO(3), so their mean matrix is about zero (Haar measure: E[R] = 0; SD of an entry 0.013 here)."""
    rotations = candidate_rotations(2000, seed=1)
    assert rotations.shape == (2024, 3, 3)
    np.testing.assert_array_equal(rotations[:24], cube_rotations())
    np.testing.assert_allclose(
        rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (2024, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    assert np.abs(rotations[24:].mean(axis=0)).max() < 0.06
    np.testing.assert_array_equal(candidate_rotations(5, seed=1), candidate_rotations(5, seed=1))
    assert not np.allclose(candidate_rotations(5, seed=1)[24:], candidate_rotations(5, seed=2)[24:])
    assert candidate_rotations(0).shape == (24, 3, 3)


def test_normalize_to_unit_box():
    points = np.random.default_rng(0).uniform([-1, 2, 5], [3, 3, 6], size=(500, 3))
    normalized, transform = normalize_to_unit_box(points)
    extent = normalized.max(0) - normalized.min(0)
    assert extent.max() == pytest.approx(1.0)
    np.testing.assert_allclose((normalized.max(0) + normalized.min(0)) / 2, 0.0, atol=1e-12)
    np.testing.assert_allclose(normalized, points @ transform[:3, :3].T + transform[:3, 3])


def test_alignment_never_mirrors_a_mirror_image():
    """A mirror image (x -> -x) of an asymmetric cloud fits best mirrored, but the alignment is rigid: the result is a
    proper rotation (orthonormal, determinant +1), as the module docstring promises ("no reflection")."""
    points = np.random.default_rng(3).uniform(-1, 1, size=(400, 3)) * [0.5, 0.3, 0.02]
    points[:, 2] += 0.6 * points[:, 0] ** 2 + 0.3 * points[:, 1] ** 2  # a shallow bowl opening up (+Z) ...
    points[:, 0] += 0.5 * points[:, 1] ** 2  # ... bent towards +X: turned about Y it opens down, a mirror fits it
    mirrored = points * [-1.0, 1.0, 1.0]
    alignment = align_point_clouds(mirrored, points, n_random=0, coarse_points=200, fine_points=400, seed=0)
    np.testing.assert_allclose(alignment.rotation @ alignment.rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(alignment.rotation) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("axis, angle", [((0.3, 1.0, -0.2), 137.0), ((1.0, 0.2, 0.5), -71.0)])
def test_alignment_recovers_a_known_rotation_of_the_bunny(axis, angle):
    tm = trimesh.load(f"{MESHES}/bunny.ply", force="mesh", process=False)
    mesh = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))
    points, _ = normalize_to_unit_box(sample_surface(mesh, 4000, seed=0))
    rotation = _rotation(axis, angle)
    moved = points @ rotation.T + np.array([0.1, -0.2, 0.05])
    alignment = align_point_clouds(moved, points, seed=0)
    # The recovered transform undoes the rotation: R_found @ R = I.
    residual = alignment.rotation @ rotation
    angle_error = math.degrees(math.acos(np.clip((np.trace(residual) - 1) / 2, -1, 1)))
    assert angle_error < 1.0
    assert alignment.chamfer < 5e-3


def test_align_meshes_without_search_still_refines_by_icp():
    """``search=False`` starts ICP from the identity: a bunny turned by 12 degrees is turned back (the prediction's
    transform holds the normalising scale times the found rotation, which undoes the known one)."""
    tm = trimesh.load(f"{MESHES}/bunny.ply", force="mesh", process=False)
    gt = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))
    rotation = _rotation((0.2, 1.0, 0.1), 12.0)
    pred = Mesh(gt.verts @ torch.tensor(rotation.T, dtype=torch.float32), gt.faces)
    _, _, pred_transform, _ = align_meshes(pred, gt, n_points=2000, search=False)
    linear = pred_transform[:3, :3]
    found = linear / np.cbrt(np.linalg.det(linear))
    residual = found @ rotation
    assert math.degrees(math.acos(np.clip((np.trace(residual) - 1) / 2, -1, 1))) < 3.0


def test_metrics_command_aligns_a_moved_copy_and_writes_json(tmp_path, capsys):
    """``monorecon metrics``: the bunny turned Z-up, scaled and shifted scores against the bunny as the bunny does
    against itself (F = 1, Chamfer at the sampling's own noise) once aligned, and clearly lower with ``--same-frame``
    (ICP alone does not undo a quarter turn)."""
    from monorecon.cli import main

    tm = trimesh.load(f"{MESHES}/bunny.ply", force="mesh", process=False)
    moved = tm.copy()
    moved.vertices = 2.5 * tm.vertices @ _rotation((1.0, 0.0, 0.0), 90.0).T + np.array([4.0, -1.0, 2.0])
    moved.export(tmp_path / "moved.ply")

    def scores(*argv: str) -> dict[str, float]:
        assert main(["metrics", *argv, "--points", "3000"]) == 0
        return {k: float(v) for k, v in (line.split(" ", 2)[:2] for line in capsys.readouterr().out.splitlines())}

    itself = scores(f"{MESHES}/bunny.ply", f"{MESHES}/bunny.ply", "--same-frame")
    report = tmp_path / "scores.json"
    aligned = scores(str(tmp_path / "moved.ply"), f"{MESHES}/bunny.ply", "--json", str(report), "--volume-iou", "64")
    assert itself["fscore@0.1"] == aligned["fscore@0.1"] == aligned["fscore@0.5"] == 1.0
    assert aligned["volume_iou"] > 0.98 and "volume_iou" not in itself  # the solids overlap once aligned
    assert aligned["chamfer"] < 1.1 * itself["chamfer"]
    written = json.loads(report.read_text())
    assert written["volume_iou"] == pytest.approx(aligned["volume_iou"], abs=1e-4)
    assert written["fscore@0.2"] == 1.0 and written["chamfer"] == pytest.approx(aligned["chamfer"], abs=1e-5)
    assert scores(str(tmp_path / "moved.ply"), f"{MESHES}/bunny.ply", "--same-frame")["fscore@0.1"] < 0.9


def test_shape_scores_refuse_too_few_points_and_a_negative_seed():
    from monorecon.eval.harness import shape_scores

    tetra = Mesh(torch.eye(4, 3), torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]))
    with pytest.raises(ValueError, match="n_points"):
        shape_scores(tetra, tetra, n_points=10)
    with pytest.raises(ValueError, match="seed must lie in"):
        shape_scores(tetra, tetra, seed=-1)
