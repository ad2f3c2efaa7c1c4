"""Losses of pose fitting (PyTorch3D tutorial) and MeshInversion (SPEC §3, §4), with the point-set helpers they use.

Point sets live in NDC (:mod:`monorecon.core.cameras`: x right, y up, each axis spanning [-1, 1] over its image
side). Pixel ``(i, j)`` stands for its centre ``x = (j + 0.5) / W * 2 - 1``, ``y = 1 - (i + 0.5) / H * 2`` (the
official MeshInversion code uses the pixel corner ``j / (W / 2) - 1``, half a pixel off; centres keep rendered and
target points on the same grid).

Distances in the Chamfer losses are **squared** Euclidean distances, as in the official code (``distChamfer``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monorecon.core.checks import check_tensor
from monorecon.core.shading import face_normals

__all__ = [
    "chamfer_mask_loss",
    "chamfer_texture_cost",
    "chamfer_texture_loss",
    "face_neighbors",
    "image_points",
    "latent_loss",
    "mask_points",
    "sample_at_points",
    "silhouette_loss",
    "smoothness_loss",
    "squared_distances",
]


# --------------------------------------------------------------------------------------------------------------------
# Pose fitting
# --------------------------------------------------------------------------------------------------------------------
def silhouette_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared silhouette differences ``L = sum_{i,j} (pred_ij - target_ij)^2`` per image.

    Args:
        pred: (B, H, W) rendered (soft) silhouettes.
        target: (B, H, W) or (H, W) reference silhouette(s) in [0, 1].

    Returns:
        (B,) losses.
    """
    check_tensor(pred, "pred silhouette", (None, None, None), floating=True)
    check_tensor(target, "target silhouette", floating=True)
    if target.dim() == 2:
        target = target[None]
    if target.dim() != 3 or target.shape[-2:] != pred.shape[-2:] or target.shape[0] not in (1, pred.shape[0]):
        raise ValueError(f"silhouette shapes differ: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    return (pred - target).square().flatten(1).sum(1)


# --------------------------------------------------------------------------------------------------------------------
# Point sets from images
# --------------------------------------------------------------------------------------------------------------------
def mask_points(mask: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """NDC centres of the pixels of an (H, W) mask above ``threshold`` -> (M, 2), row-major order.

    Raises:
        ValueError: if no pixel is above the threshold (empty silhouette).
    """
    check_tensor(mask, "mask", (None, None))
    rows, cols = torch.nonzero(mask > threshold, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError(f"mask is empty: no pixel above {threshold}")
    height, width = mask.shape
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    x = (cols.to(dtype) + 0.5) / width * 2 - 1
    y = 1 - (rows.to(dtype) + 0.5) / height * 2
    return torch.stack([x, y], dim=-1)


def sample_at_points(feature_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a (C, H, W) map at (N, 2) NDC points -> (N, C) (differentiable w.r.t. both)."""
    check_tensor(feature_map, "feature_map", (None, None, None), floating=True)
    check_tensor(points, "points", (None, 2), floating=True)
    # grid_sample's y runs down the rows; NDC y runs up. align_corners=False: +-1 are the outer pixel edges.
    grid = torch.stack([points[:, 0], -points[:, 1]], dim=-1).to(feature_map)
    sampled = F.grid_sample(feature_map[None], grid[None, :, None], mode="bilinear", align_corners=False)
    return sampled[0, :, :, 0].transpose(0, 1)


def image_points(image: torch.Tensor, mask: torch.Tensor, threshold: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground pixels of a (C, H, W) image as a 2-D point set with values.

    Args:
        image: (C, H, W) colours or features.
        mask: (H, W) foreground weights of the same size.

    Returns:
        positions (M, 2) NDC pixel centres where ``mask > threshold`` and the values there (M, C) (differentiable
        w.r.t. ``image``).
    """
    check_tensor(image, "image", (None, None, None), floating=True)
    check_tensor(mask, "mask", (None, None))
    if mask.shape != image.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} and image {tuple(image.shape[-2:])} sizes differ")
    rows, cols = torch.nonzero(mask > threshold, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError(f"mask is empty: no pixel above {threshold}")
    return mask_points(mask, threshold).to(image), image[:, rows, cols].transpose(0, 1)


# --------------------------------------------------------------------------------------------------------------------
# Chamfer losses
# --------------------------------------------------------------------------------------------------------------------
def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``|a_i - b_j|^2`` of (…, N, D) and (…, M, D) -> (…, N, M), >= 0.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (memory N x M, not N x M x D).
    """
    d = a.square().sum(-1)[..., :, None] + b.square().sum(-1)[..., None, :] - 2 * (a @ b.transpose(-1, -2))
    return d.clamp_min(0)


def chamfer_mask_loss(pred_points: torch.Tensor, target_points: torch.Tensor) -> torch.Tensor:
    """Chamfer mask loss (SPEC §3): ``mean_i min_j |p_i - t_j|^2 + mean_j min_i |p_i - t_j|^2``.

    Args:
        pred_points: (B, N, 2) projected mesh vertices (NDC).
        target_points: (M, 2) or (B, M, 2) foreground pixel centres of the target mask (see :func:`mask_points`).

    Returns:
        (B,) losses.
    """
    check_tensor(pred_points, "pred_points", (None, None, 2), floating=True)
    check_tensor(target_points, "target_points", floating=True)
    if target_points.dim() == 2:
        target_points = target_points[None]
    check_tensor(target_points, "target_points", (None, None, 2))
    if pred_points.shape[1] == 0 or target_points.shape[1] == 0:
        raise ValueError("chamfer_mask_loss: empty point set")
    if target_points.shape[0] not in (1, pred_points.shape[0]):
        raise ValueError(
            f"target batch {target_points.shape[0]} does not match prediction batch {pred_points.shape[0]}"
        )
    d = squared_distances(pred_points, target_points.to(pred_points).expand(pred_points.shape[0], -1, -1))
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def chamfer_texture_cost(
    pred_pos: torch.Tensor,
    pred_values: torch.Tensor,
    target_pos: torch.Tensor,
    target_values: torch.Tensor,
    xy_threshold: float = 0.16,
) -> torch.Tensor:
    """Cost matrix of the Chamfer texture loss (SPEC §3), (N, M):

    ``C_ij = xy_term_ij * (d_val_ij + 1)``, ``xy_term = relu((eps + d_xy) - 1) + 1``, ``eps = 1 - (2 xy_threshold)^2``,
    with squared distances ``d_xy`` of positions and ``d_val`` of values. ``xy_term`` is exactly 1 (no position
    penalty) while ``|p_i - t_j| <= 2 xy_threshold`` and grows linearly in ``d_xy`` beyond.
    """
    eps = 1.0 - (2.0 * xy_threshold) ** 2
    xy_term = F.relu((eps + squared_distances(pred_pos, target_pos)) - 1.0) + 1.0
    return xy_term * (squared_distances(pred_values, target_values) + 1.0)


def chamfer_texture_loss(
    pred_pos: torch.Tensor,
    pred_values: torch.Tensor,
    target_pos: torch.Tensor,
    target_values: torch.Tensor,
    *,
    xy_threshold: float = 0.16,
    bidirectional: bool = False,
    max_points: int | None = 8192,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Chamfer texture loss of two 2-D point sets with values (SPEC §3), scalar.

    One direction (pixel level, official default): ``mean_i min_j C_ij``. Bidirectional (feature level):
    ``(mean_i min_j C_ij + mean_j min_i C_ij) / 2``. ``C`` is :func:`chamfer_texture_cost`.

    Args:
        pred_pos, pred_values: (N, 2) NDC positions and (N, C) values (colours or features) of the rendering.
        target_pos, target_values: (M, 2) and (M, C) of the target image.
        max_points: each set is randomly subsampled (without replacement, drawn from ``generator``) to at most this
            many points, as the official code (8192) to bound the N x M cost; None keeps all points.
    """
    sizes: dict[str, int] = {}
    check_tensor(pred_pos, "pred_pos", ("N", 2), sizes=sizes, floating=True)
    check_tensor(pred_values, "pred_values", ("N", "C"), sizes=sizes, floating=True)
    check_tensor(target_pos, "target_pos", ("M", 2), sizes=sizes, floating=True)
    check_tensor(target_values, "target_values", ("M", "C"), sizes=sizes, floating=True)
    if sizes["N"] == 0 or sizes["M"] == 0:
        raise ValueError("chamfer_texture_loss: empty point set")
    if max_points is not None:
        if sizes["N"] > max_points:
            keep = torch.randperm(sizes["N"], generator=generator)[:max_points].to(pred_pos.device)
            pred_pos, pred_values = pred_pos[keep], pred_values[keep]
        if sizes["M"] > max_points:
            keep = torch.randperm(sizes["M"], generator=generator)[:max_points].to(target_pos.device)
            target_pos, target_values = target_pos[keep], target_values[keep]
    cost = chamfer_texture_cost(
        pred_pos, pred_values, target_pos.to(pred_pos), target_values.to(pred_values), xy_threshold
    )
    forward = cost.min(1).values.mean()
    if not bidirectional:
        return forward
    return 0.5 * (forward + cost.min(0).values.mean())


# --------------------------------------------------------------------------------------------------------------------
# Regularisers
# --------------------------------------------------------------------------------------------------------------------
def latent_loss(z: torch.Tensor) -> torch.Tensor:
    """Latent (negative log-likelihood) loss ``mean_k z_k^2 / 2`` of (B, D) codes -> (B,)."""
    check_tensor(z, "z", (None, None), floating=True)
    return (z.square() / 2).mean(1)


def face_neighbors(faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) index of the face across each edge of each face of a closed manifold mesh.

    Entry ``k`` of face ``f`` is the other face sharing the edge ``(faces[f, k], faces[f, (k + 1) % 3])``.

    Raises:
        ValueError: if an edge is not shared by exactly two faces.
    """
    check_tensor(faces, "faces", (None, 3), floating=False)
    n = faces.shape[0]
    if n == 0:
        raise ValueError("faces is empty")
    edges = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    keys = edges.sort(dim=1).values
    key = keys[:, 0] * (int(faces.max()) + 1) + keys[:, 1]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    counts = torch.unique_consecutive(sorted_key, return_counts=True)[1]
    if bool((counts != 2).any()):
        raise ValueError("face_neighbors needs a closed manifold mesh: some edges are not shared by exactly 2 faces")
    face_of_edge = torch.arange(n, device=faces.device).repeat_interleave(3)[order].reshape(-1, 2)
    neighbor = torch.empty(3 * n, dtype=torch.long, device=faces.device)
    pair_slots = order.reshape(-1, 2)
    neighbor[pair_slots[:, 0]] = face_of_edge[:, 1]
    neighbor[pair_slots[:, 1]] = face_of_edge[:, 0]
    return neighbor.reshape(n, 3)


def smoothness_loss(verts: torch.Tensor, faces: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """Smoothness (flatness) loss of neighbouring face normals, as the official ``loss_flat``:

    ``L = (F / 2) * sum_{k=1..3} mean_f (n_f . n_{nb_k(f)} - 1)^2`` with unit face normals ``n`` and the three
    neighbours ``nb_k(f)`` of face f (:func:`face_neighbors`).

    Args:
        verts: (B, V, 3) vertex positions; faces: (F, 3); neighbors: (F, 3).

    Returns:
        (B,) losses (0 for a plane, 2 F per fully folded neighbour pair summed over k).
    """
    check_tensor(verts, "verts", (None, None, 3), floating=True)
    check_tensor(faces, "faces", (None, 3), floating=False)
    check_tensor(neighbors, "neighbors", (faces.shape[0], 3), floating=False)
    normals = face_normals(verts, faces)
    cos = (normals[:, :, None, :] * normals[:, neighbors]).sum(-1)  # (B, F, 3)
    return (cos - 1).square().mean(1).sum(1) * (faces.shape[0] / 2.0)
