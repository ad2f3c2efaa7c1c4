"""Training the ConvMesh-style generator as a GAN on synthetic objects, checkpoints and loading.

Data (built once, cached in the output folder): procedural objects of the configured classes
(:func:`monorecon.data.shapes.make_object`, seeds ``first_seed`` ...; farthest vertex at radius 1, the template's
radius) give

* **UV-space real samples** (pseudo ground truth, like ConvMesh's maps fitted to CMR reconstructions): rays from the
  object centre through every UV-map texel (:meth:`UVSphereTemplate.directions`) hit the mesh; the farthest hit gives
  the radius (deformation map: normal channel ``r - 1``, tangential channels 0) and its interpolated vertex colour
  the texture (in [-1, 1]). Rays that miss (the centre outside the object along that direction) get radius 0.1 and
  the object's mean colour. Star-shaped classes (vase, bottle, snowman, lamp...) are represented well; others only
  by their radial hull.
* **Image-space real samples**: RGBA renders of the objects from ``views_per_object`` random weak-perspective views
  (scale ``camera_scale``, azimuth uniform, elevation in ``elevation_range``), Lambert-shaded with a headlight.
  Generated meshes are rendered with the same cameras and shading. By default both are hard-rasterised
  (``soft_render: false``): the image discriminator then shapes the texture (its gradients reach colours and UV
  positions, not silhouette edges) and the geometry learns from the UV discriminator; soft rasterisation
  (``soft_sigma``, ``faces_per_pixel``) also passes silhouette gradients but costs about 3x more per step on a CPU.

Losses: hinge GAN loss for both discriminators (image-space weighted by ``image_loss_weight``, 0.2 in the official
code), plus ``smoothness_weight`` x the smoothness loss on generated meshes; Adam with betas (0, 0.99); an
exponential moving average of the generator (``ema_decay``) is what inversion uses.

Output folder: ``config.yaml`` (the configuration used), ``checkpoint.safetensors`` (all networks and optimiser
states, resumable, and the configuration they were trained with, which a resume is checked against; the one before
it is kept as ``checkpoint.previous.safetensors``, put back when the newest turns out to hold weights that diverge),
``generator.safetensors`` (moving-average generator weights; its configuration is in the safetensors metadata and in
``config.yaml``), ``training_set.safetensors`` (cached data) and ``log.csv``. Every file is written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from monorecon.core.cameras import WeakPerspectiveCameras
from monorecon.core.checks import check_bool, check_int, check_non_negative
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render_mesh
from monorecon.data.shapes import SHAPE_CLASSES, make_object
from monorecon.io.atomic import atomic_write, atomic_write_bytes
from monorecon.io.weights import read_safetensors_metadata, read_state_dict
from monorecon.io.yaml_config import load_yaml
from monorecon.losses.fitting import smoothness_loss
from monorecon.train.resume import check_resumed_settings
from monorecon.train.utils import (
    CSVLogger,
    check_finite_loss,
    check_finite_parameters,
    divergence_error,
    load_dataclass_config,
    non_finite_loss,
)

from .networks import ImageDiscriminator, MeshGenerator, UVDiscriminator
from .template import UVSphereTemplate

__all__ = [
    "MeshGANConfig",
    "load_generator",
    "radial_uv_maps",
    "render_generated",
    "train_meshgan",
    "view_quaternion",
]

_MISS_RADIUS = 0.1
#: Ranges of the config's sizes (beyond them a run only ends in an allocation failure).
_SIZE_RANGES = {"image_size": (16, 1024), "texture_size": (1, 1024), "latent_dim": (1, 4096), "batch_size": (1, 4096),
                "views_per_object": (1, 1024), "train_objects_per_class": (1, 100_000),
                "generator_channels": (4, 4096), "discriminator_channels": (1, 4096), "steps": (1, 10**9),
                "checkpoint_every": (1, 10**9), "faces_per_pixel": (1, 1024)}  # fmt: skip
#: Settings a resumed run may change: ``steps`` (to train longer) and bookkeeping silently, the learning rates with a
#: warning (lowering them is the way on after a divergence).
_RESUME_FREE = ("steps", "checkpoint_every")
_RESUME_WARNED = {"lr_g": "it applies from the next step on", "lr_d": "it applies from the next step on"}
#: Files that mark a folder as another command's run (G3DR, its diffusion model, TripoSR training).
_OTHER_RUN_FILES = ("model.safetensors", "train_config.yaml", "checkpoints")
#: A divergence's advice: this trainer has no gradient clipping, and a resume accepts new learning rates.
_DIVERGENCE_ADVICE = "Lower lr_g and lr_d in the config, then resume."


@dataclass
class MeshGANConfig:
    """Training configuration (YAML keys = field names). See ``configs/meshgan_small.yaml``."""

    classes: list[str] = field(default_factory=lambda: ["vase", "bottle"])
    train_objects_per_class: int = 32
    first_seed: int = 0
    views_per_object: int = 8
    image_size: int = 64
    texture_size: int = 64
    latent_dim: int = 64
    generator_channels: int = 64
    discriminator_channels: int = 32
    batch_size: int = 8
    steps: int = 1500
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.99)
    image_loss_weight: float = 0.2
    smoothness_weight: float = 1e-4
    ema_decay: float = 0.99
    camera_scale: float = 0.8
    elevation_range: tuple[float, float] = (-10.0, 40.0)
    soft_render: bool = False
    soft_sigma: float = 1e-4
    faces_per_pixel: int = 8
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in SHAPE_CLASSES]
        if not self.classes or unknown:
            raise ValueError(f"classes must be non-empty names from {sorted(SHAPE_CLASSES)}, got {self.classes}")
        check_bool(self.soft_render, "config soft_render")  # the string "no" would read as true
        for name, (low, high) in _SIZE_RANGES.items():
            check_int(getattr(self, name), f"config {name}", low, high)
        if not 0 <= self.ema_decay < 1 or self.lr_g <= 0 or self.lr_d <= 0 or self.camera_scale <= 0:
            raise ValueError("config needs 0 <= ema_decay < 1 and positive lr_g, lr_d, camera_scale")
        for name in ("image_loss_weight", "smoothness_weight"):
            check_non_negative(getattr(self, name), f"config {name}")
        if len(self.betas) != 2 or not all(0 <= float(beta) < 1 for beta in self.betas):
            raise ValueError(f"config betas must be two numbers in [0, 1), got {list(self.betas)}")
        if len(self.elevation_range) != 2 or not -90 < self.elevation_range[0] <= self.elevation_range[1] < 90:
            raise ValueError(f"config elevation_range must be [low, high] within (-90, 90), got {self.elevation_range}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.elevation_range = (float(self.elevation_range[0]), float(self.elevation_range[1]))

    @classmethod
    def from_yaml(cls, path: str | Path) -> MeshGANConfig:
        """Read a YAML file; unknown keys and values of the wrong type (``betas: 0.5``, ``steps: 2.7``,
        ``soft_render: "no"``) -> ValueError naming the key, as the G3DR configs."""
        return load_dataclass_config(path, cls)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"], data["elevation_range"] = list(self.betas), list(self.elevation_range)
        return data

    def generator_kwargs(self) -> dict:
        return {"latent_dim": self.latent_dim, "texture_size": self.texture_size, "channels": self.generator_channels}


# --------------------------------------------------------------------------------------------------------------------
# Cameras and rendering
# --------------------------------------------------------------------------------------------------------------------
def view_quaternion(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> torch.Tensor:
    """(N,) view angles -> (N, 4) quaternions (w, x, y, z) of the object rotation ``R = R_x(el) R_y(-az)`` that a
    weak-perspective camera applies so that the object is seen as from azimuth ``az`` / elevation ``el`` (spherical
    convention of :mod:`monorecon.core.cameras`)."""
    half_az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32)) / 2
    half_el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32)) / 2
    # q_x(el) * q_y(-az), Hamilton product written out.
    ce, se, ca, sa = half_el.cos(), half_el.sin(), half_az.cos(), -half_az.sin()
    return torch.stack([ce * ca, se * ca, ce * sa, se * sa], dim=-1)


def weak_cameras(scale: torch.Tensor, translation: torch.Tensor, quaternion: torch.Tensor, size: int):
    """(B,) scales, (B, 2) translations, (B, 4) quaternions -> :class:`WeakPerspectiveCameras` of a square image."""
    return WeakPerspectiveCameras(scale, translation, quaternion, size, size)


def render_generated(
    template: UVSphereTemplate,
    verts: torch.Tensor,
    texture: torch.Tensor,
    cameras: WeakPerspectiveCameras,
    *,
    soft: bool = True,
    sigma: float = 1e-4,
    faces_per_pixel: int = 8,
) -> torch.Tensor:
    """Render generated meshes: (B, V, 3) template vertices, (B, 3, T, T) textures in [0, 1] -> (B, 4, S, S) RGBA
    (colour on white; Lambert shading with a headlight), one camera per mesh."""
    out = render_mesh(
        template.render_verts(verts), template.render_faces.to(verts.device), cameras,
        uvs=template.render_uvs.to(verts), texture=texture.permute(0, 2, 3, 1), shading="lambert", soft=soft,
        sigma=sigma, gamma=sigma, faces_per_pixel=faces_per_pixel if soft else 1,
    )  # fmt: skip
    return torch.cat([out["rgb"], out["alpha"][..., None]], dim=-1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------------
# Pseudo ground-truth UV maps
# --------------------------------------------------------------------------------------------------------------------
#: Barycentric slack of the ray-triangle test (a hit on a shared edge is not lost to rounding).
_EDGE_TOLERANCE = 1e-6


def _farthest_hits(verts: torch.Tensor, faces: torch.Tensor, directions: torch.Tensor, chunk: int = 256):
    """Rays from the origin along (N, 3) unit directions: farthest hit distance (N,) (-1 if none), face (N,) and
    barycentrics (N, 2) of vertices 1 and 2 (Moeller-Trumbore)."""
    tri = verts[faces]  # (F, 3, 3)
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    t_best = torch.full((directions.shape[0],), -1.0)
    face_best = torch.zeros(directions.shape[0], dtype=torch.long)
    uv_best = torch.zeros(directions.shape[0], 2)
    for start in range(0, directions.shape[0], chunk):
        d = directions[start : start + chunk, None, :]  # (n, 1, 3)
        p = torch.linalg.cross(d.expand(-1, e2.shape[0], -1), e2[None].expand(d.shape[0], -1, -1), dim=-1)
        det = (e1[None] * p).sum(-1)
        ok = det.abs() > 1e-12
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        s = -v0[None]  # ray origin is 0
        u = (s * p).sum(-1) * inv
        q = torch.linalg.cross(s.expand_as(p), e1[None].expand_as(p), dim=-1)
        v = (d * q).sum(-1) * inv
        t = (e2[None] * q).sum(-1) * inv
        # A ray through an edge shared by two triangles must hit one: float32 rounding puts it just outside both.
        hit = ok & (u >= -_EDGE_TOLERANCE) & (v >= -_EDGE_TOLERANCE) & (u + v <= 1 + _EDGE_TOLERANCE) & (t > 1e-9)
        t = torch.where(hit, t, torch.full_like(t, -1.0))
        t_max, f = t.max(dim=1)
        rows = torch.arange(t.shape[0])
        t_best[start : start + chunk] = t_max
        face_best[start : start + chunk] = f
        uv_best[start : start + chunk] = torch.stack([u[rows, f], v[rows, f]], dim=-1)
    return t_best, face_best, uv_best


def radial_uv_maps(
    mesh: Mesh, template: UVSphereTemplate, deformation_size: int = 32, texture_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo ground-truth UV maps of a mesh centred at the origin (radius about 1): texture (3, T, T) in [-1, 1]
    and deformation map (3, D, D) (normal channel ``r - 1``, tangential 0). See the module docstring."""
    if mesh.vertex_colors is None:
        raise ValueError("radial_uv_maps needs a mesh with vertex colours")
    verts, faces, colors = mesh.verts.float(), mesh.faces, mesh.vertex_colors.float()

    def cast(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        directions = template.directions(size, size).reshape(-1, 3)
        t, face, uv = _farthest_hits(verts, faces, directions)
        c = colors[faces[face]]  # (N, 3 vertices, 3)
        colour = (1 - uv.sum(-1, keepdim=True)) * c[:, 0] + uv[:, :1] * c[:, 1] + uv[:, 1:] * c[:, 2]
        miss = t < 0
        colour[miss] = colors.mean(0)
        radius = torch.where(miss, torch.full_like(t, _MISS_RADIUS), t)
        return radius.reshape(size, size), colour.reshape(size, size, 3)

    radius, _ = cast(deformation_size)
    _, colour = cast(texture_size)
    deformation = torch.zeros(3, deformation_size, deformation_size)
    deformation[0] = radius - 1.0
    return colour.permute(2, 0, 1) * 2 - 1, deformation


# --------------------------------------------------------------------------------------------------------------------
# Training set
# --------------------------------------------------------------------------------------------------------------------
def _build_training_set(config: MeshGANConfig, template: UVSphereTemplate, progress: bool) -> dict[str, torch.Tensor]:
    """Pseudo-GT UV maps, real renders and their cameras for every training object."""
    textures, deformations, views, quaternions = [], [], [], []
    g = torch.Generator().manual_seed(config.seed)
    jobs = [(c, config.first_seed + i) for c in config.classes for i in range(config.train_objects_per_class)]
    size, n_views = config.image_size, config.views_per_object
    for class_name, seed in tqdm(jobs, desc="meshgan data", unit="object", disable=not progress):
        mesh = make_object(class_name, seed, radius=1.0)
        texture, deformation = radial_uv_maps(mesh, template, 32, config.texture_size)
        low, high = config.elevation_range
        q = view_quaternion(
            torch.rand(n_views, generator=g) * 360, low + torch.rand(n_views, generator=g) * (high - low)
        )
        cameras = weak_cameras(torch.full((n_views,), config.camera_scale), torch.zeros(n_views, 2), q, size)
        with torch.no_grad():
            out = render_mesh(
                mesh.verts, mesh.faces, cameras, vertex_colors=mesh.vertex_colors, shading="lambert",
                soft=config.soft_render, sigma=config.soft_sigma, gamma=config.soft_sigma,
                faces_per_pixel=config.faces_per_pixel if config.soft_render else 1,
            )  # fmt: skip
        textures.append(texture)
        deformations.append(deformation)
        views.append(torch.cat([out["rgb"], out["alpha"][..., None]], dim=-1).permute(0, 3, 1, 2))
        quaternions.append(q)
    return {
        "textures": torch.stack(textures),
        "deformations": torch.stack(deformations),
        # contiguous, as read back from the cache: a channels-last batch takes other conv kernels (a resumed run
        # would differ from an uninterrupted one by float rounding)
        "views": torch.stack(views).clamp(0, 1).contiguous(),
        "quaternions": torch.stack(quaternions),
    }


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------
def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def _keep_previous(checkpoint: Path) -> None:
    """Before ``checkpoint`` is rewritten: keep its current content as ``checkpoint.previous.safetensors`` (a hard
    link, swapped in atomically: at every moment a complete checkpoint lies at ``checkpoint``)."""
    if checkpoint.is_file():
        link = checkpoint.with_name(f".{checkpoint.name}.link.tmp")
        link.unlink(missing_ok=True)
        os.link(checkpoint, link)
        os.replace(link, _previous(checkpoint))


def _set_aside(checkpoint: Path) -> Path:
    """Move a checkpoint of weights that diverged to ``*.diverged.safetensors`` (returned) and put the previous one
    (if any) back in its place, so that a resume starts from weights that gave a finite loss."""
    moved = checkpoint.with_suffix(".diverged.safetensors")
    os.replace(checkpoint, moved)
    if _previous(checkpoint).is_file():
        os.replace(_previous(checkpoint), checkpoint)
    return moved


def _previous(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".previous.safetensors")


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"{prefix}.{i}.{k}": torch.as_tensor(v) for i, s in state.items() for k, v in s.items()}


