"""Guards of the secondary trainers and their commands (G3DR, its RGB-D diffusion, MeshGAN, invert, g3dr): no
clipping means no clipping, resumes keep the settings their checkpoints were written with (and are checked before
anything is written), a fresh run never mixes with an earlier one, bad configs and inputs are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from monorecon import cli
from monorecon.io.weights import read_safetensors_metadata
from monorecon.models.g3dr import diffusion as diffusion_module
from monorecon.models.g3dr import trainer as trainer_module
from monorecon.models.g3dr.data import RGBDViews
from monorecon.models.g3dr.diffusion import (
    DiffusionConfig,
    DiffusionTrainConfig,
    sample_to_folder,
    train_rgbd_diffusion,
)
from monorecon.models.g3dr.generator import G3DRGenerator
from monorecon.models.g3dr.inference import load_g3dr, reconstruct_to_folder
from monorecon.models.g3dr.trainer import clip_gradients, save_g3dr_model, train_g3dr
from monorecon.models.meshgan.train import MeshGANConfig, load_generator, train_meshgan
from test_g3dr import random_views, tiny_model_config, tiny_train_config
from test_meshgan import TINY


def _diffusion_config(tmp_path, **overrides) -> DiffusionTrainConfig:
    settings = dict(
        out_dir=str(tmp_path / "diffusion"), steps=2, batch_size=2, quiet=True, log_every=1, checkpoint_every=1,
        model=DiffusionConfig(image_size=8, base_channels=8, channel_mults=(1, 2), embed_dim=16, timesteps=10),
    )  # fmt: skip
    return DiffusionTrainConfig(**{**settings, **overrides})


def _diffusion_views() -> RGBDViews:
    return random_views(n=4, size=8, masked=False)


# --------------------------------------------------------------------------------------------------------------------
# Gradient clipping (item 1)
# --------------------------------------------------------------------------------------------------------------------
def test_zero_grad_clip_leaves_gradients_alone():
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([3.0, 4.0, 0.0])
    clip_gradients([weight], 0.0)
    assert torch.equal(weight.grad, torch.tensor([3.0, 4.0, 0.0]))
    clip_gradients([weight], 1.0)
    assert torch.allclose(weight.grad.norm(), torch.tensor(1.0))


def test_diffusion_trains_without_clipping(tmp_path):
    """``grad_clip: 0`` (no clipping) used to scale every gradient to 0: Adam's first moments stayed exactly 0."""
    out = train_rgbd_diffusion(_diffusion_config(tmp_path, steps=1, grad_clip=0.0), _diffusion_views())
    payload = torch.load(out / "checkpoints" / "step_00000001.pt", weights_only=True)
    moments = [state["exp_avg"] for state in payload["optimizer"]["state"].values()]
    assert sum(float(m.abs().sum()) for m in moments) > 0


# --------------------------------------------------------------------------------------------------------------------
# RGB-D diffusion: fresh runs, resumes, data (items 2, 9, 10)
# --------------------------------------------------------------------------------------------------------------------
def test_diffusion_refuses_a_fresh_run_over_checkpoints_and_a_changed_resume(tmp_path):
    out = train_rgbd_diffusion(_diffusion_config(tmp_path), _diffusion_views())
    log = (out / "train_log.csv").read_text()
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train_rgbd_diffusion(_diffusion_config(tmp_path, resume=False), _diffusion_views())
    with pytest.raises(ValueError, match=r"another configuration \(seed changed\)"):
        train_rgbd_diffusion(_diffusion_config(tmp_path, seed=1), _diffusion_views())
    with pytest.raises(ValueError, match=r"steps is 1 but .* is already at step 2"):
        train_rgbd_diffusion(_diffusion_config(tmp_path, steps=1), _diffusion_views())
    assert (out / "train_log.csv").read_text() == log
    assert yaml.safe_load((out / "config.yaml").read_text())["trained_steps"] == 2


