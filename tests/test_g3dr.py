"""G3DR: generator shapes and frames, view schedule, losses, depth regularisation, data, training, metrics."""

from __future__ import annotations

import csv
import math
import shutil
import types

import numpy as np
import pytest
import torch
from PIL import Image

import monorecon.core.volume as volume
from monorecon.core.extract import extract_isosurface
from monorecon.core.mesh import Mesh
from monorecon.eval.g3dr_metrics import ImageFeatures, feature_distance, frechet_distance, non_flatness_score
from monorecon.io.mesh_io import save_mesh
from monorecon.models.g3dr import schedule
from monorecon.models.g3dr.data import (
    RGBDViews,
    canonical_similarity,
    decode_depth_png,
    encode_depth_png,
    load_rgbd_pair,
    save_rgbd_pair,
    views_from_folder,
)
from monorecon.models.g3dr.diffusion import (
    DiffusionConfig,
    DiffusionTrainConfig,
    RGBDDiffusion,
    ddim_sample,
    diffusion_schedule,
    load_rgbd_diffusion,
    train_rgbd_diffusion,
)
from monorecon.models.g3dr.evaluate import calibrate_mesh_threshold
from monorecon.models.g3dr.generator import G3DRGenerator, G3DRModelConfig, view_c2w
from monorecon.models.g3dr.inference import g3dr_reconstruct, load_g3dr, save_reconstruction, turntable
from monorecon.models.g3dr.losses import (
    DeepPerceptualLoss,
    SemanticEncoder,
    embedding_l1,
    masked_l1,
    opacity_loss,
    tv_loss,
)
from monorecon.models.g3dr.trainer import G3DRLossConfig, G3DRTrainConfig, G3DRTrainer, train_g3dr
from monorecon.models.g3dr.unet import UNet


def tiny_model_config(**overrides) -> G3DRModelConfig:
    settings = dict(
        image_size=16, plane_resolution=16, plane_channels=4, positional_channels=2, base_channels=8,
        channel_mults=(1, 2), n_samples=8, n_importance=8, decoder_hidden=16,
    )  # fmt: skip
    return G3DRModelConfig(**{**settings, **overrides})


def random_views(n: int = 4, size: int = 16, seed: int = 0, masked: bool = True) -> RGBDViews:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    rgb = torch.where(mask[:, None], torch.rand(n, 3, size, size, generator=g), torch.ones(n, 3, size, size))
    depth = torch.where(mask, 4.6 + 0.4 * torch.rand(n, size, size, generator=g), torch.full((n, size, size), 6.0))
    return RGBDViews(rgb, depth, mask if masked else None, ["a", "b"] * (n // 2))


def tiny_train_config(tmp_path, **overrides) -> G3DRTrainConfig:
    settings = dict(
        out_dir=str(tmp_path / "run"), steps=4, batch_size=2, render_size=12, model=tiny_model_config(),
        checkpoint_every=2, log_every=1, quiet=True,
    )  # fmt: skip
    return G3DRTrainConfig(**{**settings, **overrides})


# --------------------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------------------
def test_unet_shapes_and_errors():
    net = UNet(5, 7, base_channels=8, channel_mults=(1, 2, 2), cond_dim=6)
    out = net(torch.rand(2, 5, 16, 16), torch.rand(2, 6))
    assert out.shape == (2, 7, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(2, 5, 10, 10), torch.rand(2, 6))
    with pytest.raises(ValueError, match="conditioning"):
        net(torch.rand(2, 5, 16, 16))


def test_generator_shapes():
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config(plane_resolution=8))
    planes = model.encode(torch.rand(3, 3, 16, 16), 4.5 + torch.rand(3, 16, 16))
    assert planes.shape == (3, 3, 4, 8, 8)
    assert [p.shape[-1] for p in model.pyramid(planes)] == [8, 4, 2]
    out = model.render(planes, view_c2w(torch.tensor([0.0, 10.0, -20.0]), torch.zeros(3)), 6)
    assert out["rgb"].shape == (3, 6, 6, 3) and out["depth"].shape == (3, 6, 6) and out["opacity"].shape == (3, 6, 6)
    assert G3DRGenerator(tiny_model_config(multires=False)).pyramid(planes).__len__() == 1
    with pytest.raises(ValueError, match="rgb"):
        model.encode(torch.rand(3, 3, 12, 12), torch.rand(3, 12, 12))
    with pytest.raises(ValueError, match="plane_resolution"):
        tiny_model_config(plane_resolution=6)


def test_canonical_camera_and_plane_frame():
    c2w = view_c2w(0.0, 0.0)[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 5.0]), atol=1e-6)  # front camera on +Z
    assert torch.allclose(view_c2w(90.0, 0.0)[0, :3, 3], torch.tensor([5.0, 0.0, 0.0]), atol=1e-5)
    model = G3DRGenerator(tiny_model_config())
    # Plane 0 holds the row index: a point above the centre (+y) must read the top rows (small index).
    rows = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16, 1).expand(1, 3, 4, 16, 16).clone()
    rows[:, 1:] = 0.0
    feature = torch.tensor([0.0, 0.5, 0.0]), torch.tensor([0.0, -0.5, 0.0])
    up, down = (model.plane_coordinates(p)[None, None] for p in feature)
    from monorecon.core.triplane import sample_triplane

    top, bottom = (sample_triplane(rows, p, reduce="concat")[0, 0, 0] for p in (up, down))
    # y = 0.5 of the box [-1, 1] is the row coordinate -0.5 -> pixel row 3.5 of 16 (align_corners=False).
    assert float(top) == pytest.approx(3.5, abs=1e-5) and float(bottom) == pytest.approx(11.5, abs=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------------------------
def test_view_schedule():
    total = 300
    assert schedule.novel_view_probability(0, total) == 0.0
    assert schedule.novel_view_probability(30, total) == pytest.approx(0.2)
    assert schedule.novel_view_probability(60, total) == pytest.approx(0.4)
    assert schedule.novel_view_probability(290, total) == pytest.approx(0.4)
    g = torch.Generator().manual_seed(0)
    draws = [schedule.use_novel_view(200, total, g) for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(0.4, abs=0.03)
    assert schedule.yaw_divisor(0, total) == 24 and schedule.yaw_divisor(50, total) == pytest.approx(15.0)
    assert schedule.yaw_divisor(100, total) == 6 and schedule.yaw_divisor(250, total) == 6
    yaw, pitch = schedule.sample_novel_angles(5000, 0, total, g)
    assert yaw.abs().max() <= 7.5 + 1e-5 and yaw.abs().max() > 7.0  # pi / 24
    yaw, pitch = schedule.sample_novel_angles(5000, 250, total, g)
    assert yaw.abs().max() <= 30.0 + 1e-5 and yaw.abs().max() > 29.0  # pi / 6
    assert pitch.abs().max() <= 10.0 and pitch.abs().max() > 9.5
    assert yaw.mean().abs() < 1.5  # symmetric
    assert schedule.opacity_weight(0, total) == 0 and schedule.opacity_weight(75, total) == pytest.approx(0.5)
    assert schedule.opacity_weight(200, total) == 1.0
    assert not schedule.canonical_extras_active(150, total) and schedule.canonical_extras_active(151, total)
    with pytest.raises(ValueError, match="total"):
        schedule.novel_view_probability(1, 0)


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------
def test_losses_hand_computed():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[1.5, 2.0], [0.0, 4.0]]])
    mask = torch.tensor([[[True, False], [True, False]]])
    assert float(masked_l1(pred, target)) == pytest.approx((0.5 + 3.0) / 4)
    assert float(masked_l1(pred, target, mask)) == pytest.approx((0.5 + 3.0) / 2)
    rgb_pred, rgb_target = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert float(masked_l1(rgb_pred, rgb_target, mask)) == pytest.approx(1.0)  # channel-first broadcast
    opacity = torch.tensor([[[0.25, 1.0], [0.5, 0.0]]])
    assert float(opacity_loss(opacity)) == pytest.approx((0.75 + 0 + 0.5 + 1.0) / 4)
    assert float(opacity_loss(opacity, mask)) == pytest.approx((0.75 + 0.5) / 2)
    depth = torch.tensor([[[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]])
    # horizontal diffs: 1, 2, 0, 0 -> mean 5/4; vertical: 0, -1, -3 -> mean 10/3
    assert float(tv_loss(depth)) == pytest.approx(5 / 4 + 10 / 3)
    assert float(embedding_l1(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]]))) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="differ"):
        masked_l1(pred, target[:, :1])


def test_feature_losses():
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    encoder = SemanticEncoder()
    assert encoder(images).shape == (2, 30) and not encoder.uses_clip
    # Closed forms of the substitute (spatial mean, then standard deviation, of the 15 feature channels): a plain
    # colour c gives (c, c, 0 ...; 0 ...); halves of colours a and b give a cell-colour mean (a + b) / 2 and
    # standard deviation |a - b| / 2.
    colour = torch.tensor([0.2, 0.5, 0.9])
    plain = encoder(colour.view(1, 3, 1, 1).expand(1, 3, 24, 24))[0]
    torch.testing.assert_close(plain, torch.cat([colour, colour, torch.zeros(24)]), atol=1e-5, rtol=0)
    a, b = torch.tensor([0.9, 0.1, 0.3]), torch.tensor([0.1, 0.7, 0.5])
    halves = torch.cat([a.view(1, 3, 1, 1).expand(1, 3, 24, 12), b.view(1, 3, 1, 1).expand(1, 3, 24, 12)], dim=-1)
    embedding = encoder(halves)[0]
    torch.testing.assert_close(embedding[:3], (a + b) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding[15:18], (a - b).abs() / 2, atol=1e-6, rtol=0)
    deep = DeepPerceptualLoss()
    assert torch.allclose(deep(images, images), torch.zeros(2))
    assert bool((deep(images, images.flip(1)) > 0).all())
    with pytest.raises(ValueError, match="folder"):
        SemanticEncoder("/nonexistent/clip")


