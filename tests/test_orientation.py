"""Exported meshes are +Y up with the input view's front facing +Z and image right +X, from the API and the CLI.

The object is planted in the model in **TripoSR's own frame**, written here from the official conventions (SPEC §1)
without any monorecon frame code: z up, the input camera at (+1.9, 0, 0) looking at the origin, image right = +y;
triplane plane 0 is read at (x, y), plane 1 at (x, z), plane 2 at (y, z) of ``p / 0.87``, the first coordinate being
the column. The scene code stores these coordinates as features, and a stand-in decoder turns the features it is
given back into a TripoSR point and evaluates an asymmetric object there: a ball with three arms of different
lengths, pointing up, towards the input camera and to the image right. A wrong frame conversion anywhere between
the triplane lookup and the written file moves or mirrors the arms and fails the checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from torch import nn

import monorecon.models.triposr as triposr_package
from analytic import linear_to_srgb
from monorecon import api, cli
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.io.images import save_image
from test_mesh_io import _gltf_accessor

REPO = Path(__file__).resolve().parents[1]
TINY_WEIGHTS = REPO / "tests" / "data" / "triposr_ref" / "model.safetensors"
TINY_CONFIG = REPO / "tests" / "data" / "triposr_ref" / "config.yaml"
TRIPOSR_RADIUS = 0.87  # triplane lookup scale of TripoSR
THRESHOLD = 25.0  # TripoSR's iso level, the default of the API and the CLI

BALL_RADIUS, ARM_RADIUS = 0.25, 0.09
# Arm tips in TripoSR's frame (z up, input camera on +x, image right +y); three different lengths.
UP_TIP, FRONT_TIP, RIGHT_TIP = (0.0, 0.0, 0.6), (0.5, 0.0, 0.0), (0.0, 0.4, 0.0)
RED, GREEN, BLUE, GREY = (0.9, 0.1, 0.1), (0.1, 0.9, 0.1), (0.1, 0.1, 0.9), (0.5, 0.5, 0.5)
# What the monorecon world frame must show: up = +Y, towards the input camera = +Z, image right = +X.
EXPECTED_MAX = {"x": RIGHT_TIP[1] + ARM_RADIUS, "y": UP_TIP[2] + ARM_RADIUS, "z": FRONT_TIP[0] + ARM_RADIUS}
EXPECTED_MIN = -BALL_RADIUS
MC_RESOLUTION = 48
TOLERANCE = 2 * TRIPOSR_RADIUS / (MC_RESOLUTION - 1) * 1.3  # about one voxel


def capsule_sdf(points: torch.Tensor, tip: tuple[float, float, float], radius: float) -> torch.Tensor:
    """Signed distance to the capsule from the origin to ``tip``; (N, 3) -> (N,)."""
    tip_t = points.new_tensor(tip)
    along = ((points @ tip_t) / (tip_t @ tip_t)).clamp(0, 1)
    return (points - along[:, None] * tip_t).norm(dim=-1) - radius


class PlantedDecoder(nn.Module):
    """Stand-in for the NeRF MLP: features -> TripoSR point -> density and colour of the three-armed ball."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        planes = features.unflatten(-1, (3, self.channels))  # (B, N, plane, channel); channel 2 holds ones
        ones = planes[..., 2]
        weight = ones.clamp_min(1e-6)
        x = planes[..., 0, 0] / weight[..., 0]
        y = planes[..., 0, 1] / weight[..., 0]
        z = planes[..., 1, 1] / weight[..., 1]
        points = torch.stack([x, y, z], dim=-1).reshape(-1, 3) * TRIPOSR_RADIUS
        arms = [capsule_sdf(points, tip, ARM_RADIUS) for tip in (UP_TIP, FRONT_TIP, RIGHT_TIP)]
        sdf = torch.stack([points.norm(dim=-1) - BALL_RADIUS, *arms]).min(dim=0).values
        # exp(-k sdf) crosses the iso level exactly on the surface; nothing outside the planes (ones fade there).
        density = THRESHOLD * torch.exp((-30.0 * sdf).clamp(max=20.0)) * (ones > 0.5).all(dim=-1).reshape(-1)
        rgb = points.new_tensor(GREY).expand(points.shape[0], 3)
        for colour, axis in ((GREEN, 0), (BLUE, 1), (RED, 2)):  # arm regions: beyond the ball along each arm
            rgb = torch.where(points[:, axis : axis + 1] > BALL_RADIUS + 0.05, points.new_tensor(colour), rgb)
        shape = features.shape[:-1]
        return {"density": density.reshape(*shape, 1), "rgb": rgb.reshape(*shape, 3)}


