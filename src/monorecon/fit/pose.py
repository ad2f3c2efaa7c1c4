"""Camera pose estimation by differentiable rendering (PyTorch3D "camera position optimisation" tutorial, SPEC §4).

Given a mesh and a reference image of it, find the perspective camera that sees the mesh as in the image:

* **Reference silhouette**: the alpha channel (> 0.5) of an RGBA image, or for RGB the pixels that differ from the
  background colour (default: the median colour of the image's border) by more than 1/255 in some channel, as the
  tutorial's "non-background pixels" (its background is white).
* **Camera**: look-at camera (world up +Y, looking at the origin, module convention of
  :mod:`monorecon.core.cameras`) parameterised by its **position**, as the tutorial; or ``"full"``: a rotation
  (axis-angle offset applied to the initial look-at rotation), the position and the focal length (log-scale offset
  of the one given by ``fov_deg``).
* **Loss**: ``"silhouette"``: sum of squared differences between the soft silhouette (sigma 1e-4) and the reference;
  ``"silhouette+shading"``: plus ``shading_weight`` x the sum of squared colour differences, over the pixels covered
  in both images, between a hard-rasterised Phong render (headlight, the mesh's vertex colours or white; gradients
  through shading and interpolation) and the reference colours. Edges are left to the silhouette term: soft colours
  blur them outwards and bias the distance. The shaded term disambiguates views whose silhouettes coincide (e.g. the
  front and back of a left-right symmetric object), but assumes the reference was rendered with the same shading.
* **Tutorial phase**: Adam (lr 0.05), up to ``steps`` steps, soft silhouette sigma 1e-4, on the reference
  area-downsampled to ``coarse_size`` (cheaper; None keeps the full size), from the tutorial's start position
  (3.0, 6.9, 2.5). When the silhouette is small (its bounding square x 1.5 under 3/4 of the image side), this phase
  and the restart search see only that square window of the image (cameras with scaled focal length and shifted
  principal point): at a coarse size the object then keeps enough pixels to tell nearby poses apart. Once every
  run's silhouette loss is below ``stop_loss`` (the tutorial's 200 for 256 x 256 images, scaled by the
  image side) and has stopped improving (relative change < 1e-4 over 10 steps), the phase ends.
* **Restarts** against local minima: ``search`` camera positions spread on a sphere
  (:func:`monorecon.core.cameras.fibonacci_sphere`; radius: the distance at which the mesh's bounding sphere would
  span the reference silhouette, then corrected per direction so that the silhouette areas match) are scored with
  the loss at half the coarse size, without optimisation; the ``restarts`` best start more
  runs, optimised together with the first as one batch (Adam is per-element, so this equals independent runs).
  The phase ends when every run has converged or is stuck (loss changing by < 0.1 % over 30 steps). The search and
  this phase render the mesh decimated to ``coarse_max_faces`` (level of detail for the coarse size).
* **Refinement** with the full mesh at full size of the ``refine_candidates`` runs with the lowest losses (runs that
  ended within 1 % of the distance of a better one count once): Adam lr / 5 decaying to 0, sharp soft edges
  (sigma a quarter pixel: a wide soft edge is fatter than the hard reference and biases the distance) and a
  silhouette whose values equal the hard one away from the outline (``core.raster.sharp_silhouette``; SPEC §4's product
  over faces fattens the outline of finely tessellated meshes); the lowest final loss wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from monorecon.core.cameras import CAMERA_CONVENTION, PerspectiveCameras, fibonacci_sphere, look_at
from monorecon.core.checks import check_tensor
from monorecon.core.extract import cleanup_mesh
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render_mesh, render_silhouette
from monorecon.io.atomic import atomic_write_json
from monorecon.io.images import save_image, to_uint8
from monorecon.losses.fitting import silhouette_loss
from monorecon.preprocess import border_pixels

__all__ = [
    "MAX_RESTARTS",
    "TUTORIAL_START_POSITION",
    "PoseFitResult",
    "axis_angle_to_matrix",
    "fit_pose",
    "reference_silhouette",
    "rotation_error_deg",
    "save_pose_result",
]

TUTORIAL_START_POSITION = (3.0, 6.9, 2.5)
LOSSES = ("silhouette", "silhouette+shading")
PARAMETERISATIONS = ("position", "full")
# A run has converged when its loss changed by less than this fraction over the window; runs still above the stop
# loss (stuck in a local minimum) use the longer, looser test.
_PLATEAU_WINDOW, _PLATEAU_TOLERANCE = 10, 1e-4
_STUCK_WINDOW, _STUCK_TOLERANCE = 30, 1e-3


@dataclass
class PoseFitResult:
    """Result of :func:`fit_pose`.

    Attributes:
        c2w: (4, 4) camera-to-world matrix of the recovered camera (module convention of ``cameras.py``).
        fov_deg: its vertical field of view (changed only by the "full" parameterisation).
        loss: final loss of the chosen run (after the refinement, at full size).
        history: loss per step of the chosen run.
        frames: (H, W, 3) uint8 overlays every ``record_every`` steps of the chosen run (reference in blue, render in
            red, overlap purple), plus the final one.
        reference: (H, W) reference silhouette used.
        znear, zfar: clipping depths of the camera.
        restart: index of the chosen run (0: the given start position, k >= 1: the k-th restart).
        run_losses: loss of every run at the end of the tutorial phase (coarse size).
    """

    c2w: torch.Tensor
    fov_deg: float
    loss: float
    history: list[float]
    frames: list[np.ndarray]
    reference: torch.Tensor
    znear: float
    zfar: float
    restart: int = 0
    run_losses: list[float] = field(default_factory=list)

    def silhouette_iou(self, mesh: Mesh) -> float:
        """IoU of the mesh's hard silhouette seen by the recovered camera with the reference silhouette: near 1 for
        a fit that matches, near 0 for one that lost the mesh (it can leave the view or pass its near plane)."""
        height, width = self.reference.shape
        camera = PerspectiveCameras(
            self.c2w[None].float(), height, width, znear=self.znear, zfar=self.zfar, fov_y_deg=self.fov_deg
        )
        with torch.no_grad():
            drawn = render_silhouette(mesh.verts.float(), mesh.faces, camera, sigma=None)[0] > 0.5
        reference = self.reference > 0.5
        return float((drawn & reference).sum()) / max(float((drawn | reference).sum()), 1.0)

    @property
    def position(self) -> torch.Tensor:
        """(3,) camera centre."""
        return self.c2w[:3, 3]

    def cameras(self) -> PerspectiveCameras:
        """The recovered camera as a one-camera :class:`PerspectiveCameras` at the reference image size."""
        height, width = self.reference.shape
        return PerspectiveCameras(self.c2w[None], height, width, self.znear, self.zfar, fov_y_deg=self.fov_deg)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(…, 3) rotation vectors (axis x angle in radians) -> (…, 3, 3) rotation matrices (Rodrigues), differentiable
    at zero."""
    check_tensor(axis_angle, "axis_angle", floating=True)
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must have last dimension 3, got {tuple(axis_angle.shape)}")
    angle_sq = axis_angle.square().sum(-1, keepdim=True)[..., None]
    angle = (angle_sq + 1e-20).sqrt()
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    small = angle_sq < 1e-8
    # sin(a)/a and (1 - cos a)/a^2 with Taylor expansions near 0 for stable gradients.
    a = torch.where(small, 1 - angle_sq / 6, torch.sin(angle) / angle)
    b = torch.where(small, 0.5 - angle_sq / 24, (1 - torch.cos(angle)) / angle.square().clamp_min(1e-20))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + a * skew + b * (skew @ skew)


