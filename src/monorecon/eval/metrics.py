"""Reconstruction metrics: Chamfer distance, F-score, volume IoU (meshes); PSNR, SSIM, mask IoU (images).

Point-set conventions (SPEC §5; TripoSR's report evaluates on meshes normalised to a common box, 10,000 surface
points each):

* **Chamfer distance** is the mean of the two directional means of *unsquared* Euclidean nearest-neighbour
  distances: ``CD = (mean_p min_q |p - q| + mean_q min_p |q - p|) / 2``. (The values reported by TripoSR, about 0.1
  next to F-scores about 0.65 at 0.1, are on this unsquared scale.)
* **F-score at tau**: precision = fraction of predicted points within ``tau`` of the ground-truth points, recall =
  fraction of ground-truth points within ``tau`` of the predicted ones, ``F = 2 P R / (P + R)`` (0 when both are 0).
* Both use the same nearest-neighbour distances (KD-tree, exact).

Use :func:`monorecon.eval.align.normalize_to_unit_box` first so thresholds are fractions of the object size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..core.checks import check_tensor
from ..core.mesh import Mesh
from ..core.shading import face_areas

__all__ = [
    "chamfer_and_fscore",
    "depth_ratio",
    "mask_iou",
    "nearest_distances",
    "psnr",
    "sample_surface",
    "solid_occupancy",
    "ssim",
    "surface_vertices",
    "volume_iou",
    "winding_number",
]


def surface_vertices(mesh: Mesh) -> torch.Tensor:
    """(U, 3) float64 vertices of ``mesh`` that some face uses (an unreferenced vertex is not on the surface)."""
    return mesh.verts.detach().double()[torch.unique(mesh.faces)]


def sample_surface(mesh: Mesh, n_points: int, seed: int = 0) -> np.ndarray:
    """Area-uniform random points on the triangles of ``mesh`` (deterministic for a seed).

    Returns:
        (n_points, 3) float64 array in the mesh frame.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if mesh.num_faces == 0:
        raise ValueError("cannot sample points on a mesh without faces")
    verts = mesh.verts.detach().double().cpu()
    faces = mesh.faces.cpu()
    areas = face_areas(verts, faces).numpy()
    tri = verts.numpy()[faces.numpy()]
    total = areas.sum()
    if not total > 0:
        raise ValueError("cannot sample points on a mesh of zero area")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(faces.shape[0], size=n_points, p=areas / total)
    u, v = rng.random(n_points), rng.random(n_points)
    flip = u + v > 1.0  # reflect into the triangle so the samples stay uniform
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[chosen]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _points(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, 3) point array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.astype(np.float64)


