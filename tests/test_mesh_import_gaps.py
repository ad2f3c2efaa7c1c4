"""``load_mesh`` reads what glTF, OBJ and PLY files mean where a plain reader goes wrong: a glTF base colour is texture
x ``COLOR_0`` x ``baseColorFactor``; alpha that ``Mesh`` cannot hold is reported; a base colour texture on
``TEXCOORD_1`` or under ``KHR_texture_transform`` is mapped as the file says; PLY face colours and textures load;
invalid OBJ face indices are one-line errors naming the line.

The files are written here by hand; the expected values are the numbers written into them."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pygltflib
import pytest
from PIL import Image

from analytic import linear_to_srgb, srgb_to_linear
from monorecon.io import load_mesh

QUAD = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
QUAD_FACES = np.array([0, 1, 2, 0, 2, 3], np.uint32)
GLTF_UVS = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
"""glTF UVs (``v`` down) of the quad: the whole image, upright."""
EIGHT_BITS = 1.0 / 255 + 1e-6


def _quad_glb(
    path,
    image: np.ndarray,
    *,
    uvs: dict[str, np.ndarray] | None = None,
    color_0: np.ndarray | None = None,
    factor: tuple[float, ...] | None = None,
    texture_info: dict | None = None,
    material: dict | None = None,
) -> None:
    """A GLB of the quad with a base colour texture (``image``: (H, W, 3 or 4) uint8), the UV sets ``uvs`` (default
    ``TEXCOORD_0``: :data:`GLTF_UVS`), an optional float ``COLOR_0`` (linear), ``baseColorFactor`` and more fields
    of the texture info (``texCoord``, ``extensions``) and of the material (``alphaMode``...)."""
    uvs = {"TEXCOORD_0": GLTF_UVS} if uvs is None else uvs
    arrays = {"POSITION": QUAD, **uvs, **({} if color_0 is None else {"COLOR_0": np.asarray(color_0, np.float32)})}
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    chunks = [QUAD_FACES.tobytes(), *(np.ascontiguousarray(a, "<f4").tobytes() for a in arrays.values())]
    chunks.append(png.getvalue())
    offsets = np.cumsum([0] + [len(c) for c in chunks]).tolist()
    views = [
        pygltflib.BufferView(buffer=0, byteOffset=o, byteLength=len(c))
        for o, c in zip(offsets[:-1], chunks, strict=True)
    ]
    kinds = {2: "VEC2", 3: "VEC3", 4: "VEC4"}
    accessors = [pygltflib.Accessor(bufferView=0, componentType=pygltflib.UNSIGNED_INT, count=6, type="SCALAR")]
    for index, array in enumerate(arrays.values(), start=1):
        accessors.append(
            pygltflib.Accessor(bufferView=index, componentType=pygltflib.FLOAT, count=len(array),
                               type=kinds[array.shape[1]], min=array.min(0).tolist(), max=array.max(0).tolist())
        )  # fmt: skip
    attributes = pygltflib.Attributes(**{name: index for index, name in enumerate(arrays, start=1)})
    pbr = pygltflib.PbrMetallicRoughness(
        baseColorTexture=pygltflib.TextureInfo(index=0, **(texture_info or {})),
        baseColorFactor=list(factor) if factor is not None else [1.0, 1.0, 1.0, 1.0],
    )
    gltf = pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0"),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0)],
        meshes=[pygltflib.Mesh(primitives=[pygltflib.Primitive(attributes=attributes, indices=0, material=0)])],
        materials=[pygltflib.Material(pbrMetallicRoughness=pbr, **(material or {}))],
        textures=[pygltflib.Texture(source=0)],
        images=[pygltflib.Image(bufferView=len(chunks) - 1, mimeType="image/png")],
        accessors=accessors,
        bufferViews=views,
        buffers=[pygltflib.Buffer(byteLength=offsets[-1])],
    )
    gltf.set_binary_blob(b"".join(chunks))
    gltf.save_binary(str(path))


def _load_quietly(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = load_mesh(path)
    return mesh, [str(w.message) for w in caught]


GREY = np.full((2, 2, 3), 128, np.uint8)


# --- 1. base colour = texture x COLOR_0 x baseColorFactor ------------------------------------------------------------
@pytest.mark.parametrize(
    ("factor", "color_0"),
    [
        ((0.5, 0.25, 1.0, 1.0), None),
        (None, [[1.0, 0.5, 0.2]] * 4),
        ((0.5, 1.0, 1.0, 1.0), [[1.0, 0.5, 1.0, 1.0]] * 4),
    ],
    ids=["factor", "uniform COLOR_0", "both"],
)
def test_factor_and_uniform_color_0_tint_the_texture(tmp_path, factor, color_0):
    path = tmp_path / "tinted.glb"
    _quad_glb(path, GREY, factor=factor, color_0=color_0)
    mesh, caught = _load_quietly(path)
    tint = np.ones(3)
    if factor is not None:
        tint *= factor[:3]
    if color_0 is not None:
        tint *= np.asarray(color_0[0][:3])
    expected = linear_to_srgb(srgb_to_linear(128 / 255) * tint)  # glTF multiplies linear values
    assert mesh.texture is not None and mesh.vertex_colors is None
    np.testing.assert_allclose(mesh.texture.reshape(-1, 3).numpy(), np.tile(expected, (4, 1)), atol=EIGHT_BITS)
    assert caught == []


def test_varying_color_0_over_a_texture_is_reported(tmp_path):
    path = tmp_path / "varying.glb"
    _quad_glb(path, GREY, color_0=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    mesh, caught = _load_quietly(path)
    np.testing.assert_allclose(mesh.texture.numpy(), 128 / 255, atol=1e-6)  # the texture alone, untouched
    assert any("COLOR_0 varies over a textured part" in message for message in caught)


def test_white_color_0_and_factor_leave_the_texture_as_it_is(tmp_path):
    path = tmp_path / "white.glb"
    _quad_glb(path, GREY, color_0=[[1.0, 1.0, 1.0]] * 4, factor=(1.0, 1.0, 1.0, 1.0))
    mesh, caught = _load_quietly(path)
    np.testing.assert_allclose(mesh.texture.numpy(), 128 / 255, atol=1e-6)
    assert caught == []


# --- 2. alpha ---------------------------------------------------------------------------------------------------------
LEAF = np.dstack([GREY, np.array([[255, 0], [255, 0]], np.uint8)])
"""A cut-out: the right half of the image is transparent."""


@pytest.mark.parametrize(
    ("material", "image", "factor", "warned"),
    [
        ({"alphaMode": "MASK"}, LEAF, None, True),
        ({"alphaMode": "BLEND"}, GREY, (1.0, 1.0, 1.0, 0.5), True),
        ({"alphaMode": "MASK", "alphaCutoff": 0.4}, GREY, (1.0, 1.0, 1.0, 0.45), False),  # above the cutoff: opaque
        ({}, LEAF, None, False),  # OPAQUE ignores alpha
    ],
    ids=["mask texture", "blend factor", "mask above cutoff", "opaque"],
)
def test_alpha_that_shows_is_reported(tmp_path, material, image, factor, warned):
    path = tmp_path / "leaf.glb"
    _quad_glb(path, image, material=material, factor=factor)
    mesh, caught = _load_quietly(path)
    assert mesh.texture.shape[-1] == 3
    assert any("alpha dropped" in message for message in caught) == warned, caught


def test_color_0_alpha_under_blend_is_reported(tmp_path):
    path = tmp_path / "fade.glb"
    _quad_glb(path, GREY, color_0=[[1, 1, 1, 1], [1, 1, 1, 0.2], [1, 1, 1, 1], [1, 1, 1, 1]],
              material={"alphaMode": "BLEND"})  # fmt: skip
    _, caught = _load_quietly(path)
    assert any("alpha dropped (alphaMode BLEND)" in message for message in caught)


# --- 3. TEXCOORD_1 and KHR_texture_transform -------------------------------------------------------------------------
WRONG_UVS = np.full((4, 2), 0.5, np.float32)
"""A TEXCOORD_0 the texture does not read."""


def test_texture_on_texcoord_1_reads_those_uvs(tmp_path):
    path = tmp_path / "second_set.glb"
    _quad_glb(path, GREY, uvs={"TEXCOORD_0": WRONG_UVS, "TEXCOORD_1": GLTF_UVS}, texture_info={"texCoord": 1})
    mesh = load_mesh(path)
    expected = GLTF_UVS.copy()
    expected[:, 1] = 1 - expected[:, 1]  # Mesh: v up
    np.testing.assert_allclose(mesh.uvs.numpy(), expected, atol=1e-6)


def test_missing_texcoord_set_is_a_one_line_error(tmp_path):
    path = tmp_path / "missing_set.glb"
    _quad_glb(path, GREY, texture_info={"texCoord": 1})
    with pytest.raises(ValueError, match=r"reads TEXCOORD_1, which primitive 0 of mesh 0 does not have"):
        load_mesh(path)


@pytest.mark.parametrize(
    "transform",
    [
        {"offset": [0.5, 0.25], "scale": [0.5, 0.5]},
        {"offset": [0.1, -0.2], "rotation": math.pi / 6, "scale": [2.0, 0.5], "texCoord": 1},
    ],
    ids=["offset scale", "rotation on TEXCOORD_1"],
)
def test_khr_texture_transform_is_applied(tmp_path, transform):
    path = tmp_path / "transformed.glb"
    uvs = {"TEXCOORD_0": WRONG_UVS if "texCoord" in transform else GLTF_UVS, "TEXCOORD_1": GLTF_UVS}
    _quad_glb(path, GREY, uvs=uvs, texture_info={"extensions": {"KHR_texture_transform": transform}})
    mesh = load_mesh(path)
    # the extension's formula, written out: u' = cos sx u + sin sy v + ox, v' = -sin sx u + cos sy v + oy
    (ox, oy), angle, (sx, sy) = transform["offset"], transform.get("rotation", 0.0), transform["scale"]
    u, v = GLTF_UVS[:, 0].astype(np.float64), GLTF_UVS[:, 1].astype(np.float64)
    moved_u = math.cos(angle) * sx * u + math.sin(angle) * sy * v + ox
    moved_v = -math.sin(angle) * sx * u + math.cos(angle) * sy * v + oy
    np.testing.assert_allclose(mesh.uvs.numpy(), np.stack([moved_u, 1 - moved_v], 1), atol=1e-6)


# --- 4. PLY face colours, PLY UVs with a TextureFile comment ---------------------------------------------------------
PLY_SQUARE = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n"


def test_ply_face_colours_load_as_vertex_colours(tmp_path):
    path = tmp_path / "faces.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 2\nproperty list uchar int vertex_indices\nproperty uchar red\nproperty uchar green\n"
        f"property uchar blue\nend_header\n{PLY_SQUARE}3 0 1 2 255 0 0\n3 0 2 3 51 102 153\n"
    )
    mesh = load_mesh(path)
    face_colours = mesh.vertex_colors[mesh.faces].numpy()  # (F, 3 corners, 3)
    np.testing.assert_allclose(face_colours[0], np.tile([1.0, 0.0, 0.0], (3, 1)), atol=1e-6)
    np.testing.assert_allclose(face_colours[1], np.tile([0.2, 0.4, 0.6], (3, 1)), atol=1e-6)


@pytest.mark.parametrize("names", [("s", "t"), ("u", "v"), ("texture_u", "texture_v")])
def test_ply_uvs_and_texture_file_comment_load_the_texture(tmp_path, names):
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)).save(tmp_path / "skin.png")
    path = tmp_path / "textured.ply"
    uvs = np.array([[0.25, 0.5], [0.75, 0.5], [0.75, 0.5], [0.25, 0.5]])
    rows = "".join(f"{x} {y} {z} {u} {v}\n" for (x, y, z), (u, v) in zip(QUAD.tolist(), uvs.tolist(), strict=True))
    path.write_text(
        "ply\nformat ascii 1.0\ncomment TextureFile skin.png\nelement vertex 4\nproperty float x\nproperty float y\n"
        f"property float z\nproperty float {names[0]}\nproperty float {names[1]}\nelement face 2\n"
        f"property list uchar int vertex_indices\nend_header\n{rows}3 0 1 2\n3 0 2 3\n"
    )
    mesh = load_mesh(path)
    np.testing.assert_allclose(mesh.uvs.numpy(), uvs, atol=1e-6)
    np.testing.assert_allclose(mesh.texture.numpy(), [[[1, 0, 0], [0, 0, 1]]], atol=1e-6)


# --- 5. OBJ face indices ---------------------------------------------------------------------------------------------
TRIANGLE_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"


@pytest.mark.parametrize(
    ("faces", "message"),
    [
        ("f 0 1 2\n", r"line 4: face index 0 \(OBJ indices start at 1\)"),
        ("f 1 2 3\nf 1 2 7\n", r"line 5: face index 7 is past the last v \(3 in the file\)"),
        ("f -1 -2 -5\n", r"line 4: face index -5 points before the first v \(3 defined before it\)"),
        ("vt 0 0\nf 1/1 2/1 3/4\n", r"line 5: face index 4 is past the last vt \(1 in the file\)"),
        ("f 1 2 x\n", r"line 4: face index 'x' is not an integer"),
    ],
    ids=["zero", "past the end", "before the first", "texture coordinate", "not a number"],
)
def test_invalid_obj_face_indices_are_one_line_errors_naming_the_line(tmp_path, faces, message):
    path = tmp_path / "bad.obj"
    path.write_text(TRIANGLE_OBJ + faces)
    with pytest.raises(ValueError, match=r"^invalid OBJ .*bad\.obj, " + message + "$"):
        load_mesh(path)


def test_obj_relative_indices_count_back_from_their_face(tmp_path):
    path = tmp_path / "relative.obj"
    path.write_text(TRIANGLE_OBJ + "f -3 -2 -1\nv 5 0 0\nv 6 0 0\nv 5 1 0\nf -3 -2 -1 # the second triangle\n")
    mesh = load_mesh(path)
    assert mesh.faces.tolist() == [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_array_equal(
        mesh.verts.numpy(), [[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [6, 0, 0], [5, 1, 0]]
    )
