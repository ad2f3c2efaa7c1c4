"""Attribute interpolation, textures, normals, lights, materials, shading and colour blending.

Everything is plain differentiable torch (w.r.t. vertices, colours, textures, light and material parameters).
Shapes: per-fragment tensors are (B, H, W, K, C) as produced from :class:`monorecon.core.raster.Fragments`; light and
material parameters are (3,) (shared) or (B, 3) (one per batch element) and broadcast over the pixel dimensions.

Conventions:

* **Texture coordinates**: ``u`` goes right, ``v`` goes **up from the bottom row** of the texture image, which is
  stored like an image (row 0 at the top): ``(u, v) = (0, 0)`` is the bottom-left corner, the centre of texel
  (row r, column c) of an (Ht, Wt) texture is at ``((c + 0.5) / Wt, 1 - (r + 0.5) / Ht)``. This is the OBJ / OpenGL
  convention (and :mod:`monorecon.core.mesh`'s); glTF counts ``v`` down from the top, so exporters write ``1 - v``.
  Sampling is bilinear between texel centres, clamped at the borders.
* **Lights**: ``DirectionalLights.direction`` points from the scene **towards** the light. Colours combine as
  ``colour * (ka * La + kd * Ld * max(0, n.l)) + ks * Ls * spec`` (k: material, L: light).
* **Phong**: the classic reflection model, ``spec = max(0, r.v) ** shininess`` with ``r = 2 (n.l) n - l`` the mirrored
  light direction and ``v`` the direction to the viewer; no highlight where ``n.l <= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_tensor
from .raster import Fragments, soft_silhouette

__all__ = [
    "UV_TOLERANCE",
    "DirectionalLights",
    "Materials",
    "PointLights",
    "face_normals",
    "hard_rgb_blend",
    "interpolate_face_attributes",
    "interpolate_vertex_attributes",
    "lambert_shading",
    "phong_shading",
    "repeat_uvs",
    "sample_texture",
    "softmax_rgb_blend",
    "uvs_repeat",
    "vertex_normals",
]

Color = torch.Tensor | tuple[float, float, float]


# --------------------------------------------------------------------------------------------------------------------
# Interpolation and textures
# --------------------------------------------------------------------------------------------------------------------
def interpolate_face_attributes(
    face_index: torch.Tensor, bary: torch.Tensor, face_attributes: torch.Tensor
) -> torch.Tensor:
    """Blend per-face-corner attributes with barycentric weights.

    Args:
        face_index: (B, ...) long, -1 where empty; e.g. (B, H, W, K) from :class:`Fragments`.
        bary: (B, ..., 3) barycentric weights.
        face_attributes: (F, 3, D) attribute of each face corner, or (B, F, 3, D) one set per batch element.

    Returns:
        (B, ..., D) interpolated attributes, zero where ``face_index`` is -1.
    """
    check_tensor(face_index, "face_index", floating=False)
    if face_index.dim() < 1:
        raise ValueError("face_index must have a batch dimension")
    check_tensor(bary, "bary", (*face_index.shape, 3), floating=True, finite=False)
    face_attributes = check_tensor(face_attributes, "face_attributes", floating=True)
    if face_attributes.dim() not in (3, 4) or face_attributes.shape[-2] != 3:
        raise ValueError(f"face_attributes must be (F, 3, D) or (B, F, 3, D), got {tuple(face_attributes.shape)}")
    mask = face_index >= 0
    index = face_index.clamp_min(0)
    if face_attributes.dim() == 3:
        corners = face_attributes[index]  # (B, ..., 3, D)
    else:
        batch = face_index.shape[0]
        if face_attributes.shape[0] not in (1, batch):
            raise ValueError(f"face_attributes batch {face_attributes.shape[0]} != fragments batch {batch}")
        batch_index = torch.arange(batch, device=index.device).reshape(-1, *([1] * (index.dim() - 1)))
        corners = face_attributes.expand(batch, -1, -1, -1)[batch_index, index]
    # Explicit sum over the three corners: much faster than a reduction over a size-3 dimension on CPU.
    blended = bary[..., 0, None] * corners[..., 0, :] + bary[..., 1, None] * corners[..., 1, :]
    return (blended + bary[..., 2, None] * corners[..., 2, :]) * mask[..., None]


def interpolate_vertex_attributes(
    fragments: Fragments, faces: torch.Tensor, vertex_attributes: torch.Tensor
) -> torch.Tensor:
    """(V, D) or (B, V, D) per-vertex attributes -> (B, H, W, K, D) at the fragments (zero where empty)."""
    vertex_attributes = check_tensor(vertex_attributes, "vertex_attributes", floating=True)
    if vertex_attributes.dim() not in (2, 3):
        raise ValueError(f"vertex_attributes must be (V, D) or (B, V, D), got {tuple(vertex_attributes.shape)}")
    faces = check_tensor(faces, "faces", (None, 3), floating=False)
    return interpolate_face_attributes(fragments.face_index, fragments.bary, vertex_attributes[..., faces, :])


UV_TOLERANCE = 1e-4
"""UVs this close outside [0, 1] are an exporter's rounding of the texture's edge, not a step into the next repeat."""


def repeat_uvs(uv: torch.Tensor) -> torch.Tensor:
    """(..., 2) UVs of a repeating texture (glTF's default wrap) brought into [0, 1]: coordinates further than
    :data:`UV_TOLERANCE` outside it are wrapped (``u mod 1``), the others clamped onto its edges."""
    return torch.where(_past_texture(uv), torch.remainder(uv, 1.0), uv.clamp(0.0, 1.0))


def uvs_repeat(uv: torch.Tensor) -> bool:
    """Whether (..., 2) UVs step into another repeat of the texture (beyond :data:`UV_TOLERANCE`): an exported
    file then needs a repeating sampler, not a clamped one."""
    return bool(_past_texture(uv).any())


def _past_texture(uv: torch.Tensor) -> torch.Tensor:
    """Where UV coordinates lie further than :data:`UV_TOLERANCE` outside [0, 1]."""
    return (uv < -UV_TOLERANCE) | (uv > 1 + UV_TOLERANCE)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup (module convention: ``v`` up from the bottom row, texel centres, clamped borders).

    Args:
        texture: (Ht, Wt, C) or (B, Ht, Wt, C) texels, row 0 at the top.
        uv: (B, ..., 2) texture coordinates.

    Returns:
        (B, ..., C) sampled values; differentiable w.r.t. ``texture`` and ``uv``.
    """
    texture = check_tensor(texture, "texture", floating=True)
    uv = check_tensor(uv, "uv", floating=True)
    if texture.dim() == 3:
        texture = texture[None]
    if texture.dim() != 4 or 0 in texture.shape:
        raise ValueError(f"texture must be (Ht, Wt, C) or (B, Ht, Wt, C), got {tuple(texture.shape)}")
    if uv.dim() < 2 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B, ..., 2), got {tuple(uv.shape)}")
    batch = uv.shape[0]
    if texture.shape[0] not in (1, batch):
        raise ValueError(f"texture batch {texture.shape[0]} does not match uv batch {batch}")
    image = texture.permute(0, 3, 1, 2).expand(batch, -1, -1, -1)  # (B, C, Ht, Wt)
    # grid_sample: x = -1 / +1 at the left / right image edges, y = -1 at the top edge; v counts up from the bottom.
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1).reshape(batch, -1, 1, 2).to(image)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[..., 0].transpose(1, 2).reshape(*uv.shape[:-1], texture.shape[-1])


