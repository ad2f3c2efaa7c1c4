"""Save and load :class:`~monorecon.core.mesh.Mesh` as GLB, OBJ (+ MTL + PNG), binary PLY, binary STL or USDZ.

USDZ (the AR format of Quick Look and RealityKit) and the other USD files are written and read by
:mod:`monorecon.io.usd_io`; the notes below are about the other formats.

* Frames: monorecon world coordinates are glTF's (+Y up, +Z front), so positions are written as given, with no
  rotation node. STL is the exception: slicers and CAD tools read it +Z up, so it is written (and read) in the Z-up
  frame of :func:`monorecon.core.cameras.world_to_z_up` (+Z up, the front towards -Y, as Blender shows a glTF).
  STL has no units; slicers read millimetres (``Mesh.placed(height=80)`` prints 8 cm tall).
* STL holds geometry only: colours and textures are not written; loading merges its per-face corners into shared
  vertices.
* OBJ: one ``v`` per distinct position (with its colour), so that copies of a vertex split at a UV seam or a hard
  edge stay one point in Blender; ``vt`` and ``vn`` (:func:`unit_vertex_normals`, as in GLB) per vertex, faces
  ``p/t/n`` (``p//n`` without a texture) in a smooth group. Loading gives the same corners (trimesh orders the
  vertices by their ``v``).
* UVs: :class:`Mesh` stores ``v`` up from the texture's bottom row. OBJ uses the same convention (``vt`` written as
  is); glTF's ``TEXCOORD_0`` has ``v`` down from the top, so GLB stores ``1 - v``. Loading (through trimesh, which uses
  the OBJ convention) gives back our convention for every format. OBJ gets UVs only with its texture: trimesh reads
  an OBJ with ``vt`` lines and no texture without its vertex colours.
* Colours: vertex colours are sRGB display values (what images hold), written as 8-bit values to PLY (``uchar``) and
  OBJ (floats after the position, the common ``v x y z r g b`` extension; not beside a texture, which they would
  tint, as in GLB). glTF defines ``COLOR_0`` as linear, so GLB gets linear float values (three.js, Blender and other
  glTF viewers then show the colours given), and glTF colours are read back to display values
  (:mod:`monorecon.io.gltf`).
  The texture is a PNG (embedded in a GLB, beside the OBJ).
* Every file is written atomically (:mod:`monorecon.io.atomic`): an error leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import plyfile
import pygltflib
import torch
import trimesh
from PIL import Image

from ..core.cameras import world_to_z_up, z_up_to_world
from ..core.mesh import Mesh, colors_to_uint8
from ..core.shading import UV_TOLERANCE, face_normals, repeat_uvs, sample_texture, uvs_repeat
from .atomic import atomic_path, atomic_write_bytes, check_writable
from .color_space import linear_to_srgb, srgb_to_linear
from .formats import (
    _USD_FORMATS,
    BAKED_FORMATS,
    LOADABLE_FORMATS,
    MESH_FORMATS,
    UNLIT_FORMATS,
    check_unlit,
    gets_baked_texture,
)
from .gltf import PercentDecodingResolver, trimesh_glb_bytes
from .images import png_bytes

__all__ = [
    "BAKED_FORMATS",
    "LOADABLE_FORMATS",
    "MESH_FORMATS",
    "UNLIT_FORMATS",
    "check_unlit",
    "gets_baked_texture",
    "load_mesh",
    "mesh_files",
    "save_mesh",
    "source_files",
    "unit_vertex_normals",
]

# glTF enumerations
_FLOAT, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE, _REPEAT = 9729, 9987, 33071, 10497
_UNLIT = "KHR_materials_unlit"


def check_savable(mesh: Mesh, mesh_format: str) -> None:
    """Refuse what :func:`save_mesh` cannot write, before anything is written: not a Mesh, or a texture for PLY.

    Raises:
        ValueError: as above.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"save_mesh expects a Mesh, got {type(mesh).__name__}")
    if mesh.texture is not None and mesh_format == "ply":
        raise ValueError("PLY files carry no texture: save a textured mesh as .glb, .obj or .usdz")


def save_mesh(mesh: Mesh, path: str | os.PathLike[str], format: str | None = None, *, unlit: bool = False) -> Path:
    """Write ``mesh`` to ``path``; the format comes from ``format`` or the file extension.

    Args:
        mesh: the mesh (world frame). A texture is written by GLB, OBJ and USDZ; PLY refuses textured meshes; STL
            writes the geometry only (Z-up, see the module notes).
        path: destination file; its folder must exist.
        format: ``"glb"``, ``"obj"``, ``"ply"``, ``"stl"`` or ``"usdz"``; default from the extension of ``path``.
        unlit: show the colours without shading, right for colours with baked-in lighting such as reconstructions:
            GLB marks the material ``KHR_materials_unlit``, USDZ makes the colour emissive; OBJ, PLY and STL ignore
            it (commands refuse it for them first: :func:`check_unlit`).

    Returns:
        ``path``. A textured OBJ also writes ``path.mtl`` and ``path.png`` (same stem) beside it.

    Warns:
        UserWarning: a USDZ of vertex colours (its usual viewers show none; the commands bake a texture for it).

    Raises:
        ValueError: unknown format, missing folder, or a texture for PLY.
    """
    path = Path(path)
    fmt = _format_of(path, format, MESH_FORMATS)
    check_savable(mesh, fmt)
    if fmt == "glb":
        atomic_write_bytes(path, _glb_bytes(mesh, unlit=unlit, name=path.stem))
    elif fmt == "ply":
        atomic_write_bytes(path, _ply_bytes(mesh))
    elif fmt == "stl":
        atomic_write_bytes(path, _stl_bytes(mesh))
    elif fmt == "usdz":
        from .usd_io import write_usdz

        if mesh.texture is None and mesh.vertex_colors is not None:  # the commands bake first (gets_baked_texture)
            warnings.warn(
                f"{path.name}: Quick Look and RealityKit show no vertex colours, so this USDZ will look white there: "
                "bake a texture first (monorecon.core.bake.bake_texture, or monorecon convert)",
                stacklevel=2,
            )
        with atomic_path(path) as temporary:
            write_usdz(mesh, temporary, unlit=unlit)
    else:
        _write_obj(mesh, path)
    return path


