"""Cameras, look-at, orbits, coordinate transforms and rays.

Conventions (used everywhere in monorecon; pinned by ``tests/test_cameras.py``):

* **World**: right-handed, **+Y up**, +X right and **+Z towards the viewer of the input (front) view**. This is the
  glTF convention, so meshes are exported without any rotation.
* **Camera** (OpenGL style): the camera looks down its own **-Z**, +X is image right, +Y image up. A camera is given
  by its camera-to-world matrix ``c2w`` (B, 4, 4) whose columns are ``[right, up, back, position]``.
  ``depth = -z_camera`` is positive in front of the camera.
* **NDC**: ``x_ndc`` in [-1, 1] from the left to the right image edge, ``y_ndc`` in [-1, 1] from the bottom to the
  top edge (each axis spans its own side of the image).
* **Pixels**: ``u`` from the left edge to the right, ``v`` from the top edge down, in pixel units; the centre of the
  pixel in row ``i``, column ``j`` is ``(u, v) = (j + 0.5, i + 0.5)``.
* **Spherical** positions: ``eye = d * (cos(el) sin(az), sin(el), cos(el) cos(az))``; azimuth 0 is the front (+Z),
  azimuth 90 deg is +X, positive elevation is above.

Named conversions to other frames live at the end of this module (:func:`triposr_to_world`, ...).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_image_size, check_tensor

__all__ = [
    "CAMERA_CONVENTION",
    "Cameras",
    "OrthographicCameras",
    "PerspectiveCameras",
    "WeakPerspectiveCameras",
    "fibonacci_sphere",
    "look_at",
    "orbit_c2w",
    "pixel_centers",
    "quaternion_to_matrix",
    "spherical_to_cartesian",
    "triposr_to_world",
    "world_to_triposr",
    "world_to_z_up",
    "z_up_to_world",
]

#: The frame of every camera monorecon writes to JSON (``fit-pose``'s ``camera.json``, ``reconstruct``'s
#: ``result.json``), said in the file itself.
CAMERA_CONVENTION = "monorecon: world +Y up, +Z front; c2w columns [right, up, back, position], camera looks down -Z"


# --------------------------------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------------------------------
def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world matrices of cameras at ``eye`` looking at ``target``.

    Args:
        eye: (B, 3) or (3,) camera positions (world).
        target: (B, 3) or (3,) points looked at; default the origin.
        up: (B, 3) or (3,) world up hint; default +Y.

    Returns:
        (B, 4, 4) c2w with columns [right, up, back, position]; differentiable w.r.t. ``eye`` and ``target``.
    """
    eye = _points(eye, "eye")
    target = eye.new_zeros(1, 3) if target is None else _points(target, "target", len(eye)).to(eye)
    up = eye.new_tensor([[0.0, 1.0, 0.0]]) if up is None else _points(up, "up", len(eye)).to(eye)
    target, up = target.expand_as(eye), up.expand_as(eye)
    back = eye - target
    if bool((back.norm(dim=-1) < 1e-9).any()):
        raise ValueError("look_at: eye and target coincide")
    back = F.normalize(back, dim=-1)
    right = torch.linalg.cross(up, back, dim=-1)
    if bool((right.norm(dim=-1) < 1e-6).any()):
        raise ValueError("look_at: viewing direction is parallel to the up vector; choose another up")
    right = F.normalize(right, dim=-1)
    true_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def _points(points: torch.Tensor, name: str, batch: int | None = None) -> torch.Tensor:
    """A (3,) or (B, 3) float tensor as (B, 3); ``batch``: B must be 1 or this."""
    points = check_tensor(points, name, floating=True)
    if points.dim() not in (1, 2) or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (3,) or (B, 3), got {tuple(points.shape)}")
    points = points.reshape(-1, 3)
    if batch is not None and len(points) not in (1, batch):
        raise ValueError(f"{name} has {len(points)} rows for {batch} cameras (give 1 or {batch})")
    return points


def spherical_to_cartesian(
    azimuth_deg: torch.Tensor | float, elevation_deg: torch.Tensor | float, distance: torch.Tensor | float
) -> torch.Tensor:
    """(…,) azimuth / elevation in degrees and distance -> (…, 3) positions (module convention), in the dtype of a
    floating tensor given (the default dtype for numbers)."""
    given = (x.dtype for x in (azimuth_deg, elevation_deg, distance) if torch.is_tensor(x) and x.is_floating_point())
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=next(given, torch.get_default_dtype())))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=az.dtype))
    d = torch.as_tensor(distance, dtype=az.dtype)
    az, el, d = torch.broadcast_tensors(az, el, d)
    return torch.stack([d * el.cos() * az.sin(), d * el.sin(), d * el.cos() * az.cos()], dim=-1)


