"""``monorecon eval`` (a model, a baseline or another method's meshes on a dataset) and ``eval-compare``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import (
    CommandError,
    add_device_option,
    add_quiet_option,
    checked_device,
    checked_workers,
    import_python_object,
    names_python_object,
)


def add_eval(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--config", type=Path, help="--model weights: the model's config.yaml (default: beside the weights)"
    )  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="synthetic dataset folder or folder of meshes")
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder (with --export-inputs: images)")
    p.add_argument("--split", help="synthetic datasets: train, val, test or all (default all)")
    p.add_argument("--max-objects", type=int, help="score the first N objects only")
    p.add_argument("--mc-resolution", type=int, help="models: marching-cubes grid resolution (default 128)")
    p.add_argument("--threshold", type=float, help="models: density iso level (default: the model's)")
    p.add_argument("--no-carve", action="store_true", help="models: do not cut the field to the input silhouette")
    p.add_argument("--no-fill", action="store_true", help="models: do not fill the input silhouette (see reconstruct)")
    p.add_argument("--no-project-input", action="store_true", help="models: the model's colours only (see reconstruct)")
    p.add_argument(
        "--prepare", action="store_true",
        help="models: frame each input as reconstruct frames a photo (bounding box centred at the model's "
        "foreground ratio) instead of the render's own framing; the ground truth is moved to match",
    )  # fmt: skip
    p.add_argument("--points", type=int, help="surface points per shape (default 10,000)")
    p.add_argument(
        "--volume-iou",
        type=int,
        metavar="N",
        help="volume IoU of prediction and ground truth as they lie in the world, on an N^3 grid (default 64; 0: off; "
        "not for --predictions, whose frame is unknown)",
    )
    p.add_argument(
        "--azimuths",
        help="mesh folders: comma-separated input-view azimuths in degrees, one case per mesh and azimuth (default 30)",
    )
    p.add_argument("--elevation", type=float, help="mesh folders: input-view elevation (deg, default 15)")
    add_device_option(p)
    p.add_argument(
        "--workers", type=int, default=1,
        help="processes scoring cases side by side (default 1; one torch thread each; the same report)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="seed of the surface samples and the alignment (default 0)")
    p.add_argument(
        "--inflation-thickness", type=float,
        help="--model inflation: scale of the half-thickness profile (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--inflation-profile", choices=["cone", "round"],
        help="--model inflation: half-thickness = the silhouette's distance transform dt (cone, default) or "
        "sqrt(dt (2 max dt - dt)) (round: a disc becomes a sphere)",
    )  # fmt: skip
    add_quiet_option(p)
    p.set_defaults(func=_run_eval)


def _check_eval_options(args: argparse.Namespace, imported: Any = None) -> None:
    """Refuse options that do not apply to this evaluation: ignored, they would leave a report that is not what the
    command line says (e.g. ``--azimuths`` on a dataset, ``--threshold`` for a baseline). ``imported``: the object a
    ``--model module:name`` names."""
    from ..api import ReconstructionModel

    is_model = not (args.export_inputs or args.predictions) and args.model not in ("sphere", "inflation")
    if imported is not None:
        is_model = isinstance(imported, ReconstructionModel)
    loads_weights = is_model and imported is None
    rules = [
        (not is_model, "models (not the baselines, functions rgba -> Mesh, --predictions or --export-inputs)", {
            "--threshold": args.threshold is not None, "--no-carve": args.no_carve, "--no-fill": args.no_fill,
            "--no-project-input": args.no_project_input, "--prepare": args.prepare,
            "--mc-resolution": args.mc_resolution is not None,
        }),
        (not loads_weights, "model weights (--model PATH or default)", {"--config": args.config is not None}),
        (bool(args.predictions or args.export_inputs), "methods scored in the canonical frame (not --predictions "
         "or --export-inputs)", {"--volume-iou": args.volume_iou is not None}),
        (args.export_inputs, "scoring (not --export-inputs)", {
            "--points": args.points is not None, "--seed": args.seed is not None, "--workers": args.workers != 1,
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


def _float_list(text: str, option: str) -> list[float]:
    """'0,90,180' -> [0.0, 90.0, 180.0]; a one-line ValueError naming ``option`` otherwise."""
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _run_eval(args: argparse.Namespace) -> int:
    from ..core.checks import check_int
    from ..eval.harness import (
        MC_RESOLUTION_RANGE,
        PredictionFolder,
        check_points,
        check_volume_iou_resolution,
        evaluate,
        export_inputs,
    )

    imported = import_python_object(args.model) if names_python_object(args.model) else None
    _check_eval_options(args, imported)
    given = {  # the options given; those left out take the harness's defaults
        "split": args.split,
        "mesh_azimuths": None if args.azimuths is None else _float_list(args.azimuths, "--azimuths"),
        "mesh_elevation": args.elevation,
        "inflation_thickness": args.inflation_thickness,
        "inflation_profile": args.inflation_profile,
        "mc_resolution": args.mc_resolution,
        "volume_iou_resolution": args.volume_iou,
        "n_points": args.points,
        "seed": args.seed,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if args.points is not None:
        check_points(args.points, "--points")  # before a model is loaded
    if args.mc_resolution is not None:
        check_int(args.mc_resolution, "--mc-resolution", *MC_RESOLUTION_RANGE)
    if args.volume_iou is not None:
        check_volume_iou_resolution(args.volume_iou, "--volume-iou")
    loads_model = not (args.export_inputs or args.predictions or args.model in ("sphere", "inflation"))
    loads_model = loads_model and imported is None
    device = checked_device(args) if loads_model else None
    workers = checked_workers(args, device)  # before a model is loaded
    if args.export_inputs:
        paths = export_inputs(args.data, args.output, max_objects=args.max_objects, **given)
        if not args.quiet:
            print(f"{len(paths)} input images written to {args.output}")
        return 0
    model = PredictionFolder(args.predictions) if args.predictions else args.model if imported is None else imported
    if loads_model:
        from ..api import load_model

        model = load_model(None if model == "default" else model, args.config, device=device)
    source = str(args.predictions or args.model) + ("" if args.config is None else f" (config {args.config})")
    summary = evaluate(
        model, args.data, args.output, max_objects=args.max_objects,
        threshold=args.threshold, carve=not args.no_carve, fill=False if args.no_fill else None,
        project_input=not args.no_project_input, prepare=args.prepare, workers=workers,
        progress=not args.quiet, source=source, **given,
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
    if summary["errors"]:
        print(
            f"monorecon: {len(summary['errors'])} cases failed with an error, scored as failures (the warnings above "
            "and the report name them)",
            file=sys.stderr,
        )
    return 2 if summary["n_skipped"] or summary["errors"] else 0


def add_eval_compare(sub: argparse._SubParsersAction) -> None:
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
    from ..eval.compare import compare_reports, format_comparison

    result = compare_reports(args.report_a, args.report_b, args.metric)
    names = (args.report_a.name or "A", args.report_b.name or "B")
    if names[0] == names[1]:
        names = ("A", "B")
    print(format_comparison(result, *names, per_object=not args.no_per_object))
    return 0
