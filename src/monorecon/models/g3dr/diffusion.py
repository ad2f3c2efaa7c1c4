"""A small class-conditional diffusion model over RGB-D images, whose samples the G3DR generator lifts to 3-D.

G3DR generates 3-D content by sampling an RGB-D image (the paper pairs an image generator with a depth estimator)
and lifting it with the generator. Here a compact DDPM (Ho et al. 2020) learns the joint 4-channel RGB-D
distribution of the synthetic classes directly:

* data ``x0`` (4, S, S) in [-1, 1]: ``rgb * 2 - 1`` and ``depth - 5`` (the pseudo depth range [4, 6] -> [-1, 1]);
* forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with a linear (beta 1e-4 -> 0.02) or cosine
  (Nichol & Dhariwal 2021, offset 0.008, betas clipped at 0.999) schedule of ``T`` steps;
* the network (:class:`~.unet.UNet` with FiLM conditioning on a sinusoidal time embedding plus a class embedding)
  predicts ``eps``; loss ``mean (eps - eps_hat)^2`` (DDPM's simple loss); the class is dropped (replaced by a
  "null" class) with probability ``class_dropout`` so that classifier-free guidance can be used at sampling;
* sampling with DDIM (Song et al. 2021): ``x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - s^2) eps_hat + s z``,
  ``s = eta sqrt((1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t'))``, over ``n_steps`` evenly spaced steps,
  ``x0_hat`` clipped to [-1, 1]; ``eta = 0`` is deterministic.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm import tqdm

from monorecon.core.checks import check_tensor
from monorecon.io.atomic import atomic_write, atomic_write_bytes
from monorecon.io.weights import read_state_dict
from monorecon.io.yaml_config import load_yaml
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

from .data import NEAR_DEPTH, RGBDViews
from .generator import G3DRGenerator, G3DRModelConfig
from .trainer import (
    RESUME_FREE,
    RESUME_WARNED,
    G3DRDataConfig,
    G3DRTrainConfig,
    check_run_settings,
    clip_gradients,
    load_views,
)
from .unet import UNet

__all__ = [
    "DiffusionConfig",
    "DiffusionTrainConfig",
    "RGBDDiffusion",
    "ddim_sample",
    "diffusion_schedule",
    "load_rgbd_diffusion",
    "sample_to_folder",
    "train_rgbd_diffusion",
]


#: Default number of DDIM steps of :meth:`RGBDDiffusion.sample` (fewer when the model was trained with fewer
#: timesteps).
DEFAULT_SAMPLE_STEPS = 50


def diffusion_schedule(n_steps: int, kind: str = "cosine") -> torch.Tensor:
    """(n_steps,) float64 cumulative products ``abar_t = prod_{s <= t} (1 - beta_s)`` (module docstring)."""
    if int(n_steps) != n_steps or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps}")
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, n_steps, dtype=torch.float64)
    elif kind == "cosine":
        s = 0.008
        t = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")
    return torch.cumprod(1 - betas, dim=0)


@torch.no_grad()
def ddim_sample(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    alpha_bar: torch.Tensor,
    shape: tuple[int, ...],
    n_steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM sampling (module docstring).

    Args:
        eps_fn: ``(x_t (B, ...), t (B,) long) -> predicted noise`` (same shape as ``x_t``).
        alpha_bar: (T,) schedule from :func:`diffusion_schedule`.
        shape: output shape (B, ...).
        n_steps: number of denoising steps (<= T), at ``round(linspace(T - 1, 0, n_steps))``.
        eta: 0 deterministic (DDIM), 1 DDPM-like noise.
        x_T: starting noise (default drawn from ``generator``).

    Returns:
        x0 samples clipped to [-1, 1].
    """
    n_total = alpha_bar.shape[0]
    if int(n_steps) != n_steps or not 1 <= n_steps <= n_total:
        raise ValueError(f"n_steps must be an integer in [1, {n_total}], got {n_steps}")
    x = torch.randn(shape, generator=generator) if x_T is None else x_T.clone()
    steps = torch.linspace(n_total - 1, 0, n_steps).round().long().unique_consecutive()
    for k, t in enumerate(steps):
        abar = alpha_bar[t].to(x.dtype)
        abar_prev = alpha_bar[steps[k + 1]].to(x.dtype) if k + 1 < len(steps) else torch.ones((), dtype=x.dtype)
        eps = eps_fn(x, t.expand(shape[0]))
        x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()  # consistent with the clipped x0
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp_min(0).sqrt()
        x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and k + 1 < len(steps):
            x = x + sigma * torch.randn(shape, generator=generator)
    return x.clamp(-1, 1)