def test_diffusion_names_the_data_it_needs(tmp_path):
    views = _diffusion_views()
    unlabelled = RGBDViews(views.rgb, views.depth, None, [""] * len(views.rgb))
    with pytest.raises(ValueError, match=r"class-labelled data \(data.source: synthetic\)"):
        train_rgbd_diffusion(_diffusion_config(tmp_path), unlabelled)
    assert not (tmp_path / "diffusion").exists()


# --------------------------------------------------------------------------------------------------------------------
# G3DR resume (items 4, 9)
# --------------------------------------------------------------------------------------------------------------------
def test_g3dr_resume_keeps_the_runs_settings(tmp_path):
    views = random_views()
    out = train_g3dr(tiny_train_config(tmp_path, steps=2, calibrate_views=0), views)
    written = (out / "train_config.yaml").read_text()
    with pytest.raises(ValueError, match=r"another configuration \(loss.rgb, seed changed\)"):
        train_g3dr(tiny_train_config(tmp_path, steps=4, seed=1, loss=trainer_module.G3DRLossConfig(rgb=2.0),
                                     calibrate_views=0), views)  # fmt: skip
    assert (out / "train_config.yaml").read_text() == written  # the refused resume wrote nothing
    with pytest.raises(ValueError, match=r"steps is 1 but .* is already at step 2"):
        train_g3dr(tiny_train_config(tmp_path, steps=1, calibrate_views=0), views)
    with pytest.warns(UserWarning, match=r"changed steps \(2 -> 3\): the schedules .* are re-timed"):
        train_g3dr(tiny_train_config(tmp_path, steps=3, log_every=3, calibrate_views=0), views)
    assert yaml.safe_load((out / "config.yaml").read_text())["trained_steps"] == 3
    assert yaml.safe_load((out / "train_config.yaml").read_text())["log_every"] == 3


# --------------------------------------------------------------------------------------------------------------------
# MeshGAN: run folders, resumes, configs (items 3, 6, 7, 9)
# --------------------------------------------------------------------------------------------------------------------
def _meshgan_config(tmp_path, **settings):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY | {"steps": 2} | settings))
    return path


def test_meshgan_no_resume_replaces_the_checkpoint_and_resumes_check_it(tmp_path):
    out = tmp_path / "run"
    train_meshgan(_meshgan_config(tmp_path), out, progress=False)
    # --no-resume with another architecture: the old checkpoint goes first, the new one records its configuration
    train_meshgan(_meshgan_config(tmp_path, generator_channels=8), out, resume=False, progress=False)
    saved = yaml.safe_load(read_safetensors_metadata(out / "checkpoint.safetensors")["config"])
    assert saved["generator_channels"] == 8
    # a plain run with the first configuration is refused (it used to resume the old checkpoint, or fail to load it)
    with pytest.raises(ValueError, match=r"another configuration \(generator_channels changed\)"):
        train_meshgan(_meshgan_config(tmp_path), out, progress=False)
    with pytest.raises(ValueError, match=r"steps is 1 but .* is already at step 2"):
        train_meshgan(_meshgan_config(tmp_path, generator_channels=8, steps=1), out, progress=False)
    # a lowered learning rate (the way on after a divergence) resumes, with a warning
    with pytest.warns(UserWarning, match="changed lr_g"):
        train_meshgan(_meshgan_config(tmp_path, generator_channels=8, steps=3, lr_g=5e-5), out, progress=False)
    assert int(load_file(str(out / "checkpoint.safetensors"))["step"]) == 3


def test_meshgan_refuses_another_commands_run_folder(tmp_path, capsys):
    folder = tmp_path / "g3dr_run"
    save_g3dr_model(G3DRGenerator(tiny_model_config()), folder)
    before = (folder / "config.yaml").read_text()
    assert cli.main(["train-meshgan", str(_meshgan_config(tmp_path)), "-o", str(folder), "--quiet"]) == 2
    assert "holds another kind of run" in capsys.readouterr().err
    assert (folder / "config.yaml").read_text() == before


