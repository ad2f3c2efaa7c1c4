"""G3DR generator: an RGB-D image -> triplanes -> radiance field rendered from any camera (Reddy et al., CVPR 2024).

Frame and camera (monorecon world: +Y up, +Z towards the input viewer). The input image is the view of a *canonical
camera* at ``(0, 0, camera_distance)`` (5) looking at the origin with a vertical fov of ``fov_deg`` (18 deg); the scene
lives in the box ``[-box_radius, box_radius]^3`` (1), so pseudo depths (Euclidean distance along each pixel's ray)
lie in about ``[4, 6]``. Novel views are cameras on the same sphere (:func:`view_c2w`).

Triplane lookup: a world point ``(x, y, z)`` reads the planes at ``(p0, p1, p2) = (x, -y, z) / box_radius`` (see
:mod:`monorecon.core.triplane`): plane 0 (x, -y) is aligned with the input image (column = x, row = image row), so
the U-Net's output grid and the front plane share their layout; planes 1 (x, z) and 2 (-y, z) are seen edge-on.
With ``multires`` the features are G3DR's sum over the levels R, R/2, R/4 of the mean over the three planes
(:func:`~monorecon.core.triplane.sample_triplane_pyramid`); without it only level R is read.

Network: [rgb * 2 - 1, depth - distance, learned positional map] (4 + P channels) -> :class:`UNet` -> 3 C channels
at the image size, resized (bilinear) to R x R when R differs -> (3, C, R, R) planes -> G3DR decoder
(:meth:`TriplaneDecoder.g3dr`: C -> 64 softplus -> 4, density ``softplus(raw - 1)``, colour ``sigmoid * 1.002 -
0.001``). The official code feeds the raw depth in [4, 6] and has a 128-px, 4-level U-Net with 64-channel planes;
ours is scaled down to train on a CPU (sizes in :class:`G3DRModelConfig`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.checks import check_tensor
from monorecon.core.fields import TriplaneDecoder
from monorecon.core.triplane import sample_triplane_pyramid, triplane_pyramid
from monorecon.core.volume import VolumeRenderConfig, VolumeRenderer

from .unet import UNet

__all__ = ["G3DRGenerator", "G3DRModelConfig", "ray_length_factor", "view_c2w"]


@dataclass
class G3DRModelConfig:
    """Sizes of the generator and its renderer (defaults: CPU-sized; the paper's values in brackets).

    Attributes:
        image_size: input RGB-D side in pixels [128].
        plane_channels: C, channels per plane [64].
        plane_resolution: R, plane side [128]; the U-Net output is resized to it if it differs from image_size.
        positional_channels: P, channels of the learned positional map concatenated to the input.
        base_channels, channel_mults, n_res_blocks: U-Net sizes [128, (1, 2, 4, 8)].
        multires: G3DR's multi-resolution sampling (levels R, R/2, R/4) instead of level R only.
        n_levels: pyramid levels when ``multires``.
        decoder_hidden: width of the decoder's hidden layer [64].
        box_radius: the scene box ``[-r, r]^3``.
        camera_distance, fov_deg: canonical camera [5, 18 deg].
        n_samples, n_importance: coarse (stratified) and fine samples per ray [48 + 48 in EG3D-style configs].
        depth_window_probability: chance that the fine samples are ``D + linspace(-w, w, n_importance)`` on views
            rendered with a pseudo depth (canonical views) [0.4]; ``depth_window_half_width`` w [0.05].
        background: colour behind the volume (our synthetic images are composited on white).
        mesh_threshold: density iso level of extracted meshes (per world unit). The trained densities' scale varies
            between runs, so ``train_g3dr`` calibrates it on training views that have ground-truth meshes
            (:func:`monorecon.models.g3dr.evaluate.calibrate_mesh_threshold`); 10 otherwise.
    """

    image_size: int = 64
    plane_channels: int = 16
    plane_resolution: int = 64
    positional_channels: int = 4
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    n_res_blocks: int = 1
    multires: bool = True
    n_levels: int = 3
    decoder_hidden: int = 64
    box_radius: float = 1.0
    camera_distance: float = 5.0
    fov_deg: float = 18.0
    n_samples: int = 32
    n_importance: int = 32
    depth_window_probability: float = 0.4
    depth_window_half_width: float = 0.05
    background: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))
    mesh_threshold: float = 10.0

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.background = tuple(float(v) for v in self.background)
        for name in ("image_size", "plane_channels", "plane_resolution", "n_levels", "decoder_hidden"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.positional_channels < 0:
            raise ValueError(f"positional_channels must be >= 0, got {self.positional_channels}")
        levels = self.n_levels if self.multires else 1
        if self.plane_resolution % 2 ** (levels - 1):
            raise ValueError(f"plane_resolution {self.plane_resolution} cannot be halved {levels - 1} times")
        if not 0 < self.box_radius < self.camera_distance:
            raise ValueError(f"need 0 < box_radius < camera_distance, got {self.box_radius}, {self.camera_distance}")
        if not self.mesh_threshold > 0:
            raise ValueError(f"mesh_threshold must be > 0, got {self.mesh_threshold}")
        if not 0 < self.fov_deg < 180:
            raise ValueError(f"fov_deg must lie in (0, 180), got {self.fov_deg}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def view_c2w(yaw_deg: torch.Tensor | float, pitch_deg: torch.Tensor | float, distance: float = 5.0) -> torch.Tensor:
    """(B, 4, 4) c2w of cameras on the sphere of radius ``distance`` looking at the origin.

    Yaw 0, pitch 0 is the canonical camera on +Z; positive yaw moves the camera towards +X, positive pitch up.
    """
    return orbit_c2w(yaw_deg, pitch_deg, distance)


def ray_length_factor(size: int, fov_deg: float) -> torch.Tensor:
    """(size, size) length of each pixel's unit-depth ray direction: Euclidean distance = z-depth * factor."""
    cameras = PerspectiveCameras(view_c2w(0.0, 0.0), size, size, fov_y_deg=fov_deg)
    return cameras.get_rays(normalize=False)[1][0].norm(dim=-1)


class G3DRGenerator(nn.Module):
    """RGB-D image -> triplanes -> volume-rendered views (module docstring for frames and sizes)."""

    def __init__(self, config: G3DRModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else G3DRModelConfig()
        size = cfg.image_size
        self.positional_map = nn.Parameter(0.1 * torch.randn(1, cfg.positional_channels, size, size))
        self.unet = UNet(
            4 + cfg.positional_channels, 3 * cfg.plane_channels, cfg.base_channels, cfg.channel_mults,
            cfg.n_res_blocks,
        )  # fmt: skip
        # G3DR's decoder (TriplaneDecoder.g3dr) with a configurable hidden width.
        self.decoder = TriplaneDecoder(
            cfg.plane_channels, cfg.decoder_hidden, 1, activation="softplus", density_activation="softplus",
            density_bias=-1.0, color_activation="sigmoid_wide", weight_init=None,
        )  # fmt: skip
        render_settings = dict(
            n_samples=cfg.n_samples, n_importance=cfg.n_importance, box_radius=cfg.box_radius,
            background=cfg.background, depth_window_half_width=cfg.depth_window_half_width, chunk_size=8192,
        )  # fmt: skip
        self.train_renderer = VolumeRenderer(
            VolumeRenderConfig.g3dr(**render_settings, depth_window_probability=cfg.depth_window_probability)
        )
        # Evaluation: bin midpoints and quantile fine samples, so a render is deterministic.
        self.eval_renderer = VolumeRenderer(
            VolumeRenderConfig.g3dr(
                **render_settings, stratified=False, deterministic_importance=True, depth_window_probability=0.0
            )
        )

    # -- encoding --------------------------------------------------------------------------------------------------
    def encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Triplanes of an RGB-D batch.

        Args:
            rgb: (B, 3, S, S) in [0, 1], S = ``config.image_size``.
            depth: (B, 1, S, S) or (B, S, S) pseudo depth (Euclidean distance from the canonical camera, ~[4, 6]).

        Returns:
            (B, 3, C, R, R) planes.
        """
        cfg = self.config
        size = cfg.image_size
        check_tensor(rgb, "rgb", (None, 3, size, size), floating=True)
        if depth.dim() == 3:
            depth = depth[:, None]
        check_tensor(depth, "depth", (rgb.shape[0], 1, size, size), floating=True)
        inputs = [rgb * 2.0 - 1.0, depth - cfg.camera_distance]
        if cfg.positional_channels:
            inputs.append(self.positional_map.expand(rgb.shape[0], -1, -1, -1))
        out = self.unet(torch.cat(inputs, dim=1))
        if cfg.plane_resolution != size:
            out = F.interpolate(out, size=(cfg.plane_resolution,) * 2, mode="bilinear", align_corners=False)
        return out.view(rgb.shape[0], 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)

    def pyramid(self, planes: torch.Tensor) -> list[torch.Tensor]:
        """Levels read by the field: [R, R/2, R/4] with ``multires``, else [R]."""
        return triplane_pyramid(planes, self.config.n_levels) if self.config.multires else [planes]

    # -- field -----------------------------------------------------------------------------------------------------
    def plane_coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """(…, 3) world points -> (…, 3) triplane coordinates ``(x, -y, z) / box_radius``."""
        flip = points.new_tensor([1.0, -1.0, 1.0]) / self.config.box_radius
        return points * flip

    def query(self, pyramid: list[torch.Tensor], points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Field values of one object.

        Args:
            pyramid: levels (1, 3, C, R_l, R_l) of a single object (from :meth:`pyramid`).
            points: (N, 3) world points.

        Returns:
            dict(density (N, 1), rgb (N, 3)).
        """
        features = sample_triplane_pyramid(pyramid, self.plane_coordinates(points)[None])[0]
        return self.decoder(features)

    def field_fn(self, pyramid: list[torch.Tensor]):
        """``points (N, 3) -> (density (N, 1), rgb (N, 3))`` of one object, for :class:`VolumeRenderer`."""

        def field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.query(pyramid, points)
            return out["density"], out["rgb"]

        return field

    def density_fn(self, planes: torch.Tensor):
        """``points (N, 3) -> (N,)`` density of one object's planes (1, 3, C, R, R), e.g. for mesh extraction."""
        pyramid = self.pyramid(planes)

        def density(points: torch.Tensor) -> torch.Tensor:
            return self.query(pyramid, points.to(planes.dtype))["density"][:, 0]

        return density

    # -- rendering -------------------------------------------------------------------------------------------------
    def cameras(self, c2w: torch.Tensor, size: int) -> PerspectiveCameras:
        """Cameras with the canonical fov for (B, 4, 4) poses and a square image of ``size`` pixels."""
        return PerspectiveCameras(c2w, size, size, fov_y_deg=self.config.fov_deg)

    def render(
        self,
        planes: torch.Tensor,
        c2w: torch.Tensor,
        size: int,
        *,
        target_depth: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Volume-render views of each object.

        Args:
            planes: (B, 3, C, R, R) from :meth:`encode`.
            c2w: (B, 4, 4) camera poses (module convention), e.g. :func:`view_c2w`.
            size: output side in pixels (the fov is the canonical one).
            target_depth: (B, size, size) pseudo depth: turns on G3DR's depth regularisation (gradient scaling of
                every sample by ``k(t, D)`` and depth-window fine samples) on these rays. Canonical views only.
            target_mask: (B, size, size) bool: only these rays get the regularisation (the rest are rendered
                without a target depth); default all.
            generator: random source of the sample placement.
            deterministic: midpoint / quantile samples (default: ``not self.training``).

        Returns:
            dict(rgb (B, size, size, 3), depth (B, size, size) Euclidean ray distance, opacity (B, size, size)).
        """
        check_tensor(planes, "planes", (None, 3, None, None, None), floating=True)
        batch = planes.shape[0]
        check_tensor(c2w, "c2w", (batch, 4, 4), floating=True)
        if target_depth is not None:
            check_tensor(target_depth, "target_depth", (batch, size, size), floating=True)
            if target_mask is None:
                target_mask = torch.ones_like(target_depth, dtype=torch.bool)
            check_tensor(target_mask, "target_mask", (batch, size, size))
        deterministic = (not self.training) if deterministic is None else deterministic
        renderer = self.eval_renderer if deterministic else self.train_renderer
        origins, directions = self.cameras(c2w.to(planes.dtype), size).get_rays()
        outputs: dict[str, list[torch.Tensor]] = {"rgb": [], "depth": [], "opacity": []}
        for b in range(batch):
            field = self.field_fn(self.pyramid(planes[b : b + 1]))
            o, d = origins[b].reshape(-1, 3), directions[b].reshape(-1, 3)
            if target_depth is None:
                out = renderer.render(field, o, d, generator=generator)
            else:
                out = self._render_split(renderer, field, o, d, target_depth[b].reshape(-1),
                                         target_mask[b].reshape(-1), generator)  # fmt: skip
            outputs["rgb"].append(out["rgb"].view(size, size, 3))
            outputs["depth"].append(out["depth"].view(size, size))
            outputs["opacity"].append(out["opacity"].view(size, size))
        return {key: torch.stack(values) for key, values in outputs.items()}

    @staticmethod
    def _render_split(renderer, field, origins, directions, target_depth, mask, generator) -> dict[str, torch.Tensor]:
        """Render the masked rays with the depth regularisation and the others without; reassemble in ray order."""
        pieces = []
        for select, depth in ((mask, target_depth[mask]), (~mask, None)):
            if bool(select.any()):
                pieces.append((select, renderer.render(field, origins[select], directions[select], depth, generator)))
        result = {}
        for key, width in (("rgb", 3), ("depth", 1), ("opacity", 1)):
            full = origins.new_zeros(origins.shape[0], width)
            for select, out in pieces:
                full = full.index_put((select.nonzero().squeeze(1),), out[key])
            result[key] = full
        return result

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(rgb, depth)
