"""USDZ export and USD import (``monorecon.io.usd_io``), checked with OpenUSD's own reader and validators."""

from __future__ import annotations

import os
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
from pxr import Usd, UsdGeom, UsdShade, UsdUtils, UsdValidation

from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh, save_mesh
from test_mesh_io import _colored_sphere, _textured_sphere

COLOR_TOLERANCE = 1 / 255 + 1e-6


def _plain_sphere() -> Mesh:
    mesh = _colored_sphere()
    return Mesh(mesh.verts, mesh.faces)


def _validation_errors(path) -> list[str]:
    """Every error of every validator OpenUSD registers (stage metadata, usdz packaging, shaders, bindings...)."""
    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    return [f"{error.GetName()}: {error.GetMessage()}" for error in context.Validate(Usd.Stage.Open(str(path)))]


def _surface(stage: Usd.Stage) -> UsdShade.Shader:
    material = UsdShade.MaterialBindingAPI(stage.GetPrimAtPath("/Model/Mesh")).ComputeBoundMaterial()[0]
    return material.ComputeSurfaceSource()[0]


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["colours", "texture", "plain"])
def test_usdz_passes_openusd_validators_and_keeps_the_geometry(tmp_path, kind):
    mesh = {"colours": _colored_sphere, "texture": _textured_sphere, "plain": _plain_sphere}[kind]()
    path = save_mesh(mesh, tmp_path / "mesh.usdz")
    assert os.listdir(tmp_path) == ["mesh.usdz"]  # no temporary files left
    assert _validation_errors(path) == []

    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetDefaultPrim().GetPath() == "/Model"
    geometry = UsdGeom.Mesh(stage.GetPrimAtPath("/Model/Mesh"))
    np.testing.assert_array_equal(np.asarray(geometry.GetPointsAttr().Get()), mesh.verts.numpy())
    assert set(np.asarray(geometry.GetFaceVertexCountsAttr().Get()).tolist()) == {3}
    np.testing.assert_array_equal(np.asarray(geometry.GetFaceVertexIndicesAttr().Get()), mesh.faces.numpy().ravel())
    assert geometry.GetSubdivisionSchemeAttr().Get() == "none"  # else viewers smooth the triangles as a cage
    assert geometry.GetOrientationAttr().Get() == UsdGeom.Tokens.rightHanded
    extent = np.asarray(geometry.GetExtentAttr().Get())
    np.testing.assert_allclose(extent, mesh.bounds.numpy())
    normals = np.asarray(geometry.GetNormalsAttr().Get())
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    # Counter-clockwise from outside (USD's rightHanded): each face's winding normal points away from the centre.
    corners = mesh.verts.numpy()[mesh.faces.numpy()]
    winding = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centre = np.array([0.3, 0.1, -0.2])
    assert (np.einsum("fi,fi->f", winding, corners.mean(axis=1) - centre) > 0).all()
    assert (np.einsum("vi,vi->v", normals, mesh.verts.numpy() - centre) > 0).all()  # vertex normals outward too
    assert _surface(stage).GetIdAttr().Get() == "UsdPreviewSurface"
    if kind == "plain":  # no colours: a light grey surface, not USD's black or an unset input
        assert tuple(_surface(stage).GetInput("diffuseColor").Get()) == pytest.approx((0.8, 0.8, 0.8))


