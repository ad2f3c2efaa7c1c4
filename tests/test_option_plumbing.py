"""Options reach the pipeline: each flag of ``reconstruct`` / ``render`` turns into what the API and the renderer
receive, and an option left at its default (``fill`` None) takes the model's own setting.

The flag tests spy on the API functions the CLI calls (no model is loaded) and compare what they received with the
values the flags spell out; the others run the tiny random-weights TripoSR of tests/data or render small meshes, and
check what comes out against what the option means (a filled silhouette has more surface, a frame rate is a frame
duration, a camera above a sphere sees its top).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml
from PIL import Image

from monorecon import api
from monorecon.api import ReconstructOptions, input_view_weight, load_model, prepare_input
from monorecon.core.carving import SilhouetteHull
from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh, save_mesh
from monorecon.io.images import save_image
from monorecon.preprocess import PreprocessConfig
from test_reconstruct_cli import MODEL_ARGS, TINY, assert_one_line_error, object_image, run


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    return save_image(object_image(), tmp_path_factory.mktemp("inputs") / "thing.png")


# --------------------------------------------------------------------------------------------------------------------
# fill=None: the model's own setting (renderer.silhouette_fill of its config)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fill_config(tmp_path_factory) -> Path:
    """The tiny model's config.yaml with ``renderer.silhouette_fill: true`` (the same weights)."""
    config = yaml.safe_load((TINY / "config.yaml").read_text())
    config["renderer"]["silhouette_fill"] = True
    path = tmp_path_factory.mktemp("fill_model") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("model_fills", "fill", "filled"),
    [(True, None, True), (True, True, True), (True, False, False),
     (False, None, False), (False, True, True), (False, False, False)],
)  # fmt: skip
def test_input_view_weight_fills_as_the_model_says_unless_told(
    fill_config, image_path, monkeypatch, model_fills, fill, filled
):
    """fill None follows the config's silhouette_fill, True / False override it; the fill is at the given level."""
    levels = []

    def record_fill(hull, density, level, box_radius, **options):
        levels.append(level)
        return "filled hull"

    monkeypatch.setattr(SilhouetteHull, "filled", record_fill)
    model = load_model(TINY / "model.safetensors", fill_config if model_fills else TINY / "config.yaml")
    assert model.config.renderer.silhouette_fill is model_fills
    prepared = prepare_input(image_path, PreprocessConfig(foreground_ratio=0.85))
    with torch.inference_mode():
        code = model.encode(torch.from_numpy(prepared.rgb)[None])
        weight = input_view_weight(model, code, prepared.alpha, 7.5, fill)
    if filled:
        assert weight == "filled hull" and levels == [7.5]
    else:
        assert isinstance(weight, SilhouetteHull) and levels == []


def test_a_model_that_fills_fills_by_default_and_no_fill_turns_it_off(fill_config, image_path, tmp_path, capsys):
    """At level 60 the tiny model's carved field barely reaches the surface: filled (its config says so, nothing on
    the command line) the silhouette gets almost twice the surface (780 faces, 436 without); --no-fill gives the
    mesh of the same weights under a config that does not fill."""
    faces = {}
    for name, config, extra in (("default", fill_config, []), ("no-fill", fill_config, ["--no-fill"]),
                                ("plain", TINY / "config.yaml", [])):  # fmt: skip
        argv = ["reconstruct", str(image_path), "-o", str(tmp_path / name)]
        argv += ["--weights", str(TINY / "model.safetensors"), "--config", str(config), "--format", "ply"]
        argv += ["--mc-resolution", "32", "--threshold", "60", "--quiet"]
        argv += ["--foreground-ratio", "0.6"]  # a smaller silhouette: fewer rays to fill
        code, _, err = run([*argv, *extra], capsys)
        assert code == 0, err
        mesh = load_mesh(tmp_path / name / "thing" / "mesh.ply")
        faces[name] = mesh.num_faces
        if name == "plain":
            unfilled = load_mesh(tmp_path / "no-fill" / "thing" / "mesh.ply")
            torch.testing.assert_close(mesh.verts, unfilled.verts, atol=1e-6, rtol=0)
    assert faces["default"] > 1.5 * faces["no-fill"] > 0, faces
    assert faces["plain"] == faces["no-fill"], faces


# --------------------------------------------------------------------------------------------------------------------
# reconstruct: each flag -> the ReconstructOptions / load_model arguments (spied: no model is loaded)
# --------------------------------------------------------------------------------------------------------------------
#: What ``reconstruct IMAGE -o OUT --quiet`` asks the API for (the CLI's documented defaults).
CLI_DEFAULTS = ReconstructOptions(
    preprocess=PreprocessConfig(remove_background=True, foreground_ratio=None, matting_model=None),
    mc_resolution=256, threshold=None, extraction="coarse_to_fine", bake_texture=False, texture_resolution=1024,
    remove_floaters=True, carve=True, fill=None, project_input=True, target_faces=None, smooth_iterations=0,
    object_height=None, origin="model", seed=0, progress=False,
)  # fmt: skip

