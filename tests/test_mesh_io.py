"""Mesh container, mesh files (GLB / OBJ / PLY) and atomic writes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from analytic import srgb_to_linear
from monorecon.core.mesh import Mesh
from monorecon.io import atomic, load_mesh, mesh_io, save_mesh
from monorecon.io.atomic import atomic_write, atomic_write_bytes
from paths import SHARED_MESHES

REPO = Path(__file__).resolve().parents[1]
NODE_TOOLS = REPO / "tools" / "gltf"
MESH_DIR = SHARED_MESHES
COLOR_TOLERANCE = 1 / 255 + 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------------
def _arrow() -> Mesh:
    """An asymmetric closed mesh: a square pyramid pointing up (+Y) whose base is shifted to +X, outward faces."""
    verts = torch.tensor(
        [[0.0, -0.5, -0.5], [1.0, -0.5, -0.5], [1.0, -0.5, 0.5], [0.0, -0.5, 0.5], [0.2, 1.5, 0.1]],
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]])
    return Mesh(verts, faces)


def _colored_sphere(seed: int = 0) -> Mesh:
    tm = trimesh.creation.icosphere(subdivisions=2)
    rng = np.random.default_rng(seed)
    verts = torch.from_numpy((tm.vertices * [1.0, 2.0, 0.5] + [0.3, 0.1, -0.2]).astype(np.float32))
    colors = torch.from_numpy(rng.random((len(tm.vertices), 3)).astype(np.float32))
    return Mesh(verts, torch.from_numpy(tm.faces.astype(np.int64)), vertex_colors=colors)


def _textured_sphere(seed: int = 0) -> Mesh:
    mesh = _colored_sphere(seed)
    rng = np.random.default_rng(seed + 1)
    uvs = torch.from_numpy(rng.random((mesh.num_verts, 2)).astype(np.float32))
    texture = torch.from_numpy(rng.random((12, 20, 3)).astype(np.float32))  # non-square catches H/W swaps
    return Mesh(mesh.verts, mesh.faces, uvs=uvs, texture=texture)


def _gltf_accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """Raw accessor data read from the GLB buffer (independent of trimesh)."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}[accessor.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor.type]
    blob = gltf.binary_blob()
    start = view.byteOffset + (accessor.byteOffset or 0)
    data = np.frombuffer(blob, dtype=dtype, count=accessor.count * width, offset=start)
    return data.reshape(accessor.count, width)


# --------------------------------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------------------------------
def test_mesh_geometry_analytic():
    mesh = _arrow()
    assert mesh.num_verts == 5 and mesh.num_faces == 6
    torch.testing.assert_close(mesh.bounds, torch.tensor([[0.0, -0.5, -0.5], [1.0, 1.5, 0.5]]))
    # The base (two faces at y = -0.5) faces down.
    torch.testing.assert_close(mesh.face_normals[:2], torch.tensor([[0.0, -1.0, 0.0]] * 2))
    torch.testing.assert_close(mesh.face_areas[:2], torch.tensor([0.5, 0.5]))  # the unit square base, halved
    assert float(mesh.face_areas.sum()) == pytest.approx(mesh.to_trimesh().area, rel=1e-6)
    # Closed outward mesh: positive signed volume = base area * height / 3.
    v0, v1, v2 = mesh.verts[mesh.faces].unbind(1)
    volume = float((v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6)
    assert volume == pytest.approx(1.0 * 2.0 / 3, rel=1e-6)

    normalized = mesh.normalized(2.0)
    torch.testing.assert_close(normalized.bounds, torch.tensor([[-0.5, -1.0, -0.5], [0.5, 1.0, 0.5]]))


def test_placement_and_bounding_sphere_of_the_arrow():
    mesh = _arrow()  # box x 0..1, y -0.5..1.5, z -0.5..0.5; apex (0.2, 1.5, 0.1)
    centre, radius = mesh.bounding_sphere()
    torch.testing.assert_close(centre, torch.tensor([0.5, 0.5, 0.0]))
    assert radius == pytest.approx(math.sqrt(1.5))  # the base corners: (0.5, 1, 0.5) from the centre
    standing = mesh.placed(4.0, "bottom")  # 2 tall -> x2, the base's centre (0.5, -0.5, 0) to the origin
    torch.testing.assert_close(standing.bounds, torch.tensor([[-1.0, 0.0, -1.0], [1.0, 4.0, 1.0]]))
    torch.testing.assert_close(standing.verts[4], torch.tensor([-0.6, 4.0, 0.2]))
    centred = mesh.placed(origin="center")
    torch.testing.assert_close(centred.bounds, torch.tensor([[-0.5, -1.0, -0.5], [0.5, 1.0, 0.5]]))
    torch.testing.assert_close(mesh.placed(1.0).verts, mesh.verts / 2)  # "model": scaled about the origin
    assert mesh.placed().verts is mesh.verts or torch.equal(mesh.placed().verts, mesh.verts)
    assert mesh.placed() is mesh and mesh.placed(None, "model") is mesh  # nothing to do: no copy
    for kwargs, message in (
        ({"height": 0.0}, "height must lie"),
        ({"height": float("nan")}, "height must lie"),
        ({"height": 1e4}, "height must lie"),
        ({"origin": "top"}, "origin must be one of"),
    ):
        for method in (mesh.placed, mesh.placement):  # the motion alone is checked as the placed copy is
            with pytest.raises(ValueError, match=message):
                method(**kwargs)
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 1]]), torch.tensor([[0, 1, 2]]))
    for method in (flat.placed, flat.placement):
        with pytest.raises(ValueError, match="no height"):
            method(1.0)
    # The motion placed() applies: x -> (x - anchor) * scale (the base's centre, x2).
    anchor, scale = mesh.placement(4.0, "bottom")
    torch.testing.assert_close(anchor, torch.tensor([0.5, -0.5, 0.0]))
    assert scale == pytest.approx(2.0)
    torch.testing.assert_close((mesh.verts - anchor) * scale, standing.verts)