def load_mesh(path: str | os.PathLike[str]) -> Mesh:
    """Read a mesh from OBJ, PLY, GLB, glTF or STL with trimesh (unprocessed: vertex order kept), or from USD / USDZ.

    Scenes are flattened into one mesh with their node transforms applied. Vertex colours, face colours (as vertex
    colours), UVs and the base-colour image are kept (see :meth:`Mesh.from_trimesh`; USD:
    :func:`monorecon.io.usd_io.load_usd`). A flat material colour (a glTF ``baseColorFactor`` or an OBJ ``Kd``, on a
    part with no image and no vertex colours) is kept too: as vertex colours, or, in a scene with textured parts, as
    a solid patch of the merged texture. White, the default of
    both formats, is no colour unless another part has colours; then it is also the colour of parts that have none
    (what viewers show). glTF's ``COLOR_0`` and ``baseColorFactor``, linear values, are turned to display values.
    A textured glTF part's colour is glTF's base colour, texture x ``COLOR_0`` x ``baseColorFactor``: the factor and a
    uniform ``COLOR_0`` are multiplied into its texture; a varying ``COLOR_0`` is dropped with a warning, and so is
    alpha that would show (``alphaMode`` MASK or BLEND: :class:`Mesh` is opaque). The texture reads the UV set its
    ``texCoord`` names, with ``KHR_texture_transform`` applied (:func:`monorecon.io.gltf.trimesh_glb_bytes`).
    The colours of merged parts:

    * no textured part: vertex colours (own, flat or white);
    * textured parts and parts with flat colours (or none): one texture, the parts' images packed into an atlas
      (a tiling texture is copied as many times as the part's UVs repeat it, up to 8 per axis);
    * textured and vertex-coloured parts: vertex colours, the textures sampled at the vertices, with a warning
      (texture detail is lost).

    An OBJ whose material library or ``map_Kd`` texture is missing loads without it, with a warning naming it; one
    whose faces use index 0, an index past the file's last element or one (negative) before the first is refused,
    naming the line; negative indices count back from their face (trimesh counts from the end of the file). STL is
    read as Z-up and turned +Y up, its corners merged into shared vertices.

    Raises:
        ValueError: unknown extension, missing or empty file, a file that cannot be read as a non-empty mesh, or one
            whose triangles all have zero area.
    """
    path = Path(path)
    fmt = _format_of(path, None, LOADABLE_FORMATS)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a mesh file")
    if not path.is_file():
        raise ValueError(f"mesh file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"mesh file is empty: {path}")
    if fmt in _USD_FORMATS:
        from .usd_io import load_usd

        mesh = load_usd(path)
    elif fmt == "stl":
        mesh = _load_stl(path)
    else:
        mesh = _load_with_trimesh(path, fmt)
    if not float(mesh.face_areas.sum()) > 0:
        raise ValueError(f"invalid mesh in {path}: every triangle has zero area (no surface)")
    return mesh


def _load_with_trimesh(path: Path, fmt: str) -> Mesh:
    absolute_obj = _obj_absolute_indices(path) if fmt == "obj" else None
    try:
        rewritten = trimesh_glb_bytes(path) if fmt in ("glb", "gltf") else None
        if absolute_obj is not None:
            scene = trimesh.load_scene(io.BytesIO(absolute_obj), file_type="obj", process=False,
                                       resolver=trimesh.resolvers.FilePathResolver(path))  # fmt: skip
        elif fmt == "ply":
            scene = _load_ply_scene(path)
        elif rewritten is None:
            resolver = PercentDecodingResolver(path) if fmt == "gltf" else None
            scene = trimesh.load_scene(path, process=False, resolver=resolver)
        else:
            scene = trimesh.load_scene(io.BytesIO(rewritten), file_type="glb", process=False,
                                       resolver=PercentDecodingResolver(path))  # fmt: skip
        parts = [
            (transform, scene.geometry[name])
            for transform, name in (scene.graph[node] for node in scene.graph.nodes_geometry)
            if isinstance(scene.geometry[name], trimesh.Trimesh) and len(scene.geometry[name].faces) > 0
        ]
    except Exception as exc:  # trimesh raises many types on bad data
        detail = f"{type(exc).__name__}: {exc}" if str(exc).strip() else f"malformed file ({type(exc).__name__})"
        raise ValueError(f"could not read mesh {path}: {detail}") from exc
    if not parts:
        raise ValueError(f"could not read mesh {path}: no triangles found")
    if fmt == "ply":
        _check_ply_counts(parts[0][1], path)
    if fmt == "obj":
        _obj_textures(path, parts)
    elif fmt == "gltf":
        _warn_missing_gltf_images(path)
    try:
        return _merged(parts, path)
    except ValueError as exc:
        raise ValueError(f"invalid mesh in {path}: {exc}") from exc


def _load_ply_scene(path: Path) -> trimesh.Scene:
    """trimesh's reading of a PLY. A binary PLY whose faces have different sizes (Blender's export of triangles and
    quads), which trimesh's binary reader refuses, is read through its ASCII twin (same values: floats written with 18
    digits), so its polygons, colours and UVs come out as trimesh reads them from ASCII."""
    try:
        return trimesh.load_scene(path, process=False)
    except ValueError as exc:
        if str(exc) != "PLY is unexpected length!":
            raise
    ply = plyfile.PlyData.read(path)  # raises its own, more precise error on a cut file
    ply.text = True
    text = io.BytesIO()
    ply.write(text)
    return trimesh.load_scene(io.BytesIO(text.getvalue()), file_type="ply", process=False,
                              resolver=trimesh.resolvers.FilePathResolver(path))  # fmt: skip


def _merged(parts: list[tuple[np.ndarray, trimesh.Trimesh]], path: Path) -> Mesh:
    """One mesh from a scene's parts (world transforms applied), their colours kept as :func:`load_mesh` says."""
    meshes = [_pbr_base_color(Mesh.from_trimesh(part), part, path) for _, part in parts]
    own = [mesh.texture is not None or mesh.vertex_colors is not None for mesh in meshes]
    flats = [None if has else _flat_color(part) for has, (_, part) in zip(own, parts, strict=True)]
    if not any(own) and all(flat is None or bool((flat == 1).all()) for flat in flats):
        # White is the default of glTF (our own files write it) and of our OBJ files: on its own it is no colour.
        flats = [None] * len(flats)
    else:  # a part with no colour is shown in its format's default material colour, white
        flats = [torch.ones(3) if flat is None and not has else flat for flat, has in zip(flats, own, strict=True)]
    textured = any(mesh.texture is not None for mesh in meshes)
    if textured and any(mesh.texture is None and mesh.vertex_colors is not None for mesh in meshes):
        warnings.warn(
            f"{path.name}: textured parts merged as vertex colours (vertex-coloured parts have no texture to share): "
            "the textures were sampled at the vertices (texture detail dropped)",
            stacklevel=4,
        )
        meshes = [
            dataclasses.replace(mesh, vertex_colors=_sampled_texture(mesh), uvs=None, texture=None)
            if mesh.texture is not None
            else mesh
            for mesh in meshes
        ]
        textured = False
    meshes = [
        mesh if flat is None else _flat_colored(mesh, flat, as_texture=textured)
        for mesh, flat in zip(meshes, flats, strict=True)
    ]
    meshes = [_transformed(mesh, transform) for (transform, _), mesh in zip(parts, meshes, strict=True)]
    return _atlas(meshes) if textured and len(meshes) > 1 else _concatenate(meshes)


def _pbr_base_color(mesh: Mesh, part: trimesh.Trimesh, path: Path) -> Mesh:
    """A glTF part's colours as glTF defines its base colour, texture x ``COLOR_0`` x ``baseColorFactor`` (linear
    values): a textured part gets the factor and a uniform ``COLOR_0`` multiplied into its texture (the texture is
    then its only colour). Warns (one line) about what a :class:`Mesh` cannot hold: a ``COLOR_0`` that varies over
    a texture (dropped), alpha that makes the part transparent or cut out (``alphaMode`` MASK or BLEND; loaded
    opaque). Other parts are returned as they are."""
    material = getattr(part.visual, "material", None)
    if not isinstance(material, trimesh.visual.material.PBRMaterial):
        return mesh
    _warn_dropped_alpha(part, material, path)
    if mesh.texture is None:
        return mesh
    tint = np.ones(3)
    if material.baseColorFactor is not None:
        tint *= srgb_to_linear(trimesh.visual.color.to_float(np.asarray(material.baseColorFactor).reshape(-1))[:3])
    if mesh.vertex_colors is not None:
        colors = mesh.vertex_colors.detach().cpu().double()
        if float((colors - colors[0]).abs().max()) <= 1.0 / 255.0:
            tint *= srgb_to_linear(colors[0].numpy())
        else:
            warnings.warn(
                f"{path.name}: COLOR_0 varies over a textured part (glTF multiplies them): loaded with the texture "
                "alone (vertex colours dropped)",
                stacklevel=5,
            )
    texture = mesh.texture
    if bool((np.abs(tint - 1.0) > 0.5 / 255.0).any()):
        linear = srgb_to_linear(texture.detach().cpu().double().numpy()) * tint
        texture = torch.from_numpy(linear_to_srgb(linear)).to(texture.dtype)
    return dataclasses.replace(mesh, vertex_colors=None, texture=texture)


def _warn_dropped_alpha(part: trimesh.Trimesh, material: trimesh.visual.material.PBRMaterial, path: Path) -> None:
    """Warn (one line) when a glTF part's alpha (``baseColorFactor`` x texture x ``COLOR_0``) makes it see-through:
    under ``alphaMode`` BLEND any alpha below 1, under MASK the lowest alpha below ``alphaCutoff`` (default 0.5);
    OPAQUE ignores alpha. :class:`Mesh` has no alpha: the part loads opaque."""
    mode = str(material.alphaMode or "OPAQUE").upper()
    if mode not in ("MASK", "BLEND"):
        return
    alpha = (
        1.0 if material.baseColorFactor is None else float(trimesh.visual.color.to_float(material.baseColorFactor)[3])
    )
    image = material.baseColorTexture
    if isinstance(image, Image.Image) and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
        alpha *= float(np.asarray(image.convert("RGBA"))[..., 3].min()) / 255.0
    colors = (
        part.visual.vertex_attributes.get("color") if isinstance(part.visual, trimesh.visual.TextureVisuals) else None
    )
    if colors is None and isinstance(part.visual, trimesh.visual.ColorVisuals) and part.visual.kind == "vertex":
        colors = part.visual.vertex_colors
    if colors is not None and np.shape(colors)[-1] == 4:
        alpha *= float(trimesh.visual.color.to_float(np.asarray(colors)[:, 3]).min())
    cutoff = 0.5 if material.alphaCutoff is None else float(material.alphaCutoff)
    if alpha < (cutoff if mode == "MASK" else 1.0 - 0.5 / 255.0):
        cut = "cut-outs" if mode == "MASK" else "transparency"
        warnings.warn(
            f"{path.name}: alpha dropped (alphaMode {mode}): its {cut} load opaque, and every format is written opaque",
            stacklevel=5,
        )


def _flat_colored(mesh: Mesh, color: torch.Tensor, *, as_texture: bool) -> Mesh:
    """The part in one (3,) colour: as vertex colours, or (``as_texture``) as a 1 x 1 texture every UV points at."""
    if as_texture:
        return dataclasses.replace(mesh, uvs=torch.full((mesh.num_verts, 2), 0.5), texture=color.reshape(1, 1, 3))
    return dataclasses.replace(mesh, vertex_colors=color.expand(mesh.num_verts, 3).clone())


_ATLAS_PADDING = 2
"""Texels of border copies around each image in an atlas, so that bilinear lookups and mipmaps do not bleed."""
_MAX_ATLAS_SIDE = 8192
"""The images of an atlas that would be larger are scaled down together."""


_MAX_TILES = 8
"""Repeats of a tiling texture per axis copied into an atlas; a part whose UVs span more get them wrapped per vertex."""


def _atlas(meshes: list[Mesh]) -> Mesh:
    """One mesh from textured parts: their images packed into one texture, side by side in rows (tallest first),
    each framed by :data:`_ATLAS_PADDING` copies of its border texels, and the UVs moved onto them. A part whose UVs
    span several repeats of its (tiling) image gets that many copies of it, up to :data:`_MAX_TILES` per axis; beyond
    that its UVs are wrapped per vertex (faces across a repeat's edge then lose their texture)."""
    tiled = [_tiled(mesh.uvs.detach().float()) for mesh in meshes]
    sizes = [
        (mesh.texture.shape[0] * nv, mesh.texture.shape[1] * nu)
        for mesh, (_, (nu, nv)) in zip(meshes, tiled, strict=True)
    ]
    scale = 1.0
    while True:
        scaled = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in sizes]
        corners, (height, width) = _shelf_layout([(h + 2 * _ATLAS_PADDING, w + 2 * _ATLAS_PADDING) for h, w in scaled])
        if max(height, width) <= _MAX_ATLAS_SIDE:
            break
        scale *= 0.95 * _MAX_ATLAS_SIDE / max(height, width)
    atlas = torch.zeros(height, width, 3)
    uvs = []
    for mesh, (uv, (nu, nv)), (h, w), (top, left) in zip(meshes, tiled, scaled, corners, strict=True):
        image = mesh.texture.detach().float().permute(2, 0, 1)[None].repeat(1, 1, nv, nu)
        if (h, w) != tuple(image.shape[-2:]):
            image = torch.nn.functional.interpolate(image, size=(h, w), mode="area")
        framed = torch.nn.functional.pad(image, (_ATLAS_PADDING,) * 4, mode="replicate")[0].permute(1, 2, 0)
        atlas[top : top + framed.shape[0], left : left + framed.shape[1]] = framed
        column = left + _ATLAS_PADDING + uv[:, 0] * w
        row = top + _ATLAS_PADDING + (1.0 - uv[:, 1]) * h
        uvs.append(torch.stack([column / width, 1.0 - row / height], dim=1))
    merged = _concatenate([dataclasses.replace(mesh, uvs=None, texture=None) for mesh in meshes])
    return dataclasses.replace(merged, uvs=torch.cat(uvs), texture=atlas)


