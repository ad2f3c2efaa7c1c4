"""Training infrastructure and the TripoSR trainer on a tiny model and dataset (CPU, seconds)."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from analytic import ray_sphere, sphere_camera_depth
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.volume import VolumeRenderConfig, VolumeRenderer
from monorecon.data import MultiViewDataset, ViewSampling, synthesize_dataset
from monorecon.eval.metrics import mask_iou
from monorecon.io.yaml_config import load_yaml
from monorecon.models.triposr import load_triposr
from monorecon.models.triposr.model import input_camera
from monorecon.preprocess import reframe_views
from monorecon.train import triposr_trainer
from monorecon.train.triposr_trainer import (
    load_train_config,
    recolor_objects,
    relative_cameras,
    sample_patches,
    train,
)
from monorecon.train.utils import (
    Checkpointer,
    CSVLogger,
    TrainingDiverged,
    cosine_with_warmup,
    load_dataclass_config,
    plot_curves,
    running_mean,
    seed_everything,
    step_generator,
)

FILL_AT_1_9 = math.tan(math.asin(0.5 / 1.9)) / math.tan(math.radians(20.0))  # camera distance 1.9 at fov 40

TINY_MODEL = {
    "cond_image_size": 32,
    "image_encoder": {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 64,
        "patch_size": 16,
        "pretrained_image_size": 32,
    },
    "tokenizer": {"plane_size": 4, "num_channels": 32},
    "backbone": {
        "in_channels": 32,
        "num_heads": 2,
        "head_dim": 16,
        "num_layers": 1,
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    "post_processor": {"in_channels": 32, "out_channels": 8},
    "decoder": {"in_channels": 24, "hidden_channels": 16, "n_hidden_layers": 1},
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    sampling = ViewSampling(fov_y_deg=40.0, fill=FILL_AT_1_9)
    synthesize_dataset(root, 3, 3, 32, seed=5, progress=False, sampling=sampling, split_fractions=(1.0, 0.0, 0.0))
    return root


def _config(data_root: Path, out_dir: Path, **overrides) -> dict:
    cfg = {
        "model": TINY_MODEL,
        "data": {"root": str(data_root), "split": "train"},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "loss": {"lambda_lpips": 0.0, "lambda_mask": 0.5},
        "out_dir": str(out_dir),
        "steps": 4,
        "batch_size": 2,
        "n_supervision_views": 2,
        "patch_size": 8,
        "n_samples": 8,
        "checkpoint_every_steps": 2,
        "log_every": 1,
        "seed": 3,
        "num_threads": 1,
        "quiet": True,
    }
    cfg.update(overrides)
    return cfg


def _final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "final" / "model.safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# utils
# --------------------------------------------------------------------------------------------------------------------
def test_cosine_with_warmup_matches_the_formula():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    seen = []
    for _ in range(16):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2.0 * (s + 1) / 4 for s in range(4)]
    for s in range(4, 16):
        p = min((s - 4) / 10, 1.0)
        expected.append(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_with_warmup(optimizer, warmup_steps=5, total_steps=3)


def test_checkpointer_keeps_newest_and_restores_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    seed_everything(1)
    for step in (1, 2, 3):
        checkpointer.save(step, model, optimizer, extra={"note": step})
    assert [p.name for p in checkpointer.checkpoints()] == ["step_00000002.pt", "step_00000003.pt"]
    expected = (torch.rand(3), np.random.rand(2), __import__("random").random())  # noqa: NPY002
    seed_everything(99)
    restored = checkpointer.load_latest(torch.nn.Linear(3, 2), torch.optim.AdamW(model.parameters(), lr=0.1))
    assert restored["step"] == 3 and restored["extra"] == {"note": 3}
    got = (torch.rand(3), np.random.rand(2), __import__("random").random())  # noqa: NPY002
    torch.testing.assert_close(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    # A truncated checkpoint is reported clearly, a missing folder gives None.
    latest = checkpointer.latest()
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        checkpointer.load(latest, model)
    assert Checkpointer(tmp_path / "none").load_latest(model) is None


def test_checkpointer_restores_the_optimiser_state_with_the_new_settings(tmp_path):
    """Every optimiser setting comes from the optimiser being resumed (the config), the moments and step from the
    checkpoint; the changed settings are named."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95), weight_decay=0.05)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, model, optimizer)
    resumed = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.99), weight_decay=0.0)
    with pytest.warns(UserWarning, match=r"optimiser settings \(betas, weight_decay changed"):
        checkpointer.load_latest(model, resumed)
    group = resumed.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.1, (0.8, 0.99), 0.0)
    for parameter in model.parameters():
        torch.testing.assert_close(resumed.state[parameter]["exp_avg"], optimizer.state[parameter]["exp_avg"])


def test_csv_logger_truncates_and_plot_is_drawn(tmp_path):
    logger = CSVLogger(tmp_path / "log.csv")
    for step in range(1, 6):
        logger.log({"step": step, "loss": 1.0 / step, "lr": 0.1})
    logger.truncate_after(3)
    assert [row["step"] for row in CSVLogger(tmp_path / "log.csv").rows()] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="differ from the header"):
        logger.log({"step": 4, "other": 1.0})
    png = plot_curves(tmp_path / "log.csv", tmp_path / "curves.png")
    image = np.asarray(Image.open(png))
    assert image.shape[0] > 100 and (image < 128).any()  # something was drawn
    # Long noisy logs get a running mean over the raw curve.
    noisy = CSVLogger(tmp_path / "noisy.csv")
    for step, value in enumerate(np.random.default_rng(0).uniform(0.5, 1.5, 200)):
        noisy.log({"step": step, "loss": float(value)})
    image = np.asarray(Image.open(plot_curves(tmp_path / "noisy.csv", tmp_path / "noisy.png")))
    assert ((image == (20, 60, 160)).all(-1)).sum() > 100 and ((image == (170, 195, 235)).all(-1)).sum() > 100


def test_running_mean_matches_direct_means():
    values = np.random.default_rng(1).normal(size=(30, 2))
    expected = np.stack([values[i : i + 4].mean(0) for i in range(27)])
    np.testing.assert_allclose(running_mean(values, 4), expected, atol=1e-12)
    np.testing.assert_allclose(running_mean(values, 1), values)
    with pytest.raises(ValueError, match="window"):
        running_mean(values, 31)


@dataclass
class _Inner:
    a: int = 1
    b: tuple[float, float] = (0.0, 1.0)


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    maybe: int | None = None