def test_depth_regularization_scales_gradients():
    """Every sample far from the target depth: the gradient of an rgb loss w.r.t. the planes is exactly 0.05 x."""
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config())
    planes = model.encode(torch.rand(1, 3, 16, 16), 4.5 + torch.rand(1, 16, 16)).detach().requires_grad_(True)
    c2w = view_c2w(torch.zeros(1), torch.zeros(1))
    grads = []
    for target in (None, torch.full((1, 6, 6), 100.0)):
        planes.grad = None
        out = model.render(planes, c2w, 6, target_depth=target, deterministic=True)
        out["rgb"].square().sum().backward()
        grads.append(planes.grad.clone())
    assert torch.allclose(grads[1], 0.05 * grads[0], rtol=1e-4, atol=1e-9)
    assert grads[0].abs().sum() > 0


def test_depth_regularization_only_on_canonical_views(monkeypatch, tmp_path):
    calls = []
    original = volume.DepthRegularization.apply

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(volume.DepthRegularization, "apply", counting)
    views = random_views()
    trainer = G3DRTrainer(tiny_train_config(tmp_path, steps=100), views)
    trainer.losses(0, torch.Generator().manual_seed(0))  # P(novel) = 0 at step 0: canonical
    assert len(calls) > 0
    calls.clear()
    monkeypatch.setattr("monorecon.models.g3dr.trainer.use_novel_view", lambda *a, **k: True)
    _, logged = trainer.losses(50, torch.Generator().manual_seed(0))
    assert logged["novel"] == 1.0 and len(calls) == 0
    assert logged["rgb"] == 0 and logged["depth"] == 0 and logged["tv"] > 0
    monkeypatch.setattr("monorecon.models.g3dr.trainer.use_novel_view", lambda *a, **k: False)
    off = G3DRTrainer(tiny_train_config(tmp_path, steps=100, depth_regularization=False), views)
    _, logged = off.losses(10, torch.Generator().manual_seed(0))
    assert logged["novel"] == 0.0 and logged["depth"] > 0 and len(calls) == 0


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def test_depth_png_and_pairs(tmp_path):
    depth = np.array([[4.0, 4.5], [5.0, 5.99]])
    encoded = encode_depth_png(depth)
    assert encoded.dtype == np.uint16 and encoded[0, 1] == 16384  # (4.5 - 4) / 2 * 65536
    assert np.abs(decode_depth_png(encoded) - depth).max() < 2 / 65536
    rgba = np.zeros((8, 8, 4), dtype=np.float32)
    rgba[2:6, 2:6] = [1.0, 0.0, 0.0, 1.0]
    save_rgbd_pair(rgba, np.full((8, 8), 5.0), tmp_path / "obj")
    rgb, d, mask = load_rgbd_pair(tmp_path / "obj.png")
    assert rgb.shape == (3, 8, 8) and mask.sum() == 16 and torch.allclose(rgb[:, 0, 0], torch.ones(3))
    assert torch.allclose(d, torch.full((8, 8), 5.0), atol=1e-4)
    views = views_from_folder(tmp_path, 4)
    assert len(views) == 1 and views.rgb.shape == (1, 3, 4, 4) and views.mask.shape == (1, 4, 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no NAME"):
        views_from_folder(empty, 4)
    for mode in ("L", "RGB", "F"):  # 8 bits, colour, float: not the 16-bit code
        Image.new(mode, (8, 8)).save(tmp_path / "obj_depth.png" if mode != "F" else tmp_path / "f.tif")
        if mode == "F":
            (tmp_path / "f.tif").rename(tmp_path / "obj_depth.png")
        with pytest.raises(ValueError, match=f"obj_depth.png is not a 16-bit greyscale depth PNG \\(mode {mode};"):
            load_rgbd_pair(tmp_path / "obj.png")


def test_canonical_similarity_maps_cameras():
    # A camera at distance 3 with the canonical fov: the origin stays, the camera maps onto the canonical camera.
    c2w = view_c2w(40.0, 20.0, 3.0)[0].double().numpy()
    sim, s, d = canonical_similarity(c2w, 18.0)
    assert d == pytest.approx(3.0) and s == pytest.approx(5.0 / 3.0)
    assert np.allclose(sim[:3, 3], 0.0, atol=1e-6)
    assert np.allclose(sim[:3, :3] @ c2w[:3, 3] + sim[:3, 3], [0.0, 0.0, 5.0], atol=1e-5)
    # A wider fov shrinks the object: s = 5 tan(9 deg) / (d tan(20 deg)).
    assert canonical_similarity(c2w, 40.0)[1] == pytest.approx(5 * math.tan(math.radians(9)) / (3 * math.tan(0.349066)))


def test_rgbd_views_validation():
    with pytest.raises(ValueError, match="depth"):
        RGBDViews(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 7))
    with pytest.raises(ValueError, match="class_names"):
        RGBDViews(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), class_names=["a"])


# --------------------------------------------------------------------------------------------------------------------
# Training, inference
# --------------------------------------------------------------------------------------------------------------------
def test_training_smoke_and_exact_resume(tmp_path, monkeypatch):
    views = random_views()
    run = train_g3dr(tiny_train_config(tmp_path), views)
    for name in ("model.safetensors", "config.yaml", "train_log.csv", "curves.png"):
        assert (run / name).is_file()
    rows = (run / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("step,")
    # Each row's lr is the rate of its own update: no warm-up (2 % of 4 steps), cosine from 1e-3 to 1e-4.
    column = rows[0].split(",").index("lr")
    expected = [1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * s / 4)) / 2) for s in range(4)]
    assert [float(row.split(",")[column]) for row in rows[1:]] == pytest.approx(expected, rel=1e-5)
    first = load_g3dr(run).state_dict()
    # Interrupted after 2 steps, then resumed to 4: identical weights.
    half = train_g3dr(tiny_train_config(tmp_path, out_dir=str(tmp_path / "b"), steps=4, checkpoint_every=2), views)
    (half / "checkpoints" / "step_00000004.pt").unlink()
    steps_run, train_step = [], G3DRTrainer.train_step
    monkeypatch.setattr(
        G3DRTrainer, "train_step", lambda self, step, *a: steps_run.append(step) or train_step(self, step, *a)
    )
    resumed = load_g3dr(train_g3dr(tiny_train_config(tmp_path, out_dir=str(half)), views)).state_dict()
    assert steps_run == [3, 4]  # resumed from the step-2 checkpoint, not trained again from the start
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    without_times = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # noqa: E731 (seconds come last)
    logged = (half / "train_log.csv").read_text().strip().splitlines()
    assert rows[0].endswith(",seconds") and without_times(logged) == without_times(rows)  # the same losses
    with pytest.raises(ValueError, match="steps"):
        tiny_train_config(tmp_path, steps=0)
    with pytest.raises(ValueError, match="unknown config key"):
        train_g3dr({"stepz": 3})


