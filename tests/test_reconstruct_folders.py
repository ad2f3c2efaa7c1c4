"""``monorecon reconstruct`` and its output folders: names that cannot be folders, a failed rerun that must leave the
earlier result, a rerun in another format, and option checks made before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from monorecon.io.images import save_image
from monorecon.preprocess import PreprocessConfig, preprocess_image
from test_reconstruct_cli import FAST_ARGS, assert_one_line_error, object_image, reconstruct, run


@pytest.mark.parametrize("name", ["...png", "..png", "batch.csv.png"])
def test_inputs_whose_names_cannot_name_their_folder_are_refused(tmp_path, capsys, name):
    """``...png`` wrote into OUTPUT/.. (over its files), ``..png`` into OUTPUT itself, ``batch.csv.png`` failed the
    batch at its end, after all the work."""
    folder = tmp_path / "in"
    folder.mkdir()
    save_image(object_image(), folder / name)
    save_image(object_image(seed=1), folder / "other.png")
    code, _, err = reconstruct([folder], tmp_path / "out" / "sub", capsys=capsys)
    assert_one_line_error(code, err, "cannot name its output folder")
    assert not (tmp_path / "out").exists()


def test_a_failed_rerun_leaves_the_earlier_result(tmp_path, capsys, monkeypatch):
    image = save_image(object_image(), tmp_path / "thing.png")
    assert reconstruct([image], tmp_path / "out", capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "thing").iterdir()}

    import monorecon.viewer

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(monorecon.viewer, "save_viewer_html", failing)
    code, _, err = reconstruct([image], tmp_path / "out", "--html", "--seed", "1", capsys=capsys)
    assert code == 2 and "disk full" in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "out" / "thing").iterdir()}
    assert after == before  # it was deleted: the new files had replaced it, then were removed
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["thing"]  # no staging folder left


def test_a_rerun_in_another_format_replaces_the_result(tmp_path, capsys):
    image = save_image(object_image(), tmp_path / "thing.png")
    extras = ["--html", "--render", "2", "--render-size", "16"]
    assert reconstruct([image], tmp_path / "out", *extras, capsys=capsys)[0] == 0
    assert reconstruct([image], tmp_path / "out", "--format", "ply", capsys=capsys)[0] == 0
    result = tmp_path / "out" / "thing"
    assert sorted(p.name for p in result.iterdir()) == ["input.png", "mesh.ply", "result.json"]
    assert json.loads((result / "result.json").read_text())["mesh_file"] == "mesh.ply"


def test_render_takes_the_mesh_result_json_names(tmp_path, capsys):
    """A folder of an older run can hold several mesh.* files: the result's own is the one result.json names."""
    image = save_image(object_image(), tmp_path / "thing.png")
    assert reconstruct([image], tmp_path / "out", "--format", "ply", capsys=capsys)[0] == 0
    result = tmp_path / "out" / "thing"
    shutil.copy(result / "mesh.ply", result / "mesh.obj")  # first in render's format order
    (result / "mesh.obj").write_text("garbage")
    code, out, _ = run(["render", str(result), "--frames", "1", "--size", "16"], capsys)
    assert code == 0 and f"{result / 'mesh.ply'} ->" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--render", "3600", "--render-size", "2048"], "3600 turntable frames of 2048 x 2048 pixels would need"),
        (["--no-remove-bg", "--foreground-ratio", "0.5"], "not with --no-remove-bg"),
        (["--texture-resolution", "512"], "--texture-resolution sizes a baked texture"),  # was ignored: vertex colours
        (["--render-size", "128"], "--render-size sizes the turntable: give --render N"),  # was ignored: no turntable
    ],
)
def test_options_are_checked_before_the_model_loads(tmp_path, capsys, extra, message):
    image = save_image(object_image(), tmp_path / "thing.png")
    argv = ["reconstruct", str(image), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "missing.ckpt")]
    code, _, err = run([*argv, *FAST_ARGS, *extra], capsys)
    assert_one_line_error(code, err, message)  # not the missing weights: checked first
    assert not (tmp_path / "out").exists()