def orbit_c2w(
    azimuth_deg: torch.Tensor | float,
    elevation_deg: torch.Tensor | float,
    distance: torch.Tensor | float,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 4, 4) c2w of cameras on a sphere around ``target`` (default origin) looking at it, world up +Y.

    At a pole (|elevation| > 89.999 deg), where +Y is along the view, the up hint is the limit of the image's up
    direction as the elevation approaches it at the camera's azimuth, ``-sign(el) (sin az, 0, cos az)``, so the
    image does not roll as a camera passes that elevation.
    """
    eye = spherical_to_cartesian(azimuth_deg, elevation_deg, distance).reshape(-1, 3)
    if target is not None:
        eye = eye + target.to(eye).reshape(-1, 3)
    el = torch.as_tensor(elevation_deg, dtype=eye.dtype).reshape(-1).expand(eye.shape[0])
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=eye.dtype)).reshape(-1).expand(eye.shape[0])
    pole_up = -el.sign()[:, None] * torch.stack([az.sin(), torch.zeros_like(az), az.cos()], dim=-1)
    up = torch.where((el.abs() > 89.999)[:, None], pole_up, eye.new_tensor([0.0, 1.0, 0.0]))
    return look_at(eye, target, up)


def fibonacci_sphere(n: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 3) unit vectors spread evenly on the sphere (golden-angle spiral), deterministic."""
    if n < 1:
        raise ValueError(f"fibonacci_sphere needs n >= 1, got {n}")
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n
    r = (1.0 - y * y).clamp_min(0).sqrt()
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * phi.sin(), y, r * phi.cos()], dim=-1).to(dtype)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(…, 4) quaternions (w, x, y, z), normalised here, -> (…, 3, 3) rotation matrices."""
    q = check_tensor(q, "quaternion", floating=True)
    if q.shape[-1] != 4:
        raise ValueError(f"quaternion must have last dimension 4 (w, x, y, z), got {tuple(q.shape)}")
    norm = q.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-12).any()):
        raise ValueError("quaternion has zero norm")
    w, x, y, z = (q / norm).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def pixel_centers(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates ``(u, v) = (j + 0.5, i + 0.5)``."""
    height, width = check_image_size(height, width)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Cameras:
    """Base class: a batch of B cameras with an image size.

    Subclasses implement :meth:`camera_to_ndc`, :meth:`ndc_to_camera_ray` and set ``is_perspective``.

    Attributes:
        c2w: (B, 4, 4) camera-to-world matrices (module convention).
        height, width: image size in pixels.
        znear, zfar: near and far depths (positive, in front of the camera) of the projection matrix. The mesh
            renderers skip faces with a vertex nearer than ``znear`` and do not clip at ``zfar``, which scales the
            soft blend's depths (:func:`monorecon.core.shading.softmax_rgb_blend`): keep the scene nearer.
    """

    c2w: torch.Tensor
    height: int
    width: int
    znear: float = 0.01
    zfar: float = 100.0

    is_perspective = True

    def __post_init__(self) -> None:
        c2w = check_tensor(self.c2w, "c2w", floating=True)
        if c2w.shape == (4, 4):
            c2w = c2w[None]
        check_tensor(c2w, "c2w", (None, 4, 4))
        rot = c2w[:, :3, :3].detach()
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        if not torch.allclose(rot.transpose(1, 2) @ rot, eye.expand_as(rot), atol=1e-3):
            raise ValueError("c2w rotation part is not orthonormal")
        if bool((torch.linalg.det(rot) < 0).any()):
            raise ValueError("c2w rotation part mirrors the view (determinant -1): not a camera pose")
        if not torch.allclose(c2w[:, 3].detach(), eye.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(len(c2w), 4)):
            raise ValueError("c2w bottom row must be (0, 0, 0, 1)")
        self.c2w = c2w
        self.height, self.width = check_image_size(self.height, self.width)
        if not (0 < self.znear < self.zfar) or not math.isfinite(self.zfar):
            raise ValueError(f"need 0 < znear < zfar < inf, got znear={self.znear}, zfar={self.zfar}")

    # -- basic properties ------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> torch.Tensor:
        """(B, 3) camera centres in world space."""
        return self.c2w[:, :3, 3]

    @property
    def w2c(self) -> torch.Tensor:
        """(B, 4, 4) world-to-camera matrices (rigid inverse of ``c2w``)."""
        rot_t = self.c2w[:, :3, :3].transpose(1, 2)
        w2c = torch.zeros_like(self.c2w)
        w2c[:, :3, :3] = rot_t
        w2c[:, :3, 3] = -(rot_t @ self.c2w[:, :3, 3:]).squeeze(-1)
        w2c[:, 3, 3] = 1.0
        return w2c

    @property
    def aspect(self) -> float:
        return self.width / self.height

    # -- transforms ------------------------------------------------------------------------------------------------
    def _batched_points(self, points: torch.Tensor) -> torch.Tensor:
        points = check_tensor(points, "points", floating=True).to(self.c2w.dtype)
        if points.dim() == 2:
            points = points[None].expand(self.batch_size, -1, -1)
        check_tensor(points, "points", (None, None, 3))
        if points.shape[0] not in (1, self.batch_size):
            raise ValueError(f"points batch {points.shape[0]} does not match {self.batch_size} cameras")
        return points.expand(self.batch_size, -1, -1)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) or (N, 3) world points -> (B, N, 3) camera-space points."""
        points = self._batched_points(points)
        w2c = self.w2c
        return points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]

    def camera_to_world(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) camera-space points -> (B, N, 3) world points."""
        points = self._batched_points(points)
        return points @ self.c2w[:, :3, :3].transpose(1, 2) + self.c2w[:, None, :3, 3]

    def camera_to_ndc(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) camera-space points -> (B, N, 3) ``(x_ndc, y_ndc, depth)``."""
        raise NotImplementedError

    def transform_points_ndc(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) or (N, 3) world points -> (B, N, 3) ``(x_ndc, y_ndc, depth)``, depth > 0 in front."""
        return self.camera_to_ndc(self.world_to_camera(points))

    def ndc_to_pixel(self, xy_ndc: torch.Tensor) -> torch.Tensor:
        """(…, 2) NDC -> (…, 2) pixel coordinates ``(u, v)``."""
        u = (xy_ndc[..., 0] + 1.0) * 0.5 * self.width
        v = (1.0 - xy_ndc[..., 1]) * 0.5 * self.height
        return torch.stack([u, v], dim=-1)

    def pixel_to_ndc(self, uv: torch.Tensor) -> torch.Tensor:
        """(…, 2) pixel coordinates ``(u, v)`` -> (…, 2) NDC."""
        x = uv[..., 0] / self.width * 2.0 - 1.0
        y = 1.0 - uv[..., 1] / self.height * 2.0
        return torch.stack([x, y], dim=-1)

    def transform_points_screen(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) or (N, 3) world points -> (B, N, 3) ``(u, v, depth)`` in pixels."""
        ndc = self.transform_points_ndc(points)
        return torch.cat([self.ndc_to_pixel(ndc[..., :2]), ndc[..., 2:]], dim=-1)

    # -- rays ------------------------------------------------------------------------------------------------------
    def ndc_to_camera_ray(self, xy_ndc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, …, 2) NDC -> camera-space ray origins and (unnormalised) directions, each (B, …, 3)."""
        raise NotImplementedError

    def get_rays(self, *, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through every pixel centre.

        Returns:
            origins, directions: (B, H, W, 3) world space; directions have unit length if ``normalize``,
            else unit depth (``-z_camera`` = 1) for perspective cameras.
        """
        uv = pixel_centers(self.height, self.width, dtype=self.c2w.dtype, device=self.c2w.device)
        ndc = self.pixel_to_ndc(uv)[None].expand(self.batch_size, -1, -1, -1)
        o_cam, d_cam = self.ndc_to_camera_ray(ndc)
        rot = self.c2w[:, None, None, :3, :3]
        directions = (rot @ d_cam[..., None]).squeeze(-1)
        origins = (rot @ o_cam[..., None]).squeeze(-1) + self.c2w[:, None, None, :3, 3]
        if normalize:
            directions = F.normalize(directions, dim=-1)
        return origins, directions

    def resized(self, height: int, width: int) -> Cameras:
        """The same cameras for an image resampled to ``height`` x ``width`` (each pixel keeps its ray).

        The base class's projection is defined in NDC, which a resampling keeps; cameras with intrinsics in pixels
        scale them (:meth:`PerspectiveCameras.resized`). Changing the aspect ratio is refused: no resampling of one
        image gives the other's view.
        """
        self.check_same_aspect(height, width)
        return dataclasses.replace(self, height=height, width=width)

    def check_same_aspect(self, height: int, width: int) -> None:
        """Refuse (``ValueError``) an image size of another aspect ratio than the cameras' (beyond the rounding of a
        resampling): no resampling of one image gives the other's view."""
        height, width = check_image_size(height, width)
        if abs(height * self.width - width * self.height) > max(self.width, self.height):  # beyond rounding
            raise ValueError(f"resizing {self.height} x {self.width} to {height} x {width} changes the aspect ratio")

    def __getitem__(self, index: int | slice) -> Cameras:
        """A sub-batch of the cameras (same intrinsics class); an integer gives a batch of one."""
        raise NotImplementedError

    def _per_camera(self, value: torch.Tensor | float, name: str, width: int | None = None) -> torch.Tensor:
        """``value`` (one value or one per camera; rows of ``width``) as a (B,) or (B, width) tensor of the c2w's
        dtype and device (differentiable)."""
        tensor = torch.as_tensor(value, dtype=self.c2w.dtype, device=self.c2w.device)
        rows = tensor.numel() // (width or 1)
        if rows * (width or 1) != tensor.numel() or rows not in (1, self.batch_size):
            each = "a value" if width is None else f"{width} values"
            raise ValueError(f"{name} must give {each} for all or for each of {self.batch_size} cameras, got shape "
                             f"{tuple(tensor.shape)}")  # fmt: skip
        check_tensor(tensor, name)
        shape = (self.batch_size,) if width is None else (self.batch_size, width)
        return tensor.reshape(rows, *shape[1:]).expand(shape)

    def _as_slice(self, index: int | slice) -> slice:
        """``index`` as a slice of the batch: an integer (negative from the end) must name a camera."""
        if isinstance(index, slice):
            return index
        position = operator.index(index)
        if not -self.batch_size <= position < self.batch_size:
            raise IndexError(f"camera index {position} out of range for {self.batch_size} cameras")
        position %= self.batch_size
        return slice(position, position + 1)