def test_reconstruct_and_save(tmp_path):
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config()).eval()
    rgb, depth = torch.rand(16, 16, 3), 4.8 + 0.2 * torch.rand(16, 16)
    with torch.no_grad():
        planes = model.encode(rgb.permute(2, 0, 1)[None], depth[None])
        densities = model.density_fn(planes)(torch.rand(2000, 3) * 2 - 1)
    threshold = float(densities.median())  # a random field: pick a level it crosses
    mesh, scene = g3dr_reconstruct(model, rgb, depth, resolution=16, threshold=threshold)
    assert mesh.vertex_colors is not None and mesh.num_faces > 0 and scene.planes.shape == (1, 3, 4, 16, 16)
    frames = turntable(scene, n_frames=3, size=8)
    assert frames.shape == (3, 8, 8, 3)
    paths = save_reconstruction(mesh, frames, tmp_path / "out")
    assert all(p.is_file() for p in paths.values())
    (tmp_path / "taken" / "turntable.gif").mkdir(parents=True)  # one output path is a folder: nothing is written
    with pytest.raises(ValueError, match=r"turntable\.gif: it is a folder"):
        save_reconstruction(mesh, frames, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["turntable.gif"]
    with pytest.raises(ValueError, match=r"rgb must lie in \[0, 1\], got values in \[0.4753, 254.9\]"):
        g3dr_reconstruct(model, rgb * 255, depth, resolution=16, threshold=threshold)  # 8-bit, never divided
    with pytest.raises(ValueError, match="rgb must be a floating-point tensor"):
        g3dr_reconstruct(model, (rgb * 255).to(torch.uint8), depth, resolution=16, threshold=threshold)
    transparent = torch.cat([rgb, torch.zeros_like(rgb[..., :1])], dim=-1)
    with pytest.raises(ValueError, match="no foreground: the alpha is empty"):
        g3dr_reconstruct(model, transparent, depth, resolution=16, threshold=threshold)
    with pytest.raises(ValueError, match="lacks"):
        load_g3dr(tmp_path)
    # A folder of another model (the diffusion model's keys), a list, an unknown key: one line naming the problem.
    (tmp_path / "model.safetensors").write_bytes(b"")
    for text, message in (
        ("model: {class_names: [mug]}", "unknown config key"),
        ("- a", "has no 'model' section"),
        ("model: {bogus_key: 1}", r"unknown config key\(s\) in G3DRModelConfig: bogus_key"),
    ):
        (tmp_path / "config.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_g3dr(tmp_path)


def test_reconstruct_gives_the_seen_surface_the_image_colours(monkeypatch):
    """A sphere of radius 0.5 (the density replaced, the random field's colours kept): the vertex nearest the input
    camera (+Z) faces it and takes the (uniform) image colour; the mask comes from the far depth of the background,
    or from the RGBA alpha."""
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config()).eval()
    monkeypatch.setattr(model, "density_fn", lambda planes: lambda points: 0.5 - points.norm(dim=-1))
    red = torch.zeros(32, 32, 3)
    red[..., 0] = 1.0
    near = torch.full((32, 32), 4.9)
    field, _ = g3dr_reconstruct(model, red, near, resolution=24, threshold=0.0, project_input=False)
    photo, _ = g3dr_reconstruct(model, red, near, resolution=24, threshold=0.0)
    torch.testing.assert_close(photo.verts, field.verts)
    front = int(torch.argmax(photo.verts[:, 2]))
    assert photo.verts[front, 2] > 0.49
    torch.testing.assert_close(photo.vertex_colors[front], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    assert (field.vertex_colors[front] - torch.tensor([1.0, 0.0, 0.0])).abs().max() > 0.05
    # background everywhere (far depth): nothing is seen, the field's colours stay; an empty alpha is refused
    far = torch.full((32, 32), 6.0)
    unseen, _ = g3dr_reconstruct(model, red, far, resolution=24, threshold=0.0)
    plain, _ = g3dr_reconstruct(model, red, far, resolution=24, threshold=0.0, project_input=False)
    torch.testing.assert_close(unseen.vertex_colors, plain.vertex_colors)
    with pytest.raises(ValueError, match="alpha"):
        g3dr_reconstruct(model, red, near, resolution=24, threshold=0.0, alpha=torch.ones(16, 16))


def test_g3dr_command_writes_the_photo_coloured_mesh(tmp_path, monkeypatch):
    """`monorecon g3dr IMAGE --model RUN -o OUT` on an RGBA + depth pair, with the density replaced by a sphere of
    radius 0.5: the vertex facing the camera takes the image's red, and ``--no-project-input`` keeps the field's."""
    from monorecon import cli
    from monorecon.io.mesh_io import load_mesh
    from monorecon.models.g3dr.data import save_rgbd_pair

    run = train_g3dr(tiny_train_config(tmp_path, steps=1), random_views())
    monkeypatch.setattr(G3DRGenerator, "density_fn", lambda self, planes: lambda points: 1.0 - points.norm(dim=-1))
    rgba = np.zeros((32, 32, 4), dtype=np.float32)
    rgba[..., 0] = rgba[..., 3] = 1.0
    image, _ = save_rgbd_pair(rgba, np.full((32, 32), 4.9, dtype=np.float32), tmp_path / "red")
    front_colours = {}
    for name, extra in (("photo", []), ("field", ["--no-project-input"])):
        args = ["g3dr", str(image), "--model", str(run), "-o", str(tmp_path / name), "--threshold", "0.5"]
        assert cli.main([*args, "--resolution", "24", *extra]) == 0
        mesh = load_mesh(tmp_path / name / "mesh.glb")
        front_colours[name] = mesh.vertex_colors[int(torch.argmax(mesh.verts[:, 2]))]
    torch.testing.assert_close(front_colours["photo"], torch.tensor([1.0, 0.0, 0.0]), atol=2 / 255, rtol=0)
    assert (front_colours["field"] - torch.tensor([1.0, 0.0, 0.0])).abs().max() > 0.05
    import pygltflib

    (lit,) = pygltflib.GLTF2().load(str(tmp_path / "photo" / "mesh.glb")).materials
    assert not lit.extensions  # lit PBR, as reconstruct, unless --unlit
    args = ["g3dr", str(image), "--model", str(run), "-o", str(tmp_path / "flat"), "--threshold", "0.5", "--unlit"]
    assert cli.main([*args, "--resolution", "16"]) == 0
    (flat,) = pygltflib.GLTF2().load(str(tmp_path / "flat" / "mesh.glb")).materials
    assert flat.extensions == {"KHR_materials_unlit": {}}
    # --object-height / --origin place the saved mesh: the photo run's mesh, 0.3 tall, its box centred on the origin
    args = ["g3dr", str(image), "--model", str(run), "-o", str(tmp_path / "placed"), "--threshold", "0.5"]
    assert cli.main([*args, "--resolution", "24", "--object-height", "0.3", "--origin", "center"]) == 0
    photo, placed = load_mesh(tmp_path / "photo" / "mesh.glb"), load_mesh(tmp_path / "placed" / "mesh.glb")
    low, high = photo.bounds
    expected = (photo.verts - (low + high) / 2) * (0.3 / (high[1] - low[1]))
    torch.testing.assert_close(placed.verts, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": 1000.0}, r"lr must lie in \(0, 1\]"),
        ({"grad_clip": float("nan")}, "grad_clip must be >= 0"),
        ({"batch_size": 10**9}, r"batch_size must lie in \[1, 4096\]"),
        ({"render_size": 100000}, r"render_size must lie in \[1, 1024\]"),
        ({"loss": G3DRLossConfig(rgb=float("nan"))}, "loss.rgb must be a finite number >= 0"),
        ({"loss": G3DRLossConfig(depth=-1e9)}, "loss.depth must be a finite number >= 0"),
    ],
)
def test_training_settings_that_cannot_train_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_train_config(tmp_path, **overrides)


def test_reconstruct_to_folder_refuses_a_bad_placement_before_any_work(tmp_path):
    from monorecon.models.g3dr.inference import reconstruct_to_folder

    for kwargs, message in (({"object_height": 0.0}, "object_height must lie"),
                            ({"object_height": float("inf")}, "object_height must lie"),
                            ({"origin": "top"}, "origin must be one of")):  # fmt: skip
        with pytest.raises(ValueError, match=message):  # before the (missing) model and images are read
            reconstruct_to_folder(tmp_path / "no_model", tmp_path / "no.png", tmp_path / "no_depth.png",
                                  tmp_path / "out", **kwargs)  # fmt: skip
    assert not (tmp_path / "out").exists()


def views_with_meshes(tmp_path, meshes: list[Mesh], seed: int = 0) -> RGBDViews:
    """random_views whose ground truth (canonical frame: identity transforms) is ``meshes``, saved as PLY files."""
    views = random_views(len(meshes), seed=seed)
    paths = []
    for k, mesh in enumerate(meshes):
        paths.append(str(tmp_path / f"truth_{k}.ply"))
        save_mesh(mesh, paths[-1])
    return RGBDViews(views.rgb, views.depth, views.mask, to_canonical=torch.eye(4).expand(len(meshes), 4, 4),
                     mesh_paths=paths)  # fmt: skip


def test_calibrate_mesh_threshold_finds_the_level_of_the_truth(tmp_path):
    # Ground truth = each view's own field extracted at level L: calibration among L / 4, L, 4 L must pick L (F = 1).
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = G3DRGenerator(tiny_model_config()).eval()
    views = random_views(2)
    fields = [model.density_fn(model.encode(views[k]["rgb"][None], views[k]["depth"][None])) for k in range(2)]
    level = float(torch.cat([f(torch.rand(4000, 3) * 2 - 1) for f in fields]).quantile(0.7))
    truths = [extract_isosurface(f, 48, level, model.config.box_radius) for f in fields]
    views = views_with_meshes(tmp_path, truths)
    best, scores = calibrate_mesh_threshold(model, views, levels=(level / 4, level, 4 * level), resolution=48)
    torch.set_grad_enabled(True)
    # Not exactly 1: the two point samples of a surface differ (tiny floating pieces may get no sample).
    assert best == level and scores[level] > 0.97
    assert max(scores[level / 4], scores[4 * level]) < scores[level] - 0.05
    with pytest.raises(ValueError, match="no iso level"):
        calibrate_mesh_threshold(model, views, levels=(1e9,))
    with pytest.raises(ValueError, match="ground-truth mesh"):
        calibrate_mesh_threshold(model, random_views(2))


def test_training_stores_a_calibrated_mesh_threshold(tmp_path, monkeypatch):
    import trimesh
    import yaml

    import monorecon.models.g3dr.trainer as trainer_module

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    truth = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    views = views_with_meshes(tmp_path, [truth] * 4)
    # A 4-step model has no surface near the truth at any level: warned, the configured level kept.
    with pytest.warns(UserWarning, match="not calibrated"):
        run = train_g3dr(tiny_train_config(tmp_path, calibrate_views=2), views)
    assert load_g3dr(run).config.mesh_threshold == 10.0
    # The level calibration picks (tested above) is what the saved model carries, on views with ground truth only.
    calls = []

    def fake_calibration(model, calibration_views, max_views):
        calls.append((len(calibration_views), max_views))
        return 3.0, {3.0: 0.8, 10.0: 0.5}

    monkeypatch.setattr(trainer_module, "calibrate_mesh_threshold", fake_calibration)
    run = train_g3dr(tiny_train_config(tmp_path, out_dir=str(tmp_path / "b"), calibrate_views=2), views)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    assert calls == [(4, 2)] and settings["mesh_threshold_calibration"]["fscore@0.1"] == {3.0: 0.8, 10.0: 0.5}
    assert load_g3dr(run).config.mesh_threshold == 3.0
    train_g3dr(tiny_train_config(tmp_path, out_dir=str(tmp_path / "c")), random_views())  # no meshes: not called
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------------------------------------
def test_diffusion_schedules():
    betas = np.linspace(1e-4, 0.02, 100)
    assert np.allclose(diffusion_schedule(100, "linear").numpy(), np.cumprod(1 - betas))
    abar = diffusion_schedule(1000, "cosine").numpy()
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(500) / f(0), rel=1e-6)
    assert np.all(np.diff(abar) < 0)
    with pytest.raises(ValueError, match="schedule"):
        diffusion_schedule(10, "quadratic")


def test_ddim_with_oracle_recovers_data():
    alpha_bar = diffusion_schedule(200, "linear")
    x0 = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9

    def oracle(x, t):  # the exact noise of x given x0
        a = alpha_bar[t].float()[:, None, None, None]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    for eta in (0.0, 1.0):
        out = ddim_sample(oracle, alpha_bar, tuple(x0.shape), 12, eta, torch.Generator().manual_seed(0))
        assert torch.allclose(out, x0, atol=1e-5)


def test_diffusion_train_and_sample(tmp_path):
    views = random_views(n=4, size=8, masked=False)
    config = DiffusionTrainConfig(
        out_dir=str(tmp_path / "diff"), steps=3, batch_size=4, quiet=True, log_every=1,
        model=DiffusionConfig(image_size=8, base_channels=8, channel_mults=(1, 2), embed_dim=16, timesteps=50),
    )  # fmt: skip
    model = load_rgbd_diffusion(train_rgbd_diffusion(config, views))
    assert model.class_names == ["a", "b"]
    with open(tmp_path / "diff" / "train_log.csv") as f:  # each row: its own update's rate (warm-up over 3 steps)
        assert [float(row["lr"]) for row in csv.DictReader(f)] == pytest.approx([2e-4 / 3, 4e-4 / 3, 2e-4], rel=1e-5)
    rgb, depth = model.sample("b", 2, n_steps=4, generator=torch.Generator().manual_seed(0), size=16)
    assert rgb.shape == (2, 3, 16, 16) and depth.shape == (2, 16, 16)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1 and float(depth.min()) >= 4 and float(depth.max()) <= 6
    x = RGBDDiffusion.to_model_space(views.rgb, views.depth)
    back_rgb, back_depth = RGBDDiffusion.from_model_space(x)
    assert torch.allclose(back_rgb, views.rgb, atol=1e-6) and torch.allclose(back_depth, views.depth, atol=1e-5)
    with pytest.raises(ValueError, match="unknown class"):
        model.sample("zebra", 1)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------
