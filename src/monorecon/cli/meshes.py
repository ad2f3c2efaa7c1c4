"""Commands on mesh files and result folders: ``render``, ``overlay``, ``convert``, ``metrics``."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from ..io.atomic import check_output_file, check_writable
from ..io.formats import MESH_FORMATS, check_unlit, gets_baked_texture
from .common import (
    EXIT_BAD_INPUT,
    CommandError,
    add_placement_options,
    add_quiet_option,
    one_line,
    placement_keywords,
    warn_unsized_usdz,
)


def add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="turntable (MP4 + GIF) of a mesh or an output folder; --html: a 3-D view")
    p.add_argument(
        "result",
        type=Path,
        help="a mesh file (GLB/OBJ/PLY/STL/USD) or a folder with a mesh.* (reconstruct, g3dr, invert)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output stem: STEM.mp4, STEM.gif (and STEM.html with --html); an existing folder gets its turntable.* "
        "and viewer.html (default: RESULT's folder); missing folders are made",
    )
    p.add_argument("--frames", type=int, default=60, help="frames of a full turn (1 to 3600, default 60)")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (16 to 2048, default 256)")
    p.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees (default 15)")
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
    p.add_argument(
        "--fps", type=int, default=24, help="frame rate of the MP4 (1-240, default 24); the GIF plays at most 50 fps "
        "(every 2nd frame above it, and so on), in the same time",
    )  # fmt: skip
    p.add_argument(
        "--html",
        action="store_true",
        help="also save the mesh in an interactive 3-D view, one HTML file (OUTPUT.html, default RESULT's viewer.html)",
    )
    add_quiet_option(p)
    p.set_defaults(func=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    from ..core.checks import check_int
    from ..io.mesh_io import load_mesh
    from ..video import TURNTABLE_FPS_RANGE, check_turntable_size, save_turntable, turntable_from_mesh, turntable_paths

    path = args.result
    if path.is_dir():
        names = [f"mesh.{fmt}" for fmt in MESH_FORMATS]
        recorded = _recorded_mesh_file(path)  # the result's own mesh, where several formats lie in the folder
        meshes = [path / name for name in ([recorded] if recorded else []) + names if (path / name).is_file()]
        if not meshes:
            raise CommandError(f"no {'/'.join(names)} in {path}")
        path = meshes[0]
    check_turntable_size(args.frames, args.size, ("--frames", "--size"))
    folder = args.output if args.output is None or args.output.is_dir() else None
    if args.output is None or folder is not None:
        folder = folder or path.parent
        stem, html_path = folder / "turntable", folder / "viewer.html"
    else:
        stem, html_path = args.output, args.output.with_name(args.output.name + ".html")
    outputs = (*turntable_paths(stem), *([html_path] if args.html else []))
    for output in outputs:
        check_output_file(output)  # all of them before the (slow) render: none or all written
    check_int(args.fps, "--fps", *TURNTABLE_FPS_RANGE)
    mesh = load_mesh(path)
    frames = turntable_from_mesh(
        mesh, args.frames, size=args.size, progress=not args.quiet, fit=not args.no_fit, elevation_deg=args.elevation,
        distance=args.distance,
    )  # fmt: skip
    for output in outputs:  # -o new/mug makes new/, as reconstruct -o makes its folder
        output.parent.mkdir(parents=True, exist_ok=True)
    written = list(save_turntable(frames, stem, fps=args.fps))
    if args.html:
        from ..viewer import save_viewer_html

        written.append(save_viewer_html(mesh, html_path, title=args.result.name if args.result.is_dir() else path.stem))
    if not args.quiet:
        print(f"{path} -> {', '.join(str(p) for p in written)}")
    return 0


def _recorded_mesh_file(folder: Path) -> str | None:
    """The ``mesh_file`` a result folder's readable ``result.json`` names, or None."""
    from ..io.json_file import read_json_object

    try:
        return _mesh_file_of(read_json_object(folder / "result.json"))
    except ValueError:
        return None


