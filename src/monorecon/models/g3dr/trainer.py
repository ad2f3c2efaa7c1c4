"""G3DR training: RGB-D single views -> triplanes, supervised by canonical and novel renders (official-code recipe).

Every step encodes a batch of RGB-D views and renders either the canonical view or, with probability
``min(0.4, 2 s / T)``, a novel view (:mod:`.schedule`). Losses (weights in :class:`G3DRLossConfig`):

* canonical: L1 rgb (1) + L1 depth (2, foreground) + opacity term; in the second half also the perceptual loss
  (weight ``perceptual / 2`` = 1, all layers) and the semantic loss (``semantic / 2``), as the official code;
  with ``depth_regularization`` the renderer scales each sample's gradients by ``k(t, D)`` and places the fine samples
  at ``D + linspace(-0.05, 0.05, 32)`` with probability 0.4 (importance sampling otherwise);
* novel: semantic embedding L1 (0.35) + deep-layer perceptual (2) + TV of the rendered depth (0.1) + opacity term;
* the opacity term's weight ramps 0 -> 1 over the first half.

Masked data (RGBA / synthetic views, a foreground mask known; the paper's ImageNet images have none): the depth L1
and the depth regularisation apply to foreground pixels only; the opacity term becomes ``mean |opacity - mask|``
(``1 - opacity`` on the foreground as the paper, plus emptiness on the background) on canonical views and
``mean |opacity - [opacity > 0.5]|`` (detached target: solid or empty) on novel views; the TV term is taken on the
depth composited over the far depth 6 (``opacity * depth + (1 - opacity) * 6``) so that silhouette edges do not
dominate it. Without a mask every pixel is foreground, as in the paper.

Other differences from the official code, for a CPU: Adam (betas 0.9, 0.99) with linear warm-up (2 %) and cosine
decay instead of OneCycleLR; gradient-norm clipping; renders at ``render_size`` (the official renders at the input
size 128); random horizontal flips of the inputs as the official data loader.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from monorecon.core.checks import check_int, check_non_negative
from monorecon.io.atomic import atomic_write, atomic_write_bytes
from monorecon.losses.perceptual import PerceptualLoss, check_perceptual_size
from monorecon.train.resume import check_checkpoint_settings
from monorecon.train.utils import (
    Checkpointer,
    CSVLogger,
    check_finite_loss,
    check_finite_parameters,
    cosine_with_warmup,
    dataclass_to_dict,
    diverges_on_non_finite,
    load_dataclass_config,
    plot_curves,
    seed_everything,
    step_generator,
)

from .data import FAR_DEPTH, RGBDViews, views_from_folder, views_from_synthetic
from .evaluate import calibrate_mesh_threshold
from .generator import G3DRGenerator, G3DRModelConfig, view_c2w
from .losses import DeepPerceptualLoss, SemanticEncoder, embedding_l1, masked_l1, tv_loss
from .schedule import canonical_extras_active, opacity_weight, sample_novel_angles, use_novel_view

__all__ = [
    "G3DRDataConfig",
    "G3DRLossConfig",
    "G3DRTrainConfig",
    "G3DRTrainer",
    "clip_gradients",
    "downsample_targets",
    "load_views",
    "save_g3dr_model",
    "train_g3dr",
]


def check_run_settings(config: Any, more_counts: tuple[str, ...] = ()) -> None:
    """The optimisation settings of a training config (:class:`G3DRTrainConfig`, the RGB-D diffusion's): positive
    ``steps``, ``checkpoint_every``, ``log_every`` (and ``more_counts``), ``batch_size``, ``lr`` in (0, 1],
    ``grad_clip`` >= 0 (0: none), a known ``data.source``; checked before any work (``ValueError`` naming the key)."""
    for name in ("steps", "checkpoint_every", "log_every", *more_counts):
        value = getattr(config, name)
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_int(config.batch_size, "batch_size", 1, 4096)
    if not 0 < config.lr <= 1:  # Adam moves each weight by about lr per step: above 1 a run diverges at once
        raise ValueError(f"lr must lie in (0, 1], got {config.lr}")
    if not (config.grad_clip >= 0 and not math.isnan(config.grad_clip)):
        raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {config.grad_clip}")
    if config.data.source not in ("synthetic", "folder"):
        raise ValueError(f"data.source must be 'synthetic' or 'folder', got {config.data.source!r}")


def clip_gradients(parameters: Any, max_norm: float) -> None:
    """Clip the gradients' total norm to ``max_norm``; 0 means no clipping (``clip_grad_norm_`` would scale every
    gradient to 0, and no weight would ever move)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


