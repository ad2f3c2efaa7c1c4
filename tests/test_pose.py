"""Camera pose fitting (monorecon.fit.pose): rotations, reference silhouettes, fits on the teapot, outputs, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from monorecon.core.cameras import PerspectiveCameras, look_at, orbit_c2w
from monorecon.core.mesh import Mesh
from monorecon.core.mesh_renderer import render_mesh
from monorecon.data.shapes import load_normalized_mesh
from monorecon.fit.pose import (
    PoseFitResult,
    axis_angle_to_matrix,
    fit_pose,
    reference_silhouette,
    rotation_error_deg,
    save_pose_result,
)
from monorecon.io.images import save_image
from paths import SHARED_MESHES

TEAPOT = str(SHARED_MESHES / "teapot.ply")


def test_axis_angle_matches_scipy():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(6, 3, generator=g, dtype=torch.float64)
    vectors[0] = 0.0
    vectors[1] = torch.tensor([1e-6, 0.0, 0.0])
    expected = Rotation.from_rotvec(vectors.numpy()).as_matrix()
    assert np.allclose(axis_angle_to_matrix(vectors).numpy(), expected, atol=1e-10)


def test_rotation_error():
    r = torch.from_numpy(Rotation.from_euler("z", 30, degrees=True).as_matrix())
    assert rotation_error_deg(torch.eye(3, dtype=torch.float64), r) == pytest.approx(30.0)
    assert rotation_error_deg(r, r) == pytest.approx(0.0, abs=1e-5)


def test_reference_silhouette():
    rgba = torch.zeros(4, 5, 4)
    rgba[1:3, 2:4, 3] = 0.9
    assert torch.equal(reference_silhouette(rgba), (rgba[..., 3] > 0.5).float())
    rgb = torch.ones(4, 5, 3)
    rgb[0, 0] = torch.tensor([1.0, 0.5, 1.0])
    rgb[1, 1] = 1.0 - 0.5 / 255  # within one level of white: background
    silhouette = reference_silhouette(rgb)
    assert silhouette[0, 0] == 1 and silhouette.sum() == 1


def test_window_cameras_render_the_crop_of_the_full_image():
    # The coarse phases of a small silhouette render a square window of the image: with the window's side as its
    # resolution that is exactly the same pixels as the full render, cropped (zeros past the border).
    from monorecon.fit.pose import _CameraModel, _silhouette_window, _Window

    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, truth = _reference(mesh, 30.0, 20.0, 6.0, 64)
    model = _CameraModel(truth[None, :3, 3], 60.0, "position", (1.0, 100.0))
    window = _silhouette_window(image[..., 3])
    assert window is not None and window.side < 48
    for win in (window, _Window(-5, 40, 30, (64, 64))):  # the second extends past the left and bottom borders
        with torch.no_grad():
            crop = render_mesh(mesh.verts, mesh.faces, model.cameras(64, 64, window=win, size=win.side))["alpha"][0]
        assert torch.allclose(crop, win.crop(image[..., 3], win.side, 0.0), atol=1e-5)
        inside = torch.zeros(64, 64)
        inside[max(win.top, 0) : win.top + win.side, max(win.left, 0) : win.left + win.side] = 1
        assert torch.allclose(win.paste(crop), image[..., 3] * inside, atol=1e-5)
    assert _silhouette_window(torch.ones(64, 64)) is None  # a silhouette filling the image: no window


def _reference(mesh: Mesh, azimuth: float, elevation: float, distance: float, size: int):
    truth = orbit_c2w(azimuth, elevation, distance)
    camera = PerspectiveCameras(truth, size, size, znear=1.0, zfar=100.0, fov_y_deg=60.0)
    with torch.no_grad():
        out = render_mesh(mesh.verts, mesh.faces, camera, vertex_colors=mesh.vertex_colors)
    return torch.cat([out["rgb"][0].clamp(0, 1), out["alpha"][0, ..., None]], -1), truth[0]


@pytest.mark.parametrize(("azimuth", "elevation", "restarts"), [(0.0, 50.0, 0), (130.0, 20.0, 3)])
def test_fit_teapot_small(azimuth, elevation, restarts):
    # Tutorial set-up (fov 60, znear 1, zfar 100, distance 3, start (3.0, 6.9, 2.5)) on a 96 px image; the second view
    # is not reached from the tutorial start (a local minimum): the restarts find it.
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, truth = _reference(mesh, azimuth, elevation, 3.0, 96)
    result = fit_pose(mesh, image, loss="silhouette+shading", coarse_size=48, restarts=restarts)
    assert rotation_error_deg(result.c2w, truth) <= 2.0
    assert float((result.position - truth[:3, 3]).norm()) <= 0.02 * 3.0
    assert result.frames[0].shape == (96, 96, 3) and result.frames[0].dtype == np.uint8
    assert len(result.history) > 1 and result.loss == pytest.approx(result.history[-1])
    if restarts:
        assert result.restart > 0 and len(result.run_losses) == restarts + 1


def test_full_parameterisation_keeps_a_rotation_and_fov():
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, _ = _reference(mesh, 0.0, 50.0, 3.0, 32)
    result = fit_pose(mesh, image, parameterisation="full", steps=5, refine_steps=2, restarts=0, coarse_size=None)
    rot = result.c2w[:3, :3]
    assert torch.allclose(rot.T @ rot, torch.eye(3), atol=1e-4)
    assert 0 < result.fov_deg < 180 and result.restart == 0


def test_save_pose_result(tmp_path):
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    result = PoseFitResult(
        c2w=orbit_c2w(10.0, 20.0, 3.0)[0], fov_deg=60.0, loss=1.5, history=[3.0, 2.0, 1.5], frames=frames,
        reference=torch.zeros(16, 16), znear=1.0, zfar=100.0, run_losses=[1.5],
    )  # fmt: skip
    paths = save_pose_result(result, tmp_path / "pose", video=True)
    camera = json.loads(paths["camera"].read_text())
    assert np.allclose(camera["c2w"], result.c2w.numpy()) and camera["fov_y_deg"] == 60.0
    assert camera["height"] == 16 and camera["history"] == [3.0, 2.0, 1.5]
    assert paths["overlay"].is_file() and paths["gif"].is_file() and paths["mp4"].is_file()
    assert sorted(p.name for p in (tmp_path / "pose").iterdir()) == ["camera.json", "fit.gif", "fit.mp4", "overlay.png"]


@pytest.mark.parametrize("blocked", ["overlay.png", "fit.gif"])
def test_a_failed_pose_result_write_leaves_nothing_and_the_command_refuses_it_before_fitting(
    blocked, tmp_path, monkeypatch, capsys
):
    """A folder where a later file goes: save_pose_result removes what it wrote (camera.json, the MP4) and keeps an
    earlier run's file it had not yet replaced; ``fit-pose`` refuses such an output before the (slow) fit."""
    from monorecon.cli import main

    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    result = PoseFitResult(
        c2w=orbit_c2w(10.0, 20.0, 3.0)[0], fov_deg=60.0, loss=1.5, history=[1.5], frames=frames,
        reference=torch.zeros(16, 16), znear=1.0, zfar=100.0, run_losses=[1.5],
    )  # fmt: skip
    out = tmp_path / "pose"
    (out / blocked).mkdir(parents=True)
    (out / "fit.mp4").write_bytes(b"an earlier run's video")
    with pytest.raises(ValueError, match="it is a folder"):
        save_pose_result(result, out, video=True)
    if blocked == "overlay.png":  # the video was not reached
        assert sorted(p.name for p in out.iterdir()) == ["fit.mp4", "overlay.png"]
        assert (out / "fit.mp4").read_bytes() == b"an earlier run's video"
    else:  # the new MP4 went with the GIF that failed
        assert [p.name for p in out.iterdir()] == ["fit.gif"]

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before checking the output")

    monkeypatch.setattr("monorecon.fit.pose.fit_pose", no_fit)
    code = main(["fit-pose", str(TEAPOT), str(tmp_path / "any.png"), "-o", str(out), "--video", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"monorecon: error: cannot write {out / blocked}: it is a folder", err


def test_bad_input():
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    with pytest.raises(ValueError, match="empty silhouette"):
        fit_pose(mesh, torch.ones(32, 32, 3))
    with pytest.raises(ValueError, match="image must be"):
        fit_pose(mesh, torch.ones(32, 32, 2))
    with pytest.raises(ValueError, match=r"image must lie in \[0, 1\], got values in \[255, 255\]"):
        fit_pose(mesh, torch.full((32, 32, 3), 255.0))
    with pytest.raises(ValueError, match="loss must be"):
        fit_pose(mesh, torch.zeros(32, 32, 3), loss="depth")
    with pytest.raises(ValueError, match="parameterisation"):
        fit_pose(mesh, torch.zeros(32, 32, 3), parameterisation="quaternion")
    with pytest.raises(ValueError, match="mesh is empty"):
        Mesh(torch.zeros(3, 3), torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mesh must be"):
        fit_pose(object(), torch.zeros(32, 32, 3))
    collapsed = Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]))  # one face of zero area: nothing renders
    with pytest.raises(ValueError, match="the mesh has no surface to fit"):
        fit_pose(collapsed, torch.zeros(32, 32, 3))
    with pytest.raises(ValueError, match="coarse_max_faces"):
        fit_pose(mesh, torch.zeros(32, 32, 3), coarse_max_faces=10)


