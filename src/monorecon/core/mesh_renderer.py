"""One-call mesh rendering (rasterise, interpolate, texture, shade, blend) for the rest of monorecon.

Used by pose fitting, data synthesis, texture baking checks and MeshInversion. Hard mode gives a z-buffered image
(gradients through colours, textures and shading, not through silhouette edges); soft mode is the soft rasteriser of
SPEC §4 (gradients through edges too, see :func:`monorecon.core.shading.softmax_rgb_blend`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .cameras import Cameras
from .checks import check_tensor
from .raster import Fragments, blur_radius_for_sigma, rasterize, sharp_silhouette, soft_silhouette
from .shading import (
    Color,
    DirectionalLights,
    Lights,
    Materials,
    face_normals,
    hard_rgb_blend,
    interpolate_face_attributes,
    lambert_shading,
    phong_shading,
    repeat_uvs,
    sample_texture,
    softmax_rgb_blend,
    vertex_normals,
)

__all__ = ["headlight", "render", "render_mesh", "render_silhouette"]

SHADING_MODES = ("phong", "lambert", "flat", "unlit")


def headlight(
    cameras: Cameras, *, ambient: float = 0.35, diffuse: float = 0.55, specular: float = 0.1
) -> DirectionalLights:
    """A white directional light from each camera's viewing direction. The default (ambient 0.35, diffuse 0.55,
    specular 0.1) is the renderer's: a surface facing the camera with albedo 1 renders at about 1 under Phong."""
    return DirectionalLights(
        direction=cameras.c2w[:, :3, 2],  # camera "back" axis: from the scene towards the camera
        ambient_color=(ambient,) * 3,
        diffuse_color=(diffuse,) * 3,
        specular_color=(specular,) * 3,
    )


def render_mesh(
    verts: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    *,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    face_uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    normals: torch.Tensor | None = None,
    lights: Lights | None = None,
    materials: Materials | None = None,
    shading: str = "phong",
    soft: bool = False,
    sigma: float = 1e-4,
    gamma: float = 1e-4,
    faces_per_pixel: int | None = None,
    background: Color = (1.0, 1.0, 1.0),
    cull_backfaces: bool = False,
    bin_size: int | None = None,
) -> dict[str, Any]:
    """Render a triangle mesh seen by a batch of B cameras.

    Args:
        verts: (V, 3) world positions (shared by the cameras) or (B, V, 3) one set per camera.
        faces: (F, 3) long vertex indices, counter-clockwise seen from outside.
        cameras: B cameras; their image size, projection and ``znear`` are used (and ``zfar`` by the soft blend).
        vertex_colors: (V, 3) or (B, V, 3) albedo per vertex.
        uvs: (V, 2) texture coordinates indexed by ``faces`` (``v`` up from the bottom row, see
            :mod:`monorecon.core.shading`), or (T, 2) indexed by ``face_uvs`` (F, 3) when UVs have their own index.
        texture: (Ht, Wt, 3) or (B, Ht, Wt, 3) albedo texture (needs ``uvs``); used instead of vertex colours.
            Without either, the albedo is 1 (white).
        normals: (V, 3) or (B, V, 3) vertex normals; default area-weighted normals of ``verts``.
        lights: default :func:`headlight`. materials: default :class:`Materials` ().
        shading: "phong" (interpolated normals, ambient + diffuse + specular), "lambert" (interpolated normals,
            ambient + diffuse), "flat" (face normals, ambient + diffuse + specular) or "unlit" (albedo as is).
        soft: soft rasterisation with ``sigma`` / ``gamma`` (SPEC §4) instead of the hard z-buffer.
        faces_per_pixel: K; default 1 (hard) or 50 (soft).
        background: RGB where nothing is drawn.
        cull_backfaces, bin_size: passed to :func:`monorecon.core.raster.rasterize`.

    Returns:
        dict with ``rgb`` (B, H, W, 3) shaded colours (not clamped), ``alpha`` (B, H, W), ``depth`` (B, H, W) view
        depth of the nearest face covering the pixel centre (0 where none), ``normals`` (B, H, W, 3) its unit world
        normals as used for shading (zero where none), ``face_index`` (B, H, W) that face (-1 where none) and
        ``fragments`` (the full :class:`~monorecon.core.raster.Fragments`).
    """
    if shading not in SHADING_MODES:
        raise ValueError(f"shading must be one of {SHADING_MODES}, got {shading!r}")
    verts = _batched(verts, "verts", cameras.batch_size, 3)
    k = faces_per_pixel if faces_per_pixel is not None else (50 if soft else 1)
    fragments = rasterize(
        cameras.transform_points_ndc(verts),
        faces,
        cameras.height,
        cameras.width,
        faces_per_pixel=k,
        perspective_correct=cameras.is_perspective,
        blur_radius=blur_radius_for_sigma(sigma) if soft else 0.0,
        cull_backfaces=cull_backfaces,
        bin_size=bin_size,
        znear=cameras.znear,
    )
    faces = faces.long().to(verts.device)
    # Shade only the fragments that hold a face, gathered per batch element (most of the K slots are empty).
    face_index, bary, unpack = _pack(fragments)
    albedo = _albedo(face_index, bary, faces, verts, vertex_colors, uvs, face_uvs, texture)

    if shading == "flat":
        normals_frag = interpolate_face_attributes(
            face_index, bary, face_normals(verts, faces)[..., None, :].expand(-1, -1, 3, -1)
        )
    else:
        if normals is None:
            normals = vertex_normals(verts, faces)
        else:
            normals = _batched(normals, "normals", len(verts), 3, rows=verts.shape[1])
        normals_frag = F.normalize(interpolate_face_attributes(face_index, bary, normals[:, faces]), dim=-1)

    if shading == "unlit":
        colors = albedo
    else:
        lights = lights if lights is not None else headlight(cameras)
        points = interpolate_face_attributes(face_index, bary, verts[:, faces])
        if shading == "lambert":
            colors = lambert_shading(albedo, normals_frag, points, lights, materials)
        else:
            colors = phong_shading(albedo, normals_frag, points, lights, _view_directions(cameras, points), materials)

    if soft:
        rgba = softmax_rgb_blend(unpack(colors), fragments, sigma, gamma, cameras.znear, cameras.zfar, background)
    else:
        rgba = hard_rgb_blend(unpack(colors), fragments, background)
    # The nearest face covering each pixel: slot 0 of a hard render; a soft one also finds faces near the pixel.
    covers = fragments.covers
    covered = covers.any(dim=-1)
    nearest = covers.int().argmax(dim=-1, keepdim=True)  # the first covering slot (0 where none)
    normals_nearest = unpack(normals_frag).gather(-2, nearest[..., None].expand(*nearest.shape, 3))[..., 0, :]
    return {
        "rgb": rgba[..., :3],
        "alpha": rgba[..., 3],
        "depth": torch.where(covered, fragments.depth.gather(-1, nearest)[..., 0], 0.0),
        "normals": torch.where(covered[..., None], normals_nearest, 0.0),
        "face_index": torch.where(covered, fragments.face_index.gather(-1, nearest)[..., 0], -1),
        "fragments": fragments,
    }