def test_meshgan_old_checkpoint_of_another_config_is_one_line(tmp_path, capsys):
    """A checkpoint written before the configuration was stored in it is checked against the folder's config.yaml."""
    from safetensors.torch import save_file

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(MeshGANConfig(**TINY).to_dict(), sort_keys=True))
    save_file({"step": torch.tensor(2)}, str(out / "checkpoint.safetensors"), metadata={"step": "2"})
    assert cli.main(["train-meshgan", str(_meshgan_config(tmp_path, image_loss_weight=0.5)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_loss_weight changed" in err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"betas": 0.5}, "betas must be a list"),
        ({"lr_g": "abc"}, "lr_g must be a number"),
        ({"steps": 2.7}, "steps must be an integer"),
        ({"steps": "abc"}, "steps must be an integer"),
        ({"soft_render": "no"}, "soft_render must be true/false"),
        ({"generator_channels": 0}, "generator_channels must lie in [4, 4096]"),
        ({"discriminator_channels": 0}, "discriminator_channels must lie in"),
    ],
)
def test_meshgan_config_types_are_checked_before_anything_is_written(tmp_path, capsys, setting, message):
    out = tmp_path / "run"
    assert cli.main(["train-meshgan", str(_meshgan_config(tmp_path, **setting)), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_meshgan_config_built_in_python_checks_flags():
    with pytest.raises(ValueError, match="soft_render must be True or False"):
        MeshGANConfig(soft_render="no")


# --------------------------------------------------------------------------------------------------------------------
# Commands (items 5, 8, 11)
# --------------------------------------------------------------------------------------------------------------------
def test_quiet_g3dr_training_commands_print_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "load_views", lambda config: random_views())
    monkeypatch.setattr(diffusion_module, "load_views", lambda config: _diffusion_views())
    g3dr = tiny_train_config(tmp_path, steps=1, calibrate_views=0, quiet=False)
    g3dr_yaml = tmp_path / "g.yaml"
    g3dr_yaml.write_text(yaml.safe_dump(trainer_module.dataclass_to_dict(g3dr) | {"quiet": True}))
    diffusion_yaml = tmp_path / "d.yaml"
    settings = trainer_module.dataclass_to_dict(_diffusion_config(tmp_path, steps=1))
    diffusion_yaml.write_text(yaml.safe_dump(settings))  # quiet: true in the file
    assert cli.main(["train-g3dr", str(g3dr_yaml)]) == 0
    assert cli.main(["train-g3dr-diffusion", str(diffusion_yaml)]) == 0
    assert capsys.readouterr().out == ""


def test_train_meshgan_no_resume_has_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train-meshgan", "--help"])
    assert "start over" in capsys.readouterr().out


def test_sampling_into_a_folder_of_an_earlier_sampling_is_refused(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "sample_05.png").write_bytes(b"")
    with pytest.raises(ValueError, match="holds the files of an earlier sampling"):
        sample_to_folder(tmp_path / "no_diffusion", tmp_path / "no_model", "a", 2, out)  # before any model is read


def test_invert_names_its_flags_and_files(tmp_path, capsys):
    assert cli.main(["invert", "x.png", "--generator", str(tmp_path), "-o", str(tmp_path / "o"), "--n-init", "0"]) == 2
    assert "--n-init must lie in [1, 50000], got 0" in capsys.readouterr().err
    out = tmp_path / "run"
    train_meshgan(_meshgan_config(tmp_path, steps=1), out, progress=False)
    with pytest.raises(ValueError, match=r"give a train-meshgan run folder or its generator\.safetensors"):
        load_generator(out / "checkpoint.safetensors")


def test_g3dr_model_file_and_all_zero_depth(tmp_path):
    folder = save_g3dr_model(G3DRGenerator(tiny_model_config()), tmp_path / "run")
    assert load_g3dr(folder / "model.safetensors").config.image_size == 16  # the file's folder
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "view.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "view_depth.png")
    with pytest.raises(ValueError, match="is all zero: no depth"):
        reconstruct_to_folder(folder, tmp_path / "view.png", tmp_path / "view_depth.png", tmp_path / "out")
    assert not (tmp_path / "out").exists()
