"""Mesh and image file behaviour found untested by a mutation audit of ``monorecon.io`` (mesh_io, usd_io, images).

Each test checks against an independent reference: the file read back by pygltflib / PIL / by hand, the glTF spec's
enumerations, or values computed by hand.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image
from pxr import UsdUtils

from monorecon.core.mesh import Mesh
from monorecon.io import atomic, load_mesh, mesh_io, save_mesh
from monorecon.io.images import load_image, save_image

# glTF 2.0 sampler enumerations (the spec's WebGL constants)
NEAREST, LINEAR = 9728, 9729
LINEAR_MINIFICATIONS = (9729, 9985, 9987)  # LINEAR, LINEAR_MIPMAP_NEAREST, LINEAR_MIPMAP_LINEAR


def _tetrahedron(uvs: bool = False, texture: np.ndarray | None = None) -> Mesh:
    verts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    if texture is None and not uvs:
        return Mesh(verts, faces)
    st = torch.tensor([[0.1, 0.2], [0.9, 0.2], [0.1, 0.8], [0.5, 0.5]])
    return Mesh(verts, faces, uvs=st, texture=None if texture is None else torch.from_numpy(texture))


def _small_texture() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.integers(0, 256, (3, 5, 3)) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# GLB material and sampler
# --------------------------------------------------------------------------------------------------------------------
def test_glb_texture_sampler_filters_linearly(tmp_path):
    """Magnification LINEAR (9729) and a LINEAR minification (not NEAREST 9728, which shows texels as blocks)."""
    save_mesh(_tetrahedron(texture=_small_texture()), tmp_path / "t.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "t.glb"))
    sampler = gltf.samplers[gltf.textures[0].sampler]
    assert sampler.magFilter == LINEAR
    assert sampler.minFilter in LINEAR_MINIFICATIONS


def test_glb_material_is_matte_dielectric(tmp_path):
    """roughness 1 (or absent: the glTF default is 1) and metallic 0, as the USDZ material: a matte surface."""
    save_mesh(_tetrahedron(), tmp_path / "plain.glb")
    pbr = pygltflib.GLTF2().load(str(tmp_path / "plain.glb")).materials[0].pbrMetallicRoughness
    assert pbr.roughnessFactor in (None, 1.0)
    assert pbr.metallicFactor == 0.0


def test_explicit_format_is_case_insensitive(tmp_path):
    """format="GLB" writes a GLB (magic b"glTF", read by pygltflib) whatever the path's extension."""
    path = save_mesh(_tetrahedron(), tmp_path / "mesh.bin", format="GLB")
    assert path.read_bytes()[:4] == b"glTF"
    positions = pygltflib.GLTF2().load_binary(str(path)).accessors[0]
    assert positions.count == 4 and positions.max == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------------------------------
# OBJ companions
# --------------------------------------------------------------------------------------------------------------------
def test_obj_material_is_white_diffuse_with_the_texture(tmp_path):
    """The MTL's Kd multiplies map_Kd in viewers: it must be white, so the texture shows as it is; the PNG decodes
    (PIL) to the texture rounded to 8 bits."""
    texture = _small_texture()
    save_mesh(_tetrahedron(texture=texture), tmp_path / "m.obj")
    statements = dict(line.split(" ", 1) for line in (tmp_path / "m.mtl").read_text().splitlines() if " " in line)
    assert [float(x) for x in statements["Kd"].split()] == [1.0, 1.0, 1.0]
    assert statements["map_Kd"] == "m.png"
    decoded = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    np.testing.assert_array_equal(decoded, np.round(texture * 255).astype(np.uint8))


def test_obj_is_not_written_when_its_texture_cannot_be(tmp_path, monkeypatch):
    """The OBJ refers to its MTL and PNG: they are written first, so a failure on them leaves no OBJ naming them."""
    real = mesh_io.atomic_write_bytes

    def failing_png(path, data):
        if Path(path).suffix == ".png":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(mesh_io, "atomic_write_bytes", failing_png)
    with pytest.raises(OSError, match="disk full"):
        save_mesh(_tetrahedron(texture=_small_texture()), tmp_path / "m.obj")
    assert not (tmp_path / "m.obj").exists()