def rotation_error_deg(r1: torch.Tensor, r2: torch.Tensor) -> float:
    """Angle in degrees of the rotation ``r1^T r2`` between two (3, 3) rotations (or the rotation parts of 4x4)."""
    r1, r2 = r1[..., :3, :3].double(), r2[..., :3, :3].double()
    cos = ((r1.transpose(-1, -2) @ r2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))))


MAX_RESTARTS = 1000
"""Most extra starts of :func:`fit_pose` (each is rendered every step of the tutorial phase)."""


def reference_silhouette(image: torch.Tensor, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """(H, W) 0/1 silhouette of an (H, W, 4) RGBA (alpha > 0.5) or (H, W, 3) RGB image (pixels differing from
    ``background`` by more than 1/255 in some channel)."""
    if image.shape[-1] == 4:
        return (image[..., 3] > 0.5).to(image.dtype)
    bg = image.new_tensor(background)
    return ((image - bg).abs().amax(-1) > 1.0 / 255).to(image.dtype)


def _reference_rgb(image: torch.Tensor, background: tuple[float, float, float]) -> torch.Tensor:
    """(H, W, 3) colours of the reference composited on the background."""
    if image.shape[-1] == 3:
        return image
    alpha = image[..., 3:]
    return image[..., :3] * alpha + image.new_tensor(background) * (1 - alpha)


def _overlay(silhouette: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """(H, W) render and reference silhouettes -> (H, W, 3) uint8: reference blue, render red, overlap purple."""
    s, r = silhouette.detach().clamp(0, 1).cpu(), reference.detach().cpu()
    white = torch.ones(*s.shape, 3)
    red, blue = torch.tensor([1.0, 0.15, 0.15]), torch.tensor([0.15, 0.3, 1.0])
    img = white * (1 - 0.6 * s[..., None]) + red * 0.6 * s[..., None]
    img = img * (1 - 0.5 * r[..., None]) + blue * 0.5 * r[..., None]
    return to_uint8(img.numpy())


def _check_inputs(mesh: Mesh, image: torch.Tensor | np.ndarray) -> tuple[Mesh, torch.Tensor]:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a monorecon Mesh, got {type(mesh).__name__}")
    if not float(mesh.face_areas.sum()) > 0:  # nothing to render: the loss would never change
        raise ValueError("the mesh has no surface to fit (all of its faces have zero area)")
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    image = check_tensor(image, "image", (None, None, None), floating=True, unit_range=True)
    if image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) or (H, W, 4), got {tuple(image.shape)}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image is too small to fit a pose: {tuple(image.shape[:2])}")
    return mesh, image.float()


# --------------------------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------------------------
class _CameraModel:
    """Camera parameters of R runs optimised together, and their conversion to cameras of a given image size."""

    def __init__(self, starts: torch.Tensor, fov_deg: float, parameterisation: str, z: tuple[float, float]) -> None:
        self.parameterisation = parameterisation
        self.znear, self.zfar = z
        self.fov_deg = fov_deg
        self.position = starts.clone().requires_grad_(True)
        self.base_rotation = look_at(starts)[:, :3, :3].detach()
        self.rotation = torch.zeros_like(starts, requires_grad=True)
        self.log_focal = torch.zeros(starts.shape[0], requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        if self.parameterisation == "position":
            return [self.position]
        return [self.position, self.rotation, self.log_focal]

    def c2w(self, runs: list[int] | None = None) -> torch.Tensor:
        """(R', 4, 4) camera-to-world matrices of the given runs (default all)."""
        runs = list(range(self.position.shape[0])) if runs is None else runs
        position = self.position[runs]
        if self.parameterisation == "position":
            return look_at(position)
        c2w = torch.zeros(len(runs), 4, 4)
        c2w[:, :3, :3] = self.base_rotation[runs] @ axis_angle_to_matrix(self.rotation[runs])
        c2w[:, :3, 3] = position
        c2w[:, 3, 3] = 1
        return c2w

    def cameras(
        self, height: int, width: int, runs: list[int] | None = None, window: _Window | None = None, size: int = 0
    ) -> PerspectiveCameras:
        """Cameras of the given runs (default all) for an image of ``height`` x ``width``, or for its square
        ``window`` seen at ``size`` x ``size`` pixels (focal length and principal point scaled and shifted)."""
        runs = list(range(self.position.shape[0])) if runs is None else runs
        focal = 0.5 * height / math.tan(math.radians(self.fov_deg) / 2) * self.log_focal[runs].exp()
        if window is None:
            return PerspectiveCameras(
                self.c2w(runs), height, width, self.znear, self.zfar, focal=torch.stack([focal, focal], dim=-1)
            )
        scale = size / window.side
        principal = ((width / 2 - window.left) * scale, (height / 2 - window.top) * scale)
        return PerspectiveCameras(self.c2w(runs), size, size, self.znear, self.zfar,
                                  focal=torch.stack([focal, focal], dim=-1) * scale, principal=principal)  # fmt: skip

    def select(self, indices: list[int]) -> _CameraModel:
        """A model of the runs ``indices`` continuing from their current parameters."""
        other = _CameraModel(self.position.detach()[indices], self.fov_deg, self.parameterisation,
                             (self.znear, self.zfar))  # fmt: skip
        other.base_rotation = self.base_rotation[indices]
        with torch.no_grad():
            other.rotation.copy_(self.rotation[indices])
            other.log_focal.copy_(self.log_focal[indices])
        return other


@dataclass(frozen=True)
class _Window:
    """A square crop of the full image, ``side`` pixels from the top-left corner ``(left, top)`` (may extend past the
    borders), seen at a lower resolution by the coarse phases: the object then covers more of their pixels."""

    left: int
    top: int
    side: int
    full_size: tuple[int, int]  # (H, W) of the full image

    def crop(self, image: torch.Tensor, size: int, fill: float | tuple[float, ...]) -> torch.Tensor:
        """(H, W[, C]) full image -> (size, size[, C]) area-averaged crop, ``fill`` outside the image."""
        height, width = self.full_size
        pad = max(0, -self.left, -self.top, self.left + self.side - width, self.top + self.side - height)
        x = image.permute(2, 0, 1) if image.dim() == 3 else image[None]
        canvas = x.new_empty(x.shape[0], height + 2 * pad, width + 2 * pad)
        canvas[:] = x.new_tensor(fill).reshape(-1, 1, 1)
        canvas[:, pad : pad + height, pad : pad + width] = x
        crop = canvas[:, self.top + pad : self.top + pad + self.side, self.left + pad : self.left + pad + self.side]
        crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="area")[0]
        return crop.permute(1, 2, 0) if image.dim() == 3 else crop[0]

    def paste(self, crop: torch.Tensor) -> torch.Tensor:
        """(s, s) crop -> (H, W) full image (0 outside the window)."""
        height, width = self.full_size
        up = torch.nn.functional.interpolate(crop[None, None], size=(self.side, self.side), mode="bilinear")[0, 0]
        full = crop.new_zeros(height, width)
        top, left = max(self.top, 0), max(self.left, 0)
        bottom, right = min(self.top + self.side, height), min(self.left + self.side, width)
        full[top:bottom, left:right] = up[top - self.top : bottom - self.top, left - self.left : right - self.left]
        return full


def _silhouette_window(reference: torch.Tensor, margin: float = 1.5, min_side: int = 16) -> _Window | None:
    """The square window around the reference silhouette's bounding box, ``margin`` x its larger side (None when that
    is not much smaller than the image)."""
    rows, cols = torch.nonzero(reference > 0.5, as_tuple=True)
    height, width = reference.shape
    if rows.numel() == 0:
        return None
    extent = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    side = max(min_side, math.ceil(margin * extent))
    if side > 0.75 * max(height, width):
        return None
    centre_row, centre_col = (float(rows.max() + rows.min()) + 1) / 2, (float(cols.max() + cols.min()) + 1) / 2
    return _Window(round(centre_col - side / 2), round(centre_row - side / 2), side, (height, width))


@dataclass
class _Phase:
    """One optimisation phase: target (H, W) silhouette (and colours) of the full image or of a ``window`` of it,
    soft sharpness, steps and learning rates."""

    reference: torch.Tensor
    reference_rgb: torch.Tensor | None
    sigma: float
    steps: int
    lr: float
    decay: bool  # linear learning-rate decay to 0 over the phase
    stop_loss: float  # stop once below this and no longer improving
    desc: str
    window: _Window | None = None
    sharp_edges: bool = False  # the unbiased silhouette (core.raster.sharp_silhouette) instead of SPEC §4's

    def cameras(self, model: _CameraModel, runs: list[int] | None = None) -> PerspectiveCameras:
        """The cameras of ``model`` (given runs) that render this phase's images."""
        height, width = self.reference.shape
        if self.window is None:
            return model.cameras(height, width, runs)
        return model.cameras(*self.window.full_size, runs, window=self.window, size=height)

    def to_full(self, silhouette: torch.Tensor, full_size: tuple[int, int]) -> torch.Tensor:
        """(h, w) silhouette of this phase -> (H, W) at full size (for the overlay frames)."""
        return _resize(silhouette, full_size) if self.window is None else self.window.paste(silhouette)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W[, C]) -> area-averaged (h, w[, C])."""
    if tuple(image.shape[:2]) == size:
        return image
    x = image.permute(2, 0, 1)[None] if image.dim() == 3 else image[None, None]
    x = torch.nn.functional.interpolate(x, size=size, mode="area")[0]
    return x.permute(1, 2, 0) if image.dim() == 3 else x[0]


def _losses(
    mesh: Mesh, cameras: PerspectiveCameras, phase: _Phase, options: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total loss (R,), its silhouette part (R,) and the soft silhouettes (R, H, W) of R cameras."""
    verts, faces = mesh.verts.float(), mesh.faces
    silhouette = render_silhouette(verts, faces, cameras, phase.sigma, faces_per_pixel=options["faces_per_pixel"],
                                   sharp=phase.sharp_edges)  # fmt: skip
    loss = silhouette_loss(silhouette, phase.reference)
    if phase.reference_rgb is None:
        return loss, loss, silhouette
    out = render_mesh(verts, faces, cameras, vertex_colors=mesh.vertex_colors, background=options["background"])
    both = (out["alpha"] * phase.reference)[..., None]  # pixels covered in both images
    colour = ((out["rgb"] - phase.reference_rgb).square() * both).flatten(1).sum(1)
    return loss + options["shading_weight"] * colour, loss, silhouette


