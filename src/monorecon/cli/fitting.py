"""Fitting by differentiable rendering and the other methods: ``fit-pose``, ``invert``, ``g3dr``."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..io.atomic import check_output_files, check_output_folder
from .common import CommandError, CommandParser, add_placement_options, add_quiet_option, placement_keywords


def add_fit_pose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-pose", help="recover the camera that sees MESH as in IMAGE (differentiable rendering)")
    p.add_argument("mesh", type=Path, help="the mesh to place (GLB, OBJ, PLY, STL, USD)")
    p.add_argument("image", type=Path, help="reference image: RGBA, or RGB on a plain background (its border's colour)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("pose_fit"),
        help="output folder: camera.json, overlay.png (and fit.mp4 / fit.gif with --video; default: pose_fit)",
    )  # fmt: skip
    p.add_argument("--fov", type=float, default=60.0, help="vertical field of view in degrees (default 60)")
    p.add_argument(
        "--znear", type=float, default=1.0, help="near clipping depth (default 1: lower it for a small mesh seen close)"
    )
    p.add_argument("--zfar", type=float, default=100.0, help="far clipping depth (default 100)")
    p.add_argument("--restarts", type=int, default=8, help="extra starts spread around the mesh (0 to 1000, default 8)")
    p.add_argument(
        "--steps", type=int, default=200,
        help="optimisation steps of each start at a coarse size (default 200); the best starts are then refined at "
        "full size (--refine-steps)",
    )  # fmt: skip
    p.add_argument(
        "--refine-steps", type=int, default=60, metavar="N",
        help="steps of the pose refinement at full size that follows (default 60; 0: none)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    p.add_argument(
        "--loss", choices=["silhouette", "silhouette+shading"], default="silhouette",
        help="silhouette (default): compare the outlines; silhouette+shading: also the colours of the shaded mesh with "
        "the image's (for a reference rendered with the same shading)",
    )  # fmt: skip
    p.add_argument(
        "--parameterisation", choices=["position", "full"], default="position",
        help="position (default): the camera's position, always looking at the origin; full: also its rotation and "
        "field of view",
    )  # fmt: skip
    p.add_argument("--video", action="store_true", help="also save the optimisation as MP4 + GIF")
    p.add_argument("--seed", type=int, default=0, help="torch seed (default 0; the fit itself is deterministic)")
    add_quiet_option(p)
    p.set_defaults(func=_run_fit_pose)


def _run_fit_pose(args: argparse.Namespace) -> int:
    from ..fit.pose import fit_pose, pose_result_files, save_pose_result
    from ..io.images import load_image
    from ..io.mesh_io import load_mesh

    if args.refine_steps < 0:
        raise CommandError(f"--refine-steps must be >= 0 (0: no refinement), got {args.refine_steps}")
    check_output_files(args.output, pose_result_files(args.video))  # before the (slow) fit
    mesh = load_mesh(args.mesh)
    result = fit_pose(
        mesh, load_image(args.image), fov_deg=args.fov, znear=args.znear, zfar=args.zfar, restarts=args.restarts,
        steps=args.steps, refine_steps=args.refine_steps, lr=args.lr, loss=args.loss,
        parameterisation=args.parameterisation, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    paths = save_pose_result(result, args.output, video=args.video)
    iou = result.silhouette_iou(mesh)
    if iou < 0.5:
        warnings.warn(
            f"the fitted camera does not match the reference (silhouette IoU {iou:.2f}): try more --restarts or "
            "--steps, or a smaller --lr",
            stacklevel=1,
        )
    if not args.quiet:
        print(f"loss {result.loss:.4g}, silhouette IoU {iou:.3f}; camera -> {paths['camera']}")
    return 0


def add_invert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("invert", help="MeshInversion: fit a trained mesh generator's latent and camera to an image")
    p.add_argument("image", type=Path, help="RGBA image (or RGB on a plain background)")
    p.add_argument("--generator", type=Path, required=True, help="generator.safetensors or its training folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (mesh.glb, views, result.json)")
    p.add_argument(
        "--n-init", type=int, default=500, help="random latents tried for the initialisation (1 to 50000, default 500)"
    )
    p.add_argument("--feature-weights", type=Path, help="local VGG19 weights for the feature Chamfer loss")
    p.add_argument("--size", type=int, default=128, help="side of the prepared input in pixels")
    p.add_argument(
        "--no-project-input",
        action="store_true",
        help="keep the generated texture (default: the image's colours where it sees the surface; not in the paper)",
    )
    add_placement_options(p)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial latents and the point subsampling (default 0)"
    )
    add_quiet_option(p)
    p.set_defaults(func=_run_invert)


def _run_invert(args: argparse.Namespace) -> int:
    from ..core.checks import check_int
    from ..fit.invert import MAX_INIT_CODES, invert, save_inversion_result, with_input_colours
    from ..io.images import load_image
    from ..models.meshgan.train import load_generator
    from ..preprocess import OUTPUT_SIZE_RANGE, PreprocessConfig, preprocess_image

    placement = placement_keywords(args)
    low, high = OUTPUT_SIZE_RANGE
    if not low <= args.size <= high:  # the preprocessing's range, named by its flag
        raise CommandError(f"--size must lie in [{low}, {high}], got {args.size}")
    check_int(args.n_init, "--n-init", 1, MAX_INIT_CODES)  # named by its flag, before the generator is read
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


_G3DR_USAGE = "monorecon g3dr IMAGE.png --depth DEPTH.png --model DIR -o OUT | g3dr sample --class NAME -n N ..."


def add_g3dr(sub: argparse._SubParsersAction) -> None:
    lift, sample = _g3dr_parsers()
    p = sub.add_parser(
        "g3dr",
        help="G3DR: lift an RGB-D image to a mesh + turntable, or `g3dr sample` RGB-D images and lift them",
        usage=_G3DR_USAGE,
        epilog=f"{lift.format_help()}\n{sample.format_help()}",  # the two forms' own options, in full
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs=argparse.REMAINDER, help="IMAGE.png [options] or `sample` [options]")
    p.set_defaults(func=_run_g3dr)


def _g3dr_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    lift = CommandParser(prog="monorecon g3dr", description="square RGB-D image -> mesh.glb + turntable")
    lift.add_argument("image", type=Path, help="square RGB or RGBA image (a non-square one is refused: crop it)")
    lift.add_argument(
        "--depth",
        type=Path,
        help="16-bit depth PNG of the image's size, 0 the nearest depth (an all-zero map is refused as no depth; "
        "default: IMAGE_depth.png beside the image)",
    )
    lift.add_argument(
        "--model", type=Path, required=True, help="trained G3DR folder (model.safetensors + config), or a file in it"
    )
    lift.add_argument("-o", "--output", type=Path, required=True, help="output folder (mesh.glb, turntable)")
    _add_g3dr_mesh_options(lift)
    lift.add_argument(
        "--no-project-input",
        action="store_true",
        help="colour the whole mesh with the field's colours (default: the image's where it sees the surface)",
    )
    lift.add_argument("--unlit", action="store_true", help="mark the GLB material unlit (as reconstruct --unlit)")
    add_placement_options(lift)
    add_quiet_option(lift, "no closing line listing the files written; errors and warnings still print")
    sample = CommandParser(prog="monorecon g3dr sample", description="generate RGB-D images, lift to 3-D")
    sample.add_argument("--class", dest="class_name", required=True, help="synthetic object class")
    sample.add_argument("-n", type=int, default=8, help="number of samples (1 to 256, default 8)")
    sample.add_argument("--diffusion", type=Path, required=True, help="trained RGB-D diffusion model folder")
    sample.add_argument("--model", type=Path, required=True, help="trained G3DR folder")
    sample.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (refused if it holds an earlier sampling)"
    )
    sample.add_argument(
        "--steps",
        type=int,
        help="DDIM sampling steps, 1 to the diffusion model's training timesteps (default: min(50, timesteps))",
    )
    _add_g3dr_mesh_options(sample)
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_quiet_option(sample, "no closing line; errors and warnings (samples that got no mesh) still print")
    return lift, sample


def _add_g3dr_mesh_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=96, help="marching-cubes grid resolution (default 96)")
    p.add_argument("--threshold", type=float, help="density iso level (default: the model's calibrated level)")


def _check_g3dr_mesh_options(opts: argparse.Namespace) -> None:
    """``--resolution`` / ``--threshold`` checked before any (slow) sampling or lifting."""
    from ..core.checks import check_int
    from ..core.extract import MAX_RESOLUTION

    check_int(opts.resolution, "--resolution", 2, MAX_RESOLUTION)
    if opts.threshold is not None and not opts.threshold > 0:
        raise CommandError(f"--threshold must be > 0, got {opts.threshold}")


_MODEL_KINDS = {"g3dr": "a G3DR model", "diffusion": "an RGB-D diffusion model"}


def _check_model_kind(path: Path, flag: str, expected: str) -> None:
    """Refuse a run folder that holds the other kind of model (``--model`` and ``--diffusion`` swapped)."""
    from ..models.g3dr.inference import model_folder_kind

    kind = model_folder_kind(path)
    if kind is not None and kind != expected:
        raise CommandError(f"{flag} {path}: this folder holds {_MODEL_KINDS[kind]}, not {_MODEL_KINDS[expected]}")


def _run_g3dr_sample(opts: argparse.Namespace) -> int:
    """Every input (models, class, -n, --steps, the output folder) is checked before the output folder is made;
    exit code 2 (after writing the rest) when some samples got no mesh."""
    import sys

    if not 1 <= opts.n <= 256:
        raise CommandError(f"-n must lie in [1, 256], got {opts.n}")
    if opts.steps is not None and opts.steps < 1:
        raise CommandError(f"--steps must be >= 1, got {opts.steps}")
    _check_g3dr_mesh_options(opts)
    check_output_folder(opts.output)
    _check_model_kind(opts.diffusion, "--diffusion", "diffusion")
    _check_model_kind(opts.model, "--model", "g3dr")
    from ..models.g3dr.diffusion import load_rgbd_diffusion, sample_to_folder
    from ..models.g3dr.inference import load_g3dr

    diffusion, generator = load_rgbd_diffusion(opts.diffusion), load_g3dr(opts.model)
    if opts.class_name not in diffusion.class_names:
        raise CommandError(f"--class {opts.class_name!r}: unknown; this model knows {', '.join(diffusion.class_names)}")
    try:
        steps = diffusion.sampling_steps(opts.steps)
    except ValueError as err:
        raise CommandError(str(err).replace("n_steps", "--steps")) from None
    folders = sample_to_folder(diffusion, generator, opts.class_name, opts.n, opts.output, seed=opts.seed,
                               n_steps=steps, mesh_resolution=opts.resolution, threshold=opts.threshold)  # fmt: skip
    if not opts.quiet:
        print(f"{opts.n} samples of {opts.class_name} ({len(folders)} with a mesh) -> {opts.output}")
    if len(folders) < opts.n:
        print(f"monorecon: {opts.n - len(folders)} of {opts.n} samples got no mesh (the warnings above say why)",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


def _run_g3dr(args: argparse.Namespace) -> int:
    lift, sample = _g3dr_parsers()
    if not args.words:
        raise CommandError(f"usage: {_G3DR_USAGE}")
    if args.words[0] == "sample":
        return _run_g3dr_sample(sample.parse_args(args.words[1:]))
    opts = lift.parse_args(args.words)
    from ..models.g3dr.inference import reconstruct_to_folder

    depth = opts.depth or opts.image.with_name(opts.image.stem + "_depth.png")
    _check_g3dr_mesh_options(opts)
    check_output_folder(opts.output)
    _check_model_kind(opts.model, "--model", "g3dr")
    paths = reconstruct_to_folder(opts.model, opts.image, depth, opts.output, resolution=opts.resolution,
                                  threshold=opts.threshold, project_input=not opts.no_project_input,
                                  unlit=opts.unlit, **placement_keywords(opts))  # fmt: skip
    if not opts.quiet:
        print(", ".join(str(p) for p in paths.values()))
    return 0