def _tiled(uv: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(V, 2) UVs of a part -> the same places in a block of (nu, nv) repeats of its image, as UVs in [0, 1] of the
    block, and (nu, nv): the whole repeats its UVs span (an edge within :data:`UV_TOLERANCE` of a whole number is
    that number). Past :data:`_MAX_TILES` repeats: the UVs wrapped per vertex, one repeat."""
    low = torch.floor(uv.min(dim=0).values + UV_TOLERANCE)
    count = (torch.ceil(uv.max(dim=0).values - UV_TOLERANCE) - low).clamp(min=1)
    if bool((count > _MAX_TILES).any()):
        return repeat_uvs(uv), (1, 1)
    return ((uv - low) / count).clamp(0.0, 1.0), (int(count[0]), int(count[1]))


def _shelf_layout(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Place rectangles of (height, width) in rows, tallest first, in a square-ish area: each one's (top, left) in the
    input order, and the (height, width) of the whole."""
    width = max(max(w for _, w in sizes), int(np.ceil(np.sqrt(sum(h * w for h, w in sizes)))))
    corners: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    top = left = row_height = 0
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i][0]):
        h, w = sizes[index]
        if left + w > width:
            top, left, row_height = top + row_height, 0, 0
        corners[index] = (top, left)
        left, row_height = left + w, max(row_height, h)
    return corners, (top + row_height, width)