def _mesh_file_of(record: dict) -> str | None:
    """A result record's ``mesh_file`` if it is a file of the record's own folder (a plain name), else None."""
    name = record.get("mesh_file")
    return name if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name else None


def add_overlay(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "-o", "--output", type=Path,
        help="PNG to write, missing folders made (default: RESULT/overlay.png, or overlay_input.png)",
    )  # fmt: skip
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
        "--view input): the camera's image, or a resized copy of it (the same aspect ratio)",
    )
    p.add_argument("--opacity", type=float, default=0.6, help="share of the shaded mesh in the blend, 0..1 (0.6)")
    p.add_argument("--no-outline", action="store_true", help="leave out the mesh's outline")
    p.add_argument(
        "--max-side", type=int, default=1024, help="the overlay's longer side at most this many pixels (1024)"
    )
    add_quiet_option(p)
    p.set_defaults(func=_run_overlay)


def _run_overlay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..overlay import MAX_OVERLAY_SIDE

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
            bar.write(f"monorecon: {folder}: {one_line(err)}", file=sys.stderr)
            continue
        if not args.quiet:
            bar.write(f"{folder} -> {output}")
    if failures:
        print(f"monorecon: {failures} of {len(folders)} result folders failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _overlay_result_folder(folder: Path, args: argparse.Namespace) -> Path:
    """Draw one ``reconstruct`` output folder's mesh over its image (``overlay`` options); returns the PNG written."""
    from ..api import camera_from_record
    from ..io.images import load_image, save_image
    from ..io.json_file import read_json_object
    from ..io.mesh_io import load_mesh
    from ..overlay import overlay_mesh

    record_path = folder / "result.json"
    if not record_path.is_file():
        raise CommandError(f"no result.json in {folder} (a folder written by monorecon reconstruct)")
    record = read_json_object(record_path)
    key = "photo_camera" if args.view == "photo" else "camera"
    if not isinstance(record.get(key), dict):
        raise CommandError(f"{record_path} records no {key} (written by monorecon reconstruct)")
    camera = camera_from_record(record[key])
    mesh_file = _mesh_file_of(record)
    if mesh_file is None:
        raise CommandError(f"{record_path} names no mesh_file of its own folder (got {record.get('mesh_file')!r})")
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
    check_output_file(output)
    image = load_image(image_path)
    mesh = load_mesh(folder / mesh_file)
    try:
        drawn = overlay_mesh(
            mesh, image, camera, opacity=args.opacity, outline=not args.no_outline, max_side=args.max_side
        )
    except ValueError as err:
        raise CommandError(f"{image_path}: {err}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(drawn / 255.0, output)
    return output


def add_convert(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--target-faces",
        type=int,
        metavar="N",
        help="decimate the mesh to about N faces first (as reconstruct's; before any bake, which it speeds up); "
        "not for a mesh with UVs",
    )
    p.add_argument("--texture-resolution", type=int, default=1024, help="baked texture side in pixels (default 1024)")
    p.add_argument("--unlit", action="store_true", help="GLB, USDZ: show the colours without lighting (as reconstruct)")
    add_placement_options(p)
    add_quiet_option(p)
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ..core.bake import bake_texture
    from ..core.checks import TARGET_FACES_RANGE, TEXTURE_RESOLUTION_RANGE, check_int
    from ..core.extract import cleanup_mesh
    from ..io.mesh_io import load_mesh, mesh_files, save_mesh, source_files

    fmt = args.output.suffix.lstrip(".").lower()
    if fmt not in MESH_FORMATS:
        raise CommandError(f"cannot write {args.output}: the suffix must be one of .{', .'.join(MESH_FORMATS)}")
    check_writable(args.output)  # before the (slow) bake
    try:
        check_int(args.texture_resolution, "--texture-resolution", *TEXTURE_RESOLUTION_RANGE)
        wants_texture = gets_baked_texture(fmt, args.bake_texture)
        check_unlit(fmt, args.unlit)
        if args.target_faces is not None:
            check_int(args.target_faces, "--target-faces", *TARGET_FACES_RANGE)
    except ValueError as err:
        raise CommandError(str(err)) from None
    placement = placement_keywords(args)
    mesh = load_mesh(args.input)
    warn_unsized_usdz(fmt, args.object_height, float(mesh.bounds[1, 1] - mesh.bounds[0, 1]))
    if args.target_faces is not None and args.target_faces < mesh.num_faces:
        if mesh.uvs is not None:
            raise CommandError(
                f"--target-faces: {args.input} has UVs (a texture), which decimation cannot keep; "
                "decimate a vertex-coloured mesh"
            )
        if not args.quiet:
            print(f"decimating {mesh.num_faces:,} faces to about {args.target_faces:,}")
        mesh = cleanup_mesh(mesh, min_component_fraction=0.0, target_faces=args.target_faces)
    if wants_texture and mesh.texture is None and mesh.vertex_colors is None:  # said, not silently left out
        warnings.warn(f"{args.input} has no colours to bake: {args.output} is written without a texture", stacklevel=1)
    elif wants_texture and mesh.texture is None:
        if not args.quiet:
            print(f"baking the vertex colours of {mesh.num_faces:,} faces into a {args.texture_resolution}² texture")
        mesh = bake_texture(mesh, resolution=args.texture_resolution)
    mesh = mesh.placed(placement["object_height"], placement["origin"])
    if args.output.resolve() != args.input.resolve():  # replacing the input itself is asked for; its files are not
        read = {path.resolve(): path for path in source_files(args.input)}
        replaced = [read[path.resolve()] for path in mesh_files(mesh, args.output) if path.resolve() in read]
        if replaced:
            raise CommandError(
                f"writing {args.output} would replace {', '.join(map(str, replaced))}, which {args.input} uses: "
                "choose another output name"
            )
    save_mesh(mesh, args.output, unlit=args.unlit)
    if not args.quiet:
        if fmt == "stl":
            colours = ["geometry only"]
        elif mesh.texture is not None:
            colours = ["texture"]
        else:
            colours = ["vertex colours" if mesh.vertex_colors is not None else "no colours"]
        sizes = ", ".join([f"{mesh.num_verts:,} vertices", f"{mesh.num_faces:,} faces", *colours])
        print(f"{args.input} -> {args.output} ({sizes})")
    return 0


def add_metrics(sub: argparse._SubParsersAction) -> None:
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
        "64); n/a unless both meshes are closed (an open surface bounds no solid)",
    )
    p.add_argument("--same-frame", action="store_true", help="no rotation search: ICP from the meshes' own frames")
    p.add_argument("--seed", type=int, default=0, help="sampling and alignment seed (default 0)")
    p.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    from ..eval.harness import THRESHOLDS, check_points, check_volume_iou_resolution, shape_scores
    from ..io.atomic import atomic_write_json, check_writable
    from ..io.mesh_io import load_mesh, source_files

    check_points(args.points, "--points")
    check_volume_iou_resolution(args.volume_iou, "--volume-iou")
    if args.json is not None:
        check_writable(args.json)  # before the scoring, whose result would otherwise be lost
        inputs = [path for mesh_path in (args.mesh, args.reference) for path in source_files(mesh_path)]
        if args.json.exists() and any(path.exists() and path.samefile(args.json) for path in inputs):
            raise CommandError(f"--json {args.json} is an input of the command: choose another file")
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
        if math.isfinite(scores["volume_iou"]):
            print(f"volume_iou {scores['volume_iou']:.4f}")
        else:  # NaN: an open surface bounds no solid
            meshes = (("mesh", mesh), ("reference", reference))
            why = [f"the {name} is not closed" for name, m in meshes if not m.is_closed]
            print(f"volume_iou n/a ({'; '.join(why) or 'not defined'})")
    if args.json is not None:
        atomic_write_json(args.json, {"mesh": str(args.mesh), "reference": str(args.reference), **scores})
    return 0