# --------------------------------------------------------------------------------------------------------------------
# SPEC §4 values and the optimiser's steps, against hand-computed expectations (tiny images, a step or two)
# --------------------------------------------------------------------------------------------------------------------
def test_tutorial_settings_match_spec():
    """SPEC §4: start position (3.0, 6.9, 2.5); fov 60, znear 1, zfar 100; Adam lr 0.05, up to 200 steps; soft
    silhouette sigma 1e-4; a frame every 10 steps."""
    import inspect

    from monorecon.fit.pose import TUTORIAL_START_POSITION

    assert TUTORIAL_START_POSITION == (3.0, 6.9, 2.5)
    defaults = {name: p.default for name, p in inspect.signature(fit_pose).parameters.items()}
    assert defaults["start_position"] == (3.0, 6.9, 2.5)
    assert (defaults["fov_deg"], defaults["znear"], defaults["zfar"]) == (60.0, 1.0, 100.0)
    assert (defaults["lr"], defaults["steps"], defaults["sigma"], defaults["record_every"]) == (0.05, 200, 1e-4, 10)


def _step_fit(size=(32, 48), **kwargs) -> PoseFitResult:
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    truth = orbit_c2w(0.0, 50.0, 3.0)
    camera = PerspectiveCameras(truth, *size, znear=1.0, zfar=100.0, fov_y_deg=60.0)
    with torch.no_grad():
        out = render_mesh(mesh.verts, mesh.faces, camera, vertex_colors=mesh.vertex_colors)
    image = torch.cat([out["rgb"][0].clamp(0, 1), out["alpha"][0, ..., None]], -1)
    settings = dict(restarts=0, coarse_size=None, refine_steps=0, stop_loss=0.0) | kwargs
    return fit_pose(mesh, image, **settings)