def coordinate_scene_code(channels: int, side: int) -> torch.Tensor:
    """(1, 3, C, S, S) triplanes whose channels 0 and 1 hold the plane's (column, row) coordinate at each texel
    centre ``(2 k + 1) / S - 1`` and channel 2 holds 1 (bilinear lookups then return the point's coordinates)."""
    centres = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
    code = torch.zeros(1, 3, channels, side, side)
    code[0, :, 0] = centres[None, :]  # column coordinate
    code[0, :, 1] = centres[:, None]  # row coordinate
    code[0, :, 2] = 1.0
    return code


def plant(model):
    """Turn a loaded TripoSR model into the three-armed ball: a coordinate scene code and the stand-in decoder."""
    _, channels, side, _ = model.scene_code_shape
    code = coordinate_scene_code(channels, side)
    model.decoder = PlantedDecoder(channels)
    model.encode = lambda images: code.expand(images.shape[0], -1, -1, -1, -1)
    return model


@pytest.fixture(scope="module")
def planted_model():
    return plant(api.load_model(TINY_WEIGHTS, TINY_CONFIG))


@pytest.fixture(scope="module")
def input_image(tmp_path_factory) -> Path:
    """Any RGBA object image: the planted model ignores its content."""
    image = np.zeros((48, 48, 4), dtype=np.float32)
    image[10:38, 14:34] = (0.8, 0.4, 0.2, 1.0)
    return save_image(image, tmp_path_factory.mktemp("input") / "object.png")


def check_orientation(positions: np.ndarray, colours: np.ndarray) -> None:
    """positions (V, 3) in the exported frame, colours (V, 3) in [0, 1]."""
    for axis, name in enumerate("xyz"):
        assert abs(positions[:, axis].max() - EXPECTED_MAX[name]) < TOLERANCE, (name, positions[:, axis].max())
        assert abs(positions[:, axis].min() - EXPECTED_MIN) < TOLERANCE, (name, positions[:, axis].min())
    # Each arm carries its colour: the vertices far along +Y are red (up), +Z green (front), +X blue (image right).
    for axis, colour in ((1, RED), (2, GREEN), (0, BLUE)):
        tips = positions[:, axis] > BALL_RADIUS + 0.1
        assert tips.sum() > 5
        assert np.abs(colours[tips] - np.asarray(colour)).max() < 0.02


def test_api_mesh_is_y_up_front_z_right_x(planted_model, input_image):
    # The planted field ignores the input, so carving by the input's silhouette is off (tests/test_carving.py pins
    # the carving frame).
    mesh = api.reconstruct(input_image, planted_model, mc_resolution=MC_RESOLUTION, carve=False, project_input=False)
    check_orientation(mesh.verts.numpy(), mesh.vertex_colors.numpy())