def _load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    saved = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    saved["state"] = state
    optimizer.load_state_dict(saved)


def load_generator(path: str | Path) -> MeshGenerator:
    """The moving-average generator (eval mode) from ``generator.safetensors`` or a training output folder.

    Raises:
        ValueError: a missing or unreadable file, or one that is not a generator written by :func:`train_meshgan`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "generator.safetensors"
    if not path.is_file():
        raise ValueError(f"generator checkpoint not found: {path}")
    metadata = read_safetensors_metadata(path)
    if "generator" not in metadata:
        raise ValueError(f"{path} has no generator configuration in its metadata: give a train-meshgan run folder or "
                         "its generator.safetensors")  # fmt: skip
    try:
        generator = MeshGenerator(**json.loads(metadata["generator"]))
        generator.load_state_dict(read_state_dict(path))
    except (TypeError, json.JSONDecodeError, RuntimeError) as err:
        raise ValueError(f"{path} does not match its generator configuration: {err}") from None
    return generator.eval()


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------
def _check_run_folder(out_dir: Path) -> None:
    """Refuse a run folder that holds another command's run (its ``config.yaml`` would be overwritten)."""
    if not out_dir.is_dir():
        return
    foreign = [name for name in _OTHER_RUN_FILES if (out_dir / name).exists()]
    config_path = out_dir / "config.yaml"
    if not foreign and config_path.is_file():
        try:
            settings = load_yaml(config_path)
        except ValueError:
            settings = None
        names = {f.name for f in dataclasses.fields(MeshGANConfig)}
        if not (isinstance(settings, dict) and set(settings) <= names):
            foreign = ["config.yaml"]
    if foreign:
        raise ValueError(f"{out_dir} holds another kind of run ({', '.join(foreign)}), not train-meshgan's: give "
                         "another output folder")  # fmt: skip


