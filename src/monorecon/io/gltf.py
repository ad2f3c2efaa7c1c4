"""Reading glTF / GLB files as monorecon holds them: colours as sRGB display values, UVs of the base colour texture.

glTF stores ``COLOR_0`` and ``baseColorFactor`` as linear values, ``COLOR_0`` as floats or as normalised unsigned
bytes or shorts (Blender writes shorts). trimesh, which reads the rest of the file, takes all of them as they are and
drops normalised shorts (every colour loads white). It also reads the UVs of ``TEXCOORD_0`` whatever set the base
colour texture names (``texCoord``) and ignores ``KHR_texture_transform`` (offset, rotation, scale of the UVs), so
such textures would be mapped wrongly. :func:`trimesh_glb_bytes` rewrites a file so that trimesh reads what it
means: each ``COLOR_0`` decoded, turned to sRGB and stored as normalised bytes, each ``baseColorFactor`` turned to
sRGB, and each primitive's ``TEXCOORD_0`` replaced by the UVs its base colour texture reads, transformed.
"""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path

import numpy as np
import pygltflib
import trimesh

from .color_space import linear_to_srgb

_COMPONENTS = {
    pygltflib.UNSIGNED_BYTE: (np.dtype("<u1"), 255.0),
    pygltflib.UNSIGNED_SHORT: (np.dtype("<u2"), 65535.0),
    pygltflib.FLOAT: (np.dtype("<f4"), 1.0),
}
_WIDTHS = {"VEC2": 2, "VEC3": 3, "VEC4": 4}
_TRANSFORM = "KHR_texture_transform"


class PercentDecodingResolver(trimesh.resolvers.FilePathResolver):
    """Reads a glTF's external files: its URIs are percent-encoded (Blender writes ``my%20textures/a.png`` for
    ``my textures/a.png``), which trimesh's resolver looks up as written."""

    def get(self, name: str) -> bytes:
        try:
            return super().get(name)
        except Exception:  # not found as written: the decoded name (a failure here is trimesh's to report)
            return super().get(urllib.parse.unquote(name))


def trimesh_glb_bytes(path: Path) -> bytes | None:
    """The ``.glb`` / ``.gltf`` file at ``path`` as GLB bytes whose ``COLOR_0`` attributes are sRGB display values
    (normalised unsigned bytes, RGBA), whose ``baseColorFactor`` colours are sRGB and whose primitives'
    ``TEXCOORD_0`` are the UVs their base colour texture reads (its ``texCoord`` set, ``KHR_texture_transform``
    applied); None when none of these needs a change (read the file itself). External buffers are read into the
    GLB's binary chunk; images keep their URIs (read them with a :class:`PercentDecodingResolver` of ``path``).

    Raises:
        ValueError: a file that is not glTF, a ``COLOR_0`` or texture coordinate accessor that cannot be decoded (bad
            component type or type, data out of range, compressed), or a texture coordinate set a primitive lacks.
    """
    if path.suffix.lower() == ".glb":
        with path.open("rb") as file:
            if file.read(4) != b"glTF":
                raise ValueError("not a GLB file (it does not start with the glTF header)")
    try:
        gltf = pygltflib.GLTF2.load(str(path))
    except Exception as err:  # pygltflib's errors vary with the damage
        raise ValueError(f"not a valid glTF file ({type(err).__name__}: {err})") from None
    factors = [
        material.pbrMetallicRoughness
        for material in gltf.materials or []
        if material.pbrMetallicRoughness is not None
        # 0 and 1 are the same in both spaces: a white default (as pygltflib writes it) needs no rewrite
        and any(float(v) not in (0.0, 1.0) for v in (material.pbrMetallicRoughness.baseColorFactor or [])[:3])
    ]
    colors = sorted(
        {
            primitive.attributes.COLOR_0
            for mesh in gltf.meshes or []
            for primitive in mesh.primitives
            if primitive.attributes.COLOR_0 is not None
            and gltf.accessors[primitive.attributes.COLOR_0].bufferView is not None  # Draco: left to trimesh
            and gltf.accessors[primitive.attributes.COLOR_0].sparse is None
        }
    )
    mapped = _mapped_primitives(gltf)
    if not factors and not colors and not mapped:
        return None
    for pbr in factors:
        rgba = [float(value) for value in pbr.baseColorFactor]
        pbr.baseColorFactor = [*linear_to_srgb(rgba[:3]).tolist(), *rgba[3:]]
    blob = bytearray(_single_buffer(gltf, path))
    for index in colors:
        accessor = gltf.accessors[index]
        srgb = np.full((accessor.count, 4), 255, dtype=np.uint8)
        values = _accessor_values(gltf, accessor, bytes(blob), "COLOR_0")
        srgb[:, :3] = np.round(linear_to_srgb(values[:, :3]) * 255.0)
        if values.shape[1] == 4:  # alpha is not a colour: kept as it is
            srgb[:, 3] = np.round(np.clip(values[:, 3], 0.0, 1.0) * 255.0)
        accessor.bufferView, accessor.byteOffset = _append_view(gltf, blob, srgb.tobytes()), 0
        accessor.componentType, accessor.normalized, accessor.type = pygltflib.UNSIGNED_BYTE, True, "VEC4"
        accessor.min = accessor.max = None
    for primitive, name, matrix in mapped:
        source = gltf.accessors[getattr(primitive.attributes, name)]
        if source.bufferView is None or source.sparse is not None:
            raise ValueError(f"{name} of a textured primitive is compressed or sparse: its UVs cannot be transformed")
        uv = _accessor_values(gltf, source, bytes(blob), name)
        uv = (uv @ matrix[:2, :2].T + matrix[:2, 2]).astype("<f4")
        gltf.accessors.append(
            pygltflib.Accessor(
                bufferView=_append_view(gltf, blob, uv.tobytes()), componentType=pygltflib.FLOAT, count=len(uv),
                type="VEC2",
            )
        )  # fmt: skip
        primitive.attributes.TEXCOORD_0 = len(gltf.accessors) - 1
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