def _flat_color(part: trimesh.Trimesh) -> torch.Tensor | None:
    """(3,) the flat colour of a part's material in [0, 1]: a glTF ``baseColorFactor`` or an OBJ ``Kd`` given in the
    file (trimesh's default diffuse is no colour), alpha dropped; None for none."""
    material = getattr(part.visual, "material", None)
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        rgba = material.baseColorFactor
    elif isinstance(material, trimesh.visual.material.SimpleMaterial):
        given = getattr(material, "kwargs", None) or {}
        rgba = material.diffuse if "kd" in given or "diffuse" in given else None
    else:
        return None
    if rgba is None or np.shape(rgba)[-1:] not in ((3,), (4,)):
        return None
    rgb = trimesh.visual.color.to_float(np.asarray(rgba).reshape(-1))[:3]
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0).astype(np.float32))


def _sampled_texture(mesh: Mesh) -> torch.Tensor:
    """(V, 3) the texture bilinearly sampled at each vertex's UV (:func:`~monorecon.core.shading.repeat_uvs`)."""
    uvs = repeat_uvs(mesh.uvs.detach().float())
    return sample_texture(mesh.texture.detach().float(), uvs[None])[0].clamp(0.0, 1.0).to(mesh.texture.dtype)


def _check_ply_counts(part: trimesh.Trimesh, path: Path) -> None:
    """Raise ValueError when a PLY holds fewer vertices or faces than its header declares (trimesh reads a cut ASCII
    file without a word; a polygon can only add triangles)."""
    raw = part.metadata.get("_ply_raw", {})
    for element, plural, read in (("vertex", "vertices", len(part.vertices)), ("face", "faces", len(part.faces))):
        declared = raw.get(element, {}).get("length")
        if isinstance(declared, int | np.integer) and read < declared:
            raise ValueError(f"invalid mesh in {path}: the header declares {declared} {plural}, {read} were read")