def test_non_flatness_score():
    flat = torch.full((2, 8, 8), 5.0)
    assert non_flatness_score(flat) == 0.0
    halves = flat.clone()
    halves[:, :, :4] = 4.5
    assert non_flatness_score(halves) == pytest.approx(math.log(2))
    spread = (4.0 + (torch.arange(64, dtype=torch.float64) + 0.5) / 32).view(1, 8, 8)  # one value per bin
    assert non_flatness_score(spread) == pytest.approx(math.log(64))
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :, 4:] = True
    assert non_flatness_score(halves, mask) == 0.0  # only the flat half counts
    with pytest.raises(ValueError, match="foreground"):
        non_flatness_score(flat, torch.zeros(2, 8, 8, dtype=torch.bool))


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3)) @ np.diag([1.0, 2.0, 0.5]) + [1.0, 0.0, 0.0]
    b = rng.normal(size=(300, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 1.5]])
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Independent route: tr sqrt(Ca Cb) = tr sqrt(Ca^1/2 Cb Ca^1/2), a symmetric PSD matrix (eigenvalues).
    w, v = np.linalg.eigh(ca)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cb @ root_a)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(inner).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, b[:, :2])


def test_image_feature_distance():
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    extractor = ImageFeatures()
    assert extractor(images).shape == (6, 896) and not extractor.uses_inception
    assert feature_distance(images, images, extractor) == pytest.approx(0.0, abs=1e-3)
    assert feature_distance(images, images * 0.2, extractor) > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# SPEC §2 values and formulas, against hand-computed expectations
# --------------------------------------------------------------------------------------------------------------------
def test_spec_values_of_the_recipe():
    """SPEC §2: loss weights rgb 1, depth 2, perceptual 2 (novel; canonical 2 / 2 = 1), semantic 0.35, TV 0.1,
    opacity 1; canonical camera at radius 5 with fov 18 deg; depth-window fine samples with probability 0.4 over
    +-0.05; 32 + 32 samples."""
    assert G3DRLossConfig() == G3DRLossConfig(rgb=1.0, depth=2.0, perceptual=2.0, semantic=0.35, tv=0.1, opacity=1.0)
    config = G3DRModelConfig()
    assert (config.camera_distance, config.fov_deg) == (5.0, 18.0)
    assert (config.depth_window_probability, config.depth_window_half_width) == (0.4, 0.05)
    assert (config.n_samples, config.n_importance) == (32, 32)


def test_field_sums_levels_averages_planes_and_decodes_as_g3dr():
    """SPEC §2 field: features = sum over the 3 levels of the mean over the 3 planes; decoder 64 -> hidden (softplus)
    -> 4, sigma = softplus(raw - 1), colour = sigmoid(raw) * 1.002 - 0.001. Constant planes (channel 0 of level l,
    plane p holds a[l][p]) and a decoder set by hand make every step a closed form."""
    import torch.nn.functional as F

    model = G3DRGenerator(tiny_model_config())
    a = torch.tensor([[0.3, -0.6, 1.2], [0.9, 0.0, -0.3], [-0.45, 0.6, 0.15]])
    pyramid = []
    for level, size in enumerate((16, 8, 4)):
        planes = torch.zeros(1, 3, 4, size, size)
        planes[0, :, 0] = a[level].view(3, 1, 1)
        pyramid.append(planes)
    feature = float(a.mean(1).sum())  # 0.3 + 0.2 + 0.1 = 0.6
    first, last = model.decoder.layers[0], model.decoder.layers[-1]
    hidden = first.weight.shape[0]
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:, 0] = 1.0  # every hidden unit = softplus(feature)
        first.bias.zero_()
        last.weight.zero_()
        last.weight[0] = 1.0 / hidden  # raw density = softplus(feature)
        last.bias.copy_(torch.tensor([0.0, 2.0, -1.0, 0.5]))
    points = torch.tensor([[0.1, 0.2, -0.3], [-0.5, 0.4, 0.7]])
    out = model.query(pyramid, points)
    expected_density = F.softplus(F.softplus(torch.tensor(feature)) - 1.0)
    torch.testing.assert_close(out["density"], expected_density.expand(2, 1), atol=1e-6, rtol=1e-6)
    expected_rgb = torch.sigmoid(torch.tensor([2.0, -1.0, 0.5])) * 1.002 - 0.001
    torch.testing.assert_close(out["rgb"], expected_rgb.expand(2, 3), atol=1e-7, rtol=1e-6)


