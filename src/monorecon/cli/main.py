"""The ``monorecon`` entry point: the parser of every command, warnings as one line, errors as exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import select
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
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


#: Exit codes of a run ended by a signal, as the shell reports a process killed by it: 128 + the signal's number.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE (13), which Windows lacks


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler) raised where the program is: it unwinds as Ctrl-C does, the atomic writers
    removing their temporary files and worker pools stopping their workers."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """While open, SIGTERM raises :class:`Terminated` (only the main thread can set a signal handler: elsewhere
    nothing changes). :func:`monorecon.parallel.map_in_processes` chains to it after stopping its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (``monorecon ... | head -1``): a broken pipe of its own,
    not one of a subprocess this program writes to (ffmpeg)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (a captured stdout)
        return False


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing what is left of it at exit raises nothing."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


#: Errors of a file that could not be written, whatever the operation that met them: "cannot write PATH: ...".
_WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def _error_line(err: BaseException) -> str:
    """One line for an error: an ``OSError`` naming a file as ``[cannot write] PATH: what went wrong`` (not Python's
    ``[Errno 30] Read-only file system: 'PATH'``), any other as :func:`one_line`."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        reason = err.strerror[:1].lower() + err.strerror[1:]
        verb = "cannot write " if err.errno in _WRITE_ERRORS else ""
        return f"{verb}{os.fsdecode(err.filename)}: {reason}"
    return one_line(err)


def _close_progress_bars() -> None:
    """Close the progress bars an error left open (held by a frame of its traceback), ending their lines."""
    progress = sys.modules.get("tqdm")  # not imported here: no bar can be open without it
    if progress is not None:
        for bar in list(getattr(progress.tqdm, "_instances", ())):
            bar.close()


def _report(line: str) -> None:
    """Print ``line`` on stderr on a line of its own, not continuing a progress bar's."""
    _close_progress_bars()
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a run that could not finish, 2 bad input, 130 interrupted,
    141 standard output closed, 143 terminated by SIGTERM)."""
    with _sigterm_raises_terminated(), warnings.catch_warnings():  # restores the handler and the warning printer
        try:
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:  # --help, --version, a usage error: flushed now, for the reason below
                sys.stdout.flush()
                raise
            quiet = getattr(args, "quiet", False)
            logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
            warnings.showwarning = _show_warning
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe is met here, not at the interpreter's exit
            return code
        except BrokenPipeError as err:
            if _stdout_closed():  # ends as Unix tools do on SIGPIPE: silently, the unwinding having cleaned up
                _silence_stdout()
                _close_progress_bars()
                return EXIT_CLOSED_PIPE
            _report(f"{_error_prefix()}: {_error_line(err)}")
            return EXIT_BAD_INPUT
        except (ValueError, OSError) as err:  # bad input, or a file that cannot be read or written
            _report(f"{_error_prefix()}: {_error_line(err)}")
            return EXIT_BAD_INPUT
        except CommandFailed as err:
            _report(f"{_error_prefix()}: {one_line(err)}")
            return EXIT_FAILED
        except Terminated:
            _report("monorecon: terminated")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            _report("monorecon: interrupted")
            return EXIT_INTERRUPTED
