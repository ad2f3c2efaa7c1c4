"""``load_mesh`` keeps flat material colours (glTF ``baseColorFactor``, OBJ ``Kd``) and the colours of mixed scenes,
warns about what it cannot keep (missing OBJ textures, colours of partly coloured scenes) and refuses empty files.

The input files are written here by hand; the expected colours are the numbers written into them."""

from __future__ import annotations

import warnings

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

from analytic import srgb_to_linear
from monorecon.cli import main
from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh, save_mesh
from monorecon.io.mesh_io import check_unlit

STEEL = (0.2, 0.4, 0.6)  # exact in 8 bits: 51, 102, 153
RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
TOLERANCE = 0.5 / 255 + 1e-6


def _one_mesh_gltf(
    primitive: pygltflib.Primitive, material: pygltflib.Material, accessors: list, views: list, buffer, **extra
) -> pygltflib.GLTF2:
    """A glTF of one node with one mesh of one primitive and one material."""
    return pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0"),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0)],
        meshes=[pygltflib.Mesh(primitives=[primitive])],
        materials=[material],
        accessors=accessors,
        bufferViews=views,
        buffers=[buffer],
        **extra,
    )


def _factor_glb(path, factor) -> None:
    """A GLB written with pygltflib: one triangle whose material has only ``baseColorFactor`` (no texture)."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    indices = np.array([0, 1, 2], dtype=np.uint32)
    blob = positions.tobytes() + indices.tobytes()
    gltf = _one_mesh_gltf(
        pygltflib.Primitive(attributes=pygltflib.Attributes(POSITION=0), indices=1, material=0),
        pygltflib.Material(pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(baseColorFactor=[*factor, 1.0])),
        [
            pygltflib.Accessor(
                bufferView=0, componentType=5126, count=3, type="VEC3", min=[0.0, 0.0, 0.0], max=[1.0, 1.0, 0.0]
            ),
            pygltflib.Accessor(bufferView=1, componentType=5125, count=3, type="SCALAR"),
        ],
        [
            pygltflib.BufferView(buffer=0, byteOffset=0, byteLength=36, target=34962),
            pygltflib.BufferView(buffer=0, byteOffset=36, byteLength=12, target=34963),
        ],
        pygltflib.Buffer(byteLength=len(blob)),
    )
    gltf.set_binary_blob(blob)
    gltf.save_binary(str(path))


def _box(offset: float) -> trimesh.Trimesh:
    box = trimesh.creation.box()
    box.apply_translation([offset, 0.0, 0.0])
    return box


def _textured_box(offset: float, color) -> trimesh.Trimesh:
    """A box at x = offset whose texture is a solid image of ``color`` (so every UV samples it)."""
    box = _box(offset)
    image = Image.new("RGB", (8, 8), tuple(round(c * 255) for c in color))
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    box.visual = trimesh.visual.TextureVisuals(
        uv=uv, material=trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    )
    return box


def _flat_box(offset: float, color) -> trimesh.Trimesh:
    box = _box(offset)
    factor = [round(c * 255) for c in color] + [255]
    box.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=factor))
    return box


def _vertex_colored_box(offset: float, color) -> trimesh.Trimesh:
    box = _box(offset)
    rgba = np.tile([round(c * 255) for c in color] + [255], (len(box.vertices), 1)).astype(np.uint8)
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=rgba)
    return box


def _nearest_texels(mesh) -> torch.Tensor:
    """(V, 3) the texel under each vertex's UV (v up from the bottom row)."""
    height, width = mesh.texture.shape[:2]
    cols = (mesh.uvs[:, 0] * width).long().clamp(0, width - 1)
    rows = ((1 - mesh.uvs[:, 1]) * height).long().clamp(0, height - 1)
    return mesh.texture[rows, cols]


def _assert_colors(colors: torch.Tensor, expected) -> None:
    assert torch.allclose(colors, torch.tensor(expected, dtype=colors.dtype).expand_as(colors), atol=TOLERANCE)


def _obj(folder, name: str, body: str, mtl: str | None = None):
    path = folder / f"{name}.obj"
    head = f"mtllib {name}.mtl\n" if mtl is not None else ""
    path.write_text(head + body)
    if mtl is not None:
        (folder / f"{name}.mtl").write_text(mtl)
    return path


_TRIANGLES = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 5 0 0\nv 6 0 0\nv 5 1 0\n"