# --------------------------------------------------------------------------------------------------------------------
# Normals
# --------------------------------------------------------------------------------------------------------------------
def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(…, V, 3) vertices, (F, 3) faces -> (…, F, 3) unit normals ``(v1 - v0) x (v2 - v0)``; zero if degenerate."""
    return F.normalize(_face_cross(verts, faces), dim=-1)


def face_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(…, V, 3) vertices, (F, 3) faces -> (…, F) triangle areas."""
    return _face_cross(verts, faces).norm(dim=-1) / 2


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(…, V, 3) vertices, (F, 3) faces -> (…, V, 3) unit area-weighted vertex normals; zero where undefined."""
    cross = _face_cross(verts, faces)  # length = twice the face area: the sum below is area weighted
    summed = torch.zeros_like(verts)
    for corner in range(3):
        summed = summed.index_add(-2, faces[:, corner], cross)
    return F.normalize(summed, dim=-1)


def _face_cross(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    verts = check_tensor(verts, "verts", floating=True)
    faces = check_tensor(faces, "faces", (None, 3), floating=False)
    if verts.dim() < 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (..., V, 3), got {tuple(verts.shape)}")
    v0, v1, v2 = (verts[..., faces[:, corner], :] for corner in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# Lights and materials
# --------------------------------------------------------------------------------------------------------------------
def _parameter(value: Color | float | torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
    """A (3,) / (B, 3) / scalar parameter as a tensor of ``like``'s dtype and device, reshaped to broadcast against
    ``like`` (B, ..., 3): (B, 3) -> (B, 1, ..., 1, 3). Keeps the autograd graph of tensor inputs."""
    value = torch.as_tensor(value).to(dtype=like.dtype, device=like.device)
    check_tensor(value, name)
    if value.dim() <= 1:
        return value
    if value.dim() != 2 or value.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"{name} must be a scalar, (C,) or (B, C) with B = {like.shape[0]}, got {tuple(value.shape)}")
    return value.reshape(value.shape[0], *([1] * (like.dim() - 2)), value.shape[1])


@dataclass
class DirectionalLights:
    """Light from a direction (sun). ``direction``: (3,) or (B, 3), pointing from the scene towards the light.

    Colours are (3,) or (B, 3) (tuples or tensors, tensors stay differentiable).
    """

    direction: Color = (0.0, 0.0, 1.0)
    ambient_color: Color = (0.5, 0.5, 0.5)
    diffuse_color: Color = (0.3, 0.3, 0.3)
    specular_color: Color = (0.2, 0.2, 0.2)

    def directions_to_light(self, points: torch.Tensor) -> torch.Tensor:
        """(B, ..., 3) points -> (B, ..., 3) unit vectors towards the light."""
        direction = F.normalize(_parameter(self.direction, "light direction", points), dim=-1)
        return direction.expand_as(points)


@dataclass
class PointLights:
    """Light from a point. ``location``: (3,) or (B, 3) world position; colours as :class:`DirectionalLights`."""

    location: Color = (0.0, 1.0, 0.0)
    ambient_color: Color = (0.5, 0.5, 0.5)
    diffuse_color: Color = (0.3, 0.3, 0.3)
    specular_color: Color = (0.2, 0.2, 0.2)

    def directions_to_light(self, points: torch.Tensor) -> torch.Tensor:
        """(B, ..., 3) points -> (B, ..., 3) unit vectors from each point towards the light."""
        return F.normalize(_parameter(self.location, "light location", points) - points, dim=-1)


Lights = DirectionalLights | PointLights


@dataclass
class Materials:
    """Surface reflectance: colours (3,) or (B, 3) multiply the light colours; ``shininess`` is the Phong exponent
    (a number, or (B,) one per camera)."""

    ambient_color: Color = (1.0, 1.0, 1.0)
    diffuse_color: Color = (1.0, 1.0, 1.0)
    specular_color: Color = (1.0, 1.0, 1.0)
    shininess: float | torch.Tensor = 64.0


# --------------------------------------------------------------------------------------------------------------------
# Shading
# --------------------------------------------------------------------------------------------------------------------
def lambert_shading(
    colors: torch.Tensor,
    normals: torch.Tensor,
    points: torch.Tensor,
    lights: Lights,
    materials: Materials | None = None,
) -> torch.Tensor:
    """Ambient + diffuse: ``colors * (ka La + kd Ld max(0, n.l))``.

    Args:
        colors: (B, ..., 3) albedo; normals: (B, ..., 3) (normalised here); points: (B, ..., 3) world positions.

    Returns:
        (B, ..., 3) shaded colours (not clamped).
    """
    normals = F.normalize(normals, dim=-1)
    return _ambient_diffuse(
        colors, normals, points, lights.directions_to_light(points), lights, materials or Materials()
    )


def phong_shading(
    colors: torch.Tensor,
    normals: torch.Tensor,
    points: torch.Tensor,
    lights: Lights,
    view_directions: torch.Tensor,
    materials: Materials | None = None,
) -> torch.Tensor:
    """Phong: :func:`lambert_shading` plus ``ks Ls max(0, r.v) ** shininess`` (white highlight, not tinted).

    Args:
        view_directions: (B, ..., 3) vectors from the points towards the viewer (normalised here).

    Returns:
        (B, ..., 3) shaded colours (not clamped).
    """
    materials = materials or Materials()
    normals = F.normalize(normals, dim=-1)
    to_light = lights.directions_to_light(points)
    cos = _dot(normals, to_light)
    reflected = 2 * cos * normals - to_light
    cos_view = _dot(reflected, F.normalize(view_directions, dim=-1)).clamp_min(0.0)
    shininess = torch.as_tensor(materials.shininess)
    shininess = _parameter(shininess.reshape(-1, 1) if shininess.dim() == 1 else shininess, "shininess", points)
    highlight = torch.where(cos > 0, cos_view**shininess, 0.0)
    specular = _parameter(materials.specular_color, "specular_color", points) * _parameter(
        lights.specular_color, "light specular_color", points
    )
    return _ambient_diffuse(colors, normals, points, to_light, lights, materials) + specular * highlight


def _ambient_diffuse(
    colors: torch.Tensor,
    unit_normals: torch.Tensor,
    points: torch.Tensor,
    to_light: torch.Tensor,
    lights: Lights,
    materials: Materials,
) -> torch.Tensor:
    ambient = _parameter(materials.ambient_color, "ambient_color", points) * _parameter(
        lights.ambient_color, "light ambient_color", points
    )
    diffuse = _parameter(materials.diffuse_color, "diffuse_color", points) * _parameter(
        lights.diffuse_color, "light diffuse_color", points
    )
    return colors * (ambient + diffuse * _dot(unit_normals, to_light).clamp_min(0.0))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(…, 3) x (…, 3) -> (…, 1) dot products (explicit sum: faster than a size-3 reduction on CPU)."""
    return a[..., 0:1] * b[..., 0:1] + a[..., 1:2] * b[..., 1:2] + a[..., 2:3] * b[..., 2:3]