def test_downsample_targets_hand_computed():
    """Targets at the render size: rgb area-averaged, depth averaged over the foreground only (the far depth 6 where a
    cell has none), mask true where more than half of the cell is foreground."""
    from monorecon.models.g3dr.trainer import downsample_targets

    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)[None]
    depth = torch.tensor([[4.0, 4.2, 6, 6], [4.4, 6, 6, 6], [5.0, 5.0, 6, 6], [5.0, 5.4, 6, 4.8]])[None]
    rgb = torch.arange(48, dtype=torch.float32).view(1, 3, 4, 4)
    small_rgb, small_depth, small_mask = downsample_targets(rgb, depth, mask, 2)
    torch.testing.assert_close(small_depth[0], torch.tensor([[4.2, 6.0], [5.1, 4.8]]), atol=1e-6, rtol=0)
    assert small_mask[0].tolist() == [[True, False], [True, False]]  # 3/4, 0, 4/4, 1/4 foreground
    torch.testing.assert_close(small_rgb[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def _stub_render(calls: list):
    """A render with known outputs: rgb 0.5; depth 4.5 + 0.1 x column; opacity 0.3 (left half) / 0.8 (right half)."""

    def render(planes, c2w, size, **kwargs):
        batch = planes.shape[0]
        depth = (4.5 + 0.1 * torch.arange(size, dtype=torch.float32)).expand(batch, size, size).clone()
        opacity = torch.full((batch, size, size), 0.3)
        opacity[..., size // 2 :] = 0.8
        calls.append({"c2w": c2w.detach().clone(), **kwargs})
        return {"rgb": torch.full((batch, size, size, 3), 0.5), "depth": depth, "opacity": opacity}

    return render


def test_training_losses_combine_the_spec_terms(tmp_path, monkeypatch):
    """The logged parts of a step are SPEC §2's weighted terms, recomputed here on a render with known outputs and on
    a batch of one repeated view (render size = input size, no flips), at T = 100 steps:

    * canonical, step 10 (first half): L1 rgb (1) + L1 depth over the foreground (2) + opacity ``mean |o - mask|``
      with the ramp weight 10 / 50; the camera is the canonical one at (0, 0, 5);
    * canonical, step 60: plus perceptual (2 / 2) and semantic (0.35 / 2), opacity weight 1;
    * novel, step 60, angles (20, -25) / (5, -8) deg: semantic (0.35), deep perceptual (2), TV (0.1) of the depth
      composited over the far depth 6, opacity ``mean |o - [o > 0.5]|``; the camera at yaw / pitch on the radius-5
      sphere.
    """
    from monorecon.losses.perceptual import PerceptualLoss
    from monorecon.models.g3dr import trainer as trainer_module

    views = random_views(n=2)
    views = RGBDViews(views.rgb[:1].repeat(2, 1, 1, 1), views.depth[:1].repeat(2, 1, 1), views.mask[:1].repeat(2, 1, 1),
                      ["a", "a"])  # fmt: skip
    config = tiny_train_config(tmp_path, steps=100, render_size=16)
    config.data.random_flip = False
    trainer = G3DRTrainer(config, views)
    calls: list = []
    monkeypatch.setattr(trainer.model, "render", _stub_render(calls))
    rgb, depth, mask = views.rgb, views.depth, views.mask.float()
    pred = torch.full_like(rgb, 0.5)
    rendered = _stub_render([])(torch.zeros(2, 3, 1, 1, 1), torch.zeros(2, 4, 4), 16)
    opacity, rendered_depth = rendered["opacity"], rendered["depth"]
    perceptual, deep, semantic = PerceptualLoss(None, None), DeepPerceptualLoss(), SemanticEncoder()
    semantic_l1 = float((semantic(pred) - semantic(rgb)).abs().mean())

    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: False)
    _, early = trainer.losses(10, torch.Generator().manual_seed(0))
    assert early["rgb"] == pytest.approx(float((0.5 - rgb).abs().mean()), rel=1e-5)
    depth_l1 = float(((rendered_depth - depth).abs() * mask).sum() / mask.sum())
    assert early["depth"] == pytest.approx(2 * depth_l1, rel=1e-5)
    opacity_l1 = float((opacity - mask).abs().mean())
    assert early["opacity"] == pytest.approx(0.2 * opacity_l1, rel=1e-5)
    assert early["perceptual"] == early["semantic"] == early["tv"] == 0.0
    position = calls[-1]["c2w"][:, :3, 3]
    torch.testing.assert_close(position, torch.tensor([[0.0, 0.0, 5.0]]).expand(2, 3), atol=1e-5, rtol=0)

    _, late = trainer.losses(60, torch.Generator().manual_seed(0))
    assert late["opacity"] == pytest.approx(opacity_l1, rel=1e-5)
    assert late["perceptual"] == pytest.approx(float(perceptual(pred, rgb).mean()), rel=1e-4)
    assert late["semantic"] == pytest.approx(0.35 / 2 * semantic_l1, rel=1e-4)

    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: True)
    yaw, pitch = torch.tensor([20.0, -25.0]), torch.tensor([5.0, -8.0])
    monkeypatch.setattr(trainer_module, "sample_novel_angles", lambda *a, **k: (yaw, pitch))
    total, novel = trainer.losses(60, torch.Generator().manual_seed(0))
    assert novel["rgb"] == novel["depth"] == 0.0
    assert novel["semantic"] == pytest.approx(0.35 * semantic_l1, rel=1e-4)
    assert novel["perceptual"] == pytest.approx(2 * float(deep(rgb, pred).mean()), rel=1e-4)
    composited = opacity * rendered_depth + (1 - opacity) * 6.0
    tv = (composited[:, :, 1:] - composited[:, :, :-1]).square().mean() + 0.0  # no vertical change
    assert novel["tv"] == pytest.approx(0.1 * float(tv), rel=1e-5)
    assert novel["opacity"] == pytest.approx(0.25, rel=1e-5)  # |0.3 - 0| and |0.8 - 1| on halves
    parts = ("rgb", "depth", "perceptual", "semantic", "tv", "opacity")
    assert float(total) == pytest.approx(sum(novel[k] for k in parts), rel=1e-5)
    y, p = torch.deg2rad(yaw), torch.deg2rad(pitch)
    expected = 5 * torch.stack([p.cos() * y.sin(), p.sin(), p.cos() * y.cos()], -1)
    torch.testing.assert_close(calls[-1]["c2w"][:, :3, 3], expected, atol=1e-5, rtol=0)


def test_depth_regularization_reaches_only_the_masked_rays():
    """With a ``target_mask`` only the masked (foreground) rays get the depth regularisation: against a target depth
    far from every sample, the gradient of a loss on those rays is exactly 0.05 x the unregularised one, and the
    gradient of a loss on the other rays is unchanged."""
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config())
    planes = model.encode(torch.rand(1, 3, 16, 16), 4.5 + torch.rand(1, 16, 16)).detach().requires_grad_(True)
    c2w = view_c2w(torch.zeros(1), torch.zeros(1))
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True
    far = torch.full((1, 6, 6), 100.0)

    def gradient(select: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        planes.grad = None
        out = model.render(planes, c2w, 6, target_depth=target, target_mask=None if target is None else mask,
                           deterministic=True)  # fmt: skip
        out["rgb"][select].square().sum().backward()
        return planes.grad.clone()

    for select, factor in ((mask, 0.05), (~mask, 1.0)):
        plain = gradient(select, None)
        assert plain.abs().sum() > 0
        torch.testing.assert_close(gradient(select, far), factor * plain, rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# Diffusion closed forms (DDPM / DDIM), against independent numpy computations
# --------------------------------------------------------------------------------------------------------------------
def test_cosine_schedule_clips_the_last_beta_at_0_999():
    """Nichol & Dhariwal: beta_t = 1 - f(t) / f(t - 1) clipped at 0.999; the last step (f(T) = 0) is clipped."""
    abar = diffusion_schedule(50, "cosine").numpy()
    f = np.cos((np.arange(51) / 50 + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    assert betas[-1] == 0.999 and betas[-2] < 0.999
    np.testing.assert_allclose(abar, np.cumprod(1 - betas), rtol=1e-9, atol=0)
    assert abar[-1] / abar[-2] == pytest.approx(1 - 0.999, rel=1e-6)


def test_ddim_steps_follow_the_ddim_update_with_clipped_x0():
    """Deterministic DDIM (eta 0) with a fixed noise prediction: the network sees t = round(linspace(T - 1, 0, n))
    and the states x_{t'} = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat, x0_hat clipped to [-1, 1] and eps_hat
    recomputed from the clipped x0_hat (as diffusers' DDIM with clip_sample), recomputed here in numpy."""
    alpha_bar = diffusion_schedule(50, "cosine")
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) * 1.5
    eps_const = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    seen_x, seen_t = [], []

    def eps_fn(x, t):
        seen_x.append(x.clone())
        seen_t.append(t.clone())
        return eps_const

    out = ddim_sample(eps_fn, alpha_bar, tuple(x_T.shape), 4, 0.0, x_T=x_T)
    ts = np.round(np.linspace(49, 0, 4)).astype(int)
    assert [t.tolist() for t in seen_t] == [[int(t)] * 2 for t in ts]
    a = alpha_bar.numpy()
    x, e = x_T.numpy(), eps_const.numpy()
    for k, t in enumerate(ts):
        np.testing.assert_allclose(seen_x[k].numpy(), x, atol=1e-10)
        x0 = np.clip((x - np.sqrt(1 - a[t]) * e) / np.sqrt(a[t]), -1, 1)
        eps = (x - np.sqrt(a[t]) * x0) / np.sqrt(1 - a[t])
        a_prev = a[ts[k + 1]] if k + 1 < len(ts) else 1.0
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    np.testing.assert_allclose(out.numpy(), np.clip(x, -1, 1), atol=1e-10)
    assert float((seen_x[1] - x_T).abs().max()) > 0.1  # the clipping mattered: x0_hat of step one was out of range


def test_ddim_eta_one_adds_the_ddpm_posterior_variance():
    """eta = 1 over consecutive steps is DDPM: given x_t = 0 and x0 = 0, x_{t-1} ~ N(0, beta_tilde_t) with the
    posterior variance beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (Ho et al. eq. 7)."""
    alpha_bar = diffusion_schedule(10, "linear")
    seen = []

    def oracle(x, t):  # noise of x for x0 = 0
        seen.append(x.clone())
        return x / (1 - alpha_bar[t].float()[:, None, None, None]).sqrt()

    shape = (64, 4, 16, 16)
    ddim_sample(oracle, alpha_bar, shape, 10, 1.0, torch.Generator().manual_seed(0), x_T=torch.zeros(shape))
    a = alpha_bar.numpy()
    beta = 1 - a[9] / a[8]
    beta_tilde = (1 - a[8]) / (1 - a[9]) * beta
    assert float(seen[1].var()) == pytest.approx(beta_tilde, rel=0.03)
    assert float(seen[1].mean()) == pytest.approx(0.0, abs=3e-3)


def test_diffusion_loss_uses_the_forward_process_and_class_dropout(monkeypatch):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with t in [0, T - 1]; the loss is mean (eps - eps_hat)^2; labels
    are replaced by the null class (len(class_names)) with probability class_dropout."""
    model = RGBDDiffusion(DiffusionConfig(["a", "b"], image_size=4, base_channels=4, channel_mults=(1,),
                                          embed_dim=8, timesteps=10, class_dropout=0.0))  # fmt: skip
    seen = {}

    def fake_predict(x_t, t, labels):
        seen.update(x_t=x_t.detach().clone(), t=t.clone(), labels=labels.clone())
        return torch.zeros_like(x_t)

    monkeypatch.setattr(model, "predict_noise", fake_predict)
    labels = torch.tensor([0, 1] * 200)
    loss0 = model.loss(torch.zeros(400, 4, 4, 4), labels, torch.Generator().manual_seed(1))
    x_zero, t = seen["x_t"], seen["t"]
    assert int(t.min()) == 0 and int(t.max()) == 9
    assert torch.equal(seen["labels"], labels)
    abar = diffusion_schedule(10, "cosine").float()[t][:, None, None, None]
    noise = x_zero / (1 - abar).sqrt()
    assert float(loss0) == pytest.approx(float(noise.square().mean()), rel=1e-5)  # eps_hat = 0
    model.loss(torch.full((400, 4, 4, 4), 0.5), labels, torch.Generator().manual_seed(1))
    torch.testing.assert_close(seen["x_t"] - x_zero, 0.5 * abar.sqrt().expand_as(x_zero), atol=1e-5, rtol=0)
    model.config.class_dropout = 1.0
    model.loss(torch.zeros(400, 4, 4, 4), labels, torch.Generator().manual_seed(1))
    assert torch.equal(seen["labels"], torch.full_like(labels, 2))


def test_time_embedding_is_sinusoidal():
    """Before the MLP: [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / half) (Transformer / DDPM embedding)."""
    model = RGBDDiffusion(DiffusionConfig(["a"], image_size=4, base_channels=4, channel_mults=(1,), embed_dim=8))
    model.time_mlp = torch.nn.Identity()
    t = torch.tensor([0, 7, 500])
    w = 10_000.0 ** (-np.arange(4) / 4)
    angles = t.numpy()[:, None] * w[None]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    np.testing.assert_allclose(model.time_embedding(t).numpy(), expected, atol=1e-5)


def test_model_space_maps_the_depth_range_onto_minus_one_one():
    """rgb 0 / 1 -> -1 / 1; depth 4 / 5 / 6 -> -1 / 0 / 1 (module docstring: depth - 5)."""
    rgb = torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    depth = torch.tensor([[[4.0, 5.0, 6.0]]])
    x = RGBDDiffusion.to_model_space(rgb, depth)
    torch.testing.assert_close(x[0, :3, 0, 0], torch.tensor([-1.0, 1.0, 0.0]))
    torch.testing.assert_close(x[0, 3, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_sampling_uses_classifier_free_guidance(monkeypatch):
    """eps = eps_null + w (eps_class - eps_null); w = 1 is the conditional prediction alone."""
    import monorecon.models.g3dr.diffusion as diffusion_module

    model = RGBDDiffusion(DiffusionConfig(["a", "b"], image_size=4, base_channels=4, channel_mults=(1,), embed_dim=8))
    monkeypatch.setattr(model, "predict_noise", lambda x, t, labels: torch.ones_like(x) * labels[:, None, None, None])
    results = {}

    def fake_ddim(eps_fn, alpha_bar, shape, n_steps, eta, generator):
        results["eps"] = eps_fn(torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long))
        return torch.zeros(shape)

    monkeypatch.setattr(diffusion_module, "ddim_sample", fake_ddim)
    model.sample("b", 2, guidance_scale=1.5)  # class 1, null 2: 2 + 1.5 (1 - 2)
    torch.testing.assert_close(results["eps"], torch.full((2, 4, 4, 4), 0.5))
    model.sample("a", 2, guidance_scale=1.0)
    torch.testing.assert_close(results["eps"], torch.zeros(2, 4, 4, 4))
    model.sample("a", 2, guidance_scale=3.0)  # 2 + 3 (0 - 2)
    torch.testing.assert_close(results["eps"], torch.full((2, 4, 4, 4), -4.0))


# --------------------------------------------------------------------------------------------------------------------
# RGB-D pairs: masks, resizing, bad files, folders (hand-built inputs)
# --------------------------------------------------------------------------------------------------------------------
def _write_pair(folder, name, rgba_u8, depth_u16):
    Image.fromarray(rgba_u8).save(folder / f"{name}.png")
    Image.fromarray(depth_u16).save(folder / f"{name}_depth.png")


def test_rgbd_pair_mask_is_alpha_above_one_half_and_the_written_depth_code(tmp_path):
    """Mask = alpha > 0.5 (module docstring); the depth PNG that save_rgbd_pair writes holds
    round((d - 4) / 2 * 65536) as 16-bit values (read back with PIL directly)."""
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = [[64, 191], [0, 255]]  # alpha 0.25, 0.75, 0, 1
    _write_pair(tmp_path, "obj", rgba, np.full((2, 2), 16384, dtype=np.uint16))
    _, depth, mask = load_rgbd_pair(tmp_path / "obj.png")
    assert mask.tolist() == [[False, True], [False, True]]
    torch.testing.assert_close(depth, torch.full((2, 2), 4.5))
    save_rgbd_pair(np.ones((2, 3, 3)), np.array([[4.0, 4.25 + 1.75 / 32768, 5.0], [5.5, 5.999, 7.0]]), tmp_path / "w")
    with Image.open(tmp_path / "w_depth.png") as img:
        assert img.mode.startswith("I") and img.format == "PNG"
        values = np.asarray(img).astype(np.int64)
    assert values.tolist() == [[0, 8194, 32768], [49152, 65503, 65535]]  # rounded to the nearest code


def test_resizing_a_pair_averages_depth_over_the_foreground(tmp_path):
    """Area resize 4 -> 2: the depth of a block is the mean over its foreground pixels (the far depth 6 for a block
    without foreground), the mask is the resized alpha > 0.5."""
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    alpha = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=np.uint8) * 255
    rgba[..., 3] = alpha
    code = lambda d: round((d - 4) / 2 * 65536)  # noqa: E731
    depth = np.full((4, 4), code(5.5), dtype=np.uint16)
    depth[:2, :2] = [[code(4.5), code(4.5)], [code(4.5), code(5.5)]]  # block 0: 3 foreground pixels at 4.5
    depth[2:, :2] = [[code(4.0), code(5.0)], [code(4.0), code(5.0)]]  # block 2: all foreground, mean 4.5
    depth[2:, 2:] = [[code(4.25), code(5.75)], [code(5.75), code(4.75)]]  # block 3: 2 foreground, mean 4.5
    _write_pair(tmp_path, "obj", rgba, depth)
    _, d, mask = load_rgbd_pair(tmp_path / "obj.png", size=2)
    torch.testing.assert_close(d, torch.tensor([[4.5, 6.0], [4.5, 4.5]]), atol=1e-4, rtol=0)
    assert mask.tolist() == [[True, False], [True, False]]  # block 3: weight 0.5 is not > 0.5


def test_bad_depth_files_are_named(tmp_path):
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    _write_pair(tmp_path, "obj", rgba, np.zeros((4, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"obj_depth.png has size \(4, 3\), the image \(4, 4\)"):
        load_rgbd_pair(tmp_path / "obj.png")
    (tmp_path / "obj_depth.png").write_bytes((tmp_path / "obj.png").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot read depth image .*obj_depth\.png"):
        load_rgbd_pair(tmp_path / "obj.png")
    (tmp_path / "obj_depth.png").unlink()
    with pytest.raises(ValueError, match=r"depth image not found: .*obj_depth\.png"):
        load_rgbd_pair(tmp_path / "obj.png")
    # a 32-bit integer image (TIFF content under the PNG name) out of the 16-bit range stays in [4, 6]
    Image.fromarray(np.array([[70000, -5]], dtype=np.int32), mode="I").save(tmp_path / "big.tif")
    (tmp_path / "big.tif").rename(tmp_path / "x_depth.png")
    Image.fromarray(np.full((1, 2, 3), 255, dtype=np.uint8)).save(tmp_path / "x.png")
    _, depth, _ = load_rgbd_pair(tmp_path / "x.png")
    torch.testing.assert_close(depth, torch.tensor([[4.0 + 65535 / 32768, 4.0]]))


def test_views_from_folder_takes_sorted_complete_pairs(tmp_path):
    rgb = np.full((4, 4, 3), 255, dtype=np.uint8)
    names = ("m", "b", "x", "a", "k", "c", "q", "e")
    for i, name in enumerate(names):
        d = 4.0 + 0.25 * i
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
        if name != "c":  # c has no depth: not a pair
            Image.fromarray(np.full((4, 4), int((d - 4) / 2 * 65536), dtype=np.uint16)).save(
                tmp_path / f"{name}_depth.png"
            )
    views = views_from_folder(tmp_path, 2)
    pairs = sorted(n for n in names if n != "c")
    assert views.object_ids == pairs and views.mask is None
    expected = [4.0 + 0.25 * names.index(n) for n in pairs]
    torch.testing.assert_close(views.depth[:, 0, 0], torch.tensor(expected))


# --------------------------------------------------------------------------------------------------------------------
# Metrics: edge cases against closed forms
# --------------------------------------------------------------------------------------------------------------------
def test_non_flatness_skips_images_without_foreground_and_bins_by_floor():
    """An image without foreground is skipped (not scored 0); a value at a bin's start belongs to that bin."""
    depth = torch.full((2, 2, 2), 5.0)
    depth[0, 0] = 4.5
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1] = False
    assert non_flatness_score(depth, mask) == pytest.approx(math.log(2))  # image 0: two halves
    # bins of width 1/32 over [4, 6]: 4 + 0.99 / 32 and 4 + 0.01 / 32 share bin 0; 4 + 1 / 32 is bin 1
    same = torch.tensor([[[4 + 0.99 / 32, 4 + 0.01 / 32]]], dtype=torch.float64)
    assert non_flatness_score(same) == 0.0
    two = torch.tensor([[[4 + 0.99 / 32, 4 + 1.0 / 32]]], dtype=torch.float64)
    assert non_flatness_score(two) == pytest.approx(math.log(2))


def test_frechet_distance_is_never_negative():
    """A distance: tr(S + S - 2 (S S)^(1/2)) of a set with itself is 0, rounding must not make it negative
    (a rank-deficient, large-scale covariance, where sqrtm loses precision)."""
    a = np.random.default_rng(0).normal(size=(10, 64)) * 1e3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # two points each in 3-D: Gaussians on parallel lines -> |mu_a - mu_b|^2 + (sqrt(tr Sa) - sqrt(tr Sb))^2 form
    x, y = np.array([[0, 0, 0], [1, 1, 1.0]]), np.array([[0, 0, 0], [2, 2, 2.0]])
    # Sa = 0.5 J, Sb = 2 J (J = ones): tr Sa = 1.5, tr Sb = 6, (Sa Sb)^(1/2) = J, tr = 3; means differ by 0.5 each
    assert frechet_distance(x, y) == pytest.approx(3 * 0.25 + 1.5 + 6 - 2 * 3, rel=1e-9)


def test_image_features_of_tiny_images_and_batched_distance():
    """Images smaller than VGG's three poolings still give 896-d features; the distance does not depend on the
    batch size used to extract them."""
    extractor = ImageFeatures()
    tiny = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    feats = extractor(tiny)
    assert feats.shape == (3, 896) and bool(torch.isfinite(feats).all())
    a = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    b = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5
    whole = feature_distance(a, b, extractor, batch_size=64)
    assert feature_distance(a, b, extractor, batch_size=2) == pytest.approx(whole, rel=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Inference: iso level, compositing, colours, turntable path (analytic fields)
# --------------------------------------------------------------------------------------------------------------------
def test_reconstruct_defaults_to_the_model_iso_level_and_composites_rgba_on_white(monkeypatch):
    """Density 0.5 - |p| at the model's mesh_threshold 0.2 is the sphere of radius 0.3; an RGBA input reaches the
    encoder composited on white; field colours outside [0, 1] are clamped."""
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config(mesh_threshold=0.2)).eval()
    monkeypatch.setattr(model, "density_fn", lambda planes: lambda points: 0.5 - points.norm(dim=-1))
    seen = []
    original_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda rgb, depth: seen.append(rgb.clone()) or original_encode(rgb, depth))
    monkeypatch.setattr(model, "query", lambda pyramid, points: {"rgb": points * 10})
    rgba = torch.zeros(16, 16, 4)
    rgba[..., 0] = 1.0
    rgba[..., 3] = 0.5
    rgba[8:, :, 3] = 1.0
    mesh, _ = g3dr_reconstruct(model, rgba, torch.full((16, 16), 4.9), resolution=24, project_input=False)
    torch.testing.assert_close(mesh.verts.norm(dim=-1), torch.full((mesh.num_verts,), 0.3), atol=5e-3, rtol=0)
    torch.testing.assert_close(seen[0][0, :, 3, 3], torch.tensor([1.0, 0.5, 0.5]))
    assert float(mesh.vertex_colors.min()) == 0.0 and float(mesh.vertex_colors.max()) == 1.0


def test_turntable_swings_between_minus_and_plus_max_yaw(monkeypatch):
    scene = types.SimpleNamespace(render=None)
    seen = {}

    def render(yaw, pitch, size):
        seen["yaw"] = torch.as_tensor(yaw).clone()
        return {"rgb": torch.zeros(len(seen["yaw"]), size, size, 3)}

    scene.render = render
    turntable(scene, n_frames=8, size=4, max_yaw_deg=30.0)
    torch.testing.assert_close(seen["yaw"][[0, 2, 4, 6]], torch.tensor([-30.0, 0.0, 30.0, 0.0]), atol=1e-5, rtol=0)
    assert float(seen["yaw"].min()) == pytest.approx(-30.0) and float(seen["yaw"].max()) == pytest.approx(30.0)
    turntable(scene, n_frames=4, size=4, max_yaw_deg=180.0)  # a full turn, no repeated frame
    torch.testing.assert_close(seen["yaw"], torch.tensor([-180.0, -90.0, 0.0, 90.0]))


# --------------------------------------------------------------------------------------------------------------------
# Evaluation: calibration over views, ties, canonical frame
# --------------------------------------------------------------------------------------------------------------------
def _sphere_truth(radius: float) -> Mesh:
    return extract_isosurface(lambda p: radius - p.norm(dim=-1), 32, 0.0, 1.0)


def test_calibration_averages_views_and_breaks_ties_towards_the_lower_level(tmp_path, monkeypatch):
    """Density 0.5 - |p|: level L gives the sphere of radius 0.5 - L. Truths of radius 0.25 and 0.4: level 0.25
    matches view 0 only, level 0.1 view 1 only (F-score@0.1: 1 and 0), both average 0.5 -> the tie goes to 0.1; with
    ``max_views=1`` only view 0 counts (0.25 wins)."""
    monkeypatch.setattr(G3DRGenerator, "density_fn", lambda self, planes: lambda points: 0.5 - points.norm(dim=-1))
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config()).eval()
    views = views_with_meshes(tmp_path, [_sphere_truth(0.25), _sphere_truth(0.4)])
    best, scores = calibrate_mesh_threshold(model, views, levels=(0.25, 0.1), resolution=32, n_points=500)
    assert scores == {0.25: 0.5, 0.1: 0.5} and best == 0.1
    best, scores = calibrate_mesh_threshold(model, views, levels=(0.25, 0.1), max_views=1, resolution=32, n_points=500)
    assert scores == {0.25: 1.0, 0.1: 0.0} and best == 0.25


