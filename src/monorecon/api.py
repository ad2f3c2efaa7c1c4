"""The Python API that the CLI, the web UI and the REST server call: load a model, reconstruct an image.

Data flows one way: image -> :mod:`monorecon.preprocess` -> model (scene code) -> field -> mesh -> export.
Meshes are in the monorecon world frame: +Y up, the input view's front facing +Z (see :mod:`monorecon.core.cameras`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from .core.cameras import CAMERA_CONVENTION, PerspectiveCameras
from .core.carving import SilhouetteFill, SilhouetteHull
from .core.checks import (
    SEED_RANGE,
    TARGET_FACES_RANGE,
    TEXTURE_RESOLUTION_RANGE,
    check_bool,
    check_device,
    check_int,
    check_positive,
)
from .core.extract import MAX_SMOOTH_ITERATIONS
from .core.mesh import Mesh, check_placement
from .io.images import load_image, pil_to_array
from .preprocess import DEFAULT_FOREGROUND_RATIO, PreparedImage, PreprocessConfig, preprocess_image

#: Faces a mesh is decimated to before UV unwrapping when a texture is baked and no ``target_faces`` is given.
BAKE_MAX_FACES = 50_000

#: Folder of the bundled default model (weights, config, model card), shipped inside the package.
DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"


def load_model(
    weights: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load a TripoSR-architecture model.

    Args:
        weights: ``model.ckpt`` / ``.safetensors`` path, a folder holding one and its ``config.yaml``, a Hugging Face
            repo id (downloaded when the network allows), or None for the bundled default model.
        config: the model's ``config.yaml``; default: beside the weights.
        device: "cpu", "cuda", "cuda:N", or "auto" (CUDA when this machine has it, else the CPU).
        dtype: ``torch.bfloat16`` runs the encoder and backbone under autocast; fields stay float32.

    Returns:
        :class:`monorecon.models.triposr.TripoSRModel` in eval mode, on ``device``.

    Raises:
        ValueError: missing or unreadable weights, or a device this machine does not have.
    """
    from .models.triposr import load_triposr

    device = check_device(device)
    if weights is None:
        if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
            raise ValueError(f"the bundled default model is missing from {DEFAULT_MODEL_DIR}; pass --weights")
        weights = DEFAULT_MODEL_DIR / "model.safetensors"
        config = config or DEFAULT_MODEL_DIR / "config.yaml"
    return load_triposr(weights, config, device=device, dtype=dtype)


def model_record(
    weights: str | os.PathLike | None,
    config: str | os.PathLike | None,
    device: str | torch.device,
    dtype: str | torch.dtype,
) -> dict[str, str | None]:
    """The ``model`` entry of a ``result.json`` (``monorecon reconstruct``, the REST API's ``bundle``): the weights
    and config as given to :func:`load_model` (a local file or folder as an absolute path, so that the record is read
    from anywhere; None weights: ``"bundled default model"``), the device and the dtype (bfloat16 meshes differ
    slightly)."""

    def recorded(value: str | os.PathLike | None) -> str | None:
        if value is None:
            return None
        return str(Path(value).resolve()) if Path(value).exists() else str(value)

    return {
        "weights": "bundled default model" if weights is None else recorded(weights),
        "config": recorded(config),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }


def model_mesh_threshold(model) -> float:
    """The density iso level of ``model``'s surface: its config's ``renderer.mesh_threshold`` (TripoSR: 25)."""
    renderer = getattr(getattr(model, "config", None), "renderer", None)
    return float(getattr(renderer, "mesh_threshold", 25.0))


def model_silhouette_fill(model) -> bool:
    """Whether ``model`` fills the input silhouette when carving: its ``renderer.silhouette_fill`` (TripoSR: no)."""
    renderer = getattr(getattr(model, "config", None), "renderer", None)
    return bool(getattr(renderer, "silhouette_fill", False))