# --------------------------------------------------------------------------------------------------------------------
# Blending the K fragments of each pixel
# --------------------------------------------------------------------------------------------------------------------
def hard_rgb_blend(colors: torch.Tensor, fragments: Fragments, background: Color = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Nearest fragment's colour, background where empty.

    Args:
        colors: (B, H, W, K, 3) per-fragment colours.

    Returns:
        (B, H, W, 4) RGBA; alpha is 1 where a face covers the pixel, else 0.
    """
    check_tensor(colors, "colors", (*fragments.face_index.shape, 3), floating=True, finite=False)
    covered = fragments.face_index[..., 0] >= 0
    rgb = torch.where(covered[..., None], colors[..., 0, :], _parameter(background, "background", colors[..., 0, :]))
    return torch.cat([rgb, covered[..., None].to(rgb.dtype)], dim=-1)


def softmax_rgb_blend(
    colors: torch.Tensor,
    fragments: Fragments,
    sigma: float = 1e-4,
    gamma: float = 1e-4,
    znear: float = 1.0,
    zfar: float = 100.0,
    background: Color = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Soft rasteriser colour blend (SPEC §4).

    ``w_j = p_j exp((zinv_j - max_k zinv_k) / gamma)`` with ``p_j = sigmoid(-dist_j / sigma)`` and
    ``zinv = (zfar - depth) / (zfar - znear)``; the background gets ``delta = max(exp((1e-10 - max zinv) / gamma),
    1e-10)``; ``rgb = (sum_j w_j c_j + delta * background) / (sum_j w_j + delta)``. ``max zinv`` is taken over the
    faces found (0 where none) and clamped to >= 1e-10. Alpha is :func:`soft_silhouette`.

    Args:
        colors: (B, H, W, K, 3) per-fragment colours.
        sigma, gamma: edge sharpness and depth softness; znear, zfar: the camera's clipping depths.

    Returns:
        (B, H, W, 4) RGBA.
    """
    eps = 1e-10
    if not (sigma > 0 and gamma > 0 and zfar > znear):
        raise ValueError(f"need sigma > 0, gamma > 0 and zfar > znear, got {sigma}, {gamma}, {znear}, {zfar}")
    check_tensor(colors, "colors", (*fragments.face_index.shape, 3), floating=True, finite=False)
    mask = fragments.mask.to(colors.dtype)
    prob = torch.sigmoid(-fragments.dist / sigma) * mask
    zinv = (zfar - fragments.depth) / (zfar - znear) * mask
    zinv_max = zinv.amax(dim=-1, keepdim=True).clamp_min(eps)
    weights = prob * torch.exp((zinv - zinv_max) / gamma)
    delta = torch.exp((eps - zinv_max) / gamma).clamp_min(eps)
    background = _parameter(background, "background", colors[..., 0, :])
    rgb = ((weights[..., None] * colors).sum(-2) + delta * background) / (weights.sum(-1, keepdim=True) + delta)
    return torch.cat([rgb, soft_silhouette(fragments, sigma)[..., None]], dim=-1)
