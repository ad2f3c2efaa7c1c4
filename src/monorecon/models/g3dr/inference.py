"""Using a trained G3DR generator: load it, lift an RGB-D image to a mesh, render turntables, write the results.

Meshes are in the canonical frame of :mod:`.generator` (monorecon world: +Y up, the input camera on +Z at distance
5), extracted by marching cubes of the density over the scene box at ``threshold`` (default: the model's
``config.mesh_threshold``, calibrated after training), coloured by querying the field's colour at the vertices. By
default the surface the input image sees then takes the image's own colours, at the image's full resolution, and the
field's colours of the rest are mapped to the image's (:func:`monorecon.core.projection.project_image_colours`, as
``monorecon reconstruct`` does).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from monorecon.core.checks import check_tensor
from monorecon.core.extract import extract_isosurface
from monorecon.core.mesh import Mesh, check_placement
from monorecon.core.projection import project_image_colours
from monorecon.io.atomic import atomic_write_bytes, check_output_folder, check_writable
from monorecon.io.images import save_image
from monorecon.io.mesh_io import save_mesh
from monorecon.io.weights import read_state_dict
from monorecon.io.yaml_config import load_yaml
from monorecon.train.utils import load_dataclass_config

from .data import FAR_DEPTH, NEAR_DEPTH, load_rgbd_pair, resize_view
from .generator import G3DRGenerator, G3DRModelConfig, view_c2w

__all__ = [
    "G3DRScene",
    "g3dr_reconstruct",
    "image_grid",
    "load_g3dr",
    "model_folder_kind",
    "reconstruct_to_folder",
    "render_views",
    "save_reconstruction",
    "turntable",
]


@dataclass
class G3DRScene:
    """The 3-D representation of one input: its triplanes (1, 3, C, R, R) and the generator that decodes them."""

    planes: torch.Tensor
    model: G3DRGenerator

    def render(self, yaw_deg: float | torch.Tensor, pitch_deg: float | torch.Tensor, size: int) -> dict:
        """Views at the given yaw / pitch offsets (degrees, (N,) or scalars); see :func:`render_views`."""
        return render_views(self.model, self.planes, yaw_deg, pitch_deg, size)


def model_folder(path: str | os.PathLike) -> Path:
    """A trained model's run folder: ``path``, or the folder of a file in it (``RUN/model.safetensors`` given for
    ``RUN``)."""
    path = Path(path)
    return path.parent if path.is_file() else path


def model_folder_kind(path: str | os.PathLike) -> str | None:
    """Which trained model a run folder's ``config.yaml`` describes, from the keys of its ``model`` section:
    ``"g3dr"`` (a :class:`G3DRModelConfig`), ``"diffusion"`` (an RGB-D :class:`~.diffusion.DiffusionConfig`), or
    None when the file is missing or unreadable, or the keys fit both or neither (the loaders then say why)."""
    from dataclasses import fields

    from .diffusion import DiffusionConfig

    config_path = model_folder(path) / "config.yaml"
    try:
        settings = load_yaml(config_path) if config_path.is_file() else None
    except (ValueError, OSError):
        return None
    section = settings.get("model") if isinstance(settings, dict) else None
    if not isinstance(section, dict):
        return None
    keys = set(section)
    is_g3dr = keys <= {f.name for f in fields(G3DRModelConfig)}
    is_diffusion = keys <= {f.name for f in fields(DiffusionConfig)} and "class_names" in keys
    if is_g3dr == is_diffusion:
        return None
    return "g3dr" if is_g3dr else "diffusion"


def load_g3dr(path: str | os.PathLike) -> G3DRGenerator:
    """A generator from a run folder (``model.safetensors`` + ``config.yaml`` written by ``train_g3dr``, or a file in
    it: :func:`model_folder`), in eval mode.

    Raises:
        ValueError: missing files or weights that do not match the configuration.
    """
    path = model_folder(path)
    weights, config_path = path / "model.safetensors", path / "config.yaml"
    for file in (weights, config_path):
        if not file.is_file():
            raise ValueError(f"G3DR model folder {path} lacks {file.name}")
    settings = load_yaml(config_path) or {}
    if not isinstance(settings, dict) or not isinstance(settings.get("model"), dict):
        raise ValueError(f"{config_path} has no 'model' section")
    try:
        model = G3DRGenerator(load_dataclass_config(settings["model"], G3DRModelConfig))  # unknown keys named
    except ValueError as err:
        if model_folder_kind(path) == "diffusion":
            raise ValueError(f"{path} holds an RGB-D diffusion model, not a G3DR model ({err})") from None
        raise
    try:
        model.load_state_dict(read_state_dict(weights))
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match {config_path}: {err}") from None
    return model.eval()


def _as_chw(rgb: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3, H, W) colours (RGBA composited on white, like the training data) and the (H, W) alpha, or None for RGB."""
    rgb = check_tensor(torch.as_tensor(rgb), "rgb", (None, None, None), floating=True, unit_range=True).float()
    if rgb.shape[-1] in (3, 4) and rgb.shape[0] not in (3, 4):
        rgb = rgb.permute(2, 0, 1)
    if rgb.shape[0] not in (3, 4):
        raise ValueError(f"rgb must be (3|4, H, W) or (H, W, 3|4), got {tuple(rgb.shape)}")
    if rgb.shape[0] == 3:
        return rgb, None
    if not bool((rgb[3] > 0.5).any()):
        raise ValueError("no foreground: the alpha is empty (fully transparent image?)")
    return rgb[:3] * rgb[3:] + (1 - rgb[3:]), rgb[3]


