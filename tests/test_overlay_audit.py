"""Audit of ``monorecon overlay``, :func:`monorecon.api.camera_from_record` and the REST API's ``bundle``.

References are independent of the code under test: a numpy ray caster (pixel centre -> ray through the documented
pinhole ``u = cx + fx x / d``, ``v = cy - fy y / d``, hit test against the analytic sphere), a numpy 4-neighbour
erosion for the outline, one-pixel stripes that a low-pass downsampling turns mid-grey, PIL for the files written and
the raw GLB JSON chunk for the unlit material. Result folders are written by hand (an icosphere, a hand-made
``result.json``), not by ``monorecon reconstruct``, so that every test is fast and its expected picture is exact.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from fastapi.testclient import TestClient
from PIL import Image
from scipy.spatial import cKDTree

from monorecon.api import camera_from_record
from monorecon.core.cameras import CAMERA_CONVENTION
from monorecon.core.mesh import Mesh
from monorecon.io.images import save_image
from monorecon.io.mesh_io import save_mesh
from monorecon.overlay import OUTLINE_COLOUR, overlay_mesh
from monorecon.server import create_app
from test_reconstruct_cli import assert_one_line_error, files_under, run

GREEN = np.round(np.asarray(OUTLINE_COLOUR) * 255).astype(np.uint8)
TINY = Path(__file__).parent / "data" / "triposr_ref"


def c2w_looking_at(eye, target) -> np.ndarray:
    """4 x 4 camera-to-world, columns right, up, back, position (world +Y up), built by hand with numpy."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w


def camera_dict(width, height, fx, fy, cx, cy, c2w) -> dict:
    k = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
    return {"convention": CAMERA_CONVENTION, "width": width, "height": height, "K": k, "c2w": np.asarray(c2w).tolist()}


def sphere_mesh(centre, radius, colour=(1.0, 1.0, 1.0), subdivisions=5) -> Mesh:
    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    verts = torch.tensor(ico.vertices + np.asarray(centre), dtype=torch.float32)
    colours = torch.tensor(colour, dtype=torch.float32).expand(len(verts), 3).clone()
    return Mesh(verts, torch.tensor(ico.faces), vertex_colors=colours)


def ray_cast_sphere(record: dict, centre, radius) -> np.ndarray:
    """(H, W) bool: the pixels whose centre's ray (documented pinhole) hits the analytic sphere in front of the eye."""
    k, c2w = np.asarray(record["K"], float), np.asarray(record["c2w"], float)
    rows, cols = np.mgrid[: record["height"], : record["width"]] + 0.5
    local = np.stack([(cols - k[0, 2]) / k[0, 0], -(rows - k[1, 2]) / k[1, 1], -np.ones_like(cols)], -1)
    direction = local @ c2w[:3, :3].T
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    offset = c2w[:3, 3] - np.asarray(centre, float)
    b = direction @ offset
    disc = b**2 - (offset @ offset - radius**2)
    return (disc > 0) & (-b - np.sqrt(np.maximum(disc, 0)) > 0)


def covered(drawn: np.ndarray, background: float = 0.0) -> np.ndarray:
    return np.abs(drawn.astype(np.float32) / 255 - background).max(-1) > 0.02