def test_vertex_normals_sphere_and_seams():
    tm = trimesh.creation.icosphere(subdivisions=3)
    mesh = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))
    # On a sphere the normal is the radial direction.
    cosine = (mesh.vertex_normals * torch.nn.functional.normalize(mesh.verts, dim=-1)).sum(-1)
    assert float(cosine.min()) > 0.999
    # Split vertex 0 as at a UV seam: both copies keep the same normal.
    faces = mesh.faces.clone()
    first_face = int(torch.nonzero((faces == 0).any(1))[0, 0])
    faces[first_face][faces[first_face] == 0] = mesh.num_verts
    split = Mesh(torch.cat([mesh.verts, mesh.verts[:1]]), faces)
    torch.testing.assert_close(split.vertex_normals[0], split.vertex_normals[-1])
    torch.testing.assert_close(split.vertex_normals[0], mesh.vertex_normals[0])
    # Differentiable with respect to the positions (shading in fitting losses).
    verts = mesh.verts.clone().requires_grad_(True)
    Mesh(verts, mesh.faces).vertex_normals[:, 0].sum().backward()
    assert float(verts.grad.abs().sum()) > 0


def test_is_closed_on_analytic_cases_and_as_trimesh_says_for_the_shared_meshes():
    tm = trimesh.creation.icosphere(subdivisions=2)
    sphere = Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))
    assert sphere.is_closed
    assert not Mesh(sphere.verts, sphere.faces[1:]).is_closed  # a hole
    assert not Mesh(sphere.verts, torch.cat([sphere.faces[:1].flip(1), sphere.faces[1:]])).is_closed  # one face flipped
    two = torch.cat([sphere.faces, sphere.faces + sphere.num_verts])
    assert Mesh(torch.cat([sphere.verts, sphere.verts + 3.0]), two).is_closed  # two closed parts
    assert Mesh(torch.cat([sphere.verts, sphere.verts]), two).is_closed  # the same surface twice: winding number 2
    shell = torch.cat([sphere.faces[1:], sphere.faces[:1].flip(1)])  # a second sheet through the first face's edges
    assert not Mesh(sphere.verts, torch.cat([sphere.faces, shell[-1:]])).is_closed
    # Every face on its own vertices, as a file split at UV seams and normals stores them: welded, still closed.
    corners = sphere.verts[sphere.faces.reshape(-1)]
    assert Mesh(corners, torch.arange(len(corners)).reshape(-1, 3)).is_closed
    assert not Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 0, 0]]), torch.tensor([[0, 1, 2]])).is_closed
    # trimesh's count: closed when no edge is used an odd number of times (the dragon has edges of 4 faces, no
    # boundary) and the faces' windings agree; the bust, Suzanne and the teapot have boundary edges.
    for path in sorted(SHARED_MESHES.glob("*.ply")):
        reference = trimesh.load(path, process=False)
        reference.merge_vertices(merge_tex=True, merge_norm=True)
        _, uses = np.unique(reference.edges_sorted, axis=0, return_counts=True)
        expected = bool((uses % 2 == 0).all()) and reference.is_winding_consistent
        assert load_mesh(path).is_closed == expected, path.name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"verts": torch.zeros(0, 3), "faces": torch.zeros(0, 3, dtype=torch.long)}, "empty"),
        ({"faces": torch.tensor([[0, 1, 5]])}, "out of range"),
        ({"faces": torch.tensor([[0, 1, -1]])}, "out of range"),
        ({"verts": torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, float("nan"), 0]])}, "NaN"),
        ({"verts": torch.zeros(3, 2)}, "verts"),
        ({"faces": torch.tensor([[0.0, 1.0, 2.0]])}, "faces"),
        ({"faces": torch.tensor([[0, 1, 2]], dtype=torch.int32)}, "int64"),
        ({"vertex_colors": torch.full((3, 3), 1.5)}, "[0, 1]"),
        ({"vertex_colors": torch.zeros(4, 3)}, "vertex_colors"),
        ({"uvs": torch.zeros(3, 2), "texture": torch.zeros(4, 4)}, "texture"),
        ({"texture": torch.zeros(4, 4, 3)}, "without uvs"),
    ],
)
def test_mesh_rejects_bad_input(kwargs, message):
    fields = {"verts": torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), "faces": torch.tensor([[0, 1, 2]])}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Mesh(**fields)