@dataclass
class DiffusionConfig:
    """Model sizes and schedule (CPU-sized)."""

    class_names: list[str] = field(default_factory=list)
    image_size: int = 32
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    n_res_blocks: int = 1
    embed_dim: int = 128
    timesteps: int = 1000
    schedule: str = "cosine"
    class_dropout: float = 0.1


class RGBDDiffusion(nn.Module):
    """Class-conditional DDPM over (4, S, S) RGB-D images (module docstring)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        if not config.class_names:
            raise ValueError("DiffusionConfig.class_names is empty")
        self.config = config
        self.class_names = list(config.class_names)
        self.unet = UNet(4, 4, config.base_channels, config.channel_mults, config.n_res_blocks, config.embed_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(config.embed_dim, config.embed_dim), nn.SiLU(), nn.Linear(config.embed_dim, config.embed_dim)
        )
        self.class_embedding = nn.Embedding(len(self.class_names) + 1, config.embed_dim)  # last = "no class"
        self.register_buffer("alpha_bar", diffusion_schedule(config.timesteps, config.schedule).float())

    # -- data mapping ----------------------------------------------------------------------------------------------
    @staticmethod
    def to_model_space(rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) rgb in [0, 1] and (B, S, S) depth in [4, 6] -> (B, 4, S, S) in [-1, 1]."""
        return torch.cat([rgb * 2 - 1, (depth - (NEAR_DEPTH + 1.0))[:, None]], dim=1).clamp(-1, 1)

    @staticmethod
    def from_model_space(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`to_model_space`: (rgb (B, 3, S, S), depth (B, S, S))."""
        return (x[:, :3] + 1) / 2, x[:, 3] + NEAR_DEPTH + 1.0

    def sampling_steps(self, n_steps: int | None) -> int:
        """The DDIM steps a sample takes: ``n_steps`` checked against the training timesteps, or by default
        ``min(DEFAULT_SAMPLE_STEPS, timesteps)`` (a model trained with 10 timesteps samples in 10)."""
        timesteps = self.config.timesteps
        if n_steps is None:
            return min(DEFAULT_SAMPLE_STEPS, timesteps)
        if isinstance(n_steps, bool) or int(n_steps) != n_steps or not 1 <= n_steps <= timesteps:
            raise ValueError(f"n_steps must lie in [1, {timesteps}] (the diffusion model's timesteps), got {n_steps}")
        return int(n_steps)

    def class_index(self, class_name: str) -> int:
        if class_name not in self.class_names:
            raise ValueError(f"unknown class {class_name!r}; this model knows {self.class_names}")
        return self.class_names.index(class_name)

    # -- network ---------------------------------------------------------------------------------------------------
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) steps -> (B, embed_dim) sinusoidal features (periods up to 10^4) through an MLP."""
        half = self.config.embed_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if emb.shape[1] < self.config.embed_dim:
            emb = F.pad(emb, (0, 1))
        return self.time_mlp(emb)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 4, S, S) noisy images, (B,) steps, (B,) class indices (``len(class_names)`` = no class) -> noise."""
        return self.unet(x_t, self.time_embedding(t) + self.class_embedding(labels))

    def loss(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM simple loss of a batch (B, 4, S, S) in [-1, 1] with (B,) class indices."""
        check_tensor(x0, "x0", (None, 4, None, None), floating=True)
        batch = x0.shape[0]
        t = torch.randint(self.config.timesteps, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        drop = torch.rand(batch, generator=generator) < self.config.class_dropout
        labels = torch.where(drop, torch.full_like(labels, len(self.class_names)), labels)
        abar = self.alpha_bar[t][:, None, None, None]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        return F.mse_loss(self.predict_noise(x_t, t, labels), noise)

    @torch.no_grad()
    def sample(
        self,
        class_name: str,
        n: int,
        *,
        n_steps: int | None = None,
        guidance_scale: float = 1.5,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` RGB-D samples of a class.

        Args:
            n_steps: DDIM steps (:meth:`sampling_steps`; None: ``min(50, timesteps)``).
            guidance_scale: classifier-free guidance ``eps = eps_null + w (eps_class - eps_null)`` (1: none).
            size: resize the samples (bilinear) to this side, e.g. the generator's input size.

        Returns:
            rgb (n, 3, S, S) in [0, 1], depth (n, S, S) in [4, 6].
        """
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        n_steps = self.sampling_steps(n_steps)
        label = torch.full((n,), self.class_index(class_name), dtype=torch.long)
        null = torch.full((n,), len(self.class_names), dtype=torch.long)
        self.eval()

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps_class = self.predict_noise(x, t, label)
            if guidance_scale == 1.0:
                return eps_class
            return self.predict_noise(x, t, null) + guidance_scale * (eps_class - self.predict_noise(x, t, null))

        s = self.config.image_size
        x0 = ddim_sample(eps_fn, self.alpha_bar, (n, 4, s, s), n_steps, eta, generator)
        if size is not None and size != s:
            x0 = F.interpolate(x0, size=(size, size), mode="bilinear", align_corners=False)
        return self.from_model_space(x0)


@dataclass
class DiffusionTrainConfig:
    """``train_rgbd_diffusion`` settings (YAML sections ``model`` and ``data`` as in G3DR's config)."""

    out_dir: str = "runs/g3dr_diffusion"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: G3DRDataConfig = field(default_factory=G3DRDataConfig)
    checkpoint_every: int = 500
    log_every: int = 20
    resume: bool = True
    quiet: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        check_run_settings(self)
        if isinstance(self.warmup_steps, bool) or int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")


def _model_dict(config: DiffusionConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def load_rgbd_diffusion(path: str | os.PathLike) -> RGBDDiffusion:
    """A trained model from its run folder (``model.safetensors`` + ``config.yaml``, or a file in it), in eval mode."""
    from .inference import model_folder

    path = model_folder(path)
    for name in ("model.safetensors", "config.yaml"):
        if not (path / name).is_file():
            raise ValueError(f"diffusion model folder {path} lacks {name}")
    settings = load_yaml(path / "config.yaml") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path / 'config.yaml'} is not a mapping of settings")
    model = RGBDDiffusion(load_dataclass_config(settings.get("model", {}), DiffusionConfig))
    try:
        model.load_state_dict(read_state_dict(path / "model.safetensors"))
    except RuntimeError as err:
        raise ValueError(f"{path} weights do not match its config: {err}") from None
    return model.eval()


def train_rgbd_diffusion(
    config: DiffusionTrainConfig | str | os.PathLike | dict, views: RGBDViews | None = None
) -> Path:
    """Train the RGB-D diffusion model on labelled views (``config.data`` or ``views``); return the run folder.

    Views are area-resized to ``model.image_size``; the classes are those of the views unless
    ``model.class_names`` lists them, so only class-labelled views work (``data.source: synthetic``). Checkpoints,
    resume (the same settings policy and checks before anything is written), CSV log and curves as ``train_g3dr``.
    """
    if not isinstance(config, DiffusionTrainConfig):
        config = load_dataclass_config(config, DiffusionTrainConfig)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out_dir = Path(config.out_dir)
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=2)
    if not config.resume:  # a fresh run's checkpoints would mix with (and be deleted in favour of) the earlier run's
        checkpointer.check_fresh()
    if views is None:
        views = load_views(G3DRTrainConfig(data=config.data, model=G3DRModelConfig(image_size=config.model.image_size)))
    if not config.model.class_names:
        config.model.class_names = sorted(set(views.class_names))
    if "" in config.model.class_names:
        raise ValueError(
            "training views need class names for a class-conditional model: use class-labelled data "
            "(data.source: synthetic); a folder of RGB-D pairs has none"
        )
    unknown = sorted(set(views.class_names) - set(config.model.class_names))
    if unknown:
        raise ValueError(f"views have classes {unknown} missing from model.class_names")
    size = config.model.image_size
    rgb = F.interpolate(views.rgb, size=(size, size), mode="area")
    depth = F.interpolate(views.depth[:, None], size=(size, size), mode="area")[:, 0]
    data = RGBDDiffusion.to_model_space(rgb, depth)
    labels = torch.tensor([config.model.class_names.index(c) for c in views.class_names])

    settings = dataclass_to_dict(config)  # with the class names: a resumed run's come from the same views
    if config.resume:
        check_checkpoint_settings(checkpointer, settings, out_dir / "train_config.yaml", free=RESUME_FREE,
                                  warned=RESUME_WARNED)  # fmt: skip
    model = RGBDDiffusion(config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = cosine_with_warmup(optimizer, min(config.warmup_steps, config.steps), config.steps)
    start = 0
    if config.resume and (restored := checkpointer.load_latest(model, optimizer, scheduler)) is not None:
        start = restored["step"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "train_config.yaml", "w") as f:  # after the resume is validated, as train_g3dr
        yaml.safe_dump(settings, f, sort_keys=False)
    logger = CSVLogger(out_dir / "train_log.csv")
    logger.truncate_after(start)  # rows of steps after it (or of a run stopped before its first checkpoint)
    started = time.perf_counter()
    for step in tqdm(range(start + 1, config.steps + 1), initial=start, total=config.steps, disable=config.quiet,
                     desc="rgbd diffusion"):  # fmt: skip
        generator = step_generator(config.seed, step)
        index = torch.randint(data.shape[0], (config.batch_size,), generator=generator)
        x0 = data[index]
        flip = torch.rand(config.batch_size, generator=generator) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with diverges_on_non_finite(step, checkpointer):
            loss = model.loss(x0, labels[index], generator)
        check_finite_loss(loss, step, checkpointer)
        loss.backward()
        clip_gradients(model.parameters(), config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]  # this update's rate (logged; the scheduler moves on below)
        optimizer.step()
        check_finite_parameters(model.parameters(), step, checkpointer)
        scheduler.step()
        if step % config.log_every == 0 or step == config.steps:
            logger.log({"step": step, "loss": float(loss.detach()), "lr": lr,
                        "seconds": time.perf_counter() - started})  # fmt: skip
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpointer.save(step, model, optimizer, scheduler, {"config": settings})
    if logger.path.is_file():
        plot_curves(logger.path, out_dir / "curves.png", columns=["loss"])
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save_safetensors(state))
    with atomic_write(out_dir / "config.yaml", "w") as f:
        yaml.safe_dump({"model": _model_dict(config.model), "trained_steps": config.steps}, f, sort_keys=False)
    return out_dir


def sample_to_folder(
    diffusion: RGBDDiffusion | str | os.PathLike,
    generator_model: G3DRGenerator | str | os.PathLike,
    class_name: str,
    n: int,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_steps: int | None = None,
    guidance_scale: float = 1.5,
    mesh_resolution: int = 96,
    threshold: float | None = None,
    n_frames: int = 24,
) -> list[Path]:
    """``monorecon g3dr sample --class NAME -n N -o OUT``: sample N RGB-D images of a class, lift each to 3-D.

    Writes per sample ``OUT/sample_XX.png`` + ``sample_XX_depth.png`` (the pair format of :mod:`.data`) and
    ``OUT/sample_XX/`` (``mesh.glb``, ``turntable.gif``, ``turntable.png``), plus ``OUT/samples.png`` (all sampled
    RGB images). ``n_steps`` DDIM steps (:meth:`RGBDDiffusion.sampling_steps`). Samples whose field has no surface at
    ``threshold`` (None: the generator's ``mesh_threshold``) get no mesh folder (a warning names them); the others
    are still written.

    Everything is checked (the models, the class name, ``n``, ``n_steps``) before ``OUT`` is created. An ``OUT``
    that holds an earlier sampling (``sample_*`` or ``samples.png``) is refused: its samples beyond ``n`` and its
    mesh folders of samples that now get none would stay beside the new ones.

    Returns:
        The per-sample folders of the samples that got a mesh (fewer than ``n`` when some got none).
    """
    import warnings

    from monorecon.io.atomic import check_output_folder
    from monorecon.io.images import save_image

    from .data import save_rgbd_pair
    from .inference import g3dr_reconstruct, image_grid, load_g3dr, save_reconstruction, turntable

    out_dir = check_output_folder(out_dir)
    earlier = sorted(p.name for p in out_dir.glob("sample*") if p.name.startswith("sample_") or p.name == "samples.png")
    if earlier:
        raise ValueError(f"{out_dir} holds the files of an earlier sampling (e.g. {earlier[0]}): give another output "
                         "folder, or empty it")  # fmt: skip
    if not isinstance(diffusion, RGBDDiffusion):
        diffusion = load_rgbd_diffusion(diffusion)
    if not isinstance(generator_model, G3DRGenerator):
        generator_model = load_g3dr(generator_model)
    rgb, depth = diffusion.sample(  # checks n, the class and n_steps: before OUT is made
        class_name, n, n_steps=n_steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
        size=generator_model.config.image_size,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for k in range(n):
        name = f"sample_{k:02d}"
        save_rgbd_pair(rgb[k].permute(1, 2, 0).numpy(), depth[k].numpy(), out_dir / name)
        try:
            mesh, scene = g3dr_reconstruct(generator_model, rgb[k], depth[k], resolution=mesh_resolution,
                                           threshold=threshold)  # fmt: skip
        except ValueError as err:
            warnings.warn(f"{name}: no mesh ({err})", stacklevel=2)
            continue
        folders.append(out_dir / name)
        save_reconstruction(mesh, turntable(scene, n_frames, 2 * generator_model.config.image_size), out_dir / name)
    save_image(image_grid(rgb.permute(0, 2, 3, 1).numpy(), columns=min(8, n)), out_dir / "samples.png")
    return folders