def test_one_adam_step_moves_the_camera_position_by_the_learning_rate():
    """A first Adam step moves each parameter by its learning rate: one tutorial step (lr 0.05) moves every coordinate
    of the camera position by 0.05 from (3.0, 6.9, 2.5), one refinement step then by lr / 5 = 0.01. The look-at camera
    keeps the fov 60 on a non-square (32 x 48) image."""
    start = torch.tensor([3.0, 6.9, 2.5])
    coarse = _step_fit(steps=1)
    torch.testing.assert_close((coarse.position - start).abs(), torch.full((3,), 0.05), atol=1e-5, rtol=0)
    assert coarse.fov_deg == pytest.approx(60.0, abs=1e-4)
    torch.testing.assert_close(coarse.c2w, look_at(coarse.position[None])[0], atol=1e-6, rtol=0)
    refined = _step_fit(steps=1, refine_steps=1)
    torch.testing.assert_close((refined.position - coarse.position).abs(), torch.full((3,), 0.01), atol=1e-5, rtol=0)


def test_full_parameterisation_optimises_rotation_and_focal_length():
    """Parameterisation "full": one step moves the position by 0.05 per coordinate, the rotation offset (axis-angle,
    each component +-0.05: 0.05 sqrt(3) rad = 4.96 deg from the start's look-at rotation) and the log focal length by
    +-0.05, i.e. a fov of 2 atan(tan(30 deg) exp(-+0.05))."""
    result = _step_fit(steps=1, parameterisation="full")
    start = torch.tensor([3.0, 6.9, 2.5])
    torch.testing.assert_close((result.position - start).abs(), torch.full((3,), 0.05), atol=1e-5, rtol=0)
    offset = rotation_error_deg(look_at(start[None])[0], result.c2w)  # the offset applies to the start's rotation
    assert offset == pytest.approx(math.degrees(0.05 * math.sqrt(3)), abs=1e-3)
    fovs = [math.degrees(2 * math.atan(math.tan(math.radians(30.0)) * math.exp(s * 0.05))) for s in (-1, 1)]
    assert min(abs(result.fov_deg - f) for f in fovs) < 1e-3