_OBJ_ELEMENTS = (b"v", b"vt", b"vn")
"""The elements an OBJ face corner ``v/vt/vn`` refers to, in that order."""


def _obj_absolute_indices(path: Path) -> bytes | None:
    """Check an OBJ's face indices; return the file with its negative (relative) indices made absolute, which
    trimesh reads wrongly (counted back from the end of the file), or None when it has none.

    OBJ indices count from 1; a negative one counts back from the last element defined before its face.

    Raises:
        ValueError: naming the line: an index that is 0, not an integer, or refers to no element (trimesh reads 0
            as the last vertex, and fails on the others with a bare IndexError).
    """
    text = path.read_bytes()
    if _obj_indices_plain(text):
        return None
    counts = dict.fromkeys(_OBJ_ELEMENTS, 0)
    highest = dict.fromkeys(_OBJ_ELEMENTS, (0, 0))  # per element: the largest index, its line
    lines = text.split(b"\n")
    relative = False
    for number, line in enumerate(lines, start=1):
        fields = line.split(b"#", 1)[0].split()  # a comment may end a line
        if fields and fields[0] in counts:
            counts[fields[0]] += 1
        elif fields and fields[0] == b"f":
            corners = [_obj_corner(corner, counts, path, number) for corner in fields[1:]]
            for corner in corners:
                for element, index in zip(_OBJ_ELEMENTS, corner, strict=True):
                    if index is not None and index > highest[element][0]:
                        highest[element] = (index, number)
            if any(b"-" in field for field in fields):
                relative = True
                lines[number - 1] = b" ".join(
                    [b"f", *(b"/".join(b"" if i is None else b"%d" % i for i in corner) for corner in corners)]
                )
    for element, (index, number) in highest.items():
        if index > counts[element]:
            raise ValueError(
                f"invalid OBJ {path}, line {number}: face index {index} is past the last {element.decode()} "
                f"({counts[element]} in the file)"
            )
    return b"\n".join(lines) if relative else None


def _obj_indices_plain(text: bytes) -> bool:
    """Whether an OBJ's faces surely use positive indices within the elements of the file only (a vectorised check,
    fast on large files); if not, :func:`_obj_absolute_indices` looks at them line by line."""
    faces = b" ".join([line[2:] for line in text.split(b"\n") if line[:2] in (b"f ", b"f\t")])
    if b"-" in faces:
        return False
    with warnings.catch_warnings():  # numpy's text parsing warns before it raises on junk
        warnings.simplefilter("ignore")
        try:
            indices = np.fromstring(faces.replace(b"/", b" "), dtype=np.int64, sep=" ")
        except ValueError:  # not integers (or a comment): the line-by-line check names the problem
            return False
    # elements on lines starting "v ", "vt "... (the usual spelling; enough for a bound)
    most = max(text.count(b"\n" + element + b" ") + text.startswith(element + b" ") for element in _OBJ_ELEMENTS)
    return indices.size == 0 or (int(indices.min()) >= 1 and int(indices.max()) <= most)


def _obj_corner(corner: bytes, counts: dict[bytes, int], path: Path, number: int) -> tuple[int | None, ...]:
    """The absolute (1-based) ``v``, ``vt``, ``vn`` indices of a face corner ``v/vt/vn`` on line ``number`` (None
    where absent), ``counts`` the elements defined before it; ValueError for 0, a non-integer, or one before the
    first element."""
    indices: list[int | None] = [None, None, None]
    for position, (element, token) in enumerate(zip(_OBJ_ELEMENTS, corner.split(b"/"), strict=False)):
        if not token:
            continue
        text = token.decode(errors="replace")
        try:
            index = int(text)
        except ValueError:
            raise ValueError(f"invalid OBJ {path}, line {number}: face index {text!r} is not an integer") from None
        if index == 0:
            raise ValueError(f"invalid OBJ {path}, line {number}: face index 0 (OBJ indices start at 1)")
        if index < 0 and -index > counts[element]:
            raise ValueError(
                f"invalid OBJ {path}, line {number}: face index {index} points before the first {element.decode()} "
                f"({counts[element]} defined before it)"
            )
        indices[position] = index if index > 0 else counts[element] + 1 + index
    return tuple(indices)


