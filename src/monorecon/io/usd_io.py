"""USDZ export and USD import (OpenUSD, through Pixar's ``usd-core``): the AR format of Quick Look and RealityKit.

Written package (``UsdUtils.CreateNewARKitUsdzPackage``: one uncompressed, 64-byte aligned zip):

* ``model.usdc``: stage metadata ``upAxis = "Y"``, ``metersPerUnit = 1`` (so mesh units are metres, as in glTF) and
  ``defaultPrim = /Model``; ``/Model`` (Xform, kind ``component``) holds ``/Model/Mesh`` (triangles, counter-clockwise
  from outside: USD's ``rightHanded`` orientation; ``subdivisionScheme = "none"``, or viewers would smooth it; vertex
  normals, ``extent``) and ``/Model/Material`` (a ``UsdPreviewSurface``, roughness 1, metallic 0).
* The colours: a texture becomes ``texture.png`` read by a ``UsdUVTexture`` (``sourceColorSpace = "sRGB"``) at
  ``primvars:st`` (vertex UVs, ``v`` up from the bottom row as in :class:`~monorecon.core.mesh.Mesh`); vertex colours
  become ``primvars:displayColor``, converted to linear values as USD expects, read by a ``UsdPrimvarReader_float3``.
  Quick Look and RealityKit show textures but no vertex colours, so ``reconstruct --format usdz`` bakes a texture.
* ``unlit``: the colour drives the surface's ``emissiveColor`` (diffuse black), the usual way to show baked-in
  lighting as it is, since ``UsdPreviewSurface`` has no unlit mode.

:func:`load_usd` reads ``.usdz`` / ``.usd`` / ``.usda`` / ``.usdc``: every visible ``Mesh`` prim (inside instances
too; not proxy or guide geometry) with its world transform, converted to +Y up and metres (USD's fallback unit is the
centimetre), polygons fanned into triangles, the UVs (``st``, else the first texture-coordinate primvar) and
``displayColor`` of any interpolation, and, for a file with one mesh, the texture that feeds its bound
``UsdPreviewSurface``'s diffuse (or emissive) colour.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.cameras import Z_UP_TO_WORLD
from ..core.mesh import Mesh, colors_to_uint8
from ..core.shading import uvs_repeat
from .color_space import linear_to_srgb, srgb_to_linear
from .images import pil_to_array, png_bytes
from .mesh_io import unit_vertex_normals

__all__ = ["load_usd", "write_usdz"]

#: Names of the prims and files in a written package.
_ROOT, _MESH, _MATERIAL, _TEXTURE_FILE = "/Model", "/Model/Mesh", "/Model/Material", "texture.png"


def write_usdz(mesh: Mesh, path: str | os.PathLike[str], *, unlit: bool = False) -> None:
    """Write ``mesh`` as a USDZ package at ``path`` (overwritten; the caller makes the write atomic).

    Args:
        mesh: the mesh (world frame, +Y up, units taken as metres).
        path: the ``.usdz`` file to write.
        unlit: show the colours as they are (emissive) instead of lit (diffuse).
    """
    from pxr import Kind, Sdf, Usd, UsdGeom, UsdShade, UsdUtils

    with tempfile.TemporaryDirectory(prefix="monorecon-usdz-") as folder:
        layer_path = Path(folder) / "model.usdc"
        stage = Usd.Stage.CreateNew(str(layer_path))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, _ROOT)
        Usd.ModelAPI(root).SetKind(Kind.Tokens.component)
        stage.SetDefaultPrim(root.GetPrim())

        verts = mesh.verts.detach().cpu().float().numpy()
        geometry = UsdGeom.Mesh.Define(stage, _MESH)
        geometry.CreatePointsAttr(verts)
        geometry.CreateExtentAttr(np.stack([verts.min(axis=0), verts.max(axis=0)]))
        geometry.CreateFaceVertexCountsAttr(np.full(mesh.num_faces, 3, dtype=np.int32))
        geometry.CreateFaceVertexIndicesAttr(mesh.faces.cpu().numpy().astype(np.int32).reshape(-1))
        geometry.CreateNormalsAttr(unit_vertex_normals(mesh))
        geometry.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        geometry.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
        geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        geometry.CreateDoubleSidedAttr(False)
        if mesh.uvs is not None:
            st = UsdGeom.PrimvarsAPI(geometry).CreatePrimvar(
                "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex
            )
            st.Set(mesh.uvs.detach().cpu().float().numpy())
        UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(_material(stage, geometry, mesh, folder, unlit))
        stage.GetRootLayer().Save()
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer_path)), str(path)):
            raise ValueError(f"could not write the USDZ package {path}")


def _material(stage: object, geometry: object, mesh: Mesh, folder: str, unlit: bool) -> object:
    """The ``UsdPreviewSurface`` material of ``mesh`` (see the module notes); a texture is written into ``folder``."""
    from pxr import Sdf, UsdGeom, UsdShade

    material = UsdShade.Material.Define(stage, _MATERIAL)
    surface = UsdShade.Shader.Define(stage, f"{_MATERIAL}/Surface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    colour = surface.CreateInput("emissiveColor" if unlit else "diffuseColor", Sdf.ValueTypeNames.Color3f)
    if unlit:
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set((0.0, 0.0, 0.0))
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")

    if mesh.texture is not None:
        (Path(folder) / _TEXTURE_FILE).write_bytes(png_bytes(colors_to_uint8(mesh.texture)))
        st_reader = UsdShade.Shader.Define(stage, f"{_MATERIAL}/STReader")
        st_reader.CreateIdAttr("UsdPrimvarReader_float2")
        st_reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        texture = UsdShade.Shader.Define(stage, f"{_MATERIAL}/Texture")
        texture.CreateIdAttr("UsdUVTexture")
        texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(_TEXTURE_FILE)
        texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        wrap = "repeat" if uvs_repeat(mesh.uvs) else "clamp"
        texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set(wrap)
        texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set(wrap)
        texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(
            st_reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
        )
        colour.ConnectToSource(texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    elif mesh.vertex_colors is not None:
        linear = srgb_to_linear(mesh.vertex_colors.detach().cpu().double().numpy()).astype(np.float32)
        UsdGeom.PrimvarsAPI(geometry).CreatePrimvar(
            "displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex
        ).Set(linear)
        reader = UsdShade.Shader.Define(stage, f"{_MATERIAL}/ColourReader")
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("displayColor")
        colour.ConnectToSource(reader.CreateOutput("result", Sdf.ValueTypeNames.Float3))
    else:
        colour.Set((0.8, 0.8, 0.8))
    return material


def load_usd(path: Path) -> Mesh:
    """Read the ``Mesh`` prims of a USD file or USDZ package as one mesh, +Y up and in metres (see the module notes).

    A texture is kept when the file has one mesh prim (several prims would need their images packed in one atlas).

    Raises:
        ValueError: a file USD cannot open, inconsistent face indices, or no triangles.
    """
    from pxr import Usd, UsdGeom

    try:
        stage = Usd.Stage.Open(str(path))
    except Exception as exc:  # pxr raises Tf.ErrorException on unreadable files
        # pxr's message: "Error in '<C++ function>' at line N in file F : '<what went wrong>'" (last line kept)
        reason = str(exc).strip().splitlines()[-1].rsplit(" : ", 1)[-1].strip(" \t'")
        raise ValueError(f"could not read USD file {path}: {reason}") from exc
    if not stage:
        raise ValueError(f"could not read USD file {path}")
    # Stage frame -> ours: units to metres, and a Z-up stage turned +Y up (core.cameras.Z_UP_TO_WORLD).
    metres = UsdGeom.GetStageMetersPerUnit(stage)
    to_world = np.diag([metres, metres, metres, 1.0])
    if UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:
        to_world[:3, :3] = Z_UP_TO_WORLD.double().numpy() @ to_world[:3, :3]
    cache = UsdGeom.XformCache()
    # Meshes inside instances count too; invisible ones and proxy / guide geometry do not.
    prims = [
        prim
        for prim in stage.Traverse(Usd.TraverseInstanceProxies())
        if prim.IsA(UsdGeom.Mesh)
        and UsdGeom.Imageable(prim).ComputeVisibility() != UsdGeom.Tokens.invisible
        and UsdGeom.Imageable(prim).ComputePurpose() in (UsdGeom.Tokens.default_, UsdGeom.Tokens.render)
    ]
    # USD matrices act on row vectors: transpose to act on columns.
    parts, mesh_prim = [], None
    for prim in prims:
        part = _mesh_part(UsdGeom.Mesh(prim), to_world @ np.array(cache.GetLocalToWorldTransform(prim)).T)
        if part is not None:
            parts.append(part)
            mesh_prim = prim
    if not parts:
        raise ValueError(f"could not read mesh {path}: no triangles found")
    offsets = np.cumsum([0] + [len(part[0]) for part in parts[:-1]])
    faces = np.concatenate([part[1] + offset for part, offset in zip(parts, offsets, strict=True)])
    uvs = np.concatenate([p[2] for p in parts]) if all(p[2] is not None for p in parts) else None
    colours = np.concatenate([p[3] for p in parts]) if all(p[3] is not None for p in parts) else None
    texture = _bound_texture(UsdGeom.Mesh(mesh_prim)) if uvs is not None and len(parts) == 1 else None
    return Mesh(
        verts=torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)),
        faces=torch.from_numpy(faces.astype(np.int64)),
        vertex_colors=None if colours is None else torch.from_numpy(colours.astype(np.float32)),
        uvs=None if uvs is None else torch.from_numpy(uvs.astype(np.float32)),
        texture=None if texture is None else torch.from_numpy(texture),
    )


def _mesh_part(
    geometry: object, transform: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """One Mesh prim -> (verts (N, 3) world, faces (F, 3), uvs (N, 2) or None, colours (N, 3) sRGB or None).

    Polygons are fanned into triangles (corners 0, k, k + 1). Points are split into one vertex per face corner only
    when a primvar varies per corner or per face. None for a prim without triangles.
    """
    from pxr import Sdf, UsdGeom

    points = geometry.GetPointsAttr().Get()
    counts = geometry.GetFaceVertexCountsAttr().Get()
    indices = geometry.GetFaceVertexIndicesAttr().Get()
    if not points or not counts or not indices:
        return None
    points, counts, indices = np.asarray(points, np.float64), np.asarray(counts), np.asarray(indices)
    if counts.min() < 0 or counts.sum() != len(indices) or indices.min() < 0 or indices.max() >= len(points):
        raise ValueError(f"mesh {geometry.GetPath()} has inconsistent face indices")
    triangles = np.maximum(counts - 2, 0)
    if triangles.sum() == 0:
        return None
    tri_face = np.repeat(np.arange(len(counts)), triangles)
    k = np.arange(len(tri_face)) - (np.cumsum(triangles) - triangles)[tri_face] + 1
    first = (np.cumsum(counts) - counts)[tri_face]
    corners = np.stack([first, first + k, first + k + 1], axis=1)
    if geometry.GetOrientationAttr().Get() == UsdGeom.Tokens.leftHanded:
        corners = corners[:, ::-1]
    if np.linalg.det(transform[:3, :3]) < 0:  # a mirroring transform turns the faces inside out
        corners = corners[:, ::-1]

    primvars = UsdGeom.PrimvarsAPI(geometry)
    # UVs: ``st`` by convention, else the first texture-coordinate primvar (e.g. Blender's older ``UVMap``).
    uv_sets = [p for p in primvars.GetPrimvars() if p.GetTypeName().role == Sdf.ValueTypeNames.TexCoord2f.role]
    uv_name = "st" if primvars.HasPrimvar("st") else uv_sets[0].GetPrimvarName() if uv_sets else "st"
    found = {}
    for key, name in (("st", uv_name), ("displayColor", "displayColor")):
        primvar = primvars.GetPrimvar(name)
        if primvar and primvar.HasValue():
            found[key] = (np.asarray(primvar.ComputeFlattened(), np.float64), primvar.GetInterpolation())
    per_corner = any(kind in (UsdGeom.Tokens.faceVarying, UsdGeom.Tokens.uniform) for _, kind in found.values())
    n_out = len(indices) if per_corner else len(points)

    def at_vertices(values: np.ndarray, interpolation: str) -> np.ndarray:
        """A primvar's values at the output vertices (face corners or points)."""
        if interpolation == UsdGeom.Tokens.constant:
            return np.repeat(values.reshape(1, -1), n_out, axis=0)
        if interpolation == UsdGeom.Tokens.uniform:
            return values[np.repeat(np.arange(len(counts)), counts)]
        if interpolation == UsdGeom.Tokens.faceVarying:
            return values
        return values[indices] if per_corner else values  # vertex / varying

    verts, faces = (points[indices], corners) if per_corner else (points, indices[corners])
    verts = verts @ transform[:3, :3].T + transform[:3, 3]
    uvs = at_vertices(*found["st"]) if "st" in found else None
    colours = linear_to_srgb(at_vertices(*found["displayColor"])) if "displayColor" in found else None
    return verts, np.ascontiguousarray(faces), uvs, colours


