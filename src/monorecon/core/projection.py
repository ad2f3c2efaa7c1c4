"""Colours of an image projected onto the surface it shows, and a colour transfer for the part it does not.

A single-image model predicts a colour everywhere, but where the input image sees the surface the image itself is the
best colour there is. :class:`ImageProjection` renders a mesh's depth and normals from the image's camera and, for
any surface point, returns the image colour at its projection with a weight in [0, 1]: 0 where the point is hidden
(behind the visible surface by more than ``depth_tolerance``), outside the image or on the background (the weight
is multiplied by the alpha), and a ramp from 0 to 1 as the surface turns from grazing to facing the camera (the
cosine between its normal and the direction to the camera between ``facing[0]`` and ``facing[1]``), so that a
colour is not smeared across surfaces seen edge-on.

The unseen part keeps the model's colours, which are duller and shifted relative to the photo (a regression to the
mean of the training colours). :func:`fit_colour_transfer` fits an affine map ``colour -> A colour + b`` from the
model's colours to the image's on the seen part (weighted least squares with a ridge towards the identity), which is
then applied to the model's colours everywhere, so both sides share one white balance and contrast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .cameras import Cameras
from .checks import check_tensor
from .mesh import Mesh

__all__ = ["ImageProjection", "fit_colour_transfer", "project_image_colours", "project_image_texture"]


class ImageProjection:
    """An (H, W) image seen by one camera, projected onto the visible surface of a mesh.

    Args:
        mesh: the surface (world frame), faces counter-clockwise seen from outside.
        camera: one camera (batch size 1) that took ``image``; its image size is replaced by the image's.
        image: (H, W, 3) colours in [0, 1].
        alpha: (H, W) object alpha in [0, 1] (None: every pixel is the object).
        depth_tolerance: how far (world units, along the view) a point may lie behind the visible surface and still
            count as seen (marching-cubes vertices and texels sit on, not exactly at, the rendered surface).
        facing: (start, full) cosines between the surface normal and the direction to the camera: weight 0 at or
            below ``start``, 1 at or above ``full``, linear between.

    Raises:
        ValueError: several cameras, an image / alpha of the wrong shape or not finite in [0, 1], or bad settings.
    """

    def __init__(
        self,
        mesh: Mesh,
        camera: Cameras,
        image: torch.Tensor,
        alpha: torch.Tensor | None = None,
        *,
        depth_tolerance: float = 0.02,
        facing: tuple[float, float] = (0.1, 0.4),
    ) -> None:
        from .mesh_renderer import render_mesh

        if not isinstance(camera, Cameras) or camera.batch_size != 1:
            raise ValueError("ImageProjection takes one camera")
        image = check_tensor(torch.as_tensor(image), "image", (None, None, 3), floating=True, finite=True)
        height, width = image.shape[:2]
        alpha = torch.ones(height, width) if alpha is None else torch.as_tensor(alpha)
        alpha = check_tensor(alpha, "alpha", (height, width), floating=True, finite=True)
        for name, values in (("image", image), ("alpha", alpha)):
            if values.min() < 0.0 or values.max() > 1.0:
                raise ValueError(f"{name} values must lie in [0, 1]")
        if not depth_tolerance > 0.0:
            raise ValueError(f"depth_tolerance must be positive, got {depth_tolerance}")
        if not 0.0 <= facing[0] < facing[1] <= 1.0:
            raise ValueError(f"facing must be (start, full) with 0 <= start < full <= 1, got {facing}")
        self.camera = camera.resized(height, width) if (camera.height, camera.width) != (height, width) else camera
        self.depth_tolerance, self.facing = depth_tolerance, facing
        with torch.no_grad():
            seen = render_mesh(mesh.verts.float(), mesh.faces, self.camera, shading="unlit")
        self.depth = seen["depth"][0]  # (H, W), 0 where empty
        self.normals = seen["normals"][0]  # (H, W, 3)
        # image and alpha stacked for one bilinear lookup: (1, 4, H, W)
        self._texture = torch.cat([image.float(), alpha.float()[..., None]], dim=-1).permute(2, 0, 1)[None]

    def sample(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) surface points -> (N,) weights in [0, 1] and (N, 3) image colours (meaningless where weight 0)."""
        points = check_tensor(points, "points", (None, 3), floating=True).float()
        height, width = self.depth.shape
        screen = self.camera.transform_points_screen(points)[0]  # (N, 3): u, v in pixels, view depth
        u, v, depth = screen.unbind(-1)
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (depth > 0)
        # The surface at the point's own pixel. (The farthest of the 2 x 2 pixels around it would also find the
        # surface for points exactly on an open mesh's outline, but lets hidden points next to an occluding edge
        # take the photo's colour: 0.03 dB worse on validation objects.)
        col = u.floor().long().clamp(0, width - 1)
        row = v.floor().long().clamp(0, height - 1)
        surface_depth = self.depth[row, col]
        visible = inside & (surface_depth > 0) & (depth <= surface_depth + self.depth_tolerance)
        if self.camera.is_perspective:
            to_camera = F.normalize(self.camera.position[0] - points, dim=-1)
        else:  # parallel projection: every point sees the camera along its "back" axis
            to_camera = self.camera.c2w[0, :3, 2].expand_as(points)
        cosine = (self.normals[row, col] * to_camera).sum(-1)
        start, full = self.facing
        facing = ((cosine - start) / (full - start)).clamp(0.0, 1.0)
        grid = torch.stack([u / width * 2.0 - 1.0, v / height * 2.0 - 1.0], dim=-1)[None, None]  # (1, 1, N, 2)
        looked_up = F.grid_sample(self._texture, grid, mode="bilinear", align_corners=False)[0, :, 0].T  # (N, 4)
        weight = visible.float() * facing * looked_up[:, 3]
        return weight, looked_up[:, :3]

    def blend(self, points: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """(N, 3) points and their (N, 3) colours elsewhere -> (N, 3) colours, the image's where it sees them."""
        weight, seen = self.sample(points)
        return torch.lerp(colours.float(), seen, weight[:, None])


def fit_colour_transfer(
    source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ridge: float = 0.05, min_weight: float = 32.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit ``target ~ A source + b`` (A 3 x 3, b 3) by weighted least squares with a ridge towards ``A = I, b = 0``.

    Args:
        source, target: (N, 3) colours in [0, 1]; weight: (N,) non-negative weights.
        ridge: penalty ``ridge * sum(weight) * ||[A - I, b]||^2``: keeps the map near the identity when the
            colours seen span few directions (e.g. a one-colour object).
        min_weight: below this total weight the identity is returned (too little seen to fit anything).

    Returns:
        A function (M, 3) colours -> (M, 3) mapped colours, clamped to [0, 1].
    """
    source = check_tensor(source, "source", (None, 3), floating=True, finite=True).double()
    target = check_tensor(target, "target", tuple(source.shape), floating=True, finite=True).double()
    weight = check_tensor(weight, "weight", (source.shape[0],), floating=True, finite=True).double().clamp_min(0.0)
    total = float(weight.sum())
    if total < min_weight:
        return lambda colours: colours.clamp(0.0, 1.0)
    design = torch.cat([source, torch.ones_like(source[:, :1])], dim=-1)  # (N, 4)
    prior = torch.cat([torch.eye(3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)])  # (4, 3)
    gram = design.T @ (weight[:, None] * design) + ridge * total * torch.eye(4, dtype=torch.float64)
    rhs = design.T @ (weight[:, None] * target) + ridge * total * prior
    solution = torch.linalg.solve(gram, rhs)  # (4, 3): rows 0-2 = A^T, row 3 = b
    matrix, offset = solution[:3].float(), solution[3].float()

    def transfer(colours: torch.Tensor) -> torch.Tensor:
        return (colours.float() @ matrix + offset).clamp(0.0, 1.0)

    return transfer


def project_image_colours(
    mesh: Mesh, camera: Cameras, image: torch.Tensor, alpha: torch.Tensor | None = None, *, transfer: bool = True
) -> tuple[Mesh, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Give a mesh with vertex colours the image's colours where the image sees it.

    Args:
        mesh: a mesh with (V, 3) ``vertex_colors`` (e.g. a model's prediction).
        camera, image, alpha: as :class:`ImageProjection`.
        transfer: also map the vertex colours by :func:`fit_colour_transfer`, fitted on the seen vertices, before
            blending (the unseen part then matches the image's colours).

    Returns:
        The mesh with blended vertex colours, and ``recolour(points, colours) -> colours``, the same blend for other
        surface points (e.g. the texels of a baked texture) with their colours from the same source.

    Raises:
        ValueError: a mesh without vertex colours, or bad image / camera (see :class:`ImageProjection`).
    """
    if mesh.vertex_colors is None:
        raise ValueError("project_image_colours needs a mesh with vertex colours")
    projection = ImageProjection(mesh, camera, image, alpha)
    mapped, blended = _blend_seen(mesh.vertex_colors, *projection.sample(mesh.verts), transfer)

    def recolour(points: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        return projection.blend(points, mapped(colours))

    return dataclasses.replace(mesh, vertex_colors=blended.to(mesh.vertex_colors)), recolour


def project_image_texture(
    mesh: Mesh, camera: Cameras, image: torch.Tensor, alpha: torch.Tensor | None = None, *, transfer: bool = True
) -> Mesh:
    """:func:`project_image_colours` for a mesh with a UV texture: every texel the atlas covers is blended at its
    surface point, and (with ``transfer``) the whole texture is mapped to the image's colours first.

    Args:
        mesh: a mesh with ``uvs`` and a square (T, T, 3) ``texture``.
        camera, image, alpha: as :class:`ImageProjection`.

    Returns:
        The mesh with the blended texture (geometry and UVs unchanged).

    Raises:
        ValueError: a mesh without a square texture, or bad image / camera (see :class:`ImageProjection`).
    """
    from .bake import rasterize_uv_positions

    if mesh.texture is None or mesh.texture.shape[0] != mesh.texture.shape[1]:
        raise ValueError("project_image_texture needs a mesh with a square UV texture")
    projection = ImageProjection(mesh, camera, image, alpha)
    positions, covered = rasterize_uv_positions(mesh, mesh.texture.shape[0])
    mapped, blended = _blend_seen(mesh.texture[covered], *projection.sample(positions[covered]), transfer)
    # every texel is mapped, the uncovered ones too (texture filtering reads them); a copy, the input stays as is
    texture = mapped(mesh.texture.reshape(-1, 3)).reshape(mesh.texture.shape).clone()
    texture[covered] = blended
    return dataclasses.replace(mesh, texture=texture.to(mesh.texture))


def _blend_seen(
    colours: torch.Tensor, weight: torch.Tensor, seen: torch.Tensor, transfer: bool
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(N, 3) colours, their (N,) weights and (N, 3) image colours (:meth:`ImageProjection.sample`) -> the colour map
    (:func:`fit_colour_transfer` on them, or the identity) and the (N, 3) mapped colours blended with the image's."""
    mapped = fit_colour_transfer(colours, seen, weight) if transfer else (lambda values: values.float())
    return mapped, torch.lerp(mapped(colours), seen, weight[:, None]).clamp(0.0, 1.0)