def model_foreground_ratio(model) -> float:
    """The input framing ``model`` was trained on: its config's ``foreground_ratio`` (TripoSR: 0.85)."""
    return float(getattr(getattr(model, "config", None), "foreground_ratio", DEFAULT_FOREGROUND_RATIO))


#: What :func:`reconstruct` takes as its image.
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


@runtime_checkable
class ReconstructionModel(Protocol):
    """What :func:`reconstruct_full` (and so ``reconstruct``, the REST API and the web page) needs of a model; the
    bundled :class:`~monorecon.models.triposr.TripoSRModel` is one, and any object with these methods can stand in
    for it (``docs/extending.md`` builds one from the core's parts).

    Optional: a ``config`` attribute with ``foreground_ratio`` (the input framing, default 0.85),
    ``renderer.mesh_threshold`` (the surface's density level, default 25), ``renderer.silhouette_fill`` (default
    False) and ``renderer.radius`` (the half-side of the box the field lives in, needed by the fill):
    :func:`model_foreground_ratio`, :func:`model_mesh_threshold`, :func:`model_silhouette_fill`.
    """

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) images in [0, 1] (the prepared input: the object framed and put on grey) -> (B, ...) scene
        codes, one per image, on the model's device."""
        ...

    def query(self, scene_code: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour at world points: a batch of codes with (B, N, 3) points gives (B, N, 1) densities
        (>= 0) and (B, N, 3) colours in [0, 1]; one code (the batch axis dropped) with (N, 3) points gives (N, 1) and
        (N, 3)."""
        ...

    def extract_mesh(
        self,
        scene_code: torch.Tensor,
        resolution: int,
        threshold: float,
        method: str = "dense",
        carve: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Mesh:
        """The surface ``density == threshold`` of one scene (a batch of one code), with vertex colours: marching
        cubes on ``resolution`` points per axis (``method``: ``"dense"`` or ``"coarse_to_fine"``, see
        :func:`monorecon.core.extract.extract_isosurface`), the density first multiplied by ``carve(points)`` ((N, 3)
        world points -> (N,) weights in [0, 1]) when given. ValueError when there is no surface."""
        ...


@dataclass
class ReconstructOptions:
    """Options of :func:`reconstruct` (the CLI flags of ``monorecon reconstruct``).

    ``threshold`` None uses the model's own iso level (:func:`model_mesh_threshold`),
    ``preprocess.foreground_ratio`` None the model's own framing (:func:`model_foreground_ratio`). ``carve`` cuts
    the field to the cone of the input silhouette seen by the model's input camera
    (:class:`monorecon.core.carving.SilhouetteHull`): the object cannot be where the input shows background.
    ``fill`` (with ``carve``; None: the model's own setting, :func:`model_silhouette_fill`) raises the density on
    silhouette rays that never reach the surface level, so that every part of the input silhouette gets a surface
    (:meth:`~monorecon.core.carving.SilhouetteHull.filled`). ``smooth_iterations`` Taubin-smooths the mesh before it
    is coloured (:func:`monorecon.core.extract.cleanup_mesh`): about 150 at the default ``mc_resolution`` soften the
    terraces that the bundled model's 32 x 32 triplanes leave (40 and 100 on the evaluation's 128-point grids moved
    validation F@0.1 by under 0.002). ``project_input`` colours the surface the input image sees with the image
    itself and maps the model's colours of the rest to the image's white balance and contrast
    (:func:`monorecon.core.projection.project_image_colours`). ``object_height`` scales the finished mesh to that
    height (output units; glTF reads metres) and ``origin`` places it (``"model"``: the model's frame, centred near
    the origin; ``"center"``: its bounding-box centre at the origin; ``"bottom"``: standing on y = 0), as
    :meth:`monorecon.core.mesh.Mesh.placed`. ``progress`` shows a progress bar of the stages
    (:data:`RECONSTRUCT_STAGES`) as they run, naming the one running.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    mc_resolution: int = 256
    threshold: float | None = None
    extraction: str = "coarse_to_fine"
    bake_texture: bool = False
    texture_resolution: int = 1024
    remove_floaters: bool = True
    carve: bool = True
    fill: bool | None = None
    project_input: bool = True
    target_faces: int | None = None
    smooth_iterations: int = 0
    object_height: float | None = None
    origin: str = "model"
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.preprocess, PreprocessConfig):
            raise ValueError(f"preprocess must be a PreprocessConfig, got {type(self.preprocess).__name__}")
        check_int(self.mc_resolution, "mc_resolution", 8, 1024)
        check_int(self.texture_resolution, "texture_resolution", *TEXTURE_RESOLUTION_RANGE)
        if self.extraction not in ("dense", "coarse_to_fine"):
            raise ValueError(f"extraction must be 'dense' or 'coarse_to_fine', got {self.extraction!r}")
        if self.threshold is not None:
            check_positive(self.threshold, "threshold")  # densities are >= 0: a level <= 0 has no surface
        for flag in ("bake_texture", "remove_floaters", "carve", "project_input", "progress"):
            check_bool(getattr(self, flag), flag)
        if self.fill is not None and not isinstance(self.fill, bool):
            raise ValueError(f"fill must be True, False or None (the model's setting), got {self.fill!r}")
        if self.target_faces is not None:
            check_int(self.target_faces, "target_faces", *TARGET_FACES_RANGE)
        check_int(self.smooth_iterations, "smooth_iterations", 0, MAX_SMOOTH_ITERATIONS)
        check_placement(self.object_height, self.origin, "object_height")
        check_int(self.seed, "seed", *SEED_RANGE)


