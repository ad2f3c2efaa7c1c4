"""Evaluation of G3DR reconstructions against ground-truth meshes (held-out synthetic views).

For each view (with ``to_canonical`` and a mesh file, as :func:`~.data.views_from_synthetic` gives): the ground-truth
mesh is moved into the canonical frame and rendered (hard z-buffer, :func:`monorecon.core.mesh_renderer.render_mesh`)
from novel cameras at the given yaw offsets; the generator's renders from the same cameras are compared with it:

* ``depth_mae``: mean |predicted - true| ray depth over the true foreground, the predicted depth taken over the far
  depth 6 (``opacity * depth + (1 - opacity) * 6``) so that missing geometry counts as an error;
* ``mask_iou``: IoU of predicted opacity > 0.5 and the true silhouette;
* ``nfs``: :func:`monorecon.eval.g3dr_metrics.non_flatness_score` of the predicted novel-view depth (opacity > 0.5);
* ``fscore@0.1`` / ``chamfer``: the mesh extracted by marching cubes at the model's ``mesh_threshold`` against the
  ground-truth mesh (canonical frame, ``n_points`` surface samples each,
  :func:`monorecon.eval.metrics.chamfer_and_fscore`); 0 / NaN when no surface is found at the threshold.

:func:`calibrate_mesh_threshold` picks that iso level on training views (never on the evaluation views).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from monorecon.core.extract import extract_isosurface
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render_mesh
from monorecon.eval.g3dr_metrics import non_flatness_score
from monorecon.eval.metrics import chamfer_and_fscore, mask_iou, sample_surface
from monorecon.io.mesh_io import load_mesh

from .data import FAR_DEPTH, RGBDViews
from .generator import G3DRGenerator, ray_length_factor, view_c2w
from .inference import render_views

__all__ = [
    "MESH_LEVELS",
    "calibrate_mesh_threshold",
    "canonical_mesh",
    "evaluate_reconstructions",
    "render_ground_truth",
    "summarize",
]

# Candidate density iso levels (per world unit) for calibration: trained densities span about two decades.
MESH_LEVELS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0)


def _mesh_fscore(
    model: G3DRGenerator, planes: torch.Tensor, truth: Mesh, threshold: float, resolution: int, n_points: int
) -> dict[str, float]:
    """F-score@0.1 and Chamfer of the mesh at ``threshold`` against ``truth``; 0 / NaN without a surface."""
    try:
        surface = extract_isosurface(model.density_fn(planes), resolution, threshold, model.config.box_radius)
    except ValueError:  # the density never crosses the threshold
        return {"fscore@0.1": 0.0, "chamfer": math.nan}
    return chamfer_and_fscore(sample_surface(surface, n_points, seed=0), sample_surface(truth, n_points, seed=1),
                              thresholds=(0.1,))  # fmt: skip


@torch.no_grad()
def calibrate_mesh_threshold(
    model: G3DRGenerator,
    views: RGBDViews,
    *,
    levels: tuple[float, ...] = MESH_LEVELS,
    max_views: int = 8,
    resolution: int = 48,
    n_points: int = 3000,
) -> tuple[float, dict[float, float]]:
    """The density iso level whose meshes match the ground truth best (highest mean F-score@0.1) on the first
    ``max_views`` of ``views`` (views with ground-truth meshes; use training views, not the evaluation set).

    Returns:
        (best level, {level: mean F-score@0.1}); ties go to the lower level.

    Raises:
        ValueError: views without ``to_canonical`` or mesh paths, or no level gives a surface on any view.
    """
    if views.to_canonical is None or not all(views.mesh_paths):
        raise ValueError("calibration needs views with to_canonical transforms and ground-truth mesh paths")
    model.eval()
    scores = {float(level): [] for level in levels}
    for i in range(min(max_views, len(views))):
        item = views[i]
        planes = model.encode(item["rgb"][None], item["depth"][None])
        truth = canonical_mesh(load_mesh(views.mesh_paths[i]), views.to_canonical[i])
        for level in scores:
            scores[level].append(_mesh_fscore(model, planes, truth, level, resolution, n_points)["fscore@0.1"])
    means = {level: float(np.mean(values)) for level, values in scores.items()}
    best = max(means, key=lambda level: (means[level], -level))
    if means[best] == 0.0:
        raise ValueError(f"no iso level in {tuple(levels)} gives a surface near the ground truth")
    return best, means


def canonical_mesh(mesh: Mesh, to_canonical: torch.Tensor) -> Mesh:
    """``mesh`` moved by the (4, 4) similarity into the canonical frame (colours kept)."""
    verts = mesh.verts.double() @ to_canonical[:3, :3].double().T + to_canonical[:3, 3].double()
    return Mesh(verts.float(), mesh.faces, vertex_colors=mesh.vertex_colors)


@torch.no_grad()
def render_ground_truth(model: G3DRGenerator, mesh: Mesh, yaw_deg: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Unlit renders of a canonical-frame mesh from the generator's cameras at yaw offsets (pitch 0).

    Returns:
        dict(rgb (N, size, size, 3), depth (N, size, size) ray distance (0 on the background), mask (N, size, size)).
    """
    cameras = model.cameras(view_c2w(yaw_deg, torch.zeros_like(yaw_deg), model.config.camera_distance), size)
    out = render_mesh(mesh.verts, mesh.faces, cameras, vertex_colors=mesh.vertex_colors, shading="unlit")
    mask = out["alpha"] > 0.5
    depth = torch.where(mask, out["depth"] * ray_length_factor(size, model.config.fov_deg), 0.0)
    return {"rgb": out["rgb"].clamp(0, 1), "depth": depth, "mask": mask}


