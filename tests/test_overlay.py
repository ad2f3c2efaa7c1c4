"""``monorecon overlay`` and :func:`monorecon.overlay.overlay_mesh`: a mesh drawn over its image by a recorded camera.

The references are analytic: a sphere on a camera's optical axis projects to a disc centred on the principal point,
of radius ``f r / sqrt(D^2 - r^2)``; and end to end, a mesh reconstructed from a disc photo must cover that disc.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from monorecon import cli
from monorecon.api import camera_from_record, camera_record
from monorecon.core.cameras import CAMERA_CONVENTION, PerspectiveCameras, look_at
from monorecon.core.mesh import Mesh
from monorecon.io.images import save_image
from monorecon.overlay import OUTLINE_COLOUR, overlay_mesh
from test_reconstruct_cli import MODEL_ARGS, assert_one_line_error, files_under, run

# A 160 x 120 camera with an off-centre principal point and a pose that is not axis-aligned.
WIDTH, HEIGHT, FOCAL, PRINCIPAL = 160, 120, 150.0, (70.0, 52.0)
EYE, TARGET, RADIUS = np.array([1.2, 0.9, 2.6]), np.array([0.1, 0.2, -0.3]), 0.45


def record(**changes) -> dict:
    """A camera record written by hand (not by :func:`camera_record`) for the pose above."""
    c2w = look_at(torch.tensor(EYE, dtype=torch.float32)[None], torch.tensor(TARGET, dtype=torch.float32)[None])[0]
    k = [[FOCAL, 0.0, PRINCIPAL[0]], [0.0, FOCAL, PRINCIPAL[1]], [0.0, 0.0, 1.0]]
    return {"convention": CAMERA_CONVENTION, "width": WIDTH, "height": HEIGHT, "K": k, "c2w": c2w.tolist()} | changes


def sphere(colour=(1.0, 1.0, 1.0)) -> Mesh:
    """A fine icosphere of radius RADIUS around TARGET (on the camera's optical axis), one colour."""
    ico = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    verts = torch.tensor(ico.vertices + TARGET, dtype=torch.float32)
    return Mesh(verts, torch.tensor(ico.faces), vertex_colors=torch.tensor(colour).expand(len(verts), 3).clone())


def disc_radius() -> float:
    distance = float(np.linalg.norm(EYE - TARGET))
    return FOCAL * RADIUS / math.sqrt(distance**2 - RADIUS**2)


def coverage(drawn: np.ndarray, image_value: float = 0.0) -> np.ndarray:
    return np.abs(drawn.astype(np.float32) / 255 - image_value).max(-1) > 0.02


def test_camera_record_round_trip_and_the_documented_projection():
    """A hand-written record gives the camera whose projection is the record's documented formula (numpy)."""
    camera = camera_from_record(record())
    assert (camera.width, camera.height) == (WIDTH, HEIGHT)
    points = np.random.default_rng(0).normal(TARGET, 0.3, (20, 3))
    w2c = np.linalg.inv(np.asarray(record()["c2w"]))
    local = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -local[:, 2]
    expected = np.stack([PRINCIPAL[0] + FOCAL * local[:, 0] / depth, PRINCIPAL[1] - FOCAL * local[:, 1] / depth], -1)
    screen = camera.transform_points_screen(torch.tensor(points, dtype=torch.float32)[None])[0, :, :2].numpy()
    np.testing.assert_allclose(screen, expected, atol=1e-3)
    again = camera_record(camera)
    np.testing.assert_allclose(again["K"], record()["K"], atol=1e-4)
    np.testing.assert_allclose(again["c2w"], record()["c2w"], atol=1e-6)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"convention": "opencv"}, "convention"),
        ({"K": [[FOCAL, 1.0, 70.0], [0.0, FOCAL, 52.0], [0.0, 0.0, 1.0]]}, "K must be"),
        ({"K": [[FOCAL, 0.0, 70.0], [0.0, FOCAL, 52.0]]}, "3 x 3"),
        ({"K": [[math.nan, 0.0, 70.0], [0.0, FOCAL, 52.0], [0.0, 0.0, 1.0]]}, "finite"),
        ({"K": [[-FOCAL, 0.0, 70.0], [0.0, FOCAL, 52.0], [0.0, 0.0, 1.0]]}, "positive"),
        ({"K": "wide"}, "arrays"),
        ({"c2w": np.eye(4)[:3].tolist()}, "4 x 4"),
        ({"c2w": (2 * np.eye(4)).tolist()}, "row"),
        ({"c2w": np.diag([2.0, 1.0, 1.0, 1.0]).tolist()}, "orthonormal"),
        ({"c2w": np.diag([-1.0, 1.0, 1.0, 1.0]).tolist()}, "mirrors"),
        ({"width": 0}, "width"),
        ({"width": True}, "width"),
        ({"width": 160.0}, "width"),
        ({"height": "tall"}, "height"),
    ],
)
def test_bad_camera_records_are_refused(changes, needle):
    with pytest.raises(ValueError, match=needle):
        camera_from_record(record(**changes))
    incomplete = record()
    del incomplete["K"]
    with pytest.raises(ValueError, match="lacks K"):
        camera_from_record(incomplete)
    with pytest.raises(ValueError, match="JSON object"):
        camera_from_record([1, 2])


