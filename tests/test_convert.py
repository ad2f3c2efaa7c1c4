"""``monorecon convert``: one mesh format to another, vertex colours baked for USDZ, placement, and refusals."""

from __future__ import annotations

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from monorecon.cli import main
from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh, save_mesh
from monorecon.video import turntable_from_mesh
from test_usd_io import _surface, _validation_errors


def _coloured_blob() -> Mesh:
    """An ellipsoid whose vertex colours vary smoothly (a linear field of the position)."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.from_numpy((sphere.vertices * [0.5, 0.8, 0.4]).astype(np.float32))
    colours = (0.5 + verts @ torch.tensor([[0.5, 0.0, -0.3], [0.0, 0.4, 0.2], [-0.4, 0.3, 0.5]])).clamp(0, 1)
    return Mesh(verts, torch.from_numpy(sphere.faces.astype(np.int64)), vertex_colors=colours)


def test_glb_to_usdz_bakes_the_vertex_colours_and_looks_the_same(tmp_path, capsys):
    source = save_mesh(_coloured_blob(), tmp_path / "blob.glb")
    assert main(["convert", str(source), str(tmp_path / "blob.usdz"), "--texture-resolution", "256"]) == 0
    assert "blob.usdz (" in capsys.readouterr().out
    assert _validation_errors(tmp_path / "blob.usdz") == []
    converted = load_mesh(tmp_path / "blob.usdz")
    assert converted.texture is not None and converted.texture.shape == (256, 256, 3)
    # Rendered by the core renderer from four sides, the textured USDZ shows the GLB's vertex colours.
    original = load_mesh(source)
    for before, after in zip(
        turntable_from_mesh(original, 4, size=96, progress=False),
        turntable_from_mesh(converted, 4, size=96, progress=False),
        strict=True,
    ):
        difference = np.abs(before.astype(float) - after.astype(float))
        assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 6, (difference.mean(), difference.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.glb", "blob.usdz"]


def test_usdz_to_glb_keeps_the_texture_and_places_the_mesh(tmp_path):
    textured = tmp_path / "blob.usdz"
    assert main(["convert", str(save_mesh(_coloured_blob(), tmp_path / "a.ply")), str(textured), "--quiet"]) == 0
    output = tmp_path / "placed.glb"
    assert main(["convert", str(textured), str(output), "--object-height", "0.3", "--origin", "bottom", "--quiet"]) == 0
    placed, source = load_mesh(output), load_mesh(textured)
    torch.testing.assert_close(placed.texture, source.texture, atol=1 / 255 + 1e-6, rtol=0)
    low, high = placed.bounds
    assert abs(float(high[1] - low[1]) - 0.3) < 1e-6 and abs(float(low[1])) < 1e-6  # 30 cm tall, standing on y = 0
    assert abs(float(low[0] + high[0])) < 1e-6 and abs(float(low[2] + high[2])) < 1e-6  # centred on the y axis


def test_to_stl_for_printing_in_millimetres_standing_on_the_bed(tmp_path, capsys):
    """A textured USDZ to STL: geometry only, 80 units (mm for a slicer) tall along +Z, its bottom at z = 0."""
    textured = tmp_path / "blob.usdz"
    assert main(["convert", str(save_mesh(_coloured_blob(), tmp_path / "a.glb")), str(textured), "--quiet"]) == 0
    printed = tmp_path / "blob.stl"
    assert main(["convert", str(textured), str(printed), "--object-height", "80", "--origin", "bottom"]) == 0
    assert "faces, geometry only)" in capsys.readouterr().out  # the texture read is not written
    solid = trimesh.load(printed)  # trimesh's reader, in the file's own Z-up frame
    assert solid.is_watertight and solid.volume > 0
    np.testing.assert_allclose(solid.bounds[:, 2], [0.0, 80.0], atol=1e-4)
    assert main(["convert", str(textured), str(tmp_path / "b.stl"), "--bake-texture"]) == 2
    assert "STL files carry no texture" in capsys.readouterr().err


def test_textured_mesh_to_ply_is_refused_and_nothing_written(tmp_path, capsys):
    textured = tmp_path / "blob.usdz"
    assert main(["convert", str(save_mesh(_coloured_blob(), tmp_path / "a.glb")), str(textured), "--quiet"]) == 0
    assert main(["convert", str(textured), str(tmp_path / "b.ply")]) == 2
    assert "PLY files carry no texture" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.glb", "blob.usdz"]
    # Without colours there is nothing to bake: a plain mesh converts as it is.
    plain = save_mesh(Mesh(_coloured_blob().verts, _coloured_blob().faces), tmp_path / "plain.ply")
    assert main(["convert", str(plain), str(tmp_path / "plain.usdz"), "--quiet"]) == 0
    assert load_mesh(tmp_path / "plain.usdz").texture is None


def test_unlit_for_obj_ply_or_stl_is_refused_and_nothing_written(tmp_path, capsys):
    source = save_mesh(_coloured_blob(), tmp_path / "blob.glb")
    for suffix in ("obj", "ply", "stl"):
        assert main(["convert", str(source), str(tmp_path / f"out.{suffix}"), "--unlit"]) == 2
        assert f"{suffix.upper()} files have no unlit material" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["blob.glb"]


@pytest.mark.parametrize("unlit", [False, True])
def test_unlit_flag_reaches_the_written_material(tmp_path, unlit):
    """--unlit: the GLB's material is KHR_materials_unlit and the USDZ's texture drives emissiveColor (diffuse black);
    without it both are lit (no extension; the texture drives diffuseColor)."""
    from pxr import Usd, UsdShade

    source = save_mesh(_coloured_blob(), tmp_path / "blob.ply")
    flag = ["--unlit"] if unlit else []
    for suffix in ("glb", "usdz"):
        argv = ["convert", str(source), str(tmp_path / f"out.{suffix}"), "--texture-resolution", "64", "--quiet"]
        assert main([*argv, *flag]) == 0
    (material,) = pygltflib.GLTF2().load(str(tmp_path / "out.glb")).materials
    assert (material.extensions or None) == ({"KHR_materials_unlit": {}} if unlit else None)
    stage = Usd.Stage.Open(str(tmp_path / "out.usdz"))  # kept: its prims die with it
    surface = _surface(stage)
    shown, other = ("emissiveColor", "diffuseColor") if unlit else ("diffuseColor", "emissiveColor")
    texture = UsdShade.Shader(surface.GetInput(shown).GetConnectedSources()[0][0].source.GetPrim())
    assert texture.GetIdAttr().Get() == "UsdUVTexture"
    assert (tuple(surface.GetInput(other).Get()) == (0.0, 0.0, 0.0)) if unlit else not surface.GetInput(other)


@pytest.mark.parametrize("target, flags", [("plain.glb", ["--bake-texture"]), ("plain.usdz", ["--object-height", "1"])])
def test_a_mesh_without_colours_is_written_plain_and_the_missing_bake_is_said(target, flags, tmp_path, capsys):
    blob = _coloured_blob()
    source = save_mesh(Mesh(blob.verts, blob.faces), tmp_path / "plain.ply")
    assert main(["convert", str(source), str(tmp_path / target), *flags]) == 0
    out, err = capsys.readouterr()
    warning = f"{source} has no colours to bake: {tmp_path / target} is written without a texture"
    assert err == f"monorecon: warning: {warning}\n"
    assert out.strip().endswith(f"({blob.num_verts:,} vertices, {blob.num_faces:,} faces, no colours)")
    written = load_mesh(tmp_path / target)
    assert written.texture is None and written.vertex_colors is None and written.num_faces == blob.num_faces


def test_target_faces_decimates_before_the_bake_and_keeps_the_surface_closed(tmp_path, capsys):
    source = save_mesh(_coloured_blob(), tmp_path / "blob.glb")  # 1280 faces
    argv = ["convert", str(source), str(tmp_path / "small.usdz"), "--texture-resolution", "64", "--target-faces", "300"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decimating 1,280 faces to about 300" in out and "baking the vertex colours of 3" in out
    usdz = load_mesh(tmp_path / "small.usdz")
    assert usdz.texture is not None and abs(usdz.num_faces - 300) <= 8 and usdz.is_closed
    assert main(["convert", str(source), str(tmp_path / "small.glb"), "--target-faces", "300", "--quiet"]) == 0
    glb = load_mesh(tmp_path / "small.glb")
    assert glb.vertex_colors is not None and abs(glb.num_faces - 300) <= 8 and glb.is_closed
    # A target above the face count keeps every face.
    assert main(["convert", str(source), str(tmp_path / "same.glb"), "--target-faces", "5000", "--quiet"]) == 0
    assert load_mesh(tmp_path / "same.glb").num_faces == 1280


def test_target_faces_is_checked_and_a_textured_mesh_refused(tmp_path, capsys):
    source = save_mesh(_coloured_blob(), tmp_path / "blob.glb")
    for value in ("3", "-1"):
        assert main(["convert", str(source), str(tmp_path / "out.glb"), "--target-faces", value]) == 2
        assert f"--target-faces must lie in [4, {1 << 31}], got {value}" in capsys.readouterr().err
    textured = tmp_path / "blob.usdz"
    assert main(["convert", str(source), str(textured), "--texture-resolution", "64", "--quiet"]) == 0
    assert main(["convert", str(textured), str(tmp_path / "out.glb"), "--target-faces", "300"]) == 2
    assert "has UVs (a texture), which decimation cannot keep" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.glb", "blob.usdz"]