def test_trimesh_conversion_round_trip():
    colored = _colored_sphere()
    back = Mesh.from_trimesh(colored.to_trimesh())
    assert torch.equal(back.verts, colored.verts) and torch.equal(back.faces, colored.faces)
    assert float((back.vertex_colors - colored.vertex_colors).abs().max()) <= COLOR_TOLERANCE

    textured = _textured_sphere()
    back = Mesh.from_trimesh(textured.to_trimesh())
    torch.testing.assert_close(back.uvs, textured.uvs)
    assert back.texture.shape == textured.texture.shape
    assert float((back.texture - textured.texture).abs().max()) <= COLOR_TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_round_trip_vertex_colors(tmp_path, ext):
    mesh = _colored_sphere()
    assert save_mesh(mesh, tmp_path / f"mesh.{ext}") == tmp_path / f"mesh.{ext}"
    loaded = load_mesh(tmp_path / f"mesh.{ext}")
    assert torch.equal(loaded.verts, mesh.verts)  # float32 values written exactly
    assert torch.equal(loaded.faces, mesh.faces)
    assert float((loaded.vertex_colors - mesh.vertex_colors).abs().max()) <= COLOR_TOLERANCE
    assert sorted(os.listdir(tmp_path)) == [f"mesh.{ext}"]  # no temporary files left


@pytest.mark.parametrize("ext", ["glb", "obj"])
def test_round_trip_texture(tmp_path, ext):
    mesh = _textured_sphere()
    save_mesh(mesh, tmp_path / f"mesh.{ext}")
    loaded = load_mesh(tmp_path / f"mesh.{ext}")
    assert torch.equal(loaded.verts, mesh.verts) and torch.equal(loaded.faces, mesh.faces)
    assert float((loaded.uvs - mesh.uvs).abs().max()) <= 1e-6
    assert loaded.texture.shape == mesh.texture.shape
    assert float((loaded.texture - mesh.texture).abs().max()) <= COLOR_TOLERANCE
    expected = {"glb": ["mesh.glb"], "obj": ["mesh.mtl", "mesh.obj", "mesh.png"]}[ext]
    assert sorted(os.listdir(tmp_path)) == expected


@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_uvs_without_a_texture_keep_the_vertex_colours_and_add_no_texture(tmp_path, ext):
    """trimesh drops a PLY's / an OBJ's vertex colours when the file has UVs, and gives UVs without an image a grey
    2 x 2 placeholder: neither may reach a loaded mesh (it would render flat grey, and convert would embed it)."""
    coloured = _colored_sphere()
    both = Mesh(coloured.verts, coloured.faces, vertex_colors=coloured.vertex_colors, uvs=_textured_sphere().uvs)
    for mesh in (both, dataclasses.replace(both, vertex_colors=None)):
        loaded = load_mesh(save_mesh(mesh, tmp_path / f"mesh.{ext}"))
        assert loaded.texture is None
        if mesh.vertex_colors is not None:
            assert float((loaded.vertex_colors - mesh.vertex_colors).abs().max()) <= COLOR_TOLERANCE
    # Another tool's OBJ with texture coordinates and no material at all.
    lines = ["v 0 0 0 1 0 0", "v 1 0 0 0 1 0", "v 0 1 0 0 0 1", "vt 0 0", "vt 1 0", "vt 0 1", "f 1/1 2/2 3/3"]
    (tmp_path / "foreign.obj").write_text("\n".join(lines) + "\n")
    assert load_mesh(tmp_path / "foreign.obj").texture is None


def test_obj_texture_coordinates_are_v_up(tmp_path):
    """OBJ ``vt`` has v up from the bottom row, like Mesh.uvs: written unchanged (checked in the raw text)."""
    mesh = _textured_sphere()
    save_mesh(mesh, tmp_path / "mesh.obj")
    text = (tmp_path / "mesh.obj").read_text().splitlines()
    vt = np.array([[float(x) for x in line.split()[1:]] for line in text if line.startswith("vt ")])
    np.testing.assert_array_equal(vt.astype(np.float32), mesh.uvs.numpy())
    assert "map_Kd mesh.png" in (tmp_path / "mesh.mtl").read_text()
    assert "mtllib mesh.mtl" in text


