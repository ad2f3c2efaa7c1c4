"""xatlas's UV unwrapping, run in a child process by :func:`monorecon.core.bake.unwrap_uv`: xatlas crashes the
process on some meshes (a segmentation fault on a regular 81,920-face icosphere, xatlas 0.0.11) and holds Python's
global lock while it works (a server's other threads would stop for seconds). The child imports numpy and xatlas
only.

    python _unwrap_worker.py IN.npz OUT.npz

``IN.npz``: ``verts`` (V, 3) float32, ``faces`` (F, 3) uint32, ``resolution`` and ``padding`` (ints, as
:func:`atlas_pack_options` takes them). ``OUT.npz``: ``vmapping`` (V',) the source vertex of each new vertex,
``indices`` (F, 3) and ``uvs`` (V', 2) of the first atlas.
"""

from __future__ import annotations

import sys

import numpy as np
import xatlas


def atlas_pack_options(resolution: int, padding: int) -> xatlas.PackOptions:
    """xatlas ``PackOptions`` of the unwrap (``resolution`` 0: xatlas picks the atlas size).

    Charts are turned to their axis but not tried at other rotations while packing: x1.75 less CPU time for the same
    use of the atlas (the example meshes at 50,000 faces, ``benchmarks/bench_unwrap.py``).
    """
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear, pack.rotate_charts = resolution, padding, True, False
    return pack


def unwrap(verts: np.ndarray, faces: np.ndarray, resolution: int, padding: int) -> tuple[np.ndarray, ...]:
    """``(vmapping, indices, uvs)`` of the mesh's atlas packed for ``resolution`` texels, or at xatlas's own size
    when that one overflows into several (overlapping) atlases."""
    for target in (resolution, 0):
        atlas = xatlas.Atlas()
        atlas.add_mesh(verts, faces)
        atlas.generate(pack_options=atlas_pack_options(target, padding))
        if atlas.atlas_count == 1:
            break
    return atlas[0]


def main(source: str, target: str) -> None:
    with np.load(source) as data:
        vmapping, indices, uvs = unwrap(data["verts"], data["faces"], int(data["resolution"]), int(data["padding"]))
    with open(target, "wb") as file:  # a path without .npz, as given
        np.savez(file, vmapping=vmapping, indices=indices, uvs=uvs)


if __name__ == "__main__":
    main(*sys.argv[1:])