def test_canonical_mesh_applies_the_similarity():
    """p -> s R p + t for a hand-built similarity (90 deg about +Y, scale 2, shift (1, 0, -1))."""
    from monorecon.models.g3dr.evaluate import canonical_mesh

    sim = torch.eye(4)
    sim[:3, :3] = 2 * torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # R_y(90): x -> -z
    sim[:3, 3] = torch.tensor([1.0, 0.0, -1.0])
    mesh = Mesh(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([[0, 1, 2]]))
    moved = canonical_mesh(mesh, sim)
    torch.testing.assert_close(moved.verts, torch.tensor([[1.0, 0.0, -3.0], [1.0, 2.0, -1.0], [3.0, 0.0, -1.0]]))


def test_a_run_that_starts_over_among_earlier_checkpoints_is_refused_and_a_fresh_log_starts_clean(tmp_path):
    """``resume=False`` where an earlier run's checkpoints are: refused before anything is written (its own would be
    deleted by the keep-newest rotation). Without checkpoints, a run that does not resume replaces the old log's rows
    instead of adding to them."""
    views = random_views()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000040.pt").write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(newest step_00000040.pt\)"):
        train_g3dr(tiny_train_config(tmp_path, resume=False), views)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "step_00000040.pt"]
    shutil.rmtree(run / "checkpoints")
    train_g3dr(tiny_train_config(tmp_path, steps=2, checkpoint_every=2), views)
    shutil.rmtree(run / "checkpoints")
    train_g3dr(tiny_train_config(tmp_path, steps=2, checkpoint_every=2, resume=False), views)
    steps = [row.split(",")[0] for row in (run / "train_log.csv").read_text().strip().splitlines()[1:]]
    assert steps == ["1", "2"]


