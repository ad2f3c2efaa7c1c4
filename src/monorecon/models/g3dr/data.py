"""RGB-D training views for G3DR: single views with a pseudo depth in the canonical camera's frame.

Pseudo depth convention (as the official code): the Euclidean distance along each pixel's ray from the canonical
camera (distance 5, fov 18 deg), about [4, 6]. Two sources:

* **a folder of pairs** ``NAME.png|jpg`` + ``NAME_depth.png``: the depth PNG is 16-bit with
  ``depth = value / 65536 * 2 + 4`` (the official loader's mapping of LeReS depth: larger = farther, [4, 6)). An RGBA
  image gives a foreground mask (alpha > 0.5) and is composited on white; an RGB image has no mask (every pixel is
  supervised, as in the paper's ImageNet setting).
* **the synthetic multi-view set** (:class:`monorecon.data.dataset.MultiViewDataset`): the paper estimates the depth
  of in-the-wild images with LeReS and maps it to [4, 6]; here the *true* rendered depth is used instead, mapped into
  the canonical frame. A view seen from distance ``d`` (camera to the origin along the axis) with fov ``f`` becomes a
  view of the canonical camera by the similarity ``p_canonical = s (R p + t + (0, 0, d))`` (``[R | t]`` = the view's
  world-to-camera, ``s = 5 tan(9 deg) / (d tan(f / 2))``), which keeps the object's image size (exactly at the depth
  of the origin; perspective differs slightly away from it), so ``depth_canonical = 5 + s (z - d)`` for z-depth ``z``,
  then converted to ray distance. The similarity is stored per view (``to_canonical``) so that ground-truth meshes can
  be brought into the canonical frame for evaluation. Background pixels get the far depth 6 in the input and are
  excluded from the depth losses by the mask.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from monorecon.core.checks import check_tensor
from monorecon.io.atomic import atomic_write
from monorecon.io.images import load_image, save_image

from .generator import ray_length_factor

__all__ = [
    "FAR_DEPTH",
    "NEAR_DEPTH",
    "RGBDViews",
    "canonical_similarity",
    "decode_depth_png",
    "encode_depth_png",
    "load_rgbd_pair",
    "resize_view",
    "save_rgbd_pair",
    "views_from_folder",
    "views_from_synthetic",
]

#: Pseudo-depth range of the canonical camera (official mapping of the depth PNGs).
NEAR_DEPTH, FAR_DEPTH = 4.0, 6.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def encode_depth_png(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in [4, 6) -> uint16 ``round((depth - 4) / 2 * 65536)`` (clipped to [0, 65535])."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or not np.isfinite(depth).all():
        raise ValueError(f"depth must be a finite (H, W) array, got shape {depth.shape}")
    return np.clip(np.round((depth - NEAR_DEPTH) / 2.0 * 65536.0), 0, 65535).astype(np.uint16)


def decode_depth_png(values: np.ndarray) -> np.ndarray:
    """uint16 (H, W) -> float32 depth ``values / 65536 * 2 + 4``."""
    return (np.asarray(values, dtype=np.float64) / 65536.0 * 2.0 + NEAR_DEPTH).astype(np.float32)


#: EXIF orientation -> the transposition that shows the stored pixels upright (as ``PIL.ImageOps.exif_transpose``).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an open image (1, upright, when absent or not a valid code)."""
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _EXIF_TRANSPOSE else 1


def _image_orientation(path: Path) -> int:
    """The EXIF orientation of the colour image at ``path`` (already read successfully by ``load_image``)."""
    try:
        with Image.open(path) as img:
            return _exif_orientation(img)
    except (OSError, SyntaxError):
        return 1


def _read_depth_png(path: Path, orientation: int = 1) -> np.ndarray:
    """Decoded depth of a 16-bit PNG, transposed by the EXIF ``orientation`` of its colour image."""
    if not path.is_file():
        raise ValueError(f"depth image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            # 16-bit only: an 8-bit map has 256 depth levels in the 2-unit window, a colour or float one is no code
            if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path} is not a 16-bit greyscale depth PNG (mode {img.mode}; see encode_depth_png)")
            own = _exif_orientation(img)
            if own != 1 and own != orientation:
                raise ValueError(
                    f"{path} has EXIF orientation {own}, its colour image {orientation}: "
                    "the depth must be stored in the colour image's pixel grid"
                )
            if orientation != 1:
                img = img.transpose(_EXIF_TRANSPOSE[orientation])
            values = np.asarray(img, dtype=np.float64)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read depth image {path}: {err}") from None
    return decode_depth_png(np.clip(values, 0, 65535))