def _search_starts(
    mesh: Mesh,
    phase: _Phase,
    options: dict,
    directions: torch.Tensor,
    distance: float,
    keep: int,
    model_args: tuple,
    chunk: int = 16,
) -> torch.Tensor:
    """Score cameras looking at the origin from (N, 3) unit ``directions`` with the loss of ``phase``, without
    optimisation; return the ``keep`` best positions (keep, 3). Each direction's distance is first corrected from
    ``distance`` so that the rendered silhouette area matches the reference's (area scales as 1 / distance^2)."""
    verts, faces = mesh.verts.float(), mesh.faces

    def cameras(positions: torch.Tensor) -> PerspectiveCameras:
        return phase.cameras(_CameraModel(positions, *model_args))

    with torch.no_grad():
        areas = torch.cat([
            render_silhouette(verts, faces, cameras(p), phase.sigma, faces_per_pixel=options["faces_per_pixel"])
            .flatten(1).sum(1)
            for p in (directions * distance).split(chunk)
        ])  # fmt: skip
        scale = (areas.clamp_min(1e-3) / float(phase.reference.sum())).sqrt().clamp(0.25, 4.0)
        positions = directions * (distance * scale)[:, None]
        losses = torch.cat([_losses(mesh, cameras(p), phase, options)[0] for p in positions.split(chunk)])
    return positions[torch.argsort(losses)[:keep]]