def test_evaluate_reconstructions_scores_depth_over_the_far_plane(tmp_path, monkeypatch):
    """The per-view rows from known renders (the renderers and the mesh score stubbed): the predicted depth is taken
    over the far depth 6 where the opacity is below 1, so a pixel the model leaves empty costs |6 - true depth|; the
    mask IoU binarises the opacity at 0.5; the mesh is scored at the model's own iso level."""
    import trimesh

    import monorecon.models.g3dr.evaluate as evaluate_module

    opacity = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])
    predicted = {"rgb": torch.full((1, 2, 2, 3), 0.5), "depth": torch.tensor([[[4.5, 5.0], [5.0, 5.5]]]),
                 "opacity": opacity}  # fmt: skip
    truth = {"rgb": torch.zeros(1, 2, 2, 3), "depth": torch.tensor([[[4.5, 5.0], [5.0, 0.0]]]),
             "mask": torch.tensor([[[True, True], [True, False]]])}  # fmt: skip
    levels = []

    def mesh_score(model, planes, mesh, threshold, *args):
        levels.append(threshold)
        return {"fscore@0.1": 0.75, "chamfer": 0.02}

    monkeypatch.setattr(evaluate_module, "render_views", lambda *args: predicted)
    monkeypatch.setattr(evaluate_module, "render_ground_truth", lambda *args: truth)
    monkeypatch.setattr(evaluate_module, "_mesh_fscore", mesh_score)
    model = types.SimpleNamespace(eval=lambda: None, encode=lambda rgb, depth: None,
                                  config=types.SimpleNamespace(mesh_threshold=7.0))  # fmt: skip
    sphere = save_mesh(Mesh.from_trimesh(trimesh.creation.icosphere(1, 0.3)), tmp_path / "gt.ply")
    views = RGBDViews(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 5.0), class_names=["ball"], object_ids=["b0"],
                      to_canonical=torch.eye(4)[None], mesh_paths=[str(sphere)])  # fmt: skip
    (row,), renders = evaluate_module.evaluate_reconstructions(model, views, yaws_deg=(0.0,), size=2)
    # Taken over the far depth: [[4.5, 0.5 * 5 + 0.5 * 6], [6, 5.5]]; errors on the true foreground 0, 0.5, 1.
    torch.testing.assert_close(renders["pred_depth"][0], torch.tensor([[[4.5, 5.5], [6.0, 5.5]]]))
    assert row["depth_mae"] == pytest.approx(0.5)
    assert row["mask_iou"] == pytest.approx(1 / 4)  # opacity > 0.5 on 2 pixels, the truth on 3, 1 in common
    assert (row["object_id"], row["class_name"], row["fscore@0.1"], row["chamfer"]) == ("b0", "ball", 0.75, 0.02)
    assert levels == [7.0]


