"""`monorecon g3dr` fixes: the depth takes the image's EXIF orientation, an empty alpha is refused, and `g3dr sample`
has --steps, exits 2 when samples get no mesh, checks its inputs before writing and names swapped model folders."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from monorecon import cli
from monorecon.models.g3dr import inference
from monorecon.models.g3dr.data import encode_depth_png, load_rgbd_pair, save_rgbd_pair
from monorecon.models.g3dr.diffusion import DiffusionConfig, DiffusionTrainConfig, train_rgbd_diffusion
from monorecon.models.g3dr.generator import G3DRGenerator
from monorecon.models.g3dr.trainer import train_g3dr
from test_g3dr import random_views, tiny_train_config

RED = (220, 20, 20)


def _l_shape(height: int, width: int) -> np.ndarray:
    """An asymmetric (L-shaped, off-centre) foreground in the raw pixel grid: no flip or rotation maps it on itself."""
    fg = np.zeros((height, width), dtype=bool)
    fg[1:4, 2 : width - 3] = True
    fg[4 : height - 2, 2:5] = True
    return fg


def _write_oriented_pair(folder, orientation: int, height: int = 12, width: int = 20, depth_exif: int | None = None):
    """A JPEG of the raw grid carrying an EXIF orientation tag, and its 16-bit depth PNG in the same raw grid."""
    fg = _l_shape(height, width)
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    rgb[fg] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = folder / f"o{orientation}.jpg"
    Image.fromarray(rgb).save(image, exif=exif.tobytes(), quality=100, subsampling=0)
    depth = folder / f"o{orientation}_depth.png"
    depth_image = Image.fromarray(encode_depth_png(np.where(fg, 4.8, 6.0)))
    if depth_exif is None:
        depth_image.save(depth)
    else:
        own = Image.Exif()
        own[0x0112] = depth_exif
        depth_image.save(depth, exif=own.tobytes())
    return image, depth


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_the_depth_takes_the_image_exif_orientation(tmp_path, orientation):
    image, depth_path = _write_oriented_pair(tmp_path, orientation)
    rgb, depth, mask = load_rgbd_pair(image, depth_path)
    assert mask is None
    with Image.open(image) as img:  # independent reference: PIL's own upright view of the JPEG
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB")).astype(np.float32) / 255
    colour_fg = upright[..., 1] < 0.5  # red object on white
    assert colour_fg.sum() == _l_shape(12, 20).sum()
    np.testing.assert_allclose(rgb.permute(1, 2, 0).numpy(), upright, atol=1e-6)
    depth_fg = depth.numpy() < 5.5
    assert depth.shape == colour_fg.shape
    assert np.array_equal(depth_fg, colour_fg)
    torch.testing.assert_close(depth[torch.from_numpy(depth_fg)], torch.full((int(depth_fg.sum()),), 4.8))


def test_a_depth_png_with_its_own_orientation(tmp_path):
    """The same tag as the image's is applied once; a different one is refused (which grid is it stored in?)."""
    image, depth_path = _write_oriented_pair(tmp_path, 6, depth_exif=6)
    rgb, depth, _ = load_rgbd_pair(image, depth_path)
    assert np.array_equal(depth.numpy() < 5.5, rgb[1].numpy() < 0.5)
    image, depth_path = _write_oriented_pair(tmp_path, 8, depth_exif=3)
    with pytest.raises(ValueError, match="has EXIF orientation 3, its colour image 8"):
        load_rgbd_pair(image, depth_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny G3DR run and a tiny RGB-D diffusion model trained with only 10 timesteps."""
    root = tmp_path_factory.mktemp("runs")
    generator = train_g3dr(tiny_train_config(root, steps=1), random_views())
    config = DiffusionTrainConfig(
        out_dir=str(root / "diffusion"), steps=1, batch_size=2, quiet=True, log_every=1,
        model=DiffusionConfig(image_size=8, base_channels=8, channel_mults=(1, 2), embed_dim=16, timesteps=10),
    )  # fmt: skip
    diffusion = train_rgbd_diffusion(config, random_views(n=4, size=8, masked=False))
    return {"model": generator, "diffusion": diffusion}


@pytest.fixture(autouse=True)
def short_turntables(monkeypatch):
    """Turntables of 2 frames of 8 pixels (the commands' 24 of 96 or 32 take most of the time of a tiny model)."""
    real = inference.turntable
    monkeypatch.setattr(inference, "turntable", lambda scene, n_frames=24, size=64, **kw: real(scene, 2, 8, **kw))


@pytest.fixture
def sphere(monkeypatch):
    """A steep sphere for every field (density 100 (0.5 - |p|)): a surface at any level the tiny run calibrates."""
    monkeypatch.setattr(
        G3DRGenerator, "density_fn", lambda self, planes: lambda points: 100 * (0.5 - points.norm(dim=-1))
    )


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_fully_transparent_image_is_refused_and_nothing_is_written(tmp_path, runs, capsys):
    image, _ = save_rgbd_pair(np.zeros((16, 16, 4), dtype=np.float32), np.full((16, 16), 4.9), tmp_path / "clear")
    out = tmp_path / "out"
    assert cli.main(["g3dr", str(image), "--model", str(runs["model"]), "-o", str(out), "--resolution", "16"]) == 2
    assert _one_error_line(capsys) == "monorecon: error: no foreground: the alpha is empty (fully transparent image?)"
    assert not out.exists()


def test_the_g3dr_command_on_a_rotated_jpeg(tmp_path, runs, sphere):
    image, depth = _write_oriented_pair(tmp_path, 6, height=16, width=16)
    args = ["g3dr", str(image), "--depth", str(depth), "--model", str(runs["model"]), "-o", str(tmp_path / "out")]
    assert cli.main([*args, "--resolution", "16", "--threshold", "0.5"]) == 0
    assert (tmp_path / "out" / "mesh.glb").is_file()


def _sample_args(runs, out, *extra):
    return ["g3dr", "sample", "--class", "a", "-n", "2", "--diffusion", str(runs["diffusion"]),
            "--model", str(runs["model"]), "-o", str(out), *extra]  # fmt: skip


def test_sample_defaults_to_the_models_timesteps_and_takes_steps(tmp_path, runs, sphere, monkeypatch, capsys):
    """10 training timesteps: the default is min(50, 10) steps; --steps N is passed on; above 10 is refused."""
    import monorecon.models.g3dr.diffusion as diffusion_module

    used = []
    real = diffusion_module.ddim_sample
    monkeypatch.setattr(diffusion_module, "ddim_sample", lambda *a: used.append(a[3]) or real(*a))
    assert cli.main(_sample_args(runs, tmp_path / "default")) == 0
    assert used == [10]
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [
        "sample_00", "sample_00.png", "sample_00_depth.png", "sample_01", "sample_01.png", "sample_01_depth.png",
        "samples.png",
    ]  # fmt: skip
    assert cli.main(_sample_args(runs, tmp_path / "three", "--steps", "3")) == 0
    assert used == [10, 3]
    capsys.readouterr()
    for steps, message in (("11", r"--steps must lie in \[1, 10\]"), ("0", "--steps must be >= 1, got 0")):
        assert cli.main(_sample_args(runs, tmp_path / f"bad{steps}", "--steps", steps)) == 2
        assert re.search(message, _one_error_line(capsys))
        assert not (tmp_path / f"bad{steps}").exists()


def test_sample_without_a_mesh_exits_2_and_writes_the_others(tmp_path, runs, sphere, monkeypatch, capsys):
    real = inference.g3dr_reconstruct
    calls = []

    def second_has_no_surface(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("no surface at the level")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "g3dr_reconstruct", second_has_no_surface)
    out = tmp_path / "out"
    assert cli.main(_sample_args(runs, out, "--steps", "2")) == 2
    err = capsys.readouterr().err
    assert "sample_01: no mesh (no surface at the level)" in err
    assert err.strip().splitlines()[-1] == "monorecon: 1 of 2 samples got no mesh (the warnings above say why)"
    assert (out / "sample_00" / "mesh.glb").is_file() and not (out / "sample_01").exists()
    assert (out / "sample_01.png").is_file() and (out / "sample_01_depth.png").is_file()
    assert (out / "samples.png").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--class", "zebra"], "--class 'zebra': unknown; this model knows a, b"),
        (["swap"], "this folder holds a G3DR model, not an RGB-D diffusion model"),
        (["missing"], "lacks model.safetensors"),
    ],
)
def test_sample_checks_its_inputs_before_creating_anything(tmp_path, runs, capsys, change, message):
    out = tmp_path / "nested" / "out"
    args = _sample_args(runs, out, "--steps", "2")
    if change == ["swap"]:
        i, j = args.index("--diffusion") + 1, args.index("--model") + 1
        args[i], args[j] = args[j], args[i]
    elif change == ["missing"]:
        args[args.index("--model") + 1] = str(tmp_path)
    else:
        args += change
    assert cli.main(args) == 2
    line = _one_error_line(capsys)
    assert message in line
    assert not (tmp_path / "nested").exists()


