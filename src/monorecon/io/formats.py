"""Mesh file formats and the rules on what each carries (a baked texture, an unlit material): plain Python, so
that the command line checks its arguments without importing PyTorch. :mod:`monorecon.io.mesh_io` re-exports them.
"""

from __future__ import annotations

__all__ = ["BAKED_FORMATS", "LOADABLE_FORMATS", "MESH_FORMATS", "UNLIT_FORMATS", "check_unlit", "gets_baked_texture"]

MESH_FORMATS = ("glb", "obj", "ply", "stl", "usdz")
"""Formats :func:`save_mesh` writes."""
BAKED_FORMATS = ("usdz",)
"""Formats whose usual viewers (Quick Look, RealityKit) show textures and no vertex colours: pipelines bake for them."""
UNLIT_FORMATS = ("glb", "usdz")
"""Formats with an unlit material (``save_mesh(unlit=True)``): GLB's ``KHR_materials_unlit``, USDZ's emissive colour."""
_UNTEXTURED_FORMATS = ("ply", "stl")
_USD_FORMATS = ("usd", "usda", "usdc", "usdz")
LOADABLE_FORMATS = ("glb", "gltf", "obj", "ply", "stl", *_USD_FORMATS)
"""Formats :func:`load_mesh` reads."""


def gets_baked_texture(mesh_format: str, bake_texture: bool) -> bool:
    """Whether a mesh written as ``mesh_format`` gets a baked texture: when asked for, and always for
    :data:`BAKED_FORMATS` (the one rule of ``reconstruct``, ``convert`` and the server).

    Raises:
        ValueError: a baked texture asked for PLY or STL, which carry none.
    """
    if bake_texture and mesh_format in _UNTEXTURED_FORMATS:
        raise ValueError(
            f"{mesh_format.upper()} files carry no texture: ask for a glb, obj or usdz file, or for no baked texture"
        )
    return bake_texture or mesh_format in BAKED_FORMATS


def check_unlit(mesh_format: str, unlit: bool) -> None:
    """Refuse an unlit material asked for a format that has none (checked by commands before their slow work).

    Raises:
        ValueError: ``unlit`` with a format outside :data:`UNLIT_FORMATS`.
    """
    if unlit and mesh_format not in UNLIT_FORMATS:
        raise ValueError(
            f"{mesh_format.upper()} files have no unlit material: unlit colours apply only to glb and usdz"
        )