@torch.no_grad()
def render_views(
    model: G3DRGenerator,
    planes: torch.Tensor,
    yaw_deg: float | torch.Tensor,
    pitch_deg: float | torch.Tensor,
    size: int,
) -> dict[str, torch.Tensor]:
    """Deterministic renders of one object's planes (1, 3, C, R, R) at N yaw / pitch offsets (degrees).

    Returns:
        dict(rgb (N, size, size, 3), depth (N, size, size), opacity (N, size, size)).
    """
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float32).reshape(-1)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float32).reshape(-1).expand_as(yaw)
    c2w = view_c2w(yaw, pitch, model.config.camera_distance)
    frames = [model.render(planes, c2w[i : i + 1], size, deterministic=True) for i in range(yaw.shape[0])]
    return {key: torch.cat([f[key] for f in frames]) for key in frames[0]}


@torch.no_grad()
def g3dr_reconstruct(
    model: G3DRGenerator,
    rgb: torch.Tensor | np.ndarray,
    depth: torch.Tensor | np.ndarray,
    *,
    resolution: int = 96,
    threshold: float | None = None,
    alpha: torch.Tensor | None = None,
    project_input: bool = True,
) -> tuple[Mesh, G3DRScene]:
    """Lift one RGB-D image to a coloured mesh.

    Args:
        model: a trained generator (eval mode is set here).
        rgb: (3|4, H, W) or (H, W, 3|4) in [0, 1] (RGBA composited on white), square; resized to the model's size.
        depth: (H, W) pseudo depth in the canonical convention (ray distance, [4, 6]).
        resolution: marching-cubes samples per axis over the scene box.
        threshold: density iso level (None: ``model.config.mesh_threshold``).
        alpha: (H, W) object mask for ``project_input`` (None: an RGBA image's alpha, else the pixels nearer than
            the far depth 6, which marks the background). An alpha (given or the image's) with no value above 0.5
            is refused: a fully transparent image has no object to lift.
        project_input: colour the surface the image sees with the image (full resolution), the rest with the
            field's colours mapped to the image's; False: the field's colours everywhere.

    Returns:
        (mesh with vertex colours, scene with the triplanes).

    Raises:
        ValueError: bad shapes, an empty alpha, or no surface at ``threshold``.
    """
    model.eval()
    image, image_alpha = _as_chw(rgb)
    full_depth = check_tensor(torch.as_tensor(np.asarray(depth) if isinstance(depth, np.ndarray) else depth).float(),
                              "depth", (image.shape[1], image.shape[2]))  # fmt: skip
    if image.shape[1] != image.shape[2]:
        raise ValueError(f"the image must be square, got {tuple(image.shape[1:])}")
    given_alpha = alpha is not None
    if alpha is None:
        alpha = image_alpha if image_alpha is not None else (full_depth < FAR_DEPTH - 1e-3).float()
    alpha = check_tensor(torch.as_tensor(alpha).float(), "alpha", tuple(full_depth.shape))
    if image_alpha is not None or given_alpha:  # an object mask with no object: as reconstruct / invert refuse it
        if not bool((alpha > 0.5).any()):
            raise ValueError("no foreground: the alpha is empty (fully transparent image?)")
    rgb, depth, _ = resize_view(image, full_depth, None, model.config.image_size)
    planes = model.encode(rgb[None], depth[None])
    scene = G3DRScene(planes, model)
    threshold = model.config.mesh_threshold if threshold is None else threshold
    mesh = extract_isosurface(model.density_fn(planes), resolution, threshold, model.config.box_radius)
    pyramid = model.pyramid(planes)
    colors = torch.cat([model.query(pyramid, chunk)["rgb"] for chunk in mesh.verts.split(65536)]).clamp(0, 1)
    mesh = Mesh(mesh.verts, mesh.faces, vertex_colors=colors)
    if project_input:
        camera = model.cameras(view_c2w(0.0, 0.0, model.config.camera_distance), image.shape[1])
        mesh, _ = project_image_colours(mesh, camera, image.permute(1, 2, 0), alpha)
    return mesh, scene