def _bound_texture(geometry: object) -> np.ndarray | None:
    """(H, W, 3) float texture of the UsdUVTexture feeding the bound preview surface's colour, or None."""
    from pxr import Ar, UsdShade

    material = UsdShade.MaterialBindingAPI(geometry.GetPrim()).ComputeBoundMaterial()[0]
    surface = material.ComputeSurfaceSource()[0] if material else None
    if not surface:
        return None
    for name in ("diffuseColor", "emissiveColor"):
        colour = surface.GetInput(name)
        sources = colour.GetConnectedSources()[0] if colour else []
        shader = UsdShade.Shader(sources[0].source.GetPrim()) if sources else None
        if shader and shader.GetIdAttr().Get() == "UsdUVTexture":
            asset = shader.GetInput("file").Get() if shader.GetInput("file") else None
            if asset is None or not asset.resolvedPath:
                return None
            try:
                data = bytes(Ar.GetResolver().OpenAsset(Ar.ResolvedPath(asset.resolvedPath)).GetBuffer())
                with Image.open(io.BytesIO(data)) as image:
                    return pil_to_array(image)[..., :3]
            except Exception as exc:  # a damaged or unsupported image in the package
                raise ValueError(f"could not read the texture {asset.path}: {type(exc).__name__}: {exc}") from exc
    return None
