"""glTF colours are linear (COLOR_0, baseColorFactor): written from and read back to monorecon's display values, in
every storage glTF allows (floats, normalised bytes, normalised shorts as Blender writes them, interleaved views,
external and embedded buffers)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pygltflib
import pytest
import torch

from analytic import linear_to_srgb, srgb_to_linear
from monorecon.core.mesh import Mesh
from monorecon.io import color_space, load_mesh, save_mesh

TRIANGLE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
LINEAR = np.array([[0.5, 0.25, 1.0, 1.0], [0.0, 0.002, 0.04, 0.5], [1.0, 0.8, 0.1, 1.0]])
"""Linear RGBA per vertex: the dark values are where 8-bit linear storage would band."""
EIGHT_BITS = 0.5 / 255 + 1e-6
"""Colours load as 8-bit sRGB values."""


def _triangle_gltf(colors: bytes, component: int, kind: str, *, stride: int | None = None) -> pygltflib.GLTF2:
    """One triangle: positions and indices, then the colour bytes given (in a view of ``stride``), in buffer 0."""
    positions, indices = TRIANGLE.tobytes(), np.arange(3, dtype=np.uint32).tobytes()
    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0"))
    gltf.bufferViews = [
        pygltflib.BufferView(buffer=0, byteOffset=0, byteLength=36),
        pygltflib.BufferView(buffer=0, byteOffset=36, byteLength=12),
        pygltflib.BufferView(buffer=0, byteOffset=48, byteLength=len(colors), byteStride=stride),
    ]
    gltf.accessors = [
        pygltflib.Accessor(bufferView=0, componentType=pygltflib.FLOAT, count=3, type="VEC3", min=[0, 0, 0],
                           max=[1, 1, 0]),
        pygltflib.Accessor(bufferView=1, componentType=pygltflib.UNSIGNED_INT, count=3, type="SCALAR"),
        pygltflib.Accessor(bufferView=2, componentType=component, count=3, type=kind,
                           normalized=component != pygltflib.FLOAT),
    ]  # fmt: skip
    attributes = pygltflib.Attributes(POSITION=0, COLOR_0=2)
    gltf.meshes = [pygltflib.Mesh(primitives=[pygltflib.Primitive(attributes=attributes, indices=1)])]
    gltf.nodes, gltf.scenes, gltf.scene = [pygltflib.Node(mesh=0)], [pygltflib.Scene(nodes=[0])], 0
    blob = positions + indices + colors
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(blob)
    return gltf


STORAGES = {
    "float VEC4": (lambda: LINEAR.astype("<f4").tobytes(), pygltflib.FLOAT, "VEC4", None, EIGHT_BITS),
    "float VEC3": (lambda: LINEAR[:, :3].astype("<f4").tobytes(), pygltflib.FLOAT, "VEC3", None, EIGHT_BITS),
    "ushort VEC4 (Blender)": (
        lambda: np.round(LINEAR * 65535).astype("<u2").tobytes(), pygltflib.UNSIGNED_SHORT, "VEC4", None, EIGHT_BITS,
    ),
    "ubyte VEC4": (lambda: np.round(LINEAR * 255).astype("u1").tobytes(), pygltflib.UNSIGNED_BYTE, "VEC4", None, 0.05),
    "ubyte VEC3 interleaved (stride 8)": (
        lambda: np.pad(np.round(LINEAR[:, :3] * 255).astype("u1"), ((0, 0), (0, 5)), constant_values=7).tobytes(),
        pygltflib.UNSIGNED_BYTE, "VEC3", 8, 0.05,
    ),
}  # fmt: skip


@pytest.mark.parametrize("storage", list(STORAGES))
def test_color_0_loads_as_display_values(tmp_path, storage):
    data, component, kind, stride, tolerance = STORAGES[storage]
    _triangle_gltf(data(), component, kind, stride=stride).save(str(tmp_path / "t.glb"))
    colors = load_mesh(tmp_path / "t.glb").vertex_colors.numpy()
    # 8-bit linear sources are coarse in the darks (1/255 linear is 13/255 sRGB): compared at their precision
    np.testing.assert_allclose(colors, linear_to_srgb(LINEAR[:, :3]), atol=tolerance)


def test_gltf_with_external_and_embedded_buffers(tmp_path):
    """A ``.gltf`` whose positions sit in ``my data.bin`` (percent-encoded URI) and colours in a data URI."""
    gltf = _triangle_gltf(np.round(LINEAR * 65535).astype("<u2").tobytes(), pygltflib.UNSIGNED_SHORT, "VEC4")
    blob = gltf.binary_blob()
    (tmp_path / "my data.bin").write_bytes(blob[:48])
    colors = base64.b64encode(blob[48:]).decode()
    gltf.buffers = [
        pygltflib.Buffer(byteLength=48, uri="my%20data.bin"),
        pygltflib.Buffer(byteLength=len(blob) - 48, uri=f"data:application/octet-stream;base64,{colors}"),
    ]
    gltf.bufferViews[2].buffer, gltf.bufferViews[2].byteOffset = 1, 0
    gltf._glb_data = None
    gltf.save_json(str(tmp_path / "t.gltf"))
    mesh = load_mesh(tmp_path / "t.gltf")
    np.testing.assert_allclose(mesh.verts.numpy(), TRIANGLE)
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), linear_to_srgb(LINEAR[:, :3]), atol=EIGHT_BITS)


def test_vertex_colours_survive_a_glb_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    colors = torch.from_numpy(rng.random((3, 3)).astype(np.float32))
    colors[0] = torch.tensor([0.0, 0.01, 0.02])  # darks: 8-bit linear storage would round them to 0 or 13/255
    save_mesh(Mesh(torch.from_numpy(TRIANGLE), torch.tensor([[0, 1, 2]]), vertex_colors=colors), tmp_path / "m.glb")
    back = load_mesh(tmp_path / "m.glb").vertex_colors
    assert (back - colors).abs().max() <= EIGHT_BITS


def test_color_0_outside_its_buffer_is_refused(tmp_path):
    gltf = _triangle_gltf(np.zeros(12, np.uint8).tobytes(), pygltflib.UNSIGNED_BYTE, "VEC4")
    gltf.accessors[2].count = 50
    gltf.save(str(tmp_path / "t.glb"))
    with pytest.raises(ValueError, match=r"could not read mesh .*t\.glb: .*COLOR_0 .*outside its buffer"):
        load_mesh(tmp_path / "t.glb")


def test_srgb_curve_known_values():
    """Against the standard's curve and its textbook values (sRGB 0.5 is 21.4 % linear; 18 % grey is sRGB 0.461)."""
    values = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(color_space.srgb_to_linear(values), srgb_to_linear(values), atol=1e-12)
    np.testing.assert_allclose(color_space.linear_to_srgb(values), linear_to_srgb(values), atol=1e-12)
    assert color_space.srgb_to_linear(0.5) == pytest.approx(0.2140411, abs=1e-7)
    assert color_space.linear_to_srgb(0.18) == pytest.approx(0.4613561, abs=1e-7)