def render_silhouette(
    verts: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    sigma: float | None = 1e-4,
    *,
    faces_per_pixel: int = 100,
    cull_backfaces: bool = False,
    bin_size: int | None = None,
    sharp: bool = False,
) -> torch.Tensor:
    """(B, H, W) silhouette: the soft silhouette of SPEC §4 (``sigma``, up to ``faces_per_pixel`` faces per pixel),
    its unbiased variant :func:`~monorecon.core.raster.sharp_silhouette` when ``sharp``, or the hard 0/1 coverage
    when ``sigma`` is None. ``verts`` (V, 3) or (B, V, 3) as :func:`render_mesh`."""
    verts = _batched(verts, "verts", cameras.batch_size, 3)
    fragments = rasterize(
        cameras.transform_points_ndc(verts),
        faces,
        cameras.height,
        cameras.width,
        faces_per_pixel=1 if sigma is None else faces_per_pixel,
        perspective_correct=cameras.is_perspective,
        blur_radius=0.0 if sigma is None else blur_radius_for_sigma(sigma),
        cull_backfaces=cull_backfaces,
        bin_size=bin_size,
        znear=cameras.znear,
    )
    if sigma is None:
        return fragments.mask[..., 0].to(verts.dtype)
    return sharp_silhouette(fragments, sigma) if sharp else soft_silhouette(fragments, sigma)


