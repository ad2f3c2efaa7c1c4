"""File input/output: meshes (GLB, OBJ, PLY) and atomic writes."""

from .atomic import atomic_write, atomic_write_bytes
from .mesh_io import MESH_FORMATS, load_mesh, save_mesh

__all__ = ["MESH_FORMATS", "atomic_write", "atomic_write_bytes", "load_mesh", "save_mesh"]
