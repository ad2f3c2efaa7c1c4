"""File input/output: meshes (GLB, OBJ, PLY, USDZ) and atomic writes."""

from .atomic import atomic_write, atomic_write_bytes
from .mesh_io import BAKED_FORMATS, MESH_FORMATS, load_mesh, save_mesh

__all__ = ["BAKED_FORMATS", "MESH_FORMATS", "atomic_write", "atomic_write_bytes", "load_mesh", "save_mesh"]
