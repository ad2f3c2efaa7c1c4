"""Atomic file writes: readers see either the old file or the complete new one, never a partial file.

The data goes to a temporary file in the destination folder (same file system, so the final ``os.replace`` is an
atomic rename); on any error the temporary file is removed and the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json"]

# The process umask, read once: mkstemp creates files 0600, but written outputs should get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Errors of a write that found no room (a full disk, a quota, a file size limit): :func:`atomic_path` names the
#: destination in them, which the file object's write does not.
_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

#: What :func:`atomic_path` names its temporary files: ``.NAME.`` + mkstemp's 8 random characters + ``.tmpSUFFIX``.
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Context manager giving a file object whose content replaces ``path`` only if the block completes.

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    Example:
        ``with atomic_write("mesh.obj", "w") as f: f.write(text)``
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV table (``header``, then one line per row, ``\\n`` line ends) to ``path`` atomically."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(table.getvalue())


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int = 1) -> None:
    """Write ``data`` as strict JSON (a NaN or infinity, e.g. a metric not defined for a case, written ``null``, which
    every JSON reader accepts) and a final newline to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(_finite_or_none(data), f, indent=indent, allow_nan=False)
        f.write("\n")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager giving a temporary path (same folder and suffix) that replaces ``path`` if the block completes.

    For writers that insist on a file name (video encoders): ``with atomic_path("a.mp4") as tmp: write(tmp)``.
    """
    path = check_writable(path)
    # The real suffix stays last: some writers (video encoders) pick the format from it.
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:  # named by the destination: the temporary name means nothing to the caller
        raise type(err)(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.errno in _FULL_ERRORS and err.filename is None:  # a write's: unnamed
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` when its process was killed (a crash
    mid-write), and the temporary folders named the same way (``tempfile.mkdtemp(prefix=".NAME.", suffix=".tmp")``,
    as :func:`monorecon.data.synth.write_object` assembles an object); return them. Call it only where no other
    process is writing, e.g. when a training run starts."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY_NAME.match(p.name)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; ValueError if the folder it would be written into does not exist or ``path`` is a folder
    (checked before slow work whose output would otherwise be lost)."""
    path = Path(path)
    if not path.parent.is_dir():
        problem = "is a file" if path.parent.exists() else "does not exist"
        raise ValueError(f"cannot write {path}: folder {path.parent} {problem}")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    return path


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; ValueError if it is a folder or if the folders it goes in, where missing, cannot be made
    (the writer makes them: ``path.parent.mkdir(parents=True, exist_ok=True)``). Checked before slow work."""
    path = Path(path)
    if path.parent.exists():
        return check_writable(path)
    check_output_folder(path.parent)
    return path


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; ValueError if it exists and is not a folder, or if files cannot be made there (it, or the
    folder it would be created in, refuses a new entry). Checked before slow work whose output would otherwise be
    lost; nothing is left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} exists and is not a folder")
    home = next(folder for folder in (path, *path.absolute().parents) if folder.exists())
    if not home.is_dir():
        raise ValueError(f"cannot create {path}: {home} is a file")
    try:  # a real attempt: permissions, read-only and virtual file systems all answer it
        os.rmdir(tempfile.mkdtemp(prefix=".monorecon-check.", dir=home))
    except OSError as err:
        raise ValueError(f"cannot write into {path}: {err.strerror or err}") from None
    return path


def check_output_files(folder: str | os.PathLike[str], names: Iterable[str]) -> Path:
    """:func:`check_output_folder` of ``folder``, and, where it exists, :func:`check_writable` of each file ``names``
    will be written to in it (a folder of that name): before slow work, a run refused rather than half-written."""
    folder = check_output_folder(folder)
    for name in names if folder.is_dir() else []:
        check_writable(folder / name)
    return folder