def _mapped_primitives(gltf: pygltflib.GLTF2) -> list[tuple[pygltflib.Primitive, str, np.ndarray]]:
    """The primitives whose base colour texture reads other UVs than ``TEXCOORD_0`` as they are: each with the name
    of the attribute it reads and the 3 x 3 ``KHR_texture_transform`` matrix (glTF UVs, ``v`` down) to apply.

    Raises:
        ValueError: a primitive without the texture coordinate set its material's base colour texture reads.
    """
    mapped = []
    for mesh_index, mesh in enumerate(gltf.meshes or []):
        for primitive_index, primitive in enumerate(mesh.primitives):
            if primitive.material is None or primitive.material >= len(gltf.materials or []):
                continue
            pbr = gltf.materials[primitive.material].pbrMetallicRoughness
            info = pbr.baseColorTexture if pbr is not None else None
            if info is None:
                continue
            transform = (info.extensions or {}).get(_TRANSFORM)
            texcoord = int((transform or {}).get("texCoord", info.texCoord or 0))
            if texcoord == 0 and not transform:
                continue
            name = f"TEXCOORD_{texcoord}"
            if getattr(primitive.attributes, name, None) is None:
                raise ValueError(
                    f"material {primitive.material}'s base colour texture reads {name}, which primitive "
                    f"{primitive_index} of mesh {mesh_index} does not have"
                )
            mapped.append((primitive, name, _texture_transform(transform or {})))
    return mapped


def _texture_transform(transform: dict) -> np.ndarray:
    """The 3 x 3 matrix of a ``KHR_texture_transform`` (translation x rotation x scale, as its specification says)."""
    (du, dv), angle, (su, sv) = (
        transform.get("offset", (0, 0)),
        transform.get("rotation", 0),
        transform.get("scale", (1, 1)),
    )
    cos, sin = np.cos(float(angle)), np.sin(float(angle))
    translation = np.array([[1, 0, du], [0, 1, dv], [0, 0, 1]], dtype=np.float64)
    rotation = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])
    scale = np.diag([float(su), float(sv), 1.0])
    return translation @ rotation @ scale


def _append_view(gltf: pygltflib.GLTF2, blob: bytearray, data: bytes) -> int:
    """Append ``data`` (4-byte aligned) to ``blob`` as a new vertex buffer view of buffer 0; its index."""
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf.bufferViews.append(
        pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=pygltflib.ARRAY_BUFFER)
    )
    blob.extend(data)
    return len(gltf.bufferViews) - 1


def _single_buffer(gltf: pygltflib.GLTF2, path: Path) -> bytes:
    """All the file's buffers (GLB chunk, data URIs, external files) as one, its buffer views pointed into it."""
    blob, starts = bytearray(), []
    for index, buffer in enumerate(gltf.buffers or []):
        if buffer.uri is None:  # the GLB's binary chunk (only buffer 0 may be it)
            data = gltf.binary_blob() if index == 0 else None
            if data is None:
                raise ValueError(f"buffer {index} has no data")
        elif buffer.uri.startswith("data:"):
            data = base64.b64decode(buffer.uri.split(",", 1)[1])
        else:
            data = PercentDecodingResolver(path).get(buffer.uri)
        blob.extend(b"\0" * (-len(blob) % 4))
        starts.append(len(blob))
        blob.extend(data)
    for view in gltf.bufferViews or []:
        view.byteOffset = (view.byteOffset or 0) + starts[view.buffer]
        view.buffer = 0
    return bytes(blob)


def _accessor_values(gltf: pygltflib.GLTF2, accessor: pygltflib.Accessor, blob: bytes, name: str) -> np.ndarray:
    """(count, width) float64 values of the accessor of attribute ``name`` (``COLOR_0`` VEC3 / VEC4 or a
    ``TEXCOORD_n`` VEC2; normalised integers divided by their maximum)."""
    allowed = ("VEC2",) if name.startswith("TEXCOORD") else ("VEC3", "VEC4")
    if accessor.componentType not in _COMPONENTS or accessor.type not in allowed:
        raise ValueError(f"{name} of component type {accessor.componentType} and type {accessor.type} is not glTF")
    dtype, scale = _COMPONENTS[accessor.componentType]
    width = _WIDTHS[accessor.type]
    view = gltf.bufferViews[accessor.bufferView]
    item = width * dtype.itemsize
    stride = view.byteStride or item
    start = view.byteOffset + (accessor.byteOffset or 0)
    end = start + stride * (accessor.count - 1) + item
    if accessor.count < 1 or end > min(len(blob), view.byteOffset + view.byteLength):
        raise ValueError(f"{name} data ({accessor.count} values) lies outside its buffer")
    rows = np.lib.stride_tricks.as_strided(
        np.frombuffer(blob, dtype=np.uint8, count=end - start, offset=start), (accessor.count, item), (stride, 1)
    )
    return np.ascontiguousarray(rows).view(dtype).reshape(accessor.count, width).astype(np.float64) / scale