def test_sphere_on_the_optical_axis_covers_the_analytic_disc():
    """Black image, white sphere, opacity 1, no outline: the drawn pixels are the disc of radius f r / sqrt(D^2 -
    r^2) about the principal point; at its centre the surface faces the eye, so the blend is the documented one."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    camera = camera_from_record(record())
    drawn = overlay_mesh(sphere(), image, camera, opacity=1.0, outline=False)
    assert drawn.shape == (HEIGHT, WIDTH, 3) and drawn.dtype == np.uint8
    mask = coverage(drawn)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], PRINCIPAL, atol=0.3)
    assert mask.sum() == pytest.approx(math.pi * disc_radius() ** 2, rel=0.03)

    grey = np.full((HEIGHT, WIDTH, 3), 51, np.uint8)  # uint8 as PIL gives it: 0.2
    half = overlay_mesh(sphere(), grey, camera, opacity=0.6, outline=False)
    centre = half[int(PRINCIPAL[1]), int(PRINCIPAL[0])] / 255
    np.testing.assert_allclose(centre, 0.2 * 0.4 + 1.0 * 0.6, atol=0.01)  # lit head-on: ambient + diffuse = 1
    np.testing.assert_array_equal(half[0, 0], [51, 51, 51])  # the image where the mesh is not


def test_outline_is_a_ring_at_the_disc_edge_and_max_side_scales_everything():
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    drawn = overlay_mesh(sphere((0.5, 0.5, 0.5)), image, camera_from_record(record()), opacity=1.0)
    ring = np.all(drawn == np.round(np.asarray(OUTLINE_COLOUR) * 255).astype(np.uint8), axis=-1)
    rows, cols = np.nonzero(ring)
    distance = np.hypot(cols + 0.5 - PRINCIPAL[0], rows + 0.5 - PRINCIPAL[1])
    # An 8-connected ring of a disc of radius R has about 4 sqrt(2) R pixels.
    assert len(distance) > 5 * disc_radius() and np.abs(distance - disc_radius()).max() < 1.6

    big = record(width=2 * WIDTH, height=2 * HEIGHT)
    big["K"] = [[2 * FOCAL, 0, 2 * PRINCIPAL[0]], [0, 2 * FOCAL, 2 * PRINCIPAL[1]], [0, 0, 1]]
    small = overlay_mesh(
        sphere((0.5, 0.5, 0.5)), np.zeros((2 * HEIGHT, 2 * WIDTH, 4), np.float32), camera_from_record(big), opacity=1.0,
        outline=False, max_side=WIDTH,
    )  # fmt: skip
    assert small.shape == (HEIGHT, WIDTH, 3)
    mask = np.abs(small.astype(np.float32) / 255 - 1.0).max(-1) > 0.02  # a transparent image is drawn on white...
    shade = small[mask].astype(np.float32).mean(-1) / 255  # ... and the grey sphere is lit by the headlight:
    assert 0.5 * 0.45 - 0.01 <= shade.min() and shade.max() <= 0.5 + 0.01  # from ambient 0.45 to head-on 1
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], PRINCIPAL, atol=0.5)
    assert mask.sum() == pytest.approx(math.pi * disc_radius() ** 2, rel=0.05)


@pytest.mark.parametrize("shape", [(HEIGHT // 2, WIDTH // 2), (HEIGHT * 3 // 2, WIDTH * 3 // 2), (71, 95)])
def test_a_resized_copy_of_the_image_is_drawn_with_the_camera_resized(shape):
    """A photo resized after reconstruction (here 60 x 80, 180 x 240, and 71 x 95 where the rounding makes the
    aspect 0.6 % off): the disc scales with the image, about the principal point scaled likewise."""
    height, width = shape
    drawn = overlay_mesh(
        sphere(), np.zeros((height, width, 3), np.float32), camera_from_record(record()), opacity=1.0, outline=False
    )
    assert drawn.shape == (height, width, 3)
    sx, sy = width / WIDTH, height / HEIGHT
    rows, cols = np.nonzero(coverage(drawn))
    np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], [PRINCIPAL[0] * sx, PRINCIPAL[1] * sy], atol=0.5)
    assert len(rows) == pytest.approx(math.pi * disc_radius() ** 2 * sx * sy, rel=0.05)


def test_a_tiny_mesh_is_not_clipped():
    """A mesh placed 1 mm tall in metres is seen from closer than the cameras' default near plane (0.01): still drawn
    whole (the clipping depths come from the mesh)."""
    scale = 1e-3
    far = record()
    c2w = np.asarray(far["c2w"])
    c2w[:3, 3] *= scale
    far["c2w"] = c2w.tolist()
    mesh = sphere()
    mesh = Mesh(mesh.verts * scale, mesh.faces, vertex_colors=mesh.vertex_colors)
    drawn = overlay_mesh(mesh, np.zeros((HEIGHT, WIDTH, 3), np.float32), camera_from_record(far), outline=False)
    assert coverage(drawn).sum() == pytest.approx(math.pi * disc_radius() ** 2, rel=0.03)


BEHIND = torch.tensor(EYE - TARGET, dtype=torch.float32) * 3  # moves the sphere behind the eye


def test_bad_overlay_inputs_are_refused():
    camera = camera_from_record(record())
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    cases = [
        (dict(image=np.zeros((HEIGHT, WIDTH + WIDTH // 3, 3), np.float32)), "another aspect ratio"),
        (dict(image=np.zeros((HEIGHT // 2, WIDTH // 2 + 3, 3), np.float32)), "another aspect ratio"),
        (dict(image=np.zeros((HEIGHT, WIDTH), np.float32)), r"\(H, W, 3\|4\)"),
        (dict(image=np.full((HEIGHT, WIDTH, 3), np.nan, np.float32)), "finite"),
        (dict(image=np.full((HEIGHT, WIDTH, 3), 2.0, np.float32)), r"\[0, 1\]"),
        (dict(opacity=1.5), "opacity"),
        (dict(max_side=8), "max_side"),
        (dict(mesh=Mesh(sphere().verts + BEHIND, sphere().faces)), "behind"),
        (dict(camera=PerspectiveCameras(torch.eye(4).repeat(2, 1, 1), HEIGHT, WIDTH, fov_y_deg=40.0)), "one camera"),
    ]  # fmt: skip
    for changes, needle in cases:
        arguments = {"mesh": sphere(), "image": image, "camera": camera} | changes
        mesh, picture, view = arguments.pop("mesh"), arguments.pop("image"), arguments.pop("camera")
        with pytest.raises(ValueError, match=needle):
            overlay_mesh(mesh, picture, view, **arguments)


# --------------------------------------------------------------------------------------------------------------------
# The command, on a reconstruction by the tiny model
# --------------------------------------------------------------------------------------------------------------------
PHOTO_HEIGHT, PHOTO_WIDTH, DISC_CENTRE, DISC_RADIUS = 160, 240, np.array([170.0, 70.0]), 30.0


@pytest.fixture(scope="module")
def reconstructions(tmp_path_factory) -> dict:
    """A dark disc off-centre in a wide white photo, reconstructed as it is and placed (30 cm, standing on y = 0)."""
    folder = tmp_path_factory.mktemp("overlay")
    rows, cols = np.mgrid[:PHOTO_HEIGHT, :PHOTO_WIDTH] + 0.5
    disc = np.hypot(cols - DISC_CENTRE[0], rows - DISC_CENTRE[1]) < DISC_RADIUS
    photo = save_image(np.where(disc[..., None], 0.2, 1.0) * np.ones(3, np.float32), folder / "disc.png")
    outputs = {}
    for name, placement in (("plain", []), ("placed", ["--object-height", "0.3", "--origin", "bottom"])):
        argv = ["reconstruct", str(photo), "-o", str(folder / name), *MODEL_ARGS, "--mc-resolution", "48",
                "--threshold", "1", "--quiet", *placement]  # fmt: skip
        assert cli.main(argv) == 0
        outputs[name] = folder / name / "disc"
    return {"photo": photo, "disc": disc, **outputs}


@pytest.mark.parametrize("name", ["plain", "placed"])
def test_overlay_command_draws_the_mesh_on_its_disc(reconstructions, name, tmp_path, capsys):
    """The carved mesh covers the photo's disc and nothing beyond its outline (plus a grid cell), whether or not
    --object-height / --origin moved it: the recorded camera moved with it."""
    result = reconstructions[name]
    output = tmp_path / "overlay.png"
    code, out, err = run(["overlay", str(result), "-o", str(output), "--opacity", "1", "--no-outline"], capsys)
    assert code == 0, err
    assert out.strip() == f"{result} -> {output}"
    drawn = np.asarray(Image.open(output).convert("RGB"))
    photo = np.asarray(Image.open(reconstructions["photo"]).convert("RGB"))
    assert drawn.shape == photo.shape
    changed = np.abs(drawn.astype(int) - photo.astype(int)).max(-1) > 8
    rows, cols = np.mgrid[:PHOTO_HEIGHT, :PHOTO_WIDTH] + 0.5
    offset = np.hypot(cols - DISC_CENTRE[0], rows - DISC_CENTRE[1])
    cell = 1.74 / 48 * json.loads((result / "result.json").read_text())["photo_camera"]["K"][0][0] / 1.9
    assert not changed[offset > DISC_RADIUS + 2 * cell].any()
    # Inside the disc the mesh's colours are the photo's own dark grey (projected), so compare coverage instead.
    code, _, err = run(["overlay", str(result), "-o", str(output), "--opacity", "1", "--no-outline", "--image",
                        str(white_photo(tmp_path))], capsys)  # fmt: skip
    assert code == 0, err
    covered = np.asarray(Image.open(output).convert("RGB")).astype(int).min(-1) < 247
    assert covered[offset < DISC_RADIUS - 2 * cell].mean() > 0.97
    assert not covered[offset > DISC_RADIUS + 2 * cell].any()


def white_photo(folder) -> str:
    return str(save_image(np.ones((PHOTO_HEIGHT, PHOTO_WIDTH, 3), np.float32), folder / "white.png"))


def test_overlay_output_in_new_folders_makes_them(reconstructions, tmp_path, capsys):
    """-o in folders that do not exist yet makes them, as reconstruct -o does (it was refused)."""
    output = tmp_path / "overlays" / "disc" / "o.png"
    code, _, err = run(["overlay", str(reconstructions["plain"]), "-o", str(output), "--view", "input"], capsys)
    assert code == 0, err
    assert Image.open(output).size == Image.open(reconstructions["plain"] / "input.png").size


def test_overlay_command_on_the_prepared_input(reconstructions, capsys):
    result = reconstructions["placed"]
    code, _, err = run(["overlay", str(result), "--view", "input", "--quiet"], capsys)
    assert code == 0, err
    drawn = np.asarray(Image.open(result / "overlay_input.png").convert("RGB"))
    alpha = np.asarray(Image.open(result / "input.png"))[..., 3] > 127
    assert drawn.shape[:2] == alpha.shape
    outline = np.all(drawn == np.round(np.asarray(OUTLINE_COLOUR) * 255).astype(np.uint8), axis=-1)
    rows, cols = np.nonzero(alpha)
    centre, radius = np.array([cols.mean(), rows.mean()]) + 0.5, math.sqrt(alpha.sum() / math.pi)
    rows, cols = np.nonzero(outline)
    distance = np.hypot(cols + 0.5 - centre[0], rows + 0.5 - centre[1])
    cell = 1.74 / 48 * json.loads((result / "result.json").read_text())["camera"]["K"][0][0] / 1.9
    # The outline runs along input.png's disc (the tiny random model's mesh has holes inside, outlined too) and
    # nowhere beyond it (plus the grid's cells: marching cubes blurs the carved cone's edge).
    assert distance.max() < radius + 2 * cell and abs(np.median(distance) - radius) < 2 * cell


def test_overlay_command_bad_input(reconstructions, tmp_path, capsys):
    result = tmp_path / "copy"
    shutil.copytree(reconstructions["plain"], result)
    before = files_under(tmp_path)

    def refused(*argv: str, needle: str) -> None:
        code, _, err = run(["overlay", *argv], capsys)
        assert_one_line_error(code, err, needle)
        assert files_under(tmp_path) == before

    (tmp_path / "empty").mkdir()
    before = files_under(tmp_path)
    refused(str(tmp_path / "empty"), needle="no result.json")
    wrong_size = str(save_image(np.ones((10, 40, 3), np.float32), tmp_path / "small.png"))
    before = files_under(tmp_path)
    refused(str(result), "--image", wrong_size, needle="another aspect ratio")
    refused(str(result), "--opacity", "1.5", needle="--opacity")
    refused(str(result), "--max-side", "8", needle="--max-side")
    refused(str(result), "-o", str(result / "mesh.glb" / "o.png"), needle="mesh.glb is a file")
    record = json.loads((result / "result.json").read_text())
    (result / "result.json").write_text(json.dumps(record | {"input": str(tmp_path / "gone.png")}))
    before = files_under(tmp_path)
    refused(str(result), needle="pass --image")
    (result / "result.json").write_text(json.dumps(record | {"photo_camera": None}))
    before = files_under(tmp_path)
    refused(str(result), needle="records no photo_camera")
    white = white_photo(tmp_path)
    for elsewhere in ("../disc/mesh.glb", str(result / "mesh.glb"), ".."):
        (result / "result.json").write_text(json.dumps(record | {"mesh_file": elsewhere}))
        before = files_under(tmp_path)
        refused(str(result), "--image", white, needle="names no mesh_file of its own folder")
    (result / "result.json").write_text("{not json")
    before = files_under(tmp_path)
    refused(str(result), needle="cannot read")


def test_overlay_command_on_a_batch_folder_draws_each_result_and_names_the_bad_one(reconstructions, tmp_path, capsys):
    batch = tmp_path / "batch"
    for name, source in (("a", "plain"), ("b", "placed"), ("c", "plain")):
        shutil.copytree(reconstructions[source], batch / name)
    (batch / "notes").mkdir()  # not a result folder: ignored
    (batch / "c" / "result.json").write_text("{not json")
    code, out, err = run(["overlay", str(batch)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("monorecon")]  # not the progress bar's
    assert lines[0].startswith(f"monorecon: {batch / 'c'}: cannot read")
    assert lines[-1] == "monorecon: 1 of 3 result folders failed" and len(lines) == 2
    assert (batch / "a" / "overlay.png").is_file() and (batch / "b" / "overlay.png").is_file()
    assert not (batch / "c" / "overlay.png").exists()
    assert f"{batch / 'a'} -> {batch / 'a' / 'overlay.png'}" in out
    shutil.rmtree(batch / "c")
    code, out, err = run(["overlay", str(batch), "--view", "input", "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")
    assert (batch / "a" / "overlay_input.png").is_file() and (batch / "b" / "overlay_input.png").is_file()
    code, _, err = run(["overlay", str(batch), "-o", str(tmp_path / "one.png")], capsys)
    assert_one_line_error(code, err, "holds 2")
    code, _, err = run(["overlay", str(batch / "notes")], capsys)
    assert_one_line_error(code, err, "no result.json")


def test_a_result_saved_by_the_api_names_its_photo_for_overlay(tmp_path, capsys):
    """``Reconstruction.save`` records the image file it was made from (absolute path), so ``overlay`` finds it; a
    reconstruction from an array names none, and ``overlay`` asks for ``--image`` in one line."""
    from monorecon.api import reconstruct_full
    from test_server import StubModel, object_png

    (tmp_path / "photo.png").write_bytes(object_png(side=80))
    from_file = reconstruct_full(tmp_path / "photo.png", StubModel())
    from_file.save(tmp_path / "file")
    assert json.loads((tmp_path / "file" / "result.json").read_text())["input"] == str(tmp_path / "photo.png")
    code, _, err = run(["overlay", str(tmp_path / "file"), "--quiet"], capsys)
    assert code == 0 and (tmp_path / "file" / "overlay.png").is_file(), err

    pixels = np.asarray(Image.open(tmp_path / "photo.png"), dtype=np.float32) / 255
    reconstruct_full(pixels, StubModel()).save(tmp_path / "array")
    assert json.loads((tmp_path / "array" / "result.json").read_text())["input"] is None
    code, _, err = run(["overlay", str(tmp_path / "array")], capsys)
    assert_one_line_error(code, err, "names no photo", "--image")
    code, _, err = run(["overlay", str(tmp_path / "array"), "--image", str(tmp_path / "photo.png"), "--quiet"], capsys)
    assert code == 0, err