def test_ply_keeps_uvs_and_refuses_textures(tmp_path):
    textured = _textured_sphere()
    untextured = Mesh(textured.verts, textured.faces, uvs=textured.uvs)
    save_mesh(untextured, tmp_path / "uv.ply")
    torch.testing.assert_close(load_mesh(tmp_path / "uv.ply").uvs, textured.uvs, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="PLY"):
        save_mesh(textured, tmp_path / "mesh.ply")
    assert sorted(os.listdir(tmp_path)) == ["uv.ply"]


def test_ply_is_binary_with_uchar_colors(tmp_path):
    mesh = _colored_sphere()
    save_mesh(mesh, tmp_path / "mesh.ply")
    data = (tmp_path / "mesh.ply").read_bytes()
    header = data[: data.index(b"end_header\n")].decode()
    assert "format binary_little_endian 1.0" in header
    assert "property uchar red" in header and f"element vertex {mesh.num_verts}" in header
    # First vertex record: 3 float32 then 3 uint8.
    body = data[data.index(b"end_header\n") + len(b"end_header\n") :]
    x, y, z, r, g, b = struct.unpack("<fffBBB", body[:15])
    assert (x, y, z) == tuple(mesh.verts[0].tolist())
    assert (r, g, b) == tuple(np.round(mesh.vertex_colors[0].numpy() * 255).astype(int).tolist())


# --------------------------------------------------------------------------------------------------------------------
# GLB content
# --------------------------------------------------------------------------------------------------------------------
def test_which_formats_get_a_baked_texture():
    """The one rule: a baked texture when asked for, and always for USDZ (its viewers show no vertex colours);
    refused for PLY and STL, which carry none."""
    assert mesh_io.gets_baked_texture("usdz", False) and mesh_io.gets_baked_texture("usdz", True)
    assert mesh_io.gets_baked_texture("glb", True) and mesh_io.gets_baked_texture("obj", True)
    assert not mesh_io.gets_baked_texture("glb", False) and not mesh_io.gets_baked_texture("obj", False)
    assert not mesh_io.gets_baked_texture("ply", False) and not mesh_io.gets_baked_texture("stl", False)
    for fmt in ("ply", "stl"):
        with pytest.raises(ValueError, match=f"{fmt.upper()} files carry no texture"):
            mesh_io.gets_baked_texture(fmt, True)