def test_a_frame_every_ten_steps():
    """SPEC §4: a frame of the fit every 10 steps (steps 0, 10, 20 of 21), plus the final one."""
    result = _step_fit(steps=21)
    assert len(result.history) == 22 and len(result.frames) == 4


def test_shading_term_is_weighted_colour_difference_over_covered_pixels():
    """Loss "silhouette+shading": total = silhouette + shading_weight x sum over the pixels covered in both the render
    and the reference of the squared colour differences (recomputed here from a hard render)."""
    from monorecon.fit.pose import _CameraModel, _losses, _Phase

    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, _ = _reference(mesh, 20.0, 30.0, 3.0, 24)
    reference, reference_rgb = image[..., 3], image[..., :3] * 0.5 + 0.25  # colours that differ from the render
    model = _CameraModel(orbit_c2w(35.0, 25.0, 3.2)[:, :3, 3], 60.0, "position", (1.0, 100.0))
    phase = _Phase(reference=reference, reference_rgb=reference_rgb, sigma=1e-4, steps=1, lr=0.05, decay=False,
                   stop_loss=0.0, desc="test")  # fmt: skip
    cameras = model.cameras(24, 24)
    with torch.no_grad():
        out = render_mesh(mesh.verts, mesh.faces, cameras, vertex_colors=mesh.vertex_colors)
        colour = ((out["rgb"][0] - reference_rgb).square() * (out["alpha"][0] * reference)[..., None]).sum()
        totals = []
        for weight in (0.0, 2.5):
            options = {"faces_per_pixel": 30, "shading_weight": weight, "background": (1.0, 1.0, 1.0)}
            total, silhouette, _ = _losses(mesh, cameras, phase, options)
            totals.append(float(total[0]))
    assert float(colour) > 0.5
    assert totals[0] == pytest.approx(float(silhouette[0]), rel=1e-6)
    assert totals[1] - totals[0] == pytest.approx(2.5 * float(colour), rel=1e-4)


def test_absurd_restarts_and_learning_rates_are_refused_before_any_work():
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, _ = _reference(mesh, 30.0, 20.0, 3.0, 32)
    with pytest.raises(ValueError, match=r"restarts must lie in \[0, 1000\], got 100000000"):
        fit_pose(mesh, image, restarts=100_000_000)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got inf"):
        fit_pose(mesh, image, lr=math.inf)
    with pytest.raises(ValueError, match="need 0 < znear < zfar"):
        fit_pose(mesh, image, znear=0.0)  # as `fit-pose --znear 0` passes it
    rgb_all_foreground = torch.full((32, 32, 3), 0.5)  # grey everywhere, white given as the background
    with pytest.raises(ValueError, match="the reference silhouette fills the image"):
        fit_pose(mesh, rgb_all_foreground, background=(1.0, 1.0, 1.0))


def test_silhouette_iou_of_a_fit_is_one_at_the_truth_and_zero_looking_away():
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, truth = _reference(mesh, 30.0, 20.0, 3.0, 48)
    reference = (image[..., 3] > 0.5).float()
    result = PoseFitResult(c2w=truth, fov_deg=60.0, loss=0.0, history=[], frames=[], reference=reference,
                           znear=1.0, zfar=100.0)  # fmt: skip
    assert result.silhouette_iou(mesh) > 0.97
    away = truth.clone()
    away[:3, 3] = -away[:3, 3]  # behind the mesh, looking away from it
    assert dataclasses.replace(result, c2w=away).silhouette_iou(mesh) == 0.0