def test_damaged_gltf_files_are_one_line_errors(tmp_path):
    """Junk named .glb gave 'error: unpack requires a buffer of 8 bytes'; a cut GLB, broken JSON and a COLOR_0 of a
    type glTF does not allow are named as such."""
    _triangle_gltf(np.zeros(12, np.uint8).tobytes(), pygltflib.UNSIGNED_BYTE, "VEC4").save(str(tmp_path / "ok.glb"))
    whole = (tmp_path / "ok.glb").read_bytes()
    (tmp_path / "cut.glb").write_bytes(whole[:60])
    (tmp_path / "junk.glb").write_bytes(b"garbage, not a GLB")
    (tmp_path / "bad.gltf").write_text('{"asset": ')
    gltf = _triangle_gltf(np.zeros(12, np.uint32).tobytes(), pygltflib.UNSIGNED_INT, "VEC4")
    gltf.save(str(tmp_path / "int_colours.glb"))
    for name, message in (
        ("junk.glb", "not a GLB file (it does not start with the glTF header)"),
        ("cut.glb", "not a valid glTF file"),
        ("bad.gltf", "not a valid glTF file (JSONDecodeError"),
        ("int_colours.glb", f"COLOR_0 of component type {pygltflib.UNSIGNED_INT} and type VEC4 is not glTF"),
    ):
        with pytest.raises(ValueError, match=rf"could not read mesh .*{name}: .*{re.escape(message)}") as caught:
            load_mesh(tmp_path / name)
        assert "\n" not in str(caught.value)
