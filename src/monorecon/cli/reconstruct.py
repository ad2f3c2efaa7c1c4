"""``monorecon reconstruct``: image(s) -> mesh folders, one per image, side by side in worker processes."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.atomic import atomic_write_csv, atomic_write_json, check_output_files, check_output_folder
from ..io.formats import MESH_FORMATS, check_unlit, gets_baked_texture
from .common import (
    EXIT_BAD_INPUT,
    CommandError,
    add_device_option,
    add_dtype_option,
    add_own_model_option,
    add_placement_options,
    add_quiet_option,
    checked_device,
    checked_workers,
    errors_naming_flags,
    one_line,
    own_model,
    warn_unsized_usdz,
)

if TYPE_CHECKING:
    from ..api import ReconstructOptions


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="image(s) -> textured 3D mesh(es)", description=_doc_reconstruct)
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (one sub-folder per image)")
    p.add_argument("--weights", help="model weights (.ckpt/.safetensors), a folder, or a HF repo id; default: bundled")
    p.add_argument("--config", type=Path, help="model config.yaml (default: beside the weights)")
    add_own_model_option(p)
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
    p.add_argument(
        "--extraction",
        choices=["coarse_to_fine", "dense"],
        default="coarse_to_fine",
        help="query the field on a coarse grid first and refine only near the surface (default; the dense surface "
        "except parts thinner than 4 grid steps), or at every grid point",
    )
    p.add_argument("--bake-texture", action="store_true", help="UV-unwrap and bake a texture instead of vertex colours")
    p.add_argument(
        "--texture-resolution", type=int, help="baked texture side in pixels (default 1024; with a baked texture only)"
    )
    p.add_argument(
        "--foreground-ratio",
        type=float,
        help="share of the frame taken by the object (default: the model's; 0.7 bundled, 0.85 TripoSR)",
    )
    p.add_argument(
        "--no-remove-bg",
        action="store_true",
        help="use the image as it is: no background removal, no framing (an RGBA image keeps its alpha, over grey)",
    )
    p.add_argument("--matting-model", type=Path, help="salient-object ONNX model (U2Net/ISNet) for cluttered photos")
    p.add_argument(
        "--border-tolerance", type=float, metavar="D",
        help="an RGB photo's background: the pixels joined to the border within colour distance D of its colour "
        "(RGB in 0..1; default 0.1). A larger D, e.g. 0.3, leaves out a soft contact shadow on a light background, "
        "which otherwise becomes part of the object, but also parts of the object close to the background's colour",
    )  # fmt: skip
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
    add_placement_options(p)
    p.add_argument(
        "--render", type=int, default=0, metavar="N", help="also save an N-frame turntable of the mesh (MP4 + GIF)"
    )
    p.add_argument("--render-size", type=int, help="turntable frame side in pixels (default 256; with --render only)")
    p.add_argument(
        "--html", action="store_true", help="also save viewer.html: the mesh in an interactive 3-D view (one file)"
    )
    p.add_argument(
        "--timings", action="store_true", help="print the seconds each stage took for each input (where time goes)"
    )
    add_dtype_option(p)
    add_device_option(p)
    p.add_argument(
        "--workers", type=int, default=1,
        help="CPU processes reconstructing the inputs side by side (default 1; one torch thread each)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="torch seed of each reconstruction (default 0)")
    add_quiet_option(p)
    p.set_defaults(func=_run_reconstruct)


_doc_reconstruct = (
    "Reconstruct a 3D mesh from each image into OUTPUT/<image stem>/: mesh.<format>, input.png (the prepared input) "
    "and result.json (the model, the options that ran, the timings, and the input camera in the mesh's frame for "
    "input.png and for the whole photo). Meshes are +Y up with the input view's front facing +Z (glTF frame). "
    "A bad file in a folder is reported and skipped; the exit code is 2 if any input failed. Several inputs also "
    "write OUTPUT/batch.csv (one row per input: status, mesh, faces, seconds, error)."
)


#: Turntable frame side of ``--render`` without ``--render-size``.
DEFAULT_RENDER_SIZE = 256

#: The table of a batch, in OUTPUT beside the inputs' folders.
BATCH_CSV = "batch.csv"


def collect_images(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The images to reconstruct: each file given, and the images of each folder given (sorted by name).

    Raises:
        CommandError: an input that does not exist, a folder with no images, or two images whose output folders
            would be the same (named as given: ``car.png`` and ``./car.png``).
    """
    found: list[tuple[Path, str]] = []  # (image, its name as given on the command line, or its path in a folder)
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            # not is_file(): a broken link named *.png is an input that fails (reported), not one silently left out
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not images:
                raise CommandError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {given}")
            found += [(image, str(image)) for image in images]
        elif path.exists():
            found.append((path, os.fspath(given)))
        else:
            raise CommandError(f"input not found: {given}")
    seen: dict[str, str] = {}
    for image, shown in found:  # each image writes OUTPUT/<stem>/: two with one stem would overwrite each other
        if image.stem in ("", ".", "..", BATCH_CSV):  # "...png": OUTPUT/../ ; "batch.csv.png": the batch's table
            raise CommandError(f"input {shown}: its name {image.stem!r} cannot name its output folder; rename it")
        if image.stem in seen:
            raise CommandError(f"inputs {seen[image.stem]} and {shown} would both write to the folder {image.stem!r}")
        seen[image.stem] = shown
    return [image for image, _ in found]