def test_usdz_vertex_colours_are_linear_display_colours(tmp_path):
    """USD colours are linear: the sRGB values are converted (IEC 61966-2-1 reference points) and read back."""
    mesh = _colored_sphere()
    colours = mesh.vertex_colors.clone()
    colours[:4] = torch.tensor([[0.0, 0.5, 1.0], [0.04045, 0.2, 0.8], [0.25, 0.75, 0.01], [1.0, 1.0, 1.0]])
    mesh = Mesh(mesh.verts, mesh.faces, vertex_colors=colours)
    path = save_mesh(mesh, tmp_path / "mesh.usdz")
    stage = Usd.Stage.Open(str(path))  # kept: prims are only valid while their stage lives
    primvar = UsdGeom.PrimvarsAPI(stage.GetPrimAtPath("/Model/Mesh")).GetPrimvar("displayColor")
    assert primvar.GetInterpolation() == UsdGeom.Tokens.vertex
    linear = np.asarray(primvar.Get())
    # sRGB 0.5 -> 0.21404, 0.2 -> 0.033105, 0.8 -> 0.603827, 0.25 -> 0.050876, 0.75 -> 0.522522, 0.04045 -> 0.0031308
    expected = [[0.0, 0.214041, 1.0], [0.0031308, 0.033105, 0.603827], [0.050876, 0.522522, 0.01 / 12.92]]
    np.testing.assert_allclose(linear[:3], expected, atol=2e-6)
    back = load_mesh(path)
    assert float((back.vertex_colors - colours).abs().max()) < 1e-5
    assert torch.equal(back.verts, mesh.verts) and torch.equal(back.faces, mesh.faces)


@pytest.mark.parametrize("unlit", [False, True])
def test_usdz_texture_round_trip_and_material(tmp_path, unlit):
    mesh = _textured_sphere()
    path = save_mesh(mesh, tmp_path / "mesh.usdz", unlit=unlit)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert names[0] == "model.usdc" and any(name.endswith("texture.png") for name in names)

    stage = Usd.Stage.Open(str(path))
    surface = _surface(stage)
    lit, dark = ("emissiveColor", "diffuseColor") if unlit else ("diffuseColor", "emissiveColor")
    texture = UsdShade.Shader(surface.GetInput(lit).GetConnectedSources()[0][0].source.GetPrim())
    assert texture.GetIdAttr().Get() == "UsdUVTexture"
    assert texture.GetInput("sourceColorSpace").Get() == "sRGB"
    # Matte, not metal (the module notes): clamped at the texture's edges, so an atlas border does not wrap around.
    assert (surface.GetInput("roughness").Get(), surface.GetInput("metallic").Get()) == (1.0, 0.0)
    assert (texture.GetInput("wrapS").Get(), texture.GetInput("wrapT").Get()) == ("clamp", "clamp")
    if unlit:  # the colour shows as it is: no diffuse response to lights
        assert tuple(surface.GetInput(dark).Get()) == (0.0, 0.0, 0.0)
    else:
        assert not surface.GetInput(dark)

    back = load_mesh(path)
    assert torch.equal(back.verts, mesh.verts) and torch.equal(back.faces, mesh.faces)
    assert torch.equal(back.uvs, mesh.uvs)  # st: v up from the bottom row, as Mesh.uvs
    assert back.texture.shape == mesh.texture.shape
    assert float((back.texture - mesh.texture).abs().max()) <= COLOR_TOLERANCE


def test_usdz_package_is_stored_and_aligned(tmp_path):
    """The zip rules of the USDZ spec, read from the raw local headers: no compression, data on 64-byte boundaries."""
    path = save_mesh(_textured_sphere(), tmp_path / "mesh.usdz")
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert len(infos) == 2
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0


def test_the_validators_can_fail(tmp_path):
    """Negative control for the validator check above: a package with misaligned data, without stage metadata."""
    layer = tmp_path / "model.usda"
    layer.write_text('#usda 1.0\n\ndef Mesh "Mesh"\n{\n    point3f[] points = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]\n}\n')
    with zipfile.ZipFile(tmp_path / "bad.usdz", "w", zipfile.ZIP_STORED) as archive:
        archive.write(layer, "model.usda")  # data at byte 30 + 10: not on a 64-byte boundary
    errors = _validation_errors(tmp_path / "bad.usdz")
    assert any("upAxis" in error or "metersPerUnit" in error for error in errors), errors
    assert any("align" in error.lower() for error in errors), errors


