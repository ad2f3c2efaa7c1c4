"""File input/output: meshes (GLB, OBJ, PLY, STL, USDZ), weight files and atomic writes."""

from .atomic import atomic_write, atomic_write_bytes, atomic_write_json
from .mesh_io import BAKED_FORMATS, MESH_FORMATS, load_mesh, save_mesh
from .weights import read_safetensors_metadata, read_state_dict

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