@dataclass
class Reconstruction:
    """What :func:`reconstruct_full` returns: the mesh plus what produced it.

    Attributes:
        mesh: the reconstructed mesh (world frame, placed as ``options`` say).
        prepared: the preprocessed input image.
        scene_code: (1, 3, C, H, W) triplane of the model.
        timings: wall-clock seconds of each stage that ran, in pipeline order (:data:`RECONSTRUCT_STAGES`).
        options: the options that ran, the model's own settings in place of None (``threshold``, ``fill``,
            ``preprocess.foreground_ratio``; ``fill`` is False without ``carve``, which it is part of).
        camera: the camera that sees ``mesh`` as the prepared input shows the object (the model's input camera,
            moved with the mesh's placement): ``prepared`` is its image.
        photo_camera: the same camera for the whole source photo (upright, its own size): focal length and principal
            point of the prepared square's place in the photo (:attr:`PreparedImage.source_box`), to overlay the
            mesh on the photo; None when the source is unknown.
        source: the image file reconstructed (absolute path), None for an image given as an array.
    """

    mesh: Mesh
    prepared: PreparedImage
    scene_code: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    options: ReconstructOptions | None = None
    camera: PerspectiveCameras | None = None
    photo_camera: PerspectiveCameras | None = None
    source: Path | None = None

    def summary(self) -> dict:
        """JSON-ready record of the result: the image file (``input``, None for an array), monorecon's version, the
        options that ran, the mesh's size and bounds, the cameras (:func:`camera_record`) and the timings (what
        ``reconstruct`` writes to ``result.json``)."""
        from . import __version__

        low, high = self.mesh.bounds.tolist() if self.mesh.num_faces else ([], [])
        options = None
        if self.options is not None:
            options = dataclasses.asdict(self.options)
            del options["progress"]  # how it ran, not what it made
            matting = options["preprocess"]["matting_model"]
            options["preprocess"]["matting_model"] = None if matting is None else str(matting)
        return {
            "input": None if self.source is None else str(self.source),
            "monorecon": __version__,
            "options": options,
            "mesh": {
                "vertices": self.mesh.num_verts,
                "faces": self.mesh.num_faces,
                "bounds": [low, high],
                "textured": self.mesh.texture is not None,
            },
            "camera": None if self.camera is None else camera_record(self.camera),
            "photo_camera": None if self.photo_camera is None else camera_record(self.photo_camera),
            "timings": dict(self.timings),
        }

    def result_json(self, mesh_format: str = "glb", *, unlit: bool = False, record: dict | None = None) -> dict:
        """What :meth:`save` writes to ``result.json``: ``input``, ``record``'s entries, ``mesh_file``, ``unlit``,
        then the rest of :meth:`summary` (its ``timings`` as they are now)."""
        summary = self.summary()
        result = {"input": summary.pop("input"), **(record or {}), "mesh_file": f"mesh.{mesh_format}", "unlit": unlit}
        return result | summary

    def save(
        self, folder: str | os.PathLike, mesh_format: str = "glb", *, unlit: bool = False, record: dict | None = None
    ) -> list[Path]:
        """Write the result as ``monorecon reconstruct`` writes ``OUTPUT/<stem>/``: ``mesh.<mesh_format>`` (with its
        ``.mtl`` and ``.png`` for a textured OBJ), ``input.png`` (the prepared input, RGBA) and ``result.json``
        (:meth:`summary` with ``record``'s entries first, e.g. ``model``, or an ``input`` naming the image when it was
        not a file, and ``mesh_file``, ``unlit``).

        Each file is written atomically; a format that cannot hold the mesh is refused before anything is written,
        and if a file fails, those already written are removed before the error is raised.

        Args:
            folder: made if missing.
            mesh_format: ``glb``, ``obj``, ``ply``, ``stl`` or ``usdz`` (:func:`monorecon.io.save_mesh`).
            unlit: GLB, USDZ: show the colours without lighting.
            record: JSON-ready entries put first in ``result.json``.

        Returns:
            The paths written.

        Raises:
            ValueError: a format that cannot hold the mesh (a texture for PLY, ``unlit`` for OBJ / PLY / STL ...).
            OSError: the folder cannot be written.
        """
        from .io.atomic import atomic_write_json
        from .io.images import save_image
        from .io.mesh_io import check_savable, check_unlit, save_mesh

        check_unlit(mesh_format, unlit)
        check_savable(self.mesh, mesh_format)  # before input.png, which may replace an earlier result's
        folder = Path(folder)
        mesh_path = folder / f"mesh.{mesh_format}"
        written: list[Path] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            written.append(save_image(self.prepared.rgba(), folder / "input.png"))
            if self.mesh.texture is not None and mesh_format == "obj":  # companions: removed too if the OBJ fails
                written += [mesh_path.with_suffix(".mtl"), mesh_path.with_suffix(".png")]
            written.append(save_mesh(self.mesh, mesh_path, unlit=unlit))
            written.append(folder / "result.json")
            atomic_write_json(written[-1], self.result_json(mesh_format, unlit=unlit, record=record), indent=2)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written


