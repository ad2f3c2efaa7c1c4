"""Alignment of a predicted shape to the ground truth before computing metrics (SPEC §5 protocol).

1. :func:`normalize_to_unit_box`: each shape is centred on its bounding-box centre and scaled uniformly so that the
   longest side of its bounding box is 1 (the box [-0.5, 0.5] on that axis). F-score thresholds are therefore
   fractions of the object size.
2. :func:`align_point_clouds`: rigid rotation search + ICP. Candidate rotations are the 24 rotations of the cube
   plus ``n_random`` rotations drawn uniformly on SO(3) with a fixed seed (so the worst-case distance to a candidate
   is well under ICP's basin); each candidate is refined by a short ICP on a subsample, the one with the lowest
   Chamfer distance is refined by a longer ICP on larger subsamples. ICP: nearest neighbours in both directions (so a
   partial overlap does not collapse), Kabsch/Umeyama rotation + translation, no scale (both shapes are already
   normalised), no reflection.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
from scipy.spatial import cKDTree

from ..core.mesh import Mesh

__all__ = [
    "Alignment",
    "align_meshes",
    "align_point_clouds",
    "apply_transform",
    "candidate_rotations",
    "cube_rotations",
    "normalize_to_unit_box",
]


@dataclass
class Alignment:
    """Result of :func:`align_point_clouds`.

    Attributes:
        transform: (4, 4) rigid transform mapping source points onto the target (``x' = R x + t``).
        chamfer: mean of the two directional mean nearest distances after alignment (on the refinement subsamples).
    """

    transform: np.ndarray
    chamfer: float

    @property
    def rotation(self) -> np.ndarray:
        return self.transform[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.transform[:3, 3]


def apply_transform(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N, 3) ``transform[:3, :3] @ p + transform[:3, 3]``."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def normalize_to_unit_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre on the bounding-box centre and scale so the longest side is 1.

    Args:
        points: (N, 3) points (e.g. mesh vertices or surface samples).

    Returns:
        ``(normalised points, 4x4 similarity transform that produced them)``.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (N, 3) array, got shape {points.shape}")
    lo, hi = points.min(0), points.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ValueError("cannot normalise a shape of zero extent")
    transform = np.eye(4)
    transform[:3, :3] *= 1.0 / extent
    transform[:3, 3] = -(lo + hi) / 2.0 / extent
    return apply_transform(points, transform), transform


def cube_rotations() -> np.ndarray:
    """(24, 3, 3) the proper rotations of the cube (signed permutation matrices with determinant +1)."""
    out = []
    for perm in permutations(range(3)):
        for signs in product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return np.stack(out)


def _random_rotations(n: int, seed: int) -> np.ndarray:
    # Uniform on SO(3): normalised Gaussian quaternions.
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def candidate_rotations(n_random: int = 40, seed: int = 0) -> np.ndarray:
    """(24 + n_random, 3, 3) starting rotations of the search: cube rotations, then seeded uniform ones."""
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    return np.concatenate([cube_rotations(), _random_rotations(n_random, seed)]) if n_random else cube_rotations()


def _kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """4x4 rigid transform minimising sum |R s + t - q|^2 over paired points (no reflection)."""
    cs, ct = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = rotation, ct - rotation @ cs
    return transform


def _icp(
    source: np.ndarray, target: np.ndarray, target_tree: cKDTree, init: np.ndarray, iterations: int
) -> tuple[np.ndarray, float]:
    transform = init.copy()
    chamfer = np.inf
    for _ in range(iterations):
        moved = apply_transform(source, transform)
        d_st, i_st = target_tree.query(moved)
        d_ts, i_ts = cKDTree(moved).query(target)
        chamfer = 0.5 * (d_st.mean() + d_ts.mean())
        # Pairs from both directions: source->nearest target and nearest source->target.
        src = np.concatenate([source, source[i_ts]])
        dst = np.concatenate([target[i_st], target])
        transform = _kabsch(src, dst)
    moved = apply_transform(source, transform)
    chamfer = 0.5 * (target_tree.query(moved)[0].mean() + cKDTree(moved).query(target)[0].mean())
    return transform, float(chamfer)


def align_point_clouds(
    source: np.ndarray,
    target: np.ndarray,
    *,
    n_random: int = 40,
    coarse_points: int = 300,
    coarse_iterations: int = 5,
    fine_points: int = 3000,
    fine_iterations: int = 30,
    seed: int = 0,
) -> Alignment:
    """Rigidly align ``source`` to ``target`` by rotation search + ICP (see the module docstring).

    Args:
        source: (N, 3) points to move (e.g. the prediction, normalised).
        target: (M, 3) reference points (e.g. the ground truth, normalised).
        n_random: random candidate rotations added to the 24 cube rotations (0: cube rotations only).
        coarse_points: points of each subsample used for the per-candidate ICP.
        fine_points: points of each subsample used for the final refinement.
        coarse_iterations, fine_iterations: ICP iterations per candidate / for the final refinement.
        seed: seed of the candidate rotations and the subsampling.

    Returns:
        :class:`Alignment` with the 4x4 transform source -> target.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    for name, p in (("source", source), ("target", target)):
        if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 3 or not np.isfinite(p).all():
            raise ValueError(f"{name} must be a finite (N, 3) array with N >= 3, got shape {p.shape}")
    rng = np.random.default_rng(seed)
    sub_s = source[rng.choice(len(source), min(coarse_points, len(source)), replace=False)]
    sub_t = target[rng.choice(len(target), min(coarse_points, len(target)), replace=False)]
    tree_sub = cKDTree(sub_t)
    centre_s, centre_t = sub_s.mean(0), sub_t.mean(0)
    best = (np.inf, np.eye(4))
    for rotation in candidate_rotations(n_random, seed):
        init = np.eye(4)
        init[:3, :3], init[:3, 3] = rotation, centre_t - rotation @ centre_s
        transform, chamfer = _icp(sub_s, sub_t, tree_sub, init, coarse_iterations)
        if chamfer < best[0]:
            best = (chamfer, transform)
    fine_s = source[rng.choice(len(source), min(fine_points, len(source)), replace=False)]
    fine_t = target[rng.choice(len(target), min(fine_points, len(target)), replace=False)]
    transform, chamfer = _icp(fine_s, fine_t, cKDTree(fine_t), best[1], fine_iterations)
    return Alignment(transform, chamfer)


def align_meshes(
    pred: Mesh, gt: Mesh, n_points: int = 10000, seed: int = 0, search: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample both surfaces, normalise each to the unit box and align the prediction to the ground truth.

    Args:
        pred, gt: meshes (any frames and scales).
        n_points: surface points sampled on each.
        seed: sampling and search seed.
        search: rotation search + ICP (True) or ICP only from the identity (shapes already in the same frame).

    Returns:
        ``(pred_points (n, 3) aligned and normalised, gt_points (n, 3) normalised, pred_transform (4, 4),
        gt_transform (4, 4))``: the transforms map the *original* prediction and ground-truth frames onto the
        normalised ground-truth frame.
    """
    from .metrics import sample_surface

    pred_points, pred_norm = normalize_to_unit_box(sample_surface(pred, n_points, seed))
    gt_points, gt_norm = normalize_to_unit_box(sample_surface(gt, n_points, seed + 1))
    if search:
        alignment = align_point_clouds(pred_points, gt_points, seed=seed)
    else:
        alignment = Alignment(*_icp(pred_points, gt_points, cKDTree(gt_points), np.eye(4), 40))
    aligned = apply_transform(pred_points, alignment.transform)
    return aligned, gt_points, alignment.transform @ pred_norm, gt_norm