def four_neighbour_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; beyond the image counts as inside (numpy, by hand)."""
    inside = mask.copy()
    inside[1:] &= mask[:-1]
    inside[:-1] &= mask[1:]
    inside[:, 1:] &= mask[:, :-1]
    inside[:, :-1] &= mask[:, 1:]
    return mask & ~inside


def assert_matches_except_rim(mask: np.ndarray, expected: np.ndarray, slack: int = 1) -> None:
    """``mask`` equals ``expected`` away from its rim (the icosphere is a polygon: pixels within ``slack`` of the
    analytic outline may differ), and the areas agree within 3 %."""
    rim = four_neighbour_edge(expected) | four_neighbour_edge(~expected)
    for _ in range(slack):
        grown = rim.copy()
        grown[1:] |= rim[:-1]
        grown[:-1] |= rim[1:]
        grown[:, 1:] |= rim[:, :-1]
        grown[:, :-1] |= rim[:, 1:]
        rim = grown
    assert not (mask ^ expected)[~rim].any()
    assert mask.sum() == pytest.approx(expected.sum(), rel=0.03)


# --------------------------------------------------------------------------------------------------------------------
# overlay_mesh / camera_from_record against the ray caster
# --------------------------------------------------------------------------------------------------------------------
EYE, CENTRE, RADIUS = (0.9, 0.6, 2.4), (0.15, 0.05, -0.1), 0.4


def test_anisotropic_focal_and_off_axis_sphere_match_the_ray_caster():
    """fx != fy, an off-centre principal point and a sphere off the optical axis (an ellipse on screen): the drawn
    pixels are the ones whose rays hit the sphere."""
    record = camera_dict(150, 110, 190.0, 120.0, 70.0, 60.0, c2w_looking_at(EYE, (0.0, 0.0, 0.0)))
    drawn = overlay_mesh(
        sphere_mesh(CENTRE, RADIUS), np.zeros((110, 150, 3), np.float32), camera_from_record(record), opacity=1.0,
        outline=False,
    )  # fmt: skip
    expected = ray_cast_sphere(record, CENTRE, RADIUS)
    assert 500 < expected.sum() < 0.5 * expected.size
    assert_matches_except_rim(covered(drawn), expected)


def test_outline_is_the_four_neighbour_edge_of_the_drawn_mesh_and_never_the_image_border():
    """A sphere cut by the image's left and top borders: the outline is exactly the pixels of the drawn mesh with a
    4-neighbour outside it (numpy); where the mesh runs on beyond the image there is no outline."""
    record = camera_dict(120, 90, 110.0, 110.0, 4.0, 6.0, c2w_looking_at(EYE, CENTRE))
    camera, image = camera_from_record(record), np.zeros((90, 120, 3), np.float32)
    mesh = sphere_mesh(CENTRE, RADIUS, colour=(0.5, 0.5, 0.5))
    plain = overlay_mesh(mesh, image, camera, opacity=1.0, outline=False)
    outlined = overlay_mesh(mesh, image, camera, opacity=1.0)
    mask = covered(plain)
    assert mask[:, 0].sum() > 10 and mask[0].sum() > 10  # the mesh goes on beyond two borders
    ring = np.all(outlined == GREEN, axis=-1)
    np.testing.assert_array_equal(ring, four_neighbour_edge(mask))
    np.testing.assert_array_equal(outlined[~ring], plain[~ring])  # the outline changes nothing else
    assert_matches_except_rim(mask, ray_cast_sphere(record, CENTRE, RADIUS))


@pytest.mark.parametrize(
    "bad_k, needle",
    [
        ([[100.0, 0.0, 60.0], [0.5, 100.0, 45.0], [0.0, 0.0, 1.0]], "K must be"),  # a lower skew term
        ([[100.0, 0.0, 60.0], [0.0, 100.0, 45.0], [0.0, 0.0, 2.0]], "K must be"),  # not homogeneous-normalised
        ([[100.0, 0.0, 60.0], [0.0, 100.0, 45.0], [0.1, 0.0, 1.0]], "K must be"),
    ],
)
def test_a_k_that_is_not_a_pinhole_matrix_is_refused(bad_k, needle):
    record = camera_dict(120, 90, 100.0, 100.0, 60.0, 45.0, c2w_looking_at(EYE, CENTRE)) | {"K": bad_k}
    with pytest.raises(ValueError, match=needle):
        camera_from_record(record)


def test_max_side_box_filters_the_image_and_scales_the_camera():
    """A 2x downsample: one-pixel black / white stripes become mid-grey (a filter, not point sampling), and the
    sphere lands where the ray caster puts it for the camera with K halved."""
    record = camera_dict(200, 160, 230.0, 230.0, 90.0, 84.0, c2w_looking_at(EYE, CENTRE))
    stripes = np.zeros((160, 200, 3), np.float32)
    stripes[:, ::2] = 1.0
    mesh = sphere_mesh(CENTRE, RADIUS, colour=(1.0, 0.0, 0.0))
    drawn = overlay_mesh(mesh, stripes, camera_from_record(record), opacity=0.0, outline=False, max_side=100)
    assert drawn.shape == (80, 100, 3)
    np.testing.assert_allclose(drawn[5:-5, 5:-5].astype(np.float32) / 255, 0.5, atol=0.08)  # a low-pass filter: 0.5
    red = overlay_mesh(mesh, np.zeros((160, 200, 3), np.float32), camera_from_record(record), opacity=1.0,
                       outline=False, max_side=100)  # fmt: skip
    half = camera_dict(100, 80, 115.0, 115.0, 45.0, 42.0, record["c2w"])
    assert_matches_except_rim(covered(red), ray_cast_sphere(half, CENTRE, RADIUS))


# --------------------------------------------------------------------------------------------------------------------
# The command, on result folders written by hand
# --------------------------------------------------------------------------------------------------------------------
PHOTO_W, PHOTO_H = 180, 140
PHOTO_CAMERA = camera_dict(PHOTO_W, PHOTO_H, 200.0, 200.0, 100.0, 64.0, c2w_looking_at(EYE, (0.05, 0.0, 0.0)))
INPUT_CAMERA = camera_dict(64, 64, 90.0, 90.0, 32.0, 32.0, c2w_looking_at(EYE, CENTRE))


def photo_pixels() -> np.ndarray:
    """A smooth, non-uniform RGB photo (so that any change to its pixels shows)."""
    rows, cols = np.mgrid[:PHOTO_H, :PHOTO_W]
    return np.stack([cols / PHOTO_W, rows / PHOTO_H, 0.3 + 0.4 * ((rows + cols) % 7) / 6], -1).astype(np.float32)


def result_folder(folder: Path, mesh_format: str = "glb") -> Path:
    """A folder as ``monorecon reconstruct`` writes it: mesh, input.png, result.json naming the photo."""
    folder.mkdir(parents=True)
    photo = save_image(photo_pixels(), folder.parent / f"{folder.name}_photo.png")
    save_mesh(sphere_mesh(CENTRE, RADIUS, colour=(0.9, 0.2, 0.1), subdivisions=4), folder / f"mesh.{mesh_format}")
    save_image(np.full((64, 64, 4), 0.5, np.float32), folder / "input.png")
    record = {"input": str(photo), "mesh_file": f"mesh.{mesh_format}", "camera": INPUT_CAMERA,
              "photo_camera": PHOTO_CAMERA}  # fmt: skip
    (folder / "result.json").write_text(json.dumps(record))
    return folder


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("mesh_format", ["glb", "stl"])
def test_command_draws_the_mesh_where_the_ray_caster_sees_it(tmp_path, capsys, mesh_format):
    """Also for an STL (stored +Z up, read back +Y up): the sphere off the optical axis lands where the recorded
    photo camera sees it; the outline is the edge of the drawn mesh."""
    folder = result_folder(tmp_path / "r", mesh_format)
    code, out, err = run(["overlay", str(folder), "--opacity", "1"], capsys)
    assert code == 0, err
    assert out.strip() == f"{folder} -> {folder / 'overlay.png'}"
    drawn, photo = read_rgb(folder / "overlay.png"), read_rgb(tmp_path / "r_photo.png")
    assert drawn.shape == photo.shape
    ring = np.all(drawn == GREEN, axis=-1)
    changed = np.abs(drawn.astype(int) - photo.astype(int)).max(-1) > 2
    expected = ray_cast_sphere(PHOTO_CAMERA, CENTRE, RADIUS)
    assert_matches_except_rim(changed, expected)
    np.testing.assert_array_equal(ring, four_neighbour_edge(changed))


def test_command_opacity_zero_without_outline_gives_the_photo_back_exactly(tmp_path, capsys):
    folder = result_folder(tmp_path / "r")
    output = tmp_path / "same.png"
    code, _, err = run(["overlay", str(folder), "--opacity", "0", "--no-outline", "-o", str(output)], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_rgb(output), read_rgb(tmp_path / "r_photo.png"))
    # The same with the outline: only the outline's pixels differ, and they are the sphere's edge.
    code, _, err = run(["overlay", str(folder), "--opacity", "0", "-o", str(output)], capsys)
    assert code == 0, err
    drawn = read_rgb(output)
    ring = np.all(drawn == GREEN, axis=-1)
    np.testing.assert_array_equal(drawn[~ring], read_rgb(tmp_path / "r_photo.png")[~ring])
    expected_ring = four_neighbour_edge(ray_cast_sphere(PHOTO_CAMERA, CENTRE, RADIUS))
    assert ring.sum() == pytest.approx(expected_ring.sum(), rel=0.15)


def test_command_opacity_blends_linearly_and_max_side_shrinks(tmp_path, capsys):
    """--opacity a: inside the sphere the pixel is (1 - a) photo + a shade, so the a = 0.25 and a = 0.75 overlays
    average to the a = 0.5 one; --max-side 90 halves the 180 x 140 photo."""
    folder = result_folder(tmp_path / "r")
    drawn = {}
    for opacity in ("0.25", "0.5", "0.75"):
        output = tmp_path / f"o{opacity}.png"
        code, _, err = run(["overlay", str(folder), "--opacity", opacity, "--no-outline", "-o", str(output)], capsys)
        assert code == 0, err
        drawn[opacity] = read_rgb(output).astype(np.float32)
    inside = ray_cast_sphere(PHOTO_CAMERA, CENTRE, RADIUS)
    inside[1:] &= inside[:-1]  # away from the polygon's rim
    inside[:-1] &= inside[1:]
    mean = (drawn["0.25"] + drawn["0.75"]) / 2
    np.testing.assert_allclose(mean[inside], drawn["0.5"][inside], atol=1.0)
    assert np.abs(drawn["0.75"] - drawn["0.25"])[inside].max() > 30  # the opacity does change the picture
    code, _, err = run(["overlay", str(folder), "--max-side", "90", "-o", str(tmp_path / "small.png")], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "small.png").size == (90, 70)


def test_command_view_input_uses_input_png_and_its_camera(tmp_path, capsys):
    folder = result_folder(tmp_path / "r")
    code, _, err = run(["overlay", str(folder), "--view", "input", "--opacity", "1", "--no-outline", "--quiet"], capsys)
    assert code == 0, err
    drawn = read_rgb(folder / "overlay_input.png")
    assert drawn.shape == (64, 64, 3)
    changed = np.abs(drawn.astype(int) - 191).max(-1) > 3  # input.png: grey 0.5 at alpha 0.5, on white: 0.75
    assert_matches_except_rim(changed, ray_cast_sphere(INPUT_CAMERA, CENTRE, RADIUS))


def test_batch_refuses_one_image_for_all_and_keeps_going_past_a_bad_member(tmp_path, capsys):
    batch = tmp_path / "batch"
    for name in ("a", "b"):
        result_folder(batch / name)
    before = files_under(tmp_path)
    code, _, err = run(["overlay", str(batch), "--image", str(batch / "a_photo.png")], capsys)
    assert_one_line_error(code, err, "holds 2")
    assert files_under(tmp_path) == before
    record = json.loads((batch / "a" / "result.json").read_text())
    del record["photo_camera"]["c2w"]
    (batch / "a" / "result.json").write_text(json.dumps(record))
    code, _, err = run(["overlay", str(batch), "--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("monorecon")]
    assert lines == [
        f"monorecon: {batch / 'a'}: the camera record lacks c2w",
        "monorecon: 1 of 2 result folders failed",
    ]
    assert not (batch / "a" / "overlay.png").exists() and (batch / "b" / "overlay.png").is_file()


def test_a_deeply_nested_result_json_is_a_one_line_error(tmp_path, capsys):
    folder = result_folder(tmp_path / "r")
    (folder / "result.json").write_text('{"photo_camera": ' + "[" * 5000 + "]" * 5000 + "}")
    code, _, err = run(["overlay", str(folder)], capsys)
    assert_one_line_error(code, err, "cannot read")


# --------------------------------------------------------------------------------------------------------------------
# REST API bundle: the weights / config recorded, unlit carried into the mesh and the record
# --------------------------------------------------------------------------------------------------------------------
def glb_json(data: bytes) -> dict:
    """The JSON chunk of a binary glTF (read by hand: header, chunk length, chunk type 'JSON')."""
    magic, _, _ = struct.unpack_from("<4sII", data, 0)
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert magic == b"glTF" and kind == b"JSON"
    return json.loads(data[20 : 20 + length])


def l_shape_upload() -> bytes:
    """RGBA PNG: an opaque L (a square with its top-right quarter cut out) on a transparent background."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[8:56, 8:56] = (200, 60, 30, 255)
    rgba[8:32, 32:56] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bundle_records_weights_and_config_and_carries_unlit():
    weights, config = TINY / "model.safetensors", TINY / "config.yaml"
    client = TestClient(create_app(weights=weights, config=config, ui=False))
    data = {"format": "glb", "unlit": "true", "bundle": "true", "mc_resolution": "32", "threshold": "1"}
    response = client.post("/reconstruct", files={"image": ("l.png", l_shape_upload(), "image/png")}, data=data)
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        record = json.loads(archive.read("result.json"))
        glb = archive.read("mesh.glb")
        alpha = np.asarray(Image.open(io.BytesIO(archive.read("input.png"))))[..., 3] > 127
    assert record["model"] == {"weights": str(weights), "config": str(config), "device": "cpu", "dtype": "float32"}
    assert record["unlit"] is True and record["input"] == "l.png"
    materials = glb_json(glb)["materials"]
    assert materials and all("KHR_materials_unlit" in m.get("extensions", {}) for m in materials)
    # The recorded input camera (numpy pinhole) puts every vertex of the carved mesh on input.png's L, within a
    # marching-cubes cell (1.74 / 32 of the box) seen at the box's nearest depth (1.9 - 0.87), and some in each arm.
    camera = record["camera"]
    assert (camera["width"], camera["height"]) == alpha.shape[::-1]
    scene = trimesh.load(io.BytesIO(glb), file_type="glb", process=False)
    verts = np.concatenate([np.asarray(g.vertices) for g in scene.dump()])
    w2c, k = np.linalg.inv(np.asarray(camera["c2w"])), np.asarray(camera["K"])
    local = verts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = np.stack([k[0, 2] + k[0, 0] * local[:, 0] / -local[:, 2], k[1, 2] - k[1, 1] * local[:, 1] / -local[:, 2]], -1)
    rows, cols = np.nonzero(alpha)
    distance, _ = cKDTree(np.stack([cols, rows], -1) + 0.5).query(uv)
    assert distance.max() < 1.74 / 32 * k[0, 0] / (1.9 - 0.87)
    notch = (uv[:, 0] > cols.mean() + 0.25 * np.ptp(cols)) & (uv[:, 1] < rows.mean() - 0.25 * np.ptp(rows))
    assert notch.mean() < 0.02 < (uv[:, 0] > cols.mean() + 0.25 * np.ptp(cols)).mean()


