"""Multi-view dataset reader: monorecon synthetic datasets and Objaverse-style (zero123) render folders.

Two on-disk layouts are read (full description in ``docs/dataset_format.md``):

* **monorecon** (written by :func:`monorecon.data.synth.synthesize_dataset`): ``index.json`` at the root lists the
  objects with their class and split; each object folder holds ``rgba/NNN.png``, ``depth/NNN.npz``,
  ``normals/NNN.png``, ``cameras.json`` (c2w already in the monorecon convention), ``mesh.ply`` and ``meta.json``.
* **Objaverse renders** (zero123 / One-2-3-45 style, no ``index.json``): one folder per object holding ``NNN.png``
  (RGBA) and ``NNN.npy`` (camera matrix). zero123's Blender script saves a 3x4 **world-to-camera** matrix
  ``[R | t]`` with ``R = R_c2w^T`` and ``t = -R C`` (``get_3x4_RT_matrix_from_blender``): Blender camera axes (x
  right, y up, looking down -z: the same as monorecon's camera axes) in Blender's world (**+Z up, front -Y**),
  lens 35 mm on a 32 mm sensor (vertical fov 2 atan(16 / 35) = 49.13 deg for square images). The reader inverts it to
  a c2w and rotates Blender's world into ours, ``(x, y, z)_ours = (x, z, -y)_blender``: the inverse of the axis swap
  Blender's glTF importer applies to Objaverse's (Y-up) GLB files, so the object comes back in its glTF frame = ours.
  Other conventions (c2w matrices, OpenCV camera axes, Y-up worlds, another fov) are set with
  :class:`ObjaverseConvention`.

Every object is checked when the dataset is built; an object with a missing or corrupt file is reported with a
``UserWarning`` naming the path and skipped (never used half-read). A folder without any usable object raises
``ValueError``.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monorecon.core.checks import SkippedInputWarning
from monorecon.io.images import load_image
from monorecon.io.json_file import read_json_object
from monorecon.io.mesh_io import load_mesh

__all__ = [
    "DATASET_FORMAT",
    "DATASET_VERSION",
    "SPLITS",
    "ZERO123_FOV_DEG",
    "MultiViewDataset",
    "ObjaverseConvention",
    "blender_to_world_matrix",
]

#: Tag written in ``index.json`` / ``meta.json`` by the synthesiser and checked by the reader.
DATASET_FORMAT = "monorecon-multiview"
DATASET_VERSION = 1
#: Split names stored in ``index.json``; ``"all"`` selects every object.
SPLITS = ("train", "val", "test")
#: zero123's Blender camera: 35 mm lens, 32 mm sensor (square image, so vertical = horizontal fov).
ZERO123_FOV_DEG = math.degrees(2 * math.atan(16.0 / 35.0))


def blender_to_world_matrix() -> np.ndarray:
    """(3, 3) rotation taking Blender world coordinates (+Z up, front -Y) to monorecon's (+Y up, front +Z)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class ObjaverseConvention:
    """How the ``NNN.npy`` camera matrices of an Objaverse-style render folder are to be read.

    Attributes:
        matrix: ``"w2c"`` (zero123: world-to-camera ``[R | t]``) or ``"c2w"`` (camera-to-world); 3x4 or 4x4.
        camera_axes: ``"blender"`` (= OpenGL = monorecon: x right, y up, looking down -z) or ``"opencv"`` (x right,
            y down, looking down +z).
        world_up: ``"z"`` (Blender world, front -Y; zero123) or ``"y"`` (already monorecon / glTF world).
        fov_y_deg: vertical field of view of every image (not stored in the npy files).
    """

    matrix: str = "w2c"
    camera_axes: str = "blender"
    world_up: str = "z"
    fov_y_deg: float = ZERO123_FOV_DEG

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("matrix", self.matrix, ("w2c", "c2w")),
            ("camera_axes", self.camera_axes, ("blender", "opencv")),
            ("world_up", self.world_up, ("z", "y")),
        ):
            if value not in allowed:
                raise ValueError(f"ObjaverseConvention.{name} must be one of {allowed}, got {value!r}")
        if not 0 < self.fov_y_deg < 180:
            raise ValueError(f"ObjaverseConvention.fov_y_deg must lie in (0, 180), got {self.fov_y_deg}")

    def to_c2w(self, matrix: np.ndarray) -> np.ndarray:
        """(3, 4) or (4, 4) stored matrix -> (4, 4) c2w in the monorecon convention (float64)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape not in ((3, 4), (4, 4)):
            raise ValueError(f"camera matrix must be a 3x4 or 4x4 array, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("camera matrix has NaN or infinite values")
        full = np.eye(4)
        full[:3] = matrix[:3]
        if not _is_rotation(full[:3, :3]):
            raise ValueError("camera matrix rotation part is not orthonormal")
        c2w = np.linalg.inv(full) if self.matrix == "w2c" else full
        if self.camera_axes == "opencv":  # flip y and z camera axes: OpenCV -> OpenGL / monorecon
            c2w = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
        if self.world_up == "z":
            to_world = np.eye(4)
            to_world[:3, :3] = blender_to_world_matrix()
            c2w = to_world @ c2w
        return c2w


@dataclass(frozen=True)
class _ObjectRecord:
    """One usable object found when the dataset was built."""

    object_id: str
    class_name: str
    folder: Path
    image_paths: tuple[Path, ...]
    depth_paths: tuple[Path, ...] | None
    normal_paths: tuple[Path, ...] | None
    c2w: np.ndarray  # (V, 4, 4) monorecon convention
    fov_y_deg: np.ndarray  # (V,)
    mesh_path: Path | None
    alpha_required: bool  # the monorecon layout stores RGBA; Objaverse renders may be RGB (read as opaque)


class MultiViewDataset(torch.utils.data.Dataset):
    """Objects seen from several calibrated views (monorecon synthetic layout or Objaverse-style renders).

    Each item is a dict:

    * ``images``: (V, H, W, 4) float32 RGBA in [0, 1], straight (not premultiplied) alpha.
    * ``depth``: (V, H, W) float32 view depth ``-z_camera`` in world units, 0 on the background and where unknown.
    * ``normals``: (V, H, W, 3) float32 unit world-space normals, 0 on the background and where unknown.
    * ``c2w``: (V, 4, 4) float32 camera-to-world matrices, monorecon convention (see :mod:`monorecon.core.cameras`).
    * ``fov_y_deg``: (V,) float32 vertical field of view.
    * ``has_depth``: bool, whether ``depth`` and ``normals`` were read from files.
    * ``mesh_path``: str, ground-truth mesh file or ``""``; ``class_name``, ``object_id``: str.

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``; Objaverse folders (no ``index.json``) only have
            ``"all"``.
        max_views: use the first ``max_views`` views of each object (objects with fewer are skipped with a warning);
            None uses all (every object must then have the same count to be batched).
        objaverse: how to read Objaverse-style camera files (default: zero123's Blender script).
        verify: read every file when building (slower, but corrupt files are found and skipped up front); with False
            only their presence is checked and a corrupt file raises ``ValueError`` when its item is read.

    Raises:
        ValueError: the root is missing, holds no usable object, has an invalid ``index.json`` or ``split`` is unknown.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        max_views: int | None = None,
        objaverse: ObjaverseConvention | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"dataset folder not found: {self.root}")
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        if max_views is not None and (isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 1):
            raise ValueError(f"max_views must be a positive integer or None, got {max_views!r}")
        self.split, self.max_views, self.verify = split, max_views, verify
        self.objaverse = objaverse or ObjaverseConvention()
        index_path = self.root / "index.json"
        if index_path.exists():
            self.layout = "monorecon"
            candidates = self._monorecon_candidates(index_path)
            read = self._read_monorecon_object
        else:
            self.layout = "objaverse"
            if split != "all":
                raise ValueError(f"{self.root} has no index.json (Objaverse-style folder): only split='all' exists")
            candidates = [(p.name, "", p) for p in sorted(self.root.iterdir()) if p.is_dir() and p.name[0] != "."]
            read = self._read_objaverse_object
        self.objects: list[_ObjectRecord] = []
        for object_id, class_name, folder in candidates:
            try:
                self.objects.append(read(object_id, class_name, folder))
            except ValueError as err:
                warnings.warn(f"skipping object {folder}: {err}", SkippedInputWarning, stacklevel=2)
        if not self.objects:
            raise ValueError(f"no usable object in {self.root} (layout {self.layout}, split {split!r})")

    # -- discovery -------------------------------------------------------------------------------------------------
    def _monorecon_candidates(self, index_path: Path) -> list[tuple[str, str, Path]]:
        index = read_json_object(index_path)
        if index.get("format") != DATASET_FORMAT or not isinstance(index.get("objects"), list):
            raise ValueError(f"{index_path} is not a {DATASET_FORMAT} index (missing 'format' or 'objects')")
        if index.get("version") != DATASET_VERSION:
            raise ValueError(f"{index_path} has version {index.get('version')}, this reader reads {DATASET_VERSION}")
        candidates, seen = [], set()
        for entry in index["objects"]:
            try:
                object_id, class_name, split = str(entry["id"]), str(entry["class"]), str(entry["split"])
            except (KeyError, TypeError):
                raise ValueError(f"{index_path}: object entry {entry!r} lacks id / class / split") from None
            if Path(object_id).name != object_id or object_id in ("", ".", ".."):  # a folder of this root only
                warnings.warn(f"skipping object {object_id!r} of {index_path}: not a folder name", SkippedInputWarning,
                              stacklevel=3)  # fmt: skip
            elif object_id in seen:
                warnings.warn(f"skipping object {object_id!r} of {index_path}: listed twice", SkippedInputWarning,
                              stacklevel=3)  # fmt: skip
            elif split not in SPLITS:  # a typo would otherwise drop the object from every split without a word
                warnings.warn(f"skipping object {object_id!r} of {index_path}: unknown split {split!r}, not one of "
                              f"{SPLITS}", SkippedInputWarning, stacklevel=3)  # fmt: skip
            elif self.split in ("all", split):
                candidates.append((object_id, class_name, self.root / object_id))
            seen.add(object_id)
        return candidates

    def _views(self, count: int, folder: Path) -> int:
        if self.max_views is None:
            return count
        if count < self.max_views:
            raise ValueError(f"{folder} has {count} views, fewer than max_views={self.max_views}")
        return self.max_views

    def _read_monorecon_object(self, object_id: str, class_name: str, folder: Path) -> _ObjectRecord:
        cameras = read_json_object(folder / "cameras.json")
        try:
            views = cameras["views"]
            c2w = np.asarray([v["c2w"] for v in views], dtype=np.float64).reshape(len(views), 4, 4)
            fov = np.asarray([v["fov_y_deg"] for v in views], dtype=np.float64)
            height, width = (int(s) for s in cameras["image_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{folder / 'cameras.json'} is malformed ({err!r})") from None
        if len(views) == 0 or not np.isfinite(c2w).all():
            raise ValueError(f"{folder / 'cameras.json'} has no views or non-finite matrices")
        rigid = all(_is_rotation(m[:3, :3]) and np.allclose(m[3], (0, 0, 0, 1)) for m in c2w)
        if not rigid:
            raise ValueError(f"{folder / 'cameras.json'}: a c2w matrix is not a rotation and a translation")
        if not (np.isfinite(fov).all() and ((fov > 0) & (fov < 180)).all()):
            raise ValueError(f"{folder / 'cameras.json'}: fov_y_deg must lie in (0, 180), got {fov.tolist()}")
        n = self._views(len(views), folder)
        names = [f"{i:03d}" for i in range(n)]
        images = tuple(folder / "rgba" / f"{s}.png" for s in names)
        depths = tuple(folder / "depth" / f"{s}.npz" for s in names)
        normals = tuple(folder / "normals" / f"{s}.png" for s in names)
        mesh_path = folder / "mesh.ply"
        for path in (*images, *depths, *normals, mesh_path):
            self._check_file(path, (height, width), alpha_required=path in images)
        return _ObjectRecord(
            object_id, class_name, folder, images, depths, normals, c2w[:n], fov[:n], mesh_path, alpha_required=True
        )

    def _read_objaverse_object(self, object_id: str, class_name: str, folder: Path) -> _ObjectRecord:
        count = 0
        while (folder / f"{count:03d}.png").exists() or (folder / f"{count:03d}.npy").exists():
            count += 1
        if count == 0:
            raise ValueError("no 000.png / 000.npy views")
        later = sorted(
            p.name for p in folder.glob("[0-9][0-9][0-9].*") if p.suffix in (".png", ".npy") and int(p.stem) > count
        )
        if later:  # views after a gap would be dropped without a word
            raise ValueError(f"view {count:03d} is missing (no {count:03d}.png / .npy) but {later[0]} exists")
        n = self._views(count, folder)
        images = tuple(folder / f"{i:03d}.png" for i in range(n))
        size = None
        c2w = []
        for image in images:
            size = self._check_file(image, size)
            pose_path = image.with_suffix(".npy")
            if not pose_path.is_file():
                raise ValueError(f"missing camera file {pose_path}")
            try:
                matrix = np.load(pose_path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise ValueError(f"cannot read camera file {pose_path}: {err or 'empty file'}") from None
            try:
                c2w.append(self.objaverse.to_c2w(matrix))
            except ValueError as err:
                raise ValueError(f"{pose_path}: {err}") from None
        fov = np.full(n, self.objaverse.fov_y_deg)
        return _ObjectRecord(
            object_id, class_name, folder, images, None, None, np.stack(c2w), fov, None, alpha_required=False
        )

    def _check_file(
        self, path: Path, size: tuple[int, int] | None, *, alpha_required: bool = False
    ) -> tuple[int, int] | None:
        """Check ``path`` exists (and with ``verify``, that it decodes with the expected (H, W), with an alpha channel
        if ``alpha_required``); return (H, W)."""
        if not path.is_file() or path.stat().st_size == 0:
            raise ValueError(f"missing or empty file {path}")
        if not self.verify:
            return size
        if path.suffix == ".ply":
            load_mesh(path)  # raises ValueError naming the file
            return size
        if path.suffix == ".npz":
            got = _load_depth(path).shape
        else:
            # Decoded as an item reads it: a PNG's chunk checksums can hold while its compressed data is corrupt.
            got = _load_rgba(path, alpha_required=True).shape[:2] if alpha_required else _load_pixels(path).shape[:2]
        if size is not None and tuple(got) != tuple(size):
            raise ValueError(f"{path} has size {tuple(got)}, expected {tuple(size)}")
        return tuple(got)

    # -- items -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.objects[index]
        images = np.stack([_load_rgba(p, alpha_required=record.alpha_required) for p in record.image_paths])
        n, height, width = images.shape[:3]
        if record.depth_paths is None:
            depth = np.zeros((n, height, width), dtype=np.float32)
            normals = np.zeros((n, height, width, 3), dtype=np.float32)
        else:
            depth = np.stack([_load_depth(p) for p in record.depth_paths])
            normals = np.stack([_load_pixels(p)[..., :3] * 2.0 - 1.0 for p in record.normal_paths])
            normals = np.where(images[..., 3:] > 0, normals, 0.0).astype(np.float32)
        if depth.shape != (n, height, width):
            raise ValueError(f"depth maps of {record.folder} have shape {depth.shape}, images {images.shape[:3]}")
        return {
            "images": torch.from_numpy(images),
            "depth": torch.from_numpy(depth),
            "normals": torch.from_numpy(normals),
            "c2w": torch.from_numpy(record.c2w.astype(np.float32)),
            "fov_y_deg": torch.from_numpy(record.fov_y_deg.astype(np.float32)),
            "has_depth": record.depth_paths is not None,
            "mesh_path": "" if record.mesh_path is None else str(record.mesh_path),
            "class_name": record.class_name,
            "object_id": record.object_id,
        }


def _is_rotation(matrix: np.ndarray) -> bool:
    """Whether a (3, 3) matrix is orthonormal (a rotation or a reflection; 1e-3 tolerance, as stored floats allow)."""
    return bool(np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-3))


def _load_pixels(path: Path) -> np.ndarray:
    """(H, W, 3 | 4) float32 image in [0, 1] as stored: an EXIF orientation tag is ignored, since the cameras refer
    to the stored pixels (a renderer writes them upright; a rotated view would no longer match its camera)."""
    return load_image(path, exif_transpose=False)


def _load_rgba(path: Path, *, alpha_required: bool) -> np.ndarray:
    """(H, W, 4) float32 RGBA; an RGB file gets alpha 1 everywhere, or raises ValueError if ``alpha_required``."""
    image = _load_pixels(path)
    if image.shape[-1] == 3:
        if alpha_required:  # an opaque mask would teach a model that the background is part of the object
            raise ValueError(f"{path} has no alpha channel (RGBA expected)")
        image = np.concatenate([image, np.ones_like(image[..., :1])], axis=-1)
    return image


def _load_depth(path: Path) -> np.ndarray:
    """(H, W) float32 depth from ``depth/NNN.npz`` (key ``depth``), checked finite and non-negative."""
    try:
        with np.load(path, allow_pickle=False) as data:
            depth = np.asarray(data["depth"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read depth file {path}: {err!r}") from None
    if depth.ndim != 2:
        raise ValueError(f"depth file {path} must hold an (H, W) array, got shape {depth.shape}")
    bad = int((~np.isfinite(depth) | (depth < 0)).sum())
    if bad:
        raise ValueError(
            f"depth file {path} must hold finite non-negative depths: {bad} pixels are NaN, infinite or < 0"
        )
    return depth
