"""Data and training commands: ``data synth``, ``train``, ``train-meshgan``, ``train-g3dr``,
``train-g3dr-diffusion``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import CommandError, CommandFailed, add_quiet_option, errors_naming_flags


@contextmanager
def _training_run() -> Iterator[None]:
    """Around a training command: a diverged loss is reported as :class:`CommandFailed`, not as a traceback."""
    from ..train.utils import TrainingDiverged

    try:
        yield
    except TrainingDiverged as err:
        raise CommandFailed(str(err)) from None


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic training data")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    s = data_sub.add_parser("synth", help="render procedural objects into a multi-view dataset")
    s.add_argument("--n", type=int, required=True, help="number of objects")
    s.add_argument("--views", type=int, default=8, help="views per object (default 8)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--seed", type=int, default=0, help="master seed: the same seed gives the same dataset")
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
    s.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (made if missing)")
    add_quiet_option(s)
    s.set_defaults(func=_run_data_synth)


#: ``synthesize_dataset`` / ``ViewSampling`` arguments -> the ``data synth`` flags that set them (error messages).
_SYNTH_FLAGS = {
    "n_objects": "--n", "n_views": "--views", "size": "--size", "seed": "--seed", "workers": "--workers",
    "stretch": "--stretch", "elevation_range_deg": "--elevations LOW HIGH", "out_dir": "-o/--output",
}  # fmt: skip


def _run_data_synth(args: argparse.Namespace) -> int:
    from ..data.shapes import CLASSIC_CLASSES, SHAPE_CLASSES
    from ..data.synth import ViewSampling, synthesize_dataset

    classes = None
    if args.classes:
        classes = []
        for name in (c.strip() for c in args.classes.split(",") if c.strip()):
            classes += list(CLASSIC_CLASSES) if name == "classic" else [name]
        unknown = sorted(set(classes) - set(SHAPE_CLASSES))
        if unknown:
            raise CommandError(f"unknown classes {unknown}; known: {', '.join(sorted(SHAPE_CLASSES))}, classic")
    elevations = {} if args.elevations is None else {"elevation_range_deg": tuple(args.elevations)}
    with errors_naming_flags(_SYNTH_FLAGS):
        sampling = ViewSampling.at_distance(args.camera_distance, **elevations)
        root = synthesize_dataset(
            args.output, args.n, args.views, args.size, args.seed, classes=classes, progress=not args.quiet,
            sampling=sampling, stretch=args.stretch, workers=args.workers,
        )  # fmt: skip
    if not args.quiet:
        print(f"dataset written to {root}")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a TripoSR-architecture model (resumes from the last checkpoint)",
        description="Multi-process: torchrun --nproc_per_node N -m monorecon.train.triposr_trainer CONFIG.yaml",
    )
    p.add_argument("config", type=Path, help="training config YAML (see configs/triposr_small.yaml)")
    add_quiet_option(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..train.triposr_trainer import load_train_config, train
    from ..train.utils import Checkpointer, cleanup_distributed, is_main_process

    try:
        with _training_run():
            config = load_train_config(args.config)
            run_dir = train(config, quiet=args.quiet or None)
        report = is_main_process() and not args.quiet  # asked before the process group is left
    finally:
        cleanup_distributed()
    latest = Checkpointer(run_dir / "checkpoints").latest()
    done = Checkpointer.step_of(latest) if latest is not None else config.steps
    if report and done < config.steps:  # max_minutes spent: final/ holds the weights of that step
        print(f"training stopped at step {done} of {config.steps} (max_minutes spent; final/ holds its weights): "
              f"run the same command again to resume: {run_dir}")  # fmt: skip
    elif report:
        print(f"training finished: {run_dir}")
    return 0


def add_train_meshgan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-meshgan", help="train the UV-space mesh generator (GAN) used by `invert`")
    p.add_argument("config", type=Path, help="config YAML (see configs/meshgan_small.yaml)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (resumed if it has a checkpoint)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: the folder's checkpoint and generator are deleted first (default: resume a checkpoint "
        "written with the same config; steps may grow, lr_g / lr_d may change)",
    )
    add_quiet_option(p)
    p.set_defaults(func=_run_train_meshgan)


def _run_train_meshgan(args: argparse.Namespace) -> int:
    from ..models.meshgan.train import train_meshgan

    with _training_run():
        path = train_meshgan(args.config, args.output, resume=not args.no_resume, progress=not args.quiet)
    if not args.quiet:
        print(f"generator written to {path}")
    return 0


def add_train_g3dr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-g3dr", help="train a G3DR RGB-D -> triplane generator (resumes from its checkpoints)")
    p.add_argument("config", type=Path, help="config YAML (see configs/g3dr_small.yaml)")
    _add_quiet_option(p)
    p.set_defaults(func=_run_train_g3dr)


def _add_quiet_option(p: argparse.ArgumentParser) -> None:
    add_quiet_option(p, "no progress bar or closing line (as `quiet: true`); errors and warnings still print")


def _run_train_g3dr(args: argparse.Namespace) -> int:
    from ..models.g3dr.trainer import G3DRTrainConfig, train_g3dr
    from ..train.utils import load_dataclass_config

    config = load_dataclass_config(args.config, G3DRTrainConfig)
    config.quiet = config.quiet or args.quiet
    with _training_run():
        path = train_g3dr(config)
    if not config.quiet:
        print(f"G3DR model written to {path}")
    return 0


def add_train_g3dr_diffusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-g3dr-diffusion",
        help="train the class-conditional RGB-D diffusion model that `g3dr sample` draws from (resumes)",
    )
    p.add_argument("config", type=Path, help="config YAML (see configs/g3dr_diffusion_small.yaml)")
    _add_quiet_option(p)
    p.set_defaults(func=_run_train_g3dr_diffusion)


def _run_train_g3dr_diffusion(args: argparse.Namespace) -> int:
    from ..models.g3dr.diffusion import DiffusionTrainConfig, train_rgbd_diffusion
    from ..train.utils import load_dataclass_config

    config = load_dataclass_config(args.config, DiffusionTrainConfig)
    config.quiet = config.quiet or args.quiet
    with _training_run():
        path = train_rgbd_diffusion(config)
    if not config.quiet:
        print(f"RGB-D diffusion model written to {path}")
    return 0