def save_rgbd_pair(rgb: np.ndarray, depth: np.ndarray, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``STEM.png`` (RGB or RGBA float [0, 1]) and ``STEM_depth.png`` (16-bit, :func:`encode_depth_png`)."""
    stem = Path(stem)
    rgb_path, depth_path = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + "_depth.png")
    save_image(np.asarray(rgb), rgb_path)
    with atomic_write(depth_path) as f:
        Image.fromarray(encode_depth_png(depth)).save(f, format="PNG")
    return rgb_path, depth_path


def load_rgbd_pair(
    image_path: str | os.PathLike, depth_path: str | os.PathLike | None = None, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Read an RGB(A) image and its depth PNG (default ``NAME_depth.png`` beside it).

    The image is shown upright by its EXIF orientation tag (a phone JPEG's rotation, as ``load_image`` does), and the
    depth map gets the *same* transposition: a depth map is stored in the sensor's pixel grid, like the colour
    image's raw pixels, so both stay aligned pixel for pixel. A depth PNG that carries an orientation tag of its own
    must agree with the image's (it is then applied once); a different one is refused.

    Returns:
        rgb (3, S, S) in [0, 1] (RGBA composited on white), depth (S, S) in [4, 6], mask (S, S) bool or None
        (RGB input). Resized to ``size`` (area filter; depth averaged over the foreground) when given.
    """
    image_path = Path(image_path)
    depth_path = Path(depth_path) if depth_path is not None else image_path.with_name(image_path.stem + "_depth.png")
    image = torch.from_numpy(load_image(image_path)).permute(2, 0, 1)
    orientation = _image_orientation(image_path)
    depth = torch.from_numpy(_read_depth_png(depth_path, orientation))
    if tuple(depth.shape) != tuple(image.shape[1:]):
        rotated = " (both as the image's EXIF orientation shows them)" if orientation != 1 else ""
        raise ValueError(f"{depth_path} has size {tuple(depth.shape)}, the image {tuple(image.shape[1:])}{rotated}")
    alpha = image[3] if image.shape[0] == 4 else None
    rgb = image[:3] if alpha is None else image[:3] * alpha + (1.0 - alpha)
    if size is not None:
        rgb, depth, alpha = resize_view(rgb, depth, alpha, size)
    return rgb, depth, None if alpha is None else alpha > 0.5


def resize_view(
    rgb: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Area-resize one square view (3, H, H), (H, H) [, alpha (H, H)] to ``size``; with an alpha the depth is averaged
    over the foreground (far depth where there is none) and the resized alpha is returned."""
    if rgb.shape[-2:] == (size, size):
        return rgb, depth, alpha
    if rgb.shape[-1] != rgb.shape[-2]:
        raise ValueError(f"images must be square, got {tuple(rgb.shape[-2:])}")

    def area(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None], size=(size, size), mode="area")[0]

    rgb = area(rgb)
    if alpha is None:
        return rgb, area(depth[None])[0], None
    weight = area(alpha[None])[0]
    depth = torch.where(weight > 1e-6, area((depth * alpha)[None])[0] / weight.clamp_min(1e-6), FAR_DEPTH)
    return rgb, depth, weight


@dataclass
class RGBDViews(torch.utils.data.Dataset):
    """Single RGB-D views for G3DR training / evaluation.

    Attributes:
        rgb: (N, 3, S, S) float in [0, 1].
        depth: (N, S, S) pseudo depth (ray distance from the canonical camera, [4, 6]).
        mask: (N, S, S) bool foreground, or None (every pixel is foreground).
        class_names, object_ids: per view (empty strings when unknown).
        to_canonical: (N, 4, 4) similarity taking the object's world frame to the canonical frame, or None.
        mesh_paths: per view ground-truth mesh file ("" when unknown).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    object_ids: list[str] = field(default_factory=list)
    to_canonical: torch.Tensor | None = None
    mesh_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        sizes: dict[str, int] = {}
        check_tensor(self.rgb, "rgb", ("N", 3, "S", "S"), sizes=sizes, floating=True)
        check_tensor(self.depth, "depth", ("N", "S", "S"), sizes=sizes, floating=True)
        if self.mask is not None:
            check_tensor(self.mask, "mask", ("N", "S", "S"), sizes=sizes)
            self.mask = self.mask.bool()
        if self.to_canonical is not None:
            check_tensor(self.to_canonical, "to_canonical", ("N", 4, 4), sizes=sizes, floating=True)
        n = sizes["N"]
        if n == 0:
            raise ValueError("RGBDViews needs at least one view")
        self.class_names = list(self.class_names) or [""] * n
        self.object_ids = list(self.object_ids) or [""] * n
        self.mesh_paths = list(self.mesh_paths) or [""] * n
        for name in ("class_names", "object_ids", "mesh_paths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} views")

    @property
    def image_size(self) -> int:
        return self.rgb.shape[-1]

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        mask = self.mask[index] if self.mask is not None else torch.ones_like(self.depth[index], dtype=torch.bool)
        return {"rgb": self.rgb[index], "depth": self.depth[index], "mask": mask}

    def subset(self, indices: list[int] | torch.Tensor) -> RGBDViews:
        """The views at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        pick = [int(i) for i in idx]
        return RGBDViews(
            self.rgb[idx], self.depth[idx], None if self.mask is None else self.mask[idx],
            [self.class_names[i] for i in pick], [self.object_ids[i] for i in pick],
            None if self.to_canonical is None else self.to_canonical[idx], [self.mesh_paths[i] for i in pick],
        )  # fmt: skip


def views_from_folder(folder: str | os.PathLike, image_size: int) -> RGBDViews:
    """All ``NAME.png|jpg`` + ``NAME_depth.png`` pairs of a folder (sorted by name), resized to ``image_size``.

    Raises:
        ValueError: no pair found, or an unreadable / mismatched file (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"RGB-D folder not found: {folder}")
    images = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in _IMAGE_SUFFIXES and not p.stem.endswith("_depth")
        and p.with_name(p.stem + "_depth.png").is_file()
    )  # fmt: skip
    if not images:
        raise ValueError(f"no NAME.png|jpg + NAME_depth.png pairs in {folder}")
    pairs = [load_rgbd_pair(p, size=image_size) for p in images]
    masks = [m for _, _, m in pairs]
    mask = None if all(m is None for m in masks) else torch.stack(
        [m if m is not None else torch.ones(image_size, image_size, dtype=torch.bool) for m in masks]
    )  # fmt: skip
    return RGBDViews(
        torch.stack([r for r, _, _ in pairs]), torch.stack([d for _, d, _ in pairs]), mask,
        object_ids=[p.stem for p in images],
    )  # fmt: skip


def canonical_similarity(c2w: np.ndarray, fov_y_deg: float, distance: float = 5.0, fov_deg: float = 18.0):
    """(4, 4) similarity ``p -> s (R p + t + (0, 0, d))`` into the canonical frame, and ``(s, d)`` (module docstring).

    Args:
        c2w: (4, 4) camera-to-world of the view (monorecon convention).
        fov_y_deg: the view's vertical fov.
    """
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    d = float(w2c[2, 3]) * -1.0  # z-depth of the world origin
    if d <= 0:
        raise ValueError("the world origin is behind the camera: cannot map the view to the canonical camera")
    s = distance * math.tan(math.radians(fov_deg) / 2) / (d * math.tan(math.radians(fov_y_deg) / 2))
    similarity = np.eye(4)
    similarity[:3, :3] = s * w2c[:3, :3]
    similarity[:3, 3] = s * (w2c[:3, 3] + np.array([0.0, 0.0, d]))
    return similarity, s, d


def views_from_synthetic(
    root: str | os.PathLike,
    split: str = "train",
    *,
    image_size: int = 64,
    views_per_object: int = 1,
    max_objects: int | None = None,
    classes: list[str] | None = None,
    distance: float = 5.0,
    fov_deg: float = 18.0,
) -> RGBDViews:
    """Single views of a monorecon synthetic set (``synthesize_dataset``) mapped to the canonical camera.

    Args:
        root, split: dataset folder and split (see :class:`~monorecon.data.dataset.MultiViewDataset`).
        image_size: output side (area-resized).
        views_per_object: the first k views of every object are used (each as an independent single view).
        max_objects: use at most this many objects (in index order).
        classes: keep only these classes.
    """
    from monorecon.data.dataset import MultiViewDataset

    dataset = MultiViewDataset(root, split, max_views=views_per_object)
    factor = ray_length_factor(image_size, fov_deg)
    rgbs, depths, masks, names, ids, sims, meshes = [], [], [], [], [], [], []
    for i in range(len(dataset)):
        record = dataset.objects[i]
        if classes is not None and record.class_name not in classes:
            continue
        if max_objects is not None and len({*ids}) >= max_objects:
            break
        item = dataset[i]
        if not item["has_depth"]:
            raise ValueError(f"object {record.object_id} has no depth maps")
        for v in range(item["images"].shape[0]):
            rgba = item["images"][v].permute(2, 0, 1)
            alpha = rgba[3]
            sim, s, d = canonical_similarity(item["c2w"][v].numpy(), float(item["fov_y_deg"][v]), distance, fov_deg)
            z = item["depth"][v]
            canonical_z = torch.where(alpha > 0.5, distance + s * (z - d), torch.full_like(z, FAR_DEPTH))
            rgb, depth_z, weight = resize_view(rgba[:3] * alpha + (1 - alpha), canonical_z, alpha, image_size)
            mask = weight > 0.5
            depth = torch.where(mask, depth_z * factor, torch.full_like(depth_z, FAR_DEPTH))
            rgbs.append(rgb)
            depths.append(depth.clamp(NEAR_DEPTH, FAR_DEPTH))
            masks.append(mask)
            names.append(item["class_name"])
            ids.append(item["object_id"])
            sims.append(torch.from_numpy(sim).float())
            meshes.append(item["mesh_path"])
    if not rgbs:
        raise ValueError(f"no views selected from {root} (split {split!r}, classes {classes})")
    return RGBDViews(torch.stack(rgbs), torch.stack(depths), torch.stack(masks), names, ids, torch.stack(sims), meshes)