# --------------------------------------------------------------------------------------------------------------------
# Loading scenes of several parts
# --------------------------------------------------------------------------------------------------------------------
def _box_at(x: float, colour: list[int] | None = None) -> tuple[trimesh.Trimesh, np.ndarray]:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    if colour is not None:
        box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile(colour, (len(box.vertices), 1)))
    return box, trimesh.transformations.translation_matrix([x, 0.0, 0.0])


def test_scene_with_a_coloured_and_a_plain_part_loads_the_plain_one_white(tmp_path):
    """A part with no colour beside a coloured one gets the glTF default material colour, white (what viewers show):
    the red box stays red."""
    scene = trimesh.Scene()
    for name, x, colour in (("red", -2.0, [255, 0, 0, 255]), ("plain", 2.0, None)):
        box, transform = _box_at(x, colour)
        scene.add_geometry(box, node_name=name, transform=transform)
    (tmp_path / "mixed.glb").write_bytes(scene.export(file_type="glb"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(tmp_path / "mixed.glb")
    assert mesh.num_verts == 16 and mesh.num_faces == 24
    red = mesh.verts[:, 0] < 0
    torch.testing.assert_close(mesh.vertex_colors[red], torch.tensor([[1.0, 0.0, 0.0]]).expand(8, 3))
    torch.testing.assert_close(mesh.vertex_colors[~red], torch.ones(8, 3))
    torch.testing.assert_close(mesh.bounds, torch.tensor([[-2.5, -0.5, -0.5], [2.5, 0.5, 0.5]]))


def test_scene_parts_of_different_sizes_keep_their_own_faces(tmp_path):
    """A box (8 vertices) and an icosahedron (12): each loaded face uses its own part's vertices (all corners on one
    side of x = 0), and the signed volume is the sum of the parts' volumes as trimesh computes them."""
    scene = trimesh.Scene()
    ico = trimesh.creation.icosphere(subdivisions=0)
    box, transform = _box_at(-2.0)
    scene.add_geometry(box, node_name="box", transform=transform)
    scene.add_geometry(ico, node_name="ico", transform=trimesh.transformations.translation_matrix([2.0, 0.0, 0.0]))
    (tmp_path / "sizes.glb").write_bytes(scene.export(file_type="glb"))
    mesh = load_mesh(tmp_path / "sizes.glb")
    assert (mesh.num_verts, mesh.num_faces) == (20, 32)
    corners = mesh.verts.double().numpy()[mesh.faces.numpy()]
    assert ((corners[..., 0] < 0).all(axis=1) | (corners[..., 0] > 0).all(axis=1)).all()
    volume = np.einsum("fi,fi->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6
    assert volume == pytest.approx(box.volume + ico.volume, rel=1e-6)


def test_scene_with_a_point_cloud_loads_its_triangles_only(tmp_path):
    """A GLB node holding points (no faces) next to a box: the box's 8 vertices and 12 triangles are the mesh."""
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.PointCloud(np.random.default_rng(0).random((5, 3)) + 10.0), node_name="points")
    scene.add_geometry(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), node_name="box")
    (tmp_path / "points.glb").write_bytes(scene.export(file_type="glb"))
    mesh = load_mesh(tmp_path / "points.glb")
    assert (mesh.num_verts, mesh.num_faces) == (8, 12)
    torch.testing.assert_close(mesh.bounds, torch.tensor([[-0.5] * 3, [0.5] * 3]))


@pytest.mark.parametrize("factor", [None, [1.0, 1.0, 1.0, 1.0]])
def test_scene_of_two_textured_parts_keeps_each_parts_texture(tmp_path, factor):
    """Two boxes, one with a flat red texture, one with a flat blue one (baseColorFactor absent, the glTF default
    white, or written as white as many exporters do; trimesh's packing applied it on the 0..255 scale: black): the
    loaded mesh is textured, and each vertex's UV samples its own part's colour."""
    scene = trimesh.Scene()
    uv = np.random.default_rng(0).uniform(0.2, 0.8, (8, 2))
    for name, x, colour in (("red", -2.0, (255, 0, 0)), ("blue", 2.0, (0, 0, 255))):
        box, transform = _box_at(x)
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (4, 4), colour))
        box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        scene.add_geometry(box, node_name=name, transform=transform)
    gltf = pygltflib.GLTF2().load_from_bytes(scene.export(file_type="glb"))
    for material in gltf.materials:
        material.pbrMetallicRoughness.baseColorFactor = factor
    gltf.save_binary(str(tmp_path / "two.glb"))
    mesh = load_mesh(tmp_path / "two.glb")
    assert mesh.texture is not None and mesh.uvs is not None and mesh.num_verts == 16
    height, width = mesh.texture.shape[:2]
    u, v = mesh.uvs[:, 0].numpy(), mesh.uvs[:, 1].numpy()
    rows = np.clip(((1.0 - v) * height).astype(int), 0, height - 1)  # v up from the bottom row
    cols = np.clip((u * width).astype(int), 0, width - 1)
    sampled = mesh.texture.numpy()[rows, cols]
    left = mesh.verts[:, 0].numpy() < 0
    np.testing.assert_allclose(sampled[left], np.tile([1.0, 0.0, 0.0], (8, 1)), atol=1 / 255)
    np.testing.assert_allclose(sampled[~left], np.tile([0.0, 0.0, 1.0], (8, 1)), atol=1 / 255)