def test_an_rgb_references_background_is_its_borders_colour():
    """An RGB reference on grey: by default the background is the border's median colour, so the silhouette is the
    object (with the tutorial's white every pixel was foreground, and a wrong pose got a near-perfect loss)."""
    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, _ = _reference(mesh, 30.0, 20.0, 3.0, 48)
    rgb = image[..., :3] * image[..., 3:] + 0.5 * (1 - image[..., 3:])
    result = fit_pose(mesh, rgb, steps=1, restarts=0, refine_steps=0, coarse_size=None)
    drawn, truth = result.reference > 0.5, image[..., 3] > 0.5
    assert float((drawn & truth).sum()) / float((drawn | truth).sum()) > 0.95  # white gave 0.09


def test_fit_pose_command_passes_its_clipping_and_warns_on_a_failed_fit(tmp_path, monkeypatch, capsys):
    """``--znear`` reaches the fit (a small mesh seen close needs a nearer clipping plane); a fit whose silhouette IoU
    is below 0.5 is warned about."""
    from monorecon.cli import main
    from monorecon.fit import pose

    mesh = load_normalized_mesh(TEAPOT, radius=1.0)
    image, truth = _reference(mesh, 30.0, 20.0, 3.0, 48)
    save_image(image.numpy(), tmp_path / "teapot.png")
    seen = {}

    def fake_fit(mesh, image, **kwargs):
        seen.update(kwargs)
        away = truth.clone()
        away[:3, 3] = -away[:3, 3]  # a failed fit: looking away from the mesh
        frames = [np.zeros((48, 48, 3), np.uint8)]
        return PoseFitResult(c2w=away, fov_deg=60.0, loss=1.0, history=[1.0], frames=frames,
                             reference=reference_silhouette(torch.as_tensor(image)), znear=1.0, zfar=100.0)  # fmt: skip

    monkeypatch.setattr(pose, "fit_pose", fake_fit)
    argv = ["fit-pose", TEAPOT, str(tmp_path / "teapot.png"), "-o", str(tmp_path / "out"), "--znear", "0.01", "--quiet"]
    assert main(argv) == 0
    assert (seen["znear"], seen["zfar"]) == (0.01, 100.0)
    assert "the fitted camera does not match the reference (silhouette IoU 0." in capsys.readouterr().err


@pytest.mark.parametrize("refine_steps", [None, "0", "3"])
def test_fit_pose_refine_steps_flag(tmp_path, monkeypatch, refine_steps):
    """The refinement at full size that follows --steps was hidden (always 60 steps): --refine-steps N sets it, 0 runs
    none, and the default stays 60."""
    import trimesh

    from monorecon.cli import main
    from monorecon.fit import pose

    phases = []
    real_optimise = pose._optimise

    def spy(mesh, model, phase, *args, **kwargs):
        phases.append((phase.desc, phase.steps))
        return real_optimise(mesh, model, phase, *args, **kwargs)

    monkeypatch.setattr(pose, "_optimise", spy)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    sphere.export(tmp_path / "ball.ply")
    rows, cols = np.mgrid[:32, :32] + 0.5
    image = np.zeros((32, 32, 4), np.float32)
    image[np.hypot(rows - 16, cols - 16) < 8] = 1.0
    save_image(image, tmp_path / "ball.png")
    argv = ["fit-pose", str(tmp_path / "ball.ply"), str(tmp_path / "ball.png"), "-o", str(tmp_path / "out"),
            "--steps", "2", "--restarts", "0", "--quiet"]  # fmt: skip
    assert main(argv + ([] if refine_steps is None else ["--refine-steps", refine_steps])) == 0
    expected = {None: [("pose refinement", 60)], "0": [], "3": [("pose refinement", 3)]}[refine_steps]
    assert phases == [("pose", 2), *expected]
    history = json.loads((tmp_path / "out" / "camera.json").read_text())["history"]
    assert len(history) == 3 + (expected[0][1] + 1 if expected else 0)  # each phase: its start, then each step
