"""Synthetic multi-view datasets: procedural objects rendered from random views with the core mesh renderer.

For each object: V cameras on a sphere around the origin (azimuth uniform in [0, 360), elevation uniform in a range,
all looking at the origin with world up +Y, see :func:`monorecon.core.cameras.orbit_c2w`), at the distance where the
object's bounding sphere (radius 0.5) fills a fixed fraction of the frame for a fixed vertical field of view. One
random directional light per object (fixed in the world, so the views are consistent): direction in the upper
hemisphere, slightly tinted white, Phong shading. Renders are hard (z-buffer, one sample per pixel centre: no
anti-aliasing), so ``alpha`` is exactly 0 or 1.

The on-disk format is described in ``docs/dataset_format.md`` and read by
:class:`monorecon.data.dataset.MultiViewDataset`. Everything is deterministic given the seed: object ``i`` draws its
shape seed, view seed and split from ``numpy.random.default_rng([seed, i])``, so a larger dataset with the same seed
starts with the same objects. Each object folder is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.checks import check_int
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render_mesh
from monorecon.core.shading import DirectionalLights, vertex_normals
from monorecon.io.atomic import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    check_writable,
    remove_stale_temporaries,
)
from monorecon.io.images import save_image
from monorecon.io.mesh_io import save_mesh
from monorecon.parallel import MAX_WORKERS, map_in_processes

from .dataset import DATASET_FORMAT, DATASET_VERSION, SPLITS
from .shapes import DEFAULT_RADIUS, SHAPE_CLASSES, make_object, normalize_vertices

__all__ = ["ViewSampling", "camera_distance", "render_views", "synthesize_dataset", "write_index", "write_object"]

_ZNEAR, _ZFAR = 0.05, 100.0
#: (subfolder, extension) of the files each view of an object has.
_VIEW_FILES = (("rgba", "png"), ("depth", "npz"), ("normals", "png"))
#: Camera elevations (deg) drawn by default: a dataset made with another range records it in each ``meta.json``.
DEFAULT_ELEVATION_RANGE_DEG = (-10.0, 40.0)
#: Limits of a dataset's arguments, so an absurd value is refused before anything is rendered or written.
MAX_OBJECTS, MAX_VIEWS, MAX_IMAGE_SIZE = 10_000_000, 1024, 2048


def camera_distance(fov_y_deg: float, object_radius: float = DEFAULT_RADIUS, fill: float = 0.85) -> float:
    """Distance from the origin at which a sphere of ``object_radius`` around it projects to a disc whose radius is
    ``fill`` times half the image height (pinhole camera looking at the origin, vertical fov ``fov_y_deg``)."""
    if not 0 < fov_y_deg < 180 or not object_radius > 0 or not 0 < fill < 1 / math.tan(math.radians(fov_y_deg) / 2):
        raise ValueError(f"invalid fov_y_deg={fov_y_deg}, object_radius={object_radius} or fill={fill}")
    # Tangent cone half-angle a: tan(a) = fill * tan(fov / 2) and sin(a) = radius / distance.
    return object_radius / math.sin(math.atan(fill * math.tan(math.radians(fov_y_deg) / 2)))


def fill_at_distance(distance: float, fov_y_deg: float = 40.0, object_radius: float = DEFAULT_RADIUS) -> float:
    """The ``fill`` of :func:`camera_distance` that puts the cameras at ``distance`` (its inverse)."""
    return math.tan(math.asin(object_radius / distance)) / math.tan(math.radians(fov_y_deg) / 2)


#: Distance of the cameras from the object's centre by default: TripoSR's input camera (fov 40 deg), which
#: ``monorecon train`` and ``monorecon eval`` expect of a dataset's views.
DEFAULT_CAMERA_DISTANCE = 1.9


@dataclass(frozen=True)
class ViewSampling:
    """How cameras and lights are drawn for each object.

    Attributes:
        fov_y_deg: vertical field of view of every camera (square images).
        elevation_range_deg: (low, high) uniform elevation range; positive is above the object.
        fill: radius of the object's bounding sphere on the image, as a fraction of half the image side (default: the
            fill of cameras at :data:`DEFAULT_CAMERA_DISTANCE` with the default fov, about 0.75).
        light_elevation_range_deg: (low, high) uniform elevation of the light direction (azimuth uniform).
        ambient_range, diffuse_range: uniform ranges of the light's ambient / diffuse intensity.
        specular: specular intensity of the light.
        max_tint: maximum saturation of the light colour (0 = white).
    """

    fov_y_deg: float = 40.0
    elevation_range_deg: tuple[float, float] = DEFAULT_ELEVATION_RANGE_DEG
    fill: float = fill_at_distance(DEFAULT_CAMERA_DISTANCE)
    light_elevation_range_deg: tuple[float, float] = (15.0, 75.0)
    ambient_range: tuple[float, float] = (0.3, 0.5)
    diffuse_range: tuple[float, float] = (0.5, 0.7)
    specular: float = 0.15
    max_tint: float = 0.2

    @classmethod
    def at_distance(cls, distance: float, fov_y_deg: float = 40.0, **kwargs: Any) -> ViewSampling:
        """Cameras at ``distance`` from the origin (the ``fill`` that puts them there), e.g. TripoSR's 1.9.

        Raises:
            ValueError: a distance at which the object (radius 0.5) overflows the frame, or beyond the far plane.
        """
        nearest = camera_distance(fov_y_deg, DEFAULT_RADIUS, 1.0)
        if not (math.isfinite(distance) and nearest <= distance <= _ZFAR - DEFAULT_RADIUS):
            raise ValueError(
                f"camera distance must lie in [{nearest:.3f}, {_ZFAR - DEFAULT_RADIUS:g}] at fov {fov_y_deg:g} deg "
                f"(the object inside the frame, before the far plane), got {distance}"
            )
        return cls(fov_y_deg=fov_y_deg, fill=fill_at_distance(distance, fov_y_deg), **kwargs)

    def __post_init__(self) -> None:
        camera_distance(self.fov_y_deg, DEFAULT_RADIUS, self.fill)  # validates fov and fill
        for name in ("elevation_range_deg", "light_elevation_range_deg"):
            low, high = getattr(self, name)
            if not -90 < low <= high < 90:
                raise ValueError(f"{name} must satisfy -90 < LOW <= HIGH < 90, got {(low, high)}")
        for name in ("ambient_range", "diffuse_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(low, high)}")
        if self.specular < 0 or not 0 <= self.max_tint <= 1:
            raise ValueError(f"need specular >= 0 and 0 <= max_tint <= 1, got {self.specular}, {self.max_tint}")


def _sample_views(rng: np.random.Generator, n_views: int, sampling: ViewSampling) -> list[dict[str, Any]]:
    distance = camera_distance(sampling.fov_y_deg, DEFAULT_RADIUS, sampling.fill)
    azimuth = rng.uniform(0.0, 360.0, size=n_views)
    elevation = rng.uniform(*sampling.elevation_range_deg, size=n_views)
    c2w = orbit_c2w(torch.from_numpy(azimuth), torch.from_numpy(elevation), distance)
    return [
        {
            "c2w": c2w[i].tolist(),
            "fov_y_deg": sampling.fov_y_deg,
            "azimuth_deg": float(azimuth[i]),
            "elevation_deg": float(elevation[i]),
            "distance": distance,
        }
        for i in range(n_views)
    ]


def _sample_light(rng: np.random.Generator, sampling: ViewSampling) -> dict[str, list[float]]:
    azimuth = rng.uniform(0.0, 360.0)
    elevation = rng.uniform(*sampling.light_elevation_range_deg)
    az, el = math.radians(azimuth), math.radians(elevation)
    direction = [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
    tint = 1.0 - rng.uniform(0.0, sampling.max_tint) * rng.uniform(size=3)  # white, slightly tinted
    tint = tint / tint.max()
    return {
        "direction": direction,
        "ambient_color": (tint * rng.uniform(*sampling.ambient_range)).tolist(),
        "diffuse_color": (tint * rng.uniform(*sampling.diffuse_range)).tolist(),
        "specular_color": (tint * sampling.specular).tolist(),
    }


def render_views(mesh: Mesh, views: list[dict[str, Any]], size: int, light: dict[str, list[float]]) -> dict:
    """Render ``mesh`` from the given views (as stored in ``cameras.json``) with one directional light.

    Returns:
        dict of numpy float32 arrays: ``rgba`` (V, H, W, 4) straight alpha (colour 0 on the background), ``depth``
        (V, H, W) view depth ``-z_camera`` in world units (0 on the background), ``normals`` (V, H, W, 3) unit
        world normals used for shading (0 on the background); H = W = ``size``.
    """
    c2w = torch.tensor([v["c2w"] for v in views], dtype=torch.float32)
    fov = torch.tensor([v["fov_y_deg"] for v in views], dtype=torch.float32)
    cameras = PerspectiveCameras(c2w, size, size, znear=_ZNEAR, zfar=_ZFAR, fov_y_deg=fov)
    lights = DirectionalLights(**{k: tuple(v) for k, v in light.items()})
    with torch.no_grad():
        # Normals from the unwelded faces: shapes duplicate vertices along sharp edges to keep those edges hard
        # (as the renders of the datasets were made; ``Mesh.vertex_normals`` decides by its own rule).
        out = render_mesh(
            mesh.verts, mesh.faces, cameras, vertex_colors=mesh.vertex_colors, uvs=mesh.uvs, texture=mesh.texture,
            normals=vertex_normals(mesh.verts, mesh.faces), lights=lights, shading="phong", background=(0.0, 0.0, 0.0),
        )  # fmt: skip
    alpha = out["alpha"][..., None].clamp(0, 1)
    rgba = torch.cat([out["rgb"].clamp(0, 1) * alpha, alpha], dim=-1)
    return {
        "rgba": rgba.numpy().astype(np.float32),
        "depth": (out["depth"] * alpha[..., 0]).numpy().astype(np.float32),
        "normals": (out["normals"] * alpha).numpy().astype(np.float32),
    }


def write_object(
    mesh: Mesh,
    folder: str | Path,
    *,
    n_views: int,
    size: int,
    seed: int,
    class_name: str = "",
    sampling: ViewSampling | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Render ``mesh`` (normalised, e.g. by :func:`~monorecon.data.shapes.make_object` or
    :func:`~monorecon.data.shapes.load_normalized_mesh`) from ``n_views`` random views and write one object folder.

    The folder is assembled in a temporary sibling folder and renamed into place when complete, so a crash never
    leaves a partial object. Views and light are drawn from ``numpy.random.default_rng(seed)``. No index is written:
    :func:`write_index` makes the object folders of a root a dataset (``docs/dataset_format.md``).

    Args:
        folder: destination; must not exist yet (its parent must).
        meta: extra entries for ``meta.json``.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    sampling = sampling or ViewSampling()
    check_int(n_views, "n_views", 1, MAX_VIEWS)
    check_int(size, "size", 1, MAX_IMAGE_SIZE)
    if folder.exists():
        raise ValueError(f"object folder already exists: {folder}")
    check_writable(folder)
    rng = np.random.default_rng(seed)
    views = _sample_views(rng, n_views, sampling)
    light = _sample_light(rng, sampling)
    rendered = render_views(mesh, views, size, light)

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for sub in ("rgba", "depth", "normals"):
            (tmp / sub).mkdir()
        for i in range(n_views):
            save_image(rendered["rgba"][i], tmp / "rgba" / f"{i:03d}.png")
            # Normals stored as (n + 1) / 2 on the object and 0 on the background (normals are 0 there).
            normals_png = 0.5 * (rendered["normals"][i] + rendered["rgba"][i, ..., 3:])
            save_image(normals_png, tmp / "normals" / f"{i:03d}.png")
            with atomic_write(tmp / "depth" / f"{i:03d}.npz") as f:
                np.savez_compressed(f, depth=rendered["depth"][i])
        cameras = {
            "convention": "monorecon: world +Y up, front +Z; c2w columns [right, up, back, position], camera looks "
            "down -Z; fov_y_deg vertical; depth = -z_camera in world units, 0 on the background",
            "image_size": [size, size],
            "znear": _ZNEAR,
            "zfar": _ZFAR,
            "light": light,
            "sampling": asdict(sampling),
            "views": views,
        }
        atomic_write_json(tmp / "cameras.json", cameras)
        save_mesh(mesh, tmp / "mesh.ply")
        info = {
            "format": DATASET_FORMAT,
            "version": DATASET_VERSION,
            "class": class_name,
            "view_seed": seed,
            "n_views": n_views,
            "image_size": [size, size],
            "num_verts": mesh.num_verts,
            "num_faces": mesh.num_faces,
            **(meta or {}),
        }
        atomic_write_json(tmp / "meta.json", info)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def synthesize_dataset(
    out_dir: str | Path,
    n_objects: int,
    n_views: int,
    size: int,
    seed: int,
    classes: Sequence[str] | None = None,
    progress: bool = True,
    *,
    sampling: ViewSampling | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    stretch: float | None = None,
    workers: int = 1,
) -> Path:
    """Generate procedural objects, render them and write a dataset readable by ``MultiViewDataset``.

    Object ``i`` has class ``classes[i % len(classes)]`` (default: every class of ``SHAPE_CLASSES`` in turn) and
    draws its shape seed, view seed and split (train / val / test with ``split_fractions``) from
    ``numpy.random.default_rng([seed, i])``. Objects already present from an earlier run with the same arguments are
    kept (the run resumes, and may add objects with a larger ``n_objects``); ``index.json`` and ``manifest.csv`` are
    (re)written atomically at the end. Temporary folders a killed run left are removed first.

    Args:
        out_dir: dataset folder (created if needed).
        n_objects, n_views: number of objects and of views per object.
        size: image side in pixels (square images).
        seed: master seed.
        classes: class names to use (see ``SHAPE_CLASSES``).
        progress: show a tqdm progress bar.
        sampling: how views and lights are drawn (:class:`ViewSampling`); an elevation range other than the
            default is recorded in ``meta.json`` as ``elevation_range_deg``.
        split_fractions: probabilities of the train / val / test splits.
        stretch: if given (> 1), each object is scaled along world X and Z by two independent factors drawn
            log-uniformly from ``[1 / stretch, stretch]`` (then normalised again), recorded in ``meta.json`` as
            ``stretch_xz``. Many classes are lathes, as deep as they are wide; stretched copies keep a model from
            taking that as a rule for every object. The factors are drawn after the other draws of the object, so
            the objects' seeds and splits do not depend on this argument.
        workers: processes that render objects side by side (each with one torch thread); the dataset is the same
            for any number, since every object depends only on ``seed`` and its index.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad counts, unknown class, bad split fractions, a bad ``workers``, an existing object folder that
            differs or is damaged, or object folders this run would not list (a smaller ``n_objects``, other
            ``classes``): all checked before anything is rendered except the damaged files, found as the run goes.
    """
    out_dir = Path(out_dir)
    check_int(n_objects, "n_objects", 1, MAX_OBJECTS)
    check_int(n_views, "n_views", 1, MAX_VIEWS)
    check_int(size, "size", 1, MAX_IMAGE_SIZE)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    classes = list(SHAPE_CLASSES) if classes is None else list(classes)
    unknown = sorted(set(classes) - set(SHAPE_CLASSES))
    if not classes or unknown:
        raise ValueError(f"classes must be a non-empty list of {sorted(SHAPE_CLASSES)}; unknown: {unknown}")
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not math.isclose(fractions.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}")
    if stretch is not None and not (math.isfinite(stretch) and stretch > 1.0):
        raise ValueError(f"stretch must be a finite factor > 1, got {stretch}")
    check_int(workers, "workers", 1, MAX_WORKERS)
    sampling = sampling or ViewSampling()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # object folders and index files a killed run was assembling
    ids = {_object_id(i, classes) for i in range(n_objects)}
    unlisted = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name[0] != "." and p.name not in ids)
    if unlisted:  # they would stay on disk, missing from the rewritten index
        raise ValueError(
            f"{out_dir} holds {len(unlisted)} object folder(s) this run would not list, e.g. {unlisted[0]}: it was "
            "made with another object count or class list; use another out_dir or remove them"
        )

    make = functools.partial(
        _synthesize_object, out_dir=out_dir, seed=int(seed), classes=classes, cumulative_fractions=np.cumsum(fractions),
        n_views=n_views, size=size, sampling=sampling, stretch=stretch,
    )  # fmt: skip
    bar = functools.partial(tqdm, total=n_objects, desc="synthesising objects", unit="obj", disable=not progress)
    # Each object folder is renamed into place, so workers never collide.
    entries = list(bar(map_in_processes(operator.call, range(n_objects), workers, shared=make, chunksize=4)))
    write_index(out_dir, entries, seed=int(seed), n_views=n_views, size=size, classes=classes)
    return out_dir


def write_index(
    out_dir: str | Path, entries: list[dict[str, Any]], *, seed: int, n_views: int, size: int, classes: Sequence[str]
) -> None:
    """Write a dataset's ``index.json`` and ``manifest.csv`` (atomically) for object folders already in ``out_dir``.

    Args:
        entries: one dict per object, in order: ``id`` (its folder's name), ``class``, ``split``, ``seed``, ``path``.
        seed, n_views, size, classes: the dataset's master seed, views per object, image side and class names,
            recorded in the index.
    """
    out_dir = Path(out_dir)
    index = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "seed": int(seed),
        "n_views": n_views,
        "image_size": [size, size],
        "classes": sorted(set(classes)),
        "objects": entries,
    }
    atomic_write_json(out_dir / "index.json", index)
    fields = ["id", "class", "split", "seed", "path"]
    atomic_write_csv(out_dir / "manifest.csv", fields, ([entry[k] for k in fields] for entry in entries))


def _synthesize_object(
    i: int,
    *,
    out_dir: Path,
    seed: int,
    classes: list[str],
    cumulative_fractions: np.ndarray,
    n_views: int,
    size: int,
    sampling: ViewSampling,
    stretch: float | None,
) -> dict[str, Any]:
    """Object ``i`` of :func:`synthesize_dataset`: draw it, write its folder (or check the one there), return its index
    entry."""
    rng = np.random.default_rng([seed, i])
    class_name = classes[i % len(classes)]
    shape_seed, view_seed = (int(s) for s in rng.integers(0, 2**31, size=2))
    split = SPLITS[int(np.searchsorted(cumulative_fractions, rng.uniform(), side="right").clip(0, 2))]
    object_id = _object_id(i, classes)
    meta = {"id": object_id, "split": split, "seed": shape_seed, "source": "procedural"}
    if stretch is not None:
        meta["stretch_xz"] = [float(f) for f in np.exp(rng.uniform(-math.log(stretch), math.log(stretch), 2))]
    if tuple(sampling.elevation_range_deg) != DEFAULT_ELEVATION_RANGE_DEG:  # a list is the same range
        meta["elevation_range_deg"] = [float(e) for e in sampling.elevation_range_deg]
    folder = out_dir / object_id
    if folder.exists():
        _check_existing(folder, meta, class_name, view_seed, n_views, size, sampling)
    else:
        mesh = make_object(class_name, shape_seed)
        if stretch is not None:
            mesh = _stretch_xz(mesh, meta["stretch_xz"])
        write_object(
            mesh, folder, n_views=n_views, size=size, seed=view_seed, class_name=class_name, sampling=sampling,
            meta=meta,
        )  # fmt: skip
    return {"id": object_id, "class": class_name, "split": split, "seed": shape_seed, "path": object_id}


def _object_id(i: int, classes: list[str]) -> str:
    """Folder name of object ``i`` of :func:`synthesize_dataset`: its index and class."""
    return f"{i:06d}_{classes[i % len(classes)]}"


def _stretch_xz(mesh: Mesh, factors: list[float]) -> Mesh:
    """Scale world X and Z by ``factors`` (heights unchanged) and normalise again."""
    scale = np.array([factors[0], 1.0, factors[1]])
    verts = normalize_vertices(mesh.verts.double().numpy() * scale)
    return Mesh(torch.from_numpy(verts).float(), mesh.faces, vertex_colors=mesh.vertex_colors)


def _check_existing(
    folder: Path, meta: dict[str, Any], class_name: str, view_seed: int, n_views: int, size: int, sampling: ViewSampling
) -> None:
    """An object folder from an earlier run is kept only if it was made with the same arguments (its ``meta.json``
    and the camera and light sampling in its ``cameras.json``: another camera distance or fov is another dataset) and
    holds every file. A damaged one is reported, not replaced: without its ``meta.json`` it may not be ours."""

    def damaged(problem: str) -> ValueError:
        return ValueError(f"{folder} is damaged or incomplete ({problem}); remove it to have it rendered again")

    files = {}
    for name in ("meta.json", "cameras.json"):
        try:
            files[name] = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise damaged(f"{name} is missing or unreadable") from None
    found, cameras = files["meta.json"], files["cameras.json"]
    stored = cameras.get("sampling") if isinstance(cameras, dict) else None
    wanted = json.loads(json.dumps(asdict(sampling)))  # tuples as lists, as stored
    # A parameter a dataset of an older version did not record is not held against it.
    if not isinstance(stored, dict) or not all(_same_value(stored.get(k, v), v) for k, v in wanted.items()):
        found = {}
    expected = {
        "stretch_xz": None,  # an unstretched object must not match a stretched one, nor the reverse
        "elevation_range_deg": None,  # nor views from another elevation range
        **meta,
        "class": class_name,
        "view_seed": view_seed,
        "n_views": n_views,
        "image_size": [size, size],
    }
    if not isinstance(found, dict) or any(found.get(k) != v for k, v in expected.items()):
        raise ValueError(f"{folder} exists but was not made with these arguments; use another out_dir or remove it")
    views = [f"{sub}/{k:03d}.{ext}" for k in range(n_views) for sub, ext in _VIEW_FILES]
    missing = [
        name for name in ("mesh.ply", *views) if not (folder / name).is_file() or not (folder / name).stat().st_size
    ]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise damaged(f"no {missing[0]}{more}")


def _same_value(a: Any, b: Any) -> bool:
    """JSON values equal, numbers up to rounding (a fill computed by another machine's libm)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b
