"""Training of TripoSR-architecture models on multi-view renders (``monorecon train CONFIG.yaml``).

Each step, for every object of the batch (SPEC §1, "Training"):

1. **Views.** One view is drawn as the input and ``n_supervision_views`` views supervise: the input view itself
   plus ``n_supervision_views - 1`` others drawn without replacement from the remaining views.
2. **Object-centric relative poses** (as LRM / TripoSR): the model has no camera input and always assumes the
   canonical input camera ``orbit_c2w(0, 0, input_distance)`` with ``input_fov_deg`` (TripoSR's view 0 is our
   azimuth 0 = +Z; distance 1.9, fov 40 deg). The whole scene is rigidly moved so that the drawn input camera
   becomes that canonical camera: ``M = C_canonical @ inv(C_input)``, supervision cameras ``M @ C_view``. The
   datasets must therefore be rendered with cameras looking at the origin from ``input_distance`` with fov
   ``input_fov_deg`` (``synthesize_dataset`` is run with those values; :func:`train` checks them).
3. **Input image**: the RGBA render composited on grey ``input_background`` (0.5, as the inference preprocessing);
   with ``data.reframe`` first framed as the inference preprocessing frames a photo, the scene moved to match
   (:func:`monorecon.preprocess.reframe_views`).
4. **Patches**: one ``patch_size`` square per supervision view (optionally of the view resized to
   ``supervision_size``). With probability ``foreground_patch_prob`` its
   centre is a pixel drawn uniformly among the foreground pixels (alpha > 0.5), otherwise uniformly among all pixels;
   the patch is then shifted to lie inside the image. So a foreground pixel is a patch centre with probability
   ``p / n_fg + (1 - p) / (H W)`` and a background one ``(1 - p) / (H W)``.
5. **Loss** on the rendered patch (white background, as the TripoSR renderer): ``MSE(rgb) + lambda_lpips *
   PerceptualLoss(rgb) + lambda_mask * BCE(opacity, alpha)``, plus optionally (not in SPEC §1; off by default)
   ``lambda_depth * L1(depth)`` between the rendered and the dataset's camera depth on the patch pixels that are
   wholly foreground (:func:`depth_l1`), a direct geometric signal where the dataset has depth maps. (Fine-tuning
   the bundled model with ``lambda_depth = 1`` did not improve it; see its model card.) Also optional (off by
   default): ``lambda_occupancy * BCE`` of occupancy labels of 3-D points against the density at the mesh level
   (:func:`occupancy_bce`): the labels come from the depth hull of all the object's views, so the surface that
   marching cubes extracts is trained directly (the rendering losses leave the density free wherever the renders
   do not depend on it, e.g. inside an object). Also optional (off by default): ``lambda_distortion`` times
   Mip-NeRF 360's distortion loss of the patch rays (:func:`monorecon.core.volume.distortion_loss`), which favours
   weights concentrated at one depth (a surface) over density spread along the ray (a haze that renders opaque but
   lies below the mesh level). (Fine-tuning the bundled model with ``lambda_distortion = 1`` changed nothing against
   the same run without it; see its model card.)

Optimisation: AdamW, linear warm-up then cosine decay, gradient-norm clipping. Every random choice of a step comes
from :func:`monorecon.train.utils.step_generator` ``(seed, step, rank)``, so a run resumed from a checkpoint repeats
the uninterrupted run exactly. Under ``torchrun --nproc_per_node N`` each rank draws its own objects and gradients
are averaged with DistributedDataParallel (gloo on the CPU; nccl on CUDA, one GPU per rank). ``device`` "auto"
trains on CUDA when there is one; the random draws stay on the CPU, so a run draws the same samples on any device
(``tests/test_train.py`` compares a CUDA run with the CPU run where CUDA exists). Outputs in ``out_dir``:
``checkpoints/``, ``train_log.csv`` (``elapsed_s`` counted over all sessions of a resumed run), ``curves.png``,
``config.yaml`` (the training config, written once the run starts: a refused resume leaves it), ``.train.lock`` (held
by rank 0 while a run trains: a second run on the folder is refused), and at the end
``final/model.safetensors`` +
``final/config.yaml``, loadable by :func:`monorecon.models.triposr.load_triposr` (e.g. ``monorecon reconstruct
--weights RUN/final``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from tqdm import tqdm

from ..core.cameras import PerspectiveCameras, orbit_c2w
from ..core.carving import depth_hull_occupancy
from ..core.checks import (
    SkippedInputWarning,
    check_device,
    check_int,
    check_non_negative,
    check_positive,
    warn_if_slow_bfloat16,
)
from ..core.volume import VolumeRenderConfig, VolumeRenderer, distortion_loss
from ..io.atomic import atomic_write, remove_stale_temporaries
from ..io.weights import read_state_dict
from ..losses.perceptual import check_perceptual_size
from ..models.triposr import TripoSRConfig, TripoSRModel
from ..models.triposr.loading import check_state_dict
from ..preprocess import DEFAULT_FOREGROUND_RATIO, reframe_views
from .resume import check_checkpoint_settings
from .utils import (
    Checkpointer,
    CSVLogger,
    barrier,
    check_finite_loss,
    check_finite_parameters,
    cosine_with_warmup,
    dataclass_to_dict,
    diverges_on_non_finite,
    hold_run_folder,
    init_distributed,
    is_main_process,
    load_dataclass_config,
    plot_curves,
    seed_everything,
    step_generator,
    unwrap_model,
    wrap_ddp,
)

__all__ = [
    "DataSection",
    "LossSection",
    "OptimSection",
    "TripoSRTrainConfig",
    "depth_l1",
    "export_weights",
    "load_train_config",
    "recolor_objects",
    "relative_cameras",
    "sample_patches",
    "scale_density",
    "train",
]


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------
#: Settings a resumed run may change freely: bookkeeping, and the optimiser's (which the checkpoint's loading warns of).
RESUME_FREE = ("out_dir", "quiet", "num_threads", "resume", "log_every", "checkpoint_every_steps",
               "checkpoint_every_minutes", "keep_checkpoints", "max_minutes", "device", "init_weights", "optim.lr",
               "optim.betas", "optim.weight_decay")  # fmt: skip
_OTHER_SAMPLES = "the run draws other samples than the uninterrupted one would"
#: Settings a resumed run may change with a warning naming the consequence; any other change is refused.
RESUME_WARNED = {
    "steps": "the learning-rate schedule is re-timed to the new length",
    "optim.warmup_steps": "the learning-rate schedule changes from the next step on",
    "optim.min_lr_ratio": "the learning-rate schedule changes from the next step on",
    "optim.grad_clip": "it applies from the next step on",
    "batch_size": _OTHER_SAMPLES,
    "seed": _OTHER_SAMPLES,
    "world_size": _OTHER_SAMPLES,
    "precision": "the run computes differently from the next step on",
}

#: The largest side supervision views are resized to (1,000 objects x 4 float32 RGBA views of 2048^2 take 268 GB).
MAX_SUPERVISION_SIZE = 2048


@dataclass
class DataSection:
    """Training data.

    Attributes:
        root: dataset folder (:class:`monorecon.data.MultiViewDataset` layout), or a list of them, whose objects are
            used in the order given (e.g. a procedural set and a set of rendered real meshes).
        split: split of each ``index.json`` to train on.
        max_objects: use only the first N objects (None: all).
        input_background: grey level the input view is composited on.
        recolor_prob: probability that an object's views are re-coloured for a step (:func:`recolor_objects`): the
            procedural objects are saturated and rarely near the grey background, unlike untextured scans or clay
            renders, which the model otherwise fails to separate from the background.
        reframe: frame each input view as the inference preprocessing frames a photo (the alpha's bounding box
            centred, its longer side the model's ``foreground_ratio`` of the image) and move the supervision cameras
            to match (:func:`monorecon.preprocess.reframe_views`). Without it the renders keep the dataset's
            framing (the bounding sphere centred, a fixed size), from which a model can read an object's depth (a
            small silhouette means a deep object) and position, cues that a prepared photo does not carry.
        reframe_jitter: with ``reframe``, the framing ratio is drawn in ``ratio x [1 - jitter, 1 + jitter]``.
    """

    root: str | list[str] = ""
    split: str = "train"
    max_objects: int | None = None
    input_background: float = 0.5
    recolor_prob: float = 0.0
    reframe: bool = False
    reframe_jitter: float = 0.0

    @property
    def roots(self) -> list[str]:
        """``root`` as a list of folders."""
        return [self.root] if isinstance(self.root, str) else self.root

    def __post_init__(self) -> None:
        if len(set(self.roots)) != len(self.roots):
            raise ValueError(f"data.root lists a folder twice: {self.root!r}")
        count = self.max_objects
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"data.max_objects must be a positive integer or null, got {count!r}")
        if not 0.0 <= self.input_background <= 1.0:  # NaN fails too
            raise ValueError(f"data.input_background must lie in [0, 1], got {self.input_background}")
        if not 0.0 <= self.recolor_prob <= 1.0:
            raise ValueError(f"data.recolor_prob must lie in [0, 1], got {self.recolor_prob}")
        if not isinstance(self.reframe, bool):
            raise ValueError(f"data.reframe must be true or false, got {self.reframe!r}")
        if not 0.0 <= self.reframe_jitter < 0.5:
            raise ValueError(f"data.reframe_jitter must lie in [0, 0.5), got {self.reframe_jitter}")


@dataclass
class OptimSection:
    """AdamW + warm-up/cosine schedule + clipping."""

    lr: float = 4e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        # AdamW moves each weight by about lr per step: above 1 a run diverges at once
        if not 0 < self.lr <= 1:
            raise ValueError(f"optim.lr must lie in (0, 1], got {self.lr}")
        check_non_negative(self.weight_decay, "optim.weight_decay")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not self.grad_clip > 0:  # 0 would freeze the weights, a negative value flip the gradients
            raise ValueError(f"optim.grad_clip must be positive (inf: no clipping), got {self.grad_clip}")


@dataclass
class LossSection:
    """Loss weights: ``MSE + lambda_lpips * perceptual + lambda_mask * BCE(mask) + lambda_depth * L1(depth)
    + lambda_occupancy * BCE(occupancy) + lambda_distortion * distortion``.

    ``lambda_depth > 0`` and ``lambda_occupancy > 0`` need a dataset with depth maps (``depth/NNN.npz``;
    :func:`depth_l1`, :func:`occupancy_bce`). The occupancy term scores ``occupancy_points`` points per object (half
    uniform in the cube of half side ``occupancy_box``, half near the surface seen in the depth maps, jittered by
    ``occupancy_jitter``), labelled by the depth hull of all the object's views (depth slack ``occupancy_tolerance``:
    0.005 balances the labels that disagree with the true solid on either side, 1-2 % each, on synthetic objects),
    against the model's density at the mesh level ``occupancy_level`` (None: the model's ``renderer.mesh_threshold``).
    """

    lambda_lpips: float = 0.0
    lambda_mask: float = 0.5
    lambda_depth: float = 0.0
    lambda_occupancy: float = 0.0
    lambda_distortion: float = 0.0
    occupancy_level: float | None = None
    occupancy_points: int = 2048
    occupancy_box: float = 0.6
    occupancy_jitter: float = 0.02
    occupancy_tolerance: float = 0.005
    perceptual_weights: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "lambda_lpips",
            "lambda_mask",
            "lambda_depth",
            "lambda_occupancy",
            "lambda_distortion",
            "occupancy_jitter",
            "occupancy_tolerance",
        ):
            check_non_negative(getattr(self, name), f"loss.{name}")
        for name in ("occupancy_level", "occupancy_box"):
            value = getattr(self, name)
            if (value is not None or name == "occupancy_box") and not (math.isfinite(value) and value > 0):
                raise ValueError(f"loss.{name} must be a finite number > 0, got {value!r}")
        if int(self.occupancy_points) != self.occupancy_points or not 2 <= self.occupancy_points <= 1 << 20:
            raise ValueError(f"loss.occupancy_points must be an integer in [2, 2^20], got {self.occupancy_points!r}")


@dataclass
class TripoSRTrainConfig:
    """Everything :func:`train` needs (the YAML file mirrors this structure).

    Attributes:
        model: the model's own config mapping (as in the model's ``config.yaml``; see :mod:`monorecon.models.triposr`).
        out_dir: run folder (checkpoints, logs, final weights).
        steps: optimiser steps in total.
        batch_size: objects per step and per rank.
        n_supervision_views: supervision views per object (the input view is always one of them).
        patch_size: side of the supervised square patch of each supervision view (pixels).
        supervision_size: supervision views are resized to this side (area averaging, after compositing on white)
            before the patches are cut; None keeps the dataset resolution. Smaller: each patch covers more of the
            object for the same number of rays (the input image keeps the dataset resolution).
        foreground_patch_prob: probability that a patch centre is drawn among the foreground pixels.
        n_samples: volume-rendering samples per ray during training (``normalized_delta`` keeps densities comparable
            with the 128 samples used at inference).
        stratified: jitter the samples inside their bins during training.
        input_distance, input_fov_deg: the canonical input camera the model assumes (TripoSR: 1.9, 40 deg).
        checkpoint_every_steps, checkpoint_every_minutes: a checkpoint is written when either is reached.
        max_minutes: wall-time budget of this run (None: none). When it is spent the run stops after the current
            step, writes a checkpoint and exports ``final`` as at the end; running the same config again resumes it
            towards ``steps`` (the learning-rate schedule follows ``steps``, so set both for a planned length).
        keep_checkpoints: newest checkpoints kept.
        log_every: CSV row every N steps.
        seed: seed of the initialisation and of every random draw.
        num_threads: torch CPU threads per process (None: torch's default). On a shared, oversubscribed CPU one
            thread per process is several times faster than spinning OpenMP teams.
        resume: continue from the newest checkpoint in ``out_dir/checkpoints`` when there is one.
        init_weights: weights file (``.safetensors`` / ``.ckpt``, the model's key layout) the model starts from instead
            of a random initialisation (fine-tuning); a resumed checkpoint takes precedence. Loaded strictly: every key
            of ``model`` with its shape.
        quiet: no progress bar.
        device: "auto" (CUDA when available, else the CPU), "cpu" or "cuda". Under ``torchrun`` on CUDA each
            process takes the GPU of its ``LOCAL_RANK`` (nccl); on the CPU the processes use gloo. Random draws stay
            on the CPU (:func:`monorecon.train.utils.step_generator`), so a run's samples do not depend on the device.
        precision: "float32", or "bfloat16" for mixed precision: the image encoder, the backbone and the decoder's
            layers run under autocast in bfloat16 (faster on CPUs with AMX / AVX512-BF16 and on recent GPUs, much
            slower on other CPUs: a warning says so), while the scene code, the rendering, the losses and the weights
            stay float32.
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    out_dir: str = "runs/triposr"
    steps: int = 1000
    batch_size: int = 4
    n_supervision_views: int = 2
    patch_size: int = 32
    supervision_size: int | None = None
    foreground_patch_prob: float = 0.75
    n_samples: int = 64
    stratified: bool = True
    input_distance: float = 1.9
    input_fov_deg: float = 40.0
    checkpoint_every_steps: int = 200
    checkpoint_every_minutes: float = 5.0
    max_minutes: float | None = None
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    num_threads: int | None = None
    resume: bool = True
    init_weights: str | None = None
    quiet: bool = False
    device: str = "auto"
    precision: str = "float32"

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "n_supervision_views",
            "patch_size",
            "n_samples",
            "log_every",
            "keep_checkpoints",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        size = self.supervision_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < self.patch_size):
            raise ValueError(f"supervision_size must be an integer >= patch_size ({self.patch_size}), got {size!r}")
        if size is not None and size > MAX_SUPERVISION_SIZE:
            raise ValueError(f"supervision_size must be at most {MAX_SUPERVISION_SIZE}, got {size}")
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads", 1, 1024)
        if not 0.0 <= self.foreground_patch_prob <= 1.0:
            raise ValueError(f"foreground_patch_prob must lie in [0, 1], got {self.foreground_patch_prob}")
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        if not self.checkpoint_every_minutes > 0:  # NaN fails too; .inf: by steps only
            raise ValueError(f"checkpoint_every_minutes must be > 0, got {self.checkpoint_every_minutes}")
        check_positive(self.input_distance, "input_distance")
        if not 0.0 < self.input_fov_deg < 180.0:
            raise ValueError(f"input_fov_deg must lie in (0, 180) degrees, got {self.input_fov_deg}")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, int | float) and self.max_minutes > 0):
            raise ValueError(f"max_minutes must be a positive number of minutes or null, got {self.max_minutes!r}")
        if self.optim.warmup_steps > self.steps:
            raise ValueError(f"optim.warmup_steps ({self.optim.warmup_steps}) exceeds steps ({self.steps})")
        if not self.model:
            raise ValueError("the config needs a 'model' section (the model's architecture config)")
        if not self.data.root:
            raise ValueError("the config needs data.root (a dataset folder)")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ValueError(f"init_weights file not found: {self.init_weights}")
        if self.loss.lambda_lpips > 0:  # checked here, not at the first step after the run folder is written
            weights = self.loss.perceptual_weights
            if weights is not None and not Path(weights).is_file():
                raise ValueError(f"loss.perceptual_weights file not found: {weights}")
            check_perceptual_size(self.patch_size, weights is not None, "patch_size", "perceptual_weights")
        if self.data.reframe and (self.loss.lambda_depth > 0 or self.loss.lambda_occupancy > 0):
            raise ValueError("data.reframe leaves the depth maps as they are: not with lambda_depth / lambda_occupancy")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        check_device(self.device)

    @property
    def use_cuda(self) -> bool:
        """Whether training runs on CUDA ("auto" picks it when available)."""
        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())