# --------------------------------------------------------------------------------------------------------------------
# Flat material colours
# --------------------------------------------------------------------------------------------------------------------
def test_glb_base_color_factor_without_texture_becomes_vertex_colours(tmp_path):
    _factor_glb(tmp_path / "steel.glb", srgb_to_linear(STEEL).tolist())  # glTF's factor is linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(tmp_path / "steel.glb")
    assert mesh.texture is None and mesh.num_verts == 3
    _assert_colors(mesh.vertex_colors, STEEL)


def test_obj_kd_without_texture_becomes_vertex_colours(tmp_path):
    path = _obj(
        tmp_path, "flat", "usemtl steel\n" + _TRIANGLES + "f 1 2 3\nf 4 5 6\n", "newmtl steel\nKd 0.2 0.4 0.6\n"
    )
    mesh = load_mesh(path)
    assert mesh.texture is None
    _assert_colors(mesh.vertex_colors, STEEL)


def test_obj_with_two_kd_materials_keeps_each_parts_colour(tmp_path):
    body = "usemtl red\n" + _TRIANGLES + "f 1 2 3\nusemtl green\nf 4 5 6\n"
    path = _obj(tmp_path, "two", body, "newmtl red\nKd 1 0 0\nnewmtl green\nKd 0 1 0\n")
    mesh = load_mesh(path)
    left = mesh.verts[:, 0] < 2.5
    assert mesh.num_faces == 2 and int(left.sum()) == 3
    _assert_colors(mesh.vertex_colors[left], RED)
    _assert_colors(mesh.vertex_colors[~left], GREEN)


