"""Audit tests of G3DR training (trainer.py, schedule.py): behaviours the main G3DR tests leave open.

Every expectation is an independent reference: hand-computed numbers, analytic gradients or SPEC §2's formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

import test_g3dr
from monorecon.models.g3dr import schedule
from monorecon.models.g3dr import trainer as trainer_module
from monorecon.models.g3dr.data import RGBDViews
from monorecon.models.g3dr.generator import G3DRModelConfig
from monorecon.models.g3dr.trainer import (
    G3DRDataConfig,
    G3DRLossConfig,
    G3DRTrainConfig,
    G3DRTrainer,
    downsample_targets,
    train_g3dr,
)


def tiny_model_config(**overrides) -> G3DRModelConfig:
    """test_g3dr's tiny model at half its sizes (8 px renders keep these tests fast)."""
    settings = dict(
        image_size=8, plane_resolution=8, base_channels=4, channel_mults=(1,), n_samples=4, n_importance=4,
        decoder_hidden=8,
    )  # fmt: skip
    return test_g3dr.tiny_model_config(**{**settings, **overrides})


def tiny_train_config(tmp_path, **overrides) -> G3DRTrainConfig:
    settings = dict(
        out_dir=str(tmp_path / "run"), steps=4, batch_size=2, render_size=4, model=tiny_model_config(),
        checkpoint_every=2, log_every=1, quiet=True, calibrate_views=0,
        loss=G3DRLossConfig(perceptual=0.0),  # the perceptual loss needs 11 px or more (see the last test)
    )  # fmt: skip
    return G3DRTrainConfig(**{**settings, **overrides})