# --------------------------------------------------------------------------------------------------------------------
# USDZ writing
# --------------------------------------------------------------------------------------------------------------------
def test_failed_usdz_package_leaves_no_partial_file(tmp_path, monkeypatch):
    """A packager that writes half a file and then fails: no file at the destination, and an old file is kept."""

    def half_written(layer, destination):
        Path(destination).write_bytes(b"PK\x03\x04 half")
        return False

    monkeypatch.setattr(UsdUtils, "CreateNewARKitUsdzPackage", half_written)
    with pytest.raises(ValueError, match="could not write the USDZ package"):
        save_mesh(_tetrahedron(), tmp_path / "new.usdz")
    assert os.listdir(tmp_path) == []
    (tmp_path / "old.usdz").write_bytes(b"old")
    with pytest.raises(ValueError, match="could not write the USDZ package"):
        save_mesh(_tetrahedron(), tmp_path / "old.usdz")
    assert (tmp_path / "old.usdz").read_bytes() == b"old" and os.listdir(tmp_path) == ["old.usdz"]


def test_usdz_mesh_is_single_sided_with_per_vertex_uvs(tmp_path):
    """Outward, closed faces: doubleSided false; ``st`` has one value per point (``vertex`` interpolation, as the
    module notes say), equal to the mesh's UVs."""
    from pxr import Usd, UsdGeom

    mesh = _tetrahedron(texture=_small_texture())
    path = save_mesh(mesh, tmp_path / "m.usdz")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()[0] == "model.usdc"
    stage = Usd.Stage.Open(str(path))
    geometry = UsdGeom.Mesh(stage.GetPrimAtPath("/Model/Mesh"))
    assert geometry.GetDoubleSidedAttr().Get() is False
    st = UsdGeom.PrimvarsAPI(geometry).GetPrimvar("st")
    assert st.GetInterpolation() == UsdGeom.Tokens.vertex
    np.testing.assert_array_equal(np.asarray(st.Get()), mesh.uvs.numpy())


# --------------------------------------------------------------------------------------------------------------------
# Reading USD written by others (hand-written .usda layers)
# --------------------------------------------------------------------------------------------------------------------
def _usda(body: str) -> str:
    return '#usda 1.0\n(\n    upAxis = "Y"\n    metersPerUnit = 1\n)\n\n' + body


def _mesh_prim(name: str, counts, indices, points, extra: str = "", header: str = "") -> str:
    return (
        f'def Mesh "{name}"{header}\n{{\n    int[] faceVertexCounts = {list(counts)}\n'
        f"    int[] faceVertexIndices = {list(indices)}\n"
        f"    point3f[] points = [{', '.join(str(tuple(p)) for p in points)}]\n{extra}}}\n"
    )


_TRIANGLE = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
_QUAD = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]


@pytest.mark.parametrize(
    ("counts", "indices"),
    [([3], [0, 1, 3]), ([3, 3], [0, 1, 2]), ([-1, 4], [0, 1, 2])],
    ids=["index-equal-to-point-count", "counts-beyond-indices", "negative-count"],
)
def test_load_usd_refuses_inconsistent_topology(tmp_path, counts, indices):
    (tmp_path / "bad.usda").write_text(_usda(_mesh_prim("Bad", counts, indices, _TRIANGLE)))
    with pytest.raises(ValueError, match="inconsistent face indices"):
        load_mesh(tmp_path / "bad.usda")