def test_load_dataclass_config(tmp_path):
    cfg = load_dataclass_config({"name": "y", "inner": {"a": 3, "b": [2, 3]}, "maybe": 4}, _Outer)
    assert cfg == _Outer("y", _Inner(3, (2.0, 3.0)), 4)
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  c: 1\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) in _Outer.inner: c"):
        load_dataclass_config(path, _Outer)
    with pytest.raises(ValueError, match=r"_Outer\.inner\.a must be an integer"):
        load_dataclass_config({"inner": {"a": "three"}}, _Outer)
    with pytest.raises(ValueError, match="not found"):
        load_dataclass_config(tmp_path / "missing.yaml", _Outer)
    # A key given twice would silently replace the first section: an error naming the key and its line.
    path.write_text("name: y\ninner:\n  a: 3\ninner:\n  b: [1]\n")
    with pytest.raises(ValueError, match=r"c\.yaml: found the key 'inner' twice \(line 4\)"):
        load_dataclass_config(path, _Outer)
    path.write_text("inner: {a: 3, a: 4}\n")
    with pytest.raises(ValueError, match="found the key 'a' twice"):
        load_dataclass_config(path, _Outer)
    path.write_text("inner: [1\n")
    with pytest.raises(ValueError, match=r"cannot parse YAML .*c\.yaml: expected"):
        load_dataclass_config(path, _Outer)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_dataclass_config(path, _Outer)
    # Equal keys in different mappings and merge keys (<<) are not duplicates.
    path.write_text("x: &base {a: 1, b: 2}\ny: {a: 3, <<: *base}\nz:\n  <<: *base\n  <<: {c: 4}\n")
    assert load_yaml(path) == {"x": {"a": 1, "b": 2}, "y": {"a": 3, "b": 2}, "z": {"a": 1, "b": 2, "c": 4}}
    # Exponents without a dot are numbers (YAML 1.2; PyYAML's 1.1 reads "1e-4" as text); quoted, text.
    path.write_text("lr: 1e-4\nbig: -2E+3\nquoted: '1e-4'\nword: 12e\n")
    assert load_yaml(path) == {"lr": 1e-4, "big": -2000.0, "quoted": "1e-4", "word": "12e"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim": {"lr": 0.0}}, r"optim\.lr must lie in \(0, 1\], got 0\.0"),
        ({"optim": {"lr": 10.0}}, r"optim\.lr must lie in \(0, 1\], got 10\.0"),
        ({"optim": {"grad_clip": 0.0}}, "optim.grad_clip must be positive"),
        ({"optim": {"grad_clip": -1.0}}, "optim.grad_clip must be positive"),
        ({"optim": {"betas": [0.9, 0.95, 0.99]}}, r"optim\.betas must be two numbers in \[0, 1\)"),
        ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay must be a finite number >= 0"),
        ({"num_threads": 0}, r"num_threads must lie in \[1, 1024\], got 0"),
        ({"supervision_size": 100000}, "supervision_size must be at most 2048"),
    ],
)
def test_optimiser_and_size_settings_are_checked_before_anything_is_written(tiny_dataset, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(_config(tiny_dataset, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


def test_training_config_validation(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        load_train_config(_config(tiny_dataset, tmp_path, patch_size=0))
    with pytest.raises(ValueError, match="unknown config key"):
        load_train_config(_config(tiny_dataset, tmp_path, learning_rate=1.0))
    with pytest.raises(ValueError, match=r"data\.root"):
        load_train_config({"model": TINY_MODEL})
    with pytest.raises(ValueError, match="recolor_prob"):
        load_train_config(_config(tiny_dataset, tmp_path, data={"root": str(tiny_dataset), "recolor_prob": 1.5}))
    with pytest.raises(ValueError, match="device"):
        load_train_config(_config(tiny_dataset, tmp_path, device="gpu"))
    with pytest.raises(ValueError, match="precision"):
        load_train_config(_config(tiny_dataset, tmp_path, precision="float16"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            load_train_config(_config(tiny_dataset, tmp_path, device="cuda"))
    assert load_train_config(_config(tiny_dataset, tmp_path)).use_cuda == torch.cuda.is_available()
    assert not load_train_config(_config(tiny_dataset, tmp_path, device="cpu")).use_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_follows_the_cpu_run(tiny_dataset, tmp_path):
    """The same config and seed on the GPU and on the CPU: the same random draws (CPU generators), so the losses agree
    up to floating-point differences, and the exported weights are CPU tensors that load as usual."""
    logs = {}
    for device in ("cpu", "cuda"):
        train(_config(tiny_dataset, tmp_path / device, device=device, patch_size=16))
        logs[device] = [row["loss"] for row in CSVLogger(tmp_path / device / "train_log.csv").rows()]
        assert load_triposr(tmp_path / device / "final").config.tokenizer.plane_size == 4
    np.testing.assert_allclose(logs["cuda"], logs["cpu"], rtol=1e-3)


def test_bfloat16_mixed_precision_follows_the_float32_run(tiny_dataset, tmp_path):
    """``precision: bfloat16`` runs the encoder, backbone and decoder layers in bfloat16 and everything else in float32:
    the same draws give losses within bfloat16 rounding of the float32 run's, but not bit-identical ones (autocast
    really ran), and the exported weights are float32."""
    logs = {}
    for precision in ("float32", "bfloat16"):
        train(_config(tiny_dataset, tmp_path / precision, precision=precision, patch_size=16))
        logs[precision] = np.array([row["loss"] for row in CSVLogger(tmp_path / precision / "train_log.csv").rows()])
    np.testing.assert_allclose(logs["bfloat16"], logs["float32"], rtol=2e-2)
    assert not np.array_equal(logs["bfloat16"], logs["float32"])
    assert {value.dtype for value in _final_weights(tmp_path / "bfloat16").values()} == {torch.float32}


def test_model_under_autocast_keeps_the_scene_code_and_the_field_float32():
    seed_everything(0)
    model = triposr_trainer._build_model(TINY_MODEL).eval()
    images = torch.rand(1, 32, 32, 3)
    points = torch.rand(1, 500, 3) * 1.6 - 0.8
    with torch.no_grad():
        code = model.encode(images)
        density, rgb = model.query(code, points)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            code_bf16 = model.encode(images)
            density_bf16, rgb_bf16 = model.query(code, points)
    assert code_bf16.dtype == density_bf16.dtype == rgb_bf16.dtype == torch.float32
    torch.testing.assert_close(code_bf16, code, rtol=0.05, atol=0.05)
    # The decoder's bfloat16 layers change the raw output by ~1e-2 at most; the density is its exponential.
    torch.testing.assert_close(torch.log(density_bf16), torch.log(density), rtol=0, atol=0.05)
    torch.testing.assert_close(rgb_bf16, rgb, rtol=0, atol=0.02)
    assert not torch.equal(density_bf16, density)


# --------------------------------------------------------------------------------------------------------------------
# geometry and sampling
# --------------------------------------------------------------------------------------------------------------------
def test_relative_cameras_make_the_input_canonical_and_keep_projections():
    c2w = orbit_c2w(torch.tensor([30.0, 200.0, 95.0]), torch.tensor([25.0, -5.0, 10.0]), 1.9).reshape(1, 3, 4, 4)
    world_to_canonical, moved = relative_cameras(c2w[:, 0], c2w, 1.9)
    torch.testing.assert_close(moved[:, 0], orbit_c2w(0.0, 0.0, 1.9), atol=1e-5, rtol=0)
    # A world point and its moved copy project to the same pixels in the original and moved cameras.
    points = torch.tensor([[0.1, 0.2, -0.3], [-0.25, 0.05, 0.2]])
    moved_points = points @ world_to_canonical[0, :3, :3].T + world_to_canonical[0, :3, 3]
    before = PerspectiveCameras(c2w[0], 64, 64, fov_y_deg=40.0).transform_points_screen(points)
    after = PerspectiveCameras(moved[0], 64, 64, fov_y_deg=40.0).transform_points_screen(moved_points)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=0)


def test_patch_centres_favour_the_foreground():
    alpha = torch.zeros(4000, 32, 32)
    alpha[:, 20:24, 4:8] = 1.0  # 16 foreground pixels
    corners = sample_patches(alpha, 8, foreground_prob=0.75, generator=torch.Generator().manual_seed(0))
    assert corners.min() >= 0 and corners.max() <= 32 - 8
    # Patches containing the foreground square: the foreground draws (0.75) plus background draws whose centre is
    # close enough; a patch of side 8 contains the 4x4 square iff its corner row is in [16, 20] and column in [0, 4].
    covered = ((corners[:, 0] >= 16) & (corners[:, 0] <= 20) & (corners[:, 1] <= 4)).float().mean().item()
    assert covered > 0.75
    uniform = sample_patches(alpha, 8, foreground_prob=0.0, generator=torch.Generator().manual_seed(0))
    assert ((uniform[:, 0] >= 16) & (uniform[:, 0] <= 20) & (uniform[:, 1] <= 4)).float().mean().item() < 0.2


def test_recolor_objects_is_one_linear_colour_map_per_object():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 16, 16, 4) * 0.9
    images[..., 3] = (torch.rand(6, 3, 16, 16) > 0.4).float()
    assert torch.equal(recolor_objects(images, 0.0, generator), images)
    out = recolor_objects(images, 1.0, generator)
    assert torch.equal(out[..., 3], images[..., 3])
    luma = torch.tensor([0.299, 0.587, 0.114])
    for b in range(6):
        # Fit the 3x3 colour map on view 0, check it reproduces views 1 and 2 (one map per object, all views).
        x, y = images[b, 0, ..., :3].reshape(-1, 3), out[b, 0, ..., :3].reshape(-1, 3)
        unclipped = (y < 1.0).all(-1)
        matrix = torch.linalg.lstsq(x[unclipped], y[unclipped]).solution
        for view in (1, 2):
            xv, yv = images[b, view, ..., :3].reshape(-1, 3), out[b, view, ..., :3].reshape(-1, 3)
            keep = (yv < 1.0).all(-1)
            torch.testing.assert_close(xv[keep] @ matrix, yv[keep], atol=1e-4, rtol=1e-4)
        # The map is k * (s I + (1 - s) 1 luma^T): a grey level goes to a grey level.
        grey = torch.full((1, 3), 0.2) @ matrix
        torch.testing.assert_close(grey, grey.mean().expand(1, 3), atol=1e-4, rtol=0)
        if bool(unclipped.all()):  # without clipping the input view's foreground luma is the drawn level
            foreground = images[b, 0, ..., 3] > 0.5
            assert 0.3 - 1e-5 <= float((out[b, 0, ..., :3][foreground] @ luma).mean()) <= 0.8 + 1e-5


def test_step_generator_streams():
    a = torch.rand(3, generator=step_generator(1, 5, 0))
    torch.testing.assert_close(a, torch.rand(3, generator=step_generator(1, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5, 1)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 6, 0)))


# --------------------------------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------------------------------
def test_train_outputs_and_exact_resume(tiny_dataset, tmp_path):
    full = tmp_path / "full"
    cfg = _config(tiny_dataset, full, loss={"lambda_lpips": 0.1, "lambda_mask": 0.5}, patch_size=16)
    train(cfg)
    assert (full / "train_log.csv").is_file() and (full / "curves.png").is_file()
    assert [p.name for p in Checkpointer(full / "checkpoints").checkpoints()][-1] == "step_00000004.pt"
    rows = CSVLogger(full / "train_log.csv").rows()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    _assert_loss_is_the_weighted_sum(rows, {"mask_bce": 0.5, "perceptual": 0.1})
    model = load_triposr(full / "final")  # the exported pair loads with the model loader
    assert model.config.tokenizer.plane_size == 4

    # Interrupted run: the same config stopped after step 2 (simulated by removing the later checkpoint), resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    (resumed / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(resumed / "final")
    train({**cfg, "out_dir": str(resumed)})
    a, b = _final_weights(full), _final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in CSVLogger(resumed / "train_log.csv").rows()] == [1, 2, 3, 4]
    # Something was learned: the weights moved from the seeded initialisation.
    seed_everything(3)
    init = triposr_trainer._build_model(TINY_MODEL).state_dict()
    assert not torch.equal(init["decoder.layers.0.weight"], a["decoder.layers.0.weight"])


def test_a_run_killed_before_its_first_checkpoint_restarts_clean(tiny_dataset, tmp_path):
    """kill -9 leaves log rows of steps no checkpoint holds and the temporary file being written: both go."""
    out = tmp_path / "killed"
    train(_config(tiny_dataset, out, steps=2, checkpoint_every_steps=2))
    shutil.rmtree(out / "checkpoints")  # as if killed while writing the first checkpoint
    (out / "checkpoints").mkdir()
    stale = [out / "checkpoints" / ".step_00000002.pt.k3x9q1ab.tmp.pt", out / ".config.yaml.0a1b2c3d.tmp.yaml"]
    for path in stale:
        path.write_bytes(b"half written")
    (out / "checkpoints" / "notes.txt").write_text("not ours")
    train(_config(tiny_dataset, out))
    assert [r["step"] for r in CSVLogger(out / "train_log.csv").rows()] == [1, 2, 3, 4]
    assert not any(path.exists() for path in stale) and (out / "checkpoints" / "notes.txt").is_file()


def test_max_minutes_stops_cleanly_and_the_run_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path / "full")
    train(cfg)
    # Spent after the first step; that step is logged although log_every would skip it.
    budgeted = {**cfg, "out_dir": str(tmp_path / "budgeted"), "max_minutes": 1e-9, "log_every": 3}
    with pytest.warns(UserWarning, match="max_minutes .* after step 1 of 4"):
        train(budgeted)
    assert [p.name for p in Checkpointer(tmp_path / "budgeted" / "checkpoints").checkpoints()] == ["step_00000001.pt"]
    assert [r["step"] for r in CSVLogger(tmp_path / "budgeted" / "train_log.csv").rows()] == [1]
    assert (tmp_path / "budgeted" / "final" / "model.safetensors").is_file()  # usable weights after a stop
    train({**budgeted, "max_minutes": None})
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "budgeted")
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="max_minutes"):
        load_train_config({**cfg, "max_minutes": 0})