def test_an_obj_material_without_kd_is_white_beside_a_coloured_one(tmp_path):
    """A material with no Kd is shown white (the format's default) when another part has a colour: the red part
    keeps its colour, without a warning."""
    body = "usemtl red\n" + _TRIANGLES + "f 1 2 3\nusemtl plain\nf 4 5 6\n"
    path = _obj(tmp_path, "partly", body, "newmtl red\nKd 1 0 0\nnewmtl plain\nNs 10\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(path)
    left = mesh.verts[:, 0] < 2.5
    assert mesh.num_faces == 2 and int(left.sum()) == 3
    _assert_colors(mesh.vertex_colors[left], RED)
    _assert_colors(mesh.vertex_colors[~left], [1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------------------------------------
# Mixed scenes
# --------------------------------------------------------------------------------------------------------------------
def test_textured_and_flat_parts_share_one_atlas_with_both_colours(tmp_path):
    trimesh.Scene([_textured_box(3.0, BLUE), _flat_box(0.0, RED)]).export(tmp_path / "mixed.glb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(tmp_path / "mixed.glb")
    assert mesh.texture is not None and mesh.num_faces == 24
    textured = mesh.verts[:, 0] > 1.5
    colors = _nearest_texels(mesh)
    _assert_colors(colors[textured], BLUE)
    _assert_colors(colors[~textured], RED)  # it was trimesh's grey (0.39)


def test_obj_textured_and_kd_materials_share_one_atlas(tmp_path):
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "blue.png")
    body = _TRIANGLES + "vt 0 0\nvt 1 0\nvt 0 1\nusemtl tex\nf 1/1 2/2 3/3\nusemtl red\nf 4 5 6\n"
    path = _obj(tmp_path, "mix", body, "newmtl tex\nKd 1 1 1\nmap_Kd blue.png\nnewmtl red\nKd 1 0 0\n")
    mesh = load_mesh(path)
    assert mesh.texture is not None and mesh.num_faces == 2
    left = mesh.verts[:, 0] < 2.5
    colors = _nearest_texels(mesh)
    _assert_colors(colors[left], BLUE)
    _assert_colors(colors[~left], RED)


def test_textured_and_vertex_coloured_parts_become_vertex_colours_with_a_warning(tmp_path):
    trimesh.Scene([_textured_box(3.0, BLUE), _vertex_colored_box(0.0, GREEN)]).export(tmp_path / "mixed.glb")
    with pytest.warns(UserWarning, match=r"mixed\.glb: .*sampled.*texture detail dropped"):
        mesh = load_mesh(tmp_path / "mixed.glb")
    assert mesh.texture is None and mesh.uvs is None and mesh.num_faces == 24
    textured = mesh.verts[:, 0] > 1.5
    _assert_colors(mesh.vertex_colors[textured], BLUE)
    _assert_colors(mesh.vertex_colors[~textured], GREEN)


def test_flat_and_vertex_coloured_parts_keep_both_as_vertex_colours(tmp_path):
    trimesh.Scene([_flat_box(3.0, RED), _vertex_colored_box(0.0, GREEN)]).export(tmp_path / "mixed.glb")
    mesh = load_mesh(tmp_path / "mixed.glb")
    assert mesh.texture is None
    right = mesh.verts[:, 0] > 1.5
    _assert_colors(mesh.vertex_colors[right], RED)
    _assert_colors(mesh.vertex_colors[~right], GREEN)


def _random_textured_box(offset: float, size: tuple[int, int], seed: int) -> trimesh.Trimesh:
    """A box at x = offset with a random (height, width) texture and random UVs, two of them a float32 step outside
    [0, 1] (an exporter's rounding of the texture's edge)."""
    rng = np.random.default_rng(seed)
    box = _box(offset)
    image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    uv = rng.uniform(0.0, 1.0, (len(box.vertices), 2))
    uv[0, 0] = np.nextafter(np.float32(1), np.float32(2))
    uv[1, 1] = -np.float32(1e-7)
    box.visual = trimesh.visual.TextureVisuals(
        uv=uv, material=trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    )
    return box


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N, 3) colours of an (H, W, 3) uint8 image at (N, 2) UVs in [0, 1] (v up), bilinear between texel centres
    with edges clamped: written out here as the reference for the merged texture."""
    height, width = image.shape[:2]
    x = np.clip(uv[:, 0] * width - 0.5, 0, width - 1)
    y = np.clip((1 - uv[:, 1]) * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64) / 255
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("sizes", [((8, 8), (16, 16)), ((16, 16), (8, 8)), ((16, 16), (32, 32)), ((5, 40), (33, 7))])
def test_merged_textures_show_each_part_exactly_as_its_own_image(tmp_path, sizes):
    """Two randomly textured parts, a red and an uncoloured one: at every vertex the merged texture gives the colour
    the part's own image gives at its own UV (clamped onto its edges). trimesh's packing, used before, lost the 8 x 8
    image packed with a 16 x 16 one (its UVs pointed outside the atlas)."""
    boxes = [_random_textured_box(3.0 * i, size, seed=i) for i, size in enumerate(sizes)]
    plain = _box(-3.0)
    scene = trimesh.Scene([*boxes, _flat_box(-6.0, RED), plain])
    scene.export(tmp_path / "parts.glb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(tmp_path / "parts.glb")
    assert mesh.num_faces == 4 * 12
    texture = np.round(mesh.texture.numpy() * 255).astype(np.uint8)
    merged = _bilinear(texture, mesh.uvs.numpy())
    for box in boxes:
        own = _bilinear(np.asarray(box.visual.material.baseColorTexture), np.clip(box.visual.uv, 0.0, 1.0))
        at = [int(torch.argmin((mesh.verts - torch.tensor(v, dtype=torch.float32)).norm(dim=1))) for v in box.vertices]
        np.testing.assert_allclose(merged[at], own, atol=1.5 / 255)
    centre_x = mesh.verts[:, 0]
    _assert_colors(torch.from_numpy(merged[(centre_x < -4.5).numpy()]).float(), RED)
    _assert_colors(torch.from_numpy(merged[((centre_x > -4.5) & (centre_x < -1.5)).numpy()]).float(), [1.0, 1.0, 1.0])


def test_a_tiling_texture_keeps_its_repeats_in_the_merged_texture(tmp_path):
    """A quad whose UVs run 0..4 over a 2 x 2 checker (8 cells across), beside a red box: the merged texture holds
    the repeats: the centre of each cell of the first row has the checker's colour there (UVs wrapped per vertex,
    as before, put the whole quad on one texel)."""
    checker = np.zeros((2, 2, 3), np.uint8)
    checker[0, 0] = checker[1, 1] = (255, 255, 255)
    checker[0, 1] = checker[1, 0] = (0, 0, 255)
    quad = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    quad.visual = trimesh.visual.TextureVisuals(
        uv=np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float),
        material=trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(checker)),
    )
    trimesh.Scene([quad, _flat_box(3.0, RED)]).export(tmp_path / "tiles.glb")
    mesh = load_mesh(tmp_path / "tiles.glb")
    corner = {tuple(v): uv.numpy() for v, uv in zip(mesh.verts.tolist(), mesh.uvs, strict=True)}
    origin, along_u, along_v = corner[(0.0, 0.0, 0.0)], corner[(1.0, 0.0, 0.0)], corner[(0.0, 1.0, 0.0)]
    texture = np.round(mesh.texture.numpy() * 255).astype(np.uint8)
    for cell in range(8):  # the first row of cells, u = 0..4: alternately the checker's bottom-left and -right
        u, v = (cell + 0.5) / 2, 0.25
        uv = origin + u / 4 * (along_u - origin) + v / 4 * (along_v - origin)
        np.testing.assert_allclose(_bilinear(texture, uv[None])[0], checker[1, cell % 2] / 255.0, atol=1.5 / 255)


def test_textures_too_large_for_one_atlas_are_scaled_down_together(tmp_path, monkeypatch):
    """Past the atlas size limit every image is scaled by the same factor: the atlas fits and solid images keep
    their colours."""
    monkeypatch.setattr("monorecon.io.mesh_io._MAX_ATLAS_SIDE", 24)
    scene = trimesh.Scene([_textured_box(0.0, BLUE), _textured_box(3.0, GREEN)])
    for geometry, color in zip(scene.geometry.values(), (BLUE, GREEN), strict=True):
        geometry.visual.material.baseColorTexture = Image.new("RGB", (40, 30), tuple(round(c * 255) for c in color))
    scene.export(tmp_path / "big.glb")
    mesh = load_mesh(tmp_path / "big.glb")
    assert max(mesh.texture.shape[:2]) <= 24
    left = mesh.verts[:, 0] < 1.5
    colors = _nearest_texels(mesh)
    _assert_colors(colors[left], BLUE)
    _assert_colors(colors[~left], GREEN)


def test_face_colours_of_a_ply_become_vertex_colours_split_where_colours_meet(tmp_path):
    """A box whose 12 faces alternate red and blue: every face's corners carry its colour, each of the 8 corners is
    split into a red and a blue copy at the same position (16 vertices), and the box stays closed."""
    box = trimesh.creation.box()
    colors = np.tile([[255, 0, 0, 255], [0, 0, 255, 255]], (6, 1)).astype(np.uint8)
    box.visual.face_colors = colors
    box.export(tmp_path / "faces.ply")
    mesh = load_mesh(tmp_path / "faces.ply")
    assert mesh.num_faces == 12 and mesh.num_verts == 16 and mesh.is_closed
    corner_colors = mesh.vertex_colors[mesh.faces]  # (F, 3 corners, 3)
    expected = torch.from_numpy(colors[:, :3] / 255.0).float()[:, None].expand(12, 3, 3)
    torch.testing.assert_close(corner_colors, expected)
    torch.testing.assert_close(
        torch.unique(mesh.verts, dim=0), torch.unique(torch.from_numpy(box.vertices).float(), dim=0)
    )


# --------------------------------------------------------------------------------------------------------------------
# Missing OBJ companions, empty files, the unlit message
# --------------------------------------------------------------------------------------------------------------------
_TEXTURED_BODY = "usemtl tex\n" + _TRIANGLES[:24] + "vt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


def test_obj_with_its_texture_loads_it_without_warning(tmp_path):
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "blue.png")
    path = _obj(tmp_path, "tex", _TEXTURED_BODY, "newmtl tex\nKd 1 1 1\nmap_Kd blue.png\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(path)
    assert mesh.texture is not None
    _assert_colors(mesh.texture.reshape(-1, 3), BLUE)


def test_obj_whose_map_kd_texture_is_missing_warns_naming_it(tmp_path):
    path = _obj(tmp_path, "tex", _TEXTURED_BODY, "newmtl tex\nKd 1 1 1\nmap_Kd gone.png\n")
    with pytest.warns(UserWarning, match=r"tex\.obj: texture gone\.png \(map_Kd of tex\.mtl\) not found") as record:
        mesh = load_mesh(path)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert mesh.texture is None


def test_obj_whose_material_library_is_missing_warns_naming_it(tmp_path):
    path = tmp_path / "lost.obj"
    path.write_text("mtllib lost.mtl\nusemtl red\n" + _TRIANGLES[:24] + "f 1 2 3\n")
    with pytest.warns(UserWarning, match=r"lost\.obj: material library lost\.mtl not found"):
        load_mesh(path)


def test_convert_prints_the_missing_texture_as_one_warning_line(tmp_path, capsys):
    path = _obj(tmp_path, "tex", _TEXTURED_BODY, "newmtl tex\nKd 1 1 1\nmap_Kd gone.png\n")
    assert main(["convert", str(path), str(tmp_path / "out.ply")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "gone.png" in line]
    assert len(lines) == 1 and lines[0].startswith("monorecon: warning: tex.obj: texture gone.png")


@pytest.mark.parametrize("suffix", ["glb", "gltf", "obj", "ply", "stl", "usdz"])
def test_empty_mesh_files_are_refused_in_one_clear_line(tmp_path, suffix):
    path = tmp_path / f"empty.{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^mesh file is empty: .*empty\." + suffix + "$"):
        load_mesh(path)


def test_convert_refuses_an_empty_glb(tmp_path, capsys):
    (tmp_path / "empty.glb").write_bytes(b"")
    assert main(["convert", str(tmp_path / "empty.glb"), str(tmp_path / "out.ply")]) == 2
    err = capsys.readouterr().err
    assert "mesh file is empty" in err and "IndexError" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mesh_format", ["obj", "ply", "stl"])
def test_unlit_refusal_names_no_cli_flag(mesh_format):
    with pytest.raises(ValueError) as info:
        check_unlit(mesh_format, True)
    assert (
        str(info.value)
        == f"{mesh_format.upper()} files have no unlit material: unlit colours apply only to glb and usdz"
    )
    check_unlit("glb", True)
    check_unlit(mesh_format, False)


# --------------------------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["glb", "ply"])
def test_convert_keeps_a_base_color_factor(tmp_path, capsys, suffix):
    _factor_glb(tmp_path / "red.glb", RED)
    out = tmp_path / f"out.{suffix}"
    assert main(["convert", str(tmp_path / "red.glb"), str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    mesh = load_mesh(out)
    _assert_colors(mesh.vertex_colors, RED)  # it was written white (GLB) or without colours


def test_white_factor_alone_is_no_colour_but_kept_beside_other_colours(tmp_path):
    _factor_glb(tmp_path / "white.glb", (1.0, 1.0, 1.0))  # glTF's default, as our own plain GLBs write it
    assert load_mesh(tmp_path / "white.glb").vertex_colors is None
    trimesh.Scene([_flat_box(3.0, (1.0, 1.0, 1.0)), _flat_box(0.0, RED)]).export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    right = mesh.verts[:, 0] > 1.5
    _assert_colors(mesh.vertex_colors[right], (1.0, 1.0, 1.0))
    _assert_colors(mesh.vertex_colors[~right], RED)


@pytest.mark.parametrize(("top", "wrap"), [(1.0, 33071), (1.0 + 1e-6, 33071), (3.0, 10497)])
def test_glb_sampler_repeats_only_for_uvs_past_the_texture(tmp_path, top, wrap):
    """UVs within [0, 1] (up to rounding) get CLAMP_TO_EDGE (a baked atlas must not bleed across its edges); UVs that
    step into other repeats get REPEAT, glTF's default, which they need."""
    uvs = torch.tensor([[0.0, 0.0], [top, 0.0], [0.0, top]])
    mesh = Mesh(torch.eye(3), torch.tensor([[0, 1, 2]]), uvs=uvs, texture=torch.rand(4, 4, 3))
    save_mesh(mesh, tmp_path / "t.glb")
    sampler = pygltflib.GLTF2().load(str(tmp_path / "t.glb")).samplers[0]
    assert (sampler.wrapS, sampler.wrapT) == (wrap, wrap)


def test_a_16_bit_grey_texture_keeps_its_values(tmp_path):
    """A 16-bit greyscale PNG (PIL mode I;16) as map_Kd: texels 60 and 200 (of 255, written as 16-bit 15420 and
    51400) load as 60 / 255 and 200 / 255; the conversion used before saturated them to white."""
    grey = np.full((4, 4), 15420, np.uint16)
    grey[:, 2:] = 51400
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    body = _TRIANGLES[:24] + "vt 0 0\nvt 1 0\nvt 0 1\nusemtl tex\nf 1/1 2/2 3/3\n"
    mesh = load_mesh(_obj(tmp_path, "grey", body, "newmtl tex\nmap_Kd grey16.png\n"))
    expected = torch.tensor([60.0, 60.0, 200.0, 200.0]) / 255
    torch.testing.assert_close(mesh.texture[0, :, 0], expected, atol=1e-4, rtol=0)
    assert torch.equal(mesh.texture[..., 0], mesh.texture[..., 2])


@pytest.mark.parametrize("uv_names", ["s t", "u v"])
def test_an_ascii_ply_with_uvs_keeps_its_vertex_colours(tmp_path, uv_names):
    """trimesh drops the vertex colours of a PLY with UVs; they are read back from its data, which for an ASCII file
    is a dict of columns (a binary file's is a structured array, the only form read before)."""
    s, t = uv_names.split()
    header = ["ply", "format ascii 1.0", "element vertex 3"] + [f"property float {n}" for n in ("x", "y", "z")]
    header += [f"property uchar {n}" for n in ("red", "green", "blue")] + [f"property float {s}", f"property float {t}"]
    header += ["element face 1", "property list uchar int vertex_indices", "end_header"]
    rows = ["0 0 0 255 0 0 0 0", "1 0 0 0 255 0 1 0", "0 1 0 0 0 255 0 1", "3 0 1 2"]
    (tmp_path / "c.ply").write_text("\n".join(header + rows) + "\n")
    mesh = load_mesh(tmp_path / "c.ply")
    torch.testing.assert_close(mesh.vertex_colors, torch.eye(3))


def test_convert_refuses_to_replace_a_texture_its_input_uses(tmp_path, capsys):
    """``convert in.obj other.obj`` writes other.png: when in.obj's material names other.png, that would replace the
    input's texture (and break the input); refused in one line, every file as it was. Converting onto the input
    itself is asked for and allowed."""
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "other.png")
    path = _obj(tmp_path, "in", _TEXTURED_BODY, "newmtl tex\nmap_Kd other.png\n")
    before = (tmp_path / "other.png").read_bytes()
    assert main(["convert", str(path), str(tmp_path / "other.obj")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"would replace {tmp_path / 'other.png'}, which {path} uses: choose another output name")
    assert (tmp_path / "other.png").read_bytes() == before and not (tmp_path / "other.obj").exists()
    assert main(["convert", str(path), str(tmp_path / "in.obj")]) == 0


def test_a_textured_obj_whose_texture_cannot_be_written_leaves_no_file(tmp_path):
    """The PNG's path is a folder: refused before the MTL is written (it was left behind)."""
    mesh = Mesh(torch.eye(3), torch.tensor([[0, 1, 2]]), uvs=torch.rand(3, 2), texture=torch.rand(4, 4, 3))
    (tmp_path / "m.png").mkdir()
    with pytest.raises(ValueError, match=r"cannot write .*m\.png: it is a folder"):
        save_mesh(mesh, tmp_path / "m.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


def test_a_mesh_of_zero_area_triangles_is_refused(tmp_path):
    """Only collinear triangles: no surface (``render`` and ``metrics`` refused it, ``convert`` wrote it)."""
    path = _obj(tmp_path, "flat", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match=r"flat\.obj: every triangle has zero area \(no surface\)$"):
        load_mesh(path)


def test_a_reader_error_without_a_message_still_says_what_happened(tmp_path, monkeypatch):
    (tmp_path / "m.ply").write_bytes(b"ply....")

    def failing(*args, **kwargs):
        raise AssertionError()

    monkeypatch.setattr(trimesh, "load_scene", failing)
    with pytest.raises(ValueError, match=r"could not read mesh .*m\.ply: malformed file \(AssertionError\)$"):
        load_mesh(tmp_path / "m.ply")


def _external_image_gltf(folder, uri: str) -> None:
    """A .gltf (JSON + .bin) of one textured triangle whose image is the file named by ``uri``."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    uvs = np.array([[0.5, 0.5]] * 3, np.float32)
    blob = positions.tobytes() + uvs.tobytes()
    (folder / "m.bin").write_bytes(blob)
    gltf = _one_mesh_gltf(
        pygltflib.Primitive(attributes=pygltflib.Attributes(POSITION=0, TEXCOORD_0=1), material=0),
        pygltflib.Material(
            pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(baseColorTexture=pygltflib.TextureInfo(index=0))
        ),
        [
            pygltflib.Accessor(bufferView=0, componentType=5126, count=3, type="VEC3", min=[0, 0, 0], max=[1, 1, 0]),
            pygltflib.Accessor(bufferView=1, componentType=5126, count=3, type="VEC2"),
        ],
        [
            pygltflib.BufferView(buffer=0, byteOffset=0, byteLength=36),
            pygltflib.BufferView(buffer=0, byteOffset=36, byteLength=24),
        ],
        pygltflib.Buffer(uri="m.bin", byteLength=len(blob)),
        textures=[pygltflib.Texture(source=0)],
        images=[pygltflib.Image(uri=uri)],
    )
    gltf.save_json(str(folder / "m.gltf"))


def test_a_gltf_image_uri_is_percent_decoded(tmp_path):
    """glTF URIs are percent-encoded (Blender writes ``my%20textures/``): the image in "my textures" is read."""
    (tmp_path / "my textures").mkdir()
    Image.new("RGB", (2, 2), (0, 0, 255)).save(tmp_path / "my textures" / "blue.png")
    _external_image_gltf(tmp_path, "my%20textures/blue.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(tmp_path / "m.gltf")
    assert mesh.texture is not None
    _assert_colors(_nearest_texels(mesh), BLUE)


def test_a_gltf_whose_image_is_missing_warns_naming_it(tmp_path):
    _external_image_gltf(tmp_path, "tex/gone%20away.png")
    with pytest.warns(UserWarning, match=r"^m\.gltf: image tex/gone away\.png not found: loaded without it$"):
        mesh = load_mesh(tmp_path / "m.gltf")
    assert mesh.texture is None


def test_export_normals_keep_hard_edges_and_smooth_seams():
    """A cube whose faces have their own vertices (24: the author's hard edges) gets each side's own normal; a
    sphere split at every face (all its vertices copies) gets the normals of the welded sphere; a welded mesh gets
    its area-weighted vertex normals, as before."""
    from monorecon.io.mesh_io import unit_vertex_normals

    cube = trimesh.creation.box()
    corners = cube.faces.reshape(-1)
    flat = Mesh(torch.tensor(cube.vertices[corners], dtype=torch.float32), torch.arange(36).reshape(12, 3))
    expected = np.repeat(np.asarray(cube.face_normals), 3, axis=0)
    np.testing.assert_allclose(unit_vertex_normals(flat), expected, atol=1e-6)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    welded = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    welded_normals = unit_vertex_normals(welded)
    np.testing.assert_allclose(welded_normals, welded.vertex_normals.numpy(), atol=1e-6)
    corners = sphere.faces.reshape(-1)
    split = Mesh(welded.verts[corners], torch.arange(len(corners)).reshape(-1, 3))
    np.testing.assert_allclose(unit_vertex_normals(split), welded_normals[corners], atol=1e-6)


@pytest.mark.parametrize(
    "value", ["-s 1 1 1 -o 0 0 0 tex/blue.png", "tex\\blue.png", "-clamp on -bm 0.5 tex/blue.png", "-s 2 tex/blue.png"]
)
def test_map_kd_with_options_or_windows_separators_loads_its_texture(tmp_path, value):
    """trimesh reads ``map_Kd`` as one file name: with options (``-s 1 1 1``) or ``\\`` separators (Windows
    exporters) the texture was dropped, with a warning naming the whole value."""
    (tmp_path / "tex").mkdir()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "tex" / "blue.png")
    body = _TRIANGLES[:24] + "vt 0 0\nvt 1 0\nvt 0 1\nusemtl paint\nf 1/1 2/2 3/3\n"
    path = _obj(tmp_path, "m", body, f"newmtl paint\nKd 1 1 1\nmap_Kd {value}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(path)
    assert mesh.texture is not None
    _assert_colors(_nearest_texels(mesh), BLUE)


def test_an_ascii_ply_cut_short_is_refused(tmp_path):
    """The header declares 2 faces, the file holds 1: refused (trimesh read the one face without a word)."""
    header = ["ply", "format ascii 1.0", "element vertex 4", "property float x", "property float y",
              "property float z", "element face 2", "property list uchar int vertex_indices", "end_header"]  # fmt: skip
    rows = ["0 0 0", "1 0 0", "0 1 0", "1 1 0", "3 0 1 2"]
    (tmp_path / "cut.ply").write_text("\n".join(header + rows) + "\n")
    with pytest.raises(ValueError, match=r"cut\.ply: the header declares 2 faces, 1 were read$"):
        load_mesh(tmp_path / "cut.ply")