def _obj_textures(path: Path, parts: list[tuple[np.ndarray, trimesh.Trimesh]]) -> None:
    """Give the parts the ``map_Kd`` images trimesh did not read, written with options (``map_Kd -s 1 1 1 a.png``)
    or Windows separators (``tex\\a.png``); warn (one line) about a material library or texture that cannot be read
    (trimesh loads the OBJ without it, silently)."""
    library, maps = _obj_material_names(path)
    if library is None:
        return
    if maps is None:
        warnings.warn(f"{path.name}: material library {library} not found: loaded without its materials", stacklevel=4)
        return
    resolver = trimesh.resolvers.FilePathResolver(path)
    read = {
        material.name
        for _, part in parts
        if getattr(material := getattr(part.visual, "material", None), "image", None) is not None
    }
    images, missing = {}, []
    for material, value in maps.items():
        if material in read:  # trimesh has it: not decoded twice
            continue
        name = _map_file_name(value)
        try:
            with Image.open(io.BytesIO(resolver.get(name))) as image:
                image.load()
                images[material] = image
        except Exception:  # missing or unreadable, as trimesh skips it
            missing.append(name)
    for _, part in parts:
        material = getattr(part.visual, "material", None)
        uv = getattr(part.visual, "uv", None)
        if uv is not None and isinstance(material, trimesh.visual.material.SimpleMaterial) and material.image is None:
            material.image = images.get(material.name)
    if missing:
        warnings.warn(
            f"{path.name}: texture {', '.join(dict.fromkeys(missing))} (map_Kd of {library}) not found or unreadable: "
            "loaded without it",
            stacklevel=4,
        )


_MAP_OPTIONS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1, "-texres": 1}
"""Options of an MTL map statement with their argument counts; ``-mm`` takes 2 numbers, ``-o`` / ``-s`` / ``-t`` 1-3."""


def _map_file_name(value: str) -> str:
    """The file of an MTL ``map_Kd`` value: its options skipped, Windows separators made ``/``."""
    tokens = value.split()
    index = 0
    while index < len(tokens) and tokens[index].startswith("-"):
        option = tokens[index].lower()
        if option in _MAP_OPTIONS:
            index += 1 + _MAP_OPTIONS[option]
        elif option in ("-mm", "-o", "-s", "-t"):
            index += 1
            for _ in range(2 if option == "-mm" else 3):
                if index < len(tokens) - 1 and _is_number(tokens[index]):
                    index += 1
        else:
            break
    return " ".join(tokens[index:]).replace("\\", "/")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _warn_missing_gltf_images(path: Path) -> None:
    """Warn (one line) when images a ``.gltf`` names by URI cannot be read: trimesh loads it without them, silently."""
    try:
        images = json.loads(path.read_text(encoding="utf-8")).get("images") or []
    except (OSError, ValueError, AttributeError):  # trimesh read it: nothing more to say here
        return
    missing = []
    for uri in (image.get("uri") for image in images if isinstance(image, dict)):
        if isinstance(uri, str) and not uri.startswith("data:"):
            if not any((path.parent / name).is_file() for name in (uri, urllib.parse.unquote(uri))):
                missing.append(urllib.parse.unquote(uri))
    if missing:
        warnings.warn(f"{path.name}: image {', '.join(missing)} not found: loaded without it", stacklevel=4)


def _obj_material_names(path: Path) -> tuple[str | None, dict[str, str] | None]:
    """An OBJ's material library name (the first ``mtllib``, as trimesh reads it; None for none) and its materials'
    ``map_Kd`` values (None when the library cannot be read), looked up as trimesh does, relative to the OBJ."""
    with open(path, "rb") as file:
        text = file.read().decode("utf-8", errors="replace")
    start = text.find("mtllib")
    if start < 0:
        return None, None
    end = text.find("\n", start)
    library = text[start + 6 : end if end >= 0 else len(text)].strip()
    try:
        mtl = trimesh.resolvers.FilePathResolver(path).get(library).decode("utf-8", errors="replace")
    except Exception:  # a missing file, or a name outside the OBJ's folder
        return library, None
    maps, material = {}, None
    for line in mtl.splitlines():
        split = line.strip().split(maxsplit=1)
        if len(split) == 2 and split[0].lower() == "newmtl":
            material = split[1].strip()
        elif len(split) == 2 and split[0].lower() == "map_kd" and material is not None:
            maps[material] = split[1].strip()
    return library, maps


def source_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files :func:`load_mesh` reads for ``path``: the file, and for an OBJ the material library and textures it
    names that exist beside it."""
    path = Path(path)
    files = [path]
    if path.suffix.lower() == ".obj" and path.is_file():
        library, maps = _obj_material_names(path)
        names = ([library] if library else []) + [_map_file_name(value) for value in (maps or {}).values()]
        files += [path.parent / name for name in names if (path.parent / name).is_file()]
    return files


def mesh_files(mesh: Mesh, path: str | os.PathLike[str]) -> list[Path]:
    """The files :func:`save_mesh` writes for ``mesh`` at ``path``: the mesh file, and for a textured OBJ its MTL and
    PNG beside it (same stem)."""
    path = Path(path)
    if path.suffix.lower() == ".obj" and mesh.texture is not None:
        return [path, path.with_suffix(".mtl"), path.with_suffix(".png")]
    return [path]


def _transformed(mesh: Mesh, transform: np.ndarray) -> Mesh:
    """Apply a scene node's 4x4 world transform (faces reversed for mirroring transforms, to stay outward)."""
    if np.allclose(transform, np.eye(4)):
        return mesh
    matrix = torch.from_numpy(np.array(transform, dtype=np.float64))
    verts = (mesh.verts.double() @ matrix[:3, :3].T + matrix[:3, 3]).to(mesh.verts.dtype)
    faces = mesh.faces.flip(1) if float(torch.linalg.det(matrix[:3, :3])) < 0 else mesh.faces
    return dataclasses.replace(mesh, verts=verts, faces=faces)


def _concatenate(meshes: list[Mesh]) -> Mesh:
    """One mesh from untextured parts; vertex colours are kept only if every part has them."""
    if len(meshes) == 1:
        return meshes[0]
    offsets = np.cumsum([0] + [m.num_verts for m in meshes[:-1]]).tolist()
    colored = all(m.vertex_colors is not None for m in meshes)
    return Mesh(
        verts=torch.cat([m.verts for m in meshes]),
        faces=torch.cat([m.faces + offset for m, offset in zip(meshes, offsets, strict=True)]),
        vertex_colors=torch.cat([m.vertex_colors for m in meshes]) if colored else None,
    )


