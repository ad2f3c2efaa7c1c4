"""Evaluation harness: reconstruct held-out objects, align to the ground truth, score, and write a report.

``evaluate(method, data_dir, out_dir)`` (CLI: ``monorecon eval --model M --data DIR -o REPORT_DIR``):

* **Cases.** ``data_dir`` is either a synthetic dataset (:class:`monorecon.data.MultiViewDataset` layout; view
  ``input_view`` of each object is the input) or a folder of mesh files (OBJ / PLY / GLB), each normalised like the
  procedural objects (:func:`monorecon.data.load_normalized_mesh`) and rendered from each azimuth of
  ``mesh_azimuths`` (default one view, 30 deg; several views make several cases ``<name>@<azimuth>``, a steadier
  estimate on a handful of meshes), elevation ``mesh_elevation`` (default 15 deg), with the data synthesiser's
  renderer and one light fixed in the world (from the front, above, right: views from behind are darker). Each
  such case also has 7 other views, at the input's elevation and azimuths 45, 90, ..., 315 deg from it. Every input
  camera is at distance 1.9 with a 40 deg fov looking at the origin, and the ground truth is moved into the frame
  where that camera is the canonical one (:func:`monorecon.train.triposr_trainer.relative_cameras`), i.e. the frame
  the model reconstructs in.
* **Methods.** A TripoSR model (or a weights path / folder given to :func:`monorecon.api.load_model`) or any other
  :class:`monorecon.api.ReconstructionModel` (``docs/extending.md``), the baselines ``"sphere"`` and
  ``"inflation"`` (:mod:`monorecon.eval.baselines`), or any callable ``(rgba (H, W, 4) float) -> Mesh``. The
  model gets the RGBA input composited on grey 0.5 as in training, framed as rendered (the object's bounding
  sphere centred at a fixed size) or, with ``prepare``, as ``reconstruct`` frames a photo (bounding box centred at
  the model's ``foreground_ratio``; the ground truth moved to match). Other methods run elsewhere:
  :func:`export_inputs` writes the cases' input images, :class:`PredictionFolder` scores the meshes made from them
  (frame-free metrics only).
* **Metrics** (SPEC §5): both surfaces sampled with ``n_points`` points, normalised to the unit box and aligned by
  rotation search + ICP (:mod:`monorecon.eval.align`), then Chamfer distance and F-score at 0.1 / 0.2 / 0.5
  (:mod:`monorecon.eval.metrics`); the volume IoU of the two solids as they lie in the world (``volume_iou``, a 64^3
  grid; a shape too shallow loses there, not in the F-score; NaN, not scored, where the ground truth or the
  prediction is not a closed surface (:attr:`~monorecon.core.mesh.Mesh.is_closed`): an open one bounds no solid, and
  its "volume" would be whatever the ray votes make of its holes); for every method the input-view
  mask IoU of the mesh's silhouette (``mesh_mask_iou``) and the depth bias along the view (``depth_ratio``, 1 = right;
  the mean is geometric); for models also the input-view mask IoU, PSNR and SSIM of the volume render (``mask_iou``,
  ``psnr``, ``ssim``); for meshes with colours the PSNR / SSIM of the mesh rendered unlit over white against the input
  view (``mesh_psnr``, ``mesh_ssim``) and, for synthetic objects, against their other views (``novel_psnr``,
  ``novel_ssim``, mean over views; geometry errors count too); for every method the mask IoU of the mesh's silhouette
  in the other views (``novel_mask_iou``, mean over views: it sees a shape too shallow or too deep, which the
  F-score's normalisation and alignment forgive in part). Models are cut to the input silhouette's cone (``carve``, as
  ``monorecon reconstruct`` does by default; filled too where the model's ``silhouette_fill`` says) and coloured by
  the input where it sees the surface (``project_input``); unlike ``reconstruct`` the harness keeps small disconnected
  pieces (dropping those under 1 % of the faces changed the bundled model's F@0.1 by -0.0005 on validation objects and
  -0.003 on the real meshes, model card). A method that returns no surface (no faces, or none of any area) scores
  F = 0 and mask IoUs of 0 (an empty silhouette), its Chamfer distance, depth ratio and PSNR / SSIM not defined
  (NaN), and is counted as a failure; so is a case whose method or scoring raises (the others are still scored; the
  error is named in a warning and in the summary's ``errors``). Case IDs are unique: mesh files of one stem, or
  azimuths of one view, are refused.
* **Outputs** in ``out_dir`` (checked before any scoring; nothing is written where one of them cannot be):
  ``per_object.csv`` (columns in a fixed order), ``summary.md`` (mean per class and overall, and the protocol),
  ``summary.json`` (the same, the protocol under ``protocol``: how the report was made), and ``best_worst.png``
  (rows: the best and worst cases by F-score@0.1; columns: input, prediction from the input view, prediction from the
  side, ground truth from the side).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..api import (
    ReconstructionModel,
    input_view_weight,
    model_foreground_ratio,
    model_mesh_threshold,
    model_silhouette_fill,
)
from ..core.cameras import PerspectiveCameras, orbit_c2w
from ..core.checks import SEED_RANGE, SkippedInputWarning, check_int, check_positive
from ..core.mesh import Mesh
from ..core.projection import project_image_colours
from ..core.raster import rasterize
from ..io.atomic import atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_json, check_output_files
from ..io.mesh_io import LOADABLE_FORMATS, load_mesh
from ..models.triposr.model import INPUT_DISTANCE, INPUT_FOV_DEG, input_camera
from ..parallel import MAX_WORKERS, map_in_processes
from ..preprocess import reframe_views
from .align import align_meshes, apply_transform
from .baselines import inflation_baseline, sphere_baseline
from .compare import PROTOCOL_KEYS
from .metrics import chamfer_and_fscore, depth_ratio, mask_iou, psnr, ssim, volume_iou

__all__ = ["EvalCase", "PredictionFolder", "evaluate", "export_inputs", "load_cases", "shape_scores"]

MESH_SUFFIXES = {f".{fmt}" for fmt in LOADABLE_FORMATS}
"""Mesh files the harness reads (ground truths of a mesh folder, predictions)."""
THRESHOLDS = (0.1, 0.2, 0.5)
MIN_POINTS = 100
"""Fewest surface points per shape that Chamfer / F-scores are computed from."""
MAX_POINTS = 1_000_000
"""Most surface points per shape (nearest neighbours of 1e6 points take ~10 s; 1e8 would run for hours)."""
#: Marching-cubes grids a model may be scored at.
MC_RESOLUTION_RANGE = (8, 1024)

REPORT_FILES = ("per_object.csv", "summary.md", "summary.json", "best_worst.png")
"""The files of a report folder (the grid last: not written without grid cases)."""
VOLUME_IOU_RESOLUTION = 64
"""Default side of the voxel grid of the volume IoU (cells of 1/64 of the shapes' common box)."""
VOLUME_IOU_RESOLUTION_RANGE = (8, 256)
"""Accepted sides of that grid (0 turns the volume IoU off)."""
MESH_LIGHT = {"direction": [0.4, 0.8, 0.6], "ambient_color": [0.4] * 3, "diffuse_color": [0.6] * 3,
              "specular_color": [0.15] * 3}  # fmt: skip
"""The light fixed in the world for the real-mesh input views and the report grid (front, above, right)."""


@dataclass
class EvalCase:
    """One object to reconstruct.

    Attributes:
        object_id, class_name: identifiers.
        rgba: (H, W, 4) float input image (straight alpha) seen by the canonical camera.
        gt_mesh: ground truth in the canonical frame (the input camera is ``orbit_c2w(0, 0, 1.9)``).
        views: the object's other views, ``(c2w (V, 4, 4) in the canonical frame, vertical fov in degrees (V,),
            rgba (V, H, W, 4))``, or None.
        coloured: whether the views show the object's colours (synthetic objects) rather than an untextured mesh
            under a fixed light (mesh folders): only then are colours scored against them.
    """

    object_id: str
    class_name: str
    rgba: np.ndarray
    gt_mesh: Mesh
    views: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    coloured: bool = True


def _transform_mesh(mesh: Mesh, transform: torch.Tensor) -> Mesh:
    verts = mesh.verts @ transform[:3, :3].T.to(mesh.verts) + transform[:3, 3].to(mesh.verts)
    return Mesh(verts, mesh.faces, vertex_colors=mesh.vertex_colors)


def _synthetic_cases(data_dir: Path, split: str, max_objects: int | None, input_view: int) -> list[EvalCase]:
    from ..data import MultiViewDataset
    from ..train.triposr_trainer import relative_cameras

    dataset = MultiViewDataset(data_dir, split=split)
    cases = []
    for index in range(len(dataset) if max_objects is None else min(max_objects, len(dataset))):
        try:
            item = dataset[index]
        except ValueError as err:  # a file that passed the reader's checks but does not decode (the error names it)
            warnings.warn(f"skipping an object: {err}", SkippedInputWarning, stacklevel=2)
            continue
        c2w = item["c2w"][input_view]
        if not math.isclose(float(c2w[:3, 3].norm()), INPUT_DISTANCE, abs_tol=1e-3):
            distance = float(c2w[:3, 3].norm())
            message = (
                f"skipping object {item['object_id']}: input camera at distance {distance:.4g}, not "
                f"{INPUT_DISTANCE} (the dataset was made with other cameras)"
            )
            warnings.warn(message, SkippedInputWarning, stacklevel=2)
            continue
        others = [i for i in range(len(item["c2w"])) if i != input_view]
        world_to_canonical, views_c2w = relative_cameras(c2w[None], item["c2w"][None, others], INPUT_DISTANCE)
        gt = _transform_mesh(load_mesh(item["mesh_path"]), world_to_canonical[0])
        rgba = item["images"][input_view].numpy()
        views = (views_c2w[0], item["fov_y_deg"][others], item["images"][others]) if others else None
        cases.append(EvalCase(item["object_id"], item["class_name"], rgba, gt, views))
    return cases


def _mesh_cases(
    data_dir: Path, size: int, azimuths: Sequence[float], elevation: float, max_objects: int | None
) -> list[EvalCase]:
    from ..data import load_normalized_mesh
    from ..data.synth import render_views
    from ..train.triposr_trainer import relative_cameras

    if not azimuths or not all(math.isfinite(a) for a in azimuths):
        raise ValueError(f"mesh azimuths must be one or more finite angles, got {list(azimuths)}")
    for first, second in itertools.combinations(azimuths, 2):
        turn = (first - second) % 360.0
        if f"{first:g}" == f"{second:g}" or min(turn, 360.0 - turn) < 1e-6:  # cases are named <mesh>@<azimuth:g>
            raise ValueError(f"mesh azimuths must be distinct views: {first!r} and {second!r} are the same view")
    if not -90.0 < elevation < 90.0:  # the look-at camera is undefined at the poles
        raise ValueError(f"mesh elevation must be strictly between -90 and 90 degrees, got {elevation}")
    files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in MESH_SUFFIXES)[:max_objects]
    if not files:
        raise ValueError(f"no mesh files ({', '.join(sorted(MESH_SUFFIXES))}) in {data_dir}")
    stems = Counter(path.stem for path in files)  # a case is named by its file's stem
    if clashes := [path.name for path in files if stems[path.stem] > 1]:
        raise ValueError(f"{', '.join(clashes)} in {data_dir} would be cases of the same ID: keep one file per name")
    # Per case: the input view, then the 7 others at 45-degree steps (all rendered in the world frame).
    all_azimuths = torch.tensor([[a + 45.0 * k for k in range(8)] for a in azimuths], dtype=torch.float32)
    c2w = orbit_c2w(all_azimuths.reshape(-1), elevation, INPUT_DISTANCE).reshape(len(azimuths), 8, 4, 4)
    world_to_canonical, canonical_c2w = relative_cameras(c2w[:, 0], c2w[:, 1:], INPUT_DISTANCE)
    views = [{"c2w": matrix.tolist(), "fov_y_deg": INPUT_FOV_DEG} for matrix in c2w.reshape(-1, 4, 4)]
    fov = torch.full((7,), INPUT_FOV_DEG)
    cases = []
    for path in files:
        try:
            mesh = load_normalized_mesh(path)
        except ValueError as err:
            warnings.warn(f"skipping mesh {path}: {err}", SkippedInputWarning, stacklevel=2)
            continue
        images = render_views(mesh, views, size, MESH_LIGHT)["rgba"].reshape(len(azimuths), 8, size, size, 4)
        for k, azimuth in enumerate(azimuths):
            name = path.stem if len(azimuths) == 1 else f"{path.stem}@{azimuth:g}"
            others = (canonical_c2w[k], fov, torch.as_tensor(images[k, 1:]))
            gt = _transform_mesh(mesh, world_to_canonical[k])
            cases.append(EvalCase(name, "real", np.asarray(images[k, 0]), gt, others, coloured=False))
    return cases