def load_train_config(source: str | os.PathLike | dict[str, Any] | TripoSRTrainConfig) -> TripoSRTrainConfig:
    """A :class:`TripoSRTrainConfig` from a YAML path, a mapping, or itself."""
    if isinstance(source, TripoSRTrainConfig):
        return source
    return load_dataclass_config(source, TripoSRTrainConfig)


# --------------------------------------------------------------------------------------------------------------------
# Geometry and sampling
# --------------------------------------------------------------------------------------------------------------------
def relative_cameras(
    c2w_input: torch.Tensor, c2w_views: torch.Tensor, distance: float = 1.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the scene rigidly so the input camera becomes the canonical camera ``orbit_c2w(0, 0, distance)``.

    Args:
        c2w_input: (B, 4, 4) input cameras (world frame), looking at the origin from ``distance``.
        c2w_views: (B, S, 4, 4) supervision cameras (world frame).
        distance: the canonical camera distance.

    Returns:
        ``(world_to_canonical (B, 4, 4), c2w_views in the canonical frame (B, S, 4, 4))``. A world point ``x`` is at
        ``world_to_canonical @ x`` in the frame the model reconstructs in.
    """
    canonical = orbit_c2w(0.0, 0.0, distance).to(c2w_input)
    world_to_canonical = canonical @ torch.linalg.inv(c2w_input)
    return world_to_canonical, world_to_canonical[:, None] @ c2w_views


def sample_patches(
    alpha: torch.Tensor, patch_size: int, foreground_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Top-left corners of one square patch per image, centred over the foreground with probability ``p``.

    Args:
        alpha: (N, H, W) masks in [0, 1].
        patch_size: patch side (<= H and W).
        foreground_prob: probability that the centre is drawn uniformly among pixels with alpha > 0.5 (images
            without foreground always draw uniformly among all pixels).
        generator: random source.

    Returns:
        (N, 2) long ``(row, col)`` of the top-left pixel, with the patch inside the image.
    """
    n, height, width = alpha.shape
    if not 1 <= patch_size <= min(height, width):
        raise ValueError(f"patch_size must lie in [1, {min(height, width)}], got {patch_size}")
    foreground = (alpha > 0.5).reshape(n, -1).float()
    has_foreground = foreground.sum(-1) > 0
    use_foreground = (torch.rand(n, generator=generator) < foreground_prob) & has_foreground
    weights = torch.where(use_foreground[:, None], foreground, torch.ones_like(foreground))
    centre = torch.multinomial(weights, 1, generator=generator)[:, 0]
    half = patch_size // 2
    row = (centre // width - half).clamp(0, height - patch_size)
    col = (centre % width - half).clamp(0, width - patch_size)
    return torch.stack([row, col], dim=-1)


#: Rec. 601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


def recolor_objects(
    images: torch.Tensor, prob: float, generator: torch.Generator, levels: tuple[float, float] = (0.3, 0.8)
) -> torch.Tensor:
    """Re-colour each object's views consistently with probability ``prob``.

    A chosen object keeps a random fraction ``s ~ U(0, 1)`` of its saturation (``luma + s * (rgb - luma)``) and is
    scaled so that the mean luma of its first view's foreground is ``U(levels)``; the same map applies to all its
    views. For a diffuse object under white light this is exactly a render with another albedo (up to clipping).

    Args:
        images: (B, S, H, W, 4) straight-alpha RGBA in [0, 1], view 0 the input view.
        prob: probability per object.
        generator: random source (three draws per object, whatever ``prob``).
        levels: range of the input view's mean foreground luma after the map.

    Returns:
        (B, S, H, W, 4) images; alpha unchanged.
    """
    n = images.shape[0]
    chosen = torch.rand(n, generator=generator) < prob
    saturation = torch.rand(n, generator=generator)
    level = levels[0] + (levels[1] - levels[0]) * torch.rand(n, generator=generator)
    rgb, alpha = images[..., :3], images[..., 3:]
    luma = (rgb * torch.tensor(_LUMA, dtype=rgb.dtype)).sum(-1, keepdim=True)
    foreground = (alpha[:, 0] > 0.5).to(rgb.dtype)
    mean = (luma[:, 0] * foreground).sum((1, 2, 3)) / foreground.sum((1, 2, 3)).clamp(min=1.0)
    per_object = (-1, 1, 1, 1, 1)
    mapped = luma + saturation.view(per_object) * (rgb - luma)
    mapped = (mapped * (level / mean.clamp(min=0.05)).view(per_object)).clamp(0.0, 1.0)
    rgb = torch.where(chosen.view(per_object), mapped, rgb)
    return torch.cat([rgb, alpha], dim=-1)


def depth_l1(
    ray_depth: torch.Tensor, depth_per_t: torch.Tensor, target_depth: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean absolute error of the rendered camera depth over the valid pixels (0 when there is none).

    Args:
        ray_depth: (...) rendered depth along the ray, in units of the ray parameter ``t`` (unit directions: the
            Euclidean distance from the camera centre).
        depth_per_t: (...) camera depth ``-z_camera`` per unit of ``t`` (the cosine between the ray and the optical
            axis for unit directions).
        target_depth: (...) true camera depth ``-z_camera``.
        valid: (...) bool, the pixels that are scored (wholly foreground, with a known depth).
    """
    error = (ray_depth * depth_per_t - target_depth).abs()
    count = valid.sum()
    return torch.where(valid, error, torch.zeros_like(error)).sum() / count.clamp(min=1)


def occupancy_bce(density: torch.Tensor, inside: torch.Tensor, level: float) -> torch.Tensor:
    """Binary cross-entropy of occupancy labels against densities, with the logit ``log(density / level)``.

    A point is predicted inside with probability 1/2 exactly at the mesh level, so the loss moves the extracted
    iso-surface (``density = level``) onto the labels' boundary and drives densities well below the level outside.

    Args:
        density: (...) densities >= 0.
        inside: (...) labels, 1 inside the object and 0 outside.
        level: the mesh iso-level (> 0).
    """
    logits = torch.log(density.clamp_min(1e-30)) - math.log(level)
    return F.binary_cross_entropy_with_logits(logits, inside.to(logits))


def _occupancy_samples(
    depth: torch.Tensor, c2w: torch.Tensor, fov_y_deg: float, loss: LossSection, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (world frame) and their depth-hull labels for one object: (M, 3) float, (M,) bool.

    Half of the ``loss.occupancy_points`` points are uniform in the cube of half side ``occupancy_box``, half are
    surface points of random foreground pixels of the depth maps (V, H, W) moved by Gaussian noise of
    ``occupancy_jitter``; labels from :func:`monorecon.core.carving.depth_hull_occupancy` of all V views with
    ``occupancy_tolerance``.
    """
    height, width = depth.shape[1:]
    cameras = PerspectiveCameras(c2w, height, width, fov_y_deg=fov_y_deg)
    n_uniform = loss.occupancy_points // 2
    n_surface = loss.occupancy_points - n_uniform
    uniform = (torch.rand(n_uniform, 3, generator=generator) * 2.0 - 1.0) * loss.occupancy_box
    foreground = (depth > 0).reshape(-1).nonzero()[:, 0]
    if foreground.numel() == 0:
        points = uniform
    else:
        pick = foreground[torch.randint(foreground.numel(), (n_surface,), generator=generator)]
        view, row, column = pick // (height * width), pick // width % height, pick % width
        # Back-project only the picked pixel centres (a ray per pixel of every view would cost 60 x more).
        ndc = cameras.pixel_to_ndc(torch.stack([column + 0.5, row + 0.5], dim=-1).to(c2w))
        origins, directions = cameras.ndc_to_camera_ray(ndc[None].expand(len(c2w), -1, -1))  # unit camera depth
        index = torch.arange(n_surface)
        in_camera = origins[view, index] + directions[view, index] * depth.reshape(-1)[pick, None]
        rotation, centre = c2w[view, :3, :3], c2w[view, :3, 3]
        surface = (rotation @ in_camera[..., None]).squeeze(-1) + centre
        jitter = torch.randn(n_surface, 3, generator=generator) * loss.occupancy_jitter
        points = torch.cat([uniform, surface + jitter])
    return points, depth_hull_occupancy(cameras, depth, points, loss.occupancy_tolerance)


def _gather_patches(maps: torch.Tensor, corners: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, H, W, C) maps, (N, 2) corners -> (N, P, P, C) patches."""
    offsets = torch.arange(patch_size)
    rows = corners[:, 0, None] + offsets  # (N, P)
    cols = corners[:, 1, None] + offsets
    index = torch.arange(maps.shape[0])[:, None, None]
    return maps[index, rows[:, :, None], cols[:, None, :]]


# --------------------------------------------------------------------------------------------------------------------
# Data held in memory
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class _ViewBank:
    """All training views in memory: images uint8 (N, V, H, W, 4), c2w (N, V, 4, 4), fov (N, V), and when the depth
    loss is on, camera depths float16 (N, V, H, W) (0 on the background)."""

    images: torch.Tensor
    c2w: torch.Tensor
    fov_y_deg: torch.Tensor
    depth: torch.Tensor | None = None


def _load_views(config: TripoSRTrainConfig, show_progress: bool) -> _ViewBank:
    from ..data import MultiViewDataset

    datasets = [MultiViewDataset(root, split=config.data.split) for root in config.data.roots]
    dataset = torch.utils.data.ConcatDataset(datasets)
    folders = [record.folder for d in datasets for record in d.objects]  # named in messages: roots may share ids
    count = len(dataset) if config.data.max_objects is None else min(len(dataset), config.data.max_objects)
    use_depth = config.loss.lambda_depth > 0 or config.loss.lambda_occupancy > 0
    # The bank is allocated once and filled in place. Keeping each object's tensors instead (even the small camera
    # matrices) pinned the reader's freed buffers: 3.0 GB of RSS for a 0.3 GB bank of 600 objects, against 0.75 GB.
    images = c2w = fov = depth = None
    kept = 0
    off_camera = []  # objects whose cameras are not the canonical camera's distance and fov
    for i in tqdm(range(count), desc="loading views", disable=not show_progress):
        try:
            item = dataset[i]
        except ValueError as err:  # a file that passed the reader's checks but does not decode
            warnings.warn(f"skipping an object: {err}", SkippedInputWarning, stacklevel=2)  # err names its file
            continue
        if images is None:
            images = torch.empty((count, *item["images"].shape), dtype=torch.uint8)
            c2w = torch.empty((count, *item["c2w"].shape), dtype=item["c2w"].dtype)
            fov = torch.empty((count, *item["fov_y_deg"].shape), dtype=item["fov_y_deg"].dtype)
            depth = torch.empty((count, *item["depth"].shape), dtype=torch.float16) if use_depth else None
        if item["images"].shape != images.shape[1:]:  # the bank holds one view count and size
            views, size = item["images"].shape[0], "x".join(map(str, item["images"].shape[1:3]))
            first = f"{images.shape[1]} views of {images.shape[2]}x{images.shape[3]}"
            message = f"skipping object {folders[i]}: {views} views of {size}, unlike the first object's {first}"
            warnings.warn(message, SkippedInputWarning, stacklevel=2)
            continue
        distances = item["c2w"][:, :3, 3].norm(dim=-1)
        if not (
            torch.allclose(distances, torch.full_like(distances, config.input_distance), atol=1e-3)
            and torch.allclose(item["fov_y_deg"], torch.full_like(item["fov_y_deg"], config.input_fov_deg), atol=1e-3)
        ):
            off_camera.append(str(folders[i]))
            continue
        if use_depth:
            if not item["has_depth"]:
                raise ValueError(f"loss.lambda_depth and loss.lambda_occupancy need depth maps; {folders[i]} has none")
            depth[kept] = item["depth"]
        images[kept] = (item["images"] * 255.0 + 0.5).clamp(0, 255)  # copied as uint8 (truncated, as .to())
        c2w[kept], fov[kept] = item["c2w"], item["fov_y_deg"]
        kept += 1
    camera = f"input_distance={config.input_distance} from the origin with fov {config.input_fov_deg} deg"
    if not kept:
        unusable = f": the cameras of all must lie at {camera}; render the data so" if off_camera else ""
        raise ValueError(f"no usable object in {config.data.root} (split {config.data.split!r}){unusable}")
    if off_camera:
        names = ", ".join(off_camera[:3]) + (f" and {len(off_camera) - 3} more" if len(off_camera) > 3 else "")
        warnings.warn(f"skipping {names}: cameras not at {camera}", SkippedInputWarning, stacklevel=2)
    bank = _ViewBank(images[:kept], c2w[:kept], fov[:kept], None if depth is None else depth[:kept])
    if bank.images.shape[1] < config.n_supervision_views:
        raise ValueError(
            f"objects have {bank.images.shape[1]} views, fewer than n_supervision_views ({config.n_supervision_views})"
        )
    side = config.supervision_size or min(bank.images.shape[2:4])  # supervision_size itself is checked on loading
    if config.patch_size > side:
        raise ValueError(f"patch_size ({config.patch_size}) exceeds the {side}-pixel side of the supervision views")
    return bank


# --------------------------------------------------------------------------------------------------------------------
# Model step (one module so DistributedDataParallel sees a single forward)
# --------------------------------------------------------------------------------------------------------------------
class _TrainStep(torch.nn.Module):
    """Encode the input views and render the supervision patches; forward returns the loss terms."""

    def __init__(self, model: torch.nn.Module, config: TripoSRTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.renderer = VolumeRenderer(
            VolumeRenderConfig.triposr(
                n_samples=config.n_samples,
                stratified=config.stratified,
                box_radius=model.config.renderer.radius,
                chunk_size=8192,
                return_weights=config.loss.lambda_distortion > 0,
            )
        )
        self.perceptual = None
        if config.loss.lambda_lpips > 0:
            from ..losses.perceptual import PerceptualLoss

            self.perceptual = PerceptualLoss(weights_path=config.loss.perceptual_weights)
            for p in self.perceptual.parameters():
                p.requires_grad_(False)

    def _render_patches(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Scene codes (B, 3, C, H, W) and the supervision patches' rgb (B, V, P, P, 3), opacity and depth
        (B, V, P, P), and the per-object distortion losses (a list, empty without ``lambda_distortion``)."""
        cfg = self.config
        scene_codes = self.model.encode(batch["input_rgb"])
        size, n_views = cfg.patch_size, batch["origins"].shape[1]
        rgb, opacity, depth, distortion = [], [], [], []
        for b in range(scene_codes.shape[0]):
            code = scene_codes[b : b + 1]

            def field_fn(points: torch.Tensor, code: torch.Tensor = code) -> tuple[torch.Tensor, torch.Tensor]:
                density, colour = self.model.query(code, points[None])
                return density.reshape(-1, 1), colour.reshape(-1, 3)

            out = self.renderer.render(
                field_fn, batch["origins"][b].reshape(-1, 3), batch["directions"][b].reshape(-1, 3), generator=generator
            )
            rgb.append(out["rgb"].reshape(n_views, size, size, 3))
            opacity.append(out["opacity"].reshape(n_views, size, size))
            depth.append(out["depth"].reshape(n_views, size, size))
            if cfg.loss.lambda_distortion > 0:
                distortion.append(distortion_loss(out["weights"], out["edges"]))
        rgb, opacity, depth = torch.stack(rgb), torch.stack(opacity), torch.stack(depth)
        return scene_codes, rgb, opacity, depth, distortion

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.config
        device_type = batch["input_rgb"].device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
            scene_codes, rgb, opacity, depth, distortion = self._render_patches(batch, generator)
        target_rgb, target_alpha = batch["target_rgb"], batch["target_alpha"]
        mse = F.mse_loss(rgb, target_rgb)
        mask = F.binary_cross_entropy(opacity.clamp(1e-5, 1.0 - 1e-5), target_alpha)
        total = mse + cfg.loss.lambda_mask * mask
        terms = {"mse": mse, "mask_bce": mask}
        if cfg.loss.lambda_depth > 0:
            depth_loss = depth_l1(depth, batch["depth_per_t"], batch["target_depth"], batch["depth_valid"])
            total = total + cfg.loss.lambda_depth * depth_loss
            terms["depth_l1"] = depth_loss
        if cfg.loss.lambda_occupancy > 0:
            density, _ = self.model.query(scene_codes, batch["occupancy_points"])
            level = cfg.loss.occupancy_level or self.model.config.renderer.mesh_threshold
            occupancy = occupancy_bce(density[..., 0], batch["occupancy_inside"], level)
            total = total + cfg.loss.lambda_occupancy * occupancy
            terms["occupancy_bce"] = occupancy
        if cfg.loss.lambda_distortion > 0:
            distortion = torch.cat(distortion).mean()
            total = total + cfg.loss.lambda_distortion * distortion
            terms["distortion"] = distortion
        if self.perceptual is not None:
            size = cfg.patch_size
            to_nchw = lambda x: x.reshape(-1, size, size, 3).permute(0, 3, 1, 2)  # noqa: E731
            perceptual = self.perceptual(to_nchw(rgb), to_nchw(target_rgb)).mean()
            total = total + cfg.loss.lambda_lpips * perceptual
            terms["perceptual"] = perceptual
        terms["loss"] = total
        return terms


def _make_batch(bank: _ViewBank, config: TripoSRTrainConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw objects, views and patches; build the input images, patch rays (canonical frame) and targets."""
    n_objects, n_views, height, width = bank.images.shape[:4]
    objects = torch.randint(n_objects, (config.batch_size,), generator=generator)
    order = torch.argsort(torch.rand(config.batch_size, n_views, generator=generator), dim=-1)
    views = order[:, : config.n_supervision_views]  # column 0 is the input view
    images = bank.images[objects[:, None], views].float() / 255.0  # (B, S, H, W, 4)
    if config.data.recolor_prob > 0:  # no draws otherwise: runs without it keep their random streams
        images = recolor_objects(images, config.data.recolor_prob, generator)
    c2w = bank.c2w[objects[:, None], views]
    world_to_canonical, c2w_canonical = relative_cameras(c2w[:, 0], c2w, config.input_distance)

    input_rgba = images[:, 0]
    if config.data.reframe:
        ratio = torch.full((config.batch_size,), float(config.model.get("foreground_ratio", DEFAULT_FOREGROUND_RATIO)))
        if config.data.reframe_jitter > 0:
            ratio = ratio * (1.0 + config.data.reframe_jitter * (2 * torch.rand(ratio.shape, generator=generator) - 1))
        input_rgba, zoom, shift = reframe_views(input_rgba, ratio, config.input_distance, config.input_fov_deg)
        c2w_canonical = c2w_canonical.clone()
        c2w_canonical[..., :3, 3] = zoom[:, None, None] * c2w_canonical[..., :3, 3] + shift[:, None]
    grey = config.data.input_background
    input_rgb = input_rgba[..., :3] * input_rgba[..., 3:] + grey * (1.0 - input_rgba[..., 3:])

    flat = images.reshape(-1, height, width, 4)
    # Composite on white (as the renderer) at full resolution, then average down to the supervision size.
    flat = torch.cat([flat[..., :3] * flat[..., 3:] + (1.0 - flat[..., 3:]), flat[..., 3:]], dim=-1)
    if config.loss.lambda_depth > 0:  # depth-weighted and coverage channels, averaged alike (no random draws)
        depth = bank.depth[objects[:, None], views].reshape(-1, height, width, 1).float()
        known = ((depth > 0) & (flat[..., 3:] > 0.5)).float()
        flat = torch.cat([flat, depth * known, known], dim=-1)
    size = config.supervision_size or height
    if size != height or size != width:
        flat = F.interpolate(flat.permute(0, 3, 1, 2), (size, size), mode="area").permute(0, 2, 3, 1)
        height = width = size
    corners = sample_patches(flat[..., 3], config.patch_size, config.foreground_patch_prob, generator)
    patches = _gather_patches(flat, corners, config.patch_size)
    target_rgb, target_alpha = patches[..., :3], patches[..., 3]

    cameras = PerspectiveCameras(c2w_canonical.reshape(-1, 4, 4), height, width, fov_y_deg=config.input_fov_deg)
    origins, directions = cameras.get_rays()
    origins = _gather_patches(origins, corners, config.patch_size)
    directions = _gather_patches(directions, corners, config.patch_size)
    shape = (config.batch_size, config.n_supervision_views, config.patch_size, config.patch_size)
    batch = {
        "input_rgb": input_rgb,
        "origins": origins.reshape(*shape, 3),
        "directions": directions.reshape(*shape, 3),
        "target_rgb": target_rgb.reshape(*shape, 3),
        "target_alpha": target_alpha.reshape(shape),
    }
    if config.loss.lambda_depth > 0:
        coverage = patches[..., 5]
        valid = coverage > 1.0 - 1e-4  # every averaged pixel was foreground with a known depth
        # Camera depth per unit of t along a unit ray: its cosine with the optical axis (-Z, c2w's third column).
        optical_axis = -cameras.c2w[:, None, None, :3, 2]
        depth_per_t = (directions * optical_axis).sum(-1)
        batch["target_depth"] = (patches[..., 4] / coverage.clamp(min=1e-6)).reshape(shape)
        batch["depth_valid"] = valid.reshape(shape)
        batch["depth_per_t"] = depth_per_t.reshape(shape)
    if config.loss.lambda_occupancy > 0:  # labels from all views of each object, points moved to the canonical frame
        samples = [
            _occupancy_samples(bank.depth[o].float(), bank.c2w[o], config.input_fov_deg, config.loss, generator)
            for o in objects.tolist()
        ]
        points = torch.stack([points for points, _ in samples])
        rotation, shift = world_to_canonical[:, None, :3, :3], world_to_canonical[:, None, :3, 3]
        batch["occupancy_points"] = (rotation @ points[..., None]).squeeze(-1) + shift
        batch["occupancy_inside"] = torch.stack([inside for _, inside in samples]).float()
    return batch


# --------------------------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------------------------
def _build_model(model_config: dict[str, Any]) -> TripoSRModel:
    return TripoSRModel(TripoSRConfig.from_dict(model_config))


def scale_density(model: TripoSRModel, factor: float) -> TripoSRModel:
    """Multiply the model's densities by ``factor`` (in place) by shifting the density output bias by ``log(factor)``.

    With the ``exp`` density activation ``density = exp(raw - 1)``, adding ``log(factor)`` to the bias of the
    density output of the decoder's last layer scales every density exactly. The iso-surface at level ``t`` of the
    original model is the one at ``t * factor`` of the scaled model, so a model whose best mesh threshold is ``t`` can
    be shipped for the default threshold 25 with ``factor = 25 / t`` (renders become correspondingly more opaque).
    """
    if model.config.renderer.density_activation != "exp":
        raise ValueError("scale_density needs the 'exp' density activation")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be positive and finite, got {factor}")
    with torch.no_grad():
        model.decoder.layers[-1].bias[0] += math.log(factor)
    return model


def export_weights(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    config_name: str = "config.yaml",
) -> Path:
    """Write ``model.safetensors`` (weights cast to ``dtype``) and the model's yaml config into ``out_dir``.

    The pair loads with :func:`monorecon.models.triposr.load_triposr` (``config_name`` beside the weights).
    Returns the weights path.
    """
    model = unwrap_model(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / "model.safetensors"
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the usual permissions of a written file
    os.replace(tmp, weights)
    with atomic_write(out_dir / config_name, "w") as f:
        yaml.safe_dump(model.config.to_dict(), f, sort_keys=False)
    return weights


def train(config: str | os.PathLike | dict[str, Any] | TripoSRTrainConfig, *, quiet: bool | None = None) -> Path:
    """Train (or resume training) a TripoSR-architecture model; return the run folder.

    Args:
        config: YAML path, mapping or :class:`TripoSRTrainConfig`.
        quiet: override ``config.quiet`` (no progress bar).

    Raises:
        ValueError: invalid config or dataset, a checkpoint the config cannot resume (written with other settings
            than :data:`RESUME_FREE` and :data:`RESUME_WARNED` allow, a step past ``steps``, another model), or a run
            folder that another run holds.
        TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept; the message names it).
    """
    run_started = time.monotonic()
    cfg = load_train_config(config)
    if quiet is not None:
        cfg.quiet = quiet
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    rank, world_size = init_distributed(cuda=cfg.use_cuda)
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.use_cuda else torch.device("cpu")
    main = is_main_process()
    if cfg.precision == "bfloat16" and main:
        warn_if_slow_bfloat16(device, "training")
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file, not a folder")
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=cfg.keep_checkpoints)
    if cfg.resume:
        with warnings.catch_warnings():
            if not main:  # every rank refuses a resume, one warns
                warnings.simplefilter("ignore")
            check_checkpoint_settings(checkpointer, _run_settings(cfg, world_size), out_dir / "config.yaml",
                                      free=RESUME_FREE, warned=RESUME_WARNED)  # fmt: skip
    else:
        checkpointer.check_fresh()
    # Rank 0 holds the folder for the whole run, from before the slow loading of the views: a second run is refused
    # at once. Under torchrun the other ranks write nothing into it.
    with hold_run_folder(out_dir) if main else contextlib.nullcontext():
        _train_in_folder(cfg, checkpointer, rank, world_size, device, run_started)
    return out_dir


def _train_in_folder(
    cfg: TripoSRTrainConfig,
    checkpointer: Checkpointer,
    rank: int,
    world_size: int,
    device: torch.device,
    run_started: float,
) -> None:
    """The body of :func:`train` once the run folder is held (by rank 0): load, restore, loop, export."""
    main = is_main_process()
    out_dir = Path(cfg.out_dir)
    bank = _load_views(cfg, show_progress=main and not cfg.quiet)  # before anything is written: data errors
    if main:
        for folder in (out_dir, out_dir / "checkpoints"):  # what a killed run was writing
            remove_stale_temporaries(folder)

    seed_everything(cfg.seed)
    model = _build_model(cfg.model)
    if cfg.init_weights is not None:
        state = read_state_dict(cfg.init_weights)
        check_state_dict(state, {key: value.shape for key, value in model.state_dict().items()}, cfg.init_weights)
        model.load_state_dict(state)
    model.to(device).train()
    step_module = _TrainStep(model, cfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    scheduler = cosine_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio)

    settings = _run_settings(cfg, world_size)  # saved in every checkpoint, for the next resume's check
    start_step, elapsed_before = 0, 0.0
    restored = checkpointer.load_latest(model, optimizer, scheduler) if cfg.resume else None
    if restored is not None:
        start_step = restored["step"]
        elapsed_before = float(restored["extra"].get("elapsed_s", 0.0))  # checkpoints before it was saved: 0
    logger = CSVLogger(out_dir / "train_log.csv") if main else None
    if main:  # only now that the run starts: a refused resume leaves the run's config as it was
        with atomic_write(out_dir / "config.yaml", "w") as f:
            yaml.safe_dump(dataclass_to_dict(cfg), f, sort_keys=False)
        logger.truncate_after(start_step)  # rows after the restored step (or of a run stopped before its checkpoint)
    barrier()
    ddp_module = wrap_ddp(step_module, find_unused_parameters=True, cuda=cfg.use_cuda)

    last_save = time.monotonic()
    started = time.monotonic()
    stopped_at = None  # the step a spent max_minutes stopped the run after
    progress = tqdm(
        total=cfg.steps, initial=start_step, desc="train", disable=not main or cfg.quiet, dynamic_ncols=True
    )
    for step in range(start_step, cfg.steps):
        done = step + 1  # steps are counted from 1 in messages, logs and checkpoint names: `done` after this one
        generator = step_generator(cfg.seed, step, rank)
        batch = {key: value.to(device, non_blocking=True) for key, value in _make_batch(bank, cfg, generator).items()}
        with diverges_on_non_finite(done, checkpointer):
            terms = ddp_module(batch, generator)
        check_finite_loss(terms["loss"], done, checkpointer)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        check_finite_loss(grad_norm, done, checkpointer)
        lr = optimizer.param_groups[0]["lr"]  # this update's rate (logged; the scheduler moves on below)
        optimizer.step()
        check_finite_parameters(trainable, done, checkpointer)
        scheduler.step()
        progress.update(1)
        progress.set_postfix(loss=f"{terms['loss'].item():.4f}")
        out_of_time = cfg.max_minutes is not None and _rank0_decides(
            (time.monotonic() - run_started) / 60.0 >= cfg.max_minutes, device
        )
        if logger is not None and (done % cfg.log_every == 0 or done == cfg.steps or out_of_time):
            row = {"step": done, **{k: float(v.detach()) for k, v in terms.items()}}
            row.update(grad_norm=float(grad_norm), lr=lr)
            row["elapsed_s"] = elapsed_before + time.monotonic() - started  # over all the run's sessions
            logger.log(row)
        if out_of_time or _should_checkpoint(done, cfg, last_save, device):
            if main:
                extra = {"config": settings, "elapsed_s": elapsed_before + time.monotonic() - started}
                checkpointer.save(done, model, optimizer, scheduler, extra=extra)
                if logger is not None and logger.fields is not None:
                    plot_curves(logger.path, out_dir / "curves.png", columns=_curve_columns(logger))
            last_save = time.monotonic()
            barrier()
        if out_of_time:
            stopped_at = done
            break
    progress.close()  # before the warning below, which would otherwise be printed on the bar's line
    if main and stopped_at is not None and stopped_at < cfg.steps:
        message = f"max_minutes ({cfg.max_minutes:g}) spent after step {stopped_at} of {cfg.steps}: stopped"
        warnings.warn(f"{message}; run the same config again to resume", stacklevel=3)
    if main:
        export_weights(model, out_dir / "final", config_name="config.yaml")
        if logger is not None and logger.fields is not None:
            plot_curves(logger.path, out_dir / "curves.png", columns=_curve_columns(logger))
    barrier()


def _run_settings(cfg: TripoSRTrainConfig, world_size: int) -> dict[str, Any]:
    """The settings a checkpoint is written with and a resume is checked against: the config and the number of
    processes (whose samples the run draws)."""
    return {**dataclass_to_dict(cfg), "world_size": world_size}


def _curve_columns(logger: CSVLogger) -> list[str]:
    return [c for c in logger.fields if c not in ("step", "elapsed_s")]


def _rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of a clock-based decision, on every rank (clocks differ between processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([float(flag)], device=device)  # nccl broadcasts only CUDA tensors
        torch.distributed.broadcast(tensor, src=0)
        flag = bool(tensor.item())
    return flag


def _should_checkpoint(done: int, cfg: TripoSRTrainConfig, last_save: float, device: torch.device) -> bool:
    """Same decision on every rank: step-based, or time-based as decided by rank 0."""
    due = done % cfg.checkpoint_every_steps == 0
    timed = _rank0_decides((time.monotonic() - last_save) / 60.0 >= cfg.checkpoint_every_minutes, device)
    return due or timed or done == cfg.steps


def main(argv: list[str] | None = None) -> int:
    """``python -m monorecon.train.triposr_trainer CONFIG.yaml [--quiet]`` (also under ``torchrun``).

    The same command as ``monorecon train``, with its exit codes and one-line errors.
    """
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