def _format_of(path: Path, format: str | None, allowed: tuple[str, ...]) -> str:
    fmt = (format if format is not None else path.suffix.lstrip(".")).lower()
    if fmt not in allowed:
        got = f"format {format!r}" if format is not None else f"extension {path.suffix!r} of {path}"
        raise ValueError(f"unknown mesh {got}; expected one of {', '.join(allowed)}")
    return fmt


# --------------------------------------------------------------------------------------------------------------------
# GLB
# --------------------------------------------------------------------------------------------------------------------
def _glb_bytes(mesh: Mesh, *, unlit: bool = False, name: str | None = None) -> bytes:
    """The mesh as a binary glTF 2.0 file (one node, one primitive, no transform); see the module notes. ``name``
    (the file's stem) names the node, the mesh and the image, as importers (Blender) show them."""
    verts = mesh.verts.detach().cpu().float().numpy()
    normals = unit_vertex_normals(mesh)

    builder = _GlbBuilder()
    attributes = pygltflib.Attributes(
        POSITION=builder.accessor(verts, "VEC3", _FLOAT, _ARRAY_BUFFER, with_bounds=True),
        NORMAL=builder.accessor(normals, "VEC3", _FLOAT, _ARRAY_BUFFER),
    )
    short = mesh.num_verts <= 65535  # 16-bit indices where they suffice: half the bytes (65535 is glTF's restart value)
    indices = builder.accessor(
        mesh.faces.cpu().numpy().astype(np.uint16 if short else np.uint32).reshape(-1),
        "SCALAR",
        _UNSIGNED_SHORT if short else _UNSIGNED_INT,
        _ELEMENT_ARRAY_BUFFER,
    )
    pbr = pygltflib.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0)
    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator="monorecon"))
    if mesh.uvs is not None:
        uvs = mesh.uvs.detach().cpu().float().numpy().copy()
        uvs[:, 1] = 1.0 - uvs[:, 1]  # glTF: v down from the top row
        attributes.TEXCOORD_0 = builder.accessor(uvs, "VEC2", _FLOAT, _ARRAY_BUFFER)
        if mesh.texture is not None:
            image_view = builder.buffer_view(png_bytes(colors_to_uint8(mesh.texture)), target=None)
            gltf.images = [pygltflib.Image(bufferView=image_view, mimeType="image/png", name=name)]
            wrap = _REPEAT if uvs_repeat(mesh.uvs) else _CLAMP_TO_EDGE  # clamped: a baked atlas' edges do not bleed
            gltf.samplers = [
                pygltflib.Sampler(magFilter=_LINEAR, minFilter=_LINEAR_MIPMAP_LINEAR, wrapS=wrap, wrapT=wrap)
            ]
            gltf.textures = [pygltflib.Texture(sampler=0, source=0)]
            pbr.baseColorTexture = pygltflib.TextureInfo(index=0)
    if mesh.vertex_colors is not None and mesh.texture is None:  # COLOR_0 would tint the texture
        linear = srgb_to_linear(mesh.vertex_colors.detach().cpu().double().numpy()).astype(np.float32)
        attributes.COLOR_0 = builder.accessor(linear, "VEC3", _FLOAT, _ARRAY_BUFFER)

    material = pygltflib.Material(pbrMetallicRoughness=pbr, name="material0")
    if unlit:
        material.extensions = {_UNLIT: {}}
        gltf.extensionsUsed = [_UNLIT]
    gltf.materials = [material]
    primitive = pygltflib.Primitive(attributes=attributes, indices=indices, material=0)
    gltf.meshes = [pygltflib.Mesh(primitives=[primitive], name=name)]
    gltf.nodes = [pygltflib.Node(mesh=0, name=name)]
    gltf.scenes = [pygltflib.Scene(nodes=[0])]
    gltf.scene = 0
    gltf.accessors = builder.accessors
    gltf.bufferViews = builder.buffer_views
    blob = builder.blob()
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(blob)
    return b"".join(gltf.save_to_bytes())


def unit_vertex_normals(mesh: Mesh) -> np.ndarray:
    """(V, 3) float32 unit vertex normals for export (validators require unit length): :attr:`Mesh.vertex_normals`
    (copies at UV seams share one normal, hard edges stay hard), computed in float64; +Y where none is defined."""
    normals = Mesh(mesh.verts.detach().cpu().double(), mesh.faces.cpu()).vertex_normals.numpy()
    normals[np.linalg.norm(normals, axis=1) < 0.5] = (0.0, 1.0, 0.0)
    return (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32)


