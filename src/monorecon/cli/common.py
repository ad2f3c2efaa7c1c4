"""What every command shares: its errors and exit codes, the one-line argument parser, and the options several
commands take (``--device``, ``--workers``, placement, ``--model module:name``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class CommandError(ValueError):
    """A user-facing error: printed as one line, exit code 2."""


@contextlib.contextmanager
def errors_naming_flags(flags: dict[str, str]) -> Iterator[None]:
    """Around API calls made for a command: their ``ValueError`` becomes a :class:`CommandError` whose message names
    the command's flags instead of the API's argument names (``flags``: argument name -> flag)."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        for name, flag in flags.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        raise CommandError(message) from err


class CommandFailed(RuntimeError):
    """A run that started and could not finish (a training run whose loss diverged): one line, exit code 1."""


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing argument, a value of the wrong type) are one line too, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"monorecon: error: {message} (see `{self.prog} --help`)\n")


#: The help of every command's ``--quiet``.
QUIET_HELP = "no progress bars or status lines; errors and warnings still print"


def add_quiet_option(p: argparse.ArgumentParser, help: str = QUIET_HELP) -> None:
    """``--quiet``, with the common help or a command's own ``help``."""
    p.add_argument("--quiet", action="store_true", help=help)


def add_dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32",
        help="precision of the model: float32 (default) or bfloat16 (faster only on GPUs and on CPUs with AMX / "
        "AVX512-BF16, much slower on other CPUs; the meshes differ slightly)",
    )  # fmt: skip


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto",
        help="where the model runs: auto (a CUDA GPU when there is one, else the CPU; default), cpu, cuda, cuda:N",
    )  # fmt: skip


def checked_device(args: argparse.Namespace):
    """``--device`` resolved (auto: CUDA when this machine has it), checked before any slow work."""
    from ..core.checks import check_device

    try:
        return check_device(args.device)
    except ValueError as err:  # the message starts with "device"
        raise CommandError(f"--{err}") from None


def checked_workers(args: argparse.Namespace, device) -> int:
    """``--workers`` checked: worker processes hold copies of the model on the CPU (``device`` None: no model)."""
    from ..core.checks import check_int
    from ..parallel import MAX_WORKERS

    workers = check_int(args.workers, "--workers", 1, MAX_WORKERS)
    if workers > 1 and device is not None and device.type != "cpu":
        raise CommandError("--workers above 1 runs copies of the model on the CPU; with a GPU use --workers 1")
    return workers


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty)."""
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def add_placement_options(p: argparse.ArgumentParser) -> None:
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


def placement_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The ``object_height`` / ``origin`` keywords of ``--object-height`` / ``--origin``, checked before any work.

    Raises:
        CommandError: a refused height, named by its flag.
    """
    from ..core.mesh import check_placement

    try:
        check_placement(args.object_height, args.origin, "--object-height")
    except ValueError as err:
        raise CommandError(str(err)) from None
    return {"object_height": args.object_height, "origin": args.origin}


def warn_unsized_usdz(mesh_format: str, object_height: float | None, height: float | None = None) -> None:
    """Warn that a USDZ written without ``--object-height`` has the size of the mesh's units read as metres: a
    reconstruction about 1 m tall in AR (``height``: the mesh's own height, where known)."""
    if mesh_format != "usdz" or object_height is not None:
        return
    size = "about 1 m" if height is None else f"{height:.3g} m"
    warnings.warn(
        f"USDZ is in metres: without --object-height the object is {size} tall in AR; give its real height, "
        "e.g. --object-height 0.12 for a mug",
        stacklevel=2,
    )


def add_own_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="MODULE:NAME",
        help="a model of your own instead of weights: a ReconstructionModel (encode, query, extract_mesh) or a class "
        "making one, in an importable module (the current folder is importable; docs/extending.md)",
    )


def own_model(args: argparse.Namespace) -> Any:
    """The model ``--model module:name`` names (``reconstruct``, ``serve``, ``webui``); the weights options, which
    load TripoSR-architecture models, are refused beside it."""
    from ..api import ReconstructionModel

    given = [name for name, value in (("--weights", args.weights), ("--config", args.config)) if value is not None]
    given += ["--dtype bfloat16"] if args.dtype == "bfloat16" else []
    if given:
        raise CommandError(f"{', '.join(given)}: for weights, not for --model")
    if not names_python_object(args.model):
        raise CommandError(f"--model must name a Python object as module:name, got {args.model!r}")
    model = import_python_object(args.model)
    if not isinstance(model, ReconstructionModel):
        raise CommandError(f"--model {args.model} is not a model (it lacks encode, query or extract_mesh)")
    return model


def names_python_object(model: str | None) -> bool:
    """Whether ``--model`` is ``module:name`` (not a weights path that happens to hold a colon)."""
    return model is not None and bool(_PYTHON_REFERENCE.fullmatch(model)) and not Path(model).exists()


_PYTHON_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def import_python_object(reference: str) -> Any:
    """``package.module:name`` -> the object it names; a class is instantiated with no arguments. The current folder
    comes first on the import path, as for ``python -m`` (a console script does not put it there)."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except Exception as err:  # not found, or the module's own error (a syntax error, a failing import in it)
        raise CommandError(f"--model {reference}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"--model {reference}: {module_name} has no {attribute}")
        target = getattr(target, part)
    if not isinstance(target, type):
        return target
    try:
        return target()
    except Exception as err:  # e.g. an __init__ that needs arguments
        raise CommandError(f"--model {reference}: {attribute}() failed ({type(err).__name__}: {err})") from None