@dataclass
class PerspectiveCameras(Cameras):
    """Pinhole cameras with intrinsics in pixels.

    Give either ``fov_y_deg`` (vertical field of view, square pixels, centred principal point) or ``focal``
    ``(fx, fy)`` and ``principal`` ``(cx, cy)`` in pixels; each may be a float or a (B,) tensor (differentiable).
    Projection: ``u = cx + fx * x / depth``, ``v = cy - fy * y / depth`` with ``depth = -z`` (camera space).
    """

    fov_y_deg: torch.Tensor | float | None = None
    focal: torch.Tensor | tuple[float, float] | None = None
    principal: torch.Tensor | tuple[float, float] | None = None

    is_perspective = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.focal is None:
            if self.fov_y_deg is None:
                raise ValueError("PerspectiveCameras needs fov_y_deg or focal")
            fov = self._per_camera(self.fov_y_deg, "fov_y_deg")
            if bool(((fov <= 0) | (fov >= 180)).any()):
                raise ValueError(f"fov_y_deg must lie in (0, 180), got {fov.tolist()}")
            fy = 0.5 * self.height / torch.tan(torch.deg2rad(fov) / 2)
            focal = torch.stack([fy, fy], dim=-1)
        else:
            focal = self._per_camera(self.focal, "focal", 2)
            if bool((focal <= 0).any()):
                raise ValueError("focal lengths must be positive")
            self.fov_y_deg = torch.rad2deg(2 * torch.atan(0.5 * self.height / focal[:, 1]))
        if self.principal is None:
            self.principal = self.c2w.new_tensor([self.width / 2.0, self.height / 2.0])
        self.focal, self.principal = focal, self._per_camera(self.principal, "principal", 2)

    @property
    def K(self) -> torch.Tensor:
        """(B, 3, 3) intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (OpenCV-style, v down)."""
        k = torch.zeros(self.batch_size, 3, 3, dtype=self.c2w.dtype, device=self.c2w.device)
        k[:, 0, 0], k[:, 1, 1] = self.focal[:, 0], self.focal[:, 1]
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = self.principal[:, 0], self.principal[:, 1], 1.0
        return k

    def projection_matrix(self) -> torch.Tensor:
        """(B, 4, 4) OpenGL projection matrix: camera space -> clip space (NDC z in [-1, 1] over [znear, zfar])."""
        fx, fy = self.focal.unbind(-1)
        cx, cy = self.principal.unbind(-1)
        n, f = self.znear, self.zfar
        p = torch.zeros(self.batch_size, 4, 4, dtype=self.c2w.dtype, device=self.c2w.device)
        p[:, 0, 0] = 2 * fx / self.width
        p[:, 1, 1] = 2 * fy / self.height
        p[:, 0, 2] = 1 - 2 * cx / self.width
        p[:, 1, 2] = 2 * cy / self.height - 1
        p[:, 2, 2] = -(f + n) / (f - n)
        p[:, 2, 3] = -2 * f * n / (f - n)
        p[:, 3, 2] = -1.0
        return p

    def camera_to_ndc(self, points: torch.Tensor) -> torch.Tensor:
        depth = -points[..., 2]
        safe = torch.where(depth.abs() < 1e-12, torch.full_like(depth, 1e-12), depth)
        u = self.principal[:, None, 0] + self.focal[:, None, 0] * points[..., 0] / safe
        v = self.principal[:, None, 1] - self.focal[:, None, 1] * points[..., 1] / safe
        ndc = self.pixel_to_ndc(torch.stack([u, v], dim=-1))
        return torch.cat([ndc, depth[..., None]], dim=-1)

    def ndc_to_camera_ray(self, xy_ndc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uv = self.ndc_to_pixel(xy_ndc)
        shape = (self.batch_size,) + (1,) * (uv.dim() - 2)
        fx, fy = self.focal[:, 0].reshape(shape), self.focal[:, 1].reshape(shape)
        cx, cy = self.principal[:, 0].reshape(shape), self.principal[:, 1].reshape(shape)
        x = (uv[..., 0] - cx) / fx
        y = -(uv[..., 1] - cy) / fy
        directions = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
        return torch.zeros_like(directions), directions

    def resized(self, height: int, width: int) -> PerspectiveCameras:
        """The same cameras for an image resampled to ``height`` x ``width``: focal lengths and principal points
        (pixels) scale with the image, so every pixel keeps its ray (up to the resampling)."""
        height, width = check_image_size(height, width)
        factor = self.focal.new_tensor([width / self.width, height / self.height])
        return PerspectiveCameras(
            self.c2w, height, width, self.znear, self.zfar, focal=self.focal * factor, principal=self.principal * factor
        )

    def __getitem__(self, index: int | slice) -> PerspectiveCameras:
        index = self._as_slice(index)
        return PerspectiveCameras(
            self.c2w[index], self.height, self.width, self.znear, self.zfar,
            focal=self.focal[index], principal=self.principal[index],
        )  # fmt: skip


@dataclass
class OrthographicCameras(Cameras):
    """Orthographic cameras: ``x_ndc = x / (scale * aspect)``, ``y_ndc = y / scale`` (camera space).

    ``scale`` (float or (B,) tensor) is half the image height in world units.
    """

    scale: torch.Tensor | float = 1.0

    is_perspective = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scale = self._per_camera(self.scale, "scale")
        if bool((self.scale <= 0).any()):
            raise ValueError("orthographic scale must be positive")

    def camera_to_ndc(self, points: torch.Tensor) -> torch.Tensor:
        s = self.scale[:, None]
        return torch.stack([points[..., 0] / (s * self.aspect), points[..., 1] / s, -points[..., 2]], dim=-1)

    def ndc_to_camera_ray(self, xy_ndc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale.reshape((self.batch_size,) + (1,) * (xy_ndc.dim() - 2))
        x, y = xy_ndc[..., 0] * s * self.aspect, xy_ndc[..., 1] * s
        origins = torch.stack([x, y, torch.zeros_like(x)], dim=-1)
        directions = torch.zeros_like(origins)
        directions[..., 2] = -1.0
        return origins, directions

    def __getitem__(self, index: int | slice) -> OrthographicCameras:
        index = self._as_slice(index)
        return OrthographicCameras(self.c2w[index], self.height, self.width, self.znear, self.zfar, self.scale[index])


class WeakPerspectiveCameras(OrthographicCameras):
    """MeshInversion / CMR weak-perspective camera: ``v' = R(q) (s v) + (tx, ty, 0)``, then orthographic.

    The projected NDC point is ``(v'_x, v'_y)`` (the image spans [-1, 1] on both axes for a square image); depth is
    ``(depth_offset - v'_z) / s``, the depth of the rigid camera the projection equals (``v`` seen from
    ``depth_offset / s`` away at orthographic scale ``s``), so that points nearer the viewer (+Z) are in front.
    Differentiable w.r.t. ``scale`` (B,), ``translation`` (B, 2) and ``quaternion`` (B, 4) ``(w, x, y, z)``.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        translation: torch.Tensor,
        quaternion: torch.Tensor,
        height: int,
        width: int,
        depth_offset: float = 10.0,
    ) -> None:
        scale = check_tensor(torch.as_tensor(scale), "scale", floating=True).reshape(-1)
        batch = scale.shape[0]
        translation = check_tensor(translation, "translation", (batch, 2), floating=True)
        quaternion = check_tensor(quaternion, "quaternion", (batch, 4), floating=True)
        if bool((scale <= 0).any()):
            raise ValueError("weak-perspective scale must be positive")
        rot = quaternion_to_matrix(quaternion)
        # Camera frame = world rotated by R^T, shifted so that (tx, ty) appear as image offsets.
        c2w = torch.zeros(batch, 4, 4, dtype=scale.dtype, device=scale.device)
        c2w[:, :3, :3] = rot.transpose(1, 2)
        # world -> camera: p_cam = R p + (tx / s, ty / s, -depth_offset / s); c2w is its rigid inverse.
        shift = torch.cat([-translation, translation.new_full((batch, 1), depth_offset)], dim=-1) / scale[:, None]
        c2w[:, :3, 3] = (rot.transpose(1, 2) @ shift[..., None]).squeeze(-1)
        c2w[:, 3, 3] = 1.0
        self.quaternion, self.translation, self.weak_scale = quaternion, translation, scale
        self.depth_offset = depth_offset
        self._rot = rot
        # camera depths are about depth_offset / s: the far plane follows the smallest scale
        zfar = (2 * depth_offset + 1e3) / float(scale.detach().min())
        super().__init__(c2w, height, width, znear=1e-3, zfar=zfar, scale=1.0 / scale)

    def transform_points_ndc(self, points: torch.Tensor) -> torch.Tensor:
        # Direct formula (same result as the rigid path, kept exact for gradients w.r.t. s, t, q).
        points = self._batched_points(points)
        v = (points * self.weak_scale[:, None, None]) @ self._rot.transpose(1, 2)
        x = (v[..., 0] + self.translation[:, None, 0]) / self.aspect
        y = v[..., 1] + self.translation[:, None, 1]
        return torch.stack([x, y, (self.depth_offset - v[..., 2]) / self.weak_scale[:, None]], dim=-1)

    def resized(self, height: int, width: int) -> WeakPerspectiveCameras:
        self.check_same_aspect(height, width)
        return WeakPerspectiveCameras(
            self.weak_scale, self.translation, self.quaternion, height, width, self.depth_offset
        )

    def __getitem__(self, index: int | slice) -> WeakPerspectiveCameras:
        index = self._as_slice(index)
        return WeakPerspectiveCameras(
            self.weak_scale[index], self.translation[index], self.quaternion[index],
            self.height, self.width, self.depth_offset,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Named frame conversions
# --------------------------------------------------------------------------------------------------------------------
# TripoSR frame: right-handed, +Z up, the input view's camera on +X looking at the origin (image right = +Y_t).
# monorecon world = (y_t, z_t, x_t): a proper rotation (a cyclic axis permutation, det +1).
_TRIPOSR_TO_WORLD = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def triposr_to_world(points: torch.Tensor) -> torch.Tensor:
    """(…, 3) points in the TripoSR frame (z up, input camera on +x) -> monorecon world (y up, input camera on +z)."""
    return points @ _TRIPOSR_TO_WORLD.to(points).T


def world_to_triposr(points: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`triposr_to_world`."""
    return points @ _TRIPOSR_TO_WORLD.to(points)


# Z-up frame (Blender, CAD tools, 3-D printing slicers, STL files, Z-up USD stages): right-handed, +Z up, the front
# facing -Y. monorecon world = (x, z, -y): -90 degrees about X (det +1).
Z_UP_TO_WORLD = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def z_up_to_world(points: torch.Tensor) -> torch.Tensor:
    """(…, 3) points in a Z-up frame (+Z up, front towards -Y) -> monorecon world (+Y up, front towards +Z)."""
    return points @ Z_UP_TO_WORLD.to(points).T


def world_to_z_up(points: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`z_up_to_world`: what Blender's glTF importer does to a glTF scene."""
    return points @ Z_UP_TO_WORLD.to(points)