def test_an_output_folder_with_one_result_takes_o_and_image(tmp_path, capsys):
    """``monorecon reconstruct photo.png -o out`` writes ``out/photo/``; ``overlay out -o x.png`` names one result."""
    result_folder(tmp_path / "out" / "r")
    code, _, err = run(["overlay", str(tmp_path / "out"), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 0, err


def test_the_photo_is_found_from_another_working_folder(tmp_path, capsys, monkeypatch):
    """``reconstruct`` records the photo's absolute path, so ``overlay`` finds it from any working folder."""
    save_image(photo_pixels(), tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)  # reconstruct runs here, on a relative path
    argv = ["reconstruct", "photo.png", "-o", "out", "--weights", str(TINY / "model.safetensors"), "--config",
            str(TINY / "config.yaml"), "--mc-resolution", "16", "--threshold", "1", "--no-remove-bg",
            "--quiet"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "photo" / "result.json").read_text())
    assert record["input"] == str(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path / "out")  # overlay runs elsewhere
    code, _, err = run(["overlay", "photo/result.json", "--quiet"], capsys)  # a file of the folder names it too
    assert code == 0 and (tmp_path / "out" / "photo" / "overlay.png").is_file(), err


def test_an_io_error_in_one_member_of_a_batch_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """A photo that cannot be read (an OSError: permissions, a failing disk) is one member's failure; a RESULT that
    does not exist is the one-line 'no result.json' error."""
    from monorecon.io import images

    batch = tmp_path / "batch"
    for name in ("a", "b", "c"):
        result_folder(batch / name)
    load_image = images.load_image

    def failing_for_b(path, *args, **kwargs):
        if Path(path).name == "b_photo.png":
            raise PermissionError(13, "Permission denied", str(path))
        return load_image(path, *args, **kwargs)

    monkeypatch.setattr(images, "load_image", failing_for_b)
    code, _, err = run(["overlay", str(batch), "--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("monorecon")]
    assert lines[0].startswith(f"monorecon: {batch / 'b'}: ") and "Permission denied" in lines[0]
    assert lines[1:] == ["monorecon: 1 of 3 result folders failed"]
    assert [(batch / name / "overlay.png").is_file() for name in "abc"] == [True, False, True]
    code, _, err = run(["overlay", str(tmp_path / "missing")], capsys)
    assert_one_line_error(code, err, "no result.json")


def test_a_refused_save_leaves_an_earlier_result_in_the_folder_whole(tmp_path):
    from monorecon.api import ReconstructOptions, reconstruct_full
    from test_server import StubModel, object_png

    image = np.asarray(Image.open(io.BytesIO(object_png())), dtype=np.float32) / 255
    stub = StubModel()
    reconstruct_full(image, stub).save(tmp_path, "ply")
    baked = reconstruct_full(image, stub, ReconstructOptions(bake_texture=True, texture_resolution=64))
    with pytest.raises(ValueError, match="PLY"):
        baked.save(tmp_path, "ply")  # refused: a texture in a PLY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png", "mesh.ply", "result.json"]
