"""The ``monorecon`` command line: thin wrappers over the Python API.

Every command reports bad input as one line on stderr and exits with code 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .io.atomic import atomic_write_csv, check_output_folder, check_writable
from .io.mesh_io import MESH_FORMATS, check_unlit, gets_baked_texture

if TYPE_CHECKING:
    from .api import ReconstructOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

log = logging.getLogger("monorecon")


class CommandError(ValueError):
    """A user-facing error: printed as one line, exit code 2."""


class CommandFailed(RuntimeError):
    """A run that started and could not finish (a training run whose loss diverged): one line, exit code 1."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing argument, a value of the wrong type) are one line too, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"monorecon: error: {message} (see `{self.prog} --help`)\n")


@contextmanager
def _training_run() -> Iterator[None]:
    """Around a training command: a diverged loss is reported as :class:`CommandFailed`, not as a traceback."""
    from .train.utils import TrainingDiverged

    try:
        yield
    except TrainingDiverged as err:
        raise CommandFailed(str(err)) from None


# --------------------------------------------------------------------------------------------------------------------
# reconstruct
# --------------------------------------------------------------------------------------------------------------------
def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="image(s) -> textured 3D mesh(es)", description=_doc_reconstruct)
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (one sub-folder per image)")
    p.add_argument("--weights", help="model weights (.ckpt/.safetensors), a folder, or a HF repo id; default: bundled")
    p.add_argument("--config", type=Path, help="model config.yaml (default: beside the weights)")
    _add_own_model_option(p)
    p.add_argument(
        "--format", choices=MESH_FORMATS, default="glb",
        help="mesh file format (default glb); usdz (AR Quick Look, RealityKit) always gets a baked texture; stl (3-D "
        "printing) is geometry only, +Z up, in --object-height's units (slicers read millimetres)",
    )  # fmt: skip
    p.add_argument(
        "--unlit", action="store_true",
        help="GLB, USDZ: show the colours without lighting them (GLB: an unlit material; USDZ: emissive colours); "
        "refused for OBJ, PLY and STL",
    )  # fmt: skip
    p.add_argument("--mc-resolution", type=int, default=256, help="marching-cubes grid resolution (default 256)")
    p.add_argument("--threshold", type=float, help="density iso level (default: the model's, 25 for TripoSR)")
    p.add_argument("--extraction", choices=["coarse_to_fine", "dense"], default="coarse_to_fine")
    p.add_argument("--bake-texture", action="store_true", help="UV-unwrap and bake a texture instead of vertex colours")
    p.add_argument("--texture-resolution", type=int, default=1024)
    p.add_argument(
        "--foreground-ratio",
        type=float,
        help="share of the frame taken by the object (default: the model's; 0.7 bundled, 0.85 TripoSR)",
    )
    p.add_argument("--no-remove-bg", action="store_true", help="use the image as it is (no background removal)")
    p.add_argument("--matting-model", type=Path, help="salient-object ONNX model (U2Net/ISNet) for cluttered photos")
    p.add_argument("--keep-floaters", action="store_true", help="keep small disconnected mesh components")
    p.add_argument(
        "--no-carve", action="store_true", help="do not cut the shape to the input silhouette's cone (see the README)"
    )
    p.add_argument(
        "--no-fill", action="store_true", help="do not fill parts of the input silhouette the model left empty"
    )
    p.add_argument(
        "--no-project-input",
        action="store_true",
        help="colour the whole mesh with the model's colours (default: the input image's where it sees the surface)",
    )
    p.add_argument("--target-faces", type=int, metavar="N", help="decimate the mesh to about N faces")
    p.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="N iterations of volume-keeping (Taubin) smoothing, e.g. 150 at --mc-resolution 256 (default 0: off)",
    )
    _add_placement_options(p)
    p.add_argument(
        "--render", type=int, default=0, metavar="N", help="also save an N-frame turntable of the mesh (MP4 + GIF)"
    )
    p.add_argument("--render-size", type=int, default=256, help="turntable frame side in pixels (default 256)")
    p.add_argument(
        "--html", action="store_true", help="also save viewer.html: the mesh in an interactive 3-D view (one file)"
    )
    p.add_argument(
        "--timings", action="store_true", help="print the seconds each stage took for each input (where time goes)"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    _add_device_option(p)
    p.add_argument(
        "--workers", type=int, default=1,
        help="CPU processes reconstructing the inputs side by side (default 1; one torch thread each)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_run_reconstruct)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto",
        help="where the model runs: auto (a CUDA GPU when there is one, else the CPU; default), cpu, cuda, cuda:N",
    )  # fmt: skip


def _device(args: argparse.Namespace):
    """``--device`` resolved (auto: CUDA when this machine has it), checked before any slow work."""
    from .core.checks import check_device

    try:
        return check_device(args.device)
    except ValueError as err:  # the message starts with "device"
        raise CommandError(f"--{err}") from None


def _workers(args: argparse.Namespace, device) -> int:
    """``--workers`` checked: worker processes hold copies of the model on the CPU (``device`` None: no model)."""
    from .core.checks import check_int
    from .parallel import MAX_WORKERS

    workers = check_int(args.workers, "--workers", 1, MAX_WORKERS)
    if workers > 1 and device is not None and device.type != "cpu":
        raise CommandError("--workers above 1 runs copies of the model on the CPU; with a GPU use --workers 1")
    return workers


_doc_reconstruct = (
    "Reconstruct a 3D mesh from each image into OUTPUT/<image stem>/: mesh.<format>, input.png (the prepared input) "
    "and result.json (the model, the options that ran, the timings, and the input camera in the mesh's frame for "
    "input.png and for the whole photo). Meshes are +Y up with the input view's front facing +Z (glTF frame). "
    "A bad file in a folder is reported and skipped; the exit code is 2 if any input failed. Several inputs also "
    "write OUTPUT/batch.csv (one row per input: status, mesh, faces, seconds, error)."
)


def _collect_images(inputs: Iterable[Path]) -> list[Path]:
    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            # not is_file(): a broken link named *.png is an input that fails (reported), not one silently left out
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise CommandError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            raise CommandError(f"input not found: {path}")
    seen: dict[str, Path] = {}
    for image in images:  # each image writes OUTPUT/<stem>/: two with one stem would overwrite each other
        if image.stem in seen:
            raise CommandError(f"inputs {seen[image.stem]} and {image} would both write to the folder {image.stem!r}")
        seen[image.stem] = image
    return images


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty)."""
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def _float_list(text: str, option: str) -> list[float]:
    """'0,90,180' -> [0.0, 90.0, 180.0]; a one-line ValueError naming ``option`` otherwise."""
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _remove_outputs(paths: list[Path], folder: Path, created_folder: bool) -> None:
    """Remove the files written for a failed input (and its folder if this run created it and it is now empty)."""
    for path in paths:
        path.unlink(missing_ok=True)
    if created_folder and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _add_placement_options(p: argparse.ArgumentParser) -> None:
    """``--object-height`` and ``--origin`` (:meth:`monorecon.core.mesh.Mesh.placed` of the saved mesh)."""
    p.add_argument(
        "--object-height",
        type=float,
        metavar="H",
        help="scale the mesh to H units tall (glTF units are metres: 0.3 for a 30 cm object in AR viewers)",
    )
    p.add_argument(
        "--origin",
        choices=("model", "center", "bottom"),  # monorecon.core.mesh.PLACEMENT_ORIGINS (not imported: a fast --help)
        default="model",
        help="where the mesh's origin is: model (the model's frame, default), center (of the bounding box), bottom "
        "(the object stands on y = 0, as AR viewers and game engines place it)",
    )


def _placement(args: argparse.Namespace) -> dict[str, Any]:
    """The ``object_height`` / ``origin`` keywords of ``--object-height`` / ``--origin``, checked before any work.

    Raises:
        CommandError: a refused height, named by its flag.
    """
    from .core.mesh import check_placement

    try:
        check_placement(args.object_height, args.origin, "--object-height")
    except ValueError as err:
        raise CommandError(str(err)) from None
    return {"object_height": args.object_height, "origin": args.origin}


#: API fields of :class:`monorecon.api.ReconstructOptions` -> the ``reconstruct`` flags that set them (error messages).
_RECONSTRUCT_FLAGS = {
    "mc_resolution": "--mc-resolution",
    "threshold": "--threshold",
    "texture_resolution": "--texture-resolution",
    "target_faces": "--target-faces",
    "smooth_iterations": "--smooth",
    "object_height": "--object-height",
    "foreground_ratio": "--foreground-ratio",
    "seed": "--seed",
}


def _reconstruct_options(args: argparse.Namespace) -> ReconstructOptions:
    """The :class:`monorecon.api.ReconstructOptions` of the ``reconstruct`` flags.

    Raises:
        CommandError: a refused value, named by its flag.
    """
    from .api import ReconstructOptions
    from .preprocess import PreprocessConfig, matting_session

    try:
        options = ReconstructOptions(
            preprocess=PreprocessConfig(
                remove_background=not args.no_remove_bg,
                foreground_ratio=args.foreground_ratio,
                matting_model=args.matting_model,
            ),
            mc_resolution=args.mc_resolution,
            threshold=args.threshold,
            extraction=args.extraction,
            bake_texture=gets_baked_texture(args.format, args.bake_texture),
            texture_resolution=args.texture_resolution,
            remove_floaters=not args.keep_floaters,
            carve=not args.no_carve,
            fill=False if args.no_fill else None,
            project_input=not args.no_project_input,
            target_faces=args.target_faces,
            smooth_iterations=args.smooth,
            object_height=args.object_height,
            origin=args.origin,
            seed=args.seed,
        )
        check_unlit(args.format, args.unlit)
        if args.matting_model is not None:  # a bad file fails now, not at the first photo that needs it
            matting_session(args.matting_model)
        return options
    except ValueError as err:
        message = str(err)
        for field_name, flag in _RECONSTRUCT_FLAGS.items():
            message = re.sub(rf"\b{field_name}\b", flag, message)
        raise CommandError(message) from err


@dataclass(frozen=True)
class _BatchJob:
    """What every input of one ``reconstruct`` run shares: the model, the options and what to write."""

    model: Any
    options: ReconstructOptions
    output: Path
    mesh_format: str
    unlit: bool
    render: int
    render_size: int
    html: bool
    progress: bool  # per-image progress bars (turntables): one process, not --quiet
    model_source: dict[str, str | None]  # the --weights / --config given, for result.json


@dataclass(frozen=True)
class _Written:
    """One input's outputs: its mesh file, the mesh's face count, and the seconds each stage took."""

    mesh_path: Path
    faces: int
    timings: dict[str, float]


def _reconstruct_into_folder(job: _BatchJob, image_path: Path) -> _Written | str:
    """Reconstruct one input into ``OUTPUT/<stem>/``, or return its one-line error with what it had written removed
    (one bad input must not leave half its outputs behind nor stop the others)."""
    from .api import reconstruct_full, timed

    out_dir = job.output / image_path.stem
    created_folder = not out_dir.exists()
    written: list[Path] = []
    try:
        result = reconstruct_full(image_path, job.model, job.options)
        timings = dict(result.timings)
        with timed(timings, "write"):
            # result.json's input is the photo's absolute path: `overlay` finds it from any working folder
            written += result.save(out_dir, job.mesh_format, unlit=job.unlit, record={"model": job.model_source})
        mesh_path = out_dir / f"mesh.{job.mesh_format}"
        if job.render:
            from .video import save_turntable, turntable_from_mesh

            with timed(timings, "turntable"):
                frames = turntable_from_mesh(result.mesh, job.render, size=job.render_size, progress=job.progress)
                written += [out_dir / "turntable.mp4", out_dir / "turntable.gif"]
                save_turntable(frames, out_dir / "turntable")
        if job.html:
            from .viewer import save_viewer_html

            with timed(timings, "html"):
                written.append(save_viewer_html(result.mesh, out_dir / "viewer.html", title=image_path.stem))
    except (ValueError, OSError) as err:
        _remove_outputs(written, out_dir, created_folder)
        return _one_line(err)
    return _Written(mesh_path, result.mesh.num_faces, timings)


def _format_timings(timings: dict[str, float]) -> str:
    """``{"encode": 0.12, "extract": 5.1}`` -> ``"encode 0.12 s, extract 5.10 s (total 5.22 s)"``."""
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
    return f"{stages} (total {sum(timings.values()):.2f} s)"


def _run_reconstruct(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .api import load_model
    from .parallel import map_in_processes

    images = _collect_images(args.inputs)
    # one image: a bar of its stages (a folder gets a bar of its images)
    options = replace(_reconstruct_options(args), progress=not args.quiet and len(images) == 1)
    # Checked before the (slow) model loading and reconstruction.
    if args.render < 0 or args.render > 3600:
        raise CommandError(f"--render must lie in [0, 3600], got {args.render}")
    if not 16 <= args.render_size <= 2048:
        raise CommandError(f"--render-size must lie in [16, 2048], got {args.render_size}")
    check_output_folder(args.output)
    device = _device(args)
    workers = min(_workers(args, device), len(images))
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    if args.model is not None:
        model = _own_model(args)
        model_source = {"weights": None, "config": None, "module": args.model}
    else:
        model = load_model(args.weights, args.config, device=device, dtype=dtype)
        weights = "bundled default model" if args.weights is None else str(args.weights)
        model_source = {"weights": weights, "config": None if args.config is None else str(args.config)}
    job = _BatchJob(
        model, options, args.output, args.format, args.unlit, args.render, args.render_size, args.html,
        progress=not args.quiet and workers == 1, model_source=model_source,
    )  # fmt: skip
    outcomes = map_in_processes(_reconstruct_into_folder, images, workers, shared=job)
    bar = tqdm(outcomes, total=len(images), desc="reconstruct", unit="image", disable=args.quiet or len(images) == 1)
    failures = 0
    rows = []
    for image_path, outcome in zip(images, bar, strict=True):
        if isinstance(outcome, str):
            failures += 1
            bar.write(f"monorecon: {image_path}: {outcome}", file=sys.stderr)
            rows.append([image_path, "failed", "", "", "", outcome])
            continue
        seconds = sum(outcome.timings.values())
        rows.append([image_path, "ok", outcome.mesh_path.relative_to(args.output), outcome.faces, f"{seconds:.2f}", ""])
        if not args.quiet or args.timings:  # --timings asks for output, also with --quiet
            bar.write(f"{image_path} -> {outcome.mesh_path} ({outcome.faces} faces)")
            if args.timings:
                bar.write(f"  time: {_format_timings(outcome.timings)}")
    if len(images) > 1:  # one row per input, in input order
        atomic_write_csv(args.output / "batch.csv", ["input", "status", "mesh", "faces", "seconds", "error"], rows)
    if failures:
        if len(images) > 1:
            print(f"monorecon: {failures} of {len(images)} inputs failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


# --------------------------------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------------------------------
def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="turntable (MP4 + GIF) of a mesh or an output folder; --html: a 3-D view")
    p.add_argument(
        "result",
        type=Path,
        help="a mesh file (GLB/OBJ/PLY/STL/USD) or a folder with a mesh.* (reconstruct, g3dr, invert)",
    )
    p.add_argument("-o", "--output", type=Path, help="output stem (default: RESULT's folder/turntable)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees")
    p.add_argument(
        "--distance",
        type=float,
        default=1.9,
        help="camera distance from the mesh's centre, the mesh scaled to a bounding radius of 0.6 (default 1.9 fills "
        "the frame)",
    )
    p.add_argument(
        "--no-fit",
        action="store_true",
        help="render the mesh where it is, in its own units (the camera orbits the origin at --distance)",
    )
    p.add_argument("--fps", type=int, default=24)
    p.add_argument(
        "--html",
        action="store_true",
        help="also save the mesh in an interactive 3-D view, one HTML file (OUTPUT.html, default RESULT's viewer.html)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    from .core.checks import check_int
    from .io.mesh_io import load_mesh
    from .video import TURNTABLE_FPS_RANGE, save_turntable, turntable_from_mesh

    path = args.result
    if path.is_dir():
        names = [f"mesh.{fmt}" for fmt in MESH_FORMATS]
        meshes = [path / name for name in names if (path / name).is_file()]
        if not meshes:
            raise CommandError(f"no {'/'.join(names)} in {path}")
        path = meshes[0]
    if not 16 <= args.size <= 2048:
        raise CommandError(f"--size must lie in [16, 2048], got {args.size}")
    stem = args.output or path.parent / "turntable"
    html_path = args.output.with_suffix(".html") if args.output else path.parent / "viewer.html"
    for output in (stem.with_suffix(".mp4"), stem.with_suffix(".gif"), *([html_path] if args.html else [])):
        check_writable(output)  # all of them before the (slow) render: none or all written
    check_int(args.fps, "--fps", *TURNTABLE_FPS_RANGE)
    mesh = load_mesh(path)
    frames = turntable_from_mesh(
        mesh, args.frames, size=args.size, progress=not args.quiet, fit=not args.no_fit, elevation_deg=args.elevation,
        distance=args.distance,
    )  # fmt: skip
    written = list(save_turntable(frames, stem, fps=args.fps))
    if args.html:
        from .viewer import save_viewer_html

        written.append(save_viewer_html(mesh, html_path, title=args.result.name if args.result.is_dir() else path.stem))
    if not args.quiet:
        print(f"{path} -> {', '.join(str(p) for p in written)}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------------------------------------
def _add_overlay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overlay",
        help="draw a reconstructed mesh over its photo, seen by the camera result.json records",
        description="Draw the mesh of a reconstruct output folder over the photo it came from (or over input.png with "
        "--view input), seen by the input camera that the folder's result.json records in the mesh's frame: the "
        "mesh shaded and blended over the image, with its outline. Shows how the reconstruction lines up with the "
        "photo, also after --object-height / --origin moved it.",
    )  # fmt: skip
    p.add_argument(
        "result",
        type=Path,
        help="a folder written by monorecon reconstruct (result.json, mesh.*) or its result.json, or the output "
        "folder of a batch: each of its folders with a result.json is drawn (one that cannot be drawn is named and "
        "skipped; exit code 2 then)",
    )
    p.add_argument("-o", "--output", type=Path, help="PNG to write (default: RESULT/overlay.png, or overlay_input.png)")
    p.add_argument(
        "--view",
        choices=("photo", "input"),
        default="photo",
        help="photo: the whole source photo (result.json's photo_camera, the default); input: input.png, the "
        "prepared square the model saw (camera)",
    )
    p.add_argument(
        "--image",
        type=Path,
        help="the image to draw on (default: the photo result.json names as input, or RESULT/input.png with "
        "--view input); it must have the camera's size",
    )
    p.add_argument("--opacity", type=float, default=0.6, help="share of the shaded mesh in the blend, 0..1 (0.6)")
    p.add_argument("--no-outline", action="store_true", help="leave out the mesh's outline")
    p.add_argument(
        "--max-side", type=int, default=1024, help="the overlay's longer side at most this many pixels (1024)"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_overlay)


def _run_overlay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .overlay import MAX_OVERLAY_SIDE

    if not 0 <= args.opacity <= 1:
        raise CommandError(f"--opacity must lie in [0, 1], got {args.opacity}")
    if not 16 <= args.max_side <= MAX_OVERLAY_SIDE:
        raise CommandError(f"--max-side must lie in [16, {MAX_OVERLAY_SIDE}], got {args.max_side}")
    result = args.result
    if result.is_file() and (result.name == "result.json" or result.stem == "mesh"):  # a file of a result folder
        result = result.parent
    folders = [result]
    if not (result / "result.json").is_file() and result.is_dir():  # a batch: OUTPUT/<stem>/result.json
        folders = sorted(p for p in result.iterdir() if (p / "result.json").is_file())
        if not folders:
            raise CommandError(f"no result.json in {result} nor in its folders (written by monorecon reconstruct)")
        if len(folders) > 1 and (args.output or args.image):
            raise CommandError(f"-o and --image are for one result; {result} holds {len(folders)}")
    if len(folders) == 1:
        output = _overlay_result_folder(folders[0], args)
        if not args.quiet:
            print(f"{folders[0]} -> {output}")
        return 0
    failures = 0
    bar = tqdm(folders, desc="overlay", unit="result", disable=args.quiet)
    for folder in bar:
        try:
            output = _overlay_result_folder(folder, args)
        except (ValueError, OSError) as err:  # one bad folder does not stop the others
            failures += 1
            bar.write(f"monorecon: {folder}: {_one_line(err)}", file=sys.stderr)
            continue
        if not args.quiet:
            bar.write(f"{folder} -> {output}")
    if failures:
        print(f"monorecon: {failures} of {len(folders)} result folders failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _overlay_result_folder(folder: Path, args: argparse.Namespace) -> Path:
    """Draw one ``reconstruct`` output folder's mesh over its image (``overlay`` options); returns the PNG written."""
    from .api import camera_from_record
    from .io.images import load_image, save_image
    from .io.json_file import read_json_object
    from .io.mesh_io import load_mesh
    from .overlay import overlay_mesh

    record_path = folder / "result.json"
    if not record_path.is_file():
        raise CommandError(f"no result.json in {folder} (a folder written by monorecon reconstruct)")
    record = read_json_object(record_path)
    key = "photo_camera" if args.view == "photo" else "camera"
    if not isinstance(record.get(key), dict):
        raise CommandError(f"{record_path} records no {key} (written by monorecon reconstruct)")
    camera = camera_from_record(record[key])
    mesh_file = record.get("mesh_file")
    if not isinstance(mesh_file, str) or Path(mesh_file).name != mesh_file or mesh_file in ("", ".", ".."):
        raise CommandError(f"{record_path} names no mesh_file of its own folder (got {mesh_file!r})")
    image_path = args.image
    if image_path is None and args.view == "input":
        image_path = folder / "input.png"
    elif image_path is None:
        if not isinstance(record.get("input"), str):
            raise CommandError(f"{record_path} names no photo (it was reconstructed from an array): pass --image")
        image_path = Path(record["input"])
        if not image_path.is_file():
            raise CommandError(f"the photo {record['input']!r} that {record_path} names is not found: pass --image")
    output = args.output or folder / ("overlay.png" if args.view == "photo" else "overlay_input.png")
    check_writable(output)
    image = load_image(image_path)
    mesh = load_mesh(folder / mesh_file)
    try:
        drawn = overlay_mesh(
            mesh, image, camera, opacity=args.opacity, outline=not args.no_outline, max_side=args.max_side
        )
    except ValueError as err:
        raise CommandError(f"{image_path}: {err}") from None
    save_image(drawn / 255.0, output)
    return output