def test_load_usd_skips_faces_of_fewer_than_three_corners(tmp_path):
    """A one-corner face next to a triangle: the triangle alone is loaded."""
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [1, 3], [0, 0, 1, 2], _TRIANGLE)))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.faces.tolist() == [[0, 1, 2]]


def test_load_usd_mirroring_transform_keeps_faces_outward(tmp_path):
    """A counter-clockwise triangle facing +Z, mirrored in X by its Xform: a mirror image of a surface facing +Z
    still faces +Z, so the loaded winding normal is +Z (computed here from the loaded corners)."""
    xform = (
        '    double3 xformOp:scale = (-1, 1, 1)\n    uniform token[] xformOpOrder = ["xformOp:scale"]\n'
        + _mesh_prim("Triangle", [3], [0, 1, 2], _TRIANGLE)
    )
    (tmp_path / "m.usda").write_text(_usda('def Xform "Mirror"\n{\n' + xform + "}\n"))
    mesh = load_mesh(tmp_path / "m.usda")
    np.testing.assert_array_equal(np.sort(mesh.verts.numpy()[:, 0]), [-1.0, 0.0, 0.0])
    a, b, c = mesh.verts.numpy()[mesh.faces[0].numpy()]
    normal = np.cross(b - a, c - a)
    assert normal[2] > 0 and abs(normal[0]) + abs(normal[1]) == 0


def test_load_usd_display_colours_outside_0_1_are_clipped(tmp_path):
    """Linear displayColor above 1 (HDR) or below 0 reads as sRGB 1 / 0; linear 0.21404114 is sRGB 0.5."""
    colours = "    color3f[] primvars:displayColor = [(1.5, -0.2, 0.21404114), (0, 1, 0), (0, 0, 1)] (\n"
    colours += '        interpolation = "vertex"\n    )\n'
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [3], [0, 1, 2], _TRIANGLE, colours)))
    mesh = load_mesh(tmp_path / "m.usda")
    np.testing.assert_allclose(mesh.vertex_colors[0].numpy(), [1.0, 0.0, 0.5], atol=1e-6)


def test_load_usd_constant_display_colour_colours_every_vertex(tmp_path):
    """displayColor with constant interpolation (one value, the most common kind): every vertex gets it."""
    colours = "    color3f[] primvars:displayColor = [(0.21404114, 0, 1)] (\n"
    colours += '        interpolation = "constant"\n    )\n'
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [4], [0, 1, 2, 3], _QUAD, colours)))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.num_verts == 4 and mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), np.tile([0.5, 0.0, 1.0], (4, 1)), atol=1e-6)


def test_load_usd_vertex_colours_follow_their_points_when_uvs_vary_per_corner(tmp_path):
    """faceVarying UVs split the quad into one vertex per corner: each corner takes the vertex-interpolated colour
    of the point it uses (corners 0, 1, 2, 3 use points 2, 3, 0, 1)."""
    extra = (
        "    texCoord2f[] primvars:st = [(0, 0), (1, 0), (1, 1), (0, 1)] (\n"
        '        interpolation = "faceVarying"\n    )\n'
        "    color3f[] primvars:displayColor = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)] (\n"
        '        interpolation = "vertex"\n    )\n'
    )
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [4], [2, 3, 0, 1], _QUAD, extra)))
    mesh = load_mesh(tmp_path / "m.usda")
    np.testing.assert_array_equal(mesh.verts.numpy(), np.float32([_QUAD[i] for i in (2, 3, 0, 1)]))
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), [[0, 0, 1], [1, 1, 1], [1, 0, 0], [0, 1, 0]], atol=1e-6)
    np.testing.assert_array_equal(mesh.uvs.numpy(), [[0, 0], [1, 0], [1, 1], [0, 1]])


def test_load_usd_prims_of_different_sizes_keep_their_own_faces(tmp_path):
    """A triangle prim (3 points) then a quad prim (4 points): the quad's fan (0, 1, 2), (0, 2, 3) lands on vertices
    3..6, written out by hand."""
    quad = [(x + 5, y, z) for x, y, z in _QUAD]
    layer = _mesh_prim("Triangle", [3], [0, 1, 2], _TRIANGLE) + _mesh_prim("Quad", [4], [0, 1, 2, 3], quad)
    (tmp_path / "m.usda").write_text(_usda(layer))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.faces.tolist() == [[0, 1, 2], [3, 4, 5], [3, 5, 6]]
    np.testing.assert_array_equal(mesh.verts.numpy(), np.float32(_TRIANGLE + quad))


