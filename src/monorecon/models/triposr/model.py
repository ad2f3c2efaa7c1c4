"""The TripoSR model: image -> scene code (triplane) -> radiance field -> renders and meshes.

Frames: :meth:`TripoSRModel.query`, :meth:`TripoSRModel.render` and :meth:`TripoSRModel.extract_mesh` work in the
monorecon world frame (+Y up, the input view looking from +Z, see :mod:`monorecon.core.cameras`). Inside, points are
turned into TripoSR's own frame (z up, input camera on +x) with :func:`~monorecon.core.cameras.world_to_triposr` and
divided by the renderer radius (0.87) to read the triplanes. The input view of TripoSR is our camera
``orbit_c2w(0, 0, 1.9)`` with a 40 degree vertical field of view (:func:`input_camera`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...core.cameras import Cameras, PerspectiveCameras, orbit_c2w, world_to_triposr
from ...core.checks import check_tensor
from ...core.fields import TriplaneDecoder
from ...core.mesh import Mesh
from ...core.triplane import sample_triplane
from ...core.volume import VolumeRenderConfig, VolumeRenderer
from .backbone import TriplaneTokenizer, TriplaneTransformer, TriplaneUpsampler
from .config import TripoSRConfig
from .image_encoder import DinoImageEncoder

__all__ = ["INPUT_DISTANCE", "INPUT_FOV_DEG", "TripoSRModel", "input_camera"]

#: The camera TripoSR assumes its input image was taken with: distance to the origin and vertical field of view.
INPUT_DISTANCE = 1.9
INPUT_FOV_DEG = 40.0

#: A per-point density weight, (N, 3) world points -> (N,) in [0, 1]: e.g. a `SilhouetteHull` (`core.carving`).
DensityWeight = Callable[[torch.Tensor], torch.Tensor]

# Points per decoder call in queries: the MLP's (N, 64) activations (4 MiB) stay in cache; 2.2x less CPU than
# 2^18 points per call (benchmarks/profile_reconstruct.py).
_QUERY_CHUNK = 1 << 14


def input_camera(
    size: int,
    distance: float = INPUT_DISTANCE,
    fov_deg: float = INPUT_FOV_DEG,
    device: str | torch.device | None = None,
) -> PerspectiveCameras:
    """The input camera of TripoSR (``orbit_c2w(0, 0, distance)``, looking at the origin) for a square image.

    ``device`` is where its matrices live (default the CPU), e.g. the model's, for carving on a GPU.
    """
    return PerspectiveCameras(orbit_c2w(0.0, 0.0, distance).to(device), size, size, fov_y_deg=fov_deg)


class TripoSRModel(nn.Module):
    """TripoSR (LRM-style single-image reconstruction) with the official checkpoint's module names.

    Attributes:
        config: the architecture.
        autocast_dtype: None (float32) or ``torch.bfloat16``: the image encoder and the backbone then run under
            autocast; the scene code, decoder and rendering stay float32.
    """

    def __init__(self, config: TripoSRConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else TripoSRConfig()
        if not isinstance(self.config, TripoSRConfig):
            raise ValueError(f"config must be a TripoSRConfig, got {type(self.config).__name__}")
        cfg = self.config
        self.image_tokenizer = DinoImageEncoder(cfg.image_encoder)
        self.tokenizer = TriplaneTokenizer(cfg.tokenizer)
        self.backbone = TriplaneTransformer(cfg.backbone)
        self.post_processor = TriplaneUpsampler(cfg.post_processor)
        self.decoder = TriplaneDecoder(
            cfg.decoder.in_channels, cfg.decoder.hidden_channels, cfg.decoder.n_hidden_layers,
            activation=cfg.decoder.activation, density_activation=cfg.renderer.density_activation,
            density_bias=cfg.renderer.density_bias, color_activation=cfg.renderer.color_activation,
        )  # fmt: skip
        self.autocast_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.tokenizer.embeddings.device

    @property
    def scene_code_shape(self) -> tuple[int, int, int, int]:
        """(3, C, H, W) of one scene code."""
        side = 2 * self.config.tokenizer.plane_size
        return (3, self.config.post_processor.out_channels, side, side)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ----------------------------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> scene codes.

        Args:
            images: (B, H, W, 3) float RGB in [0, 1], already composited on the background (see
                :mod:`monorecon.preprocess`); resized here to ``cond_image_size`` (bilinear, antialiased).

        Returns:
            (B, 3, C, H', W') float32 scene codes (triplanes in TripoSR's plane order xy, xz, yz of its frame).
        """
        images = check_tensor(images, "images", (None, None, None, 3), floating=True)
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        if bool((images < 0).any()) or bool((images > 1).any()):
            raise ValueError("images must hold values in [0, 1]")
        size = self.config.cond_image_size
        pixels = images.to(device=self.device, dtype=torch.float32).permute(0, 3, 1, 2)
        pixels = F.interpolate(pixels, (size, size), mode="bilinear", align_corners=False, antialias=True)
        with self._autocast():
            image_tokens = self.image_tokenizer(pixels)
            tokens = self.backbone(self.tokenizer(pixels.shape[0]), image_tokens)
        # float() also under a caller's autocast (mixed-precision training): the triplane lookup stays float32.
        return self.post_processor(self.tokenizer.detokenize(tokens.float())).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(images)

    # ----------------------------------------------------------------------------------------------------------------
    def _check_scene_code(self, scene_code: torch.Tensor) -> torch.Tensor:
        """(3, C, H, W) or (B, 3, C, H, W) -> (B, 3, C, H, W)."""
        scene_code = check_tensor(scene_code, "scene_code", floating=True)
        codes = scene_code[None] if scene_code.dim() == 4 else scene_code
        check_tensor(codes, "scene_code", (None, *self.scene_code_shape), finite=False)
        return codes

    def query(
        self,
        scene_code: torch.Tensor,
        points: torch.Tensor,
        chunk_size: int = _QUERY_CHUNK,
        carve: DensityWeight | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of the field at world points.

        Args:
            scene_code: (B, 3, C, H, W), or (3, C, H, W) for one scene.
            points: (B, N, 3) world points (monorecon frame), or (N, 3) with an unbatched scene code.
            chunk_size: points per decoder call.
            carve: optional weight multiplying the density (all scenes), e.g. the input view's
                :class:`~monorecon.core.carving.SilhouetteHull`.

        Returns:
            density (B, N, 1) >= 0 (per unit of TripoSR's normalised ray step), rgb (B, N, 3) in [0, 1]; without the
            batch axis for an unbatched scene code. Differentiable w.r.t. both inputs.
        """
        batched = isinstance(scene_code, torch.Tensor) and scene_code.dim() == 5
        codes = self._check_scene_code(scene_code)
        points = check_tensor(points, "points", (None, None, 3) if batched else (None, 3), floating=True)
        points = points if batched else points[None]
        if points.shape[0] != codes.shape[0]:
            raise ValueError(f"points batch {points.shape[0]} does not match scene_code batch {codes.shape[0]}")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")

        # Under a caller's autocast (mixed-precision training) the geometry and the triplane lookup stay float32:
        # only the decoder's layers may run in lower precision.
        def full_precision() -> torch.autocast:
            return torch.autocast(codes.device.type, enabled=False)

        with full_precision():
            lookup = world_to_triposr(points.to(codes)) / self.config.renderer.radius
        densities, colors = [], []
        for start in range(0, max(lookup.shape[1], 1), chunk_size):
            with full_precision():
                features = sample_triplane(
                    codes, lookup[:, start : start + chunk_size], self.config.renderer.feature_reduction
                )
            out = self.decoder(features)
            densities.append(out["density"])
            colors.append(out["rgb"])
        density, rgb = torch.cat(densities, dim=1), torch.cat(colors, dim=1)
        if carve is not None:
            weights = torch.stack([carve(batch_points) for batch_points in points])
            density = density * weights[..., None].to(density)
        return (density, rgb) if batched else (density[0], rgb[0])

    # ----------------------------------------------------------------------------------------------------------------
    def render(
        self,
        scene_code: torch.Tensor,
        cameras: Cameras,
        n_samples: int | None = None,
        chunk_size: int = 8192,
        carve: DensityWeight | None = None,
    ) -> dict[str, torch.Tensor]:
        """Volume-render scene codes with TripoSR's renderer (128 bin midpoints in the box, white background).

        Args:
            scene_code: (B, 3, C, H, W) or (3, C, H, W); one code is shared by all cameras, else one per camera.
            cameras: B monorecon cameras (world frame), e.g. ``PerspectiveCameras(orbit_c2w(0, 0, 1.9), H, W,
                fov_y_deg=40)`` for TripoSR's input view.
            n_samples: samples per ray (default: the config's 128).
            chunk_size: rays per chunk.
            carve: optional density weight (see :meth:`query`).

        Returns:
            dict(rgb (B, H, W, 3), depth (B, H, W, 1) (distance along the ray), opacity (B, H, W, 1)).
        """
        codes = self._check_scene_code(scene_code)
        if not isinstance(cameras, Cameras):
            raise ValueError(f"cameras must be monorecon Cameras, got {type(cameras).__name__}")
        n_cameras = cameras.batch_size
        if codes.shape[0] not in (1, n_cameras):
            raise ValueError(f"{codes.shape[0]} scene codes for {n_cameras} cameras (need 1 or one per camera)")
        renderer = VolumeRenderer(
            VolumeRenderConfig.triposr(
                n_samples=self.config.renderer.n_samples if n_samples is None else n_samples,
                box_radius=self.config.renderer.radius,
                chunk_size=chunk_size,
            )
        )
        origins, directions = cameras.get_rays(normalize=True)
        origins = origins.to(device=codes.device, dtype=codes.dtype)
        directions = directions.to(device=codes.device, dtype=codes.dtype)
        images = []
        for index in range(n_cameras):
            code = codes[index if codes.shape[0] > 1 else 0]

            def field(points: torch.Tensor, code: torch.Tensor = code) -> tuple[torch.Tensor, torch.Tensor]:
                return self.query(code, points, carve=carve)

            images.append(renderer.render(field, origins[index], directions[index]))
        return {key: torch.stack([image[key] for image in images]) for key in ("rgb", "depth", "opacity")}

    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_mesh(
        self,
        scene_code: torch.Tensor,
        resolution: int = 256,
        threshold: float | None = None,
        method: str = "dense",
        chunk_size: int = _QUERY_CHUNK,
        progress: bool = False,
        carve: DensityWeight | None = None,
    ) -> Mesh:
        """Marching cubes of the density over the box ``[-r, r]^3`` (r = 0.87) with vertex colours from the field.

        Args:
            scene_code: (1, 3, C, H, W) or (3, C, H, W): one scene.
            resolution: grid points per axis.
            threshold: density iso-level, density above it is inside; None: the config's ``renderer.mesh_threshold``
                (TripoSR's 25, the bundled model's 10).
            method: "dense" or "coarse_to_fine" (see :func:`monorecon.core.extract.extract_isosurface`).
            chunk_size: points per field query.
            progress: show a progress bar.
            carve: optional density weight (see :meth:`query`), e.g. the input silhouette's hull.

        Returns:
            Mesh in the monorecon world frame with vertex colours in [0, 1].

        Raises:
            ValueError: a batch of several codes, bad extraction settings, or no surface at this threshold.
        """
        from ...core.extract import extract_isosurface

        codes = self._check_scene_code(scene_code)
        if codes.shape[0] != 1:
            raise ValueError(f"extract_mesh takes one scene code, got a batch of {codes.shape[0]}")
        code = codes[0]

        def density_at(points: torch.Tensor) -> torch.Tensor:
            return self.query(code, points.to(code), chunk_size, carve)[0][:, 0]

        radius = self.config.renderer.radius
        threshold = self.config.renderer.mesh_threshold if threshold is None else threshold
        mesh = extract_isosurface(
            density_at, resolution, threshold, bounds=radius, method=method, chunk_size=chunk_size,
            device=code.device, progress=progress,
        )  # fmt: skip
        colors = self.query(code, mesh.verts.to(code), chunk_size)[1]
        return dataclasses.replace(mesh, vertex_colors=colors.clamp(0.0, 1.0).to(mesh.verts))