def load_cases(
    data_dir: str | os.PathLike,
    *,
    split: str = "all",
    max_objects: int | None = None,
    input_view: int = 0,
    image_size: int = 128,
    mesh_azimuths: Sequence[float] = (30.0,),
    mesh_elevation: float = 15.0,
) -> list[EvalCase]:
    """Evaluation cases of a synthetic dataset folder or of a folder of mesh files (see the module docstring).

    An object or mesh file that cannot be read is left out with a :class:`~monorecon.core.checks.SkippedInputWarning`
    naming it.

    Raises:
        ValueError: no folder, no readable object in it, or bad view settings.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"evaluation data {data_dir} is a file, not a folder (give the folder that holds the data)")
    if not data_dir.is_dir():
        raise ValueError(f"evaluation data folder not found: {data_dir}")
    if max_objects is not None:
        check_int(max_objects, "max_objects", 1, 1 << 31)
    if (data_dir / "index.json").is_file():
        cases = _synthetic_cases(data_dir, split, max_objects, input_view)
    else:
        cases = _mesh_cases(data_dir, image_size, mesh_azimuths, mesh_elevation, max_objects)
    if not cases:
        raise ValueError(f"no usable object in {data_dir} (the warnings above name the files)")
    repeated = [case_id for case_id, count in Counter(case.object_id for case in cases).items() if count > 1]
    if repeated:  # a report (and eval-compare) tells cases apart by their ID
        raise ValueError(f"case ID {repeated[0]} appears more than once in {data_dir}")
    return cases


def _prepared_case(case: EvalCase, foreground_ratio: float) -> EvalCase:
    """``case`` with its input framed as ``reconstruct`` frames a photo and its ground truth moved to match."""
    rgba = torch.from_numpy(case.rgba).float()[None]
    framed, zoom, shift = reframe_views(rgba, torch.tensor([foreground_ratio]), INPUT_DISTANCE, INPUT_FOV_DEG)
    similarity = torch.eye(4)
    similarity[:3, :3] *= zoom[0]
    similarity[:3, 3] = shift[0]
    views = None
    if case.views is not None:  # a camera moved by the same similarity (same orientation) sees the same image
        c2w = case.views[0].clone()
        c2w[:, :3, 3] = c2w[:, :3, 3] * zoom[0] + shift[0]
        views = (c2w, *case.views[1:])
    return dataclasses.replace(
        case, rgba=framed[0].numpy(), gt_mesh=_transform_mesh(case.gt_mesh, similarity), views=views
    )


def export_inputs(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "all",
    max_objects: int | None = None,
    mesh_azimuths: Sequence[float] = (30.0,),
    mesh_elevation: float = 15.0,
) -> list[Path]:
    """Write the input image of every case as ``out_dir/ID.png`` (RGBA, straight alpha; the images the harness gives
    a model), so that another method can reconstruct them and be scored with :class:`PredictionFolder`.

    The arguments choose the cases as in :func:`evaluate`. Returns the written paths, in case order.
    """
    from ..io.images import save_image

    cases = load_cases(
        data_dir, split=split, max_objects=max_objects, mesh_azimuths=mesh_azimuths, mesh_elevation=mesh_elevation
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_image(case.rgba, out_dir / f"{case.object_id}.png") for case in cases]


# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelSettings:
    """How the harness runs a TripoSR model (the model arguments of :func:`evaluate`)."""

    mc_resolution: int
    threshold: float | None
    render_size: int
    carve: bool
    fill: bool | None
    project_input: bool


class _ModelMethod:
    """A model (:class:`monorecon.api.ReconstructionModel`): mesh by marching cubes, plus, for one with a ``render``
    method (TripoSR's volume render), the input view rendered for mask IoU / PSNR / SSIM.

    With ``carve`` the field is cut to the input silhouette's hull (:class:`monorecon.core.carving.SilhouetteHull`)
    for both, and filled where ``fill`` says (None: the model's setting), as :func:`monorecon.api.reconstruct` does
    by default (:func:`monorecon.api.input_view_weight`); with ``project_input`` the mesh's colours are the input
    image's where it sees the surface (:func:`monorecon.core.projection.project_image_colours`), as there too.
    """

    def __init__(self, model, settings: _ModelSettings) -> None:
        from ..models.triposr import TripoSRModel

        if settings.threshold is None:
            settings = dataclasses.replace(settings, threshold=model_mesh_threshold(model))
        if settings.fill is None:
            settings = dataclasses.replace(settings, fill=model_silhouette_fill(model))
        self.model, self.settings = model, settings
        name = "model" if isinstance(model, TripoSRModel) else type(model).__name__
        self.name = name if settings.carve else f"{name} (no carving)"

    def protocol(self) -> dict[str, Any]:
        """The settings that make this method's meshes, for the report (the weights by their hash: every TripoSR
        model is named just "model", and its weights files are named alike)."""
        record = dataclasses.asdict(self.settings)
        if isinstance(self.model, torch.nn.Module):
            record["weights_sha256"] = _weights_hash(self.model)
        return record

    @torch.no_grad()
    def __call__(self, case: EvalCase) -> tuple[Mesh | None, dict[str, float]]:
        rgba = torch.from_numpy(case.rgba).float()
        rgb = rgba[..., :3] * rgba[..., 3:] + 0.5 * (1.0 - rgba[..., 3:])
        code = self.model.encode(rgb[None])
        settings = self.settings
        hull = (
            input_view_weight(self.model, code, rgba[..., 3], settings.threshold, settings.fill)
            if settings.carve
            else None
        )
        extras = {} if not hasattr(self.model, "render") else self._input_view_scores(code, rgba, hull)
        try:
            mesh = self.model.extract_mesh(
                code, settings.mc_resolution, settings.threshold, method="coarse_to_fine", carve=hull
            )
        except ValueError:  # the density never crosses the threshold: no surface
            mesh = None
        if mesh is not None and settings.project_input:
            mesh, _ = project_image_colours(mesh, input_camera(rgb.shape[0]), rgb, rgba[..., 3])
        return mesh, extras

    def _input_view_scores(self, code: torch.Tensor, rgba: torch.Tensor, hull) -> dict[str, float]:
        """Mask IoU, PSNR and SSIM of the model's volume render of the input view against the (S, S, 4) input."""
        size = self.settings.render_size
        render = {key: value.cpu() for key, value in self.model.render(code, input_camera(size), carve=hull).items()}
        target = _resize(rgba, size)
        target_rgb = target[..., :3] * target[..., 3:] + (1.0 - target[..., 3:])  # white, as the renderer
        return {
            "mask_iou": mask_iou(render["opacity"][0, ..., 0], target[..., 3]),
            "psnr": psnr(render["rgb"][0].clamp(0, 1), target_rgb),
            "ssim": ssim(render["rgb"][0].clamp(0, 1), target_rgb),
        }


def _weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _FunctionMethod:
    """A function ``input view -> Mesh`` as a method (a class, so that workers can receive it): a single-view
    baseline takes the (H, W) alpha (``alpha_only``), a method of one's own the (H, W, 4) RGBA."""

    def __init__(
        self, function: Callable[[np.ndarray], Mesh], name: str, alpha_only: bool = False, settings: dict | None = None
    ) -> None:
        self.function, self.name, self.alpha_only = function, name, alpha_only
        self.settings = settings or {}

    def protocol(self) -> dict[str, Any]:
        """The function's settings, for the report (a baseline's; none for a function of one's own)."""
        return dict(self.settings)

    def __call__(self, case: EvalCase) -> tuple[Mesh, dict[str, float]]:
        return self.function(case.rgba[..., 3] if self.alpha_only else case.rgba), {}


class PredictionFolder:
    """Meshes made by another method, one per case, scored like the model's (external methods, other code bases).

    The mesh of case ``ID`` is ``folder/ID.glb`` (or ``.obj`` / ``.ply`` / ... , :data:`MESH_SUFFIXES`) or
    ``folder/ID/mesh.glb`` (what ``monorecon reconstruct`` writes for an input ``ID.png``); the inputs are those of
    :func:`export_inputs`. A case without a mesh, or whose file cannot be read, is reported (a warning naming it) and
    scored as a failure (F = 0), as a model that returns no surface. Only the frame-free metrics are computed
    (Chamfer distance and F-scores after normalisation and alignment): another method's output frame and scale are
    unknown, so volume IoU, the mesh's input-view mask IoU and the depth ratio are left out (the report's grid shows
    the meshes as stored: from the input view only if the method writes the canonical frame, as ``reconstruct`` does).

    Args:
        folder: the predictions folder.

    Raises:
        ValueError: the folder does not exist.
    """

    frame_free = True

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"predictions folder not found: {self.folder}")
        self.name = f"predictions in {self.folder}"

    def protocol(self) -> dict[str, Any]:
        """The predictions' folder, for the report."""
        return {"folder": str(self.folder.absolute())}

    def path_of(self, object_id: str) -> Path | None:
        """The mesh file of case ``object_id``, or None when the folder has none."""
        for stem in (self.folder / object_id, self.folder / object_id / "mesh"):
            for suffix in sorted(MESH_SUFFIXES):
                path = stem.with_name(stem.name + suffix)
                if path.is_file():
                    return path
        return None

    def __call__(self, case: EvalCase) -> tuple[Mesh | None, dict[str, float]]:
        path = self.path_of(case.object_id)
        if path is None:
            warnings.warn(f"no prediction for {case.object_id} in {self.folder}: scored as a failure", stacklevel=2)
            return None, {}
        try:
            return load_mesh(path), {}
        except ValueError as err:
            warnings.warn(f"{err}: {case.object_id} scored as a failure", stacklevel=2)
            return None, {}


