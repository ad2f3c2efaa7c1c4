"""Reading glTF / GLB files' colours as monorecon holds them (sRGB display values).

glTF stores ``COLOR_0`` and ``baseColorFactor`` as linear values, ``COLOR_0`` as floats or as normalised unsigned
bytes or shorts (Blender writes shorts). trimesh, which reads the rest of the file, takes all of them as they are and
drops normalised shorts (every colour loads white). :func:`srgb_glb_bytes` rewrites a file so that trimesh reads
the right display values: each ``COLOR_0`` decoded, turned to sRGB and stored as normalised bytes, each
``baseColorFactor`` turned to sRGB.
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
_WIDTHS = {"VEC3": 3, "VEC4": 4}


class PercentDecodingResolver(trimesh.resolvers.FilePathResolver):
    """Reads a glTF's external files: its URIs are percent-encoded (Blender writes ``my%20textures/a.png`` for
    ``my textures/a.png``), which trimesh's resolver looks up as written."""

    def get(self, name: str) -> bytes:
        try:
            return super().get(name)
        except Exception:  # not found as written: the decoded name (a failure here is trimesh's to report)
            return super().get(urllib.parse.unquote(name))


def srgb_glb_bytes(path: Path) -> bytes | None:
    """The ``.glb`` / ``.gltf`` file at ``path`` as GLB bytes whose ``COLOR_0`` attributes are sRGB display values
    (normalised unsigned bytes, RGBA) and whose ``baseColorFactor`` colours are sRGB; None when it has neither (read
    the file itself). External buffers are read into the GLB's binary chunk; images keep their URIs (read them with
    a :class:`PercentDecodingResolver` of ``path``).

    Raises:
        ValueError: a file that is not glTF, or a ``COLOR_0`` accessor that cannot be decoded (bad component type or
            type, data out of range).
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
    if not factors and not colors:
        return None
    for pbr in factors:
        rgba = [float(value) for value in pbr.baseColorFactor]
        pbr.baseColorFactor = [*linear_to_srgb(rgba[:3]).tolist(), *rgba[3:]]
    blob = bytearray(_single_buffer(gltf, path))
    for index in colors:
        accessor = gltf.accessors[index]
        srgb = np.full((accessor.count, 4), 255, dtype=np.uint8)
        values = _accessor_values(gltf, accessor, bytes(blob))
        srgb[:, :3] = np.round(linear_to_srgb(values[:, :3]) * 255.0)
        if values.shape[1] == 4:  # alpha is not a colour: kept as it is
            srgb[:, 3] = np.round(np.clip(values[:, 3], 0.0, 1.0) * 255.0)
        blob.extend(b"\0" * (-len(blob) % 4))
        gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=srgb.nbytes, target=pygltflib.ARRAY_BUFFER)
        )
        blob.extend(srgb.tobytes())
        accessor.bufferView, accessor.byteOffset = len(gltf.bufferViews) - 1, 0
        accessor.componentType, accessor.normalized, accessor.type = pygltflib.UNSIGNED_BYTE, True, "VEC4"
        accessor.min = accessor.max = None
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


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


def _accessor_values(gltf: pygltflib.GLTF2, accessor: pygltflib.Accessor, blob: bytes) -> np.ndarray:
    """(count, 3 or 4) float64 values of a colour accessor (normalised integers divided by their maximum)."""
    if accessor.componentType not in _COMPONENTS or accessor.type not in _WIDTHS:
        raise ValueError(f"COLOR_0 of component type {accessor.componentType} and type {accessor.type} is not glTF")
    dtype, scale = _COMPONENTS[accessor.componentType]
    width = _WIDTHS[accessor.type]
    view = gltf.bufferViews[accessor.bufferView]
    item = width * dtype.itemsize
    stride = view.byteStride or item
    start = view.byteOffset + (accessor.byteOffset or 0)
    end = start + stride * (accessor.count - 1) + item
    if accessor.count < 1 or end > min(len(blob), view.byteOffset + view.byteLength):
        raise ValueError(f"COLOR_0 data ({accessor.count} values) lies outside its buffer")
    rows = np.lib.stride_tricks.as_strided(
        np.frombuffer(blob, dtype=np.uint8, count=end - start, offset=start), (accessor.count, item), (stride, 1)
    )
    return np.ascontiguousarray(rows).view(dtype).reshape(accessor.count, width).astype(np.float64) / scale