def _optimise(
    mesh: Mesh, model: _CameraModel, phase: _Phase, options: dict, histories: list[list[float]], frames: list[list]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one phase on all runs of ``model`` (appending to their histories / frames); returns the final total and
    silhouette losses, (R,) each."""
    height, width = phase.reference.shape
    full_size = options["size"]
    optimizer = torch.optim.Adam(model.parameters(), lr=phase.lr)
    n_runs = model.position.shape[0]

    def record(silhouettes: list[torch.Tensor]) -> None:
        for r in range(n_runs):
            frames[r].append(_overlay(phase.to_full(silhouettes[r], full_size), options["full_reference"]))

    # Runs that have settled are frozen and no longer rendered.
    active = list(range(n_runs))
    last = [phase.reference.new_zeros(height, width) for _ in range(n_runs)]
    phase_histories: list[list[float]] = [[] for _ in range(n_runs)]
    silhouette_losses: list[list[float]] = [[] for _ in range(n_runs)]
    for step in tqdm(range(phase.steps), desc=phase.desc, unit="step", disable=not options["progress"]):
        if phase.decay:
            for group in optimizer.param_groups:
                group["lr"] = phase.lr * (1 - step / phase.steps)
        optimizer.zero_grad()
        losses, sil_losses, silhouette = _losses(mesh, phase.cameras(model, active), phase, options)
        losses.sum().backward()
        for i, r in enumerate(active):
            phase_histories[r].append(float(losses[i].detach()))
            silhouette_losses[r].append(float(sil_losses[i].detach()))
            last[r] = silhouette[i].detach()
        if (len(histories[0]) + step) % options["record_every"] == 0:
            record(last)
        active = [r for r in active if not _settled(phase_histories[r], silhouette_losses[r], phase.stop_loss)]
        if not active:
            break
        frozen = [p.detach()[[r for r in range(n_runs) if r not in active]].clone() for p in model.parameters()]
        optimizer.step()
        with torch.no_grad():  # Adam's momentum would still move the frozen runs
            inactive = [r for r in range(n_runs) if r not in active]
            for p, saved in zip(model.parameters(), frozen, strict=True):
                p[inactive] = saved
    with torch.no_grad():
        losses, sil_losses, silhouette = _losses(mesh, phase.cameras(model), phase, options)
    record(list(silhouette))
    for r in range(n_runs):
        histories[r].extend(phase_histories[r] + [float(losses[r])])
    return losses, sil_losses


def _settled(history: list[float], silhouette_history: list[float], stop_loss: float) -> bool:
    """Converged: silhouette loss below the stop loss and total loss no longer improving, or stuck (no progress over
    a longer window while above it)."""

    def flat(window: int, tolerance: float) -> bool:
        if len(history) <= window:
            return False
        old = history[-1 - window]
        return old - history[-1] <= tolerance * max(old, 1e-12)

    if silhouette_history[-1] < stop_loss:
        return flat(_PLATEAU_WINDOW, _PLATEAU_TOLERANCE)
    return flat(_STUCK_WINDOW, _STUCK_TOLERANCE)


def _distinct_best(losses: list[float], c2w: torch.Tensor, count: int, tolerance: float = 0.01) -> list[int]:
    """Indices of up to ``count`` runs with the lowest losses, skipping runs whose camera centre lies within
    ``tolerance`` x its distance of an already chosen one (runs that converged to the same pose)."""
    chosen: list[int] = []
    for i in np.argsort(losses).tolist():
        position = c2w[i, :3, 3]
        if all(float((position - c2w[j, :3, 3]).norm()) > tolerance * float(position.norm()) for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def _distance_estimate(mesh: Mesh, reference: torch.Tensor, fov_deg: float, fallback: float) -> float:
    """Camera distance at which the mesh's bounding sphere (around the origin) spans the silhouette's larger half
    extent (NDC): a start distance for the restarts."""
    rows, cols = torch.nonzero(reference > 0.5, as_tuple=True)
    height, width = reference.shape
    half_extent = max(float(rows.max() - rows.min() + 1) / height, float(cols.max() - cols.min() + 1) / width)
    radius = float(mesh.verts.norm(dim=-1).max())
    if half_extent <= 0 or radius <= 0:
        return fallback
    return radius / (half_extent * math.tan(math.radians(fov_deg) / 2))


def fit_pose(
    mesh: Mesh,
    image: torch.Tensor | np.ndarray,
    *,
    fov_deg: float = 60.0,
    znear: float = 1.0,
    zfar: float = 100.0,
    restarts: int = 8,
    steps: int = 200,
    lr: float = 0.05,
    loss: str = "silhouette",
    parameterisation: str = "position",
    seed: int = 0,
    progress: bool = False,
    record_every: int = 10,
    start_position: tuple[float, float, float] | torch.Tensor = TUTORIAL_START_POSITION,
    stop_loss: float | None = None,
    sigma: float = 1e-4,
    coarse_size: int | None = 64,
    coarse_max_faces: int | None = 5000,
    refine_steps: int = 60,
    refine_sigma: float | None = None,
    refine_candidates: int = 3,
    search: int = 100,
    faces_per_pixel: int = 30,
    shading_weight: float = 1.0,
    background: tuple[float, float, float] | None = None,
) -> PoseFitResult:
    """Recover the camera that sees ``mesh`` as in ``image`` (see the module docstring for the method).

    Args:
        mesh: the object, in world coordinates (its own frame; +Y up is the look-at camera's up).
        image: (H, W, 3) RGB or (H, W, 4) RGBA float image in [0, 1] (torch or numpy), row 0 at the top.
        fov_deg, znear, zfar: perspective camera intrinsics / clipping (tutorial: 60, 1, 100).
        restarts: number of extra starts spread on a sphere, optimised together with the first start.
        steps: maximum Adam steps of the tutorial phase; lr: its Adam learning rate.
        loss: "silhouette" or "silhouette+shading"; parameterisation: "position" or "full".
        seed: seeds torch (the method itself is deterministic given the inputs).
        progress: show tqdm progress bars. record_every: overlay frame period (steps).
        start_position: first start (tutorial's (3.0, 6.9, 2.5)); restarts use its distance to the origin.
        stop_loss: the tutorial phase of a run may stop once its silhouette loss is below this and no longer
            improving (default: the tutorial's 200 for 256 x 256, scaled by the image side, since the loss left at
            the right pose grows with the silhouette's perimeter).
        sigma: soft-rasteriser sharpness of the tutorial phase (1e-4).
        coarse_size: longer side of the image (or of the window around a small silhouette) used by the tutorial
            phase and the restarts (area-downsampled reference; cheaper), None for the full size and no window.
        coarse_max_faces: the tutorial phase and the restarts use the mesh decimated to about this many faces
            (quadric edge collapse; a few thousand faces are plenty at the coarse size), None: the full mesh. The
            refinement always uses the full mesh.
        refine_steps: steps of the refinement at full size (Adam, lr / 5 decaying linearly to 0); 0 to skip.
        refine_sigma: its soft sharpness; default ``(0.25 / side)^2`` with ``side = sqrt(H W)`` (an eighth of a
            pixel, NDC spanning 2 over the image), which removes the outward bias of a wide soft edge against the
            hard reference.
        refine_candidates: number of distinct runs (lowest coarse losses) refined; the lowest refined loss wins.
        search: number of camera directions scored (without optimisation) to place the restarts.
        faces_per_pixel: faces blended per pixel by the soft rasteriser.
        shading_weight: weight of the colour term of "silhouette+shading".
        background: background colour of the reference (RGB images) and of the shaded renders; None: white for an
            RGBA reference, the median colour of its border for an RGB one.

    Returns:
        :class:`PoseFitResult` (``history`` of the chosen run: the tutorial phase, then the refinement).

    Raises:
        ValueError: for a malformed image, an empty reference silhouette or bad options (a :class:`Mesh` without
            faces cannot be built).
    """
    mesh, image = _check_inputs(mesh, image)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")
    if not 0 <= restarts <= MAX_RESTARTS:
        raise ValueError(f"restarts must lie in [0, {MAX_RESTARTS}], got {restarts}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if steps < 1 or restarts < 0 or refine_steps < 0 or record_every < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, restarts >= 0, refine_steps >= 0, record_every >= 1, lr > 0; got {steps}, "
                         f"{restarts}, {refine_steps}, {record_every}, {lr}")  # fmt: skip
    if not (0 < znear < zfar) or not 0 < fov_deg < 180:
        raise ValueError(f"need 0 < znear < zfar and 0 < fov_deg < 180, got {znear}, {zfar}, {fov_deg}")
    if coarse_size is not None and coarse_size < 8:
        raise ValueError(f"coarse_size must be >= 8 or None, got {coarse_size}")
    if coarse_max_faces is not None and coarse_max_faces < 100:
        raise ValueError(f"coarse_max_faces must be >= 100 or None, got {coarse_max_faces}")
    torch.manual_seed(seed)
    if background is None:
        plain = image.shape[-1] == 4
        background = (1.0, 1.0, 1.0) if plain else tuple(np.median(border_pixels(image.numpy()), axis=0).tolist())
    reference = reference_silhouette(image, background)
    if float(reference.sum()) == 0:
        raise ValueError("the reference image has an empty silhouette (no foreground pixel)")
    if float(reference.mean()) > 0.99:
        raise ValueError(
            "the reference silhouette fills the image: give an RGBA image, or an RGB one on a plain background of "
            "the given background colour"
        )
    height, width = reference.shape
    start = torch.as_tensor(start_position, dtype=torch.float32).reshape(1, 3)
    check_tensor(start, "start_position")
    if float(start.norm()) < 1e-6:
        raise ValueError("start_position must not be the origin (the camera looks at the origin)")
    reference_rgb = _reference_rgb(image, background) if loss == "silhouette+shading" else None

    coarse_mesh = mesh
    if coarse_size is not None and coarse_max_faces is not None and mesh.num_faces > coarse_max_faces:
        coarse_mesh = cleanup_mesh(Mesh(mesh.verts, mesh.faces, vertex_colors=mesh.vertex_colors),
                                   min_component_fraction=0.0, target_faces=coarse_max_faces)  # fmt: skip
    window = _silhouette_window(reference) if coarse_size is not None else None
    if window is None:
        scale = 1.0 if coarse_size is None else min(1.0, coarse_size / max(height, width))
        coarse = (max(1, round(height * scale)), max(1, round(width * scale)))
        coarse_reference = _resize(reference, coarse)
        coarse_rgb = None if reference_rgb is None else _resize(reference_rgb, coarse)
    else:  # a small silhouette: the coarse phases see a window around it
        coarse = (min(coarse_size, window.side),) * 2
        coarse_reference = window.crop(reference, coarse[0], 0.0)
        coarse_rgb = None if reference_rgb is None else window.crop(reference_rgb, coarse[0], background)
    side = math.sqrt(coarse[0] * coarse[1])
    tutorial = _Phase(
        reference=coarse_reference, reference_rgb=coarse_rgb,
        sigma=sigma, steps=steps, lr=lr, decay=False, desc="pose",
        stop_loss=stop_loss if stop_loss is not None else 200.0 * side / 256, window=window,
    )  # fmt: skip
    options = {
        "size": (height, width), "full_reference": reference, "faces_per_pixel": faces_per_pixel,
        "shading_weight": shading_weight, "background": background, "record_every": record_every, "progress": progress,
    }  # fmt: skip
    starts = start
    if restarts > 0:
        distance = max(_distance_estimate(mesh, reference, fov_deg, float(start.norm())), 1.05 * znear)
        model_args = (fov_deg, parameterisation, (znear, zfar))
        directions = fibonacci_sphere(max(search, restarts))
        small = (max(8, coarse[0] // 2), max(8, coarse[1] // 2))
        search_phase = dataclasses.replace(
            tutorial, reference=_resize(coarse_reference, small),
            reference_rgb=None if coarse_rgb is None else _resize(coarse_rgb, small),
        )  # fmt: skip
        picked = _search_starts(coarse_mesh, search_phase, options, directions, distance, restarts, model_args)
        starts = torch.cat([start, picked])
    model = _CameraModel(starts, fov_deg, parameterisation, (znear, zfar))
    histories: list[list[float]] = [[] for _ in range(len(starts))]
    frames: list[list[np.ndarray]] = [[] for _ in range(len(starts))]
    run_losses = [float(x) for x in _optimise(coarse_mesh, model, tutorial, options, histories, frames)[0]]
    # Refine the best few distinct runs at full size (coarse losses can rank nearby poses wrongly).
    chosen = _distinct_best(run_losses, model.c2w().detach(), max(1, refine_candidates))
    model = model.select(chosen)
    histories, frames = [histories[i] for i in chosen], [frames[i] for i in chosen]
    if refine_steps > 0:
        refine = _Phase(
            reference=reference, reference_rgb=reference_rgb,
            sigma=refine_sigma if refine_sigma is not None else (0.25 / math.sqrt(height * width)) ** 2,
            steps=refine_steps, lr=lr / 5, decay=True, stop_loss=math.inf, desc="pose refinement", sharp_edges=True,
        )  # fmt: skip
        final = [float(x) for x in _optimise(mesh, model, refine, options, histories, frames)[0]]
    else:
        final = [run_losses[i] for i in chosen]
    best = int(np.argmin(final))
    with torch.no_grad():
        cameras = model.cameras(height, width)
    return PoseFitResult(
        c2w=cameras.c2w[best].detach(), fov_deg=float(cameras.fov_y_deg[best]), loss=final[best],
        history=histories[best], frames=frames[best], reference=reference, znear=znear, zfar=zfar,
        restart=chosen[best], run_losses=run_losses,
    )  # fmt: skip


def pose_result_files(video: bool) -> list[str]:
    """The names of the files :func:`save_pose_result` writes."""
    return ["camera.json", "overlay.png", *(["fit.mp4", "fit.gif"] if video else [])]


def save_pose_result(result: PoseFitResult, out_dir: str | Path, video: bool = False, fps: int = 10) -> dict[str, Path]:
    """Write ``camera.json`` (c2w, fov, clipping, image size, loss, history), ``overlay.png`` (final overlay) and,
    with ``video``, ``fit.mp4`` / ``fit.gif`` of the recorded frames (:func:`pose_result_files`), each atomically, all
    or none (a failing file removes those written before it). Returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = result.reference.shape
    camera = {
        "convention": CAMERA_CONVENTION,
        "c2w": result.c2w.tolist(),
        "fov_y_deg": result.fov_deg,
        "znear": result.znear,
        "zfar": result.zfar,
        "height": height,
        "width": width,
        "loss": result.loss,
        "restart": result.restart,
        "run_losses": result.run_losses,
        "history": result.history,
    }
    paths = {"camera": out_dir / "camera.json", "overlay": out_dir / "overlay.png"}
    written: list[Path] = []
    try:
        atomic_write_json(paths["camera"], camera, indent=2)
        written.append(paths["camera"])
        written.append(save_image(result.frames[-1].astype(np.float32) / 255.0, paths["overlay"]))
        if video:
            from monorecon.video import save_turntable  # frames -> MP4 + GIF writer (atomic, both or neither)

            paths["mp4"], paths["gif"] = save_turntable(result.frames, out_dir / "fit", fps=fps)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return paths