def test_model_modules_that_fail_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_module.py").write_text("def oops(:\n")
    (tmp_path / "needs_args.py").write_text("class Model:\n    def __init__(self, size):\n        pass\n")
    monkeypatch.chdir(tmp_path)
    image = save_image(object_image(), tmp_path / "thing.png")
    for reference, message in (
        ("broken_module:Model", "cannot import broken_module (SyntaxError"),
        ("needs_args:Model", "Model() failed (TypeError"),
    ):
        code, _, err = run(["reconstruct", str(image), "-o", str(tmp_path / "out"), "--model", reference], capsys)
        assert_one_line_error(code, err, message)


def test_no_remove_bg_keeps_an_rgba_images_alpha():
    """--no-remove-bg on an RGBA image made its transparent background black and opaque (alpha dropped)."""
    image = object_image(size=40)
    prepared = preprocess_image(image, PreprocessConfig(remove_background=False, output_size=None))
    np.testing.assert_allclose(prepared.alpha, image[..., 3])  # square already: no padding
    background = image[..., 3] == 0
    np.testing.assert_allclose(prepared.rgb[background], 0.5)  # the background grey
    np.testing.assert_allclose(prepared.rgb[~background], image[~background][:, :3])


def test_result_json_records_the_weights_absolutely_with_device_and_dtype(tmp_path, capsys, monkeypatch):
    """Relative --weights were recorded as typed (meaningless from another folder); bfloat16 runs looked like float32
    ones."""
    from test_reconstruct_cli import TINY

    save_image(object_image(), tmp_path / "thing.png")
    shutil.copytree(TINY, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    argv = [
        "reconstruct",
        "thing.png",
        "-o",
        "out",
        "--weights",
        "tiny/model.safetensors",
        "--config",
        "tiny/config.yaml",
    ]
    assert run([*argv, *FAST_ARGS], capsys)[0] == 0
    model = json.loads((tmp_path / "out" / "thing" / "result.json").read_text())["model"]
    assert model == {
        "weights": str(tmp_path / "tiny" / "model.safetensors"), "config": str(tmp_path / "tiny" / "config.yaml"),
        "device": "cpu", "dtype": "float32",
    }  # fmt: skip
    code, _, err = run(["reconstruct", "thing.png", "-o", "out2", "--config", "tiny/config.yaml", *FAST_ARGS], capsys)
    assert_one_line_error(code, err, "--config is the config of the --weights given: give both")


def test_weights_with_nan_are_refused_when_loaded(tmp_path, capsys):
    """They loaded, and then every image failed with 'scene_code contains NaN or infinite values'."""
    from safetensors.torch import load_file, save_file

    from test_reconstruct_cli import TINY

    state = load_file(str(TINY / "model.safetensors"))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(tmp_path / "nan.safetensors"))
    image = save_image(object_image(), tmp_path / "thing.png")
    argv = ["reconstruct", str(image), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "nan.safetensors")]
    code, _, err = run([*argv, "--config", str(TINY / "config.yaml"), *FAST_ARGS], capsys)
    assert_one_line_error(code, err, "hold NaN or infinite values (1 tensors, e.g. " + key)


def test_a_model_asking_for_the_fill_without_its_box_is_told(tmp_path):
    """A model of one's own with renderer.silhouette_fill but no renderer.radius failed with an AttributeError."""
    from types import SimpleNamespace

    import torch

    from monorecon.api import input_view_weight

    model = SimpleNamespace(config=SimpleNamespace(renderer=SimpleNamespace(silhouette_fill=True)))
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    with pytest.raises(ValueError, match=r"needs the model's config\.renderer\.radius"):
        input_view_weight(model, torch.zeros(1, 4), alpha, threshold=1.0)


def test_staging_folders_of_killed_runs_are_removed(tmp_path, capsys):
    """A run killed while writing leaves OUTPUT/.<stem>.<pid>.<random>.tmp: the next run removes it, unless its
    process is still running (another command writing into the same folder)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = out / f".thing.{int(finished.stdout)}.abc123.tmp"
    alive = out / f".thing.{os.getpid()}.def456.tmp"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "mesh.glb").write_bytes(b"partial")
    image = save_image(object_image(), tmp_path / "thing.png")
    assert reconstruct([image], out, capsys=capsys)[0] == 0
    assert not dead.exists() and alive.is_dir()
    assert sorted(p.name for p in out.iterdir()) == [alive.name, "thing"]