#: Settings a resumed run (G3DR or its RGB-D diffusion) may change silently: bookkeeping, and the learning rate (the
#: way on after a divergence; :class:`Checkpointer` warns that it changed).
RESUME_FREE = ("out_dir", "quiet", "threads", "resume", "log_every", "checkpoint_every", "keep_checkpoints",
               "calibrate_views", "lr")  # fmt: skip
#: Settings a resumed run may change with a warning naming the consequence.
RESUME_WARNED = {
    "steps": "the schedules (learning rate; G3DR's views and loss weights) are re-timed to the new length",
    "grad_clip": "it applies from the next step on",
}


@dataclass
class G3DRDataConfig:
    """Training views.

    Attributes:
        source: "synthetic" (a ``synthesize_dataset`` folder) or "folder" (``NAME.png`` + ``NAME_depth.png`` pairs).
        root: the folder.
        split: split of a synthetic set.
        views_per_object: synthetic: the first k views of each object, each used as a single view.
        max_objects: synthetic: at most this many objects.
        classes: synthetic: only these classes (all when empty).
        random_flip: flip inputs horizontally with probability 0.5 (official loader).
    """

    source: str = "synthetic"
    root: str = ""
    split: str = "train"
    views_per_object: int = 1
    max_objects: int | None = None
    classes: list[str] = field(default_factory=list)
    random_flip: bool = True


@dataclass
class G3DRLossConfig:
    """Loss weights (official values)."""

    rgb: float = 1.0
    depth: float = 2.0
    perceptual: float = 2.0
    semantic: float = 0.35
    tv: float = 0.1
    opacity: float = 1.0


