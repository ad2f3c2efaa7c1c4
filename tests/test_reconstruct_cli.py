"""``monorecon reconstruct`` / ``monorecon render`` end to end with the tiny TripoSR-architecture model, and bad input.

Every bad input must give exactly one line on stderr (no traceback), exit code 2, and leave no output file behind
(no mesh, no temporary file). The tiny model has random weights: its meshes are blobs, which is all these tests need.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image
from safetensors.torch import load_file, save_file

from monorecon import cli
from monorecon.io import load_mesh
from monorecon.io.images import save_image
from monorecon.models.triposr.model import input_camera
from test_mesh_io import _validator_command

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "triposr_ref"
MODEL_ARGS = ["--weights", str(TINY / "model.safetensors"), "--config", str(TINY / "config.yaml")]
# Small and fast: a 32^3 grid, and an iso level giving a few thousand faces with the random tiny model.
FAST_ARGS = ["--mc-resolution", "32", "--threshold", "1", "--quiet"]


def object_image(size: int = 48, seed: int = 0) -> np.ndarray:
    """(size, size, 4) RGBA: a coloured ellipse on a transparent background."""
    rows, cols = np.mgrid[:size, :size] / size
    alpha = ((rows - 0.5) / 0.35) ** 2 + ((cols - 0.45) / 0.25) ** 2 < 1
    image = np.zeros((size, size, 4), dtype=np.float32)
    image[..., :3] = np.random.default_rng(seed).uniform(0.2, 0.8, 3)
    image[..., 3] = alpha
    return image


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    return save_image(object_image(), tmp_path_factory.mktemp("inputs") / "thing.png")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reconstruct(inputs: list[Path], output: Path, *extra: str, capsys) -> tuple[int, str, str]:
    return run(["reconstruct", *map(str, inputs), "-o", str(output), *MODEL_ARGS, *FAST_ARGS, *extra], capsys)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("monorecon: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_no_temporaries(folder: Path) -> None:
    assert not [p for p in files_under(folder) if p.name.startswith(".")], files_under(folder)


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------
def test_reconstruct_writes_a_valid_glb_and_the_prepared_input(image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path / "out", capsys=capsys)
    assert code == 0, err
    result = tmp_path / "out" / "thing"
    assert sorted(p.name for p in files_under(result)) == ["input.png", "mesh.glb", "result.json"]
    with Image.open(result / "input.png") as prepared:
        assert prepared.mode == "RGBA" and prepared.size == (512, 512)
    validated = subprocess.run([*_validator_command(), str(result / "mesh.glb")], capture_output=True, text=True)
    assert validated.returncode == 0 and ": 0 errors, 0 warnings" in validated.stdout, validated.stdout
    mesh = load_mesh(result / "mesh.glb")
    assert mesh.vertex_colors is not None and mesh.faces.shape[0] > 100
    assert float(mesh.verts.abs().max()) <= 0.87 + 1e-4  # inside TripoSR's box
    (material,) = pygltflib.GLTF2().load(str(result / "mesh.glb")).materials
    assert not material.extensions  # lit (PBR) unless --unlit


def test_timings_name_the_stages_that_ran(image_path, tmp_path, capsys):
    """``Reconstruction.timings``: the stages that ran, in pipeline order, adding up to no more than the call; the
    CLI's ``--timings`` prints them with the time to write the files."""
    import time

    from monorecon.api import RECONSTRUCT_STAGES, ReconstructOptions, load_model, reconstruct_full

    model = load_model(TINY / "model.safetensors", TINY / "config.yaml")
    cases = [
        (ReconstructOptions(mc_resolution=32), ["preprocess", "encode", "carve", "extract", "cleanup", "colour"]),
        (ReconstructOptions(mc_resolution=32, carve=False, remove_floaters=False, project_input=False),
         ["preprocess", "encode", "extract"]),
        (ReconstructOptions(mc_resolution=32, bake_texture=True, texture_resolution=64, project_input=False),
         ["preprocess", "encode", "carve", "extract", "cleanup", "bake"]),
    ]  # fmt: skip
    for options, stages in cases:
        start = time.perf_counter()
        timings = reconstruct_full(image_path, model, options).timings
        elapsed = time.perf_counter() - start
        assert list(timings) == stages and set(stages) <= set(RECONSTRUCT_STAGES)
        assert all(seconds >= 0 for seconds in timings.values()) and sum(timings.values()) <= elapsed
    argv = ["reconstruct", str(image_path), "-o", str(tmp_path), *MODEL_ARGS, "--mc-resolution", "32", "--timings"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    line = out.splitlines()[-1]
    assert line.startswith("  time: preprocess ") and ", write " in line and "(total " in line
    # One image, not --quiet: a progress bar of its stages names each while it runs.
    positions = [err.find(f", {stage}]") for stage in cases[0][1]]
    assert -1 not in positions and positions == sorted(positions) and "6/6 stages" in err, err
    code, out, err = run([*argv, "--quiet"], capsys)  # asked for, the timings print with --quiet too (no bar)
    assert code == 0 and err == "", err
    written, timed = out.splitlines()
    assert written.endswith(" faces)") and timed.startswith("  time: preprocess ")


def test_object_height_and_origin_flags_place_the_mesh(image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path, "--object-height", "0.3", "--origin", "bottom", capsys=capsys)
    assert code == 0, err
    low, high = load_mesh(tmp_path / "thing" / "mesh.glb").bounds.numpy()
    np.testing.assert_allclose([low[1], high[1]], [0.0, 0.3], atol=1e-6)  # 30 cm tall, standing on y = 0
    np.testing.assert_allclose((low + high)[[0, 2]], 0.0, atol=1e-6)
    from monorecon.cli import build_parser
    from monorecon.core.mesh import PLACEMENT_ORIGINS

    reconstruct_parser = build_parser()._subparsers._group_actions[0].choices["reconstruct"]
    (origin,) = [action for action in reconstruct_parser._actions if action.dest == "origin"]
    assert tuple(origin.choices) == PLACEMENT_ORIGINS  # the flag's literal copy (kept out of the fast --help path)


def test_unlit_flag_marks_the_glb_material(image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path / "out", "--unlit", capsys=capsys)
    assert code == 0, err
    (material,) = pygltflib.GLTF2().load(str(tmp_path / "out" / "thing" / "mesh.glb")).materials
    assert material.extensions == {"KHR_materials_unlit": {}}


@pytest.mark.parametrize("mesh_format", ["obj", "ply", "stl"])
def test_unlit_for_a_format_without_an_unlit_material_is_refused_before_work(
    image_path, tmp_path, capsys, monkeypatch, mesh_format
):
    """OBJ, PLY and STL have no unlit material: --unlit is refused in one line, before the model loads, nothing
    written (it was silently ignored)."""
    import monorecon.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(monorecon.api, "load_model", no_model)
    code, _, err = reconstruct([image_path], tmp_path / "out", "--unlit", "--format", mesh_format, capsys=capsys)
    assert code == 2
    assert err.strip() == (
        f"monorecon: error: {mesh_format.upper()} files have no unlit material: "
        "unlit colours apply only to glb and usdz"
    )
    assert not (tmp_path / "out").exists()


def test_no_carve_keeps_the_field_outside_the_silhouette(image_path, tmp_path, capsys):
    """The random tiny model fills the box; carving (default) cuts it to the ellipse's cone, --no-carve does not."""
    widths = {}
    for name, extra in (("carved", ()), ("plain", ("--no-carve",))):
        code, _, err = reconstruct([image_path], tmp_path / name, "--format", "ply", *extra, capsys=capsys)
        assert code == 0, err
        verts = load_mesh(tmp_path / name / "thing" / "mesh.ply").verts
        ndc_x = input_camera(64).transform_points_ndc(verts)[0, :, 0]
        widths[name] = (ndc_x.max() - ndc_x.min()).item()
    # The ellipse is 0.7 of the image high and 0.5 of that wide, framed at the tiny model's foreground ratio 0.85:
    # 0.85 * 0.5 / 0.7 * 2 = 1.21 NDC units wide, plus up to one 32^3 voxel (0.15 NDC at the box's front) each side.
    assert widths["carved"] < 1.21 + 2 * 0.15 + 0.05 and widths["plain"] > 2.5


def test_the_input_colours_the_surface_it_sees(image_path, tmp_path, capsys):
    """The ellipse has one colour: surface that faces the input camera takes it exactly (vertex colours and baked
    texels), unless --no-project-input keeps the random model's own colours (which never match it). The random
    model's mesh is mostly walls seen edge-on or from inside, so only a small share faces the camera."""
    ellipse = torch.from_numpy(object_image()[24, 16, :3])

    def share_of_ellipse_colour(colours: torch.Tensor, tolerance: float) -> float:
        return float(((colours.reshape(-1, 3) - ellipse).abs().max(-1).values < tolerance).float().mean())

    shares = {}
    for name, extra in (("projected", ()), ("model", ("--no-project-input",))):
        for bake in (False, True):
            options = ("--bake-texture", "--texture-resolution", "128", "--target-faces", "1500") if bake else ()
            out = tmp_path / f"{name}{bake}"
            code, _, err = reconstruct([image_path], out, *extra, *options, capsys=capsys)
            assert code == 0, err
            mesh = load_mesh(out / "thing" / "mesh.glb")
            colours = mesh.texture if bake else mesh.vertex_colors
            shares[name, bake] = share_of_ellipse_colour(colours, 3 / 255)
    assert shares["projected", False] > 0.002 and shares["projected", True] > 0.01, shares
    assert shares["model", False] == 0 and shares["model", True] == 0, shares


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_reconstruct_other_formats(fmt, image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path, "--format", fmt, "--target-faces", "500", capsys=capsys)
    assert code == 0, err
    mesh = load_mesh(tmp_path / "thing" / f"mesh.{fmt}")
    assert mesh.vertex_colors is not None
    assert mesh.faces.shape[0] <= 550  # decimated to about --target-faces
    assert_no_temporaries(tmp_path)


def test_bake_texture_glb_is_valid_and_textured(image_path, tmp_path, capsys):
    argv = ["--bake-texture", "--texture-resolution", "128", "--target-faces", "1500"]
    code, _, err = reconstruct([image_path], tmp_path, *argv, capsys=capsys)
    assert code == 0, err
    glb = tmp_path / "thing" / "mesh.glb"
    validated = subprocess.run([*_validator_command(), str(glb)], capture_output=True, text=True)
    assert validated.returncode == 0 and ": 0 errors, 0 warnings" in validated.stdout, validated.stdout
    loaded = trimesh.load(glb, force="mesh")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    image = loaded.visual.material.baseColorTexture
    assert image is not None and image.size == (128, 128)


def test_bake_texture_obj_writes_its_material_and_texture(image_path, tmp_path, capsys):
    argv = ["--format", "obj", "--bake-texture", "--texture-resolution", "64", "--target-faces", "800"]
    code, _, err = reconstruct([image_path], tmp_path, *argv, capsys=capsys)
    assert code == 0, err
    names = sorted(p.name for p in files_under(tmp_path / "thing"))
    assert names == ["input.png", "mesh.mtl", "mesh.obj", "mesh.png", "result.json"]
    mesh = load_mesh(tmp_path / "thing" / "mesh.obj")
    assert mesh.texture is not None and mesh.texture.shape == (64, 64, 3)


def test_usdz_gets_a_baked_texture_and_the_render_command_reads_it(image_path, tmp_path, capsys):
    argv = ["--format", "usdz", "--texture-resolution", "64", "--target-faces", "800"]
    code, _, err = reconstruct([image_path], tmp_path, *argv, capsys=capsys)
    assert code == 0, err
    result = tmp_path / "thing"
    assert sorted(p.name for p in files_under(result)) == ["input.png", "mesh.usdz", "result.json"]
    mesh = load_mesh(result / "mesh.usdz")
    assert mesh.texture is not None and mesh.texture.shape == (64, 64, 3)  # baked without --bake-texture
    code, _, err = run(["render", str(result), "--frames", "2", "--size", "32", "--quiet"], capsys)
    assert code == 0, err
    assert (result / "turntable.mp4").is_file()


def test_render_writes_turntables_and_render_command_reuses_the_result(image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path, "--render", "4", "--render-size", "32", capsys=capsys)
    assert code == 0, err
    result = tmp_path / "thing"
    assert sorted(p.name for p in files_under(result)) == [
        "input.png", "mesh.glb", "result.json", "turntable.gif", "turntable.mp4",
    ]  # fmt: skip
    video = iio.imread(result / "turntable.mp4")
    assert video.shape == (4, 32, 32, 3)
    with Image.open(result / "turntable.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)
    # The front frame (azimuth 0) shows the object: not just the white background.
    assert video[0].min() < 200

    # `monorecon render RESULT` on the written folder: a rasterised turntable of mesh.glb, replacing the files.
    (result / "turntable.mp4").unlink()
    code, _, err = run(["render", str(result), "--frames", "3", "--size", "32", "--quiet"], capsys)
    assert code == 0, err
    assert iio.imread(result / "turntable.mp4").shape == (3, 32, 32, 3)
    with Image.open(result / "turntable.gif") as gif:
        assert gif.n_frames == 3
    assert_no_temporaries(tmp_path)


def html_payload(path: Path) -> dict:
    """The mesh arrays a viewer.html page shows (the JSON passed to viewer.show)."""
    page = path.read_text()
    return json.JSONDecoder().raw_decode(page[page.index("viewer.show(") + len("viewer.show(") :])[0]


def test_html_flag_writes_the_mesh_in_a_viewer_page(image_path, tmp_path, capsys):
    code, _, err = reconstruct([image_path], tmp_path, "--html", capsys=capsys)
    assert code == 0, err
    result = tmp_path / "thing"
    assert sorted(p.name for p in files_under(result)) == ["input.png", "mesh.glb", "result.json", "viewer.html"]
    mesh = load_mesh(result / "mesh.glb")
    payload = html_payload(result / "viewer.html")
    positions = np.frombuffer(base64.b64decode(payload["positions"]), "<f4").reshape(-1, 3)
    assert positions.shape == tuple(mesh.verts.shape)
    np.testing.assert_allclose(np.sort(positions, axis=0), np.sort(mesh.verts.numpy(), axis=0), atol=1e-6)
    assert "<title>thing</title>" in (result / "viewer.html").read_text()

    # `monorecon render RESULT --html` writes the same page for a mesh file, beside it or at OUTPUT.html
    (result / "viewer.html").unlink()
    code, _, err = run(["render", str(result), "--frames", "2", "--size", "16", "--html", "--quiet"], capsys)
    assert code == 0, err
    assert html_payload(result / "viewer.html")["positions"] == payload["positions"]
    code, _, err = run(
        ["render", str(result / "mesh.glb"), "-o", str(tmp_path / "spin"), "--frames", "2", "--size", "16", "--html"],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("spin.*")) == ["spin.gif", "spin.html", "spin.mp4"]
    assert_no_temporaries(tmp_path)


def test_html_for_a_mesh_too_large_fails_in_one_line_and_leaves_nothing(image_path, tmp_path, capsys, monkeypatch):
    from monorecon import viewer

    monkeypatch.setattr(viewer, "VIEWER_MAX_FACES", 10)
    code, _, err = reconstruct([image_path], tmp_path / "out", "--html", capsys=capsys)
    assert_one_line_error(code, err, "too large for the HTML viewer")
    assert files_under(tmp_path / "out") == []  # the mesh and input written before it are removed too


@pytest.mark.parametrize("workers", ["1", "2"])
def test_folder_with_a_corrupt_image_skips_it_and_fails_at_the_end(tmp_path, capsys, workers):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(2):
        save_image(object_image(seed=index), folder / f"good{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "moved.png").symlink_to(tmp_path / "gone.png")  # a broken link is reported too, not left out
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    code, out, err = reconstruct([folder], tmp_path / "out", "--workers", workers, "--format", "ply", capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "broken.png" in lines[0] and "moved.png" in lines[1], err
    assert "2 of 4 inputs failed" in lines[2], err
    assert "Traceback" not in err and out == ""  # --quiet
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["batch.csv", "good0", "good1"]
    assert_no_temporaries(tmp_path / "out")
    # batch.csv: every input in folder order, the failures with their stderr message.
    import csv

    with open(tmp_path / "out" / "batch.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["input"] for row in table] == [str(folder / name) for name in ("broken.png", "good0.png",
                                                                                "good1.png", "moved.png")]  # fmt: skip
    assert [row["status"] for row in table] == ["failed", "ok", "ok", "failed"]
    for row, line in zip([table[0], table[3]], lines[:2], strict=True):
        assert row["mesh"] == row["faces"] == "" and line == f"monorecon: {row['input']}: {row['error']}"
    for row in table[1:3]:
        mesh = trimesh.load(tmp_path / "out" / row["mesh"], process=False)
        assert row["mesh"] == f"{Path(row['input']).stem}/mesh.ply" and int(row["faces"]) == len(mesh.faces)
        assert float(row["seconds"]) > 0 and row["error"] == ""
    # Worker processes (one torch thread each) make the meshes one process makes, up to float rounding.
    from monorecon.api import ReconstructOptions, load_model, reconstruct_full
    from monorecon.preprocess import PreprocessConfig

    tiny = load_model(TINY / "model.safetensors", TINY / "config.yaml")
    options = ReconstructOptions(preprocess=PreprocessConfig(), mc_resolution=32, threshold=1.0)
    for name in ("good0", "good1"):
        written = load_mesh(tmp_path / "out" / name / "mesh.ply")
        expected = reconstruct_full(folder / f"{name}.png", tiny, options).mesh
        assert written.num_faces == expected.num_faces
        torch.testing.assert_close(written.verts, expected.verts, atol=1e-5, rtol=0)


def test_failure_after_writing_removes_that_inputs_outputs(image_path, tmp_path, capsys, monkeypatch):
    """The GIF write fails half-way (disk full) after input.png, mesh.glb and the MP4 were written: all of them go,
    with the temporary GIF and the folder this run created."""
    import imageio.v2

    real_mimwrite = imageio.v2.mimwrite

    def failing_mimwrite(uri, frames, **kwargs):
        if kwargs.get("format") == "GIF":
            Path(uri).write_bytes(b"GIF89a partial")
            raise OSError(28, "No space left on device")
        return real_mimwrite(uri, frames, **kwargs)

    monkeypatch.setattr(imageio.v2, "mimwrite", failing_mimwrite)
    code, _, err = reconstruct([image_path], tmp_path / "out", "--render", "2", "--render-size", "16", capsys=capsys)
    assert_one_line_error(code, err, "thing.png", "No space left on device")
    assert files_under(tmp_path / "out") == []
    assert not (tmp_path / "out" / "thing").exists()


@pytest.mark.parametrize("blocked", ["turntable.gif", "turntable.mp4", "result.json"])
def test_an_output_blocked_by_a_folder_fails_that_input_before_work_and_not_the_batch(
    blocked, image_path, tmp_path, capsys
):
    """A folder where one of an input's files goes (or a file where its folder goes) fails that input alone, before
    its reconstruction, with what would be overwritten named; the other input is written; batch.csv says both."""
    other = save_image(object_image(seed=3), tmp_path / "other.png")
    out = tmp_path / "out"
    (out / "thing" / blocked).mkdir(parents=True)
    (out / "other").parent.mkdir(exist_ok=True)
    code, _, err = reconstruct([image_path, other], out, "--render", "2", "--render-size", "16", capsys=capsys)
    assert code == 2 and f"thing.png: cannot write {out / 'thing' / blocked}: it is a folder" in err, err
    assert "Errno" not in err and "Traceback" not in err
    assert files_under(out / "thing") == [] and (out / "thing" / blocked).is_dir()
    assert {p.name for p in files_under(out / "other")} == {
        "input.png", "mesh.glb", "result.json", "turntable.mp4", "turntable.gif"
    }  # fmt: skip
    rows = (out / "batch.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == "failed" and rows[2].split(",")[1] == "ok"

    (out / "thing" / blocked).rmdir()
    (out / "thing").rmdir()
    (out / "thing").write_text("not a folder")
    code, _, err = reconstruct([image_path], out, capsys=capsys)
    assert_one_line_error(code, err, "thing.png", f"output {out / 'thing'} exists and is not a folder")


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written
# --------------------------------------------------------------------------------------------------------------------
def _zero_size(folder: Path) -> Path:
    (folder / "empty.png").touch()
    return folder / "empty.png"


def _garbage(folder: Path) -> Path:
    (folder / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    return folder / "garbage.jpg"


def _truncated_png(folder: Path) -> Path:
    path = save_image(np.random.default_rng(1).random((64, 64, 4)).astype(np.float32), folder / "cut.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _text_as_png(folder: Path) -> Path:
    (folder / "text.png").write_text("hello")
    return folder / "text.png"


def _transparent(folder: Path) -> Path:
    return save_image(np.zeros((32, 32, 4), dtype=np.float32), folder / "clear.png")


BAD_IMAGES = {
    "zero-size": (_zero_size, "empty"),
    "garbage": (_garbage, "cannot read image"),
    "truncated": (_truncated_png, "cannot read image"),
    "text": (_text_as_png, "cannot read image"),
    "transparent": (_transparent, "no foreground"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image(case, tmp_path, capsys):
    make, message = BAD_IMAGES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    code, _, err = reconstruct([path], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, path.name, message)
    assert files_under(tmp_path / "out") == []


def test_unreadable_image(image_path, tmp_path, capsys, monkeypatch):
    path = tmp_path / "locked.png"
    shutil.copy(image_path, path)
    path.chmod(0)
    if not hasattr(os, "geteuid") or os.geteuid() == 0:  # root reads it anyway: refuse it as the OS would
        original_open = Image.open

        def refusing_open(fp, *args, **kwargs):
            if isinstance(fp, str | os.PathLike) and Path(fp) == path:
                raise PermissionError(13, "Permission denied", str(fp))
            return original_open(fp, *args, **kwargs)

        monkeypatch.setattr(Image, "open", refusing_open)
    code, _, err = reconstruct([path], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, "locked.png")
    assert files_under(tmp_path / "out") == []


def _other_architecture(folder: Path) -> Path:
    save_file({"encoder.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, folder / "other.safetensors")
    return folder / "other.safetensors"


def _truncated_checkpoint(folder: Path) -> Path:
    data = (TINY / "model.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 3])
    return folder / "cut.safetensors"


def _wrong_shapes(folder: Path) -> Path:
    state = load_file(TINY / "model.safetensors")
    key = next(k for k in sorted(state) if k.startswith("decoder.") and k.endswith("weight"))
    state[key] = torch.zeros(3, 3)
    save_file(state, folder / "shapes.safetensors")
    return folder / "shapes.safetensors"


def _torch_pickle_garbage(folder: Path) -> Path:
    (folder / "model.ckpt").write_bytes(b"PK\x03\x04 not a zip archive")
    return folder / "model.ckpt"


def _a_mesh_file(folder: Path) -> Path:
    (folder / "mesh.glb").write_bytes(b"glTF")  # a reconstruct output given as --weights: named, not read
    return folder / "mesh.glb"


BAD_CHECKPOINTS = {
    "other-architecture": (_other_architecture, "is not a TripoSR checkpoint"),
    "truncated": (_truncated_checkpoint, "truncated or corrupt"),
    "wrong-shapes": (_wrong_shapes, "wrong shape"),
    "corrupt-ckpt": (_torch_pickle_garbage, "truncated or corrupt"),
    "missing": (lambda folder: folder / "absent.safetensors", "not found"),
    "a-mesh": (_a_mesh_file, "mesh.glb is not a weights file (a .ckpt, .safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint(case, image_path, tmp_path, capsys):
    make, message = BAD_CHECKPOINTS[case]
    weights = make(tmp_path)
    argv = ["reconstruct", str(image_path), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    code, _, err = run([*argv, "--config", str(TINY / "config.yaml"), *FAST_ARGS], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


BAD_OPTIONS = {
    "mc-zero": (["--mc-resolution", "0"], "--mc-resolution must lie"),
    "mc-huge": (["--mc-resolution", "100000"], "--mc-resolution must lie"),
    "texture-tiny": (["--bake-texture", "--texture-resolution", "8"], "--texture-resolution must lie"),
    "texture-huge": (["--bake-texture", "--texture-resolution", "100000"], "--texture-resolution must lie"),
    "render-negative": (["--render", "-1"], "--render"),
    "render-size": (["--render", "2", "--render-size", "5"], "--render-size"),
    "bake-ply": (["--bake-texture", "--format", "ply"], "PLY"),
    "bake-stl": (["--bake-texture", "--format", "stl"], "STL"),
    "target-faces": (["--target-faces", "0"], "--target-faces must lie"),
    "smooth-negative": (["--smooth", "-1"], "--smooth must lie"),
    "threshold-nan": (["--threshold", "nan"], "--threshold must be positive and finite, got nan"),
    "threshold-zero": (["--threshold", "0"], "--threshold must be positive and finite, got 0.0"),
    "object-height": (["--object-height", "0"], "--object-height must lie in [1e-06, 1000]"),
    "object-height-tiny": (["--object-height", "1e-9"], "--object-height must lie in [1e-06, 1000]"),
    "seed-negative": (["--seed", "-1"], "--seed must lie in [0, 2147483647], got -1"),
    "object-height-nan": (["--object-height", "nan"], "--object-height must lie in [1e-06, 1000]"),
    "foreground-ratio": (["--foreground-ratio", "0"], "--foreground-ratio must lie"),
    "workers-zero": (["--workers", "0"], "--workers must lie in [1, 256]"),
    "device-kind": (["--device", "gpu"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    # No machine here has 65 GPUs: "no CUDA device" without any, "has N CUDA device(s)" with some.
    "device-missing": (["--device", "cuda:64"], "--device 'cuda:64': this machine has"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option(case, image_path, tmp_path, capsys):
    extra, message = BAD_OPTIONS[case]
    code, _, err = reconstruct([image_path], tmp_path / "out", *extra, capsys=capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_bad_paths(image_path, tmp_path, capsys):
    code, _, err = reconstruct([tmp_path / "nowhere.png"], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, "input not found", "nowhere.png")
    (tmp_path / "empty_folder").mkdir()
    code, _, err = reconstruct([tmp_path / "empty_folder"], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, "no images")
    (tmp_path / "a_file").write_text("x")
    code, _, err = reconstruct([image_path], tmp_path / "a_file", capsys=capsys)
    assert_one_line_error(code, err, "not a folder")
    twin = tmp_path / "thing.jpg"
    Image.open(image_path).convert("RGB").save(twin)
    code, _, err = reconstruct([image_path, twin], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, "would both write")
    assert not (tmp_path / "out").exists()


def test_a_bad_matting_model_fails_before_any_image_even_one_that_does_not_need_it(image_path, tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    for model, message in ((tmp_path / "missing.onnx", "matting model not found"),
                           (tmp_path / "junk.onnx", "cannot load matting model")):  # fmt: skip
        code, _, err = reconstruct([image_path], tmp_path / "out", "--matting-model", str(model), capsys=capsys)
        assert_one_line_error(code, err, message, model.name)
        assert not (tmp_path / "out").exists()


def test_render_command_bad_input(tmp_path, capsys):
    code, _, err = run(["render", str(tmp_path / "missing.glb"), "--quiet"], capsys)
    assert_one_line_error(code, err, "not found")
    code, _, err = run(["render", str(tmp_path), "--quiet"], capsys)
    assert_one_line_error(code, err, "no mesh")
    box = trimesh.creation.box()
    box.export(tmp_path / "mesh.ply")
    for extra, message in (
        (["--fps", "0"], "fps"), (["--frames", "0"], "--frames"), (["--size", "4"], "--size"),
        (["--distance", "0"], "distance must be positive"), (["--elevation", "90"], "elevation must lie"),
    ):  # fmt: skip
        code, _, err = run(["render", str(tmp_path), "--quiet", "--size", "16", *extra], capsys)
        assert_one_line_error(code, err, message)
    assert not list(tmp_path.glob("turntable*")) and not list(tmp_path.glob(".*"))


def test_console_script_reports_a_corrupt_checkpoint_in_one_line(image_path, tmp_path):
    """The installed ``monorecon`` entry point in a fresh process: real stderr (warnings included), exit status."""
    script = Path(sys.executable).with_name("monorecon")
    if not script.is_file():
        pytest.skip("the monorecon console script is not installed")
    weights = _truncated_checkpoint(tmp_path)
    argv = [str(script), "reconstruct", str(image_path), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    argv += ["--config", str(TINY / "config.yaml"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(result.returncode, result.stderr, "truncated or corrupt")
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_preprocessing_uses_the_models_framing_unless_given(image_path):
    from monorecon.api import ReconstructOptions, load_model, model_foreground_ratio, prepare_input, reconstruct_full
    from monorecon.preprocess import PreprocessConfig

    model = load_model()
    ratio = model_foreground_ratio(model)
    assert ratio == model.config.foreground_ratio != 0.85  # the bundled model was trained on a tighter framing
    default = reconstruct_full(image_path, model, ReconstructOptions(mc_resolution=64)).prepared
    np.testing.assert_array_equal(default.rgb, prepare_input(image_path, PreprocessConfig(foreground_ratio=ratio)).rgb)
    for wanted in (0.5, 0.85):  # an explicit ratio wins; measured on the prepared alpha's bounding box
        options = ReconstructOptions(mc_resolution=64, preprocess=PreprocessConfig(foreground_ratio=wanted))
        alpha = reconstruct_full(image_path, model, options).prepared.alpha > 0.5
        rows, cols = np.nonzero(alpha)
        side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert abs(side / alpha.shape[0] - wanted) < 0.02


def test_device_cpu_gives_the_same_mesh_as_the_api_on_the_cpu(image_path, tmp_path, capsys):
    from monorecon.api import ReconstructOptions, load_model, reconstruct_full
    from monorecon.preprocess import PreprocessConfig

    code, _, err = reconstruct([image_path], tmp_path / "out", "--device", "cpu", "--format", "ply", capsys=capsys)
    assert code == 0, err
    written = load_mesh(tmp_path / "out" / "thing" / "mesh.ply")
    model = load_model(TINY / "model.safetensors", TINY / "config.yaml", device="cpu")
    options = ReconstructOptions(preprocess=PreprocessConfig(), mc_resolution=32, threshold=1.0)
    expected = reconstruct_full(image_path, model, options).mesh
    assert written.num_faces == expected.num_faces
    torch.testing.assert_close(written.verts, expected.verts, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reconstruct_on_cuda_matches_the_cpu(image_path):
    """Carving, the fill, extraction, photo colours and texture baking with the model on the GPU."""
    from scipy.spatial import cKDTree

    from monorecon.api import ReconstructOptions, load_model, reconstruct_full
    from monorecon.eval.metrics import chamfer_and_fscore

    results = {}
    for device in ("cpu", "cuda"):
        model = load_model(TINY / "model.safetensors", TINY / "config.yaml", device=device)
        assert model.device.type == device
        for bake in (False, True):
            options = ReconstructOptions(mc_resolution=48, threshold=1.0, fill=True, bake_texture=bake)
            result = reconstruct_full(image_path, model, options)
            assert result.scene_code.device.type == device and result.mesh.verts.device.type == "cpu"
            results[device, bake] = result.mesh
    cpu, cuda = results["cpu", False], results["cuda", False]
    verts = [mesh.verts.double().numpy() for mesh in (cpu, cuda)]
    assert chamfer_and_fscore(*verts, thresholds=(0.005,))["fscore@0.005"] > 0.99
    nearest = cKDTree(verts[0]).query(verts[1])[1]
    assert (cuda.vertex_colors - cpu.vertex_colors[nearest]).abs().mean() < 0.01
    texture = results["cuda", True].texture  # the model's colours came back from the GPU to the baker
    assert texture is not None and texture.device.type == "cpu" and 0 <= texture.min() <= texture.max() <= 1


def _project(points: np.ndarray, camera: dict) -> np.ndarray:
    """(N, 3) world points -> (N, 2) pixel positions by the pinhole model ``result.json`` documents (independent of
    monorecon's camera classes): camera space ``(x, y, z) = inv(c2w) p``, ``u = cx + fx x / d``, ``v = cy - fy y / d``
    with ``d = -z``."""
    w2c = np.linalg.inv(np.asarray(camera["c2w"]))
    local = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -local[:, 2]
    assert (depth > 0).all()
    k = np.asarray(camera["K"])
    return np.stack([k[0, 2] + k[0, 0] * local[:, 0] / depth, k[1, 2] - k[1, 1] * local[:, 1] / depth], axis=-1)


@pytest.mark.parametrize("placement", [(), ("--object-height", "0.3", "--origin", "bottom")])
def test_result_json_cameras_put_the_mesh_on_the_input_and_on_the_photo(tmp_path, capsys, placement):
    """A dark disc off-centre in a wide white photo: the carved mesh (the random tiny model fills the box; carving
    cuts it to the disc's cone) projected by result.json's cameras lands on the disc in the photo and on the alpha of
    input.png, also after --object-height / --origin moved the mesh (the cameras move with it)."""
    height, width, centre, radius = 160, 240, np.array([170.0, 70.0]), 30.0
    rows, cols = np.mgrid[:height, :width] + 0.5
    disc = np.hypot(cols - centre[0], rows - centre[1]) < radius
    photo = np.where(disc[..., None], 0.2, 1.0).astype(np.float32) * np.ones(3, np.float32)
    path = save_image(photo, tmp_path / "disc.png")
    code, _, err = reconstruct([path], tmp_path / "out", "--format", "ply", "--mc-resolution", "64", *placement,
                               capsys=capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "disc" / "result.json").read_text())
    verts = np.asarray(trimesh.load(tmp_path / "out" / "disc" / "mesh.ply", process=False).vertices, dtype=np.float64)
    assert record["mesh"]["vertices"] == len(verts) and record["mesh_file"] == "mesh.ply"
    np.testing.assert_allclose(record["mesh"]["bounds"], [verts.min(0), verts.max(0)], atol=1e-5)
    if placement:
        assert record["mesh"]["bounds"][0][1] == pytest.approx(0.0, abs=1e-6)
        assert verts[:, 1].max() == pytest.approx(0.3, abs=1e-5)

    photo_camera = record["photo_camera"]
    assert (photo_camera["width"], photo_camera["height"]) == (width, height)
    assert "world +Y up" in photo_camera["convention"] and "looks down -Z" in record["camera"]["convention"]
    offset = np.hypot(*(_project(verts, photo_camera) - centre).T)
    cell = 1.74 / 64 * photo_camera["K"][0][0] / 1.9  # a cell of the 64^3 grid, in photo pixels at the origin
    assert np.quantile(offset, 0.99) < radius + 2 * cell and offset.max() < radius + 3 * cell
    assert np.quantile(offset, 0.99) > radius - cell  # the mesh reaches the disc's outline all round
    angles = np.arctan2(*(_project(verts, photo_camera) - centre).T[::-1])
    assert np.histogram(angles, bins=8, range=(-np.pi, np.pi))[0].min() > 0

    camera = record["camera"]
    alpha = np.asarray(Image.open(tmp_path / "out" / "disc" / "input.png"))[..., 3] > 127
    assert (camera["width"], camera["height"]) == alpha.shape[::-1] and camera["fov_y_deg"] == pytest.approx(40.0)
    rows, cols = np.nonzero(alpha)  # the disc as input.png shows it
    offset = np.hypot(*(_project(verts, camera) - [cols.mean() + 0.5, rows.mean() + 0.5]).T)
    disc_radius, cell = np.sqrt(alpha.sum() / np.pi), 1.74 / 64 * camera["K"][0][0] / 1.9
    assert np.quantile(offset, 0.99) < disc_radius + 2 * cell and offset.max() < disc_radius + 3 * cell
    assert np.quantile(offset, 0.99) > disc_radius - cell
    # The options that ran, the model's own settings filled in (the tiny model's config: no fill, framing 0.85).
    assert record["options"]["threshold"] == 1.0 and record["options"]["fill"] is False
    assert record["options"]["preprocess"]["foreground_ratio"] == pytest.approx(0.85)
    assert record["model"]["weights"] == str(TINY / "model.safetensors") and record["input"] == str(path)


OWN_MODELS = '''
import torch
import trimesh

from monorecon.core.extract import extract_isosurface
from monorecon.core.mesh import Mesh


class BallModel:
    """A ReconstructionModel whose field is a grey ball of radius 0.4; records the levels it meshes at."""

    levels = []

    def encode(self, images):
        return torch.zeros(images.shape[0], 3)

    def query(self, scene_code, points):
        density = torch.sigmoid((0.4 - points.norm(dim=-1, keepdim=True)) * 40)
        return density, torch.full((*points.shape[:-1], 3), 0.5)

    def extract_mesh(self, scene_code, resolution, threshold, method="dense", carve=None):
        BallModel.levels.append(threshold)

        def density(points):
            values = self.query(None, points)[0][:, 0]
            return values if carve is None else values * carve(points)

        mesh = extract_isosurface(density, resolution, threshold, bounds=0.87)
        return Mesh(mesh.verts, mesh.faces, vertex_colors=torch.full_like(mesh.verts, 0.5))


def ball(rgba):
    """A method rgba -> Mesh: a sphere of radius 0.4 whatever the input."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    return Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))


def not_a_model(rgba):
    return None


class FlakyModel(BallModel):
    """The ball, but its first encoding fails as a model's own bug would."""

    calls = 0

    def encode(self, images):
        FlakyModel.calls += 1
        if FlakyModel.calls == 1:
            raise RuntimeError("the first image broke the model")
        return super().encode(images)
'''


def test_reconstruct_and_serve_run_a_model_named_module_colon_name(image_path, tmp_path, monkeypatch, capsys):
    """``--model module:name`` runs a model of one's own (imported from the current folder) through ``reconstruct``:
    its ball (radius 0.4, level 0.5) carved to the input's cone; the weights options are refused beside it."""
    (tmp_path / "mymodels.py").write_text(OWN_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    bar = np.zeros((64, 64, 4), np.float32)
    bar[10:54, 29:35] = (0.8, 0.3, 0.2, 1.0)  # a narrow upright bar: its cone cuts the ball to a thin slab in x
    save_image(bar, tmp_path / "thing.png")
    argv = ["reconstruct", str(tmp_path / "thing.png"), "-o", "out", "--model", "mymodels:BallModel",
            "--mc-resolution", "32", "--threshold", "0.5", "--quiet"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "thing" / "result.json").read_text())
    assert record["model"] == {"weights": None, "config": None, "module": "mymodels:BallModel"}
    verts = np.asarray(trimesh.load(tmp_path / "out" / "thing" / "mesh.glb", force="mesh").vertices)
    assert np.linalg.norm(verts, axis=1).max() < 0.4 + 1.74 / 31  # inside the ball (plus a grid cell)
    assert np.ptp(verts[:, 0]) < 0.3 and np.ptp(verts[:, 1]) > 0.7  # carved to the bar's cone: thin in x only
    for extra, needle in [
        (["--model", "mymodels:BallModel", *MODEL_ARGS], "--weights, --config: for weights, not for --model"),
        (["--model", "mymodels:not_a_model"], "is not a model"),
        (["--model", "mymodels"], "module:name"),
    ]:
        code, _, err = run(["reconstruct", str(image_path), "-o", "bad", *extra], capsys)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "bad").exists()

    from monorecon import server

    served = {}
    monkeypatch.setattr(server, "run_server", lambda **kwargs: served.update(kwargs))
    assert run(["serve", "--model", "mymodels:BallModel"], capsys)[0] == 0
    assert type(served["model"]).__name__ == "BallModel" and served["weights"] is None


def test_a_models_own_failure_on_one_input_does_not_stop_the_folder(tmp_path, monkeypatch, capsys):
    """A RuntimeError from a ``--model`` class on the first of two images: that input fails in one line (the error's
    type named), the second is reconstructed, batch.csv is written and the exit code is 2."""
    (tmp_path / "mymodels.py").write_text(OWN_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    bar = np.zeros((64, 64, 4), np.float32)
    bar[10:54, 20:44] = (0.8, 0.3, 0.2, 1.0)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        save_image(bar, tmp_path / "in" / f"{name}.png")
    argv = ["reconstruct", "in", "-o", "out", "--model", "mymodels:FlakyModel", "--mc-resolution", "24",
            "--threshold", "0.5", "--quiet"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert "a.png: RuntimeError: the first image broke the model" in err
    assert not (tmp_path / "out" / "a").exists() and (tmp_path / "out" / "b" / "mesh.glb").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "batch.csv")))
    assert [row["input"].endswith(name) for row, name in zip(rows, ("a.png", "b.png"), strict=True)] == [True, True]


def test_a_corrupt_image_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A corrupt image is decoded, and refused, before the (slow) model loading, as a missing file is: one input
    loads no model at all."""
    import monorecon.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(monorecon.api, "load_model", no_model)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, _, err = reconstruct([bad], tmp_path / "out", capsys=capsys)
    assert_one_line_error(code, err, "bad.png", "cannot read image")
    assert files_under(tmp_path / "out") == []


USDZ_SIZE_WARNING = "USDZ is in metres: without --object-height the object is"


@pytest.mark.parametrize("height", [None, "0.12"])
def test_usdz_without_object_height_warns_of_its_size_in_metres(image_path, tmp_path, capsys, monkeypatch, height):
    """A reconstruction is about 1 unit tall, which AR viewers read as 1 m: said in one line, naming the option,
    before the model loads (stopped here at the loading); not said once the height is given."""
    import monorecon.api
    from monorecon.cli.common import CommandError

    def stop(*args, **kwargs):
        raise CommandError("stopped at the model")

    monkeypatch.setattr(monorecon.api, "load_model", stop)
    extra = ["--format", "usdz", *([] if height is None else ["--object-height", height])]
    code, _, err = reconstruct([image_path], tmp_path / "out", *extra, capsys=capsys)
    assert code == 2 and err.strip().endswith("monorecon: error: stopped at the model"), err
    lines = [line for line in err.splitlines() if USDZ_SIZE_WARNING in line]
    if height is None:
        assert lines == [f"monorecon: warning: {USDZ_SIZE_WARNING} about 1 m tall in AR; give its real height, "
                         "e.g. --object-height 0.12 for a mug"], err  # fmt: skip
    else:
        assert lines == []


def test_convert_to_usdz_without_object_height_warns_with_the_meshs_height(tmp_path, capsys):
    from monorecon.core.mesh import Mesh
    from monorecon.io import save_mesh

    box = trimesh.creation.box((0.5, 2.0, 0.5))
    mesh = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    source = save_mesh(mesh, tmp_path / "box.ply")
    assert cli.main(["convert", str(source), str(tmp_path / "box.usdz"), "--quiet"]) == 0
    assert f"{USDZ_SIZE_WARNING} 2 m tall in AR" in capsys.readouterr().err
    assert cli.main(["convert", str(source), str(tmp_path / "box.usdz"), "--quiet", "--object-height", "0.3"]) == 0
    assert USDZ_SIZE_WARNING not in capsys.readouterr().err
    assert cli.main(["convert", str(source), str(tmp_path / "box.glb"), "--quiet"]) == 0
    assert USDZ_SIZE_WARNING not in capsys.readouterr().err


def test_result_json_records_every_stage_the_timings_print(image_path, tmp_path, capsys):
    """result.json's timings were those before the files were written: no write, turntable nor html, which
    --timings prints. Now the same stages and seconds as the printed line."""
    extra = ["--render", "2", "--render-size", "16", "--html", "--timings"]
    code, out, err = reconstruct([image_path], tmp_path / "out", *extra, capsys=capsys)
    assert code == 0, err
    timings = json.loads((tmp_path / "out" / "thing" / "result.json").read_text())["timings"]
    assert list(timings)[-3:] == ["write", "turntable", "html"]
    printed = out.splitlines()[-1].removeprefix("  time: ").split(" (total ")[0]
    assert printed == ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
    assert_no_temporaries(tmp_path / "out")


def shadowed_box(size: int = 64) -> np.ndarray:
    """(size, size, 3): a blue box 21 wide and 33 tall standing on a soft grey contact shadow (0.8 at its darkest,
    wider than the box), on a light grey (0.96) background: a product photo."""
    rows, cols = np.mgrid[:size, :size] + 0.5
    image = np.full((size, size, 3), 0.96, np.float32)
    shade = np.clip(1 - np.hypot((cols - 32) / 26, (rows - 45) / 6), 0, 1)
    image -= 0.16 * shade[..., None]
    image[12:45, 22:43] = (0.1, 0.3, 0.7)
    return image


def test_border_tolerance_leaves_out_a_soft_shadow(tmp_path, capsys):
    """A soft contact shadow is farther than 0.1 from the background's colour: the default mask takes it in (a plinth
    under the mesh); --border-tolerance 0.3 leaves it out and keeps the box whole, as input.png shows (its alpha's
    box has the photo's box's shape, 21 x 33)."""
    photo = save_image(shadowed_box(), tmp_path / "box.png")
    aspects = {}
    for tolerance in (None, "0.3"):
        out = tmp_path / f"out{tolerance}"
        code, _, err = reconstruct([photo], out, *([] if tolerance is None else ["--border-tolerance", tolerance]),
                                   capsys=capsys)  # fmt: skip
        assert code == 0, err
        rows, cols = np.nonzero(iio.imread(out / "box" / "input.png")[..., 3] > 127)
        aspects[tolerance] = (np.ptp(cols) + 1) / (np.ptp(rows) + 1)
        options = json.loads((out / "box" / "result.json").read_text())["options"]["preprocess"]
        assert options["border_tolerance"] == (0.1 if tolerance is None else 0.3)
    assert aspects["0.3"] == pytest.approx(21 / 33, abs=0.03)
    assert aspects[None] > 0.85  # the shadow's width: 34 x 37 pixels


def test_border_tolerance_flag_is_documented_and_checked(image_path, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["reconstruct", "--help"])
    assert "--border-tolerance D" in (help_text := " ".join(capsys.readouterr().out.split()))
    assert "(RGB in 0..1; default 0.1)" in help_text and "soft contact shadow" in help_text
    code, _, err = reconstruct([image_path], tmp_path / "out", "--border-tolerance", "2", capsys=capsys)
    assert_one_line_error(code, err, "--border-tolerance must lie in")
    code, _, err = reconstruct([image_path], tmp_path / "out", "--border-tolerance", "0.3", "--no-remove-bg",
                               capsys=capsys)  # fmt: skip
    assert_one_line_error(code, err, "--border-tolerance is of the plain-background removal")