def test_load_usd_uniform_colours_alone_split_the_faces(tmp_path):
    """Per-face (uniform) displayColor and no UVs: a triangle and a quad sharing points become 3 + 4 corners, red
    then blue (linear 1 is sRGB 1)."""
    colours = "    color3f[] primvars:displayColor = [(1, 0, 0), (0, 0, 1)] (\n"
    colours += '        interpolation = "uniform"\n    )\n'
    points = [*_QUAD, (0, 2, 0)]
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [3, 4], [0, 1, 2, 0, 2, 4, 3], points, colours)))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.num_verts == 7 and mesh.faces.tolist() == [[0, 1, 2], [3, 4, 5], [3, 5, 6]]
    np.testing.assert_array_equal(mesh.verts.numpy(), np.float32([points[i] for i in (0, 1, 2, 0, 2, 4, 3)]))
    np.testing.assert_array_equal(mesh.vertex_colors.numpy(), [[1, 0, 0]] * 3 + [[0, 0, 1]] * 4)


def test_load_usd_prefers_st_over_other_uv_sets(tmp_path):
    """A prim with both ``st`` and Maya's ``map1`` texture-coordinate set (listed first): ``st`` is read."""
    extra = ""
    for name, values in (("map1", "[(9, 9), (9, 9), (9, 9)]"), ("st", "[(0, 0), (1, 0), (0, 1)]")):
        extra += f'    texCoord2f[] primvars:{name} = {values} (\n        interpolation = "vertex"\n    )\n'
    (tmp_path / "m.usda").write_text(_usda(_mesh_prim("M", [3], [0, 1, 2], _TRIANGLE, extra)))
    np.testing.assert_array_equal(load_mesh(tmp_path / "m.usda").uvs.numpy(), [[0, 0], [1, 0], [0, 1]])


def _textured_prim(name: str, x: float, texture: str) -> str:
    material = f"/{name}Material"
    extra = (
        '    texCoord2f[] primvars:st = [(0, 0), (1, 0), (0, 1)] (\n        interpolation = "vertex"\n    )\n'
        f"    rel material:binding = <{material}>\n"
    )
    points = [(px + x, py, pz) for px, py, pz in _TRIANGLE]
    header = ' (\n    prepend apiSchemas = ["MaterialBindingAPI"]\n)'
    prim = _mesh_prim(name, [3], [0, 1, 2], points, extra, header)
    return prim + (
        f'def Material "{name}Material"\n{{\n'
        f"    token outputs:surface.connect = <{material}/Surface.outputs:surface>\n"
        '    def Shader "Surface"\n    {\n        uniform token info:id = "UsdPreviewSurface"\n'
        f"        color3f inputs:diffuseColor.connect = <{material}/Texture.outputs:rgb>\n"
        "        token outputs:surface\n    }\n"
        '    def Shader "Texture"\n    {\n        uniform token info:id = "UsdUVTexture"\n'
        f"        asset inputs:file = @{texture}@\n        float3 outputs:rgb\n    }}\n}}\n"
    )


def test_load_usd_texture_with_alpha_reads_as_rgb(tmp_path):
    """An RGBA texture (PIL-written PNG) bound to the one mesh: its RGB channels, alpha dropped."""
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 128
    rgba[0, 0] = (10, 20, 30, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "tex.png")
    (tmp_path / "m.usda").write_text(_usda(_textured_prim("M", 0.0, "./tex.png")))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.texture.shape == (2, 3, 3)
    np.testing.assert_array_equal(mesh.texture.numpy(), rgba[..., :3].astype(np.float32) / 255)