def test_swapped_model_folders_are_named(tmp_path, runs, capsys):
    args = _sample_args(runs, tmp_path / "out")
    i, j = args.index("--diffusion") + 1, args.index("--model") + 1
    args[i], args[j] = args[j], args[i]
    args = [a for k, a in enumerate(args) if k not in (i - 1, i)]  # only --model, given the diffusion folder
    args = [*args[:2], "--diffusion", str(runs["diffusion"]), *args[2:]]
    assert cli.main(args) == 2
    assert _one_error_line(capsys) == (
        f"monorecon: error: --model {runs['diffusion']}: this folder holds an RGB-D diffusion model, not a G3DR model"
    )
    image, _ = save_rgbd_pair(np.ones((16, 16, 3)), np.full((16, 16), 4.9), tmp_path / "img")
    assert cli.main(["g3dr", str(image), "--model", str(runs["diffusion"]), "-o", str(tmp_path / "lift")]) == 2
    assert "this folder holds an RGB-D diffusion model, not a G3DR model" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "lift").exists()
    with pytest.raises(ValueError, match="holds an RGB-D diffusion model, not a G3DR model"):
        inference.load_g3dr(runs["diffusion"])


def test_train_g3dr_diffusion_command_trains_the_model_g3dr_sample_loads(tmp_path, capsys):
    """`monorecon train-g3dr-diffusion CONFIG` (there was no command for it): a run on a synthetic dataset of two
    classes gives a model of those classes; a bad config is one line, exit code 2."""
    import yaml

    from monorecon.data.synth import synthesize_dataset
    from monorecon.models.g3dr.diffusion import load_rgbd_diffusion

    data = synthesize_dataset(tmp_path / "data", 2, 1, 16, seed=0, classes=["mug", "chair"], progress=False)
    config = {
        "out_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 2, "quiet": True,
        "model": {"image_size": 8, "base_channels": 8, "channel_mults": [1, 2], "embed_dim": 16, "timesteps": 10},
        "data": {"root": str(data), "split": "all"},
    }  # fmt: skip
    (tmp_path / "diffusion.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train-g3dr-diffusion", str(tmp_path / "diffusion.yaml")]) == 0
    assert capsys.readouterr().out == ""  # quiet: true in the config
    assert cli.main(["train-g3dr-diffusion", str(tmp_path / "diffusion.yaml")]) == 0  # resumes at its last step
    assert capsys.readouterr().out == ""
    assert load_rgbd_diffusion(tmp_path / "run").class_names == ["chair", "mug"]

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "lr": -1}))
    assert cli.main(["train-g3dr-diffusion", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("monorecon: error: ") and err.count("\n") == 1 and "lr" in err


def test_sample_takes_the_mesh_options_of_the_image_command(tmp_path, runs, sphere, monkeypatch, capsys):
    """`g3dr sample --resolution / --threshold` reach every sample's lift; bad values are refused before sampling."""
    real = inference.g3dr_reconstruct
    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["resolution"], kwargs["threshold"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "g3dr_reconstruct", spy)
    assert cli.main(_sample_args(runs, tmp_path / "out", "--steps", "2", "--resolution", "24", "--threshold", "3")) == 0
    assert seen == [(24, 3.0), (24, 3.0)]
    capsys.readouterr()
    for flags, message in ((["--resolution", "1"], "--resolution"), (["--threshold", "0"], "--threshold must be > 0")):
        assert cli.main(_sample_args(runs, tmp_path / "bad", *flags)) == 2
        assert message in _one_error_line(capsys) and not (tmp_path / "bad").exists()


def test_sampling_steps_default_to_the_timesteps_and_refuse_others(runs):
    from monorecon.models.g3dr.diffusion import load_rgbd_diffusion

    diffusion = load_rgbd_diffusion(runs["diffusion"])  # trained with 10 timesteps
    assert diffusion.sampling_steps(None) == 10 and diffusion.sampling_steps(3) == 3
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match=r"n_steps must lie in \[1, 10\]"):
            diffusion.sampling_steps(bad)


@pytest.mark.parametrize("config_text", ["model: [unclosed", "", "model: 3\n"])
def test_a_model_folder_with_a_corrupt_config_is_one_line_and_writes_nothing(tmp_path, runs, capsys, config_text):
    """The kind check cannot read such a folder and leaves it to the loader, which names the file."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs["model"], broken)
    (broken / "config.yaml").write_text(config_text)
    args = _sample_args(runs, tmp_path / "out", "--steps", "2")
    args[args.index("--model") + 1] = str(broken)
    assert cli.main(args) == 2
    assert "config.yaml" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_g3dr_help_lists_the_options_of_both_forms(capsys):
    """``monorecon g3dr --help`` showed only its usage line: the options of ``g3dr IMAGE`` and ``g3dr sample`` are
    listed in full."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["g3dr", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for option in ("--depth", "--no-project-input", "--unlit", "--object-height", "--origin", "--resolution",
                   "--diffusion", "--steps", "--class", "--seed"):  # fmt: skip
        assert option in out, option
