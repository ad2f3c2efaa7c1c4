"""Silhouette carving: the visual hull of one view, as a weight on a field's density.

An object seen by a camera lies inside the cone of its silhouette: a point that projects onto the background (or
outside the image, or lies behind the camera) cannot be part of it. :class:`SilhouetteHull` gives each world point a
weight in [0, 1] (1 inside the cone, 0 outside, a one-pixel bilinear ramp at the outline) that multiplies a predicted
density, so a single-image model's field is cut to the input silhouette. It cannot add what the model missed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .cameras import Cameras
from .checks import check_tensor

__all__ = ["SilhouetteHull"]


class SilhouetteHull:
    """The cone of one camera's silhouette, as a per-point weight.

    Args:
        camera: one camera (batch size 1) whose image is ``mask``; its ``height`` / ``width`` may differ from the
            mask's (only the normalised image coordinates are used).
        mask: (H, W) alpha or mask in [0, 1]; pixels above ``threshold`` are the object.
        margin: grow the silhouette by this fraction of the image's larger side before carving (default 0: the
            outline itself, with a one-pixel bilinear ramp across it), e.g. for a mask that is slightly too tight.
        threshold: alpha level of the silhouette.

    Calling it with (N, 3) world points returns (N,) weights in [0, 1].

    Raises:
        ValueError: several cameras, a mask that is not (H, W), non-finite, outside [0, 1] or empty, or a margin /
            threshold outside [0, 1).
    """

    def __init__(
        self,
        camera: Cameras,
        mask: torch.Tensor | np.ndarray,
        margin: float = 0.0,
        threshold: float = 0.5,
    ) -> None:
        if not isinstance(camera, Cameras) or camera.batch_size != 1:
            raise ValueError("SilhouetteHull needs exactly one camera")
        mask = check_tensor(torch.as_tensor(mask, dtype=torch.float32), "mask", (None, None))
        if bool((mask < 0).any()) or bool((mask > 1).any()):
            raise ValueError("mask must hold values in [0, 1]")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must lie in [0, 1), got {margin}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
        inside = (mask > threshold).cpu().numpy()
        if not inside.any():
            raise ValueError("the silhouette is empty (no pixel above the threshold)")
        radius = margin * max(inside.shape)
        if radius > 0:  # grow by a disk: pixels within `radius` of the silhouette
            inside = ndimage.distance_transform_edt(~inside) <= radius
        self.camera = camera
        self.mask = torch.from_numpy(inside.astype(np.float32))[None, None].to(camera.c2w.device)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points -> (N,) weights: bilinear sample of the grown silhouette at their projections."""
        points = check_tensor(points, "points", (None, 3), floating=True)
        ndc = self.camera.transform_points_ndc(points.to(self.camera.c2w))[0]
        # grid_sample's y runs down the image, NDC's y up; align_corners=False puts -1 / 1 on the image border.
        grid = torch.stack([ndc[:, 0], -ndc[:, 1]], dim=-1).to(torch.float32)
        weight = F.grid_sample(self.mask, grid[None, None], mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = torch.where(ndc[:, 2] > 0, weight[0, 0, 0], torch.zeros_like(weight[0, 0, 0]))
        return weight.to(points)
