"""G3DR: generator shapes and frames, view schedule, losses, depth regularisation, data, training, metrics."""

from __future__ import annotations

import csv
import math

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