def test_an_unusable_perceptual_setting_is_refused_when_the_config_loads(tiny_dataset, tmp_path):
    """Patches smaller than MS-SSIM's 11-pixel window (the substitute) or than VGG's 16 (one pixel left at relu5_3,
    after four 2x2 poolings), or a missing VGG file: refused before the run folder is written, not at the first
    step; without the perceptual term the patch size is free."""
    (tmp_path / "vgg16.pth").write_bytes(b"not read before the patch size is checked")
    vgg = {"lambda_lpips": 0.1, "perceptual_weights": str(tmp_path / "vgg16.pth")}
    cases = [
        ({"patch_size": 8, "loss": {"lambda_lpips": 0.1}}, "patch_size must be at least 11 for the perceptual loss"),
        ({"patch_size": 12, "loss": vgg}, r"at least 16 for the perceptual loss by VGG"),  # relu5_3: 4 poolings
        ({"loss": {"lambda_lpips": 0.1, "perceptual_weights": str(tmp_path / "vgg.pth")}}, "perceptual_weights file"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            load_train_config(_config(tiny_dataset, tmp_path / "run", **change))
        with pytest.raises(ValueError, match=message):
            train(_config(tiny_dataset, tmp_path / "run", **change))
        assert not (tmp_path / "run").exists()
    load_train_config(_config(tiny_dataset, tmp_path / "run", patch_size=8))
    load_train_config(_config(tiny_dataset, tmp_path / "run", patch_size=11, loss={"lambda_lpips": 0.1}))


def test_init_weights_start_the_model_from_a_file(tiny_dataset, tmp_path, monkeypatch):
    source = tmp_path / "source"
    train(_config(tiny_dataset, source, steps=2))
    weights = source / "final" / "model.safetensors"
    # With the optimiser's updates left out, the weights stay where they started: the export equals the file.
    tuned = tmp_path / "tuned"
    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
        train(_config(tiny_dataset, tuned, steps=1, init_weights=str(weights)))
    a, b = _final_weights(source), _final_weights(tuned)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)

    with pytest.raises(ValueError, match="init_weights file not found"):
        load_train_config(_config(tiny_dataset, tmp_path / "x", init_weights=str(tmp_path / "missing.safetensors")))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(_config(tiny_dataset, tmp_path / "z", init_weights=str(corrupt)))
    wider = {**TINY_MODEL, "decoder": {**TINY_MODEL["decoder"], "hidden_channels": 12}}
    with pytest.raises(ValueError, match="wrong shape"):
        train(_config(tiny_dataset, tmp_path / "y", model=wider, init_weights=str(weights)))


def _sphere_bank(
    radius: float, azimuths: list[float], size: int, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> triposr_trainer._ViewBank:
    """A view bank of one sphere with analytic alpha and camera depth (ray-sphere intersection)."""
    c2w = orbit_c2w(torch.tensor(azimuths), 10.0, 1.9)
    depth, hit = sphere_camera_depth(PerspectiveCameras(c2w, size, size, fov_y_deg=40.0), radius, centre)
    rgba = torch.cat([torch.full((*hit.shape, 3), 0.6), hit[..., None].float()], dim=-1)
    images = (rgba * 255).round().to(torch.uint8)
    return triposr_trainer._ViewBank(images[None], c2w[None], torch.full((1, len(azimuths)), 40.0), depth[None].half())


def test_depth_loss_targets_are_the_camera_depth_of_the_patch_rays(tiny_dataset, tmp_path):
    radius = 0.4
    bank = _sphere_bank(radius, [0.0, 70.0, 160.0, 250.0], 32)
    cfg = load_train_config(
        _config(tiny_dataset, tmp_path, loss={"lambda_mask": 0.5, "lambda_depth": 1.0}, supervision_size=16)
    )
    batch = triposr_trainer._make_batch(bank, cfg, torch.Generator().manual_seed(0))
    valid, target = batch["depth_valid"], batch["target_depth"]
    assert 0 < int(valid.sum()) < int((batch["target_alpha"] > 0).sum())  # outline pixels are left out
    # Independent reference: intersect the (canonical-frame) patch rays with the sphere.
    t_exact, hit = ray_sphere(batch["origins"], batch["directions"], radius)
    assert bool(hit[valid].all())
    z_exact = t_exact * batch["depth_per_t"]
    assert float((target - z_exact)[valid].abs().max()) < 0.02  # 2x2 area averages of a curved surface (limb)
    assert float(triposr_trainer.depth_l1(t_exact, batch["depth_per_t"], target, valid)) < 0.003
    # Scoring the distance along the ray instead of the camera depth is caught (the cosine is <= 0.98 here).
    assert float(triposr_trainer.depth_l1(t_exact, torch.ones_like(t_exact), target, valid)) > 0.01
    # A volume render of the solid sphere gives its depth back.
    renderer = VolumeRenderer(VolumeRenderConfig.triposr(n_samples=256, stratified=False, box_radius=0.87))

    def sphere_field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (points.norm(dim=-1, keepdim=True) < radius).float()
        return 1000.0 * inside, torch.full_like(points, 0.5)

    rendered = renderer.render(sphere_field, batch["origins"].reshape(-1, 3), batch["directions"].reshape(-1, 3))
    depth = rendered["depth"].reshape(valid.shape)
    assert float(triposr_trainer.depth_l1(depth, batch["depth_per_t"], target, valid)) < 0.02
    empty = torch.zeros_like(valid)
    assert float(triposr_trainer.depth_l1(depth, batch["depth_per_t"], target, empty)) == 0.0


def test_occupancy_bce_is_zero_one_at_the_level():
    level = 10.0
    density = torch.tensor([level, level, level * math.e, level / math.e])
    inside = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([math.log(2.0), math.log(2.0), math.log1p(math.exp(-1.0)), math.log1p(math.exp(-1.0))])
    assert float(triposr_trainer.occupancy_bce(density, inside, level)) == pytest.approx(float(expected.mean()))
    assert math.isfinite(float(triposr_trainer.occupancy_bce(torch.zeros(3), torch.zeros(3), level)))


def test_occupancy_labels_are_the_object_in_the_canonical_frame(tiny_dataset, tmp_path):
    radius, centre = 0.25, torch.tensor([0.2, 0.1, -0.15])
    azimuths = [0.0, 70.0, 160.0, 250.0]
    bank = _sphere_bank(radius, azimuths, 64, tuple(centre.tolist()))
    loss = {"lambda_mask": 0.5, "lambda_occupancy": 1.0, "occupancy_points": 4000}
    cfg = load_train_config(_config(tiny_dataset, tmp_path, loss=loss, batch_size=1))
    batch = triposr_trainer._make_batch(bank, cfg, torch.Generator().manual_seed(0))
    points, inside = batch["occupancy_points"][0], batch["occupancy_inside"][0].bool()
    assert points.shape == (4000, 3) and 0.2 < float(inside.float().mean()) < 0.6  # half the points near the surface
    # The sphere's centre in the canonical frame of each possible input view: the labels must be that ball.
    world_to_canonical, _ = relative_cameras(bank.c2w[0], bank.c2w[0][:, None], 1.9)
    centres = world_to_canonical[:, :3, :3] @ centre + world_to_canonical[:, :3, 3]
    agreement = torch.stack([((points - c).norm(dim=-1) < radius) == inside for c in centres]).float().mean(dim=1)
    assert float(agreement.max()) > 0.94  # the rest: outline pixels and the bulges of the hull of 4 level views
    assert float(agreement.sort().values[-2]) < 0.85  # the other views' frames do not fit
    assert float(((points - centre).norm(dim=-1) < radius).eq(inside).float().mean()) < 0.85  # nor the world frame


def test_reframed_inputs_are_framed_as_photos_and_the_supervision_follows(tiny_dataset, tmp_path):
    # Off-centre (so is its silhouette), and near the plane z = 0 of every view's canonical frame, where the image
    # zoom and the scene's similarity agree exactly (views from the front and the back).
    radius, centre, size = 0.25, torch.tensor([0.2, 0.1, 0.0]), 64
    bank = _sphere_bank(radius, [0.0, 180.0, 5.0, 185.0], size, tuple(centre.tolist()))
    data = {"root": str(tiny_dataset), "reframe": True}
    model = {**TINY_MODEL, "foreground_ratio": 0.7}  # the framing the inputs get
    cfg = load_train_config(_config(tiny_dataset, tmp_path, model=model, batch_size=1, patch_size=16, data=data))
    batch = triposr_trainer._make_batch(bank, cfg, torch.Generator().manual_seed(0))
    # The input is framed as the preprocessing frames a photo: bounding box centred, its longer side 0.7 of the image.
    alpha = (batch["input_rgb"][0] - cfg.data.input_background).abs().amax(dim=-1) > 0.05  # sphere grey 0.6 on 0.5
    rows, cols = alpha.any(dim=1).nonzero()[:, 0], alpha.any(dim=0).nonzero()[:, 0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    assert max(bottom - top, right - left) == pytest.approx(0.7 * size, abs=1.5)
    assert ((top + bottom) / 2, (left + right) / 2) == pytest.approx((size / 2, size / 2), abs=1.0)
    # The drawn input view, its motion, and the sphere in its canonical frame.
    world_to_canonical, _ = relative_cameras(bank.c2w[0], bank.c2w[0][:, None], 1.9)
    images = bank.images[0].float() / 255
    reframed, zoom, shift = reframe_views(images, torch.full((4,), 0.7), 1.9, 40.0)
    composites = reframed[..., :3] * reframed[..., 3:] + 0.5 * (1 - reframed[..., 3:])
    view = int((composites - batch["input_rgb"]).abs().flatten(1).amax(dim=1).argmin())  # the drawn input view
    k, t = float(zoom[view]), shift[view]
    sphere = world_to_canonical[view, :3, :3] @ centre + world_to_canonical[view, :3, 3]
    moved_centre, moved_radius = k * sphere + t, k * radius
    assert k > 1.2  # the sphere fills about half the image side: zoomed in
    # Independent of the trainer's formulas: the moved sphere seen by the canonical camera is the reframed input
    # (up to perspective: the similarity is exact in the plane z = 0 only).
    _, seen = sphere_camera_depth(input_camera(size), moved_radius, tuple(moved_centre.tolist()))
    assert mask_iou(seen[0].float(), alpha.float()) > 0.9
    _, unmoved = sphere_camera_depth(input_camera(size), radius, tuple(sphere.tolist()))
    assert mask_iou(unmoved[0].float(), alpha.float()) < 0.6
    # The supervision rays see the moved sphere where the (unchanged) targets show the sphere.
    _, hit = ray_sphere(batch["origins"] - moved_centre, batch["directions"], moved_radius)
    assert float(((batch["target_alpha"] > 0.5) == hit).float().mean()) > 0.97
    _, hit = ray_sphere(batch["origins"] - sphere, batch["directions"], radius)
    assert float(((batch["target_alpha"] > 0.5) == hit).float().mean()) < 0.9
    train(_config(tiny_dataset, tmp_path / "run", steps=2, data={**data, "reframe_jitter": 0.1}))  # runs end to end
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="reframe"):
        load_train_config(_config(tiny_dataset, tmp_path, data=data, loss={"lambda_depth": 1.0}))
    with pytest.raises(ValueError, match="reframe_jitter"):
        load_train_config(_config(tiny_dataset, tmp_path, data={**data, "reframe_jitter": 0.7}))


def _assert_loss_is_the_weighted_sum(rows: list[dict[str, float]], weights: dict[str, float]) -> None:
    """Each logged ``loss`` is ``mse`` + the sum of ``weight * term`` (to the log's 6 significant digits), and every
    weighted term is large enough for that check to see it left out."""
    for row in rows:
        weighted = [weight * row[column] for column, weight in weights.items()]
        assert all(np.isfinite(term) and term > 1e-3 * row["loss"] for term in weighted), row
        assert row["loss"] == pytest.approx(row["mse"] + sum(weighted), rel=2e-5), row


def _check_optional_loss_term(dataset: Path, tmp_path: Path, weight: str, column: str) -> None:
    """Two steps with ``loss.<weight> = 0.5`` log a finite, positive ``column`` that is part of the optimised loss;
    a negative weight is refused."""
    out = tmp_path / weight
    train(_config(dataset, out, steps=2, loss={"lambda_mask": 0.5, weight: 0.5}))
    _assert_loss_is_the_weighted_sum(CSVLogger(out / "train_log.csv").rows(), {"mask_bce": 0.5, column: 0.5})
    with pytest.raises(ValueError, match=weight):
        load_train_config(_config(dataset, tmp_path, loss={weight: -1.0}))


def test_training_with_the_occupancy_loss(tiny_dataset, tmp_path):
    _check_optional_loss_term(tiny_dataset, tmp_path, "lambda_occupancy", "occupancy_bce")
    for bad in (
        {"occupancy_level": 0.0},
        {"occupancy_box": None},
        {"occupancy_points": 1},
        {"occupancy_points": 1 << 30},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_train_config(_config(tiny_dataset, tmp_path, loss=bad))
    # Without occupancy_level the term is scored at the model's own mesh level.
    model_config = {**TINY_MODEL, "renderer": {"mesh_threshold": 7.0}}
    terms = {}
    for level in (None, 7.0, 20.0):
        loss = {"lambda_mask": 0.5, "lambda_occupancy": 1.0, "occupancy_level": level}
        cfg = load_train_config(_config(tiny_dataset, tmp_path, loss=loss, model=model_config))
        torch.manual_seed(0)
        step = triposr_trainer._TrainStep(triposr_trainer._build_model(cfg.model), cfg)
        batch = triposr_trainer._make_batch(
            triposr_trainer._load_views(cfg, False), cfg, torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            terms[level] = float(step(batch, torch.Generator().manual_seed(1))["occupancy_bce"])
    assert terms[None] == terms[7.0] != terms[20.0]


def test_training_with_the_distortion_loss(tiny_dataset, tmp_path):
    _check_optional_loss_term(tiny_dataset, tmp_path, "lambda_distortion", "distortion")


def test_training_with_the_depth_loss(tiny_dataset, tmp_path, monkeypatch):
    _check_optional_loss_term(tiny_dataset, tmp_path, "lambda_depth", "depth_l1")
    original = MultiViewDataset.__getitem__
    monkeypatch.setattr(MultiViewDataset, "__getitem__", lambda self, i: {**original(self, i), "has_depth": False})
    with pytest.raises(ValueError, match="need depth maps"):
        train(_config(tiny_dataset, tmp_path / "none", steps=1, loss={"lambda_depth": 0.5}))


def test_nan_loss_stops_with_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    original = triposr_trainer._TrainStep.forward
    calls = {"n": 0}

    def poisoned(self, batch, generator):
        terms = original(self, batch, generator)
        calls["n"] += 1
        if calls["n"] >= 4:  # the 4th step produces NaN (the log's steps 1-3 are finite; 4 as in the CSV's numbering)
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(triposr_trainer._TrainStep, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 4; the last good checkpoint is kept at .*step_00000002"
    ):
        train(_config(tiny_dataset, out, steps=6, log_every=1))
    logged = [int(row["step"]) for row in csv.DictReader(open(out / "train_log.csv"))]
    assert logged == [1, 2, 3]  # the message's step is the first one the log does not have
    kept = Checkpointer(out / "checkpoints")
    assert [p.name for p in kept.checkpoints()] == ["step_00000002.pt"]
    assert kept.load_latest(triposr_trainer._build_model(TINY_MODEL))["step"] == 2


def test_an_update_that_breaks_the_weights_stops_before_they_are_checkpointed(tiny_dataset, tmp_path, monkeypatch):
    """A finite loss can be followed by an update that makes weights NaN: that state must never be checkpointed,
    or the "last good checkpoint" could not be resumed."""
    original, calls = torch.optim.AdamW.step, {"n": 0}

    def breaking_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the update of step index 3, whose loss was finite
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", breaking_step)
    out = tmp_path / "broken"
    message = r"the update made a weight NaN or infinite at step 4; the last good checkpoint is kept at .*step_00000003"
    with pytest.raises(TrainingDiverged, match=message):
        train(_config(tiny_dataset, out, steps=6, checkpoint_every_steps=1))
    kept = Checkpointer(out / "checkpoints")
    assert kept.latest().name == "step_00000003.pt"  # written after step index 2; step index 3's never
    model = triposr_trainer._build_model(TINY_MODEL)
    kept.load_latest(model)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    monkeypatch.undo()
    train(_config(tiny_dataset, out, steps=6, checkpoint_every_steps=1))  # resumes to the end
    assert all(bool(torch.isfinite(w).all()) for w in _final_weights(out).values())


def test_non_finite_activations_in_a_training_step_are_a_divergence(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Weights finite but so large that the scene code overflows: the model's own check (scene_code contains NaN)
    inside a training step means the run diverged (exit 1, checkpoint named), not that the input was bad (exit 2)."""
    from monorecon import cli
    from monorecon.models.triposr.model import TripoSRModel

    original, calls = TripoSRModel.encode, {"n": 0}

    def overflowing(self, images):
        calls["n"] += 1
        code = original(self, images)
        return code * float("inf") if calls["n"] == 4 else code  # the 4th step

    monkeypatch.setattr(TripoSRModel, "encode", overflowing)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_dataset, tmp_path / "run", steps=6)))
    assert cli.main(["train", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("monorecon: error: training diverged: scene_code contains NaN")
    assert re.search(r"at step 4; the last good checkpoint is kept at .*step_00000002\.pt", err), err


def test_resume_takes_the_optimiser_settings_from_the_config(tiny_dataset, tmp_path):
    """ "Lower the learning rate, then resume" (the divergence message) must lower it: a checkpoint restores the
    optimiser's moments and step, the config its settings."""
    full = tmp_path / "full"
    train(_config(tiny_dataset, full))
    lowered = tmp_path / "lowered"
    shutil.copytree(full, lowered)
    (lowered / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(lowered / "final")
    with pytest.warns(UserWarning, match=r"resuming step_00000002\.pt with the config's optimiser settings \(lr, "
                                         r"weight_decay changed"):  # fmt: skip
        train(_config(tiny_dataset, lowered, optim={"lr": 1e-4, "warmup_steps": 1, "weight_decay": 0.0}))
    before, after = CSVLogger(full / "train_log.csv").rows(), CSVLogger(lowered / "train_log.csv").rows()
    assert [r["lr"] for r in after[:2]] == [r["lr"] for r in before[:2]]  # the steps before the checkpoint
    for old, new in zip(before[2:], after[2:], strict=True):  # the same schedule from a base rate 10 x lower
        assert new["lr"] == pytest.approx(old["lr"] / 10, rel=1e-12)
    assert yaml.safe_load((lowered / "config.yaml").read_text())["optim"]["lr"] == 1e-4


def test_nan_loss_is_one_line_and_exit_1_from_the_cli(tiny_dataset, tmp_path, monkeypatch, capsys):
    from monorecon import cli

    original = triposr_trainer._TrainStep.forward
    monkeypatch.setattr(
        triposr_trainer._TrainStep, "forward",
        lambda self, batch, generator: {**original(self, batch, generator), "loss": torch.tensor(float("inf"))},
    )  # fmt: skip
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_dataset, tmp_path / "inf", steps=2)))
    assert cli.main(["train", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("monorecon: error: training diverged: loss is inf at step 1; no checkpoint had been written")


def test_errors_under_torchrun_name_the_process(tmp_path, monkeypatch, capsys):
    from monorecon import cli

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them; the config is read before any process group
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("monorecon: error (rank 1 of 2): ")


def _copy_with_a_corrupt_view(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the dataset whose first object has an unreadable PNG; returns (root, that object's folder)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    broken = sorted(p for p in data.iterdir() if p.is_dir())[0]
    (broken / "rgba" / "001.png").write_bytes(b"not a png")
    return data, broken


def _bank_images(item: dict) -> torch.Tensor:
    """A dataset item's images as the view bank stores them (8-bit)."""
    return (item["images"] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def test_corrupt_object_is_reported_and_skipped(tiny_dataset, tmp_path):
    data, _ = _copy_with_a_corrupt_view(tiny_dataset, tmp_path)
    with pytest.warns(UserWarning, match="001.png"):
        train(_config(data, tmp_path / "out", steps=1, checkpoint_every_steps=1))
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


def test_view_bank_skips_an_unreadable_object_and_keeps_the_others_exactly(tiny_dataset, tmp_path):
    from monorecon.data import MultiViewDataset
    from monorecon.train.triposr_trainer import _load_views

    data, broken = _copy_with_a_corrupt_view(tiny_dataset, tmp_path)
    with pytest.warns(UserWarning, match="001.png"):
        bank = _load_views(load_train_config(_config(data, tmp_path / "out")), show_progress=False)
        items = [item for item in MultiViewDataset(data, split="train") if item["object_id"] != broken.name]
    assert bank.images.shape[0] == len(items) > 0
    for index, item in enumerate(items):  # the bank holds the readable objects, in order, as 8-bit images
        assert torch.equal(bank.images[index], _bank_images(item))
        assert torch.equal(bank.c2w[index], item["c2w"]) and torch.equal(bank.fov_y_deg[index], item["fov_y_deg"])


def _png_with_undecodable_pixels(size: int) -> bytes:
    """A PNG whose chunks (and CRCs) are well formed but whose pixel data does not inflate: PIL's verify() passes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # RGBA, 8 bits
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not deflate data") + chunk(b"IEND", b"")


def test_view_bank_skips_objects_it_cannot_hold_and_says_why(tiny_dataset, tmp_path):
    """Another view count, cameras away from the canonical distance, pixels that do not decode: each such object is
    named in a warning and left out; the others are kept."""
    import json

    from monorecon.train.triposr_trainer import _load_views

    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    first, second, third = sorted(p for p in data.iterdir() if p.is_dir())
    cameras = json.loads((second / "cameras.json").read_text())
    cameras["views"] = cameras["views"][:2]  # two views, the others three
    (second / "cameras.json").write_text(json.dumps(cameras))
    cameras = json.loads((third / "cameras.json").read_text())
    for view in cameras["views"]:
        view["c2w"][2][3] *= 1.5  # the same rotations, farther away
    (third / "cameras.json").write_text(json.dumps(cameras))
    with pytest.warns(UserWarning) as caught:
        bank = _load_views(load_train_config(_config(data, tmp_path / "out")), show_progress=False)
    messages = [str(w.message) for w in caught]
    # Named by folder, not by id alone: with several data roots, the same id can be in each.
    assert any(f"skipping object {second}: 2 views of 32x32, unlike the first object's 3 views" in m
               for m in messages), messages  # fmt: skip
    assert any(f"skipping {third}: cameras not at input_distance=1.9" in m for m in messages), messages
    assert bank.images.shape[0] == 1
    (first / "rgba" / "001.png").write_bytes(_png_with_undecodable_pixels(32))
    with pytest.warns(UserWarning) as caught:
        bank = _load_views(load_train_config(_config(data, tmp_path / "out")), show_progress=False)
    # Found when the reader is built (every PNG is decoded there), so the object never reaches the bank.
    assert any(str(w.message).startswith(f"skipping object {first}: cannot read image {first}") for w in caught)
    assert tuple(bank.images.shape[:2]) == (1, 2)  # the two-view object is now the first, and the only one held


def test_view_bank_reads_a_list_of_roots_in_order(tiny_dataset, tmp_path):
    from monorecon.data import MultiViewDataset
    from monorecon.train.triposr_trainer import _load_views

    other = tmp_path / "other"
    sampling = ViewSampling(fov_y_deg=40.0, fill=FILL_AT_1_9)
    synthesize_dataset(other, 2, 3, 32, seed=9, progress=False, sampling=sampling, split_fractions=(1.0, 0.0, 0.0))
    config = _config(tiny_dataset, tmp_path / "out")
    config["data"]["root"] = [str(other), str(tiny_dataset)]
    bank = _load_views(load_train_config(config), show_progress=False)
    items = [*MultiViewDataset(other, split="train"), *MultiViewDataset(tiny_dataset, split="train")]
    assert bank.images.shape[0] == len(items) == 5
    for index, item in enumerate(items):  # the second root's objects follow the first's
        assert torch.equal(bank.images[index], _bank_images(item))
        assert torch.equal(bank.c2w[index], item["c2w"])
    for root, message in (([str(other), str(other)], "twice"), ([str(other), 3], r"root\[1\] must be a string")):
        config["data"]["root"] = root
        with pytest.raises(ValueError, match=message):
            load_train_config(config)
    config["data"]["root"] = [str(other), str(tmp_path / "missing")]
    with pytest.raises(ValueError, match="dataset folder not found"):
        _load_views(load_train_config(config), show_progress=False)


def test_dataset_with_wrong_camera_distance_is_rejected(tmp_path):
    root = tmp_path / "far"
    synthesize_dataset(
        root, 1, 2, 32, seed=0, progress=False, split_fractions=(1.0, 0.0, 0.0), sampling=ViewSampling(fill=0.85)
    )  # cameras at distance 1.69
    with pytest.raises(ValueError, match=r"input_distance=1\.9"):
        train(_config(root, tmp_path / "out", steps=1))


def test_trainer_module_reports_bad_input_in_one_line(tiny_dataset, tmp_path, capsys):
    """``python -m monorecon.train.triposr_trainer`` (what torchrun runs) answers like ``monorecon train``."""
    objaverse_style = tmp_path / "renders"
    first_object = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    shutil.copytree(first_object, objaverse_style / "a")
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(_config(objaverse_style, tmp_path / "out")))
    assert triposr_trainer.main([str(config_path), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("monorecon: error:") and "no index.json" in captured.err
    assert not (tmp_path / "out").exists()


def test_torchrun_two_processes_end_with_identical_weights(tiny_dataset, tmp_path):
    """Two gloo processes under torchrun: each rank draws its own batches (step_generator's rank) and DDP averages
    the gradients, so both ranks end with the same trained weights."""
    out = tmp_path / "ddp"
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(_config(tiny_dataset, out, steps=2, batch_size=1)))
    script = tmp_path / "run_rank.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            import torch
            import torch.distributed as dist
            from safetensors.torch import save_file
            from monorecon.train.triposr_trainer import _build_model, train
            import monorecon.train.triposr_trainer as t

            built, inputs = [], []
            original = t._build_model
            t._build_model = lambda cfg: built.append(original(cfg)) or built[-1]
            make_batch = t._make_batch
            t._make_batch = lambda *a: inputs.append(make_batch(*a)) or inputs[-1]
            train({str(config_path)!r})
            rank = dist.get_rank()
            state = {{k: v.contiguous() for k, v in built[0].state_dict().items()}}
            state["drawn_inputs"] = torch.stack([batch["input_rgb"] for batch in inputs])
            save_file(state, {str(out)!r} + f"/rank{{rank}}.st")
            dist.barrier()
            dist.destroy_process_group()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    result = subprocess.run([*torchrun, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(str(out / "rank0.st")), load_file(str(out / "rank1.st"))
    # Each rank draws its own objects and views (step_generator's rank), the averaged gradients keep them in step.
    drawn0, drawn1 = rank0.pop("drawn_inputs"), rank1.pop("drawn_inputs")
    assert drawn0.shape == (2, 1, 32, 32, 3) and not torch.equal(drawn0, drawn1)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    seed_everything(3)
    init = triposr_trainer._build_model(TINY_MODEL).state_dict()
    assert not torch.equal(rank0["decoder.layers.0.weight"], init["decoder.layers.0.weight"])  # it trained


def test_scale_density_multiplies_densities_exactly():
    seed_everything(0)
    model = triposr_trainer._build_model(TINY_MODEL).eval()
    code = torch.randn(1, *model.scene_code_shape)
    points = torch.rand(1, 50, 3) - 0.5
    before_density, before_rgb = model.query(code, points)
    triposr_trainer.scale_density(model, 2.5)
    after_density, after_rgb = model.query(code, points)
    torch.testing.assert_close(after_density, 2.5 * before_density, rtol=1e-5, atol=0)
    torch.testing.assert_close(after_rgb, before_rgb)
    with pytest.raises(ValueError, match="factor"):
        triposr_trainer.scale_density(model, 0.0)


def test_shipped_training_configs_load_and_the_last_stage_is_the_bundled_architecture():
    from monorecon.api import DEFAULT_MODEL_DIR

    configs = Path(__file__).resolve().parents[1] / "configs"
    stages = {}
    stems = ["triposr_small", "triposr_small_finetune", "triposr_small_deep"]
    stems += ["triposr_small_organic", "triposr_small_organic2", "triposr_small_organic3", "triposr_small_organic4"]
    stems += ["triposr_small_stretch", "triposr_small_stretch25", "triposr_small_stretch3"]
    stems += ["triposr_small_el60", "triposr_small_el60b", "triposr_small_gpu"]
    for stem in stems:
        name = f"{stem}.yaml"
        raw = yaml.safe_load((configs / name).read_text())
        raw["init_weights"] = None  # a path on the training machine
        stages[name] = load_train_config(raw)
        triposr_trainer._build_model(stages[name].model)  # the architecture builds
    shipped = yaml.safe_load((DEFAULT_MODEL_DIR / "config.yaml").read_text())
    last = dict(stages["triposr_small_el60b.yaml"].model)
    for section in ("image_encoder", "tokenizer", "backbone", "post_processor", "decoder", "renderer"):
        assert last[section] == shipped[section], section
        # Stages 5-13 fine-tune stage 4's architecture; the mesh level and the silhouette fill are the last stage's.
        same = {k: v for k, v in last[section].items() if k not in ("mesh_threshold", "silhouette_fill")}
        assert same.items() <= stages["triposr_small_deep.yaml"].model[section].items(), section
    assert last["foreground_ratio"] == shipped["foreground_ratio"] == 0.7
    assert stages["triposr_small_gpu.yaml"].model == last  # the GPU stage fine-tunes the bundled weights
    assert stages["triposr_small_deep.yaml"].data.recolor_prob > stages["triposr_small_finetune.yaml"].data.recolor_prob
    # Stage 4 grows stage 3 (same widths) to more layers: deepen_triposr_weights' precondition.
    previous = dict(stages["triposr_small_finetune.yaml"].model)
    for section, key in (("image_encoder", "num_layers"), ("backbone", "num_layers")):
        assert last[section][key] > previous[section][key]
        assert {k: v for k, v in last[section].items() if k != key} == {
            k: v for k, v in previous[section].items() if k != key
        }


# --------------------------------------------------------------------------------------------------------------------
# pinned closed forms (mutation-testing gaps)
# --------------------------------------------------------------------------------------------------------------------
def test_seed_everything_seeds_torch_numpy_and_python():
    """After ``seed_everything(s)`` the global torch, NumPy and Python streams are those of generators freshly seeded
    with ``s`` (so a run's initialisation and any third-party draws repeat)."""
    import random

    for seed in (0, 12345):
        seed_everything(seed)
        got = (torch.rand(4), np.random.rand(3), random.random())  # noqa: NPY002
        torch.testing.assert_close(got[0], torch.rand(4, generator=torch.Generator().manual_seed(seed)))
        np.testing.assert_array_equal(got[1], np.random.RandomState(seed).rand(3))
        assert got[2] == random.Random(seed).random()


def test_patch_centre_probabilities_are_the_documented_mixture():
    """A foreground pixel is a patch centre with probability ``p / n_fg + (1 - p) / (H W)``, a background one with
    ``(1 - p) / (H W)`` (module docstring): counted on 2 x 2 images with one foreground pixel, patches of one pixel
    (corner = centre), p = 0.6, so 0.7 and 0.1 each."""
    n = 40_000
    alpha = torch.zeros(n, 2, 2)
    alpha[:, 0, 1] = 1.0
    corners = sample_patches(alpha, 1, foreground_prob=0.6, generator=torch.Generator().manual_seed(1))
    frequency = torch.bincount(corners[:, 0] * 2 + corners[:, 1], minlength=4).double() / n
    expected = torch.tensor([0.1, 0.7, 0.1, 0.1], dtype=torch.float64)
    assert float((frequency - expected).abs().max()) < 0.01, frequency  # 4.5 standard deviations of a 0.1 bin
    # Images without foreground draw uniformly whatever p.
    empty = sample_patches(torch.zeros(n, 2, 2), 1, foreground_prob=1.0, generator=torch.Generator().manual_seed(2))
    frequency = torch.bincount(empty[:, 0] * 2 + empty[:, 1], minlength=4).double() / n
    assert float((frequency - 0.25).abs().max()) < 0.012, frequency


def test_a_foreground_patch_is_centred_on_its_pixel_and_shifted_inside():
    """With p = 1 and one foreground pixel the centre is that pixel: the corner is ``pixel - patch // 2``, then moved
    to keep the patch inside the image."""
    alpha = torch.zeros(3, 7, 7)
    alpha[0, 3, 3] = alpha[1, 0, 6] = alpha[2, 5, 1] = 1.0
    corners = sample_patches(alpha, 3, foreground_prob=1.0, generator=torch.Generator().manual_seed(0))
    assert corners.tolist() == [[2, 2], [0, 4], [4, 0]]


def test_mse_mask_bce_and_perceptual_terms_are_the_documented_formulas(tiny_dataset, tmp_path):
    """The step's loss on given renders and targets: ``MSE(rgb) + lambda_lpips * perceptual(rgb as NCHW patches) +
    lambda_mask * BCE(opacity against alpha)``, each term written out here in NumPy (the perceptual substitute by its
    module's formula on hand-transposed patches)."""
    from monorecon.losses.perceptual import PerceptualLoss

    loss = {"lambda_mask": 0.3, "lambda_lpips": 0.2}
    cfg = load_train_config(_config(tiny_dataset, tmp_path, loss=loss, patch_size=12, batch_size=2))
    step = triposr_trainer._TrainStep(triposr_trainer._build_model(cfg.model), cfg)
    g = torch.Generator().manual_seed(4)
    shape = (2, 2, 12, 12)
    rgb, target_rgb = torch.rand(*shape, 3, generator=g), torch.rand(*shape, 3, generator=g)
    target_rgb[..., :6, :] = 1.0  # some white background in the targets
    opacity, target_alpha = torch.rand(shape, generator=g) * 0.98 + 0.01, (torch.rand(shape, generator=g) > 0.5).float()
    step._render_patches = lambda batch, generator: (None, rgb, opacity, torch.zeros(shape), [])
    terms = step({"input_rgb": torch.zeros(2, 32, 32, 3), "target_rgb": target_rgb, "target_alpha": target_alpha}, g)
    r, t, o, a = (v.double().numpy() for v in (rgb, target_rgb, opacity, target_alpha))
    mse = ((r - t) ** 2).mean()
    bce = -(a * np.log(o) + (1 - a) * np.log(1 - o)).mean()
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.reshape(4, 12, 12, 3).transpose(0, 3, 1, 2)))  # noqa: E731
    perceptual = float(PerceptualLoss()(nchw(r), nchw(t)).mean())
    assert float(terms["mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(terms["mask_bce"]) == pytest.approx(bce, rel=1e-5)
    assert float(terms["perceptual"]) == pytest.approx(perceptual, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(mse + 0.3 * bce + 0.2 * perceptual, rel=1e-5)


def test_the_perceptual_term_uses_the_configured_vgg_weights(tiny_dataset, tmp_path):
    """``loss.perceptual_weights`` (a local VGG16 file) makes the perceptual term LPIPS on those weights, frozen."""
    from monorecon.losses.perceptual import VGGFeatures

    vgg = VGGFeatures("vgg16", layers=("relu5_3",), seed=5)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    loss = {"lambda_lpips": 0.1, "perceptual_weights": str(tmp_path / "vgg16.pth")}
    cfg = load_train_config(_config(tiny_dataset, tmp_path, loss=loss, patch_size=16))
    perceptual = triposr_trainer._TrainStep(triposr_trainer._build_model(cfg.model), cfg).perceptual
    assert perceptual.uses_vgg
    torch.testing.assert_close(perceptual.vgg.features[0].weight, vgg.features[0].weight)
    assert not any(p.requires_grad for p in perceptual.parameters())


def test_optimiser_steps_see_the_schedule_the_clipped_gradients_and_the_config(tiny_dataset, tmp_path, monkeypatch):
    """Every AdamW step is recorded: the learning rate of step s is ``lr * (s + 1) / warmup`` during warm-up, then
    ``lr * (min + (1 - min) (1 + cos(pi (s - warmup) / (steps - warmup))) / 2)``; the gradient's total norm is clipped
    to ``grad_clip`` (the logged ``grad_norm`` is the norm before clipping); betas and weight decay are the config's.
    Rows are logged every ``log_every`` steps and at the last step, which is also always checkpointed."""
    seen = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        group = self.param_groups[0]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in group["params"] if p.grad is not None]))
        seen.append((group["lr"], group["betas"], group["weight_decay"], float(norm)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    optim = {"lr": 2e-3, "warmup_steps": 2, "min_lr_ratio": 0.2, "grad_clip": 1e-3, "betas": [0.8, 0.9],
             "weight_decay": 0.01}  # fmt: skip
    out = tmp_path / "run"
    train(_config(tiny_dataset, out, steps=5, optim=optim, log_every=2, checkpoint_every_steps=2))
    expected_lr = [2e-3 * 0.5, 2e-3 * 1.0]
    expected_lr += [2e-3 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 3))) for s in (2, 3, 4)]
    np.testing.assert_allclose([lr for lr, *_ in seen], expected_lr, rtol=1e-12)
    assert all(betas == (0.8, 0.9) and decay == 0.01 for _, betas, decay, _ in seen)
    rows = CSVLogger(out / "train_log.csv").rows()
    assert list(rows[0]) == ["step", "mse", "mask_bce", "loss", "grad_norm", "lr", "elapsed_s"]
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert all(r["grad_norm"] > 10 * 1e-3 for r in rows)  # so the clip was active at the logged steps
    for row in rows:  # a row logs the update of its step: its gradient norm and learning rate
        assert seen[int(row["step"]) - 1][3] == pytest.approx(1e-3, rel=1e-4)
        assert row["lr"] == pytest.approx(expected_lr[int(row["step"]) - 1], rel=1e-5)
    assert all(norm <= 1e-3 * (1 + 1e-4) for *_, norm in seen)
    assert [p.name for p in Checkpointer(out / "checkpoints").checkpoints()][-1] == "step_00000005.pt"


def test_batch_targets_inputs_and_rays_belong_to_the_same_views(tiny_dataset, tmp_path):
    """Four views of one object, each a distinct colour on its left half (right half transparent), patches the whole
    image: supervision view 0 is the input view; targets are composited on white and the input on grey
    ``input_background``; supervision view 0's rays start at the canonical camera (0, 0, input_distance), and the rays
    of every view start where the drawn view's camera is after the rigid motion (dot products with the input
    camera's position kept)."""
    size, azimuths = 16, [0.0, 50.0, 140.0, 260.0]
    colours = torch.tensor([[0.2, 0.4, 0.6], [0.8, 0.2, 0.2], [0.1, 0.7, 0.3], [0.6, 0.6, 0.1]])
    images = torch.zeros(1, 4, size, size, 4)
    images[0, :, :, : size // 2, :3] = colours[:, None, None]
    images[0, :, :, : size // 2, 3] = 1.0
    c2w = orbit_c2w(torch.tensor(azimuths), torch.tensor([10.0, -20.0, 30.0, 0.0]), 1.9)
    bank = triposr_trainer._ViewBank((images * 255).round().to(torch.uint8), c2w[None], torch.full((1, 4), 40.0))
    cfg = load_train_config(_config(tiny_dataset, tmp_path, batch_size=6, n_supervision_views=3, patch_size=size))
    batch = triposr_trainer._make_batch(bank, cfg, torch.Generator().manual_seed(0))
    level = lambda c: (c * 255).round() / 255  # noqa: E731 - colours as the 8-bit bank holds them
    eye = c2w[:, :3, 3]
    for b in range(6):
        left = batch["input_rgb"][b, :, : size // 2]
        input_view = int((level(colours) - left[0, 0]).abs().sum(-1).argmin())
        torch.testing.assert_close(left, level(colours[input_view]).expand_as(left))
        torch.testing.assert_close(batch["input_rgb"][b, :, size // 2 :], torch.full((size, size // 2, 3), 0.5))
        drawn = []
        for s in range(3):
            target = batch["target_rgb"][b, s]
            view = int((level(colours) - target[0, 0]).abs().sum(-1).argmin())
            drawn.append(view)
            torch.testing.assert_close(target[:, : size // 2], level(colours[view]).expand(size, size // 2, 3))
            torch.testing.assert_close(target[:, size // 2 :], torch.ones(size, size // 2, 3))  # white
            assert bool((batch["target_alpha"][b, s, :, : size // 2] == 1).all())
            assert bool((batch["target_alpha"][b, s, :, size // 2 :] == 0).all())
            origins = batch["origins"][b, s].reshape(-1, 3)
            torch.testing.assert_close(origins, origins[:1].expand_as(origins))  # one camera centre per view
            assert float(origins[0] @ torch.tensor([0.0, 0.0, 1.9])) == pytest.approx(
                float(eye[view] @ eye[input_view]), abs=1e-4
            )
        assert drawn[0] == input_view and len(set(drawn)) == 3
        torch.testing.assert_close(batch["origins"][b, 0, 0, 0], torch.tensor([0.0, 0.0, 1.9]), atol=1e-5, rtol=0)


def test_curves_of_columns_spanning_decades_are_drawn_on_a_log_axis(tmp_path):
    """A positive column spanning more than a factor 20 is drawn on a logarithmic y axis: values 1, 10, 100, 1000 then
    lie on the same straight line as 1, 2, 3, 4 on a linear axis (the same curve pixels, up to the axis labels),
    whereas on a linear axis they would bend into a hockey stick."""
    masks = {}
    for name, values in (("log", [1.0, 10.0, 100.0, 1000.0]), ("linear", [1.0, 2.0, 3.0, 4.0])):
        logger = CSVLogger(tmp_path / f"{name}.csv")
        for step, value in enumerate(values, start=1):
            logger.log({"step": step, "loss": value})
        image = np.asarray(Image.open(plot_curves(logger.path, tmp_path / f"{name}.png")).convert("RGB"))
        masks[name] = (image == (30, 90, 200)).all(-1)
    assert masks["linear"].sum() > 100
    differing = (masks["log"] ^ masks["linear"]).sum()
    assert differing < 0.1 * masks["linear"].sum(), differing


def test_depth_is_scored_only_where_the_patch_pixels_are_foreground(tiny_dataset, tmp_path):
    """The depth loss's valid pixels are wholly foreground (alpha > 0.5) with a known depth: a depth map that also
    covers a faint (alpha 0.3) region, e.g. an anti-aliased or semi-transparent edge, is not scored there."""
    size = 16
    images = torch.zeros(1, 4, size, size, 4)
    images[..., :3] = 0.5
    images[0, :, :, : size // 2, 3] = 1.0
    images[0, :, :, size // 2 :, 3] = 0.3
    c2w = orbit_c2w(torch.tensor([0.0, 90.0, 180.0, 270.0]), 10.0, 1.9)
    depth = torch.full((1, 4, size, size), 1.5, dtype=torch.float16)
    bank = triposr_trainer._ViewBank((images * 255).round().to(torch.uint8), c2w[None], torch.full((1, 4), 40.0), depth)
    loss = {"lambda_mask": 0.5, "lambda_depth": 1.0}
    cfg = load_train_config(_config(tiny_dataset, tmp_path, loss=loss, patch_size=size))
    batch = triposr_trainer._make_batch(bank, cfg, torch.Generator().manual_seed(0))
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, : size // 2] = True
    assert torch.equal(batch["depth_valid"], left.expand_as(batch["depth_valid"]))
    torch.testing.assert_close(batch["target_depth"][batch["depth_valid"]], torch.full((2 * 2 * 16 * 8,), 1.5))


# --------------------------------------------------------------------------------------------------------------------
# utils: checkpoints, CSV log, curves, divergence (mutation-testing gaps)
# --------------------------------------------------------------------------------------------------------------------
def test_checkpointer_picks_the_highest_step_and_ignores_other_files(tmp_path):
    """``latest`` is the checkpoint of the highest step, whatever order the files were written in; temporary and
    foreign files in the folder are not checkpoints; ``keep`` below 1 is refused."""
    model = torch.nn.Linear(2, 1)
    checkpointer = Checkpointer(tmp_path, keep=5)
    for step in (10, 2, 7):
        checkpointer.save(step, model)
    for name in ("step_00000099.pt.tmp", ".step_00000050.pt.x1y2z3w4.tmp", "step_99.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"junk")
    assert [p.name for p in checkpointer.checkpoints()] == ["step_00000002.pt", "step_00000007.pt", "step_00000010.pt"]
    assert checkpointer.latest() == tmp_path / "step_00000010.pt"
    assert checkpointer.load_latest(model)["step"] == 10
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        Checkpointer(tmp_path, keep=0)


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A crash while a checkpoint is written (here the disk fills half-way through) leaves no partial file that a
    resume would pick up: the folder still holds exactly the previous, loadable checkpoint."""
    import builtins
    import io as io_module

    model = torch.nn.Linear(64, 64)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, model)
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.file.close()

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return HalfWriter(handle) if "w" in mode and str(tmp_path) in str(file) else handle

    monkeypatch.setattr(builtins, "open", failing_open)
    monkeypatch.setattr(io_module, "open", failing_open)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save(2, model)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000001.pt"]
    assert checkpointer.load_latest(torch.nn.Linear(64, 64))["step"] == 1


def test_checkpoint_load_refuses_foreign_files_and_other_models_and_can_leave_the_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path)
    path = checkpointer.save(4, model)
    with pytest.raises(ValueError, match="does not match the model"):
        checkpointer.load(path, torch.nn.Linear(3, 3))
    foreign = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="is not a monorecon training checkpoint"):
        checkpointer.load(foreign, model)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checkpointer.load(path, model, restore_rng=False)
    torch.testing.assert_close(torch.rand(3), expected)  # the stream is the one seeded here, not the saved one


def test_resumed_schedule_uses_the_config_learning_rate_at_the_restored_step(tmp_path):
    """A run resumed at step 6 with a halved base learning rate continues at half the rate the schedule gives at step
    6, and the warning names ``lr`` as changed."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=2, total_steps=10, min_lr_ratio=0.0)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(6, model, optimizer, scheduler)
    resumed = torch.optim.SGD(model.parameters(), lr=0.5)
    resumed_scheduler = cosine_with_warmup(resumed, warmup_steps=2, total_steps=10, min_lr_ratio=0.0)
    with pytest.warns(UserWarning, match=r"settings \(lr changed"):
        checkpointer.load_latest(model, resumed, resumed_scheduler)
    expected = 0.5 * 0.5 * (1 + math.cos(math.pi * (6 - 2) / (10 - 2)))
    assert resumed.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
    resumed.step()
    resumed_scheduler.step()
    expected = 0.5 * 0.5 * (1 + math.cos(math.pi * (7 - 2) / (10 - 2)))
    assert resumed.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_csv_logger_appends_after_reopening_and_writes_each_value_under_its_header(tmp_path):
    import csv

    path = tmp_path / "run" / "log.csv"
    CSVLogger(path).log({"step": 1, "loss": 0.5})
    reopened = CSVLogger(path)  # a resumed run: the header is read back, earlier rows kept
    reopened.log({"loss": 0.123456789, "step": 1234567})  # keys in another order
    reopened.log({"step": 3, "loss": torch.tensor(2.5)})
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["step", "loss"], ["1", "0.5"], ["1234567", "0.123457"], ["3", "2.5"]]
    with pytest.raises(ValueError, match="differ from the header"):
        reopened.log({"step": 4})


def test_csv_truncation_is_atomic_and_unknown_cells_read_as_nan(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n1,0.5\n2,\n3,abc\n")
    rows = CSVLogger(path).rows()
    assert rows[0] == {"step": 1.0, "loss": 0.5} and all(math.isnan(r["loss"]) for r in rows[1:])
    CSVLogger(path).truncate_after(2)
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,"]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        CSVLogger(path).truncate_after(1)
    monkeypatch.undo()
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,"]  # untouched by the failed rewrite


def _curve_mask(csv_path, png_path, colour=(30, 90, 200), **kwargs):
    image = np.asarray(Image.open(plot_curves(csv_path, png_path, **kwargs)).convert("RGB"))
    return image, (image == colour).all(-1)


def _log(path, columns: dict[str, list[float]]):
    logger = CSVLogger(path)
    for step in range(len(next(iter(columns.values())))):
        logger.log({"step": step + 1, **{name: values[step] for name, values in columns.items()}})
    return path


def test_curves_have_one_panel_per_column_three_to_a_row(tmp_path):
    path = _log(tmp_path / "a.csv", {"loss": [1.0, 2.0], "lr": [0.1, 0.2]})
    image, _ = _curve_mask(path, tmp_path / "a.png")
    assert image.shape[:2] == (220, 2 * 360)  # step is the x axis, not a panel
    path = _log(tmp_path / "b.csv", {name: [1.0, 2.0] for name in "abcd"})
    image, _ = _curve_mask(path, tmp_path / "b.png", panel_size=(200, 150))
    assert image.shape[:2] == (2 * 150, 3 * 200)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['nope'\]"):
        plot_curves(path, tmp_path / "c.png", columns=["nope"])
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(ValueError, match="holds no rows"):
        plot_curves(tmp_path / "empty.csv", tmp_path / "d.png")


def test_a_rising_curve_goes_from_bottom_left_to_top_right(tmp_path):
    _, mask = _curve_mask(_log(tmp_path / "a.csv", {"loss": [1.0, 2.0, 3.0, 4.0]}), tmp_path / "a.png")
    rows, cols = np.nonzero(mask)
    assert rows[cols == cols.min()].mean() > rows[cols == cols.max()].mean() + 100  # image rows grow downwards
    # The panel's plot area spans x from 50 to 350 and y from 20 to 195: the curve reaches its four sides.
    assert abs(cols.min() - 50) <= 2 and abs(cols.max() - 350) <= 2
    assert abs(rows.min() - 20) <= 2 and abs(rows.max() - 195) <= 2


def test_curves_stay_linear_below_a_factor_20_or_with_non_positive_values(tmp_path):
    """On a linear axis an affine change of the values draws the same pixels: [1, 4, 7, 10] (a factor 10),
    [0, 1, 10, 100, 1000] and [-1, 0.5, 30] (not strictly positive) are drawn as [1, 2, 3, 4],
    [1000, 1002, 1020, 1200, 3000] and [8, 11, 70]."""
    for name, values, reference in (
        ("factor10", [1.0, 4.0, 7.0, 10.0], [1.0, 2.0, 3.0, 4.0]),
        ("zero", [0.0, 1.0, 10.0, 100.0, 1000.0], [1000.0, 1002.0, 1020.0, 1200.0, 3000.0]),
        ("negative", [-1.0, 0.5, 30.0], [8.0, 11.0, 70.0]),
    ):
        _, got = _curve_mask(_log(tmp_path / f"{name}.csv", {"v": values}), tmp_path / f"{name}.png")
        _, want = _curve_mask(_log(tmp_path / f"{name}_ref.csv", {"v": reference}), tmp_path / f"{name}_ref.png")
        assert want.sum() > 100 and (got ^ want).sum() < 0.05 * want.sum(), name


def test_curves_skip_non_finite_values_and_mark_a_single_point(tmp_path):
    values = [1.0, 2.0, float("nan"), 3.0, float("inf"), 4.0]
    _, gaps = _curve_mask(_log(tmp_path / "gaps.csv", {"v": values}), tmp_path / "gaps.png")
    (tmp_path / "clean.csv").write_text("step,v\n1,1\n2,2\n4,3\n6,4\n")  # the same rows without the gaps
    _, clean = _curve_mask(tmp_path / "clean.csv", tmp_path / "clean.png")
    assert clean.sum() > 100 and (gaps ^ clean).sum() < 0.05 * clean.sum()
    fifty = [1.0 + (i % 2) for i in range(50)]  # up to 50 points: the raw curve only, no running mean
    _, plain = _curve_mask(_log(tmp_path / "fifty.csv", {"v": fifty}), tmp_path / "fifty.png")
    _, trend = _curve_mask(tmp_path / "fifty.csv", tmp_path / "fifty.png", colour=(20, 60, 160))
    assert plain.sum() > 1000 and not trend.any()
    _, single = _curve_mask(_log(tmp_path / "one.csv", {"v": [2.0]}), tmp_path / "one.png")
    assert 4 <= single.sum() <= 40
    _, empty = _curve_mask(_log(tmp_path / "nan.csv", {"v": [float("nan")] * 3}), tmp_path / "nan.png")
    assert not empty.any()


def test_the_trend_of_an_alternating_loss_is_flat_in_the_middle(tmp_path):
    """200 values alternating 0.5 / 1.5: the raw curve zigzags over the whole panel, the running mean over 200 // 25
    = 8 points (an even window) is the constant 1.0, a horizontal line half-way between the extremes."""
    path = _log(tmp_path / "a.csv", {"loss": [0.5, 1.5] * 100})
    _, trend = _curve_mask(path, tmp_path / "a.png", colour=(20, 60, 160))
    rows, _ = np.nonzero(trend)
    assert trend.sum() > 100 and rows.max() - rows.min() <= 2
    assert abs(rows.mean() - (20 + 195) / 2) <= 2


def test_finite_checks_catch_nan_and_infinities_anywhere_and_name_the_newest_checkpoint(tmp_path):
    from monorecon.core.checks import NonFiniteError
    from monorecon.train.utils import check_finite_loss, check_finite_parameters, diverges_on_non_finite

    checkpointer = Checkpointer(tmp_path, keep=3)
    check_finite_loss(torch.tensor([1.0, 2.0]), 1, checkpointer)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        check_finite_loss(torch.tensor(float("inf")), 1, checkpointer)
    for step in (3, 9, 6):
        checkpointer.save(step, torch.nn.Linear(1, 1))
    newest = tmp_path / "step_00000009.pt"
    for bad in (float("inf"), -float("inf"), float("nan")):
        loss = torch.tensor([0.5, 0.25, bad])
        with pytest.raises(TrainingDiverged) as raised:
            check_finite_loss(loss, 12, checkpointer)
        assert str(raised.value).startswith(f"training diverged: loss is {bad} at step 12; ")
        assert f"the last good checkpoint is kept at {newest}." in str(raised.value)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        check_finite_loss(torch.tensor(float("nan")), 1, tmp_path / "step_00000001.pt")  # a file never written
    good, broken = torch.ones(3), torch.tensor([1.0, float("-inf")])
    check_finite_parameters([good, good], 5)
    for parameters in ([good, broken], [broken, good]):
        with pytest.raises(TrainingDiverged, match="the update made a weight NaN or infinite at step 5"):
            check_finite_parameters(parameters, 5, newest)
    with pytest.raises(TrainingDiverged, match=f"x contains NaN or infinite values at step 7; .*kept at {newest}"):
        with diverges_on_non_finite(7, checkpointer):
            raise NonFiniteError("x contains NaN or infinite values")
    with pytest.raises(ValueError, match="bad input") as raised:  # other errors are not a divergence
        with diverges_on_non_finite(7, checkpointer):
            raise ValueError("bad input")
    assert not isinstance(raised.value, TrainingDiverged)


def test_seeds_must_be_non_negative_integers_and_step_streams_differ_per_step_and_rank():
    for bad in (-1, 1.0, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            seed_everything(bad)
    draws = {(seed, step, rank): tuple(torch.rand(2, generator=step_generator(seed, step, rank)).tolist())
             for seed in (0, 1) for step in (0, 1, 2) for rank in (0, 1)}  # fmt: skip
    assert len(set(draws.values())) == len(draws)


def test_a_fresh_run_among_earlier_checkpoints_is_refused_before_anything_is_written(tiny_dataset, tmp_path):
    """``resume: false`` where an earlier run left step_00000010.pt: the new run's step-2 and step-4 checkpoints
    would be the oldest by step and deleted as written (keep 1), and a later resume would load the earlier run."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_00000010.pt").write_bytes(b"an earlier run's checkpoint")
    message = r"run/checkpoints holds checkpoints of an earlier run \(newest step_00000010.pt\) and resume is off"
    with pytest.raises(ValueError, match=message):
        train(_config(tiny_dataset, out, resume=False, keep_checkpoints=1))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "checkpoints", "checkpoints/step_00000010.pt",
    ]  # fmt: skip
    (out / "checkpoints" / "step_00000010.pt").unlink()  # removed by the user: the run starts over
    train(_config(tiny_dataset, out, resume=False, keep_checkpoints=1))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000004.pt"]