# --------------------------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="one mesh format to another (e.g. GLB -> USDZ for AR); vertex colours baked into a texture where needed",
        description="Read a mesh (GLB, glTF, OBJ, PLY, STL, USD/USDZ) and write it as GLB, OBJ, PLY, STL or USDZ (from "
        "OUTPUT's suffix). USDZ always gets a texture: a mesh with vertex colours is UV-unwrapped and its colours "
        "baked. STL holds geometry only (+Z up, see the README's Conventions).",
    )  # fmt: skip
    p.add_argument("input", type=Path, help="the mesh file to read")
    p.add_argument(
        "output", type=Path, help="the mesh file to write (.glb, .obj, .ply, .stl or .usdz); its folder must exist"
    )
    p.add_argument(
        "--bake-texture", action="store_true", help="bake the vertex colours into a UV texture for GLB / OBJ too"
    )
    p.add_argument("--texture-resolution", type=int, default=1024, help="baked texture side in pixels (default 1024)")
    p.add_argument("--unlit", action="store_true", help="GLB, USDZ: show the colours without lighting (as reconstruct)")
    _add_placement_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .core.bake import bake_texture
    from .core.checks import TEXTURE_RESOLUTION_RANGE, check_int
    from .io.mesh_io import load_mesh, save_mesh

    fmt = args.output.suffix.lstrip(".").lower()
    if fmt not in MESH_FORMATS:
        raise CommandError(f"cannot write {args.output}: the suffix must be one of .{', .'.join(MESH_FORMATS)}")
    check_writable(args.output)  # before the (slow) bake
    try:
        check_int(args.texture_resolution, "--texture-resolution", *TEXTURE_RESOLUTION_RANGE)
        wants_texture = gets_baked_texture(fmt, args.bake_texture)
        check_unlit(fmt, args.unlit)
    except ValueError as err:
        raise CommandError(str(err)) from None
    placement = _placement(args)
    mesh = load_mesh(args.input)
    if wants_texture and mesh.texture is None and mesh.vertex_colors is not None:
        if not args.quiet:
            print(f"baking the vertex colours of {mesh.num_faces:,} faces into a {args.texture_resolution}² texture")
        mesh = bake_texture(mesh, resolution=args.texture_resolution)
    mesh = mesh.placed(placement["object_height"], placement["origin"])
    save_mesh(mesh, args.output, unlit=args.unlit)
    if not args.quiet:
        if fmt == "stl":
            colours = ["geometry only"]
        elif mesh.texture is not None:
            colours = ["texture"]
        else:
            colours = ["vertex colours"] if mesh.vertex_colors is not None else []
        sizes = ", ".join([f"{mesh.num_verts:,} vertices", f"{mesh.num_faces:,} faces", *colours])
        print(f"{args.input} -> {args.output} ({sizes})")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic training data")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    s = data_sub.add_parser("synth", help="render procedural objects into a multi-view dataset")
    s.add_argument("--n", type=int, required=True, help="number of objects")
    s.add_argument("--views", type=int, default=8)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--classes",
        help="comma-separated class names, repeats weight a class; 'classic' stands for the 11 man-made classes "
        "(the default set before the organic ones were added) (default: all)",
    )
    s.add_argument(
        "--camera-distance",
        type=float,
        default=1.9,  # data.synth.DEFAULT_CAMERA_DISTANCE (not imported: the parser is built before any command)
        help="distance of every camera from the object's centre, fov 40 deg (default 1.9: the TripoSR input "
        "camera, which `monorecon train` expects)",
    )
    s.add_argument(
        "--stretch",
        type=float,
        help="scale each object along X and Z by random factors in [1/S, S] (S > 1; default: no stretching)",
    )
    s.add_argument(
        "--elevations",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="camera elevations are drawn uniformly in [LOW, HIGH], degrees above the object (default -10 40)",
    )
    s.add_argument(
        "--workers", type=int, default=1, help="processes rendering objects side by side (default 1; same dataset)"
    )
    s.add_argument("-o", "--output", type=Path, required=True)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_run_data_synth)