def nearest_distances(source: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) Euclidean distance from each source point to its nearest target point."""
    source, target = _points(source, "source"), _points(target, "target")
    return cKDTree(target).query(source, k=1)[0]


def chamfer_and_fscore(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    thresholds: Sequence[float] = (0.1, 0.2, 0.5),
) -> dict[str, float]:
    """Chamfer distance and F-scores between two point sets (conventions in the module docstring).

    Args:
        pred: (N, 3) predicted surface points.
        gt: (M, 3) ground-truth surface points (same frame and scale).
        thresholds: F-score distance thresholds.

    Returns:
        ``{"chamfer": CD, "fscore@t": F, "precision@t": P, "recall@t": R}`` for each threshold ``t``.
    """
    if not thresholds or any(not t > 0 for t in thresholds):
        raise ValueError(f"thresholds must be positive, got {thresholds}")
    d_pred = nearest_distances(pred, gt)
    d_gt = nearest_distances(gt, pred)
    out = {"chamfer": float(0.5 * (d_pred.mean() + d_gt.mean()))}
    for t in thresholds:
        precision, recall = float((d_pred < t).mean()), float((d_gt < t).mean())
        fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out[f"fscore@{t:g}"], out[f"precision@{t:g}"], out[f"recall@{t:g}"] = fscore, precision, recall
    return out


def winding_number(mesh: Mesh, points: torch.Tensor, pairs_per_chunk: int = 1_000_000) -> torch.Tensor:
    """Generalised winding number of ``mesh`` at ``points`` (about 1 inside a closed outward mesh, 0 outside).

    Sum over triangles of the signed solid angle (Van Oosterom and Strackee) divided by 4 pi; robust to small holes.

    Args:
        mesh: triangle mesh.
        points: (N, 3) query points, same frame.
        pairs_per_chunk: (point, triangle) pairs evaluated at once (memory about 0.5 kB per pair).

    Returns:
        (N,) float64 winding numbers.
    """
    points = check_tensor(points, "points", (None, 3), floating=True).double()
    tri = mesh.verts.detach().double()[mesh.faces]  # (F, 3, 3)
    chunk = max(1, pairs_per_chunk // max(tri.shape[0], 1))
    out = []
    for start in range(0, points.shape[0], chunk):
        rel = tri[None] - points[start : start + chunk, None, None]  # (n, F, 3, 3)
        a, b, c = rel[..., 0, :], rel[..., 1, :], rel[..., 2, :]
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        numerator = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        denominator = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append(torch.atan2(numerator, denominator).sum(-1) / (2.0 * torch.pi))
    return torch.cat(out)


def volume_iou(mesh_a: Mesh, mesh_b: Mesh, resolution: int = 32, bounds: tuple[float, float] | None = None) -> float:
    """IoU of the solids of two meshes, by their occupancy (:func:`solid_occupancy`) of the cells of a voxel grid.

    Args:
        mesh_a, mesh_b: closed meshes in the same frame (a small hole flips a few rays, outvoted).
        resolution: grid cells per side.
        bounds: ``(lo, hi)`` of the cubic grid; default the union of both surfaces' bounding boxes (their faces'
            vertices), padded by one cell.

    Returns:
        |A ∩ B| / |A ∪ B| over the grid (0 when both are empty).
    """
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if bounds is None:  # the faces' corners only: a stray unreferenced vertex would stretch the grid
        both = torch.cat([surface_vertices(mesh_a), surface_vertices(mesh_b)])
        lo, hi = float(both.min()), float(both.max())
        pad = (hi - lo) / resolution
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = bounds
    inside_a = solid_occupancy(mesh_a, lo, hi, resolution)
    inside_b = solid_occupancy(mesh_b, lo, hi, resolution)
    union = int((inside_a | inside_b).sum())
    return 0.0 if union == 0 else int((inside_a & inside_b).sum()) / union


def solid_occupancy(mesh: Mesh, lo: float, hi: float, resolution: int) -> np.ndarray:
    """Which cell centres of the cubic grid ``[lo, hi]^3`` lie inside a closed mesh, facing outward or inward.

    Along each axis, a ray from every cell centre towards + infinity counts the surface crossings above it, + 1 where
    the surface faces along the ray (leaving the solid) and - 1 where it faces against it (the winding number, exact
    for a closed mesh and for overlapping closed parts); a cell is inside when at least two of the three axes give a
    non-zero winding number (-1 inside a closed mesh whose faces all point inward: the same solid).
    Cost grows with the faces plus the grid cells, not their product (as :func:`winding_number`'s does).

    Returns:
        (resolution,) * 3 bool array indexed ``[x, y, z]``, cell ``i`` centred at ``lo + (i + 0.5) (hi - lo) / R``.

    Raises:
        ValueError: a resolution below 1, or bounds that are not finite with ``lo < hi``.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the grid's bounds must be finite with lo < hi, got ({lo}, {hi})")
    tri = mesh.verts.detach().double().cpu().numpy()[mesh.faces.cpu().numpy()]  # (F, 3 corners, 3)
    votes = np.zeros((resolution,) * 3, dtype=np.int64)
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3  # (u, v, axis) is right-handed: the uv area's sign is the normal's
        winding = _ray_winding(tri[..., [u, v, axis]], lo, hi, resolution)  # indexed [u, v, axis]
        votes += np.transpose(winding != 0, np.argsort([u, v, axis]))
    return votes >= 2


def _ray_winding(tri: np.ndarray, lo: float, hi: float, resolution: int) -> np.ndarray:
    """(F, 3, 3) triangles in (u, v, w) coordinates -> (R, R, R) signed crossings of the surface above each cell
    centre along + w (the winding number of a closed mesh there), indexed [u, v, w]."""
    step = (hi - lo) / resolution
    # The rays are moved off the cell centres by a tiny irrational fraction, so that none runs exactly along a shared
    # edge or through a vertex of a mesh aligned with the grid (it would count a crossing twice or not at all).
    ray_u, ray_v = lo + step * (0.5 + 1e-7 * np.sqrt(2)), lo + step * (0.5 + 1e-7 * np.sqrt(3))
    first_ray = np.array([ray_u, ray_v])
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # twice, signed
    keep = area != 0  # faces seen edge-on along w are never crossed
    a, b, c, area = a[keep], b[keep], c[keep], area[keep]
    # Columns whose ray may cross each face: those within its uv bounding box.
    first = np.clip(np.ceil((tri[keep, :, :2].min(1) - first_ray) / step), 0, resolution).astype(np.int64)
    last = np.clip(np.floor((tri[keep, :, :2].max(1) - first_ray) / step), -1, resolution - 1)
    extent = np.maximum(last.astype(np.int64) - first + 1, 0)  # (F, 2) columns along u and v
    counts = extent[:, 0] * extent[:, 1]
    face = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    i = first[face, 0] + offset // extent[face, 1]  # faces without columns have no entries here
    j = first[face, 1] + offset % extent[face, 1]
    p = np.stack([ray_u + i * step, ray_v + j * step], axis=-1)
    a, b, c, area = a[face], b[face], c[face], area[face]

    def edge(start: np.ndarray, end: np.ndarray) -> np.ndarray:  # twice the signed area of (start, end, p)
        return (end[:, 0] - start[:, 0]) * (p[:, 1] - start[:, 1]) - (end[:, 1] - start[:, 1]) * (p[:, 0] - start[:, 0])

    wa, wb, wc = edge(b, c) / area, edge(c, a) / area, edge(a, b) / area  # barycentric weights of p
    hit = (wa > 0) & (wb > 0) & (wc > 0)
    depth = wa * a[:, 2] + wb * b[:, 2] + wc * c[:, 2]
    # A crossing at depth z lies above the cells whose centres are below it: cells 0 .. k - 1.
    k = np.clip(np.ceil((depth - lo) / step - 0.5), 0, resolution).astype(np.int64)
    crossings = np.zeros((resolution, resolution, resolution + 1), dtype=np.int64)
    np.add.at(crossings, (i[hit], j[hit], k[hit]), np.sign(area[hit]).astype(np.int64))
    above = np.cumsum(crossings[..., ::-1], axis=-1)[..., ::-1]  # above[..., m] = crossings at k >= m
    return above[..., 1:]


def depth_ratio(pred: Mesh, gt: Mesh, view_axis: int = 2) -> float:
    """How much deeper than the truth a reconstruction is along the input view direction (1 = right, 2 = twice).

    Each mesh's *relative depth* is its surface's bounding-box extent (the box of its faces' vertices) along
    ``view_axis`` over its largest extent across it; the result is pred's over gt's, so it does not depend on scale.
    Both meshes must be in the input-view frame (the camera on the ``view_axis``, looking at the origin; monorecon's
    input camera: +Z, axis 2), before any alignment.
    Single-view methods must guess this depth: the ratio shows a bias that the box-normalised F-score hides.
    """
    if view_axis not in (0, 1, 2):
        raise ValueError(f"view_axis must be 0, 1 or 2, got {view_axis}")
    across = [axis for axis in range(3) if axis != view_axis]

    def relative_depth(mesh: Mesh, name: str) -> float:
        verts = surface_vertices(mesh)
        if verts.shape[0] == 0:
            raise ValueError(f"{name} mesh has no faces")
        extent = verts.max(0).values - verts.min(0).values
        width = float(extent[across].max())
        if not width > 0:
            raise ValueError(f"{name} mesh has no extent across the view axis")
        return float(extent[view_axis]) / width

    return relative_depth(pred, "predicted") / relative_depth(gt, "ground-truth")


def psnr(pred: torch.Tensor, target: torch.Tensor, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(max^2 / MSE)`` in dB over all elements (inf for identical images)."""
    pred = check_tensor(pred, "pred", floating=True)
    target = check_tensor(target, "target", tuple(pred.shape), floating=True)
    mse = float(((pred.double() - target.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(max_value**2 / mse))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean structural similarity of two images (H, W, C) or (H, W) in [0, 1] (Gaussian window 11, sigma 1.5).

    Uses the SSIM of :mod:`monorecon.losses.perceptual` (one implementation in the package).
    """
    from ..losses.perceptual import ssim as ssim_map

    pred = check_tensor(pred, "pred", floating=True)
    target = check_tensor(target, "target", tuple(pred.shape), floating=True)
    if pred.dim() == 2:
        pred, target = pred[..., None], target[..., None]
    if pred.dim() != 3:
        raise ValueError(f"images must be (H, W) or (H, W, C), got {tuple(pred.shape)}")
    to_nchw = lambda x: x.permute(2, 0, 1)[None].float()  # noqa: E731
    return float(ssim_map(to_nchw(pred), to_nchw(target)).mean())


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of two masks (any equal shapes, values in [0, 1]) binarised at ``threshold`` (1 when both are empty)."""
    pred = check_tensor(pred, "pred")
    target = check_tensor(target, "target", tuple(pred.shape))
    a, b = pred > threshold, target > threshold
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union