def test_glb_keeps_y_up_and_raw_positions(tmp_path):
    mesh = _arrow()
    save_mesh(mesh, tmp_path / "arrow.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "arrow.glb"))
    assert len(gltf.nodes) == 1
    node = gltf.nodes[0]
    assert node.matrix is None and node.rotation is None and node.translation is None and node.scale is None
    primitive = gltf.meshes[0].primitives[0]
    positions = _gltf_accessor(gltf, primitive.attributes.POSITION)
    np.testing.assert_array_equal(positions, mesh.verts.numpy())
    assert gltf.accessors[primitive.attributes.POSITION].max == [1.0, 1.5, 0.5]  # apex stays at +Y
    indices = _gltf_accessor(gltf, primitive.indices).reshape(-1, 3)
    np.testing.assert_array_equal(indices, mesh.faces.numpy())
    assert gltf.accessors[primitive.indices].componentType == 5123  # 16-bit indices where they suffice
    normals = _gltf_accessor(gltf, primitive.attributes.NORMAL)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    # trimesh sees the same +Y-up geometry.
    loaded = trimesh.load(tmp_path / "arrow.glb", force="mesh", process=False)
    np.testing.assert_array_equal(np.asarray(loaded.vertices, dtype=np.float32), mesh.verts.numpy())


def test_stl_is_z_up_binary_with_outward_facet_normals(tmp_path):
    """Read back by hand (the binary layout) and by trimesh: the apex (+Y) is +Z, the front (+Z) faces -Y."""
    mesh = _arrow()
    save_mesh(mesh, tmp_path / "arrow.stl")
    data = (tmp_path / "arrow.stl").read_bytes()
    assert len(data) == 80 + 4 + 50 * mesh.num_faces
    assert np.frombuffer(data, "<u4", 1, 80)[0] == mesh.num_faces
    assert not data.startswith(b"solid")  # the mark of an ASCII STL: readers would take it for one
    records = np.frombuffer(data[84:], np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    x, y, z = mesh.verts.numpy()[mesh.faces.numpy()].transpose(2, 0, 1)
    np.testing.assert_array_equal(records["v"], np.stack([x, -z, y], axis=-1))  # Blender's view of the glTF
    assert records["v"][..., 2].max() == 1.5  # the apex is up
    centre = records["v"].reshape(-1, 3).mean(axis=0)
    facet_centres = records["v"].mean(axis=1)
    assert (np.einsum("fi,fi->f", records["n"], facet_centres - centre) > 0).all()  # outward
    np.testing.assert_allclose(np.linalg.norm(records["n"], axis=1), 1.0, atol=1e-6)
    loaded = trimesh.load(tmp_path / "arrow.stl")  # merged by trimesh: one closed solid
    assert loaded.is_watertight and loaded.volume > 0
    np.testing.assert_allclose(loaded.volume, trimesh.Trimesh(mesh.verts.numpy(), mesh.faces.numpy()).volume, rtol=1e-6)


def test_stl_round_trip_and_foreign_z_up_files(tmp_path):
    mesh = _colored_sphere()
    back = load_mesh(save_mesh(mesh, tmp_path / "sphere.stl"))
    assert back.num_verts == mesh.num_verts and back.num_faces == mesh.num_faces  # corners merged again
    assert back.vertex_colors is None and back.texture is None  # geometry only
    pairs = torch.cdist(back.verts, mesh.verts).argmin(dim=1)
    torch.testing.assert_close(back.verts, mesh.verts[pairs])
    # the same triangles, the same way round
    assert {tuple(np.roll(f, -f.argmin())) for f in pairs[back.faces].numpy()} == {
        tuple(np.roll(f, -f.argmin())) for f in mesh.faces.numpy()
    }
    # A slicer's file, tall along its +Z, stands up along our +Y.
    column = trimesh.creation.box((0.2, 0.4, 1.0))
    column.apply_translation((0.0, 0.0, 0.5))
    column.export(tmp_path / "column.stl")
    low, high = load_mesh(tmp_path / "column.stl").verts.aminmax(dim=0)
    torch.testing.assert_close(low, torch.tensor([-0.1, 0.0, -0.2]))
    torch.testing.assert_close(high, torch.tensor([0.1, 1.0, 0.2]))


def test_glb_texcoords_are_v_down_and_material(tmp_path):
    mesh = _textured_sphere()
    save_mesh(mesh, tmp_path / "tex.glb", unlit=True)
    gltf = pygltflib.GLTF2().load(str(tmp_path / "tex.glb"))
    primitive = gltf.meshes[0].primitives[0]
    texcoords = _gltf_accessor(gltf, primitive.attributes.TEXCOORD_0)
    np.testing.assert_allclose(texcoords[:, 0], mesh.uvs[:, 0].numpy())
    np.testing.assert_allclose(texcoords[:, 1], 1.0 - mesh.uvs[:, 1].numpy(), atol=1e-7)
    assert primitive.attributes.COLOR_0 is None
    material = gltf.materials[primitive.material]
    assert material.pbrMetallicRoughness.baseColorTexture.index == 0
    assert material.extensions == {"KHR_materials_unlit": {}} and gltf.extensionsUsed == ["KHR_materials_unlit"]
    assert gltf.images[0].mimeType == "image/png"


def test_glb_vertex_colors_are_linear(tmp_path):
    """glTF's COLOR_0 is linear: our display values go through the sRGB curve."""
    mesh = _colored_sphere()
    save_mesh(mesh, tmp_path / "c.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "c.glb"))
    primitive = gltf.meshes[0].primitives[0]
    accessor = gltf.accessors[primitive.attributes.COLOR_0]
    assert (accessor.componentType, accessor.type) == (5126, "VEC3")
    linear = _gltf_accessor(gltf, primitive.attributes.COLOR_0)
    np.testing.assert_allclose(linear, srgb_to_linear(mesh.vertex_colors.numpy()), atol=1e-6)
    assert gltf.materials[0].pbrMetallicRoughness.metallicFactor == 0.0  # not the dark default metal


def _validator_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run the Khronos glTF validator")
    if not (NODE_TOOLS / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("gltf-validator not installed: run `npm ci --prefix tools/gltf`")
    return [node, str(NODE_TOOLS / "validate.mjs")]


def test_glb_normals_point_outward_and_texture_is_embedded_without_color_0(tmp_path):
    """Raw GLB accessors of a textured unit sphere that also has vertex colours: NORMAL points outward (along the
    position, as for any sphere about the origin); no COLOR_0 (it would tint the texture); the embedded PNG decodes to
    the texture; the sampler clamps to the edge (33071), so an atlas border does not bleed in from the opposite side."""
    from PIL import Image

    tm = trimesh.creation.icosphere(subdivisions=2)
    textured = _textured_sphere()
    verts = torch.from_numpy(tm.vertices.astype(np.float32))
    colours = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(2))
    faces = torch.from_numpy(tm.faces.astype(np.int64))
    mesh = Mesh(verts, faces, vertex_colors=colours, uvs=textured.uvs, texture=textured.texture)
    save_mesh(mesh, tmp_path / "both.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "both.glb"))
    primitive = gltf.meshes[0].primitives[0]
    normals = _gltf_accessor(gltf, primitive.attributes.NORMAL)
    unit_positions = tm.vertices / np.linalg.norm(tm.vertices, axis=1, keepdims=True)
    assert (np.einsum("vi,vi->v", normals, unit_positions) > 0.98).all()
    assert primitive.attributes.COLOR_0 is None
    view = gltf.bufferViews[gltf.images[0].bufferView]
    png = gltf.binary_blob()[view.byteOffset : view.byteOffset + view.byteLength]
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(decoded, np.round(textured.texture.numpy() * 255).astype(np.uint8))
    sampler = gltf.samplers[gltf.textures[0].sampler]
    assert (sampler.wrapS, sampler.wrapT) == (33071, 33071)


def test_khronos_validator_accepts_our_glbs(tmp_path):
    command = _validator_command()
    bunny = load_mesh(MESH_DIR / "bunny.ply") if (MESH_DIR / "bunny.ply").is_file() else _arrow()
    meshes = {
        "colors": _colored_sphere(),
        "texture": _textured_sphere(),
        "unlit": _colored_sphere(),
        "plain": _arrow(),
        "real": bunny,
        # 3 16-bit indices (6 bytes): the colours' view after them must still start 4-byte aligned
        "triangle": Mesh(torch.eye(3), torch.tensor([[0, 1, 2]]), vertex_colors=torch.eye(3)),
    }
    paths = []
    for name, mesh in meshes.items():
        paths.append(str(save_mesh(mesh, tmp_path / f"{name}.glb", unlit=name == "unlit")))
    result = subprocess.run([*command, *paths], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summaries = [line for line in lines if line.startswith(str(tmp_path))]
    assert len(summaries) == len(paths)
    for line in summaries:
        assert ": 0 errors, 0 warnings" in line, line


def test_khronos_validator_reports_errors(tmp_path):
    """The validator wrapper fails on a broken file (so the test above can fail)."""
    command = _validator_command()
    save_mesh(_arrow(), tmp_path / "bad.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "bad.glb"))
    gltf.accessors[0].max = [9.0, 9.0, 9.0]  # wrong bounds
    gltf.save_binary(str(tmp_path / "bad.glb"))
    result = subprocess.run([*command, str(tmp_path / "bad.glb")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "ACCESSOR_MAX_MISMATCH" in result.stdout


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
def test_load_real_meshes():
    if not MESH_DIR.is_dir():
        pytest.skip("shared meshes not available")
    for path in sorted(MESH_DIR.glob("*.ply")):
        mesh = load_mesh(path)
        reference = trimesh.load(path, process=False)
        assert mesh.num_verts == len(reference.vertices) and mesh.num_faces == len(reference.faces)
        np.testing.assert_array_equal(mesh.faces.numpy(), reference.faces)


def test_load_scene_applies_node_transforms(tmp_path):
    """A GLB scene with two translated nodes, one mirrored, loads as one mesh in scene coordinates, outward."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    scene = trimesh.Scene()
    scene.add_geometry(box, node_name="a", transform=trimesh.transformations.translation_matrix([2.0, 0.0, 0.0]))
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[:3, 3] = [0.0, 3.0, 0.0]
    scene.add_geometry(box, node_name="b", transform=mirror)
    (tmp_path / "scene.glb").write_bytes(scene.export(file_type="glb"))
    mesh = load_mesh(tmp_path / "scene.glb")
    assert mesh.num_faces == 2 * len(box.faces)
    torch.testing.assert_close(mesh.bounds, torch.tensor([[-0.5, -0.5, -0.5], [2.5, 3.5, 0.5]]))
    v0, v1, v2 = mesh.verts.double()[mesh.faces].unbind(1)
    volume = float((v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6)
    assert volume == pytest.approx(2.0, rel=1e-6)  # both boxes stay outward (mirroring flips the winding back)


def test_load_scene_keeps_the_vertex_colours_of_every_part(tmp_path):
    """Two vertex-coloured boxes in two nodes load as one mesh whose colours are each part's own (red and blue)."""
    scene = trimesh.Scene()
    for name, x, colour in (("red", -2.0, [255, 0, 0, 255]), ("blue", 2.0, [0, 0, 255, 255])):
        box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
        box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile(colour, (len(box.vertices), 1)))
        scene.add_geometry(box, node_name=name, transform=trimesh.transformations.translation_matrix([x, 0.0, 0.0]))
    (tmp_path / "two.glb").write_bytes(scene.export(file_type="glb"))
    mesh = load_mesh(tmp_path / "two.glb")
    assert mesh.vertex_colors is not None and mesh.num_verts == 16
    left = mesh.verts[:, 0] < 0
    torch.testing.assert_close(mesh.vertex_colors[left], torch.tensor([[1.0, 0.0, 0.0]]).expand(8, 3))
    torch.testing.assert_close(mesh.vertex_colors[~left], torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3))


def test_load_scene_applies_a_rotation_node_the_right_way_round(tmp_path):
    """A node turning its mesh 90 degrees about +Y maps +X to -Z and +Z to +X (right-handed): the arrow's vertices
    come back as R v with R written out by hand (a transposed matrix would turn it the other way)."""
    arrow = _arrow()
    scene = trimesh.Scene()
    turn = np.eye(4)
    turn[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    tm = trimesh.Trimesh(arrow.verts.numpy(), arrow.faces.numpy(), process=False)
    scene.add_geometry(tm, node_name="turned", transform=turn)
    (tmp_path / "turned.glb").write_bytes(scene.export(file_type="glb"))
    x, y, z = arrow.verts.numpy().T
    expected = np.stack([z, y, -x], axis=1)
    np.testing.assert_allclose(load_mesh(tmp_path / "turned.glb").verts.numpy(), expected, atol=1e-6)


def test_glb_normal_of_a_vertex_without_faces_is_plus_y(tmp_path):
    """A vertex no face uses has no normal: the GLB gets +Y there (unit, as validators require); the others keep
    their own unit normals (the apex of the arrow points up)."""
    arrow = _arrow()
    mesh = Mesh(torch.cat([arrow.verts, torch.tensor([[5.0, 5.0, 5.0]])]), arrow.faces)
    save_mesh(mesh, tmp_path / "loose.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "loose.glb"))
    normals = _gltf_accessor(gltf, gltf.meshes[0].primitives[0].attributes.NORMAL)
    np.testing.assert_array_equal(normals[5], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    assert normals[4, 1] > 0.5


def test_obj_in_latin_1_loads(tmp_path):
    """Older exporters write OBJ comments and names in Latin-1, not UTF-8: read as text all the same."""
    text = "# modèle exporté\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\no pièce\nf 1 2 3\nf 1 3 4\n"
    (tmp_path / "latin.obj").write_bytes(text.encode("latin-1"))
    mesh = load_mesh(tmp_path / "latin.obj")
    assert mesh.num_faces == 2
    np.testing.assert_array_equal(np.sort(mesh.verts.numpy(), axis=0), [[0, 0, 0]] * 3 + [[1, 1, 1]])


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    with pytest.raises(ValueError, match="extension"):
        load_mesh(tmp_path / "mesh.fbx")
    for name, content in [
        ("corrupt.glb", b"glTF\x02\x00\x00\x00garbage"),
        ("corrupt.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00"),
        ("corrupt.obj", b"this is not an obj file\n"),
        ("empty.obj", b"v 0 0 0\nv 1 0 0\n"),
        ("corrupt.stl", bytes(range(256)) * 3),
        ("cut.stl", b"x" * 80 + np.uint32(4).tobytes() + b"\x00" * 60),
        ("empty.stl", b"x" * 80 + np.uint32(0).tobytes()),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name):
            load_mesh(tmp_path / name)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        save_mesh(_arrow(), tmp_path / "mesh.fbx")
    with pytest.raises(ValueError, match="format"):
        save_mesh(_arrow(), tmp_path / "mesh.glb", format="fbx")
    with pytest.raises(ValueError, match="does not exist"):
        save_mesh(_arrow(), tmp_path / "missing" / "mesh.glb")
    with pytest.raises(ValueError, match="Mesh"):
        save_mesh(trimesh.creation.box(), tmp_path / "mesh.glb")
    assert save_mesh(_arrow(), tmp_path / "upper.GLB", format=None).is_file()


# --------------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------------
def test_atomic_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.bin") as f:
        f.write(b"partial")
        raise RuntimeError("writer failed mid-way")
    assert os.listdir(tmp_path) == []

    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.txt", "w") as f:
        f.write("new but incomplete")
        raise RuntimeError("writer failed mid-way")
    assert (tmp_path / "out.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]

    atomic_write_bytes(tmp_path / "out.txt", b"new")
    assert (tmp_path / "out.txt").read_bytes() == b"new"
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "x", "a").__enter__()


def test_atomic_write_goes_through_a_hidden_file_beside_the_destination(tmp_path):
    """The temporary file lies in the destination's folder (a rename across file systems is a copy, not atomic)."""
    with atomic_write(tmp_path / "out.bin") as f:
        f.write(b"data")
        (temporary,) = os.listdir(tmp_path)
        assert Path(f.name).parent == tmp_path and temporary.startswith(".out.bin.") and temporary.endswith(".bin")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_unwritable_folder_is_named_by_the_destination(tmp_path, monkeypatch):
    """A folder where no file can be created: the error names the asked path, not the temporary file."""

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.glb.abcdefgh.tmp.glb"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError, match=rf"^cannot write {re.escape(str(tmp_path))}/out.glb: Permission denied$"):
        atomic_write_bytes(tmp_path / "out.glb", b"x")


def test_output_folders_are_checked_by_a_real_attempt(tmp_path, monkeypatch):
    """Before slow work: a folder under a file, or where the file system refuses new entries, is refused naming the
    output; a folder that can be made is not made yet, and the check leaves nothing behind."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=f"^cannot create {re.escape(str(tmp_path))}/file/out: .* is a file$"):
        atomic.check_output_folder(tmp_path / "file" / "out")
    assert atomic.check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert os.listdir(tmp_path) == ["file"]
    monkeypatch.chdir(tmp_path)
    assert atomic.check_output_folder("relative") == Path("relative") and os.listdir(tmp_path) == ["file"]

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refused)
    with pytest.raises(ValueError, match=f"^cannot write into {re.escape(str(tmp_path))}/out: Permission denied$"):
        atomic.check_output_folder(tmp_path / "out")


@pytest.mark.parametrize("ext", ["glb", "obj", "ply", "stl"])
def test_failed_save_leaves_no_file(tmp_path, monkeypatch, ext):
    """The data is complete but the final flush to disk fails: no mesh file, no temporary file."""

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_mesh(_textured_sphere() if ext in ("glb", "obj") else _colored_sphere(), tmp_path / f"mesh.{ext}")
    assert os.listdir(tmp_path) == []


def test_failed_obj_text_leaves_no_companion_files(tmp_path, monkeypatch):
    def failing_format(*args):
        raise RuntimeError("formatting failed")

    monkeypatch.setattr(mesh_io, "_format_rows", failing_format)
    with pytest.raises(RuntimeError):
        save_mesh(_textured_sphere(), tmp_path / "mesh.obj")
    assert os.listdir(tmp_path) == []


def test_json_is_written_strict_with_undefined_numbers_as_null(tmp_path):
    path = tmp_path / "scores.json"
    atomic.atomic_write_json(path, {"f": 0.5, "v": math.nan, "rows": [{"c": math.inf}, (1, -math.inf)], "n": 3})
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"f": 0.5, "v": None, "rows": [{"c": None}, [1, None]], "n": 3}
    with pytest.raises(TypeError):  # not JSON at all: refused, nothing written
        atomic.atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert not list(tmp_path.glob("*bad*"))


def test_csv_tables_quote_what_needs_it_and_a_failed_row_leaves_the_old_file(tmp_path):
    path = tmp_path / "table.csv"
    rows = [["a.png", "ok", 3, ""], ["b, c.png", "failed", "", 'said "no"\nthen stopped']]
    atomic.atomic_write_csv(path, ["input", "status", "faces", "error"], rows)
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["input", "status", "faces", "error"], *[[str(c) for c in r] for r in rows]]
    before = path.read_bytes()

    def rows_that_fail():
        yield ["d.png", "ok", 1, ""]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write_csv(path, ["input", "status", "faces", "error"], rows_that_fail())
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["table.csv"]


def test_atomic_files_get_normal_permissions(tmp_path):
    """Not the 0600 of temporary files: what a plain open() would give."""
    umask = os.umask(0)
    os.umask(umask)
    save_mesh(_arrow(), tmp_path / "mesh.ply")
    assert (tmp_path / "mesh.ply").stat().st_mode & 0o777 == 0o666 & ~umask


def test_validator_package_is_pinned():
    package = json.loads((NODE_TOOLS / "package.json").read_text())
    version = package["dependencies"]["gltf-validator"]
    assert version[0].isdigit(), "pin an exact version"
    lock = json.loads((NODE_TOOLS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/gltf-validator"]["version"] == version


@pytest.mark.parametrize(("num_verts", "component"), [(65535, 5123), (65536, 5125)])
def test_glb_indices_are_16_bit_up_to_65535_vertices(tmp_path, num_verts, component):
    """glTF's 16-bit indices reach vertex 65534 (65535 restarts strips): one vertex more takes 32-bit ones."""
    angle = torch.linspace(0, 2 * math.pi, num_verts - 1)
    verts = torch.cat([torch.zeros(1, 3), torch.stack([angle.cos(), angle.sin(), angle * 0.01], dim=1)])
    faces = torch.stack([torch.zeros(num_verts - 2, dtype=torch.long), torch.arange(1, num_verts - 1),
                         torch.arange(2, num_verts)], dim=1)  # fmt: skip
    save_mesh(Mesh(verts, faces), tmp_path / "fan.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "fan.glb"))
    accessor = gltf.accessors[gltf.meshes[0].primitives[0].indices]
    assert accessor.componentType == component
    np.testing.assert_array_equal(_gltf_accessor(gltf, gltf.meshes[0].primitives[0].indices).reshape(-1, 3), faces)