class _GlbBuilder:
    """Packs arrays into one 4-byte aligned binary buffer with their buffer views and accessors."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0
        self.buffer_views: list[pygltflib.BufferView] = []
        self.accessors: list[pygltflib.Accessor] = []

    def buffer_view(self, data: bytes, target: int | None) -> int:
        self.buffer_views.append(
            pygltflib.BufferView(buffer=0, byteOffset=self.offset, byteLength=len(data), target=target)
        )
        padded = data + b"\x00" * (-len(data) % 4)
        self.chunks.append(padded)
        self.offset += len(padded)
        return len(self.buffer_views) - 1

    def accessor(
        self,
        array: np.ndarray,
        kind: str,
        component_type: int,
        target: int,
        *,
        with_bounds: bool = False,
    ) -> int:
        array = np.ascontiguousarray(array)
        view = self.buffer_view(array.tobytes(), target)
        count = int(array.shape[0])
        accessor = pygltflib.Accessor(bufferView=view, componentType=component_type, count=count, type=kind)
        if with_bounds:  # float32 values are exact in JSON doubles, as the validator requires
            accessor.min = [float(x) for x in array.min(axis=0)]
            accessor.max = [float(x) for x in array.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def blob(self) -> bytes:
        return b"".join(self.chunks)


# --------------------------------------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------------------------------------
def _ply_bytes(mesh: Mesh) -> bytes:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.vertex_colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if mesh.uvs is not None:
        fields += [("s", "<f4"), ("t", "<f4")]
    vertices = np.empty(mesh.num_verts, dtype=fields)
    xyz = mesh.verts.detach().cpu().float().numpy()
    vertices["x"], vertices["y"], vertices["z"] = xyz.T
    if mesh.vertex_colors is not None:
        rgb = colors_to_uint8(mesh.vertex_colors)
        vertices["red"], vertices["green"], vertices["blue"] = rgb.T
    if mesh.uvs is not None:
        vertices["s"], vertices["t"] = mesh.uvs.detach().cpu().float().numpy().T
    faces = np.empty(mesh.num_faces, dtype=[("n", "u1"), ("index", "<i4", (3,))])
    faces["n"] = 3
    faces["index"] = mesh.faces.cpu().numpy()
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment monorecon",
        f"element vertex {mesh.num_verts}",
        *(f"property {ply_types[dtype]} {name}" for name, dtype in fields),
        f"element face {mesh.num_faces}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    return ("\n".join(header) + "\n").encode("ascii") + vertices.tobytes() + faces.tobytes()


# --------------------------------------------------------------------------------------------------------------------
# STL
# --------------------------------------------------------------------------------------------------------------------
_STL_FACET = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attributes", "<u2")])


def _stl_bytes(mesh: Mesh) -> bytes:
    """Binary STL: an 80-byte header, the facet count, then per facet its unit normal and corners (Z-up frame)."""
    verts, faces = world_to_z_up(mesh.verts.detach().cpu().double()), mesh.faces.cpu()
    corners, normals = verts[faces], face_normals(verts, faces)  # (F, 3, 3), (F, 3): (0, 0, 0) if degenerate
    facets = np.zeros(mesh.num_faces, dtype=_STL_FACET)
    facets["normal"], facets["corners"] = normals.numpy(), corners.numpy()
    header = b"monorecon binary STL, +Z up".ljust(80, b" ")
    return header + np.uint32(mesh.num_faces).tobytes() + facets.tobytes()


def _load_stl(path: Path) -> Mesh:
    try:
        tm = trimesh.load_mesh(path, file_type="stl", process=False)
    except Exception as exc:  # trimesh raises many types on bad data
        raise ValueError(f"could not read mesh {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise ValueError(f"could not read mesh {path}: no triangles found")
    tm.merge_vertices()  # STL repeats every corner; the shared vertices are what a mesh is made of
    verts = z_up_to_world(torch.as_tensor(np.asarray(tm.vertices), dtype=torch.float32))
    try:
        return Mesh(verts, torch.as_tensor(np.asarray(tm.faces), dtype=torch.int64))
    except ValueError as exc:
        raise ValueError(f"invalid mesh in {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------------
# OBJ
# --------------------------------------------------------------------------------------------------------------------
def _write_obj(mesh: Mesh, path: Path) -> None:
    # Every file's content is made and every path checked before any is written, so a failure leaves no file behind.
    lines = ["# monorecon"]
    companions: list[tuple[Path, bytes]] = []
    if mesh.texture is not None:
        _, mtl_path, png_path = mesh_files(mesh, path)
        mtl = f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png_path.name}\n"
        companions = [(mtl_path, mtl.encode()), (png_path, png_bytes(colors_to_uint8(mesh.texture)))]
        lines += [f"mtllib {mtl_path.name}", "usemtl material0"]
    # %.9g keeps float32 values exact. Each distinct position (with its colour) is one `v`, so that copies of a vertex
    # split at a UV seam or a hard edge stay one point for importers that weld by index (Blender: no open seams).
    points = mesh.verts.detach().cpu().float().numpy().astype(np.float64)
    if mesh.vertex_colors is not None and mesh.texture is None:  # colours would tint the texture, as in GLB
        points = np.concatenate([points, mesh.vertex_colors.detach().cpu().double().numpy()], axis=1)
    _, first, point_of = np.unique(points, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # points in the order of their first vertex: a mesh with no copies keeps its order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    point_of = rank[point_of.reshape(-1)]
    lines += _format_rows("v", points[first[order]])
    textured = mesh.uvs is not None and mesh.texture is not None
    if textured:
        lines += _format_rows("vt", mesh.uvs.detach().cpu().float().numpy().astype(np.float64))  # v up, as OBJ
    lines += _format_rows("vn", unit_vertex_normals(mesh).astype(np.float64))  # smooth shading, as GLB
    lines += ["s 1"]  # smooth shading group: importers (Blender) shade with the `vn` normals, not flat
    faces = mesh.faces.cpu().numpy()
    fields = [point_of[faces], faces, faces] if textured else [point_of[faces], faces]  # `vt`, `vn` per vertex
    corner = "%d/%d/%d" if textured else "%d//%d"
    rows = np.stack(fields, axis=-1).reshape(len(faces), -1) + 1  # 1-based, like all OBJ indices
    lines += [("f " + " ".join([corner] * 3)) % tuple(row) for row in rows.tolist()]
    obj = ("\n".join(lines) + "\n").encode()
    for companion, _ in companions:
        check_writable(companion)
    written = []
    try:
        for companion, data in companions:  # first, so the OBJ never references a missing file
            atomic_write_bytes(companion, data)
            written.append(companion)
        atomic_write_bytes(path, obj)
    except BaseException:
        for companion in written:
            companion.unlink(missing_ok=True)
        raise


def _format_rows(tag: str, rows: np.ndarray) -> list[str]:
    row_format = " ".join([tag] + ["%.9g"] * rows.shape[1])
    return [row_format % tuple(row) for row in rows.tolist()]
