"""How the command line ends when it cannot go on: standard output closed (``| head -1``), SIGTERM, Ctrl-C during its
imports, a full disk; its messages start a line of their own and name files as given. Nothing half-written is left."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from monorecon.cli import main

TETRAHEDRON = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    path = tmp_path / "tet.obj"
    path.write_text(TETRAHEDRON)
    return path


def _python(code: str, *args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], text=True, timeout=120, **kwargs)


def test_closed_stdout_ends_silently_with_141(mesh, tmp_path):
    """`monorecon ... | head -1` printed `monorecon: error: [Errno 32] Broken pipe` and exited 2."""
    out = tmp_path / "out.glb"
    command = [sys.executable, "-m", "monorecon", "convert", str(mesh), str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the command prints its line
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    assert stderr == ""  # no message, no "Exception ignored ... BrokenPipeError" at the interpreter's exit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.glb", "tet.obj"]


_SIGTERM_WHILE_WRITING = """
import os, signal, sys, time
import imageio.v2 as imageio

def mimwrite(path, *args, **kwargs):  # half a video written, then `kill`
    with open(path, "wb") as f:
        f.write(b"partial")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

imageio.mimwrite = mimwrite
from monorecon.cli import main
sys.exit(main(["render", sys.argv[1], "-o", sys.argv[2], "--frames", "2", "--size", "16", "--quiet"]))
"""


def test_sigterm_unwinds_like_ctrl_c(mesh, tmp_path):
    """SIGTERM killed the process outright, leaving OUT/.turn.mp4.XXXX.tmp.mp4 and no message."""
    out = tmp_path / "out"
    out.mkdir()
    run = _python(_SIGTERM_WHILE_WRITING, mesh, out / "turn", capture_output=True)
    assert run.returncode == 128 + signal.SIGTERM
    assert run.stderr == "monorecon: terminated\n"
    assert list(out.iterdir()) == []


def test_sigterm_handler_is_restored(mesh, tmp_path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["convert", str(mesh), str(tmp_path / "out.obj"), "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) == previous


def test_the_command_line_imports_no_torch():
    """`monorecon --help` took seconds: `import monorecon` imported the API, torch and scipy with it."""
    code = "import sys, monorecon.cli; print(sorted({'torch', 'scipy', 'numpy', 'trimesh'} & set(sys.modules)))"
    run = _python(code, capture_output=True)
    assert run.returncode == 0 and run.stdout == "[]\n", run.stderr


def test_package_names_are_imported_on_first_use():
    code = (
        "import monorecon\n"
        "from monorecon import reconstruct, Mesh\n"
        "from monorecon.io import MESH_FORMATS, load_mesh\n"
        "assert monorecon.load_model.__module__ == 'monorecon.api' and reconstruct is monorecon.reconstruct\n"
        "assert set(monorecon.__all__) <= set(dir(monorecon)) and 'save_mesh' in dir(monorecon.io)\n"
        "try:\n"
        "    monorecon.no_such_name\n"
        "except AttributeError as err:\n"
        "    print(err)\n"
    )
    run = _python(code, capture_output=True)
    assert run.returncode == 0 and run.stdout == "module 'monorecon' has no attribute 'no_such_name'\n", run.stderr


_CTRL_C_DURING_IMPORTS = """
import sys

class CtrlC:  # Ctrl-C while torch is being imported (the slow part of a command's start)
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
from monorecon.cli import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2]]))
"""


def test_ctrl_c_during_the_imports_is_one_line(mesh, tmp_path):
    """A traceback: the package's imports ran before main()'s handlers."""
    run = _python(_CTRL_C_DURING_IMPORTS, mesh, tmp_path / "out.glb", capture_output=True)
    assert run.returncode == 130
    assert run.stderr == "monorecon: interrupted\n"


def test_full_disk_while_rendering_names_the_file(mesh, tmp_path, monkeypatch, capsys):
    """ffmpeg's raw lines, then `[Errno 32] Broken pipe` (imageio fed ffmpeg through a pipe that it had closed)."""
    import imageio.v2 as imageio

    def mimwrite(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg ...\n\nFFMPEG STDERR OUTPUT:\n")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(imageio, "mimwrite", mimwrite)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["render", str(mesh), "-o", str(out / "turn"), "--frames", "2", "--size", "16", "--quiet"]) == 2
    assert capsys.readouterr().err == f"monorecon: error: cannot write {out / 'turn.mp4'}: no space left on device\n"
    assert list(out.iterdir()) == []


def test_os_errors_name_the_file(mesh, tmp_path, monkeypatch, capsys):
    """`[Errno 30] Read-only file system: 'rom/ds'` -> `cannot write rom/ds: read-only file system`."""
    from monorecon.cli import meshes

    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", "rom/ds")

    monkeypatch.setattr(meshes, "_run_render", read_only)
    assert main(["render", str(mesh)]) == 2
    assert capsys.readouterr().err == "monorecon: error: cannot write rom/ds: read-only file system\n"


def test_message_starts_a_line_after_a_progress_bar(mesh, monkeypatch, capsys):
    """In `train`, `monorecon: interrupted` continued the progress bar's line."""
    from tqdm import tqdm

    from monorecon.cli import meshes

    def interrupted(args):  # as the trainer's bar: updated by hand, open in a frame the traceback keeps
        progress = tqdm(total=10, desc="train", file=sys.stderr)
        progress.update(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(meshes, "_run_render", interrupted)
    assert main(["render", str(mesh)]) == 130
    assert capsys.readouterr().err.split("\n")[-2:] == ["monorecon: interrupted", ""]


def test_messages_name_paths_and_flags_as_given(tmp_path, monkeypatch, capsys):
    (tmp_path / "adir.glb").mkdir()
    Path(tmp_path / "car.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "adir.glb", "x.obj"]) == 2
    assert capsys.readouterr().err == "monorecon: error: adir.glb is a folder, not a mesh file\n"
    assert main(["reconstruct", "car.png", "./car.png", "-o", "out"]) == 2
    assert "inputs car.png and ./car.png would both write" in capsys.readouterr().err
    (tmp_path / "ds" / "stray").mkdir(parents=True)
    assert main(["data", "synth", "--n", "1", "-o", "ds", "--quiet"]) == 2
    assert "use another -o/--output or remove them" in capsys.readouterr().err


def test_a_full_disk_names_the_file_written(tmp_path):
    """A write's `[Errno 28] No space left on device` named no file."""
    from monorecon.io.atomic import atomic_write

    path = tmp_path / "summary.md"
    with pytest.raises(OSError) as raised, atomic_write(path, "w"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []
