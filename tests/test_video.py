"""Turntables (monorecon.video): where the cameras go and how the light shows the colours."""

import math

import numpy as np
import pytest
import torch
import trimesh

from monorecon.core.mesh import Mesh
from monorecon.video import save_turntable, turntable_from_mesh


def test_turntable_shows_facing_colours_unchanged_and_turns_towards_plus_x():
    tm = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    verts = torch.tensor(tm.vertices, dtype=torch.float32)
    colours = torch.tensor([0.2, 0.6, 0.8]).repeat(len(verts), 1)
    colours[verts[:, 0] > 0.2] = torch.tensor([0.9, 0.1, 0.1])  # the +X side
    mesh = Mesh(verts, torch.tensor(tm.faces), vertex_colors=colours)
    front, side = turntable_from_mesh(mesh, 4, size=64, progress=False)[:2]  # azimuths 0 and 90 deg
    # The sphere's point nearest the camera faces it: ambient + diffuse = 1, the colour itself (uint8 levels).
    np.testing.assert_allclose(front[32, 32], [51, 153, 204], atol=3)
    np.testing.assert_allclose(side[32, 32], [230, 26, 26], atol=3)  # the second frame looks from +X
    # Oblique: darker, down to 0.45 at the outline (light at the eye); fitted, the sphere spans columns 3-61.
    ratio = front[32, 5] / front[32, 32]
    assert np.all((ratio > 0.45) & (ratio < 0.85)), ratio


def test_turntable_frames_a_mesh_in_any_units_and_position():
    tm = trimesh.creation.capsule(height=1.0, radius=0.3)  # along +Z, then stood up along +Y
    verts = torch.tensor(tm.vertices, dtype=torch.float32)[:, [0, 2, 1]]
    faces = torch.tensor(tm.faces)[:, [0, 2, 1]]  # the axis swap mirrors: keep the faces outward
    colours = torch.full_like(verts, 0.5)
    mesh = Mesh(verts, faces, vertex_colors=colours)
    frames = turntable_from_mesh(mesh, 2, size=64, progress=False)
    far = Mesh(verts * 250.0 + torch.tensor([1000.0, -40.0, 7.0]), faces, vertex_colors=colours)  # millimetres
    huge = Mesh(verts * 1e25, faces, vertex_colors=colours)  # squared float32 coordinates overflow
    for other_mesh in (far, huge):
        for frame, other in zip(frames, turntable_from_mesh(other_mesh, 2, size=64, progress=False), strict=True):
            assert np.abs(frame.astype(int) - other.astype(int)).max() <= 2
    # The capsule (radius 0.8 about its centre) scaled to 0.6 fills the frame's height: asin(0.6 / 1.9) of 20 deg.
    rows = np.nonzero((frames[0] < 250).any(axis=(1, 2)))[0]
    assert 0 < rows[0] <= 6 and 57 <= rows[-1] < 63
    unfitted = turntable_from_mesh(far, 1, size=64, progress=False, fit=False)[0]
    assert (unfitted >= 250).all()  # in its own units it is out of view


def test_odd_sized_turntables_save_a_playable_mp4_and_the_exact_gif(tmp_path):
    """H.264 (yuv420p) needs even sides: ffmpeg used to write an empty MP4 for odd ones, without an error."""
    import imageio.v2 as imageio
    from PIL import Image

    frames = [np.full((17, 17, 3), level, np.uint8) for level in (40, 200)]
    mp4, gif = save_turntable(frames, tmp_path / "spin", fps=4)
    video = imageio.mimread(mp4, format="FFMPEG")
    assert len(video) == 2 and video[0].shape == (18, 18, 3)  # the last row and column repeated
    assert abs(float(video[1].mean()) - 200) < 3 and abs(float(video[0].mean()) - 40) < 3
    assert Image.open(gif).size == (17, 17)
    # Both play at the asked rate: the MP4 at 4 frames per second (two frames: half a second), the GIF 250 ms a frame.
    meta = imageio.get_reader(mp4, format="FFMPEG").get_meta_data()
    assert meta["fps"] == 4.0 and meta["duration"] == pytest.approx(0.5)
    with Image.open(gif) as animation:
        assert animation.n_frames == 2 and animation.info["duration"] == 250 and animation.info["loop"] == 0


@pytest.mark.parametrize(("n_frames", "elevation", "distance", "fov"), [(4, 15.0, 1.9, 40.0), (6, -30.0, 2.5, 50.0)])
def test_turntable_camera_path_is_the_closed_form_orbit(n_frames, elevation, distance, fov):
    """Frame i sits at azimuth 360 i / n (towards +X first, the full turn exclusive), at ``elevation`` above the
    y = 0 plane (positive: looking down), at ``distance``, looking at the origin with the asked vertical fov: the
    positions, viewing directions and focal lengths against spherical coordinates written out here."""
    from monorecon.video import turntable_cameras

    cameras = turntable_cameras(n_frames, elevation_deg=elevation, distance=distance, fov_deg=fov, size=64)
    az = np.radians(360.0 * np.arange(n_frames) / n_frames)
    el = np.radians(elevation)
    expected = distance * np.stack([np.cos(el) * np.sin(az), np.full(n_frames, np.sin(el)), np.cos(el) * np.cos(az)], 1)
    c2w = cameras.c2w.double().numpy()
    np.testing.assert_allclose(c2w[:, :3, 3], expected, atol=1e-5)
    np.testing.assert_allclose(-c2w[:, :3, 2], -expected / distance, atol=1e-5)  # OpenGL: the camera looks along -z
    assert np.all(c2w[:, 1, 1] > 0)  # image up keeps world +Y up (no roll, no upside-down frames)
    np.testing.assert_allclose(cameras.focal.double().numpy(), 32.0 / np.tan(np.radians(fov) / 2), rtol=1e-5)
    if n_frames == 4:  # the defaults: TripoSR's canonical distance 1.9 and fov 40, 15 deg above the equator
        default = turntable_cameras(n_frames, size=64)
        np.testing.assert_allclose(default.c2w.double().numpy(), c2w, atol=1e-6)
        np.testing.assert_allclose(default.focal.double().numpy(), cameras.focal.double().numpy())


def test_turntable_headlight_shades_by_the_cosine_to_the_eye():
    """The preview light (ambient 0.45 + diffuse 0.55, directional from the eye, no highlight) against the closed form
    ``albedo (0.45 + 0.55 n.v)`` along the middle row of a sphere seen from the front at elevation 0, with the hit
    point and normal of each pixel's ray found analytically (the fitted sphere: radius 0.6 at the origin)."""
    tm = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    verts = torch.tensor(tm.vertices, dtype=torch.float32)
    mesh = Mesh(verts, torch.tensor(tm.faces), vertex_colors=torch.full_like(verts, 0.8))
    frame = turntable_from_mesh(mesh, 1, size=64, progress=False, elevation_deg=0.0)[0].astype(float) / 255
    focal = 32 / np.tan(np.radians(20.0))
    eye = np.array([0.0, 0.0, 1.9])
    for column in (4, 8, 14, 22, 32):
        ray = np.array([(column + 0.5 - 32) / focal, -(32.5 - 32) / focal, -1.0])
        ray /= np.linalg.norm(ray)
        b = eye @ ray  # |eye + t ray| = 0.6: t^2 + 2 b t + |eye|^2 - 0.36 = 0
        t = -b - np.sqrt(b * b - (eye @ eye - 0.36))
        normal = (eye + t * ray) / 0.6
        expected = 0.8 * (0.45 + 0.55 * normal[2])
        np.testing.assert_allclose(frame[32, column], expected, atol=0.006, err_msg=f"column {column}")  # 1.5 levels


def gif_delays(path) -> list[int]:
    """The delay of each frame of a GIF file, in milliseconds, as PIL decodes them."""
    from PIL import Image

    with Image.open(path) as animation:
        delays = []
        for index in range(animation.n_frames):
            animation.seek(index)
            delays.append(animation.info["duration"])
    return delays


@pytest.mark.parametrize(
    ("fps", "n_frames", "kept"),
    [(12, 24, 24), (24, 30, 30), (30, 25, 25), (60, 24, 12), (15, 12, 12), (240, 12, 2), (24, 1, 1)],
)
def test_the_gif_lasts_as_long_as_the_mp4(tmp_path, fps, n_frames, kept):
    """GIF delays are whole hundredths: 12 fps (83.3 ms) stored as 80 ms a frame made 24 frames last 1.92 s, not the
    MP4's 2 s. The delays alternate (80, 90, 80, ...) so that the GIF lasts frames / fps to the hundredth, and none is
    under 2 hundredths, which browsers play as 10 (60 fps keeps every 2nd frame; 240 fps every 5th, the short last one
    merged into the one before)."""
    frames = [np.full((16, 16, 3), 8 * i, np.uint8) for i in range(n_frames)]  # distinct: PIL merges equal frames
    _, gif = save_turntable(frames, tmp_path / "spin", fps=fps)
    delays = gif_delays(gif)
    assert len(delays) == kept and min(delays) >= 20
    assert sum(delays) == 10 * round(100 * n_frames / fps)
    # after each frame, the nearest hundredth to the MP4's time (the delays never drift apart from the video)
    step = math.ceil(fps / 50)
    for index in range(kept - 1):
        assert abs(sum(delays[: index + 1]) - 1000 * step * (index + 1) / fps) <= 5


def test_render_output_stems_and_folders(tmp_path):
    from monorecon.cli import main

    trimesh.creation.box().export(tmp_path / "box.ply")
    assert main(["render", str(tmp_path / "box.ply"), "-o", str(tmp_path / "take.v2"), "--frames", "2", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.glob("take.v2.*")) == ["take.v2.gif", "take.v2.mp4"]
    (tmp_path / "dest").mkdir()
    argv = ["render", str(tmp_path / "box.ply"), "-o", str(tmp_path / "dest"), "--frames", "2", "--html", "--quiet"]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["turntable.gif", "turntable.mp4", "viewer.html"]
    assert not list(tmp_path.glob("dest.*"))
    # A stem in folders that do not exist yet makes them, as reconstruct -o does.
    argv = ["render", str(tmp_path / "box.ply"), "-o", str(tmp_path / "rend" / "deep" / "box"), "--frames", "2"]
    assert main([*argv, "--html", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "rend" / "deep").iterdir()) == ["box.gif", "box.html", "box.mp4"]


def test_turntable_frame_count_must_be_an_integer():
    with pytest.raises(ValueError, match=r"turntable frame count must be an integer, got 2\.5"):
        turntable_from_mesh(Mesh(torch.eye(3), torch.tensor([[0, 1, 2]])), 2.5)