def _resolve_method(method: Any, settings: _ModelSettings, inflation: tuple[float, str]):
    from ..models.triposr import TripoSRModel

    if isinstance(method, PredictionFolder):
        return method
    if isinstance(method, str) and method == "sphere":
        return _FunctionMethod(sphere_baseline, method, alpha_only=True)
    if isinstance(method, str) and method == "inflation":
        thickness, profile = inflation
        if not (math.isfinite(thickness) and thickness > 0):
            raise ValueError(f"inflation_thickness must be a positive number, got {thickness}")
        if profile not in ("cone", "round"):
            raise ValueError(f"inflation_profile must be 'cone' or 'round', got {profile!r}")
        inflate = functools.partial(inflation_baseline, thickness_scale=thickness, profile=profile)
        variant = [] if profile == "cone" else [profile]
        variant += [] if thickness == 1.0 else [f"{thickness:g}"]
        name = f"inflation ({' '.join(variant)})" if variant else "inflation"
        return _FunctionMethod(
            inflate, name, alpha_only=True, settings={"inflation_thickness": thickness, "inflation_profile": profile}
        )
    if isinstance(method, TripoSRModel):
        return _ModelMethod(method.eval(), settings)
    if isinstance(method, ReconstructionModel):
        return _ModelMethod(method, settings)
    if isinstance(method, str | os.PathLike):
        from ..api import load_model

        return _ModelMethod(load_model(method), settings)
    if callable(method):
        return _FunctionMethod(method, getattr(method, "__name__", "callable"))
    raise ValueError(
        f"cannot evaluate {method!r}: give a model (encode, query, extract_mesh), a weights path, 'sphere', "
        "'inflation', a function rgba -> Mesh or a PredictionFolder"
    )