def render(mesh: Any, cameras: Cameras, **kwargs: Any) -> dict[str, Any]:
    """:func:`render_mesh` for a :class:`monorecon.core.mesh.Mesh` (or any object with ``verts``, ``faces`` and
    optional ``vertex_colors``, ``uvs``, ``texture``, ``vertex_normals``); keyword arguments override / add to those."""
    fields = {name: getattr(mesh, name, None) for name in ("vertex_colors", "uvs", "texture")}
    if getattr(mesh, "vertex_normals", None) is not None:
        fields["normals"] = mesh.vertex_normals
    fields.update(kwargs)
    return render_mesh(mesh.verts, mesh.faces, cameras, **fields)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def _batched(x: torch.Tensor, name: str, batch: int, channels: int, rows: int | None = None) -> torch.Tensor:
    """(N, C) or (1 | B, N, C) -> (B, N, C); ``rows``: N must be this (one per vertex)."""
    x = check_tensor(x, name, floating=True)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != channels or x.shape[0] not in (1, batch):
        raise ValueError(f"{name} must be (N, {channels}) or ({batch}, N, {channels}), got {tuple(x.shape)}")
    if rows is not None and x.shape[1] != rows:
        raise ValueError(f"{name} has {x.shape[1]} rows, the mesh has {rows} vertices")
    return x.expand(batch, -1, -1)


def _pack(fragments: Fragments) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Gather the non-empty fragments of each batch element to the front.

    Returns:
        face_index (B, M) (-1 padding), bary (B, M, 3), and ``unpack`` mapping (B, M, C) values back to
        (B, H, W, K, C) (zero in empty slots); M is the largest number of non-empty fragments of a batch element.
    """
    shape = fragments.face_index.shape
    batch = shape[0]
    mask = fragments.mask.reshape(batch, -1)
    b, slot = mask.nonzero(as_tuple=True)  # ordered by batch element
    counts = mask.sum(1)
    pos = torch.arange(b.numel(), device=b.device) - (counts.cumsum(0) - counts)[b]
    size = max(int(counts.max()), 1)
    face_index = fragments.face_index.new_full((batch, size), -1).index_put(
        (b, pos), fragments.face_index.reshape(batch, -1)[b, slot]
    )
    bary = fragments.bary.new_zeros(batch, size, 3).index_put((b, pos), fragments.bary.reshape(batch, -1, 3)[b, slot])

    def unpack(values: torch.Tensor) -> torch.Tensor:
        full = values.new_zeros(batch, mask.shape[1], values.shape[-1]).index_put((b, slot), values[b, pos])
        return full.reshape(*shape, values.shape[-1])

    return face_index, bary, unpack


def _albedo(
    face_index: torch.Tensor,
    bary: torch.Tensor,
    faces: torch.Tensor,
    verts: torch.Tensor,
    vertex_colors: torch.Tensor | None,
    uvs: torch.Tensor | None,
    face_uvs: torch.Tensor | None,
    texture: torch.Tensor | None,
) -> torch.Tensor:
    """(B, M, 3) albedo of packed fragments from the texture, the vertex colours or white."""
    if texture is not None:
        if uvs is None:
            raise ValueError("texture given without uvs")
        texture = check_tensor(texture, "texture", floating=True)
        batch = verts.shape[0]
        if texture.shape[-1:] != (3,) or texture.dim() not in (3, 4) or texture.shape[:-3] not in ((), (1,), (batch,)):
            raise ValueError(f"texture must be (Ht, Wt, 3) or ({batch}, Ht, Wt, 3), got {tuple(texture.shape)}")
        uvs = check_tensor(uvs, "uvs", (None, 2), floating=True)
        if face_uvs is None:
            if uvs.shape[0] != verts.shape[1]:
                raise ValueError(f"uvs has {uvs.shape[0]} rows but the mesh has {verts.shape[1]} vertices")
            face_uvs = faces
        else:
            face_uvs = check_tensor(face_uvs, "face_uvs", tuple(faces.shape), floating=False).long()
            if int(face_uvs.min()) < 0 or int(face_uvs.max()) >= uvs.shape[0]:
                raise ValueError(f"face_uvs index out of range for {uvs.shape[0]} uvs")
        uv = interpolate_face_attributes(face_index, bary, uvs[face_uvs.to(uvs.device)])
        return sample_texture(texture, repeat_uvs(uv))  # per pixel: a tiling texture repeats across a face
    if vertex_colors is not None:
        vertex_colors = _batched(vertex_colors, "vertex_colors", verts.shape[0], 3, rows=verts.shape[1])
        return interpolate_face_attributes(face_index, bary, vertex_colors[:, faces])
    return torch.ones(*face_index.shape, 3, dtype=verts.dtype, device=verts.device)


def _view_directions(cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """(B, ..., 3) directions from the points towards the viewer (the camera's back axis if orthographic)."""
    shape = (cameras.batch_size, *([1] * (points.dim() - 2)), 3)
    if cameras.is_perspective:
        return cameras.position.reshape(shape) - points
    return cameras.c2w[:, :3, 2].reshape(shape).expand_as(points)