FLAG_OPTIONS = {
    "none": ([], {}),
    "no-fill": (["--no-fill"], {"fill": False}),
    "no-remove-bg": (["--no-remove-bg"], {"preprocess": PreprocessConfig(remove_background=False)}),
    "keep-floaters": (["--keep-floaters"], {"remove_floaters": False}),
    "extraction-dense": (["--extraction", "dense"], {"extraction": "dense"}),
    "seed": (["--seed", "7"], {"seed": 7}),
    "no-carve": (["--no-carve"], {"carve": False}),
    "no-project-input": (["--no-project-input"], {"project_input": False}),
    "threshold": (["--threshold", "2.5"], {"threshold": 2.5}),
    "mc-resolution": (["--mc-resolution", "40"], {"mc_resolution": 40}),
    "foreground-ratio": (["--foreground-ratio", "0.6"], {"preprocess": PreprocessConfig(foreground_ratio=0.6)}),
    "border-tolerance": (["--border-tolerance", "0.3"], {"preprocess": PreprocessConfig(border_tolerance=0.3)}),
    "bake-texture": (
        ["--bake-texture", "--texture-resolution", "99"],
        {"bake_texture": True, "texture_resolution": 99},
    ),
    "usdz-bakes": (["--format", "usdz", "--object-height", "0.3"], {"bake_texture": True, "object_height": 0.3}),
    "target-faces": (["--target-faces", "900"], {"target_faces": 900}),
    "smooth": (["--smooth", "12"], {"smooth_iterations": 12}),
    "placement": (["--object-height", "0.3", "--origin", "bottom"], {"object_height": 0.3, "origin": "bottom"}),
}


@pytest.fixture
def spy(monkeypatch) -> dict:
    """Replaces the API's load_model (records its arguments, returns a token) and reconstruct_full (records the
    options, then fails the input: the CLI reports it and exits 2)."""
    calls: dict = {"options": []}

    def fake_load_model(weights=None, config=None, device="cpu", dtype=torch.float32):
        calls["load_model"] = {"weights": weights, "config": config, "device": device, "dtype": dtype}
        return "the model"

    def fake_reconstruct_full(image, model, options=None):
        assert model == "the model"
        calls["options"].append(options)
        raise ValueError("stopped by the spy")

    monkeypatch.setattr(api, "load_model", fake_load_model)
    monkeypatch.setattr(api, "reconstruct_full", fake_reconstruct_full)
    return calls


@pytest.mark.parametrize("case", sorted(FLAG_OPTIONS))
def test_reconstruct_flags_reach_the_options(case, spy, image_path, tmp_path, capsys):
    extra, changes = FLAG_OPTIONS[case]
    code, _, err = run(["reconstruct", str(image_path), "-o", str(tmp_path / "out"), "--quiet", *extra], capsys)
    assert_one_line_error(code, err, "stopped by the spy")
    (options,) = spy["options"]
    assert options == dataclasses.replace(CLI_DEFAULTS, **changes)