def camera_record(camera: PerspectiveCameras) -> dict:
    """One camera as JSON: ``width``, ``height`` (pixels), ``fov_y_deg``, ``K`` (3 x 3 ``[[fx, 0, cx], [0, fy, cy],
    [0, 0, 1]]``, pixels) and ``c2w`` (4 x 4, columns right, up, back, position: the camera looks down its -Z; world
    +Y up). A world point at camera-space ``(x, y, z) = inv(c2w) p`` is seen at pixel ``u = cx + fx x / d``,
    ``v = cy - fy y / d`` (v down, pixel edges at integers), ``d = -z``."""
    return {
        "convention": CAMERA_CONVENTION,
        "width": int(camera.width),
        "height": int(camera.height),
        "fov_y_deg": float(torch.as_tensor(camera.fov_y_deg).reshape(-1)[0]),
        "K": camera.K[0].tolist(),
        "c2w": camera.c2w[0].tolist(),
    }


def camera_from_record(record: dict) -> PerspectiveCameras:
    """The camera a :func:`camera_record` describes (e.g. ``result.json``'s ``camera`` or ``photo_camera``).

    Raises:
        ValueError: not such a record: a missing key, another convention, a size that is not a positive integer,
            ``K`` or ``c2w`` of the wrong shape, not finite, or not a camera (a skewed ``K``, a ``c2w`` whose rotation
            is not orthonormal or mirrors).
    """
    if not isinstance(record, dict):
        raise ValueError(f"a camera record must be a JSON object, got {type(record).__name__}")
    missing = [key for key in ("convention", "width", "height", "K", "c2w") if key not in record]
    if missing:
        raise ValueError(f"the camera record lacks {', '.join(missing)}")
    if record["convention"] != CAMERA_CONVENTION:
        raise ValueError(f"the camera record's convention is {record['convention']!r}, not {CAMERA_CONVENTION!r}")
    try:
        k = np.asarray(record["K"], dtype=np.float64)
        c2w = np.asarray(record["c2w"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("the camera record's K and c2w must be 3 x 3 and 4 x 4 arrays of numbers") from None
    if k.shape != (3, 3) or c2w.shape != (4, 4) or not (np.isfinite(k).all() and np.isfinite(c2w).all()):
        raise ValueError("the camera record's K and c2w must be finite 3 x 3 and 4 x 4 arrays")
    if k[0, 1] != 0 or k[1, 0] != 0 or k.tolist()[2] != [0, 0, 1]:
        raise ValueError(f"the camera record's K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {k.tolist()}")
    if not np.allclose(c2w[3], [0, 0, 0, 1]):
        raise ValueError(f"the camera record's c2w must end with the row [0, 0, 0, 1], got {c2w[3].tolist()}")
    if not np.linalg.det(c2w[:3, :3]) > 0:
        raise ValueError("the camera record's c2w is not a rotation (it mirrors or collapses the view)")
    return PerspectiveCameras(
        torch.from_numpy(c2w).float()[None],
        check_int(record["height"], "the camera record's height", 1, 1 << 16),
        check_int(record["width"], "the camera record's width", 1, 1 << 16),
        focal=(float(k[0, 0]), float(k[1, 1])),
        principal=(float(k[0, 2]), float(k[1, 2])),
    )


#: The stages of :func:`reconstruct_full` that :attr:`Reconstruction.timings` names, in order: load and prepare the
#: image; the model's scene code; the input silhouette's cone (and its fill: model queries); marching cubes;
#: floater removal, decimation and smoothing; the photo's colours; texture baking (UV unwrap and model queries).
RECONSTRUCT_STAGES = ("preprocess", "encode", "carve", "extract", "cleanup", "colour", "bake")


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Set ``timings[stage]`` to the wall-clock seconds of the block (after the GPU's queued work, where CUDA runs).

    ``with timed(result.timings, "export"): ...`` adds a stage of one's own, as the CLI and the server do.
    """
    start = time.perf_counter()
    yield
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    timings[stage] = time.perf_counter() - start


def prepare_input(image: ImageInput, config: PreprocessConfig) -> PreparedImage:
    """Load (if a path) and preprocess one image (see :func:`reconstruct` for what ``image`` may be)."""
    if isinstance(image, str | os.PathLike):
        image = load_image(image)
    elif isinstance(image, Image.Image):  # upright as its EXIF orientation says, as an image file is read
        image = pil_to_array(ImageOps.exif_transpose(image))
    elif not isinstance(image, np.ndarray | torch.Tensor):
        raise ValueError(f"image must be a path, a PIL image or an (H, W, 3|4) array, got {type(image).__name__}")
    return preprocess_image(image, config)


def input_silhouette_hull(
    alpha: np.ndarray | torch.Tensor, device: str | torch.device | None = None
) -> SilhouetteHull | None:
    """The cone of a square input's (S, S) alpha seen by TripoSR's input camera (see :class:`SilhouetteHull`).

    ``device``: where the hull is evaluated (the field's device; default the CPU). Returns None when the alpha covers
    every pixel (background kept): there is nothing to carve.
    """
    from .models.triposr.model import input_camera

    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if bool((alpha > 0.5).all()):
        return None
    return SilhouetteHull(input_camera(alpha.shape[0], device=device), alpha)


def input_view_weight(
    model: ReconstructionModel,
    scene_code: torch.Tensor,
    alpha: np.ndarray | torch.Tensor,
    threshold: float,
    fill: bool | None = None,
) -> SilhouetteHull | SilhouetteFill | None:
    """The density weight that makes one scene's field agree with its (S, S) input alpha.

    The input silhouette's hull (:func:`input_silhouette_hull`), filled at ``threshold`` when ``fill`` is true (None:
    :func:`model_silhouette_fill`) from the scene's own density (``scene_code``: a batch of one code, as
    :meth:`ReconstructionModel.encode` gives it); None when there is nothing to carve. It lives on the scene code's
    device.
    """
    hull = input_silhouette_hull(alpha, scene_code.device)
    if hull is None or not (model_silhouette_fill(model) if fill is None else fill):
        return hull
    radius = getattr(getattr(getattr(model, "config", None), "renderer", None), "radius", None)
    if radius is None:  # a model of one's own that asks for the fill (renderer.silhouette_fill) must say its box
        raise ValueError("the silhouette fill needs the model's config.renderer.radius (the half side of its box)")
    return hull.filled(lambda points: model.query(scene_code, points[None])[0][0, :, 0], threshold, radius)


def input_view_cameras(
    prepared: PreparedImage, anchor: torch.Tensor | None = None, scale: float = 1.0
) -> tuple[PerspectiveCameras, PerspectiveCameras | None]:
    """The model's input camera for ``prepared`` and for its source photo, moved as a mesh placed by
    :meth:`~monorecon.core.mesh.Mesh.placement` (``x -> (x - anchor) * scale``: the same view of the moved mesh).

    Returns:
        ``(camera of the (S, S) prepared image, camera of the source photo or None when its box is unknown)``.
    """
    from .models.triposr.model import input_camera

    size = prepared.alpha.shape[0]
    canonical = input_camera(size)
    c2w = canonical.c2w.clone()
    if anchor is not None:
        c2w[:, :3, 3] = (c2w[:, :3, 3] - anchor.to(c2w)) * scale
    camera = PerspectiveCameras(c2w, size, size, focal=canonical.focal, principal=canonical.principal)
    if prepared.source_box is None or prepared.source_size is None:
        return camera, None
    left, top, side = prepared.source_box
    zoom = side / size  # source pixels per prepared pixel
    principal = camera.principal * zoom + c2w.new_tensor([left, top])
    width, height = prepared.source_size
    return camera, PerspectiveCameras(c2w, height, width, focal=camera.focal * zoom, principal=principal)


def reconstruct_full(
    image: ImageInput, model: ReconstructionModel | None = None, options: ReconstructOptions | None = None
) -> Reconstruction:
    """Image -> preprocessed input -> scene code -> mesh (optionally texture-baked). See :func:`reconstruct`."""
    from .core.bake import bake_texture
    from .core.extract import cleanup_mesh
    from .core.projection import project_image_colours
    from .models.triposr.model import input_camera

    options = options or ReconstructOptions()
    model = model if model is not None else load_model()
    torch.manual_seed(options.seed)
    target_faces = options.target_faces
    if options.bake_texture and target_faces is None:
        target_faces = BAKE_MAX_FACES  # xatlas time grows steeply with faces (~200 s at 250k, ~12 s at 50k)
    cleans_up = bool(options.remove_floaters or target_faces or options.smooth_iterations)
    runs = {"carve": options.carve, "cleanup": cleans_up, "colour": options.project_input, "bake": options.bake_texture}
    planned = [stage for stage in RECONSTRUCT_STAGES if runs.get(stage, True)]
    timings: dict[str, float] = {}
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} stages [{elapsed}, {postfix}]"  # no rate: uneven
    with tqdm(total=len(planned), desc="reconstruct", bar_format=bar_format, disable=not options.progress) as bar:

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:  # timed, and shown on the bar while it runs
            bar.set_postfix_str(name)
            with timed(timings, name):
                yield
            bar.update()

        preprocess = options.preprocess
        if preprocess.foreground_ratio is None:
            preprocess = dataclasses.replace(preprocess, foreground_ratio=model_foreground_ratio(model))
        with stage("preprocess"):
            prepared = prepare_input(image, preprocess)
        threshold = options.threshold if options.threshold is not None else model_mesh_threshold(model)
        fill = options.carve and (options.fill if options.fill is not None else model_silhouette_fill(model))
        ran = dataclasses.replace(options, preprocess=preprocess, threshold=threshold, fill=fill)
        with torch.inference_mode():
            with stage("encode"):
                scene_code = model.encode(torch.from_numpy(prepared.rgb)[None])
            weight = None
            if options.carve:
                with stage("carve"):
                    weight = input_view_weight(model, scene_code, prepared.alpha, threshold, fill)
            with stage("extract"):
                mesh = model.extract_mesh(
                    scene_code,
                    resolution=options.mc_resolution,
                    threshold=threshold,
                    method=options.extraction,
                    carve=weight,
                )
            if mesh.vertex_colors is None:  # a model of one's own may forget them; the colour stages need them
                raise ValueError(
                    f"{type(model).__name__}.extract_mesh gave a mesh without vertex colours "
                    "(a ReconstructionModel's meshes carry the field's colours)"
                )
            if cleans_up:
                min_fraction = 0.01 if options.remove_floaters else 0.0
                with stage("cleanup"):
                    mesh = cleanup_mesh(mesh, min_fraction, target_faces, options.smooth_iterations)
            recolour = None
            if options.project_input:
                camera = input_camera(prepared.alpha.shape[0])
                with stage("colour"):
                    mesh, recolour = project_image_colours(mesh, camera, torch.from_numpy(prepared.rgb), prepared.alpha)
            if options.bake_texture:

                def texel_colours(points: torch.Tensor) -> torch.Tensor:
                    colours = model.query(scene_code, points[None])[1][0].to(points)  # from the model's device
                    return colours if recolour is None else recolour(points, colours)

                with stage("bake"):
                    mesh = bake_texture(mesh, texel_colours, resolution=options.texture_resolution)
    # Last: the steps above work in model space.
    anchor, scale = mesh.placement(options.object_height, options.origin)
    camera, photo_camera = input_view_cameras(prepared, anchor, scale)
    mesh = mesh.placed(options.object_height, options.origin)
    source = Path(image).absolute() if isinstance(image, str | os.PathLike) else None
    return Reconstruction(mesh, prepared, scene_code, timings, ran, camera, photo_camera, source)


def reconstruct(image: ImageInput, model: ReconstructionModel | None = None, **options) -> Mesh:
    """Reconstruct a textured mesh from one image.

    Args:
        image: a path, a PIL image (both turned upright by their EXIF orientation), or an (H, W, 3|4) array or
            tensor: float in [0, 1], or uint8 / uint16.
        model: from :func:`load_model`; default the bundled model.
        **options: fields of :class:`ReconstructOptions` (``mc_resolution``, ``threshold``, ``bake_texture``, ...;
            ``preprocess`` takes a :class:`PreprocessConfig`).

    Returns:
        The mesh in the monorecon world frame (+Y up, front +Z) with vertex colours, or a baked texture.
    """
    return reconstruct_full(image, model, ReconstructOptions(**options)).mesh