@dataclass
class G3DRTrainConfig:
    """Everything ``train_g3dr`` needs (YAML: the same keys, nested sections ``model``, ``data``, ``loss``).

    Attributes:
        out_dir: run folder (checkpoints/, train_log.csv, curves.png, model.safetensors, config.yaml).
        steps, batch_size, lr, warmup_fraction, grad_clip: optimisation.
        render_size: side of the rendered training views (targets are area-downsampled to it).
        depth_regularization: G3DR's depth-guided gradient scaling and depth-window samples on canonical views
            (ablation switch; the depth L1 loss stays). The other ablation switch is ``model.multires``.
        clip_path, vgg_path, lpips_path: optional local weights (CLIP ViT-B/16 folder, torchvision VGG16 and LPIPS
            files); the documented substitutes are used without them.
        checkpoint_every, log_every, keep_checkpoints, resume: bookkeeping (resume from the newest checkpoint).
        calibrate_views: after training, set ``model.mesh_threshold`` by
            :func:`~monorecon.models.g3dr.evaluate.calibrate_mesh_threshold` on this many training views when they
            have ground-truth meshes (synthetic data; 0: keep the configured level).
        threads: torch intra-op threads (None: leave as is).
    """

    out_dir: str = "runs/g3dr"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    warmup_fraction: float = 0.02
    grad_clip: float = 1.0
    render_size: int = 32
    depth_regularization: bool = True
    model: G3DRModelConfig = field(default_factory=G3DRModelConfig)
    data: G3DRDataConfig = field(default_factory=G3DRDataConfig)
    loss: G3DRLossConfig = field(default_factory=G3DRLossConfig)
    clip_path: str | None = None
    vgg_path: str | None = None
    lpips_path: str | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    resume: bool = True
    quiet: bool = False
    calibrate_views: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.calibrate_views, bool)
            or int(self.calibrate_views) != self.calibrate_views
            or self.calibrate_views < 0
        ):
            raise ValueError(f"calibrate_views must be a non-negative integer, got {self.calibrate_views!r}")
        check_run_settings(self, ("keep_checkpoints",))
        check_int(self.render_size, "render_size", 1, 1024)
        for name, weight in dataclasses.asdict(self.loss).items():
            check_non_negative(weight, f"loss.{name}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.loss.perceptual > 0:  # checked now, not at the first canonical step of the run's second half
            check_perceptual_size(self.render_size, self.vgg_path is not None, "render_size", "vgg_path")


def load_views(config: G3DRTrainConfig) -> RGBDViews:
    """The training views described by ``config.data`` at ``config.model.image_size``."""
    data = config.data
    if not data.root:
        raise ValueError("data.root is empty: give the training data folder")
    if data.source == "folder":
        return views_from_folder(data.root, config.model.image_size)
    return views_from_synthetic(
        data.root, data.split, image_size=config.model.image_size, views_per_object=data.views_per_object,
        max_objects=data.max_objects, classes=data.classes or None,
        distance=config.model.camera_distance, fov_deg=config.model.fov_deg,
    )  # fmt: skip


def downsample_targets(
    rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Area-downsample (B, 3, S, S) rgb, (B, S, S) depth and bool mask to ``size``; depth is averaged over the
    foreground (far depth where none), the mask keeps pixels that are more than half foreground."""
    if rgb.shape[-1] == size:
        return rgb, depth, mask
    weight = F.interpolate(mask[:, None].to(rgb.dtype), size=(size, size), mode="area")[:, 0]
    summed = F.interpolate((depth * mask)[:, None], size=(size, size), mode="area")[:, 0]
    depth_small = torch.where(weight > 1e-6, summed / weight.clamp_min(1e-6), torch.full_like(weight, FAR_DEPTH))
    return F.interpolate(rgb, size=(size, size), mode="area"), depth_small, weight > 0.5


class G3DRTrainer:
    """One G3DR training run (see the module docstring); :meth:`train_step` is exposed for tests."""

    def __init__(self, config: G3DRTrainConfig, views: RGBDViews) -> None:
        self.config, self.views = config, views
        if views.image_size != config.model.image_size:
            raise ValueError(f"views are {views.image_size} px, the model expects {config.model.image_size}")
        self.model = G3DRGenerator(config.model)
        self.masked = views.mask is not None
        self.perceptual = PerceptualLoss(config.vgg_path, config.lpips_path)
        self.deep_perceptual = DeepPerceptualLoss(config.vgg_path, config.lpips_path)
        self.semantic = SemanticEncoder(config.clip_path)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.99))
        warmup = int(config.warmup_fraction * config.steps)
        self.scheduler = cosine_with_warmup(self.optimizer, warmup, config.steps)

    def batch(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random views (with random flips) for ``step``."""
        index = torch.randint(len(self.views), (self.config.batch_size,), generator=generator)
        items = [self.views[int(i)] for i in index]
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        if self.config.data.random_flip:
            flip = torch.rand(self.config.batch_size, generator=generator) < 0.5
            batch["rgb"] = torch.where(flip[:, None, None, None], batch["rgb"].flip(-1), batch["rgb"])
            for key in ("depth", "mask"):
                batch[key] = torch.where(flip[:, None, None], batch[key].flip(-1), batch[key])
        return batch

    def losses(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one step and its parts (floats, 0 for inactive terms)."""
        cfg, w = self.config, self.config.loss
        total_steps = cfg.steps
        batch = self.batch(step, generator)
        rgb, depth, mask = batch["rgb"], batch["depth"], batch["mask"]
        planes = self.model.encode(rgb, depth)
        target_rgb, target_depth, target_mask = downsample_targets(rgb, depth, mask, cfg.render_size)
        novel = use_novel_view(step, total_steps, generator)
        parts = dict.fromkeys(("rgb", "depth", "perceptual", "semantic", "tv", "opacity"), torch.zeros(()))
        b = rgb.shape[0]
        if not novel:
            c2w = view_c2w(torch.zeros(b), torch.zeros(b), cfg.model.camera_distance)
            out = self.model.render(
                planes, c2w, cfg.render_size, generator=generator,
                target_depth=target_depth if cfg.depth_regularization else None,
                target_mask=target_mask if (cfg.depth_regularization and self.masked) else None,
            )  # fmt: skip
            pred = out["rgb"].permute(0, 3, 1, 2)
            parts["rgb"] = w.rgb * masked_l1(pred, target_rgb)
            parts["depth"] = w.depth * masked_l1(out["depth"], target_depth, target_mask if self.masked else None)
            if canonical_extras_active(step, total_steps):
                if w.perceptual > 0:  # a zero weight skips the loss, and with it the loss's smallest image size
                    parts["perceptual"] = w.perceptual / 2 * self.perceptual(pred, target_rgb).mean()
                parts["semantic"] = w.semantic / 2 * embedding_l1(self.semantic(pred), self.semantic(target_rgb))
            opacity_target = target_mask.to(pred.dtype) if self.masked else torch.ones_like(out["opacity"])
        else:
            yaw, pitch = sample_novel_angles(b, step, total_steps, generator)
            out = self.model.render(planes, view_c2w(yaw, pitch, cfg.model.camera_distance), cfg.render_size,
                                    generator=generator)  # fmt: skip
            pred = out["rgb"].permute(0, 3, 1, 2)
            parts["semantic"] = w.semantic * embedding_l1(self.semantic(pred), self.semantic(target_rgb))
            parts["perceptual"] = w.perceptual * self.deep_perceptual(target_rgb, pred).mean()
            rendered_depth = out["depth"]
            if self.masked:
                rendered_depth = out["opacity"] * out["depth"] + (1 - out["opacity"]) * FAR_DEPTH
            parts["tv"] = w.tv * tv_loss(rendered_depth)
            opacity_target = (
                (out["opacity"].detach() > 0.5).to(pred.dtype) if self.masked else torch.ones_like(out["opacity"])
            )
        parts["opacity"] = w.opacity * opacity_weight(step, total_steps) * masked_l1(out["opacity"], opacity_target)
        total = sum(parts.values())
        logged = {key: float(value.detach()) for key, value in parts.items()}
        logged["novel"] = float(novel)
        return total, logged

    def train_step(self, step: int, checkpointer: Checkpointer | None = None) -> dict[str, float]:
        """One optimiser step (``step`` counts from 1); returns the logged values."""
        generator = step_generator(self.config.seed, step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with diverges_on_non_finite(step, checkpointer):
            total, logged = self.losses(step, generator)
        check_finite_loss(total, step, checkpointer)
        total.backward()
        clip_gradients(self.model.parameters(), self.config.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]  # this update's rate (logged; the scheduler moves on below)
        self.optimizer.step()
        check_finite_parameters(self.model.parameters(), step, checkpointer)
        self.scheduler.step()
        logged["loss"] = float(total.detach())
        logged["lr"] = lr
        return logged


def save_g3dr_model(model: G3DRGenerator, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (model section) into ``out_dir`` (atomic writes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save_safetensors(state))
    with atomic_write(out_dir / "config.yaml", "w") as f:
        yaml.safe_dump({"model": model.config.to_dict(), **(extra or {})}, f, sort_keys=False)
    return out_dir


def train_g3dr(config: G3DRTrainConfig | str | os.PathLike | dict, views: RGBDViews | None = None) -> Path:
    """Train G3DR as configured (YAML path, dict or :class:`G3DRTrainConfig`); return the run folder.

    The run folder gets ``checkpoints/`` (resumable: a second call continues from the newest), ``train_config.yaml``,
    ``train_log.csv``, ``curves.png``, and at the end ``model.safetensors`` + ``config.yaml`` (load with
    :func:`monorecon.models.g3dr.load_g3dr`). ``views`` overrides ``config.data`` (tests, benchmarks).

    A resumed run keeps the settings its checkpoints were written with (:data:`RESUME_FREE` may change; ``steps``,
    not below the checkpoint's step, and ``grad_clip`` with a warning); ``resume: false`` is refused where checkpoints
    are. Both are checked before anything is written.
    """
    if not isinstance(config, G3DRTrainConfig):
        config = load_dataclass_config(config, G3DRTrainConfig)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out_dir = Path(config.out_dir)
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=config.keep_checkpoints)
    settings = dataclass_to_dict(config)
    if config.resume:
        check_checkpoint_settings(checkpointer, settings, out_dir / "train_config.yaml", free=RESUME_FREE,
                                  warned=RESUME_WARNED)  # fmt: skip
    else:
        checkpointer.check_fresh()
    views = views if views is not None else load_views(config)
    trainer = G3DRTrainer(config, views)
    start = 0
    if config.resume:
        restored = checkpointer.load_latest(trainer.model, trainer.optimizer, trainer.scheduler)
        if restored is not None:
            start = restored["step"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "train_config.yaml", "w") as f:  # only now: a refused resume leaves the run's own
        yaml.safe_dump(settings, f, sort_keys=False)
    logger = CSVLogger(out_dir / "train_log.csv")
    logger.truncate_after(start)  # rows of steps after it (or of a run stopped before its first checkpoint)
    started = time.perf_counter()
    progress = tqdm(range(start + 1, config.steps + 1), initial=start, total=config.steps, disable=config.quiet,
                    desc="g3dr")  # fmt: skip
    for step in progress:
        logged = trainer.train_step(step, checkpointer)
        if step % config.log_every == 0 or step == config.steps:
            logger.log({"step": step, **logged, "seconds": time.perf_counter() - started})
            progress.set_postfix(loss=f"{logged['loss']:.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpointer.save(step, trainer.model, trainer.optimizer, trainer.scheduler, {"config": settings})
    if logger.path.is_file():
        plot_curves(logger.path, out_dir / "curves.png",
                    columns=["loss", "rgb", "depth", "perceptual", "semantic", "tv", "opacity"])  # fmt: skip
    extra = {"trained_steps": config.steps, "depth_regularization": config.depth_regularization}
    if config.calibrate_views and views.to_canonical is not None and all(views.mesh_paths):
        try:
            level, scores = calibrate_mesh_threshold(trainer.model, views, max_views=config.calibrate_views)
        except ValueError as err:  # e.g. a barely trained model with no surface near the ground truth
            warnings.warn(f"mesh threshold not calibrated ({err}); keeping {trainer.model.config.mesh_threshold}",
                          stacklevel=2)  # fmt: skip
        else:
            trainer.model.config.mesh_threshold = level
            extra["mesh_threshold_calibration"] = {"views": config.calibrate_views, "fscore@0.1": scores}
    save_g3dr_model(trainer.model, out_dir, extra)
    return out_dir