# --------------------------------------------------------------------------------------------------------------------
# Closed forms of cameras, encoding, schedule boundaries, loss plumbing and the U-Net
# --------------------------------------------------------------------------------------------------------------------
def test_view_c2w_places_cameras_on_the_sphere_looking_at_the_origin():
    """Camera at d (cos p sin y, sin p, cos p cos y): positive yaw towards +X, positive pitch up; the ray through
    the centre of an odd-sized image points at the origin."""
    from monorecon.core.cameras import PerspectiveCameras

    yaw, pitch = torch.tensor([0.0, 30.0, -50.0, 20.0]), torch.tensor([0.0, 10.0, -10.0, 45.0])
    c2w = view_c2w(yaw, pitch, 4.0)
    y, p = torch.deg2rad(yaw), torch.deg2rad(pitch)
    eye = 4.0 * torch.stack([p.cos() * y.sin(), p.sin(), p.cos() * y.cos()], dim=-1)
    torch.testing.assert_close(c2w[:, :3, 3], eye, atol=1e-5, rtol=0)
    origins, directions = PerspectiveCameras(c2w, 3, 3, fov_y_deg=18.0).get_rays()
    torch.testing.assert_close(directions[:, 1, 1], -eye / 4.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(origins[:, 1, 1], eye, atol=1e-5, rtol=0)


def test_ray_length_factor_is_the_pinhole_closed_form():
    """Pixel (i, j) of an S-pixel image with vertical fov a: offsets (j + 0.5 - S/2, i + 0.5 - S/2) over the focal
    length f = (S / 2) / tan(a / 2); the unit-depth ray has length sqrt(1 + (u^2 + v^2) / f^2)."""
    from monorecon.models.g3dr.generator import ray_length_factor

    for size, fov in ((4, 18.0), (5, 60.0)):
        f = (size / 2) / math.tan(math.radians(fov) / 2)
        c = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
        expected = (1 + (c[:, None] ** 2 + c[None, :] ** 2) / f**2).sqrt()
        torch.testing.assert_close(ray_length_factor(size, fov), expected, atol=1e-6, rtol=0)
    assert float(ray_length_factor(4, 60.0)[0, 0]) > 1.1  # wide fov: corner rays clearly longer than their depth


def test_generator_cameras_use_the_configured_fov_and_the_box_scales_plane_coordinates():
    """Canonical camera (on +Z, image rows downwards): direction of pixel (i, j) is (u, -v, -f) normalised with the
    configured fov; the plane coordinates are (x, -y, z) / box_radius."""
    size, fov = 4, 40.0
    model = G3DRGenerator(tiny_model_config(fov_deg=fov, box_radius=2.0))
    _, directions = model.cameras(view_c2w(0.0, 0.0), size).get_rays()
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    c = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    u, v = c[None, :].expand(size, size), c[:, None].expand(size, size)
    expected = torch.nn.functional.normalize(torch.stack([u, -v, torch.full_like(u, -f)], dim=-1), dim=-1)
    torch.testing.assert_close(directions[0], expected, atol=1e-6, rtol=0)
    points = torch.tensor([[1.0, 1.0, -1.0], [2.0, -0.5, 0.4]])
    expected_coords = torch.tensor([[0.5, -0.5, -0.5], [1.0, 0.25, 0.2]])
    torch.testing.assert_close(model.plane_coordinates(points), expected_coords)


def test_encode_feeds_the_documented_inputs_and_lays_out_the_planes():
    """U-Net input = [rgb * 2 - 1, depth - camera distance, positional map]; output channel p * C + c is plane p,
    channel c, resized bilinearly (align_corners=False) from the image size S to R = 2 S."""
    model = G3DRGenerator(tiny_model_config(plane_resolution=32))
    seen = {}

    class Stub(torch.nn.Module):
        def forward(self, x):
            seen["input"] = x
            b, s = x.shape[0], x.shape[-1]
            channel = torch.arange(12, dtype=x.dtype).view(1, 12, 1, 1) * 100.0
            column = torch.arange(s, dtype=x.dtype).view(1, 1, 1, s)
            return (channel + column).expand(b, 12, s, s)

    model.unet = Stub()
    g = torch.Generator().manual_seed(0)
    rgb, depth = torch.rand(2, 3, 16, 16, generator=g), 4.0 + 2.0 * torch.rand(2, 16, 16, generator=g)
    planes = model.encode(rgb, depth)
    x = seen["input"]
    assert x.shape == (2, 6, 16, 16)
    torch.testing.assert_close(x[:, :3], rgb * 2 - 1)
    torch.testing.assert_close(x[:, 3], depth - 5.0)
    torch.testing.assert_close(x[:, 4:], model.positional_map.detach().expand(2, -1, -1, -1))
    assert planes.shape == (2, 3, 4, 32, 32)
    # Bilinear 16 -> 32, align_corners=False: output column j reads source column clamp((j + 0.5) / 2 - 0.5, 0, 15).
    source = ((torch.arange(32, dtype=torch.float32) + 0.5) / 2 - 0.5).clamp(0, 15)
    for p in range(3):
        for c in range(4):
            expected = (100.0 * (4 * p + c) + source).view(1, 32).expand(32, 32)
            torch.testing.assert_close(planes[1, p, c], expected, atol=1e-4, rtol=0)


def test_novel_view_offsets_cover_both_signs():
    g = torch.Generator().manual_seed(1)
    yaw, pitch = schedule.sample_novel_angles(4000, 300, 300, g)
    assert -10.0 <= float(pitch.min()) < -9.5 and 9.5 < float(pitch.max()) <= 10.0
    assert -30.0 <= float(yaw.min()) < -29.0 and 29.0 < float(yaw.max()) <= 30.0


def test_schedule_ramps_use_the_official_integer_thirds_and_halves():
    """The official G3DR loop ramps ``d`` over ``T // 3`` steps, the opacity weight over ``T // 2`` and turns the
    canonical extras on for ``s > T // 2`` (integer divisions): with T = 10 the yaw ramp ends at step 3, with T = 5
    the opacity ramp at step 2. Runs under 3 steps ramp over one step."""
    assert schedule.yaw_divisor(1, 10) == pytest.approx(24 - 18 / 3)
    assert schedule.yaw_divisor(2, 10) == pytest.approx(24 - 18 * 2 / 3) and schedule.yaw_divisor(3, 10) == 6.0
    assert schedule.opacity_weight(1, 5) == pytest.approx(0.5) and schedule.opacity_weight(2, 5) == 1.0
    assert not schedule.canonical_extras_active(2, 5) and schedule.canonical_extras_active(2.5, 5)
    assert schedule.canonical_extras_active(3, 5)
    assert schedule.opacity_weight(1, 1) == 1.0 and schedule.yaw_divisor(1, 1) == 6.0
    assert schedule.opacity_weight(0.5, 1) == pytest.approx(0.5)


def test_deep_perceptual_substitute_compares_a_two_by_two_grid_of_cells():
    from monorecon.losses.perceptual import GradientPyramidFeatures

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    fx, fy = GradientPyramidFeatures(stride=4)(x), GradientPyramidFeatures(stride=4)(y)  # (2, 15, 6, 6)
    cells = [f.reshape(2, 15, 2, 3, 2, 3).mean(dim=(3, 5)) for f in (fx, fy)]
    expected = (cells[0] - cells[1]).abs().flatten(1).mean(1)
    torch.testing.assert_close(DeepPerceptualLoss()(x, y), expected, atol=1e-6, rtol=1e-5)
    # Swapping the left and right halves keeps the global statistics but not the cells.
    swapped = torch.cat([x[..., 12:], x[..., :12]], dim=-1)
    assert bool((DeepPerceptualLoss()(x, swapped) > 1e-3).all())


def test_deep_perceptual_loss_with_vgg_weights_uses_the_lpips_weights_of_layers_four_and_five(tmp_path):
    from monorecon.losses.perceptual import VGGFeatures

    torch.save(VGGFeatures("vgg16", None, ("relu5_3",), seed=1).state_dict(), tmp_path / "vgg.pth")
    g = torch.Generator().manual_seed(4)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
            for k, c in enumerate((64, 128, 256, 512, 512))}  # fmt: skip
    torch.save(lins, tmp_path / "lpips.pth")
    loss = DeepPerceptualLoss(tmp_path / "vgg.pth", tmp_path / "lpips.pth")
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    vgg = VGGFeatures("vgg16", tmp_path / "vgg.pth", ("relu4_3", "relu5_3"))
    fx, fy = vgg(x), vgg(y)
    expected = torch.zeros(2)
    for name, k in (("relu4_3", 3), ("relu5_3", 4)):
        nx = fx[name] / (fx[name].square().sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy[name] / (fy[name].square().sum(1, keepdim=True).sqrt() + 1e-10)
        weight = lins[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        expected = expected + ((nx - ny).square() * weight).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(loss(x, y), expected, atol=1e-6, rtol=1e-4)


def test_semantic_encoder_feeds_clip_224_pixel_images_with_clip_normalisation(tmp_path, monkeypatch):
    import transformers

    seen = {}

    class FakeClip(torch.nn.Module):
        @classmethod
        def from_pretrained(cls, path):
            seen["path"] = path
            return cls()

        def forward(self, pixel_values):
            seen["shape"] = tuple(pixel_values.shape)
            return types.SimpleNamespace(image_embeds=pixel_values.mean(dim=(2, 3)))

    monkeypatch.setattr(transformers, "CLIPVisionModelWithProjection", FakeClip)
    encoder = SemanticEncoder(tmp_path)
    assert encoder.uses_clip and seen["path"] == str(tmp_path)
    colour = torch.tensor([0.2, 0.5, 0.9])
    embedding = encoder(colour.view(1, 3, 1, 1).expand(2, 3, 20, 20))
    assert seen["shape"] == (2, 3, 224, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP's image normalisation
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(embedding, ((colour - mean) / std).expand(2, 3), atol=1e-5, rtol=0)


def test_unet_residual_block_applies_film_as_scale_then_shift_after_the_second_norm():
    """h = conv1(silu(GN(x))); h = GN(h) * (1 + scale) + shift with (scale, shift) = Linear(silu(cond)) split in
    halves; out = skip(x) + conv2(silu(h)) (1x1 skip convolution when the widths differ)."""
    import torch.nn.functional as F

    from monorecon.models.g3dr.unet import _ResBlock

    torch.manual_seed(0)
    block = _ResBlock(4, 6, cond_dim=3)
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, cond = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    h = F.conv2d(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias)), block.conv1.weight,
                 block.conv1.bias, padding=1)  # fmt: skip
    h = F.group_norm(h, 2, block.norm2.weight, block.norm2.bias)  # 6 channels: 2 groups (largest of 8, 4, 2, 1)
    film = F.silu(cond) @ block.film.weight.T + block.film.bias
    scale, shift = film[:, :6, None, None], film[:, 6:, None, None]
    h = h * (1 + scale) + shift
    skip = F.conv2d(x, block.skip.weight, block.skip.bias)
    expected = skip + F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    torch.testing.assert_close(block(x, cond), expected, atol=1e-5, rtol=1e-5)
    wide = _ResBlock(16, 16, cond_dim=None)  # 16 channels: 8 groups
    z = torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(wide.norm1(z), F.group_norm(z, 8, wide.norm1.weight, wide.norm1.bias))
    same = _ResBlock(6, 6, cond_dim=None)
    y = torch.randn(1, 6, 4, 4)
    inner = F.conv2d(F.silu(same.norm1(y)), same.conv1.weight, same.conv1.bias, padding=1)
    torch.testing.assert_close(
        same(y, None), y + F.conv2d(F.silu(same.norm2(inner)), same.conv2.weight, same.conv2.bias, padding=1)
    )


def test_unet_concatenates_skips_and_upsamples_by_pixel_repetition():
    """Two levels: stem -> block -> (skip 0) -> stride-2 conv -> block -> (skip 1) -> middle -> [h, skip 1] ->
    block -> 2x nearest (each pixel repeated) -> conv -> [h, skip 0] -> block -> GN, SiLU, conv."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = UNet(3, 2, base_channels=4, channel_mults=(1, 2), n_res_blocks=1)
    x = torch.randn(1, 3, 8, 8)
    h = net.down_blocks[0][0](net.stem(x), None)
    skip0 = h
    h = net.downsample[0](h)
    assert h.shape[-2:] == (4, 4)
    h = net.down_blocks[1][0](h, None)
    skip1 = h
    for block in net.middle:
        h = block(h, None)
    h = net.up_blocks[0][0](torch.cat([h, skip1], dim=1), None)
    h = net.upsample[0](h.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2))
    h = net.up_blocks[1][0](torch.cat([h, skip0], dim=1), None)
    expected = net.out_conv(F.silu(net.out_norm(h)))
    torch.testing.assert_close(net(x), expected, atol=1e-6, rtol=1e-5)


def test_render_reads_each_objects_own_planes_and_is_deterministic_only_in_eval_mode():
    torch.manual_seed(0)
    model = G3DRGenerator(tiny_model_config())
    planes = torch.randn(2, 3, 4, 16, 16)
    c2w = view_c2w(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 5.0]))
    model.eval()
    with torch.no_grad():
        both = model.render(planes, c2w, 5)
        for b in range(2):
            alone = model.render(planes[b : b + 1], c2w[b : b + 1], 5)
            for key in ("rgb", "depth", "opacity"):
                torch.testing.assert_close(both[key][b : b + 1], alone[key], atol=1e-5, rtol=1e-5)
        # Evaluation renders ignore the random source, also with a target depth (no random depth window).
        depth = torch.full((2, 5, 5), 5.0)
        renders = [
            model.render(planes, c2w, 5, target_depth=depth, generator=torch.Generator().manual_seed(seed))
            for seed in range(6)  # some seeds draw below 0.4 (seed 3: 0.004)
        ]
        for render in renders[1:]:
            torch.testing.assert_close(render["depth"], renders[0]["depth"])
        model.train()
        renders = [model.render(planes, c2w, 5, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
        assert not torch.allclose(renders[0]["depth"], renders[1]["depth"])


def test_pyramid_levels_follow_n_levels_and_are_antialiased_bilinear_reductions():
    """SPEC §2: levels R, R/2, R/4 ... made by antialiased bilinear downsampling; ``n_levels`` sets their count."""
    import torch.nn.functional as F

    planes = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    for n_levels, sizes in ((2, [16, 8]), (3, [16, 8, 4]), (4, [16, 8, 4, 2])):
        levels = G3DRGenerator(tiny_model_config(n_levels=n_levels)).pyramid(planes)
        assert [level.shape[-1] for level in levels] == sizes
        torch.testing.assert_close(levels[0], planes)
        for level, size in zip(levels[1:], sizes[1:], strict=True):
            expected = F.interpolate(planes[0], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            torch.testing.assert_close(level[0], expected, atol=1e-5, rtol=1e-5)


def test_masked_l1_broadcasts_the_mask_over_a_trailing_channel_axis():
    target = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[2.0, 2.0], [4.0, 0.0]]]])  # (1, H=2, W=2, C=2)
    mask = torch.tensor([[[True, False], [False, True]]])
    assert float(masked_l1(torch.zeros_like(target), target, mask)) == pytest.approx((1 + 3 + 4 + 0) / 4)