def test_failed_usdz_write_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(UsdUtils, "CreateNewARKitUsdzPackage", lambda *args: False)
    with pytest.raises(ValueError, match="could not write the USDZ package"):
        save_mesh(_colored_sphere(), tmp_path / "mesh.usdz")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------------------------
# Reading USD written by others
# --------------------------------------------------------------------------------------------------------------------
_Z_UP_CENTIMETRES = """#usda 1.0
(
    upAxis = "Z"
    metersPerUnit = 0.01
)

def Xform "Root"
{
    double3 xformOp:translate = (100, 0, 0)
    uniform token[] xformOpOrder = ["xformOp:translate"]

    def Mesh "Polygons"
    {
        int[] faceVertexCounts = [3, 4, 5]
        int[] faceVertexIndices = [0, 1, 2,  0, 2, 3, 4,  0, 4, 5, 6, 7]
        point3f[] points = [(0, 0, 0), (10, 0, 0), (10, 10, 0), (0, 10, 0), (0, 10, 10), (0, 0, 10), (5, 0, 20),
                            (0, 0, 30)]
        texCoord2f[] primvars:st = [(0, 0), (1, 0), (1, 1), (0, 0), (1, 0), (1, 1), (0, 1), (0, 0), (0.5, 0),
                                    (1, 0), (1, 1), (0, 1)] (
            interpolation = "faceVarying"
        )
        color3f[] primvars:displayColor = [(1, 0, 0), (0, 0.21404114, 0), (0, 0, 1)] (
            interpolation = "uniform"
        )
    }

    def Mesh "Hidden"
    {
        token visibility = "invisible"
        int[] faceVertexCounts = [3]
        int[] faceVertexIndices = [0, 1, 2]
        point3f[] points = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
    }
}
"""


def test_load_usd_converts_frame_units_and_polygons(tmp_path):
    path = tmp_path / "scene.usda"
    path.write_text(_Z_UP_CENTIMETRES)
    mesh = load_mesh(path)
    # 1 + 2 + 3 triangles, one vertex per face corner (the primvars vary per corner and per face).
    assert mesh.num_faces == 6 and mesh.num_verts == 12
    points = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0], [0, 10, 10], [0, 0, 10], [5, 0, 20], [0, 0, 30]])
    indices = [0, 1, 2, 0, 2, 3, 4, 0, 4, 5, 6, 7]
    # Translate by 100 cm along X, then Z up -> Y up ((x, y, z) -> (x, z, -y)) and centimetres -> metres.
    stage_points = points[indices] + [100, 0, 0]
    expected = np.stack([stage_points[:, 0], stage_points[:, 2], -stage_points[:, 1]], axis=1) * 0.01
    np.testing.assert_allclose(mesh.verts.numpy(), expected, atol=1e-6)
    # Fans: the quad (corners 3..6) gives (3, 4, 5), (3, 5, 6); the pentagon (7..11) three triangles from corner 7.
    assert mesh.faces.tolist() == [[0, 1, 2], [3, 4, 5], [3, 5, 6], [7, 8, 9], [7, 9, 10], [7, 10, 11]]
    assert mesh.uvs[8].tolist() == [0.5, 0.0]
    # Uniform colours per face, linear -> sRGB (0.21404114 is sRGB 0.5).
    expected_colours = np.repeat([[1, 0, 0], [0, 0.5, 0], [0, 0, 1]], [3, 4, 5], axis=0)
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), expected_colours, atol=1e-6)
    assert mesh.texture is None


def test_load_usd_left_handed_faces_come_out_counter_clockwise(tmp_path):
    path = tmp_path / "left.usda"
    path.write_text(
        '#usda 1.0\n(\n    upAxis = "Y"\n)\n\ndef Mesh "Triangle"\n{\n    uniform token orientation = "leftHanded"\n'
        "    int[] faceVertexCounts = [3]\n    int[] faceVertexIndices = [0, 1, 2]\n"
        "    point3f[] points = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]\n}\n"
    )
    mesh = load_mesh(path)
    assert mesh.faces.tolist() == [[2, 1, 0]]
    assert float(mesh.face_normals[0, 2]) == -1.0  # clockwise in x-y seen from +Z: the front faces -Z