def _run_data_synth(args: argparse.Namespace) -> int:
    from .data.shapes import CLASSIC_CLASSES, SHAPE_CLASSES
    from .data.synth import ViewSampling, synthesize_dataset

    classes = None
    if args.classes:
        classes = []
        for name in (c.strip() for c in args.classes.split(",") if c.strip()):
            classes += list(CLASSIC_CLASSES) if name == "classic" else [name]
        unknown = sorted(set(classes) - set(SHAPE_CLASSES))
        if unknown:
            raise CommandError(f"unknown classes {unknown}; known: {', '.join(sorted(SHAPE_CLASSES))}, classic")
    elevations = {} if args.elevations is None else {"elevation_range_deg": tuple(args.elevations)}
    sampling = ViewSampling.at_distance(args.camera_distance, **elevations)
    root = synthesize_dataset(
        args.output, args.n, args.views, args.size, args.seed, classes=classes, progress=not args.quiet,
        sampling=sampling, stretch=args.stretch, workers=args.workers,
    )  # fmt: skip
    if not args.quiet:
        print(f"dataset written to {root}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a TripoSR-architecture model (resumes from the last checkpoint)",
        description="Multi-process: torchrun --nproc_per_node N -m monorecon.train.triposr_trainer CONFIG.yaml",
    )
    p.add_argument("config", type=Path, help="training config YAML (see configs/triposr_small.yaml)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .train.triposr_trainer import train
    from .train.utils import cleanup_distributed, is_main_process

    try:
        with _training_run():
            run_dir = train(args.config, quiet=args.quiet or None)
        report = is_main_process() and not args.quiet  # asked before the process group is left
    finally:
        cleanup_distributed()
    if report:
        print(f"training finished: {run_dir}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model or baseline: Chamfer, F-score, IoU, PSNR/SSIM, mask IoU")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--model",
        help="weights file/folder, 'default', 'sphere', 'inflation', or a method of your own as module:name (a "
        "function rgba -> Mesh, or a model with encode / query / extract_mesh, or a class making one; the current "
        "folder is importable; docs/extending.md)",
    )
    what.add_argument(
        "--predictions", type=Path,
        help="score another method's meshes: DIR/ID.glb (or .obj, .ply, .usdz...) or DIR/ID/mesh.glb for each case ID "
        "(inputs from --export-inputs); Chamfer and F-scores only",
    )  # fmt: skip
    what.add_argument(
        "--export-inputs", action="store_true", help="write each case's input image to the output folder as ID.png"
    )
    p.add_argument("--data", type=Path, required=True, help="synthetic dataset folder or folder of meshes")
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder (with --export-inputs: images)")
    p.add_argument("--split", help="synthetic datasets: train, val, test or all (default all)")
    p.add_argument("--max-objects", type=int)
    p.add_argument("--mc-resolution", type=int, default=128)
    p.add_argument("--threshold", type=float, help="models: density iso level (default: the model's)")
    p.add_argument("--no-carve", action="store_true", help="models: do not cut the field to the input silhouette")
    p.add_argument("--no-fill", action="store_true", help="models: do not fill the input silhouette (see reconstruct)")
    p.add_argument("--no-project-input", action="store_true", help="models: the model's colours only (see reconstruct)")
    p.add_argument(
        "--prepare", action="store_true",
        help="models: frame each input as reconstruct frames a photo (bounding box centred at the model's "
        "foreground ratio) instead of the render's own framing; the ground truth is moved to match",
    )  # fmt: skip
    p.add_argument("--points", type=int, default=10000, help="surface points per shape (default 10,000)")
    p.add_argument(
        "--volume-iou",
        type=int,
        default=64,
        metavar="N",
        help="volume IoU of prediction and ground truth as they lie in the world, on an N^3 grid (default 64; 0: off)",
    )
    p.add_argument(
        "--azimuths",
        help="mesh folders: comma-separated input-view azimuths in degrees, one case per mesh and azimuth (default 30)",
    )
    p.add_argument("--elevation", type=float, help="mesh folders: input-view elevation (deg, default 15)")
    _add_device_option(p)
    p.add_argument(
        "--workers", type=int, default=1,
        help="processes scoring cases side by side (default 1; one torch thread each; the same report)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--inflation-thickness", type=float,
        help="--model inflation: scale of the half-thickness profile (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--inflation-profile", choices=["cone", "round"],
        help="--model inflation: half-thickness = the silhouette's distance transform dt (cone, default) or "
        "sqrt(dt (2 max dt - dt)) (round: a disc becomes a sphere)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_eval)


def _check_eval_options(args: argparse.Namespace, imported: Any = None) -> None:
    """Refuse options that do not apply to this evaluation: ignored, they would leave a report that is not what the
    command line says (e.g. ``--azimuths`` on a dataset, ``--threshold`` for a baseline). ``imported``: the object a
    ``--model module:name`` names."""
    from .api import ReconstructionModel

    is_model = not (args.export_inputs or args.predictions) and args.model not in ("sphere", "inflation")
    if imported is not None:
        is_model = isinstance(imported, ReconstructionModel)
    rules = [
        (not is_model, "models (not the baselines, functions rgba -> Mesh, --predictions or --export-inputs)", {
            "--threshold": args.threshold is not None, "--no-carve": args.no_carve, "--no-fill": args.no_fill,
            "--no-project-input": args.no_project_input, "--prepare": args.prepare,
        }),
        (args.model != "inflation", "--model inflation", {
            "--inflation-thickness": args.inflation_thickness is not None,
            "--inflation-profile": args.inflation_profile is not None,
        }),
    ]  # fmt: skip
    if args.data.is_dir():
        is_dataset = (args.data / "index.json").is_file()
        rules += [
            (is_dataset, "folders of mesh files (a synthetic dataset's input view is each object's first view)",
             {"--azimuths": args.azimuths is not None, "--elevation": args.elevation is not None}),
            (not is_dataset, "synthetic datasets (folders with an index.json)", {"--split": args.split is not None}),
        ]  # fmt: skip
    for does_not_apply, scope, options in rules:
        given = [name for name, is_given in options.items() if is_given]
        if does_not_apply and given:
            raise CommandError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to {scope}")


def _add_own_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="MODULE:NAME",
        help="a model of your own instead of weights: a ReconstructionModel (encode, query, extract_mesh) or a class "
        "making one, in an importable module (the current folder is importable; docs/extending.md)",
    )