# --------------------------------------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------------------------------------
def evaluate(
    model_or_method: Any,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_points: int = 10000,
    *,
    split: str = "all",
    max_objects: int | None = None,
    mc_resolution: int = 128,
    threshold: float | None = None,
    render_size: int = 64,
    carve: bool = True,
    fill: bool | None = None,
    project_input: bool = True,
    volume_iou_resolution: int = VOLUME_IOU_RESOLUTION,
    prepare: bool = False,
    n_grid_cases: int = 3,
    mesh_azimuths: Sequence[float] = (30.0,),
    mesh_elevation: float = 15.0,
    seed: int = 0,
    inflation_thickness: float = 1.0,
    inflation_profile: str = "cone",
    workers: int = 1,
    progress: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model or baseline on a folder of objects and write the report (see the module docstring).

    Args:
        model_or_method: TripoSR model, weights path/folder, another :class:`~monorecon.api.ReconstructionModel`,
            ``"sphere"``, ``"inflation"``, a callable ``rgba -> Mesh`` or a :class:`PredictionFolder`.
        data_dir: synthetic dataset folder or folder of meshes.
        out_dir: report folder (checked first, created once every case is scored; its files are refused up front
            where a folder has their name).
        n_points: surface points per shape for Chamfer / F-score.
        split: dataset split to use (synthetic datasets).
        max_objects: evaluate only the first N objects.
        mc_resolution, threshold: marching cubes grid and density iso-level for models (None: the model's own).
        render_size: side of the input-view renders used for mask IoU / PSNR (volume render, models) and the
            mesh's input-view mask IoU (all methods).
        carve: cut a model's field to the input silhouette's hull (as ``monorecon reconstruct`` does by default).
        fill: with ``carve``, fill the input silhouette (None: the model's own setting; see
            :class:`monorecon.api.ReconstructOptions`).
        project_input: models only: colour the surface the input sees with the input image and map the rest to its
            colours (as ``monorecon reconstruct`` does by default).
        volume_iou_resolution: grid side of the volume IoU of prediction and ground truth, both as they lie in the
            world (not normalised nor aligned: a shape too shallow or misplaced loses there; 0: not computed; the
            meshes should be closed, :func:`~monorecon.eval.metrics.volume_iou`).
        prepare: models only: frame each input as ``reconstruct`` frames a photo (bounding box centred, its longer
            side the model's ``foreground_ratio`` of the image; :func:`monorecon.preprocess.reframe_views`) and move
            the ground truth by the matching similarity, instead of giving the model the render's own framing (the
            object's bounding sphere centred at a fixed size, the framing of the training renders).
        n_grid_cases: best and worst cases shown in ``best_worst.png``.
        mesh_azimuths: input-view azimuths (degrees) of each mesh of a mesh folder, one case per azimuth.
        mesh_elevation: their elevation (degrees, strictly between -90 and 90).
        seed: sampling / alignment seed.
        inflation_thickness, inflation_profile: the ``"inflation"`` baseline's ``thickness_scale`` and ``profile``
            (:func:`~monorecon.eval.baselines.inflation_baseline`). The baseline as defined, 1 and ``"cone"``, was
            never tuned; on the validation meshes 1.25 (cone) and 0.8 (``"round"``) score higher (model card).
        workers: cases scored side by side by this many processes (:func:`monorecon.parallel.map_in_processes`,
            one torch thread each; the method is sent to each once). The report is the same for any number, up to
            the float rounding of a model's multi-threaded products (one process uses all threads). A callable method
            must then be picklable (a module-level function), and a model must be on the CPU.
        progress: tqdm progress bar.
        source: where the method came from (e.g. the weights path the caller loaded), recorded in the protocol.

    Returns:
        Summary dict: ``method``, ``n_objects``, ``n_failed`` (cases without a surface, or whose method or scoring
        raised), ``mean`` (metric -> mean over objects), ``n_scored`` (metric -> cases where it is defined),
        ``per_class``, ``n_skipped`` (objects or mesh files left out as unusable, each named by a
        :class:`~monorecon.core.checks.SkippedInputWarning`), ``errors`` (case -> the error that failed it, each
        also named by a warning) and ``protocol`` (how the report was made: the data, the cases' views, the scoring
        settings of :data:`~monorecon.eval.compare.PROTOCOL_KEYS`, ``prepare``, and ``method``: its name,
        ``source`` and settings, for a model the mesh settings and the SHA-256 of its weights).

    Raises:
        ValueError: bad arguments, unusable data, or a report folder that cannot be written (checked first).
    """
    check_points(n_points)
    check_int(mc_resolution, "mc_resolution", *MC_RESOLUTION_RANGE)
    if threshold is not None:
        check_positive(threshold, "threshold")
    check_int(workers, "workers", 1, MAX_WORKERS)
    check_int(seed, "seed", *SEED_RANGE)
    check_volume_iou_resolution(volume_iou_resolution)
    settings = _ModelSettings(mc_resolution, threshold, render_size, carve, fill, project_input)
    method = _resolve_method(model_or_method, settings, (inflation_thickness, inflation_profile))
    if workers > 1 and isinstance(method, _ModelMethod) and str(getattr(method.model, "device", "cpu")) != "cpu":
        raise ValueError("workers above 1 run copies of the model on the CPU; with a GPU use workers=1")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"report folder {out_dir} is a file")
    # Before the scoring, whose result would otherwise be lost, and before any report file is written.
    check_output_files(out_dir, REPORT_FILES if n_grid_cases > 0 else REPORT_FILES[:-1])
    try:
        with warnings.catch_warnings(record=True) as caught:  # counted in the summary, then shown
            warnings.simplefilter("always")
            cases = load_cases(
                data_dir, split=split, max_objects=max_objects, mesh_azimuths=mesh_azimuths,
                mesh_elevation=mesh_elevation,
            )  # fmt: skip
    finally:  # also when no object is left: the error refers to these warnings
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)
    n_skipped = sum(issubclass(warning.category, SkippedInputWarning) for warning in caught)
    if prepare:
        if not isinstance(method, _ModelMethod):
            raise ValueError("prepare applies to models (their foreground_ratio frames the inputs)")
        cases = [_prepared_case(case, model_foreground_ratio(method.model)) for case in cases]
    if isinstance(method, PredictionFolder) and not any(method.path_of(case.object_id) for case in cases):
        example = cases[0].object_id
        raise ValueError(
            f"no mesh in {method.folder} matches a case of {data_dir} "
            f"(expected e.g. {example}.glb or {example}/mesh.glb)"
        )
    scoring = _Scoring(n_points, seed, render_size, volume_iou_resolution)
    protocol = {
        "data": str(Path(data_dir).resolve()), "split": split, "max_objects": max_objects,
        "mesh_azimuths": [float(a) for a in mesh_azimuths], "mesh_elevation": float(mesh_elevation),
        **dataclasses.asdict(scoring), "thresholds": list(THRESHOLDS), "prepare": prepare,
        "method": {"name": method.name, **({"source": str(source)} if source is not None else {}), **method.protocol()},
    }  # fmt: skip
    bar = functools.partial(tqdm, total=len(cases), desc=f"eval {method.name}", disable=not progress)
    results = list(bar(map_in_processes(_score_recording_warnings, cases, workers, shared=(method, scoring))))
    rows = [row for row, _, _, _ in results]
    predictions = {case.object_id: mesh for case, (_, mesh, _, _) in zip(cases, results, strict=True)}
    errors = {case.object_id: error for case, (_, _, error, _) in zip(cases, results, strict=True) if error}
    for _, _, _, caught in results:  # a worker's warnings (e.g. a missing prediction), shown here in case order
        for category, message in caught:
            warnings.warn(message, category, stacklevel=2)
    summary = {**_summarise(method.name, rows), "n_skipped": n_skipped, "errors": errors, "protocol": protocol}
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a run that fails while scoring leaves no empty folder
    _write_csv(out_dir / "per_object.csv", rows)
    _write_markdown(out_dir / "summary.md", summary, str(data_dir))
    atomic_write_json(out_dir / "summary.json", summary)
    _write_grid(out_dir / "best_worst.png", cases, rows, predictions, n_grid_cases)
    return summary


def shape_scores(
    pred: Mesh, gt: Mesh, *, n_points: int = 10_000, seed: int = 0, search: bool = True, volume_iou_resolution: int = 0
) -> dict[str, float]:
    """Chamfer distance and F-scores of ``pred`` against ``gt``, as :func:`evaluate` scores a case.

    Both surfaces are sampled with ``n_points`` points and normalised to the unit box, the prediction is aligned to
    the ground truth (:func:`monorecon.eval.align.align_meshes`), then scored at :data:`THRESHOLDS`
    (:func:`monorecon.eval.metrics.chamfer_and_fscore`; CLI: ``monorecon metrics MESH REFERENCE``).

    Args:
        pred, gt: meshes, in any scales and positions. Each is normalised to the box of its own frame, so frames
            that differ by other than quarter turns give boxes of other proportions and lower scores.
        search: rotation search + ICP (True) or ICP only from the identity (shapes already in the same frame).
        volume_iou_resolution: also the volume IoU of the two solids, normalised and aligned as the points are, on
            a grid of this side (:func:`monorecon.eval.metrics.volume_iou`); 0: not computed.

    Returns:
        ``{"chamfer", "fscore@t", "precision@t", "recall@t"}`` for each threshold ``t`` of :data:`THRESHOLDS`, and
        ``"volume_iou"`` when asked for (NaN when ``pred`` or ``gt`` is not a closed surface: it bounds no solid).

    Raises:
        ValueError: points outside [:data:`MIN_POINTS`, :data:`MAX_POINTS`], a seed outside
            :data:`~monorecon.core.checks.SEED_RANGE` or a volume IoU grid outside :data:`VOLUME_IOU_RESOLUTION_RANGE`.
    """
    check_points(n_points)
    check_int(seed, "seed", *SEED_RANGE)
    check_volume_iou_resolution(volume_iou_resolution)
    pred_points, gt_points, pred_transform, gt_transform = align_meshes(
        pred, gt, n_points=n_points, seed=seed, search=search
    )
    scores = chamfer_and_fscore(pred_points, gt_points, THRESHOLDS)
    if volume_iou_resolution:
        moved_pred, moved_gt = (
            Mesh(torch.from_numpy(apply_transform(mesh.verts.detach().double().cpu().numpy(), transform)), mesh.faces)
            for mesh, transform in ((pred, pred_transform), (gt, gt_transform))
        )
        scores["volume_iou"] = _scored_volume_iou(moved_pred, moved_gt, volume_iou_resolution)
    return scores


def _scored_volume_iou(pred: Mesh | None, gt: Mesh, resolution: int) -> float:
    """The volume IoU as reports give it: NaN (not scored) when ``gt`` or ``pred`` is not closed, as an open surface
    bounds no solid (its occupancy would be whatever the ray votes make of the holes, and change with the alignment's
    seed); 0 for a failed case (``pred`` None)."""
    if not gt.is_closed:
        return math.nan
    if pred is None:
        return 0.0
    return volume_iou(pred, gt, resolution) if pred.is_closed else math.nan


def check_points(n_points: int, name: str = "n_points") -> None:
    """Raise ValueError unless ``n_points`` (surface points per shape) lies in [:data:`MIN_POINTS`,
    :data:`MAX_POINTS`]; ``name`` names it."""
    check_int(n_points, name, MIN_POINTS, MAX_POINTS)


def check_volume_iou_resolution(resolution: int, name: str = "volume IoU grid side") -> None:
    """Raise ValueError unless ``resolution`` is 0 (off) or in :data:`VOLUME_IOU_RESOLUTION_RANGE`."""
    if resolution:
        check_int(resolution, name, *VOLUME_IOU_RESOLUTION_RANGE)


@dataclass(frozen=True)
class _Scoring:
    """How :func:`evaluate` scores a case (its scoring arguments)."""

    n_points: int
    seed: int
    render_size: int
    volume_iou_resolution: int


def _score_case(method: Callable, case: EvalCase, scoring: _Scoring) -> tuple[dict[str, Any], Mesh | None, str | None]:
    """Run ``method`` on one case and score its mesh: (the report's row, the mesh, the error that made the case fail
    or None). A method that raises, or a mesh that cannot be scored, fails this case only (a warning names it)."""
    started = time.perf_counter()
    names = {"object_id": case.object_id, "class": case.class_name}
    error = None
    try:
        mesh, extras = method(case)
        if mesh is not None and mesh.num_faces and float(mesh.face_areas.sum()) == 0.0:
            mesh = None  # every face degenerate: no surface, as no faces at all
        scores = _failed_scores(method, case, scoring) if mesh is None else _mesh_scores(method, case, mesh, scoring)
        row: dict[str, Any] = {**names, **scores, **extras}
    except Exception as err:  # the run goes on with the other cases; the error is reported
        error = f"{type(err).__name__}: {err}".splitlines()[0]
        warnings.warn(f"case {case.object_id} scored as a failure: {error}", stacklevel=2)
        mesh = None
        row = {**names, **_failed_scores(method, case, scoring)}
    row["seconds"] = time.perf_counter() - started
    return row, mesh, error


def _failed_scores(method: Callable, case: EvalCase, scoring: _Scoring) -> dict[str, float]:
    """The scores of a case without a surface: F = 0, no Chamfer distance nor depth ratio (NaN: not defined), and
    mask IoUs of 0 (an empty silhouette against the object's)."""
    scores = {"failed": 1, "chamfer": math.nan, **{f"fscore@{t:g}": 0.0 for t in THRESHOLDS}}
    if not getattr(method, "frame_free", False):
        if scoring.volume_iou_resolution:
            scores["volume_iou"] = _scored_volume_iou(None, case.gt_mesh, scoring.volume_iou_resolution)
        scores["mesh_mask_iou"] = 0.0
        if case.views is not None:
            scores["novel_mask_iou"] = 0.0
        scores["depth_ratio"] = math.nan
    return scores


def _mesh_scores(method: Callable, case: EvalCase, mesh: Mesh, scoring: _Scoring) -> dict[str, float]:
    """The scores of a case's mesh (see the module docstring)."""
    shape = shape_scores(mesh, case.gt_mesh, n_points=scoring.n_points, seed=scoring.seed)
    scores = {"failed": 0, "chamfer": shape["chamfer"], **{f"fscore@{t:g}": shape[f"fscore@{t:g}"] for t in THRESHOLDS}}
    if not getattr(method, "frame_free", False):  # these need the prediction in the canonical frame
        if scoring.volume_iou_resolution:
            scores["volume_iou"] = _scored_volume_iou(mesh, case.gt_mesh, scoring.volume_iou_resolution)
        scores["mesh_mask_iou"] = _mesh_mask_iou(mesh, case.rgba[..., 3], scoring.render_size)
        if case.views is not None:
            scores["novel_mask_iou"] = _novel_mask_iou(mesh, case.views, scoring.render_size)
        scores["depth_ratio"] = depth_ratio(mesh, case.gt_mesh)
        if mesh.vertex_colors is not None or mesh.texture is not None:
            scores.update(_colour_scores(mesh, case))
    return scores


def _score_recording_warnings(
    job: tuple[Callable, _Scoring], case: EvalCase
) -> tuple[dict[str, Any], Mesh | None, str | None, list[tuple[type[Warning], str]]]:
    """:func:`_score_case`, its warnings returned (a worker's own would bypass the CLI's one-line printer)."""
    method, scoring = job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row, mesh, error = _score_case(method, case, scoring)
    return row, mesh, error, [(warning.category, str(warning.message)) for warning in caught]


_COLUMNS = (
    "failed", "chamfer", *(f"fscore@{t:g}" for t in THRESHOLDS), "volume_iou", "mesh_mask_iou", "novel_mask_iou",
    "depth_ratio", "mask_iou", "psnr", "ssim", "mesh_psnr", "mesh_ssim", "novel_psnr", "novel_ssim", "seconds",
)  # fmt: skip
"""The report's columns after ``object_id`` and ``class``, in this order (those no case has are left out)."""


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The columns the rows have, in :data:`_COLUMNS` order (a fixed order, whichever case comes first)."""
    present = {key for row in rows for key in row} - {"object_id", "class"}
    return [key for key in _COLUMNS if key in present] + sorted(present - set(_COLUMNS))


# Ratios average geometrically: a prediction twice too deep and one half as deep cancel out.
_GEOMETRIC_MEAN_KEYS = ("depth_ratio",)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _mean(values: list[float], geometric: bool = False) -> float:
    finite = [v for v in values if _finite(v) and (v > 0 or not geometric)]
    if not finite:
        return math.nan
    return float(np.exp(np.mean(np.log(finite)))) if geometric else float(np.mean(finite))


def _summarise(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in _metric_keys(rows) if k not in ("failed", "seconds")]
    classes = sorted({r["class"] for r in rows})
    per_class = {
        c: {
            "n": sum(r["class"] == c for r in rows),
            **{k: _mean([r.get(k) for r in rows if r["class"] == c], k in _GEOMETRIC_MEAN_KEYS) for k in keys},
        }
        for c in classes
    }
    return {
        "method": name,
        "n_objects": len(rows),
        "n_failed": int(sum(r["failed"] for r in rows)),
        "mean": {k: _mean([r.get(k) for r in rows], k in _GEOMETRIC_MEAN_KEYS) for k in keys},
        "n_scored": {k: sum(_finite(r.get(k)) for r in rows) for k in keys},
        "per_class": per_class,
        "mean_seconds": _mean([r["seconds"] for r in rows]),
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["object_id", "class", *_metric_keys(rows)]
    # A score a case does not have (e.g. the colours of a failed case) is not defined there: nan, as in the summary.
    cells = ([f"{v:.6g}" if isinstance(v := row.get(k, math.nan), float) else v for k in fields] for row in rows)
    atomic_write_csv(path, fields, cells)


def _write_markdown(path: Path, summary: dict[str, Any], data: str) -> None:
    keys = list(summary["mean"])
    lines = [
        f"# Evaluation of `{summary['method']}` on `{data}`",
        "",
        f"{summary['n_objects']} objects, {summary['n_failed']} failed (no surface, or an error: scored F = 0, mask "
        f"IoUs 0); "
        f"{summary['mean_seconds']:.2f} s per object. Chamfer: mean unsquared nearest distance, both directions "
        "averaged, shapes normalised to a unit box and aligned (rotation search + ICP).",
        "",
        "| class | n | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, stats in summary["per_class"].items():
        lines.append(f"| {name} | {stats['n']} | " + " | ".join(f"{stats[k]:.4f}" for k in keys) + " |")
    lines.append(
        f"| **all** | {summary['n_objects']} | " + " | ".join(f"**{summary['mean'][k]:.4f}**" for k in keys) + " |"
    )
    if summary["n_skipped"]:
        lines += ["", f"{summary['n_skipped']} objects of the data were left out (the run's warnings say why)."]
    if summary["errors"]:
        named = "; ".join(f"{case}: {error}" for case, error in summary["errors"].items())
        lines += ["", f"{len(summary['errors'])} cases failed with an error (scored as failures): {named}."]
    partial = [f"{k} {n} of {summary['n_objects']}" for k, n in summary["n_scored"].items() if n < summary["n_objects"]]
    if partial:
        undefined = (
            "the Chamfer distance, depth ratio and mesh colour scores of a failed case, the colour scores of a mesh "
            "without colours, the volume IoU where the ground truth or the prediction is not closed"
        )
        lines += ["", f"Means over the cases scored: {', '.join(partial)} (not defined for the rest: {undefined})."]
    protocol = summary["protocol"]
    settings = ", ".join(f"{key} {json.dumps(protocol[key])}" for key in PROTOCOL_KEYS)
    method = ", ".join(f"{key} {json.dumps(value)}" for key, value in protocol["method"].items())
    lines += ["", f"Protocol: {settings}, prepare {json.dumps(protocol['prepare'])}; method: {method}."]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _silhouette_iou(mesh: Mesh, camera: PerspectiveCameras, alpha: np.ndarray | torch.Tensor, size: int) -> float:
    """IoU of the mesh's silhouette seen by one camera (of ``size`` pixels) and an alpha resized to ``size``."""
    coverage = rasterize(camera.transform_points_ndc(mesh.verts.float()), mesh.faces, size, size).mask[0, ..., 0]
    return mask_iou(coverage.float(), _resize(torch.as_tensor(alpha, dtype=torch.float32)[..., None], size)[..., 0])


def _mesh_mask_iou(mesh: Mesh, alpha: np.ndarray, size: int) -> float:
    """IoU of the mesh's silhouette seen by the input camera and the input alpha, both at ``size`` pixels."""
    return _silhouette_iou(mesh, input_camera(size), alpha, size)


def _novel_mask_iou(mesh: Mesh, views: tuple[torch.Tensor, torch.Tensor, torch.Tensor], size: int) -> float:
    """Mean over the other views of the IoU of the mesh's silhouette and the object's alpha, both at ``size``."""
    c2w, fov, rgba = views
    cameras = PerspectiveCameras(c2w.float(), size, size, fov_y_deg=fov.float())
    return float(np.mean([_silhouette_iou(mesh, cameras[k], rgba[k, ..., 3], size) for k in range(cameras.batch_size)]))


def _colour_scores(mesh: Mesh, case: EvalCase) -> dict[str, float]:
    """PSNR / SSIM of the mesh's colours rendered unlit (over white) against the input view (``mesh_psnr``,
    ``mesh_ssim``) and, for synthetic objects, the mean over their other views (``novel_psnr``, ``novel_ssim``)."""
    from ..core.mesh_renderer import render_mesh

    scores: dict[str, float] = {}
    size = case.rgba.shape[0]
    views = [("mesh", input_camera(size).c2w, torch.tensor([INPUT_FOV_DEG]), torch.from_numpy(case.rgba)[None])]
    if case.views is not None and case.coloured:
        views.append(("novel", *case.views))
    for name, c2w, fov, rgba in views:
        rgba = rgba.float()
        cameras = PerspectiveCameras(c2w.float(), rgba.shape[1], rgba.shape[2], fov_y_deg=fov.float())
        rendered = render_mesh(
            mesh.verts.float(), mesh.faces, cameras, vertex_colors=mesh.vertex_colors, uvs=mesh.uvs,
            texture=mesh.texture, shading="unlit", background=(1.0, 1.0, 1.0),
        )["rgb"].clamp(0.0, 1.0)  # fmt: skip
        target = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        scores[f"{name}_psnr"] = float(np.mean([psnr(r, t) for r, t in zip(rendered, target, strict=True)]))
        scores[f"{name}_ssim"] = float(np.mean([ssim(r, t) for r, t in zip(rendered, target, strict=True)]))
    return scores


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, C) image -> (size, size, C), bilinear and antialiased (as the input views are compared)."""
    resized = torch.nn.functional.interpolate(
        image.permute(2, 0, 1)[None], (size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].permute(1, 2, 0)


def _render_mesh_image(mesh: Mesh, c2w: torch.Tensor, size: int) -> np.ndarray:
    from ..data.synth import render_views

    colors = mesh.vertex_colors if mesh.vertex_colors is not None else torch.full_like(mesh.verts, 0.7)
    mesh = Mesh(mesh.verts.float(), mesh.faces, vertex_colors=colors.float())
    view = {"c2w": c2w.tolist(), "fov_y_deg": INPUT_FOV_DEG}
    rgba = render_views(mesh, [view], size, MESH_LIGHT)["rgba"][0]
    return rgba[..., :3] + (1.0 - rgba[..., 3:])  # premultiplied colour over white


def _write_grid(
    path: Path, cases: list[EvalCase], rows: list[dict[str, Any]], predictions: dict[str, Mesh | None], n: int
) -> None:
    if n < 1 or not rows:
        return
    order = sorted(range(len(rows)), key=lambda i: rows[i]["fscore@0.1"])
    picked = list(dict.fromkeys(order[::-1][:n] + order[:n]))  # best first, then worst
    size, label = 128, 14
    front = orbit_c2w(0.0, 0.0, INPUT_DISTANCE)[0]
    side = orbit_c2w(60.0, 20.0, INPUT_DISTANCE)[0]
    canvas = Image.new("RGB", (4 * size, len(picked) * (size + label)), "white")
    draw = ImageDraw.Draw(canvas)
    blank = np.ones((size, size, 3), dtype=np.float32)
    for r, index in enumerate(picked):
        case, row = cases[index], rows[index]
        rgba = case.rgba
        tiles = [rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])]
        mesh = predictions.get(case.object_id)
        tiles += [_render_mesh_image(mesh, front, size), _render_mesh_image(mesh, side, size)] if mesh else [blank] * 2
        tiles.append(_render_mesh_image(case.gt_mesh, side, size))
        y = r * (size + label)
        for c, tile in enumerate(tiles):
            image = Image.fromarray((np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((size, size))
            canvas.paste(image, (c * size, y + label))
        draw.text((2, y), f"{case.object_id}  F@0.1={row['fscore@0.1']:.3f}", fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