def test_load_usd_several_meshes_keep_uvs_but_no_single_texture(tmp_path):
    """Two prims, only the second textured: one image cannot serve both (the module notes), so no texture."""
    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "red.png")
    st = '    texCoord2f[] primvars:st = [(0, 0), (1, 0), (0, 1)] (\n        interpolation = "vertex"\n    )\n'
    plain = _mesh_prim("Plain", [3], [0, 1, 2], _TRIANGLE, st)
    (tmp_path / "m.usda").write_text(_usda(plain + _textured_prim("Red", 5.0, "./red.png")))
    mesh = load_mesh(tmp_path / "m.usda")
    assert mesh.num_verts == 6 and mesh.uvs is not None
    assert mesh.texture is None


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------
def test_32_bit_integer_image_in_the_8_bit_range_reads_as_8_bit(tmp_path):
    """A TIFF of PIL mode "I" whose brightest pixel is 255 reads v / 255 (255 is white); above 255 it is 16-bit
    (v / 65535); negative values clip to 0."""
    Image.fromarray(np.array([[0, 51, 255]], np.int32)).save(tmp_path / "eight.tif")
    Image.fromarray(np.array([[-5, 256, 65535]], np.int32)).save(tmp_path / "sixteen.tif")
    with Image.open(tmp_path / "eight.tif") as image:
        assert image.mode == "I"
    np.testing.assert_allclose(load_image(tmp_path / "eight.tif")[0, :, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "sixteen.tif")[0, :, 0], [0.0, 256 / 65535, 1.0], rtol=1e-6)


def test_negative_float_image_is_refused(tmp_path):
    Image.fromarray(np.array([[0.5, -0.25]], np.float32), mode="F").save(tmp_path / "neg.tif")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(tmp_path / "neg.tif")


def test_image_side_equal_to_max_side_is_accepted(tmp_path):
    Image.new("RGB", (8, 3), (1, 2, 3)).save(tmp_path / "eight.png")
    assert load_image(tmp_path / "eight.png", max_side=8).shape == (3, 8, 3)
    with pytest.raises(ValueError, match="larger than the maximum side 7"):
        load_image(tmp_path / "eight.png", max_side=7)


def test_truncated_image_is_a_value_error(tmp_path):
    """A PNG cut off in its pixel data: PIL raises OSError on load, reported as a ValueError naming the file."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png"):
        load_image(tmp_path / "cut.png")


def test_save_image_rounds_and_clips(tmp_path):
    """Float -> 8 bits: round to nearest (0.5 -> 128: 127.5 rounded half up; 100.6 / 255 -> 101), clip below 0
    and above 1; read back with PIL."""
    image = np.array([[0.5, 100.6 / 255, -0.5], [1.5, 1.0, 0.0]], np.float32)
    save_image(image, tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), [[128, 101, 0], [255, 255, 0]])


def test_save_image_refuses_nan_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        save_image(np.array([[0.5, np.nan]], np.float32), tmp_path / "nan.png")
    assert os.listdir(tmp_path) == []


def test_save_image_suffix_is_case_insensitive(tmp_path):
    save_image(np.full((2, 3, 3), 0.2, np.float32), tmp_path / "upper.PNG")
    with Image.open(tmp_path / "upper.PNG") as image:
        assert image.format == "PNG" and image.size == (3, 2)


def test_save_image_is_atomic(tmp_path, monkeypatch):
    """The final flush fails: neither the image nor a temporary file is left, and an old image is kept."""
    save_image(np.zeros((2, 2, 3), np.float32), tmp_path / "img.png")
    before = (tmp_path / "img.png").read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.ones((2, 2, 3), np.float32), tmp_path / "img.png")
    with pytest.raises(OSError, match="disk full"):
        save_image(np.ones((2, 2, 3), np.float32), tmp_path / "new.png")
    assert os.listdir(tmp_path) == ["img.png"] and (tmp_path / "img.png").read_bytes() == before


@pytest.mark.parametrize("shape", [(1, 5, 3), (4, 1, 3), (1, 5), (3, 1), (2, 3, 1)])
def test_save_image_keeps_images_one_pixel_wide_or_tall(tmp_path, shape):
    """Only a trailing channel axis of size 1 is dropped: a 1-pixel-tall RGB strip stays RGB and keeps its size."""
    image = np.random.default_rng(0).random(shape)
    with Image.open(save_image(image, tmp_path / "strip.png")) as saved:
        assert saved.size == (shape[1], shape[0])
        assert saved.mode == ("RGB" if len(shape) == 3 and shape[2] == 3 else "L")
        np.testing.assert_array_equal(
            np.asarray(saved), np.round(image * 255).astype(np.uint8).reshape(np.asarray(saved).shape)
        )