def _own_model(args: argparse.Namespace) -> Any:
    """The model ``--model module:name`` names (``reconstruct``, ``serve``, ``webui``); the weights options, which
    load TripoSR-architecture models, are refused beside it."""
    from .api import ReconstructionModel

    given = [name for name, value in (("--weights", args.weights), ("--config", args.config)) if value is not None]
    given += ["--dtype bfloat16"] if args.dtype == "bfloat16" else []
    if given:
        raise CommandError(f"{', '.join(given)}: for weights, not for --model")
    if not _names_python_object(args.model):
        raise CommandError(f"--model must name a Python object as module:name, got {args.model!r}")
    model = _import_method(args.model)
    if not isinstance(model, ReconstructionModel):
        raise CommandError(f"--model {args.model} is not a model (it lacks encode, query or extract_mesh)")
    return model


def _names_python_object(model: str | None) -> bool:
    """Whether ``--model`` is ``module:name`` (not a weights path that happens to hold a colon)."""
    return model is not None and bool(_PYTHON_REFERENCE.fullmatch(model)) and not Path(model).exists()


_PYTHON_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _import_method(reference: str) -> Any:
    """``package.module:name`` -> the object it names; a class is instantiated with no arguments. The current folder
    comes first on the import path, as for ``python -m`` (a console script does not put it there)."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise CommandError(f"--model {reference}: cannot import {module_name} ({err})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"--model {reference}: {module_name} has no {attribute}")
        target = getattr(target, part)
    return target() if isinstance(target, type) else target


def _run_eval(args: argparse.Namespace) -> int:
    from .eval.harness import PredictionFolder, check_points, check_volume_iou_resolution, evaluate, export_inputs

    imported = _import_method(args.model) if _names_python_object(args.model) else None
    _check_eval_options(args, imported)
    given = {  # the options given; those left out take the harness's defaults
        "split": args.split,
        "mesh_azimuths": None if args.azimuths is None else _float_list(args.azimuths, "--azimuths"),
        "mesh_elevation": args.elevation,
        "inflation_thickness": args.inflation_thickness,
        "inflation_profile": args.inflation_profile,
    }
    given = {key: value for key, value in given.items() if value is not None}
    check_points(args.points, "--points")  # before a model is loaded
    check_volume_iou_resolution(args.volume_iou, "--volume-iou")
    loads_model = not (args.export_inputs or args.predictions or args.model in ("sphere", "inflation"))
    loads_model = loads_model and imported is None
    device = _device(args) if loads_model else None
    workers = _workers(args, device)  # before a model is loaded
    if args.export_inputs:
        paths = export_inputs(args.data, args.output, max_objects=args.max_objects, **given)
        if not args.quiet:
            print(f"{len(paths)} input images written to {args.output}")
        return 0
    model = PredictionFolder(args.predictions) if args.predictions else args.model if imported is None else imported
    if loads_model:
        from .api import load_model

        model = load_model(None if model == "default" else model, device=device)
    summary = evaluate(
        model, args.data, args.output, args.points, max_objects=args.max_objects,
        mc_resolution=args.mc_resolution, threshold=args.threshold, carve=not args.no_carve,
        fill=False if args.no_fill else None, project_input=not args.no_project_input, prepare=args.prepare,
        seed=args.seed, volume_iou_resolution=args.volume_iou, workers=workers, progress=not args.quiet, **given,
    )  # fmt: skip
    if not args.quiet:
        total, scored = summary["n_objects"], summary["n_scored"]
        means = ", ".join(
            f"{k} n/a"
            if not scored[k]
            else f"{k} {v:.4f}" + (f" ({scored[k]} of {total})" if scored[k] < total else "")
            for k, v in summary["mean"].items()
        )
        print(f"{total} objects ({summary['n_failed']} failed): {means}")
        print(f"report: {args.output}")
    if summary["n_skipped"]:
        print(f"monorecon: {summary['n_skipped']} objects skipped (the warnings above say why)", file=sys.stderr)
        return 2
    return 0


def _add_eval_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-compare", help="paired comparison of two eval reports (mean difference, SE by case and by object)"
    )
    p.add_argument(
        "report_a", type=Path, help="report folder of `monorecon eval` (or its per_object.csv), e.g. a baseline"
    )
    p.add_argument("report_b", type=Path, help="the report compared with it (differences are B - A)")
    p.add_argument("--metric", default="fscore@0.1", help="per-object column (default fscore@0.1)")
    p.add_argument("--no-per-object", action="store_true", help="only the summary line")
    p.set_defaults(func=_run_eval_compare)


def _run_eval_compare(args: argparse.Namespace) -> int:
    from .eval.compare import compare_reports, format_comparison

    result = compare_reports(args.report_a, args.report_b, args.metric)
    names = (args.report_a.name or "A", args.report_b.name or "B")
    if names[0] == names[1]:
        names = ("A", "B")
    print(format_comparison(result, *names, per_object=not args.no_per_object))
    return 0


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="Chamfer distance and F-scores of a mesh against a reference mesh, scored as `eval` scores a case",
        description="Both surfaces are sampled, each normalised to the unit box of its own frame (so thresholds "
        "are fractions of the object's size) and the first is aligned to the second by rotation search + ICP, as "
        "`monorecon eval` does. Meshes whose frames differ by quarter turns (e.g. Z-up and Y-up) compare as they "
        "are; other turns change the boxes, so put the meshes in one orientation first.",
    )
    p.add_argument("mesh", type=Path, help="the mesh to score (GLB, OBJ, PLY...)")
    p.add_argument("reference", type=Path, help="the ground-truth mesh")
    p.add_argument("--points", type=int, default=10000, help="surface points per shape (default 10,000)")
    p.add_argument(
        "--volume-iou",
        type=int,
        default=0,
        metavar="N",
        help="also the volume IoU of the two solids, normalised and aligned as the points are, on an N^3 grid (e.g. "
        "64; both meshes should be closed)",
    )
    p.add_argument("--same-frame", action="store_true", help="no rotation search: ICP from the meshes' own frames")
    p.add_argument("--seed", type=int, default=0, help="sampling and alignment seed")
    p.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    from .eval.harness import THRESHOLDS, check_points, check_volume_iou_resolution, shape_scores
    from .io.atomic import atomic_write_json
    from .io.mesh_io import load_mesh

    check_points(args.points, "--points")
    check_volume_iou_resolution(args.volume_iou, "--volume-iou")
    mesh, reference = load_mesh(args.mesh), load_mesh(args.reference)
    scores = shape_scores(
        mesh, reference, n_points=args.points, seed=args.seed, search=not args.same_frame,
        volume_iou_resolution=args.volume_iou,
    )  # fmt: skip
    print(f"chamfer {scores['chamfer']:.5f}")
    for t in THRESHOLDS:
        print(f"fscore@{t:g} {scores[f'fscore@{t:g}']:.4f} (precision {scores[f'precision@{t:g}']:.4f}, "
              f"recall {scores[f'recall@{t:g}']:.4f})")  # fmt: skip
    if "volume_iou" in scores:
        closed = math.isfinite(scores["volume_iou"])
        print(f"volume_iou {scores['volume_iou']:.4f}" if closed else "volume_iou n/a (the reference is not closed)")
    if args.json is not None:
        atomic_write_json(args.json, {"mesh": str(args.mesh), "reference": str(args.reference), **scores})
    return 0


# --------------------------------------------------------------------------------------------------------------------
# fitting: pose, MeshInversion
# --------------------------------------------------------------------------------------------------------------------
def _add_fit_pose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-pose", help="recover the camera that sees MESH as in IMAGE (differentiable rendering)")
    p.add_argument("mesh", type=Path)
    p.add_argument("image", type=Path, help="reference image (object on a white background, or RGBA)")
    p.add_argument("-o", "--output", type=Path, default=Path("pose_fit"))
    p.add_argument("--fov", type=float, default=60.0, help="vertical field of view in degrees")
    p.add_argument("--restarts", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--loss", choices=["silhouette", "silhouette+shading"], default="silhouette")
    p.add_argument("--parameterisation", choices=["position", "full"], default="position")
    p.add_argument("--video", action="store_true", help="also save the optimisation as MP4 + GIF")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_fit_pose)


def _run_fit_pose(args: argparse.Namespace) -> int:
    from .fit.pose import fit_pose, save_pose_result
    from .io.images import load_image
    from .io.mesh_io import load_mesh

    check_output_folder(args.output)
    result = fit_pose(
        load_mesh(args.mesh), load_image(args.image), fov_deg=args.fov, restarts=args.restarts, steps=args.steps,
        lr=args.lr, loss=args.loss, parameterisation=args.parameterisation, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    paths = save_pose_result(result, args.output, video=args.video)
    if not args.quiet:
        print(f"loss {result.loss:.4g}; camera -> {paths['camera']}")
    return 0


def _add_train_meshgan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-meshgan", help="train the UV-space mesh generator (GAN) used by `invert`")
    p.add_argument("config", type=Path, help="config YAML (see configs/meshgan_small.yaml)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (resumed if it has a checkpoint)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_train_meshgan)


def _run_train_meshgan(args: argparse.Namespace) -> int:
    from .models.meshgan.train import train_meshgan

    with _training_run():
        path = train_meshgan(args.config, args.output, resume=not args.no_resume, progress=not args.quiet)
    if not args.quiet:
        print(f"generator written to {path}")
    return 0


def _add_invert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("invert", help="MeshInversion: fit a trained mesh generator's latent and camera to an image")
    p.add_argument("image", type=Path, help="RGBA image (or RGB on a plain background)")
    p.add_argument("--generator", type=Path, required=True, help="generator.safetensors or its training folder")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--n-init", type=int, default=500, help="random latents tried for the initialisation")
    p.add_argument("--feature-weights", type=Path, help="local VGG19 weights for the feature Chamfer loss")
    p.add_argument("--size", type=int, default=128, help="side of the prepared input in pixels")
    p.add_argument(
        "--no-project-input",
        action="store_true",
        help="keep the generated texture (default: the image's colours where it sees the surface; not in the paper)",
    )
    _add_placement_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_invert)


def _run_invert(args: argparse.Namespace) -> int:
    from .fit.invert import invert, save_inversion_result, with_input_colours
    from .io.images import load_image
    from .models.meshgan.train import load_generator
    from .preprocess import PreprocessConfig, preprocess_image

    placement = _placement(args)
    check_output_folder(args.output)
    generator = load_generator(args.generator)
    prepared = preprocess_image(load_image(args.image), PreprocessConfig(output_size=args.size))
    result = invert(
        prepared.rgba(), generator, n_init=args.n_init, feature_weights_path=args.feature_weights, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip
    if not args.no_project_input:
        result = with_input_colours(result, prepared.rgba())
    paths = save_inversion_result(result, args.output, **placement)
    if not args.quiet:
        print(f"mesh -> {paths['mesh']}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# G3DR
# --------------------------------------------------------------------------------------------------------------------
def _add_train_g3dr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-g3dr", help="train a G3DR RGB-D -> triplane generator (resumes from its checkpoints)")
    p.add_argument("config", type=Path, help="config YAML (see configs/g3dr_small.yaml)")
    p.set_defaults(func=_run_train_g3dr)


def _run_train_g3dr(args: argparse.Namespace) -> int:
    from .models.g3dr.trainer import train_g3dr

    with _training_run():
        path = train_g3dr(args.config)
    print(f"G3DR model written to {path}")
    return 0


_G3DR_USAGE = "monorecon g3dr IMAGE.png --depth DEPTH.png --model DIR -o OUT | g3dr sample --class NAME -n N ..."


def _add_g3dr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "g3dr",
        help="G3DR: lift an RGB-D image to a mesh + turntable, or `g3dr sample` RGB-D images and lift them",
        usage=_G3DR_USAGE,
    )
    p.add_argument("words", nargs=argparse.REMAINDER, help="IMAGE.png [options] or `sample` [options]")
    p.set_defaults(func=_run_g3dr)


def _g3dr_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    lift = _ArgumentParser(prog="monorecon g3dr", description="RGB-D image -> mesh.glb + turntable")
    lift.add_argument("image", type=Path, help="RGB or RGBA image")
    lift.add_argument("--depth", type=Path, help="16-bit depth PNG (default: IMAGE_depth.png beside the image)")
    lift.add_argument("--model", type=Path, required=True, help="trained G3DR folder (model.safetensors + config)")
    lift.add_argument("-o", "--output", type=Path, required=True)
    lift.add_argument("--resolution", type=int, default=96, help="marching-cubes grid resolution")
    lift.add_argument("--threshold", type=float, help="density iso level (default: the model's calibrated level)")
    lift.add_argument(
        "--no-project-input",
        action="store_true",
        help="colour the whole mesh with the field's colours (default: the image's where it sees the surface)",
    )
    lift.add_argument("--unlit", action="store_true", help="mark the GLB material unlit (as reconstruct --unlit)")
    _add_placement_options(lift)
    sample = _ArgumentParser(prog="monorecon g3dr sample", description="generate RGB-D images, lift to 3-D")
    sample.add_argument("--class", dest="class_name", required=True, help="synthetic object class")
    sample.add_argument("-n", type=int, default=8)
    sample.add_argument("--diffusion", type=Path, required=True, help="trained RGB-D diffusion model folder")
    sample.add_argument("--model", type=Path, required=True, help="trained G3DR folder")
    sample.add_argument("-o", "--output", type=Path, required=True)
    sample.add_argument("--seed", type=int, default=0)
    return lift, sample


def _run_g3dr(args: argparse.Namespace) -> int:
    lift, sample = _g3dr_parsers()
    if not args.words:
        raise CommandError(f"usage: {_G3DR_USAGE}")
    if args.words[0] == "sample":
        opts = sample.parse_args(args.words[1:])
        if not 1 <= opts.n <= 256:
            raise CommandError(f"-n must lie in [1, 256], got {opts.n}")
        from .models.g3dr.diffusion import sample_to_folder

        sample_to_folder(opts.diffusion, opts.model, opts.class_name, opts.n, opts.output, seed=opts.seed)
        print(f"{opts.n} samples of {opts.class_name} -> {opts.output}")
        return 0
    opts = lift.parse_args(args.words)
    from .models.g3dr.inference import reconstruct_to_folder

    depth = opts.depth or opts.image.with_name(opts.image.stem + "_depth.png")
    if opts.threshold is not None and not opts.threshold > 0:
        raise CommandError(f"--threshold must be > 0, got {opts.threshold}")
    check_output_folder(opts.output)
    paths = reconstruct_to_folder(opts.model, opts.image, depth, opts.output, resolution=opts.resolution,
                                  threshold=opts.threshold, project_input=not opts.no_project_input,
                                  unlit=opts.unlit, **_placement(opts))  # fmt: skip
    print(", ".join(str(p) for p in paths.values()))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# serve / webui
# --------------------------------------------------------------------------------------------------------------------
def _add_server_options(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--weights", help="model weights (default: the bundled model)")
    p.add_argument("--config", type=Path, help="model config.yaml (default: beside the weights)")
    _add_own_model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback: no authentication)")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    _add_device_option(p)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="REST API (POST /reconstruct) with the web page at /")
    _add_server_options(p, 8000)
    p.add_argument("--no-ui", action="store_true", help="serve the API only")
    p.set_defaults(func=_run_serve)


def _add_webui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webui", help="web page for interactive reconstruction (the REST API runs beside it)")
    _add_server_options(p, 7860)
    p.set_defaults(func=_run_webui)


def _server_kwargs(args: argparse.Namespace) -> dict:
    import torch

    if not 1 <= args.port <= 65535:
        raise CommandError(f"--port must lie in [1, 65535], got {args.port}")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    return {
        "host": args.host, "port": args.port, "weights": args.weights, "config": args.config,
        "device": _device(args), "dtype": dtype, "model": None if args.model is None else _own_model(args),
    }  # fmt: skip


def _run_serve(args: argparse.Namespace) -> int:
    from .server import run_server

    run_server(**_server_kwargs(args), ui=not args.no_ui)
    return 0


def _run_webui(args: argparse.Namespace) -> int:
    from .webui import launch_ui

    launch_ui(**_server_kwargs(args))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------------------------
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_reconstruct,
    _add_render,
    _add_overlay,
    _add_convert,
    _add_data,
    _add_train,
    _add_eval,
    _add_eval_compare,
    _add_metrics,
    _add_fit_pose,
    _add_train_meshgan,
    _add_invert,
    _add_train_g3dr,
    _add_g3dr,
    _add_serve,
    _add_webui,
]


def _version_line() -> str:
    """``monorecon 0.1.0 (torch 2.13.0, Python 3.11.2)``, from the installed metadata: nothing is imported."""
    from importlib.metadata import version

    from . import __version__

    python = ".".join(map(str, sys.version_info[:3]))
    return f"monorecon {__version__} (torch {version('torch')}, Python {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="monorecon", description="Single-image 3D reconstruction and fitting by differentiable rendering."
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_default_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (skipped files, missing predictions) as one line; other libraries' as Python prints them."""
    if str(filename).startswith(_PACKAGE_DIR):
        print(f"monorecon: warning: {_one_line(message)}", file=sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


def _error_prefix() -> str:
    """``monorecon: error``, naming the process under ``torchrun`` (every process reports its own failure)."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if not world_size.isdigit() or int(world_size) <= 1:
        return "monorecon: error"
    return f"monorecon: error (rank {os.environ.get('RANK', '?')} of {world_size})"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a run that could not finish, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    with warnings.catch_warnings():  # restores the warning printer when the command ends
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except (ValueError, OSError) as err:  # bad input, or a file that cannot be read or written
            print(f"{_error_prefix()}: {_one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except CommandFailed as err:
            print(f"{_error_prefix()}: {_one_line(err)}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("monorecon: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