def turntable(
    scene: G3DRScene, n_frames: int = 24, size: int = 64, max_yaw_deg: float = 45.0, pitch_deg: float = 0.0
) -> np.ndarray:
    """(n_frames, size, size, 3) float frames swinging the camera from ``-max_yaw`` to ``+max_yaw`` and back
    (G3DR is trained for offsets within about +-30 deg; ``max_yaw_deg = 180`` gives a full turn)."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if max_yaw_deg >= 180:
        yaws = torch.linspace(-180.0, 180.0, n_frames + 1)[:-1]
    else:
        phase = torch.arange(n_frames, dtype=torch.float32) / n_frames * 2 * torch.pi
        yaws = -max_yaw_deg * torch.cos(phase)
    return scene.render(yaws, pitch_deg, size)["rgb"].clamp(0, 1).numpy()


def image_grid(images: np.ndarray | list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) images row-major into one (rows H', columns W', C) image with white padding."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[k]
    return grid


def save_reconstruction(
    mesh: Mesh, frames: np.ndarray, out_dir: str | os.PathLike, fps: int = 12, *, unlit: bool = False
) -> dict[str, Path]:
    """Write ``mesh.glb`` (vertex colours; a lit PBR material, or ``KHR_materials_unlit`` with ``unlit``, as
    ``monorecon reconstruct``), ``turntable.gif`` and ``turntable.png`` (a frame grid)."""
    out_dir = check_output_folder(out_dir)
    paths = {"mesh": out_dir / "mesh.glb", "gif": out_dir / "turntable.gif", "grid": out_dir / "turntable.png"}
    if out_dir.is_dir():  # every output checked before the first is written: all of them or none
        for path in paths.values():
            check_writable(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_mesh(mesh, paths["mesh"], unlit=unlit)
    frames_u8 = (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    imageio.mimsave(buffer, list(frames_u8), format="GIF", duration=1000 / fps, loop=0)
    atomic_write_bytes(paths["gif"], buffer.getvalue())
    save_image(image_grid(frames, columns=min(8, len(frames))), paths["grid"])
    return paths


def reconstruct_to_folder(
    model: G3DRGenerator | str | os.PathLike,
    image_path: str | os.PathLike,
    depth_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resolution: int = 96,
    threshold: float | None = None,
    n_frames: int = 24,
    frame_size: int = 96,
    project_input: bool = True,
    unlit: bool = False,
    object_height: float | None = None,
    origin: str = "model",
) -> dict[str, Path]:
    """``monorecon g3dr IMAGE --depth DEPTH -o OUT``: read the pair (depth PNG format of :mod:`.data`), reconstruct,
    write ``mesh.glb`` + turntable (see :func:`save_reconstruction`); ``model`` may be a run folder.

    The image's EXIF orientation applies to the depth too (:func:`.data.load_rgbd_pair`); an RGBA image with an
    empty alpha (no pixel above 0.5) is refused, as ``monorecon reconstruct`` refuses it, and so is an all-zero depth
    PNG (every pixel at the nearest depth: most depth formats write 0 for "no depth"). ``object_height`` /
    ``origin`` place the saved mesh (:meth:`~monorecon.core.mesh.Mesh.placed`); the turntable,
    rendered from the field, stays in the model's frame.
    """
    check_placement(object_height, origin, "object_height")
    if not isinstance(model, G3DRGenerator):
        model = load_g3dr(model)
    rgb, depth, mask = load_rgbd_pair(image_path, depth_path)
    if bool((depth == NEAR_DEPTH).all()):  # decoded exactly: the PNG holds 0 everywhere
        raise ValueError(f"depth {depth_path} is all zero: no depth (0 is the nearest depth; see encode_depth_png)")
    alpha = None if mask is None else mask.float()  # an empty one is refused by g3dr_reconstruct
    mesh, scene = g3dr_reconstruct(
        model, rgb, depth, resolution=resolution, threshold=threshold, alpha=alpha, project_input=project_input
    )
    frames = turntable(scene, n_frames, frame_size)
    return save_reconstruction(mesh.placed(object_height, origin), frames, out_dir, unlit=unlit)