def test_cli_glb_is_y_up_front_z_right_x(monkeypatch, input_image, tmp_path):
    real_loader = triposr_package.load_triposr
    monkeypatch.setattr(triposr_package, "load_triposr", lambda *args, **kwargs: plant(real_loader(*args, **kwargs)))
    argv = ["reconstruct", str(input_image), "-o", str(tmp_path), "--weights", str(TINY_WEIGHTS)]
    argv += ["--config", str(TINY_CONFIG), "--format", "glb", "--mc-resolution", str(MC_RESOLUTION), "--quiet"]
    argv += ["--no-carve", "--no-project-input"]  # the planted field ignores the input
    assert cli.main(argv) == 0
    gltf = pygltflib.GLTF2().load(str(tmp_path / "object" / "mesh.glb"))
    for node in gltf.nodes:  # the positions are final: no node transform
        assert node.matrix is None and node.rotation is None and node.scale is None and node.translation is None
    primitive = gltf.meshes[0].primitives[0]
    positions = _gltf_accessor(gltf, primitive.attributes.POSITION)
    colours = linear_to_srgb(_gltf_accessor(gltf, primitive.attributes.COLOR_0))  # glTF colours are linear
    check_orientation(positions, colours)


def test_input_view_render_shows_up_on_top_and_right_on_the_right(planted_model):
    size = 32
    camera = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), size, size, fov_y_deg=40.0)
    code = planted_model.encode(torch.zeros(1, 8, 8, 3))
    with torch.inference_mode():
        out = planted_model.render(code, camera, n_samples=64)
    rgb, depth, opacity = out["rgb"][0], out["depth"][0, ..., 0], out["opacity"][0, ..., 0]
    red = (rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.3)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert rows.numel() > 4 and int(rows.max()) < size // 2  # the up arm is in the upper half (row 0 at the top)
    rows, cols = torch.nonzero(blue, as_tuple=True)
    assert cols.numel() > 4 and int(cols.min()) >= size // 2  # the image-right arm is in the right half
    # The front arm points at the camera: the nearest surface is in the middle, 1.9 - 0.59 away, and it is green.
    centre = (slice(size // 2 - 1, size // 2 + 1),) * 2
    assert float(opacity[centre].min()) > 0.99
    assert abs(float(depth[centre].mean()) - (1.9 - EXPECTED_MAX["z"])) < 0.05
    assert float(rgb[centre][..., 1].min()) > 0.6


def test_photo_colours_land_where_the_photo_shows_them(planted_model, tmp_path):
    """With the input projection on, the surface seen in the image's right half takes the right half's colour and
    the surface seen in its top half the top half's: image right is +X and image up +Y on the mesh too."""
    image = np.ones((48, 48, 4), dtype=np.float32)
    image[..., 0] = np.where(np.arange(48) >= 24, 0.8, 0.1)[None, :]  # red channel: right half
    image[..., 1] = np.where(np.arange(48) < 24, 0.8, 0.1)[:, None]  # green channel: top half (row 0 at the top)
    image[..., 2] = 0.5
    path = save_image(image, tmp_path / "quadrants.png")
    mesh = api.reconstruct(path, planted_model, mc_resolution=MC_RESOLUTION, carve=False)
    verts, colours = mesh.verts.numpy(), mesh.vertex_colors.numpy()
    x, y = verts[:, 0], verts[:, 1]
    normals = trimesh.Trimesh(verts, mesh.faces.numpy(), process=False).vertex_normals
    to_camera = np.array([0.0, 0.0, 1.9]) - verts
    facing = (normals * to_camera).sum(-1) / np.linalg.norm(to_camera, axis=-1) > 0.6  # squarely seen, in front
    for name, seen, channel, value in (
        ("right arm", (x > 0.3) & facing, 0, 0.8),
        ("left of the ball", (x < -0.15) & facing, 0, 0.1),
        ("up arm", (y > 0.35) & (y < 0.5) & facing, 1, 0.8),  # higher up it leaves the photo (framed at 0.85)
        ("bottom of the ball", (y < -0.15) & facing, 1, 0.1),
    ):
        assert seen.sum() > 3, name
        np.testing.assert_allclose(colours[seen, channel], value, atol=0.02, err_msg=name)