@torch.no_grad()
def evaluate_reconstructions(
    model: G3DRGenerator,
    views: RGBDViews,
    *,
    yaws_deg: tuple[float, ...] = (-30.0, -15.0, 15.0, 30.0),
    size: int = 32,
    mesh_resolution: int = 64,
    threshold: float | None = None,
    n_points: int = 5000,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Per-view metrics (module docstring) and the renders used (for figures); ``threshold`` None: the model's
    ``config.mesh_threshold``.

    Returns:
        rows: one dict per view (``object_id``, ``class_name`` and the metrics);
        renders: ``pred_rgb`` / ``gt_rgb`` (V, N, size, size, 3) and ``pred_depth`` / ``gt_depth`` (V, N, size, size)
        at the yaws.

    Raises:
        ValueError: views without ``to_canonical`` or mesh paths.
    """
    if views.to_canonical is None or not all(views.mesh_paths):
        raise ValueError("evaluation needs views with to_canonical transforms and ground-truth mesh paths")
    model.eval()
    threshold = model.config.mesh_threshold if threshold is None else threshold
    yaws = torch.tensor(yaws_deg, dtype=torch.float32)
    rows, renders = [], {"pred_rgb": [], "gt_rgb": [], "pred_depth": [], "gt_depth": []}
    for i in range(len(views)):
        item = views[i]
        planes = model.encode(item["rgb"][None], item["depth"][None])
        pred = render_views(model, planes, yaws, 0.0, size)
        mesh = canonical_mesh(load_mesh(views.mesh_paths[i]), views.to_canonical[i])
        gt = render_ground_truth(model, mesh, yaws, size)
        full_depth = pred["opacity"] * pred["depth"] + (1 - pred["opacity"]) * FAR_DEPTH
        pred_mask = pred["opacity"] > 0.5
        row = {
            "object_id": views.object_ids[i],
            "class_name": views.class_names[i],
            "depth_mae": float((full_depth - gt["depth"]).abs()[gt["mask"]].mean()),
            "mask_iou": mask_iou(pred["opacity"], gt["mask"].float()),
            "nfs": non_flatness_score(pred["depth"], pred_mask) if bool(pred_mask.any()) else 0.0,
        }
        scores = _mesh_fscore(model, planes, mesh, threshold, mesh_resolution, n_points)
        row["fscore@0.1"], row["chamfer"] = scores["fscore@0.1"], scores["chamfer"]
        rows.append(row)
        for key, value in (("pred_rgb", pred["rgb"].clamp(0, 1)), ("gt_rgb", gt["rgb"]),
                           ("pred_depth", full_depth), ("gt_depth", gt["depth"])):  # fmt: skip
            renders[key].append(value)
    return rows, {key: torch.stack(values) for key, values in renders.items()}


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every numeric metric over the rows (NaNs ignored)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
