"""File input/output: meshes (GLB, OBJ, PLY, STL, USDZ), weight files and atomic writes.

The names below are imported on first use (PEP 562): ``monorecon.io.atomic`` and ``monorecon.io.formats``, which the
command line needs before any work, then load without PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .atomic import atomic_write, atomic_write_bytes, atomic_write_json
    from .formats import BAKED_FORMATS, MESH_FORMATS
    from .mesh_io import load_mesh, save_mesh
    from .weights import read_safetensors_metadata, read_state_dict

#: Public name -> the submodule that defines it.
_LAZY = {
    "BAKED_FORMATS": ".formats",
    "MESH_FORMATS": ".formats",
    "atomic_write": ".atomic",
    "atomic_write_bytes": ".atomic",
    "atomic_write_json": ".atomic",
    "load_mesh": ".mesh_io",
    "read_safetensors_metadata": ".weights",
    "read_state_dict": ".weights",
    "save_mesh": ".mesh_io",
}

__all__ = [
    "BAKED_FORMATS",
    "MESH_FORMATS",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_mesh",
    "read_safetensors_metadata",
    "read_state_dict",
    "save_mesh",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