def marked_views(n: int = 3, size: int = 8, masked: bool = True) -> RGBDViews:
    """View k: rgb constant k / 10 except a bright left column; depth 4 + column / 10; mask: left half."""
    columns = torch.arange(size, dtype=torch.float32)
    rgb = (torch.arange(n, dtype=torch.float32) / 10).view(n, 1, 1, 1).repeat(1, 3, size, size)
    rgb[..., 0] = 1.0
    depth = (4.0 + columns / 10).expand(n, size, size).clone()
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[..., : size // 2] = True
    return RGBDViews(rgb, depth, mask if masked else None)


def stub_render(batch_size: int, size: int, calls: list | None = None):
    """A render with known outputs: rgb 0.5; depth 4.5 + 0.1 x column; opacity 0.3 (left half) / 0.8 (right half)."""

    def render(planes, c2w, render_size, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        depth = (4.5 + 0.1 * torch.arange(render_size, dtype=torch.float32)).expand(batch_size, render_size, -1)
        opacity = torch.full((batch_size, render_size, render_size), 0.3)
        opacity[..., render_size // 2 :] = 0.8
        return {"rgb": torch.full((batch_size, render_size, render_size, 3), 0.5), "depth": depth.clone(),
                "opacity": opacity}  # fmt: skip

    return render


# --------------------------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------------------------
def test_yaw_ramp_of_runs_shorter_than_three_steps_lasts_one_step():
    """``T // 3`` is 0 below T = 3: the ramp is floored at one step, so d(0.5) = 24 - 18 * 0.5 = 15."""
    assert schedule.yaw_divisor(0.5, 2) == pytest.approx(15.0)
    assert schedule.yaw_divisor(0.25, 1) == pytest.approx(24 - 18 * 0.25)
    assert schedule.yaw_divisor(1, 2) == 6.0


def test_novel_angles_scale_uniform_draws_by_180_over_d_and_the_pitch_limit():
    """yaw = (2 u - 1) * 180 / d with the first batch of draws, pitch = (2 u - 1) * pitch_max with the second."""
    u = torch.rand(6, generator=torch.Generator().manual_seed(3))
    yaw, pitch = schedule.sample_novel_angles(3, 50, 300, torch.Generator().manual_seed(3), pitch_max_deg=4.0)
    torch.testing.assert_close(yaw, (2 * u[:3] - 1) * 180 / 15.0)  # d(50 of 300) = 24 - 18 * 50 / 100 = 15
    torch.testing.assert_close(pitch, (2 * u[3:] - 1) * 4.0)
    with pytest.raises(ValueError, match="batch"):
        schedule.sample_novel_angles(0, 1, 10)


def test_schedule_refuses_bad_steps_and_totals():
    for call in (schedule.yaw_divisor, schedule.opacity_weight, schedule.canonical_extras_active):
        with pytest.raises(ValueError, match="step"):
            call(-1, 10)
        with pytest.raises(ValueError, match="total"):
            call(1, 2.5)
        with pytest.raises(ValueError, match="step"):
            call(float("nan"), 10)


# --------------------------------------------------------------------------------------------------------------------
# Targets and batches
# --------------------------------------------------------------------------------------------------------------------
def test_downsample_targets_averages_whole_cells_and_a_half_foreground_cell_is_background():
    """4 x 4 -> 1 x 1 and 4 x 4 -> 2 x 2 area averages; a cell exactly half foreground is not foreground (> 0.5)."""
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[..., 0, 0] = 16.0  # one bright corner: area averages 16 / 16 and 16 / 4, a bilinear resize would miss it
    depth = torch.full((1, 4, 4), 5.0)
    depth[0, 0, 0] = 4.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, 0] = True  # 2 of the 4 pixels of the top-left 2 x 2 cell
    mask[0, 2:, 2:] = True
    small_rgb, small_depth, small_mask = downsample_targets(rgb, depth, mask, 1)
    torch.testing.assert_close(small_rgb, torch.full((1, 3, 1, 1), 1.0))
    assert small_depth.tolist() == [[[pytest.approx((4.0 + 5.0 * 5) / 6)]]]
    assert small_mask.tolist() == [[[False]]]  # 6 of 16
    small_rgb, small_depth, small_mask = downsample_targets(rgb, depth, mask, 2)
    torch.testing.assert_close(small_rgb[0, 1], torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    assert small_mask[0].tolist() == [[False, False], [False, True]]
    torch.testing.assert_close(small_depth[0], torch.tensor([[4.5, 6.0], [6.0, 5.0]]))


def test_downsample_targets_at_the_input_size_keeps_the_targets():
    """No resampling at the input size: the background depth is the given one, not the far depth."""
    rgb = torch.rand(1, 3, 2, 2)
    depth = torch.tensor([[[4.5, 5.5], [5.0, 4.0]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    out = downsample_targets(rgb, depth, mask, 2)
    assert torch.equal(out[0], rgb) and torch.equal(out[1], depth) and torch.equal(out[2], mask)


def test_batches_draw_every_view_and_flip_rgb_depth_and_mask_together(tmp_path):
    views = marked_views(n=3)
    trainer = G3DRTrainer(tiny_train_config(tmp_path, batch_size=64), views)
    batch = trainer.batch(1, torch.Generator().manual_seed(0))
    index = (batch["rgb"][:, 0, 0, 3] * 10).round().long()  # the view's constant
    assert sorted(set(index.tolist())) == [0, 1, 2]
    flipped = batch["rgb"][:, 0, 0, -1] == 1.0  # the bright column moved to the right
    assert 10 < int(flipped.sum()) < 54  # about half flipped
    for k in range(64):
        item = views[int(index[k])]
        expected = {key: value.flip(-1) if flipped[k] else value for key, value in item.items()}
        for key in ("rgb", "depth", "mask"):
            assert torch.equal(batch[key][k], expected[key]), key
    trainer.config.data.random_flip = False
    batch = trainer.batch(1, torch.Generator().manual_seed(0))
    assert bool((batch["rgb"][:, 0, 0, 0] == 1.0).all()) and bool((batch["depth"][:, :, 0] == 4.0).all())


# --------------------------------------------------------------------------------------------------------------------
# Losses without a mask
# --------------------------------------------------------------------------------------------------------------------
def test_unmasked_views_use_the_paper_opacity_target_and_the_raw_depth_tv(tmp_path, monkeypatch):
    """Without a mask (the paper's data) every pixel is foreground: the novel view's opacity term is mean(1 - o)
    and the TV is taken on the rendered depth itself (no compositing over the far depth)."""
    views = marked_views(n=2, masked=False)
    config = tiny_train_config(tmp_path, steps=100, render_size=4, batch_size=2)
    trainer = G3DRTrainer(config, views)
    calls: list = []
    monkeypatch.setattr(trainer.model, "render", stub_render(2, 4, calls))
    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: True)
    _, novel = trainer.losses(80, torch.Generator().manual_seed(0))
    assert novel["opacity"] == pytest.approx((0.7 + 0.2) / 2, rel=1e-5)  # weight 1 after step 50
    # depth 4.5 + 0.1 x column: horizontal differences 0.1, squared 0.01; none vertical
    assert novel["tv"] == pytest.approx(0.1 * 0.01, rel=1e-4)
    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: False)
    _, canonical = trainer.losses(25, torch.Generator().manual_seed(0))
    assert canonical["opacity"] == pytest.approx(0.5 * (0.7 + 0.2) / 2, rel=1e-5)  # ramp 25 / 50
    assert "target_depth" in calls[-1] and calls[-1]["target_depth"] is not None


def test_canonical_renders_without_depth_guidance_when_it_is_off(tmp_path, monkeypatch):
    views = marked_views(n=2)
    trainer = G3DRTrainer(tiny_train_config(tmp_path, depth_regularization=False), views)
    calls: list = []
    monkeypatch.setattr(trainer.model, "render", stub_render(2, 4, calls))
    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: False)
    _, logged = trainer.losses(1, torch.Generator().manual_seed(0))
    assert calls[-1].get("target_depth") is None and calls[-1].get("target_mask") is None
    assert logged["depth"] > 0


# --------------------------------------------------------------------------------------------------------------------
# Optimiser step
# --------------------------------------------------------------------------------------------------------------------
def _linear_losses(trainer, scale: float, seen: list):
    """losses() replaced by ``scale * sum of all parameters``: every gradient entry is ``scale``."""

    def losses(step, generator):
        seen.append(
            {"step": step, "training": trainer.model.training, "draw": float(torch.rand((), generator=generator))}
        )
        total = scale * sum(p.sum() for p in trainer.model.parameters())
        return total, {"rgb": 0.0}

    return losses


def _record_grad_norms(trainer, norms: list):
    step = trainer.optimizer.step

    def recording(*args, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")  # optimizer.step wrapped on purpose
def test_train_step_clips_the_gradient_norm_and_starts_each_step_from_zero_gradients(tmp_path):
    views = marked_views(n=2)
    for clip in (0.5, 0.0):
        trainer = G3DRTrainer(tiny_train_config(tmp_path, grad_clip=clip), views)
        n = sum(p.numel() for p in trainer.model.parameters())
        seen, norms = [], []
        trainer.losses = _linear_losses(trainer, 3.0, seen)
        _record_grad_norms(trainer, norms)
        trainer.model.eval()
        logged = [trainer.train_step(1), trainer.train_step(2)]
        unclipped = 3.0 * math.sqrt(n)
        assert norms == pytest.approx([clip or unclipped] * 2, rel=1e-4)
        assert [s["training"] for s in seen] == [True, True]  # train mode (random sample placement)
        assert [row["rgb"] for row in logged] == [0.0, 0.0] and "loss" in logged[0]


def test_train_step_logs_its_loss_and_draws_from_a_generator_of_its_own_step(tmp_path):
    views = marked_views(n=2)
    trainer = G3DRTrainer(tiny_train_config(tmp_path), views)
    seen = []
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.zero_()
    trainer.losses = _linear_losses(trainer, 2.0, seen)
    logged = [trainer.train_step(s) for s in (3, 4, 3)]
    draws = [s["draw"] for s in seen]
    assert draws[0] != draws[1] and draws[0] == draws[2]  # a step's randomness depends on the step only
    assert logged[0]["loss"] == 0.0  # 2 x sum of all-zero parameters
    # Adam's first update moves every weight by -lr (all gradients positive): step 4 sees the weights at -1e-3
    assert logged[1]["loss"] == pytest.approx(-2.0 * 1e-3 * sum(p.numel() for p in trainer.model.parameters()),
                                              rel=1e-3)  # fmt: skip


def test_adam_uses_the_documented_betas(tmp_path):
    trainer = G3DRTrainer(tiny_train_config(tmp_path), marked_views(n=2))
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["lr"] == pytest.approx(1e-3)


# --------------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------------
def test_the_last_step_is_always_logged_and_checkpointed_and_a_resumed_run_records_the_whole_run(tmp_path):
    views = marked_views(n=2)
    config = tiny_train_config(tmp_path, steps=3, log_every=2, checkpoint_every=2, depth_regularization=False)
    run = train_g3dr(config, views)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    steps = [row.split(",")[0] for row in (run / "train_log.csv").read_text().strip().splitlines()[1:]]
    assert steps == ["2", "3"]
    (run / "checkpoints" / "step_00000003.pt").unlink()
    train_g3dr(config, views)  # resumes after step 2: runs step 3 only
    steps = [row.split(",")[0] for row in (run / "train_log.csv").read_text().strip().splitlines()[1:]]
    assert steps == ["2", "3"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trained_steps"] == 3 and saved["depth_regularization"] is False
    assert yaml.safe_load((run / "train_config.yaml").read_text())["steps"] == 3


def test_calibration_needs_a_mesh_for_every_view(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "calibrate_mesh_threshold", lambda *a, **k: calls.append(1) or (1.0, {}))
    views = marked_views(n=2)
    views = RGBDViews(views.rgb, views.depth, views.mask, to_canonical=torch.eye(4).expand(2, 4, 4),
                      mesh_paths=[str(tmp_path / "a.ply"), ""])  # fmt: skip
    train_g3dr(tiny_train_config(tmp_path, steps=1, calibrate_views=2), views)
    assert calls == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"calibrate_views": True}, "calibrate_views"),
        ({"lr": 0.0}, "lr must lie"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"data": G3DRDataConfig(source="web")}, "data.source"),
        ({"log_every": 0}, "log_every"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
    ],
)
def test_config_refuses_settings_outside_their_ranges(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_train_config(tmp_path, **overrides)


def test_trainer_refuses_views_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="8"):
        G3DRTrainer(tiny_train_config(tmp_path), marked_views(n=2, size=16))


def test_load_views_passes_the_data_section_and_the_camera_through(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "views_from_synthetic", lambda *a, **k: calls.append(("synthetic", a, k)))
    monkeypatch.setattr(trainer_module, "views_from_folder", lambda *a, **k: calls.append(("folder", a, k)))
    model = tiny_model_config(camera_distance=4.0, fov_deg=20.0)
    data = G3DRDataConfig(root="data", split="val", views_per_object=3, max_objects=7, classes=["chair"])
    trainer_module.load_views(tiny_train_config(tmp_path, model=model, data=data))
    expected = dict(image_size=8, views_per_object=3, max_objects=7, classes=["chair"], distance=4.0, fov_deg=20.0)
    assert calls[-1] == ("synthetic", ("data", "val"), expected)
    trainer_module.load_views(tiny_train_config(tmp_path, model=model, data=G3DRDataConfig(root="data")))
    assert calls[-1][2]["classes"] is None and calls[-1][2]["max_objects"] is None
    trainer_module.load_views(tiny_train_config(tmp_path, data=G3DRDataConfig(source="folder", root="pairs")))
    assert calls[-1] == ("folder", ("pairs", 8), {})
    with pytest.raises(ValueError, match="root"):
        trainer_module.load_views(tiny_train_config(tmp_path))


def test_a_render_size_too_small_for_the_perceptual_loss_is_refused_up_front(tmp_path, monkeypatch):
    """The MS-SSIM substitute needs 11 px (its window): a smaller render_size is refused by the config, not at the
    first canonical step of the run's second half; without the perceptual term the same size trains through it."""
    with pytest.raises(ValueError, match=r"render_size must be at least 11 .* MS-SSIM \(no vgg_path\), got 8"):
        tiny_train_config(tmp_path, steps=10, render_size=8, loss=G3DRLossConfig())
    tiny_train_config(tmp_path, render_size=11, loss=G3DRLossConfig())
    config = tiny_train_config(tmp_path, steps=10, render_size=8)  # perceptual weight 0
    trainer = G3DRTrainer(config, marked_views(n=2))
    monkeypatch.setattr(trainer.model, "render", stub_render(2, 8))
    monkeypatch.setattr(trainer_module, "use_novel_view", lambda *a, **k: False)
    total, parts = trainer.losses(6, torch.Generator().manual_seed(0))  # second half: the extras are on
    assert torch.isfinite(total) and parts["perceptual"] == 0 and parts["semantic"] > 0