def _check_resumable(checkpoint_path: Path, config: MeshGANConfig) -> None:
    """A checkpoint resumed under ``config``: the configuration stored in it (the folder's ``config.yaml`` for
    checkpoints written before it was stored) and its step, by :func:`check_resumed_settings`."""
    try:
        metadata = read_safetensors_metadata(checkpoint_path)
    except ValueError as err:
        raise ValueError(f"cannot resume {checkpoint_path}: {err}") from None
    if "config" in metadata:
        saved = yaml.safe_load(metadata["config"])
    else:
        saved = load_yaml(checkpoint_path.with_name("config.yaml")) or {}
    step = int(metadata.get("step", 0))
    check_resumed_settings(saved, config.to_dict(), step, str(checkpoint_path), free=_RESUME_FREE,
                           warned=_RESUME_WARNED)  # fmt: skip


def _hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def train_meshgan(config_path: str | Path, out_dir: str | Path, resume: bool = True, progress: bool = True) -> Path:
    """Train the generator of ``config_path`` (YAML, :class:`MeshGANConfig`) into ``out_dir``.

    With ``resume`` and a ``checkpoint.safetensors`` in ``out_dir``, training continues from it (random draws are
    seeded by step, so a resumed run matches an uninterrupted one up to floating point) if it was written with the
    same configuration (stored in the checkpoint): ``steps`` may grow, to train longer, and ``lr_g`` / ``lr_d`` may
    change with a warning (lowered after a divergence). Without ``resume`` the folder's checkpoint and generator are
    deleted first, so that no later run resumes them under this configuration. A folder of another command's run is
    refused. Everything is checked before anything is written.

    Returns:
        Path of ``generator.safetensors`` (load with :func:`load_generator`).

    Raises:
        ValueError: a bad configuration, another kind of run in ``out_dir``, or a checkpoint that cannot be resumed
            under this configuration (one line naming the settings).
        TrainingDiverged: a loss became NaN/inf; nothing of that step is saved (the checkpoint keeps the last good
            state).
    """
    config = MeshGANConfig.from_yaml(config_path)
    out_dir = Path(out_dir)
    _check_run_folder(out_dir)
    config_text = yaml.safe_dump(config.to_dict(), sort_keys=True)
    checkpoint_path = out_dir / "checkpoint.safetensors"
    if resume and checkpoint_path.is_file():
        _check_resumable(checkpoint_path, config)
    elif checkpoint_path.is_file():  # starting over: the old state must not be resumed under this config later
        for name in ("checkpoint.safetensors", "checkpoint.previous.safetensors", "generator.safetensors"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "config.yaml", "w") as f:
        f.write(config_text)

    torch.manual_seed(config.seed)
    generator = MeshGenerator(**config.generator_kwargs())
    template = generator.template
    uv_disc = UVDiscriminator(config.discriminator_channels)
    image_disc = ImageDiscriminator(config.discriminator_channels)
    ema = copy.deepcopy(generator).requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = torch.optim.Adam([*uv_disc.parameters(), *image_disc.parameters()], lr=config.lr_d, betas=config.betas)

    data_path = out_dir / "training_set.safetensors"
    data_key = json.dumps({k: v for k, v in config.to_dict().items() if k not in _TRAINING_ONLY}, sort_keys=True)
    data = None
    if data_path.is_file():
        try:
            if read_safetensors_metadata(data_path).get("config") == data_key:
                data = read_state_dict(data_path)
        except ValueError as err:  # a damaged cache is rebuilt
            warnings.warn(f"rebuilding the training set: {err}", stacklevel=2)
    if data is None:
        data = _build_training_set(config, template, progress)
        _save_tensors(data, data_path, {"config": data_key})

    start_step = 0
    if resume and checkpoint_path.is_file():
        tensors = read_state_dict(checkpoint_path)
        for prefix, module in (
            ("generator", generator),
            ("ema", ema),
            ("uv_disc", uv_disc),
            ("image_disc", image_disc),
        ):
            module.load_state_dict({k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        _load_optimizer("opt_g", opt_g, tensors)
        _load_optimizer("opt_d", opt_d, tensors)
        start_step = int(tensors["step"])
    CSVLogger(out_dir / "log.csv").truncate_after(start_step - 1)  # drop the rows of steps to be run (again)
    saved_step = start_step if checkpoint_path.is_file() else None  # the step of the weights the checkpoint holds

    def check_loss(loss: torch.Tensor, step: int) -> None:
        what = non_finite_loss(loss)
        if what is not None and saved_step == step:
            # The checkpoint holds the weights this loss came from: resuming it would diverge again.
            moved = _set_aside(checkpoint_path)
            note = f" ({checkpoint_path.name} of step {step} held the weights that diverged: set aside as {moved.name})"
            raise divergence_error(what, step, checkpoint_path, note, _DIVERGENCE_ADVICE)
        check_finite_loss(loss, step, checkpoint_path, _DIVERGENCE_ADVICE)

    def save(step: int) -> None:
        nonlocal saved_step
        _keep_previous(checkpoint_path)
        saved_step = step
        tensors = {"step": torch.tensor(step)}
        for prefix, module in (
            ("generator", generator),
            ("ema", ema),
            ("uv_disc", uv_disc),
            ("image_disc", image_disc),
        ):
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        tensors.update(_optimizer_tensors("opt_g", opt_g) | _optimizer_tensors("opt_d", opt_d))
        _save_tensors(tensors, checkpoint_path, {"step": str(step), "config": config_text})
        meta = {"generator": json.dumps(config.generator_kwargs()), "step": str(step), "config": config_text}
        _save_tensors(ema.state_dict(), out_dir / "generator.safetensors", meta)

    n_objects, n_views = data["views"].shape[:2]
    batch = config.batch_size
    log_rows = []
    for step in tqdm(range(start_step, config.steps), desc="meshgan", unit="step", disable=not progress,
                     initial=start_step, total=config.steps):  # fmt: skip
        started = time.perf_counter()
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        objects = torch.randint(n_objects, (batch,), generator=g)
        view_ids = torch.randint(n_views, (batch,), generator=g)
        real_views = data["views"][objects, view_ids] - 0.5
        cameras = weak_cameras(
            torch.full((batch,), config.camera_scale), torch.zeros(batch, 2), data["quaternions"][objects, view_ids],
            config.image_size,
        )  # fmt: skip
        z = torch.randn(batch, config.latent_dim, generator=g)

        # Generator forward once; the discriminator step uses its detached outputs.
        texture, displacement = generator(z)
        verts = template.vertex_positions(displacement)
        fake_views = (
            render_generated(
                template,
                verts,
                (texture + 1) / 2,
                cameras,
                soft=config.soft_render,
                sigma=config.soft_sigma,
                faces_per_pixel=config.faces_per_pixel,
            )
            - 0.5
        )

        opt_d.zero_grad()
        d_loss = _hinge_d(uv_disc(data["textures"][objects], data["deformations"][objects]),
                          uv_disc(texture.detach(), displacement.detach()))  # fmt: skip
        d_img = _hinge_d(image_disc(real_views), image_disc(fake_views.detach()))
        d_total = d_loss + config.image_loss_weight * d_img
        check_loss(d_total, step)
        d_total.backward()
        opt_d.step()

        opt_g.zero_grad()
        g_uv = -uv_disc(texture, displacement).mean()
        g_img = -image_disc(fake_views).mean()
        smooth = smoothness_loss(verts, template.faces, template.neighbors).mean()
        g_total = g_uv + config.image_loss_weight * g_img + config.smoothness_weight * smooth
        check_loss(g_total, step)
        g_total.backward()
        opt_g.step()
        check_finite_parameters([*generator.parameters(), *uv_disc.parameters(), *image_disc.parameters()], step,
                                checkpoint_path, _DIVERGENCE_ADVICE)  # fmt: skip

        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), generator.parameters(), strict=True):
                p_ema.lerp_(p, 1 - config.ema_decay)
            for b_ema, b in zip(ema.buffers(), generator.buffers(), strict=True):
                b_ema.copy_(b)
        values = ",".join(f"{float(x.detach()):.4f}" for x in (d_loss, d_img, g_uv, g_img, smooth))
        log_rows.append(f"{step},{values},{time.perf_counter() - started:.3f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save(step + 1)
            _append_log(out_dir / "log.csv", log_rows)
            log_rows = []
    if not (out_dir / "generator.safetensors").is_file():
        save(config.steps)
    return out_dir / "generator.safetensors"


# Settings that do not change the cached training set.
_TRAINING_ONLY = {"latent_dim", "generator_channels", "discriminator_channels", "batch_size", "steps", "lr_g", "lr_d",
                  "betas", "image_loss_weight", "smoothness_weight", "ema_decay", "checkpoint_every"}  # fmt: skip


def _append_log(path: Path, rows: list[str]) -> None:
    header = "step,d_uv,d_image,g_uv,g_image,smoothness,seconds\n"
    previous = path.read_text() if path.is_file() else header
    with atomic_write(path, "w") as f:
        f.write(previous + "".join(r + "\n" for r in rows))