#: API fields of :class:`monorecon.api.ReconstructOptions` -> the ``reconstruct`` flags that set them (error messages).
_RECONSTRUCT_FLAGS = {
    "mc_resolution": "--mc-resolution",
    "threshold": "--threshold",
    "texture_resolution": "--texture-resolution",
    "target_faces": "--target-faces",
    "smooth_iterations": "--smooth",
    "object_height": "--object-height",
    "foreground_ratio": "--foreground-ratio",
    "border_tolerance": "--border-tolerance",
    "seed": "--seed",
}


def _reconstruct_options(args: argparse.Namespace) -> ReconstructOptions:
    """The :class:`monorecon.api.ReconstructOptions` of the ``reconstruct`` flags.

    Raises:
        CommandError: a refused value, named by its flag.
    """
    from ..api import ReconstructOptions
    from ..preprocess import PreprocessConfig, matting_session

    baked = gets_baked_texture(args.format, args.bake_texture)
    if args.texture_resolution is not None and not baked:
        raise CommandError("--texture-resolution sizes a baked texture: give --bake-texture (or --format usdz)")
    with errors_naming_flags(_RECONSTRUCT_FLAGS):
        options = ReconstructOptions(
            preprocess=PreprocessConfig(
                remove_background=not args.no_remove_bg,
                foreground_ratio=args.foreground_ratio,
                matting_model=args.matting_model,
                **({} if args.border_tolerance is None else {"border_tolerance": args.border_tolerance}),
            ),
            mc_resolution=args.mc_resolution,
            threshold=args.threshold,
            extraction=args.extraction,
            bake_texture=baked,
            **({} if args.texture_resolution is None else {"texture_resolution": args.texture_resolution}),
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
    model_source: dict[str, str | None]  # the --weights / --config given, device and dtype, for result.json


@dataclass(frozen=True)
class _Written:
    """One input's outputs: its mesh file, the mesh's face count, and the seconds each stage took."""

    mesh_path: Path
    faces: int
    timings: dict[str, float]


#: Files of a result folder that an earlier run may have left and this one may not write (another format, no
#: turntable or 3-D view this time): removed when the new result is in place, so the folder holds one result.
_RESULT_FILES = (*(f"mesh.{fmt}" for fmt in MESH_FORMATS), "mesh.mtl", "mesh.png", "turntable.mp4", "turntable.gif",
                 "viewer.html")  # fmt: skip


_STAGING_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
"""``.<stem>.<pid>.<random>.tmp``: the folder a result is written in before it is moved into place."""


def _remove_dead_staging(output: Path) -> None:
    """Remove the staging folders that killed runs left in ``output`` (their process is gone; a run still going,
    e.g. another command into the same folder, keeps its own)."""
    if not output.is_dir():
        return
    for folder in output.iterdir():
        match = _STAGING_NAME.match(folder.name)
        if match and folder.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Move the files of a complete result from ``staging`` into ``out_dir`` (each by an atomic rename), then remove
    the result files of an earlier run that this one did not write."""
    out_dir.mkdir(exist_ok=True)
    names = [path.name for path in staging.iterdir()]
    for name in names:
        os.replace(staging / name, out_dir / name)
    for name in set(_RESULT_FILES) - set(names):
        (out_dir / name).unlink(missing_ok=True)


def _check_result_folder(job: _BatchJob, out_dir: Path) -> None:
    """Refuse an input's output folder that is a file, or that holds a folder where one of its files goes."""
    names = [f"mesh.{job.mesh_format}", "input.png", "result.json"]
    names += ["turntable.mp4", "turntable.gif"] if job.render else []
    check_output_files(out_dir, names + (["viewer.html"] if job.html else []))


def _reconstruct_into_folder(job: _BatchJob, image_path: Path) -> _Written | str:
    """Reconstruct one input into ``OUTPUT/<stem>/``, or return its one-line error with what it had written removed
    (one bad input must not leave half its outputs behind nor stop the others)."""
    from ..api import reconstruct_full, timed

    out_dir = job.output / image_path.stem
    try:
        _check_result_folder(job, out_dir)  # before the (slow) reconstruction
        result = reconstruct_full(image_path, job.model, job.options)
        timings = result.timings  # the stages below join it: result.json, written again last, records them all
        # Written beside, then moved in once complete: a failure leaves an earlier result of the folder as it was.
        job.output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=job.output))
        try:
            record = {"model": job.model_source}
            with timed(timings, "write"):
                # result.json's input is the photo's absolute path: `overlay` finds it from any working folder
                result.save(staging, job.mesh_format, unlit=job.unlit, record=record)
            if job.render:
                from ..video import save_turntable, turntable_from_mesh

                with timed(timings, "turntable"):
                    frames = turntable_from_mesh(result.mesh, job.render, size=job.render_size, progress=job.progress)
                    save_turntable(frames, staging / "turntable")
            if job.html:
                from ..viewer import save_viewer_html

                with timed(timings, "html"):
                    save_viewer_html(result.mesh, staging / "viewer.html", title=image_path.stem)
            result_json = result.result_json(job.mesh_format, unlit=job.unlit, record=record)
            atomic_write_json(staging / "result.json", result_json, indent=2)  # with every stage's time
            _move_into_place(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception as err:  # bad input (ValueError, OSError), or a model's own failure: the others still run
        return one_line(err) if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: {one_line(err)}"
    return _Written(out_dir / f"mesh.{job.mesh_format}", result.mesh.num_faces, timings)


def _format_timings(timings: dict[str, float]) -> str:
    """``{"encode": 0.12, "extract": 5.1}`` -> ``"encode 0.12 s, extract 5.10 s (total 5.22 s)"``."""
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
    return f"{stages} (total {sum(timings.values()):.2f} s)"


def _unreadable_images(images: list[Path]) -> dict[Path, str]:
    """The images whose header cannot be read (not an image, empty, too large a side), each with its one-line error:
    found before the (slow) model loading, as a missing file is, without decoding every image twice (pixel data
    found corrupt later fails its image alone)."""
    from ..io.images import check_image_header

    errors = {}
    for image in images:
        try:
            check_image_header(image.read_bytes(), str(image))
        except (ValueError, OSError) as err:
            errors[image] = one_line(err)
    return errors


def _run_reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..parallel import map_in_processes
    from ..video import check_turntable_size

    images = collect_images(args.inputs)
    # one image: a bar of its stages (a folder gets a bar of its images)
    options = replace(_reconstruct_options(args), progress=not args.quiet and len(images) == 1)
    # Checked before the (slow) model loading and reconstruction.
    if args.render < 0:
        raise CommandError(f"--render must lie in [0, 3600], got {args.render}")
    if args.render_size is not None and not args.render:
        raise CommandError("--render-size sizes the turntable: give --render N")
    render_size = DEFAULT_RENDER_SIZE if args.render_size is None else args.render_size
    if args.render:
        check_turntable_size(args.render, render_size, ("--render", "--render-size"))
    if args.no_remove_bg and args.foreground_ratio is not None:
        raise CommandError("--foreground-ratio frames the object background removal finds: not with --no-remove-bg")
    if args.border_tolerance is not None and (args.no_remove_bg or args.matting_model is not None):
        raise CommandError("--border-tolerance is of the plain-background removal: not with --no-remove-bg nor "
                           "--matting-model")  # fmt: skip
    check_output_folder(args.output)
    warn_unsized_usdz(args.format, args.object_height)
    _remove_dead_staging(args.output)
    device = checked_device(args)
    if args.model is None and args.config is not None and args.weights is None:
        raise CommandError("--config is the config of the --weights given: give both")
    unreadable = _unreadable_images(images)  # reported without loading the model, as a missing file is
    readable = [image for image in images if image not in unreadable]
    workers = min(checked_workers(args, device), max(1, len(readable)))
    outcomes: Iterator[_Written | str] = iter([])
    if readable:
        job = _batch_job(args, device, workers, render_size, options)
        outcomes = map_in_processes(_reconstruct_into_folder, readable, workers, shared=job)
    bar = tqdm(images, desc="reconstruct", unit="image", disable=args.quiet or len(images) == 1)
    failures = 0
    rows = []
    for image_path in bar:  # in input order: the unreadable ones among the others
        outcome = unreadable[image_path] if image_path in unreadable else next(outcomes)
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
        atomic_write_csv(args.output / BATCH_CSV, ["input", "status", "mesh", "faces", "seconds", "error"], rows)
    if failures:
        if len(images) > 1:
            print(f"monorecon: {failures} of {len(images)} inputs failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _batch_job(
    args: argparse.Namespace, device: Any, workers: int, render_size: int, options: ReconstructOptions
) -> _BatchJob:
    """Load the model (``--weights`` / ``--model``) and gather what every input of the run shares."""
    import torch

    from ..api import load_model, model_record

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    if args.model is not None:
        model = own_model(args)
        model_source = {"weights": None, "config": None, "module": args.model}
    else:
        model = load_model(args.weights, args.config, device=device, dtype=dtype)
        model_source = model_record(args.weights, args.config, device, dtype)
    return _BatchJob(
        model, options, args.output, args.format, args.unlit, args.render, render_size, args.html,
        progress=not args.quiet and workers == 1, model_source=model_source,
    )  # fmt: skip
