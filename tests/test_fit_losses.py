"""Losses of pose fitting and MeshInversion against hand-computed values (monorecon.losses.fitting)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monorecon.losses.fitting import (
    chamfer_mask_loss,
    chamfer_texture_cost,
    chamfer_texture_loss,
    face_neighbors,
    image_points,
    latent_loss,
    mask_points,
    sample_at_points,
    silhouette_loss,
    smoothness_loss,
    squared_distances,
)

EPS_XY = 1 - (2 * 0.16) ** 2  # 0.8976


def test_silhouette_loss_is_sum_of_squares():
    pred = torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[1.0, 1.0], [1.0, 1.0]]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # image 0: 0.25 + 0 + 0 + 0.0625; image 1: 0 + 0 + 1 + 1
    assert torch.allclose(silhouette_loss(pred, target), torch.tensor([0.3125, 2.0]), atol=1e-6)
    with pytest.raises(ValueError, match="silhouette shapes differ"):
        silhouette_loss(pred, torch.zeros(3, 2))


def test_mask_points_are_ndc_pixel_centres():
    mask = torch.tensor([[0.0, 1.0, 0.0], [0.95, 0.0, 0.5]])  # H=2, W=3
    points = mask_points(mask, 0.9)
    # (row 0, col 1): x = 1.5/3*2-1 = 0, y = 1 - 0.5/2*2 = 0.5; (row 1, col 0): x = -2/3, y = -0.5
    assert torch.allclose(points, torch.tensor([[0.0, 0.5], [-2 / 3, -0.5]]), atol=1e-6)
    with pytest.raises(ValueError, match="mask is empty"):
        mask_points(torch.zeros(4, 4))


def test_sample_at_points_hits_pixel_centres():
    values = torch.arange(12.0).reshape(1, 3, 4)  # C=1, H=3, W=4
    points = mask_points(torch.ones(3, 4), 0.5)  # every centre, row-major
    assert torch.allclose(sample_at_points(values, points)[:, 0], torch.arange(12.0), atol=1e-5)


def test_image_points_positions_and_values():
    image = torch.arange(2 * 2 * 2.0).reshape(2, 2, 2)  # C=2
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos, val = image_points(image, mask, 0.5)
    assert torch.allclose(pos, torch.tensor([[-0.5, 0.5], [0.5, -0.5]]))
    assert torch.equal(val, torch.tensor([[0.0, 4.0], [3.0, 7.0]]))
    with pytest.raises(ValueError, match="sizes differ"):
        image_points(image, torch.ones(3, 3))


def test_squared_distances_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g)
    brute = torch.tensor([[sum((float(x) - float(y)) ** 2 for x, y in zip(p, q, strict=True)) for q in b] for p in a])
    assert torch.allclose(squared_distances(a, b), brute, atol=1e-5)


def test_chamfer_mask_loss_hand_computed():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    target = torch.tensor([[0.0, 1.0]])
    # pred -> target: [1, 2] -> 1.5; target -> pred: min(1, 2) = 1; total 2.5
    assert torch.allclose(chamfer_mask_loss(pred, target), torch.tensor([2.5]), atol=1e-6)
    assert torch.allclose(chamfer_mask_loss(pred, pred[0]), torch.tensor([0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="empty point set"):
        chamfer_mask_loss(pred, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="target batch"):
        chamfer_mask_loss(pred, torch.zeros(3, 4, 2))


def test_chamfer_texture_cost_formula():
    pred_pos, pred_rgb = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.2, 0.0, 0.0]])
    target_pos = torch.tensor([[0.5, 0.0], [0.3, 0.0], [0.32, 0.0], [0.0, 0.0]])
    target_rgb = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 1.0]])
    cost = chamfer_texture_cost(pred_pos, pred_rgb, target_pos, target_rgb)
    expected = torch.tensor(
        [
            [
                (EPS_XY + 0.25) * 1.04,  # d_xy = 0.25 beyond the tolerance: xy_term = eps + d_xy
                1.04,  # |dp| = 0.3 < 0.32: no position penalty
                1.04,  # |dp| = 0.32 exactly: still 1
                2.0,  # same position, d_rgb = 1
            ]
        ]
    )
    assert torch.allclose(cost, expected, atol=1e-6)


def test_chamfer_texture_no_position_penalty_within_tolerance():
    g = torch.Generator().manual_seed(1)
    pred_pos = torch.rand(50, 2, generator=g) * 2 - 1
    angles = torch.rand(50, generator=g) * 2 * math.pi
    radii = torch.rand(50, generator=g) * 0.3199
    target_pos = pred_pos + torch.stack([angles.cos(), angles.sin()], -1) * radii[:, None]
    colours = torch.rand(50, 3, generator=g)
    cost = chamfer_texture_cost(pred_pos, colours, target_pos, colours)
    assert torch.allclose(cost.diagonal(), torch.ones(50), atol=1e-6)  # xy_term 1, d_rgb 0


def test_chamfer_texture_loss_directions():
    pred_pos = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    pred_val = torch.tensor([[0.0], [1.0]])
    target_pos = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target_val = torch.tensor([[0.5], [0.0], [1.0]])
    d_xy = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 1.0]])
    d_val = torch.tensor([[0.25, 0.0, 1.0], [0.25, 1.0, 0.0]])
    xy_term = torch.where(d_xy > (2 * 0.16) ** 2, EPS_XY + d_xy, torch.ones_like(d_xy))
    cost = xy_term * (d_val + 1)
    forward = cost.min(1).values.mean()
    backward = cost.min(0).values.mean()
    one_way = chamfer_texture_loss(pred_pos, pred_val, target_pos, target_val)
    both = chamfer_texture_loss(pred_pos, pred_val, target_pos, target_val, bidirectional=True)
    assert abs(float(one_way) - float(forward)) < 1e-6
    assert abs(float(both) - float((forward + backward) / 2)) < 1e-6
    with pytest.raises(ValueError, match="empty point set"):
        chamfer_texture_loss(pred_pos[:0], pred_val[:0], target_pos, target_val)
    with pytest.raises(ValueError, match="pred_values"):
        chamfer_texture_loss(pred_pos, torch.zeros(3, 1), target_pos, target_val)


def test_chamfer_texture_subsampling_is_seeded():
    g = torch.Generator().manual_seed(2)
    a, av, b, bv = (torch.rand(40, 2, generator=g), torch.rand(40, 3, generator=g), torch.rand(30, 2, generator=g),
                    torch.rand(30, 3, generator=g))  # fmt: skip
    first = chamfer_texture_loss(a, av, b, bv, max_points=10, generator=torch.Generator().manual_seed(5))
    again = chamfer_texture_loss(a, av, b, bv, max_points=10, generator=torch.Generator().manual_seed(5))
    assert float(first) == float(again)
    full = chamfer_texture_loss(a, av, b, bv, max_points=None)
    assert float(full) == float(chamfer_texture_loss(a, av, b, bv, max_points=40))


def test_latent_loss():
    z = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    assert torch.allclose(latent_loss(z), torch.tensor([1.25, 2.25]))


TETRAHEDRON_VERTS = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
TETRAHEDRON_FACES = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
OCTAHEDRON_VERTS = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
OCTAHEDRON_FACES = torch.tensor(
    [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
)


def _neighbors_brute_force(faces: torch.Tensor) -> list[list[int]]:
    result = []
    for f, face in enumerate(faces.tolist()):
        row = []
        for k in range(3):
            edge = {face[k], face[(k + 1) % 3]}
            others = [g for g, other in enumerate(faces.tolist()) if g != f and edge <= set(other)]
            row.append(others[0])
        result.append(row)
    return result


@pytest.mark.parametrize("faces", [TETRAHEDRON_FACES, OCTAHEDRON_FACES])
def test_face_neighbors_brute_force(faces):
    assert face_neighbors(faces).tolist() == _neighbors_brute_force(faces)


def test_face_neighbors_rejects_open_mesh():
    with pytest.raises(ValueError, match="closed manifold"):
        face_neighbors(TETRAHEDRON_FACES[:3])


@pytest.mark.parametrize(
    ("verts", "faces", "cos"),
    [(TETRAHEDRON_VERTS, TETRAHEDRON_FACES, -1 / 3), (OCTAHEDRON_VERTS, OCTAHEDRON_FACES, 1 / 3)],
)
def test_smoothness_loss_regular_solids(verts, faces, cos):
    # Every pair of neighbouring faces has normals with the same cosine: L = (F/2) * 3 * (cos - 1)^2.
    expected = faces.shape[0] / 2 * 3 * (cos - 1) ** 2
    loss = smoothness_loss(verts[None], faces, face_neighbors(faces))
    assert abs(float(loss[0]) - expected) < 1e-5


def test_smoothness_loss_brute_force_bipyramid():
    # Square bipyramid: (F / 2) * sum over the 3 neighbour slots of the mean (cos - 1)^2, summed pair by pair here.
    verts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [1.0, 1, 0], [0.0, 1, 0], [0.5, 0.5, 0.3], [0.5, 0.5, -0.3]])
    top = [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    bottom = [[1, 0, 5], [2, 1, 5], [3, 2, 5], [0, 3, 5]]
    faces = torch.tensor(top + bottom)
    neighbors = face_neighbors(faces)
    v = verts[faces]
    normals = torch.nn.functional.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    brute = 0.0
    for k, f in itertools.product(range(3), range(8)):
        brute += (float(normals[f] @ normals[neighbors[f, k]]) - 1) ** 2 / 8
    assert abs(float(smoothness_loss(verts[None], faces, neighbors)[0]) - brute * 4) < 1e-5


def test_chamfer_texture_subsampling_keeps_exactly_max_points():
    """Each set is cut to exactly ``max_points`` distinct points and the loss is the mean over the kept ones.

    One target point at the origin with value 0 and predictions at the origin with values v_i: C_i = v_i^2 + 1, so the
    gradient of the one-way loss is 2 v_i / k on the k kept predictions and 0 elsewhere. Bidirectionally, the target
    side's gradient reaches exactly the k kept target points.
    """
    n, k = 40, 10
    values = (torch.arange(n, dtype=torch.float32)[:, None] + 1) / n
    pred_values = values.clone().requires_grad_(True)
    loss = chamfer_texture_loss(torch.zeros(n, 2), pred_values, torch.zeros(1, 2), torch.zeros(1, 1), max_points=k,
                                generator=torch.Generator().manual_seed(3))  # fmt: skip
    loss.backward()
    kept = pred_values.grad[:, 0] != 0
    assert int(kept.sum()) == k
    torch.testing.assert_close(pred_values.grad[kept], 2 * values[kept] / k)
    torch.testing.assert_close(loss, (values[kept].square() + 1).mean())

    target_values = values.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(4)
    both = chamfer_texture_loss(torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(n, 2), target_values,
                                bidirectional=True, max_points=k, generator=generator)  # fmt: skip
    both.backward()
    assert int((target_values.grad[:, 0] != 0).sum()) == k