@pytest.mark.parametrize(
    "content, message",
    [
        (b"PK\x03\x04 not really a zip", "could not read USD file"),
        (b"", "mesh file is empty: .*mesh.usda"),
        (b'#usda 1.0\n\ndef Xform "Empty"\n{\n}\n', "no triangles found"),
        (
            b'#usda 1.0\n\ndef Mesh "Bad"\n{\n    int[] faceVertexCounts = [3]\n'
            b"    int[] faceVertexIndices = [0, 1, 7]\n"
            b"    point3f[] points = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]\n}\n",
            "inconsistent face indices",
        ),
    ],
    ids=["corrupt", "empty", "no-mesh", "bad-indices"],
)
def test_load_usd_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / ("mesh.usdz" if content.startswith(b"PK") else "mesh.usda")
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_mesh(path)
    assert "\n" not in str(error.value)


def test_load_usd_damaged_texture_is_a_one_line_error(tmp_path):
    path = save_mesh(_textured_sphere(), tmp_path / "mesh.usdz")
    data = bytearray(path.read_bytes())
    start = data.index(b"\x89PNG")
    data[start + 16 : start + 64] = bytes(48)  # the image header and the start of its data zeroed, sizes kept
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="could not read the texture") as error:
        load_mesh(path)
    assert "\n" not in str(error.value)


_INSTANCED = """#usda 1.0
(
    upAxis = "Y"
    metersPerUnit = 1
)

def Xform "World"
{
    def Xform "Left" (
        instanceable = true
        references = </Prototype>
    )
    {
        double3 xformOp:translate = (-2, 0, 0)
        uniform token[] xformOpOrder = ["xformOp:translate"]
    }

    def Xform "Right" (
        instanceable = true
        references = </Prototype>
    )
    {
        double3 xformOp:translate = (2, 0, 0)
        uniform token[] xformOpOrder = ["xformOp:translate"]
    }

    def Mesh "Guide"
    {
        uniform token purpose = "guide"
        int[] faceVertexCounts = [3]
        int[] faceVertexIndices = [0, 1, 2]
        point3f[] points = [(0, 0, 0), (9, 0, 0), (0, 9, 0)]
    }
}

class Xform "Prototype"
{
    def Mesh "Triangle"
    {
        int[] faceVertexCounts = [3]
        int[] faceVertexIndices = [0, 1, 2]
        point3f[] points = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
        texCoord2f[] primvars:UVMap = [(0, 0), (1, 0), (0, 1)] (
            interpolation = "vertex"
        )
    }
}
"""


def test_load_usd_reads_instances_skips_guides_and_finds_uvs_by_role(tmp_path):
    path = tmp_path / "instanced.usda"
    path.write_text(_INSTANCED)
    mesh = load_mesh(path)
    triangle = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    # Both instances of the prototype, each at its own place; not the class itself, not the guide.
    shift = np.array([2.0, 0.0, 0.0], dtype=np.float32)
    expected = np.concatenate([triangle - shift, triangle + shift])
    np.testing.assert_array_equal(mesh.verts.numpy(), expected)
    assert mesh.faces.tolist() == [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_array_equal(mesh.uvs.numpy(), np.concatenate([triangle[:, :2]] * 2))  # "UVMap", not "st"


def test_a_usdz_of_vertex_colours_is_warned_of(tmp_path):
    """Quick Look and RealityKit show no vertex colours: a script saving one gets told (the commands bake first)."""
    with pytest.warns(UserWarning, match=r"mesh\.usdz: Quick Look and RealityKit show no vertex colours"):
        save_mesh(_colored_sphere(), tmp_path / "mesh.usdz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_mesh(_textured_sphere(), tmp_path / "textured.usdz")
