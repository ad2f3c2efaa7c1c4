"""The ``monorecon`` entry point: the parser of every command, warnings as one line, errors as exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .common import EXIT_BAD_INPUT, EXIT_FAILED, CommandFailed, CommandParser, one_line
from .evaluation import add_eval, add_eval_compare
from .fitting import add_fit_pose, add_g3dr, add_invert
from .meshes import add_convert, add_metrics, add_overlay, add_render
from .reconstruct import add_reconstruct
from .serving import add_serve, add_webui
from .training import add_data, add_train, add_train_g3dr, add_train_g3dr_diffusion, add_train_meshgan

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_reconstruct,
    add_render,
    add_overlay,
    add_convert,
    add_data,
    add_train,
    add_eval,
    add_eval_compare,
    add_metrics,
    add_fit_pose,
    add_train_meshgan,
    add_invert,
    add_train_g3dr,
    add_train_g3dr_diffusion,
    add_g3dr,
    add_serve,
    add_webui,
]


def _version_line() -> str:
    """``monorecon 0.1.0 (torch 2.13.0, Python 3.11.2)``, from the installed metadata: nothing is imported."""
    from importlib.metadata import version

    from .. import __version__

    python = ".".join(map(str, sys.version_info[:3]))
    return f"monorecon {__version__} (torch {version('torch')}, Python {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="monorecon", description="Single-image 3D reconstruction and fitting by differentiable rendering."
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)  # monorecon/: warnings of the whole package
_default_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (skipped files, missing predictions) as one line; other libraries' as Python prints them."""
    if str(filename).startswith(_PACKAGE_DIR):
        from tqdm import tqdm

        # Through tqdm, which clears the progress bars first and redraws them after: printed beside an active bar (the
        # loading of views, training), the warning would otherwise continue the bar's line.
        tqdm.write(f"monorecon: warning: {one_line(message)}", file=sys.stderr)
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
            print(f"{_error_prefix()}: {one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except CommandFailed as err:
            print(f"{_error_prefix()}: {one_line(err)}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("monorecon: interrupted", file=sys.stderr)
            return 130