def test_weights_config_device_and_dtype_reach_load_model(spy, image_path, tmp_path, capsys):
    argv = ["reconstruct", str(image_path), "-o", str(tmp_path / "out"), "--quiet", *MODEL_ARGS, "--device", "cpu"]
    expected = {"weights": str(TINY / "model.safetensors"), "config": TINY / "config.yaml"}
    expected["device"] = torch.device("cpu")
    for extra, dtype in (([], torch.float32), (["--dtype", "bfloat16"], torch.bfloat16)):
        code, _, err = run([*argv, *extra], capsys)
        assert_one_line_error(code, err, "stopped by the spy")
        assert spy["load_model"] == {**expected, "dtype": dtype}
    # One image and no --quiet: a progress bar of its stages (two images get a bar of images instead).
    code, _, err = run(["reconstruct", str(image_path), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and spy["options"][-1] == dataclasses.replace(CLI_DEFAULTS, progress=True)


def test_bfloat16_model_runs_the_encoder_under_autocast(image_path, tmp_path, capsys, monkeypatch):
    """End to end: --dtype bfloat16 loads the model with a bfloat16 autocast and still writes a mesh."""
    loaded, real_load_model = [], api.load_model

    def recording_load_model(*args, **kwargs):
        loaded.append(real_load_model(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(api, "load_model", recording_load_model)
    argv = ["reconstruct", str(image_path), "-o", str(tmp_path), *MODEL_ARGS, "--mc-resolution", "24", "--threshold"]
    code, _, err = run([*argv, "1", "--quiet", "--format", "ply", "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    (model,) = loaded
    assert model.autocast_dtype == torch.bfloat16 and load_mesh(tmp_path / "thing" / "mesh.ply").num_faces > 0


# --------------------------------------------------------------------------------------------------------------------
# render: --fps, --no-fit, --elevation in the written turntables
# --------------------------------------------------------------------------------------------------------------------
def _capped_sphere(offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Mesh:
    """A sphere of radius 0.5, red on its top cap (y > 0.3, within 53 deg of +Y) and blue elsewhere."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    colours = torch.tensor([0.1, 0.2, 0.9]).repeat(len(verts), 1)
    colours[verts[:, 1] > 0.3] = torch.tensor([0.9, 0.1, 0.1])
    return Mesh(verts + torch.tensor(offset), torch.tensor(sphere.faces), vertex_colors=colours)


def _gif_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The GIF's RGB frames and their durations in milliseconds."""
    frames, durations = [], []
    with Image.open(path) as gif:
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
    return frames, durations


def _render(mesh_path: Path, stem: Path, capsys, *extra: str) -> list[np.ndarray]:
    code, _, err = run(["render", str(mesh_path), "-o", str(stem), "--size", "48", "--quiet", *extra], capsys)
    assert code == 0, err
    return _gif_frames(stem.with_suffix(".gif"))[0]


def test_render_fps_sets_the_frame_duration_of_both_files(tmp_path, capsys):
    import imageio.v2 as imageio

    mesh_path = save_mesh(_capped_sphere(), tmp_path / "ball.ply")
    for fps, duration in ((5, 200), (20, 50)):
        stem = tmp_path / f"spin{fps}"
        _render(mesh_path, stem, capsys, "--frames", "3", "--fps", str(fps))
        assert _gif_frames(stem.with_suffix(".gif"))[1] == [duration] * 3
        assert imageio.get_reader(stem.with_suffix(".mp4"), format="FFMPEG").get_meta_data()["fps"] == fps


def test_render_no_fit_leaves_a_far_mesh_out_of_view(tmp_path, capsys):
    """A ball 100 units from the origin: framed by default, out of view where it is (--no-fit)."""
    mesh_path = save_mesh(_capped_sphere(offset=(100.0, 0.0, 0.0)), tmp_path / "far.ply")
    (fitted,) = _render(mesh_path, tmp_path / "fitted", capsys, "--frames", "1")
    (unfitted,) = _render(mesh_path, tmp_path / "unfitted", capsys, "--frames", "1", "--no-fit")
    assert (unfitted >= 250).all()
    assert (fitted < 200).any(axis=-1).mean() > 0.3  # the ball covers much of the frame


def test_render_elevation_moves_the_camera_above_or_below(tmp_path, capsys):
    """From 60 deg above, the red top cap of the ball faces the camera; from 60 deg below it is hidden (the camera
    sees points within acos(0.6 / 1.9) = 72 deg of its direction: polar angles beyond 78 deg, the cap ends at 53)."""
    mesh_path = save_mesh(_capped_sphere(), tmp_path / "ball.ply")

    def red_share(frame: np.ndarray) -> float:
        red = (frame[..., 0] > 2 * frame[..., 2]) & (frame[..., 0] > 60)
        blue = (frame[..., 2] > 2 * frame[..., 0]) & (frame[..., 2] > 60)
        return red.sum() / (red.sum() + blue.sum())

    (above,) = _render(mesh_path, tmp_path / "above", capsys, "--frames", "1", "--elevation", "60")
    (below,) = _render(mesh_path, tmp_path / "below", capsys, "--frames", "1", "--elevation", "-60")
    assert red_share(above) > 0.4 and red_share(below) == 0, (red_share(above), red_share(below))


def test_placement_moves_the_finished_mesh_and_keeps_its_colours(image_path):
    """object_height / origin scale and move the mesh after the input's colours are projected in model space: the
    placed mesh is a similarity of the unplaced one, vertex for vertex, with the same colours (placed first, the
    projection would see a surface the input camera does not)."""
    model = load_model(TINY / "model.safetensors", TINY / "config.yaml")
    plain = api.reconstruct(image_path, model, mc_resolution=24, progress=False)
    placed = api.reconstruct(image_path, model, mc_resolution=24, progress=False, object_height=3.0, origin="bottom")
    assert plain.num_verts == placed.num_verts > 100
    torch.testing.assert_close(placed.vertex_colors, plain.vertex_colors)
    scale = 3.0 / float(plain.verts[:, 1].max() - plain.verts[:, 1].min())
    low, high = plain.verts.min(0).values, plain.verts.max(0).values
    shift = torch.stack([-(low[0] + high[0]) / 2, -low[1], -(low[2] + high[2]) / 2]) * scale
    torch.testing.assert_close(placed.verts, plain.verts * scale + shift, atol=1e-5, rtol=1e-5)
