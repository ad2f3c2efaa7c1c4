"""ConvMesh-style generator (template, UV maps, symmetry, networks, training) and MeshInversion plumbing."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import trimesh
import yaml

from monorecon.core.mesh import Mesh
from monorecon.fit.invert import invert, save_inversion_result, with_input_colours
from monorecon.io.mesh_io import load_mesh
from monorecon.models.meshgan.networks import ImageDiscriminator, MeshGenerator, UVDiscriminator
from monorecon.models.meshgan.template import UVSphereTemplate
from monorecon.models.meshgan.train import (
    MeshGANConfig,
    load_generator,
    radial_uv_maps,
    render_generated,
    train_meshgan,
    view_quaternion,
    weak_cameras,
)

TEMPLATE = UVSphereTemplate()


def test_template_counts_and_closed_outward_surface():
    assert TEMPLATE.num_verts == 482 and TEMPLATE.num_faces == 960
    assert torch.allclose(TEMPLATE.verts.norm(dim=-1), torch.ones(482), atol=1e-6)
    tm = trimesh.Trimesh(TEMPLATE.verts.numpy(), TEMPLATE.faces.numpy(), process=False)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    # seam-split render topology: same surface, one UV per render vertex, UVs in [0, 1]
    render = trimesh.Trimesh(TEMPLATE.verts[TEMPLATE.render_to_vertex].numpy(), TEMPLATE.render_faces.numpy(),
                             process=False)  # fmt: skip
    assert math.isclose(render.volume, tm.volume, rel_tol=1e-6)
    assert TEMPLATE.render_uvs.min() >= 0 and TEMPLATE.render_uvs.max() <= 1
    # v = 1 - theta / pi: the north pole (+Y) is at the top row of the texture
    north = TEMPLATE.render_to_vertex == 0
    assert torch.allclose(TEMPLATE.render_uvs[north, 1], torch.ones(int(north.sum())))


def test_uv_sampling_between_texel_centres():
    height, width = 16, 32
    phi_c = (torch.arange(width) + 0.5) * 2 * math.pi / width
    uv_map = torch.cos(3 * phi_c).expand(1, 1, height, width).clone()
    values = TEMPLATE.sample(uv_map)[0, :, 0]
    # ring vertex j sits at phi = 2 pi j / 32, halfway between texel centres j - 1 and j (wrapping)
    for v in range(1, TEMPLATE.num_verts - 1):
        j = round(float(TEMPLATE.phi[v]) / (2 * math.pi) * width) % width
        expected = 0.5 * (math.cos(3 * float(phi_c[j - 1])) + math.cos(3 * float(phi_c[j])))
        assert abs(float(values[v]) - expected) < 1e-5
    # poles take the mean of their edge row
    assert abs(float(values[0]) - float(uv_map[0, 0, 0].mean())) < 1e-6


def test_normal_displacement_scales_radius():
    displacement = torch.zeros(1, 3, 32, 32)
    displacement[:, 0] = -0.25
    verts = TEMPLATE.vertex_positions(displacement)[0]
    assert torch.allclose(verts.norm(dim=-1), torch.full((482,), 0.75), atol=1e-6)


def _mirror_index() -> torch.Tensor:
    """Index of each template vertex's mirror image x -> -x, found from the angles."""
    key = torch.stack([TEMPLATE.theta, torch.remainder(-TEMPLATE.phi, 2 * math.pi)], -1)
    own = torch.stack([TEMPLATE.theta, TEMPLATE.phi], -1)
    d = (key[:, None] - own[None]).abs()
    d[..., 1] = torch.minimum(d[..., 1], 2 * math.pi - d[..., 1])
    return d.sum(-1).argmin(1)


def test_mirrored_maps_give_symmetric_mesh():
    g = torch.Generator().manual_seed(0)
    half = torch.randn(2, 3, 32, 16, generator=g) * 0.1
    verts = TEMPLATE.vertex_positions(TEMPLATE.mirror(half, tangent_channel=1))
    mirrored = verts[:, _mirror_index()] * torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(verts, mirrored, atol=1e-5)
    # without negating the tangential channel, the mesh is not symmetric
    broken = TEMPLATE.vertex_positions(TEMPLATE.mirror(half))
    assert not torch.allclose(broken, broken[:, _mirror_index()] * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-3)


def test_generator_and_discriminators_shapes():
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=64, channels=16).eval()
    texture, displacement = generator(torch.randn(3, 8))
    assert texture.shape == (3, 3, 64, 64) and displacement.shape == (3, 3, 32, 32)
    assert texture.abs().max() <= 1
    assert torch.equal(texture, texture.flip(-1))  # left-right symmetric texture
    verts, colours = generator.meshes(torch.randn(3, 8))
    assert verts.shape == (3, 482, 3) and colours.min() >= 0 and colours.max() <= 1
    assert UVDiscriminator(8)(texture, displacement).shape == (3, 1, 8, 8)
    assert ImageDiscriminator(8)(torch.rand(3, 4, 32, 32)).shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="texture_size"):
        MeshGenerator(texture_size=48)
    with pytest.raises(ValueError, match="z must have shape"):
        generator(torch.randn(3, 9))


def test_radial_maps_of_a_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    colour = torch.tensor([0.2, 0.4, 0.6])
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces),
                vertex_colors=colour.expand(len(sphere.vertices), 3).clone())  # fmt: skip
    texture, deformation = radial_uv_maps(mesh, TEMPLATE, 8, 16)
    assert texture.shape == (3, 16, 16) and deformation.shape == (3, 8, 8)
    assert torch.allclose(deformation[0], torch.full((8, 8), -0.2), atol=3e-3)  # inscribed facets: r <= 0.8
    assert torch.equal(deformation[1:], torch.zeros(2, 8, 8))
    assert torch.allclose(texture, (colour * 2 - 1).view(3, 1, 1).expand(3, 16, 16), atol=1e-5)


def test_view_quaternion_turns_the_viewed_side_to_the_camera():
    from monorecon.core.cameras import quaternion_to_matrix

    rot = quaternion_to_matrix(view_quaternion(torch.tensor([90.0, 0.0]), torch.tensor([0.0, 90.0])))
    # seen from azimuth 90 deg the object's +X side faces the viewer (+Z); from elevation 90 its top (+Y)
    assert torch.allclose(rot[0] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 0, 1]), atol=1e-6)
    assert torch.allclose(rot[1] @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]), atol=1e-6)


TINY = {
    "classes": ["vase"], "train_objects_per_class": 2, "views_per_object": 2, "image_size": 32, "texture_size": 32,
    "latent_dim": 8, "generator_channels": 16, "discriminator_channels": 8, "batch_size": 2, "steps": 3,
    "checkpoint_every": 2,
}  # fmt: skip


def test_train_meshgan_tiny_resume_and_load(tmp_path):
    from safetensors.torch import load_file

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY | {"steps": 2}))
    out = tmp_path / "run"
    train_meshgan(config_path, out, progress=False)
    assert (out / "checkpoint.safetensors").is_file() and (out / "training_set.safetensors").is_file()
    assert int(load_file(str(out / "checkpoint.safetensors"))["step"]) == 2
    config_path.write_text(yaml.safe_dump(TINY))  # 3 steps: resumes at step 2 (more steps may be asked for)
    path = train_meshgan(config_path, out, progress=False)
    steps = [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2"]
    assert int(load_file(str(out / "checkpoint.safetensors"))["step"]) == 3
    generator = load_generator(path)
    assert not generator.training and generator.latent_dim == 8 and generator.texture_size == 32
    # The resumed run ends where an uninterrupted one does, bit for bit (every tensor of the checkpoint).
    train_meshgan(config_path, tmp_path / "straight", progress=False)
    resumed, straight = (load_file(str(folder / "checkpoint.safetensors")) for folder in (out, tmp_path / "straight"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)
    config_path.write_text(yaml.safe_dump(TINY | {"smoothness_weight": 1.0}))  # lr_g / lr_d may change (warned)
    with pytest.raises(ValueError, match="another configuration"):
        train_meshgan(config_path, out, progress=False)


def test_nan_loss_stops_meshgan_training_with_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN generator loss at step 2: the CLI prints one line and exits 1. The checkpoint written just before holds
    the weights that gave the NaN (resuming it would diverge again): it is set aside and the one before it, of step
    1, is put back; at step 1 (no checkpoint of its weights) the newest checkpoint stays."""
    from safetensors.torch import load_file

    from monorecon import cli
    from monorecon.models.meshgan import train as meshgan_train

    calls = {"n": 0, "poisoned": 3}
    original = meshgan_train.smoothness_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == calls["poisoned"] else loss

    monkeypatch.setattr(meshgan_train, "smoothness_loss", poisoned)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "checkpoint_every": 1}))
    out = tmp_path / "run"
    assert cli.main(["train-meshgan", str(config_path), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"at step 2; the last good checkpoint is kept at {out / 'checkpoint.safetensors'}" in err
    assert "set aside as checkpoint.diverged.safetensors" in err
    assert err.rstrip().endswith("Lower lr_g and lr_d in the config, then resume.")  # it has no gradient clipping
    assert int(load_file(str(out / "checkpoint.safetensors"))["step"]) == 1
    assert int(load_file(str(out / "checkpoint.diverged.safetensors"))["step"]) == 2
    checkpoint = load_file(str(out / "checkpoint.safetensors"))
    assert all(torch.isfinite(value).all() for value in checkpoint.values() if value.is_floating_point())


def test_a_damaged_training_set_cache_is_rebuilt(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY | {"steps": 1}))
    out = tmp_path / "run"
    train_meshgan(config_path, out, progress=False)
    cache = out / "training_set.safetensors"
    built = cache.read_bytes()
    cache.write_bytes(built[:100])
    config_path.write_text(yaml.safe_dump(TINY | {"steps": 2}))
    with pytest.warns(UserWarning, match="rebuilding the training set: cannot read weights"):
        train_meshgan(config_path, out, progress=False)
    assert cache.read_bytes() == built  # deterministic: the same set again


def test_config_rejects_unknown_keys_and_classes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"clases": ["vase"]}))
    with pytest.raises(ValueError, match="unknown config key"):
        MeshGANConfig.from_yaml(path)
    with pytest.raises(ValueError, match="classes must be"):
        MeshGANConfig(classes=["spaceship"])
    for settings, message in (
        ({"betas": [0.5]}, r"betas must be two numbers in \[0, 1\)"),
        ({"latent_dim": 10**7}, r"latent_dim must lie in \[1, 4096\]"),
        ({"batch_size": 10**9}, "batch_size must lie in"),
        ({"smoothness_weight": float("nan")}, "smoothness_weight must be a finite number >= 0"),
        ({"image_loss_weight": -1e9}, "image_loss_weight must be a finite number >= 0"),
        ({"elevation_range": [40, -10]}, "elevation_range must be"),
    ):
        with pytest.raises(ValueError, match=message):
            MeshGANConfig(**settings)


# --------------------------------------------------------------------------------------------------------------------
# Inversion plumbing (a random tiny generator: checks the mechanics, not the quality; see benchmarks/bench_invert.py)
# --------------------------------------------------------------------------------------------------------------------
def _disc_image(size: int = 32) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = ((u - size / 2) ** 2 + (v - size / 2) ** 2 < (size * 0.3) ** 2).float()
    rgb = torch.stack([0.8 * inside, 0.3 * inside, 0.2 * inside], -1) + (1 - inside)[..., None]
    return torch.cat([rgb, inside[..., None]], -1)


def test_invert_runs_and_saves(tmp_path):
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16).eval()
    image = _disc_image()
    result = invert(image, generator, n_init=8, init_batch=4, stage_steps=(3, 2), z_lrs=(0.1, 0.05),
                    camera_lrs=(0.01, 0.005), max_points=256)  # fmt: skip
    assert result.mesh.num_faces == 960 and result.mesh.texture.shape == (32, 32, 3)
    assert len(result.history) == 5 and {"mask", "pixel", "latent", "total"} <= set(result.history[0])
    assert 0 <= result.init_iou <= 1 and 0 <= result.iou <= 1
    # The five steps optimise: the loss falls (2.29 -> 2.04 here) and the fitted silhouette overlaps the disc more.
    assert result.history[-1]["total"] < 0.95 * result.history[0]["total"] and result.iou > result.init_iou + 0.02
    paths = save_inversion_result(result, tmp_path / "out", view_size=32)
    assert (tmp_path / "out" / "mesh.glb").is_file() and (tmp_path / "out" / "result.json").is_file()
    assert len(list((tmp_path / "out" / "views").glob("*.png"))) == 12 and paths["view11"].is_file()
    # placed: the saved mesh 2 units tall, standing on y = 0 about its box centre; the camera and views unchanged
    placed = save_inversion_result(result, tmp_path / "placed", view_size=32, object_height=2.0, origin="bottom")
    saved, mesh = load_mesh(placed["mesh"]), load_mesh(paths["mesh"])
    low, high = mesh.bounds
    anchor = torch.stack([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2])
    torch.testing.assert_close(saved.verts, (mesh.verts - anchor) * (2.0 / (high[1] - low[1])), atol=1e-5, rtol=0)
    summary = json.loads(placed["result"].read_text())
    assert summary["placement"] == {"object_height": 2.0, "origin": "bottom"}
    assert summary["camera"] == json.loads(paths["result"].read_text())["camera"]
    (tmp_path / "taken" / "result.json").mkdir(parents=True)  # the last output's path is a folder: nothing written
    with pytest.raises(ValueError, match=r"result\.json: it is a folder"):
        save_inversion_result(result, tmp_path / "taken", view_size=32)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["result.json"]
    assert placed["view00"].read_bytes() == paths["view00"].read_bytes()
    with pytest.raises(ValueError, match="object_height"):
        save_inversion_result(result, tmp_path / "refused", object_height=-1.0)
    assert not (tmp_path / "refused").exists()


def test_input_colours_go_to_the_texels_the_fitted_camera_sees(tmp_path):
    """After an inversion, texels whose surface points face the fitted camera inside the disc take the disc's colour
    (0.8, 0.3, 0.2); the geometry, camera and scores are unchanged."""
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16).eval()
    image = _disc_image()
    result = invert(image, generator, n_init=8, init_batch=4, stage_steps=(3, 2), z_lrs=(0.1, 0.05),
                    camera_lrs=(0.01, 0.005), max_points=256)  # fmt: skip
    coloured = with_input_colours(result, image)
    assert torch.equal(coloured.verts, result.verts) and coloured.iou == result.iou
    torch.testing.assert_close(coloured.mesh.texture.permute(2, 0, 1), coloured.texture)
    camera = weak_cameras(result.scale, result.translation, result.quaternion, 32)
    # the input view rendered with the new texture shows the disc's colour where the mesh covers the disc's centre
    render = render_generated(TEMPLATE, result.verts[None], coloured.texture[None], camera, soft=False)[0]
    before = render_generated(TEMPLATE, result.verts[None], result.texture[None], camera, soft=False)[0]
    centre = (slice(13, 19), slice(13, 19))
    assert (render[3][centre] > 0.5).all()
    disc = torch.tensor([0.8, 0.3, 0.2])[:, None, None]
    after_error = (render[:3][:, centre[0], centre[1]] - disc).abs().mean()
    before_error = (before[:3][:, centre[0], centre[1]] - disc).abs().mean()
    assert after_error < 0.08 and after_error < before_error / 2, (after_error, before_error)
    # the result's input view (input_view.png) is that render: it showed the generated texture
    torch.testing.assert_close(coloured.render[..., 3], render[3], atol=1e-6, rtol=0)
    torch.testing.assert_close(coloured.render[centre][..., :3], render[:3][:, centre[0], centre[1]].permute(1, 2, 0),
                               atol=0.03, rtol=0)  # fmt: skip


def test_invert_rejects_bad_input():
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16)
    image = _disc_image()
    with pytest.raises(ValueError, match="square"):
        invert(image[:, :30], generator)
    with pytest.raises(ValueError, match="mask is empty"):
        invert(torch.cat([image[..., :3], torch.zeros(32, 32, 1)], -1), generator)
    with pytest.raises(ValueError, match="does not match"):
        invert(image[..., :3], generator, mask=np.ones((16, 16), np.float32))
    with pytest.raises(ValueError, match="needs a mask"):
        invert(image[..., :3], generator)
    with pytest.raises(ValueError, match=r"image must lie in \[0, 1\]"):
        invert(image * 255, generator)
    with pytest.raises(ValueError, match="unknown loss weights"):
        invert(image, generator, weights={"colour": 1.0})


# --------------------------------------------------------------------------------------------------------------------
# Values of SPEC §3 and the formulas behind them (hand-computed expectations)
# --------------------------------------------------------------------------------------------------------------------
def test_paper_weights_and_inversion_schedule_match_spec():
    """SPEC §3: loss weights (mask 10, pixel 1, feature 0.04, latent 0.05, smoothness off), best of 500 codes,
    4 stages x 50 steps with z / camera learning rates [1e-1, 5e-2, 1e-2, 5e-3] / [1e-2, 5e-3, 1e-3, 5e-4],
    position tolerance 0.16, z of 64 dimensions. The default adds only the (documented) silhouette term (10)."""
    import inspect

    from monorecon.fit.invert import DEFAULT_WEIGHTS, PAPER_WEIGHTS

    assert PAPER_WEIGHTS == {"mask": 10.0, "pixel": 1.0, "feature": 0.04, "latent": 0.05, "smoothness": 0.0,
                             "silhouette": 0.0}  # fmt: skip
    assert DEFAULT_WEIGHTS == PAPER_WEIGHTS | {"silhouette": 10.0}
    defaults = {name: p.default for name, p in inspect.signature(invert).parameters.items()}
    assert defaults["n_init"] == 500 and defaults["stage_steps"] == (50, 50, 50, 50)
    assert defaults["z_lrs"] == (1e-1, 5e-2, 1e-2, 5e-3) and defaults["camera_lrs"] == (1e-2, 5e-3, 1e-3, 5e-4)
    assert defaults["xy_threshold"] == 0.16
    assert MeshGenerator().latent_dim == 64


def _quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    """(4,) unit quaternion (w, x, y, z) -> (3, 3) rotation (textbook formula, written out here)."""
    w, x, y, z = (float(c) for c in q / q.norm())
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_weak_perspective_projection_hand_computed():
    """SPEC §3 camera: ``v' = R(q) (s v) + t``, then orthographic (NDC x, y = v'_x, v'_y). With q a quarter turn about
    +Y (x -> -z, z -> x), s = 0.5, t = (0.1, -0.2): +Z -> (0.6, -0.2), +Y -> (0.1, 0.3), +X -> (0.1, -0.2)."""
    half = math.radians(45.0)
    q = torch.tensor([[math.cos(half), 0.0, math.sin(half), 0.0]])
    cams = weak_cameras(torch.tensor([0.5]), torch.tensor([[0.1, -0.2]]), q, 32)
    points = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    projected = cams.transform_points_ndc(points)[0, :, :2]
    torch.testing.assert_close(projected, torch.tensor([[0.6, -0.2], [0.1, 0.3], [0.1, -0.2]]), atol=1e-6, rtol=0)
    # The +X point (turned away from the viewer) lies behind the +Z one (turned towards it).
    depth = cams.transform_points_ndc(points)[0, :, 2]
    assert float(depth[2]) > float(depth[0])


def test_generator_meshes_are_left_right_symmetric():
    """SPEC §3: generated meshes are left-right symmetric (x -> -x maps the vertex set onto itself), which needs the
    generator's mirrored half to negate the tangential displacement (the zero-initialised head is randomised here)."""
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16).eval()
    torch.nn.init.normal_(generator.mesh_head.weight, std=5.0)
    verts, _ = generator.meshes(torch.randn(2, 8))
    assert (verts - TEMPLATE.verts).norm(dim=-1).max() > 0.05  # really deformed
    mirrored = verts[:, _mirror_index()] * torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(verts, mirrored, atol=1e-5, rtol=0)


def test_template_frames_are_unit_derivatives():
    """The per-vertex frame is (n, t, b) with t = dp/dphi and b = dp/dtheta normalised (template docstring), found
    here by finite differences of ``p = (sin theta sin phi, cos theta, sin theta cos phi)``."""

    def point(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        return torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], -1)

    theta, phi = TEMPLATE.theta[1:-1].double(), TEMPLATE.phi[1:-1].double()
    h = 1e-6
    t = torch.nn.functional.normalize(point(theta, phi + h) - point(theta, phi - h), dim=-1)
    b = torch.nn.functional.normalize(point(theta + h, phi) - point(theta - h, phi), dim=-1)
    frames = TEMPLATE.frames[1:-1].double()
    torch.testing.assert_close(frames[:, 0], point(theta, phi), atol=1e-6, rtol=0)
    torch.testing.assert_close(frames[:, 1], t, atol=1e-6, rtol=0)
    torch.testing.assert_close(frames[:, 2], b, atol=1e-6, rtol=0)


def test_hinge_discriminator_loss_hand_computed():
    """Hinge loss ``mean relu(1 - real) + mean relu(1 + fake)``: real logits (2, 0.5) give 0.25, fake (-2, 0.5)
    0.75."""
    from monorecon.models.meshgan.train import _hinge_d

    assert float(_hinge_d(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5]))) == pytest.approx(1.0)


def test_one_training_step_ema_weights_and_image_inputs(tmp_path, monkeypatch):
    """One step from the seeded initial networks:

    * the saved (moving-average) generator is ``decay * initial + (1 - decay) * trained`` (decay 0.99);
    * with ``image_loss_weight`` 0 the image discriminator's weights do not move (its loss is scaled by the weight);
    * real and generated renders reach the image discriminator with the same offset: the white, empty corner pixel
      is (0.5, 0.5, 0.5, -0.5) in both.
    """
    from safetensors.torch import load_file

    seen = []
    original = ImageDiscriminator.forward
    monkeypatch.setattr(ImageDiscriminator, "forward", lambda self, x: seen.append(x.detach()) or original(self, x))
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY | {"steps": 1, "image_loss_weight": 0.0}))
    train_meshgan(config_path, tmp_path / "run", progress=False)
    config = MeshGANConfig.from_yaml(config_path)
    torch.manual_seed(config.seed)  # the initial networks, built in train_meshgan's order
    initial = MeshGenerator(**config.generator_kwargs()).state_dict()
    UVDiscriminator(config.discriminator_channels)
    initial_image_disc = ImageDiscriminator(config.discriminator_channels).state_dict()
    checkpoint = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    ema = load_file(str(tmp_path / "run" / "generator.safetensors"))
    moved = 0
    for name, value in initial.items():
        trained = checkpoint[f"generator.{name}"]
        if not value.is_floating_point() or "running" in name:
            continue  # buffers are copied
        torch.testing.assert_close(ema[name], 0.99 * value + 0.01 * trained, atol=1e-6, rtol=1e-5)
        moved += int(not torch.equal(trained, value))
    assert moved > 0
    for name, value in initial_image_disc.items():
        if name.endswith(("original", "bias")):
            assert torch.equal(checkpoint[f"image_disc.{name}"], value), name
    real, fake = seen[0], seen[1]
    corner = torch.tensor([0.5, 0.5, 0.5, -0.5])
    torch.testing.assert_close(real[:, :, 0, 0], corner.expand(real.shape[0], 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(fake[:, :, 0, 0], corner.expand(fake.shape[0], 4), atol=1e-6, rtol=0)


def _deforming_generator() -> MeshGenerator:
    """The tiny random generator with its (zero-initialised) displacement head randomised, so that z moves the mesh."""
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16).eval()
    torch.nn.init.normal_(generator.mesh_head.weight, std=0.5)
    return generator


def _invert(weights: dict[str, float], stage_steps, z_lrs, camera_lrs, **kwargs):
    return invert(_disc_image(), _deforming_generator(), n_init=8, init_batch=4, stage_steps=stage_steps, z_lrs=z_lrs,
                  camera_lrs=camera_lrs, weights=weights, max_points=100_000, **kwargs)  # fmt: skip


def _adam(lr: float, grads: list[torch.Tensor], betas=(0.0, 0.99), eps=1e-8) -> torch.Tensor:
    """Total update of Adam after the given gradients, written out (bias-corrected moments)."""
    m, v, total = torch.zeros_like(grads[0]), torch.zeros_like(grads[0]), torch.zeros_like(grads[0])
    for t, (g, rate) in enumerate(zip(grads, lr, strict=True), start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        total -= rate * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return total


def test_inversion_adam_betas_and_stage_learning_rates():
    """SPEC §3: Adam (betas 0, 0.99) on z and on the camera, with each stage's learning rates.

    * Latent term only (0.05 mean(z^2 / 2), gradient 0.05 z / D), stages (1, 1), z lrs (0.1, 0.05): the final z is
      two Adam updates computed by hand from the initial code.
    * Mask term only, stages (0, 1): the one update is made with the second stage's rates, so every camera parameter
      (scale, translation, quaternion) moves by exactly 0.005 and every z entry by 0.05 (a first Adam step moves each
      parameter by its learning rate).
    """
    latent_only = {"mask": 0.0, "pixel": 0.0, "feature": 0.0, "latent": 0.05, "silhouette": 0.0}
    start = _invert(latent_only, (0,), (0.1,), (0.01,))
    z0 = start.z
    fitted = _invert(latent_only, (1, 1), (0.1, 0.05), (0.01, 0.005))
    dim = z0.shape[1]
    g1 = 0.05 * z0 / dim
    z1 = z0 + _adam([0.1], [g1])
    expected = z0 + _adam([0.1, 0.05], [g1, 0.05 * z1 / dim])
    torch.testing.assert_close(fitted.z, expected, atol=1e-6, rtol=1e-5)
    # the camera has no gradient here: it stays
    torch.testing.assert_close(fitted.translation, start.translation)

    mask_only = {"mask": 10.0, "pixel": 0.0, "feature": 0.0, "latent": 0.0, "silhouette": 0.0}
    start = _invert(mask_only, (0, 0), (0.1, 0.05), (0.01, 0.005))
    moved = _invert(mask_only, (0, 1), (0.1, 0.05), (0.01, 0.005))
    # (|step| = lr |g| / (|g| + 1e-8): within 2 % of the rate for the small gradients of some z entries)
    torch.testing.assert_close((moved.z - start.z).abs(), torch.full_like(start.z, 0.05), atol=1e-3, rtol=0)
    torch.testing.assert_close((moved.translation - start.translation).abs(), torch.full((1, 2), 0.005), atol=1e-6,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close((moved.scale - start.scale).abs(), torch.full((1,), 0.005), atol=1e-6, rtol=0)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)))
    candidates = torch.nn.functional.normalize(start.quaternion + 0.005 * signs, dim=-1)
    assert (candidates - moved.quaternion).abs().amax(-1).min() < 1e-6


def test_inversion_loss_terms_at_the_start():
    """The logged terms of the first step are the weighted SPEC §3 losses, recomputed here from the result (learning
    rates 0: the returned state is the one of that step): 10 Chamfer mask on the vertices projected by hand
    (``R(q) s v + t``), 1 Chamfer texture on colours in [-1, 1], 0.04 bidirectional Chamfer texture on unit feature
    vectors, 0.05 latent, 10 silhouette (sum of squares / pixels); the total is their sum."""
    from monorecon.core.mesh_renderer import render_silhouette
    from monorecon.losses.fitting import (
        chamfer_mask_loss,
        chamfer_texture_loss,
        image_points,
        latent_loss,
        mask_points,
    )
    from monorecon.losses.perceptual import chamfer_feature_extractor

    image = _disc_image()
    result = _invert({}, (1,), (0.0,), (0.0,))
    logged = result.history[0]
    assert set(logged) == {"mask", "pixel", "feature", "latent", "silhouette", "total"}
    mask = image[..., 3]
    rotation = _quaternion_matrix(result.quaternion[0])
    projected = (result.scale * result.verts) @ rotation.T + torch.cat([result.translation[0], torch.zeros(1)])
    mask_term = chamfer_mask_loss(projected[None, :, :2], mask_points(mask, 0.5))[0]
    assert logged["mask"] == pytest.approx(10 * float(mask_term), rel=1e-4)
    assert logged["latent"] == pytest.approx(0.05 * float(latent_loss(result.z)[0]), rel=1e-5)
    render = result.render.permute(2, 0, 1)
    alpha = render[3]
    target_colours = image[..., :3].permute(2, 0, 1) * 2 - 1
    rendered_colours = render[:3] * 2 - 1
    pixel = chamfer_texture_loss(*image_points(rendered_colours, alpha, 0.9), *image_points(target_colours, mask, 0.5),
                                 max_points=None)  # fmt: skip
    assert logged["pixel"] == pytest.approx(float(pixel), rel=1e-4)

    features = chamfer_feature_extractor(None)

    def feature_points(colours: torch.Tensor, weight: torch.Tensor):
        feature_map = features(colours[None])[0]
        keep = torch.nn.functional.adaptive_avg_pool2d(weight[None, None], feature_map.shape[-2:])[0, 0] >= 0.5
        return mask_points(keep.float(), 0.5), torch.nn.functional.normalize(feature_map[:, keep].T, dim=-1)

    feature = chamfer_texture_loss(*feature_points(render[:3] * alpha, alpha),
                                   *feature_points(image[..., :3].permute(2, 0, 1) * (mask > 0.5), mask),
                                   bidirectional=True, max_points=None)  # fmt: skip
    assert logged["feature"] == pytest.approx(0.04 * float(feature), rel=1e-4)
    camera = weak_cameras(result.scale, result.translation, result.quaternion, 32)
    soft = render_silhouette(result.verts[None], TEMPLATE.faces, camera, 1e-4, faces_per_pixel=16)[0]
    assert logged["silhouette"] == pytest.approx(10 * float((soft - mask).square().sum()) / 32**2, rel=1e-4)
    parts = sum(value for key, value in logged.items() if key != "total")
    assert logged["total"] == pytest.approx(parts, rel=1e-5)


def test_best_of_n_initialisation_keeps_the_lowest_score(monkeypatch):
    """The initialisation keeps, over all batches, the candidate code with the lowest
    ``10 chamfer_mask + 0.05 latent`` (SPEC §3 weights): the two terms of every candidate are recorded as they are
    computed, and the returned code (no optimisation step) must be the argmin of their weighted sum."""
    import importlib

    invert_module = importlib.import_module("monorecon.fit.invert")  # the package re-exports the function
    recorded = {"mask": [], "latent": [], "z": []}
    chamfer, latent = invert_module.chamfer_mask_loss, invert_module.latent_loss

    def spy_chamfer(*args):
        recorded["mask"].append(chamfer(*args))
        return recorded["mask"][-1]

    def spy_latent(z):
        recorded["z"].append(z.detach().clone())
        recorded["latent"].append(latent(z))
        return recorded["latent"][-1]

    monkeypatch.setattr(invert_module, "chamfer_mask_loss", spy_chamfer)
    monkeypatch.setattr(invert_module, "latent_loss", spy_latent)
    result = invert(_disc_image(), _deforming_generator(), n_init=24, init_batch=8, stage_steps=(0,), z_lrs=(0.1,),
                    camera_lrs=(0.01,))  # fmt: skip
    scores = 10 * torch.cat(recorded["mask"]) + 0.05 * torch.cat(recorded["latent"])
    codes = torch.cat(recorded["z"])
    assert codes.shape == (24, 8)
    best = int(torch.argmin(scores))
    assert torch.equal(result.z[0], codes[best])
    assert best % 8 != 0  # not the first of its batch: the argmin within a batch matters here


# --------------------------------------------------------------------------------------------------------------------
# Template: positions, UV conventions, orientation (module docstring of template.py), against geometry
# --------------------------------------------------------------------------------------------------------------------
def test_template_vertices_lie_at_their_angles():
    """p = (sin theta sin phi, cos theta, sin theta cos phi); rings at theta = i pi / 16, segments at
    phi = 2 pi j / 32."""
    verts = TEMPLATE.verts.double()
    theta = torch.acos(verts[:, 1].clamp(-1, 1))
    phi = torch.remainder(torch.atan2(verts[:, 0], verts[:, 2]), 2 * math.pi)
    torch.testing.assert_close(theta, TEMPLATE.theta.double(), atol=1e-5, rtol=0)
    ring = theta[1:-1] / (math.pi / 16)
    seg = phi[1:-1] / (2 * math.pi / 32)
    assert torch.allclose(ring, ring.round(), atol=1e-4) and torch.allclose(seg, seg.round(), atol=1e-4)
    assert sorted(set(ring.round().int().tolist())) == list(range(1, 16))
    assert sorted(set(seg.round().int().tolist())) == list(range(32))
    assert verts[0].tolist() == pytest.approx([0, 1, 0]) and verts[-1].tolist() == pytest.approx([0, -1, 0], abs=1e-7)
    # +Z front is phi = 0, +X is phi = pi / 2
    assert torch.allclose(verts[1], torch.tensor([0.0, math.cos(math.pi / 16), math.sin(math.pi / 16)]).double())


def test_render_uvs_match_the_vertex_angles_and_no_face_crosses_the_seam():
    """u = phi / (2 pi) (the seam duplicated at u = 0 and 1), v = 1 - theta / pi; every render face spans one
    segment in u; a pole's copy sits at its face's u centre; faces are counter-clockwise seen from outside."""
    pos = TEMPLATE.verts[TEMPLATE.render_to_vertex].double()
    uv = TEMPLATE.render_uvs.double()
    theta = torch.acos(pos[:, 1].clamp(-1, 1))
    torch.testing.assert_close(uv[:, 1], 1 - theta / math.pi, atol=1e-5, rtol=0)
    phi = torch.remainder(torch.atan2(pos[:, 0], pos[:, 2]), 2 * math.pi)
    ring = pos[:, 1].abs() < 1 - 1e-6
    u_from_phi = phi / (2 * math.pi)
    on_seam = ring & (u_from_phi.abs() < 1e-6)
    assert torch.allclose(uv[ring & ~on_seam, 0], u_from_phi[ring & ~on_seam], atol=1e-5)
    assert sorted(uv[on_seam, 0].round().tolist()) == [0.0] * 15 + [1.0] * 15
    face_u = uv[TEMPLATE.render_faces, 0]  # (F, 3)
    assert float((face_u.max(1).values - face_u.min(1).values).max()) == pytest.approx(1 / 32, abs=1e-6)
    for f, corners in zip(TEMPLATE.render_faces.tolist(), face_u.tolist(), strict=True):
        poles = [k for k in range(3) if not ring[f[k]]]
        if poles:
            others = [corners[k] for k in range(3) if k != poles[0]]
            assert corners[poles[0]] == pytest.approx(sum(others) / 2, abs=1e-6)
    v0, v1, v2 = pos[TEMPLATE.render_faces].unbind(1)
    assert bool(((torch.linalg.cross(v1 - v0, v2 - v0, dim=-1) * (v0 + v1 + v2)).sum(-1) > 0).all())


def test_uv_sampling_reads_rows_from_north_to_south_and_maps_of_directions_give_the_sphere():
    """Row 0 is the north pole, the last row the south pole; a UV map holding each texel centre's direction
    (``directions``) sampled at the vertices gives back the unit-sphere vertices (bilinear error only)."""
    rows = torch.linspace(0, 1, 16).view(1, 1, 16, 1).expand(1, 1, 16, 32).clone()
    values = TEMPLATE.sample(rows)[0, :, 0]
    assert float(values[0]) == 0.0 and float(values[-1]) == 1.0
    # ring i (theta = i pi / 16) lies between row centres i - 1 and i: value (i - 0.5) / 15
    ring_index = torch.arange(1, 16).repeat_interleave(32)
    torch.testing.assert_close(values[1:-1], (ring_index - 0.5) / 15, atol=1e-6, rtol=0)
    dirs = TEMPLATE.directions(64, 128)
    theta_c = (torch.arange(64) + 0.5) * math.pi / 64
    phi_c = (torch.arange(128) + 0.5) * 2 * math.pi / 128
    torch.testing.assert_close(dirs[:, 0, 1], torch.cos(theta_c), atol=1e-6, rtol=0)
    torch.testing.assert_close(dirs[10, :, 0], torch.sin(theta_c[10]) * torch.sin(phi_c), atol=1e-6, rtol=0)
    sampled = TEMPLATE.sample(dirs.permute(2, 0, 1)[None])[0]
    assert float((sampled[1:-1] - TEMPLATE.verts[1:-1]).norm(dim=-1).max()) < 2e-3


# --------------------------------------------------------------------------------------------------------------------
# Pseudo ground-truth UV maps (train.radial_uv_maps): farthest hit, interpolated colour, misses
# --------------------------------------------------------------------------------------------------------------------
def _coloured_sphere(radius: float, centre=(0.0, 0.0, 0.0), subdivisions: int = 2) -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32) + torch.tensor(centre)
    return Mesh(verts, torch.tensor(sphere.faces), vertex_colors=(verts + 1) / 2)  # colour linear in position


def test_radial_maps_take_the_farthest_hit_and_its_interpolated_colour():
    """Two nested spheres: every ray from the centre leaves through the outer one (radius 0.9, facets inscribed).
    Colours linear in position are interpolated exactly by barycentrics: texture = 2 * colour(hit) - 1 = hit point
    = radius * direction of the texel centre."""
    inner, outer = _coloured_sphere(0.5), _coloured_sphere(0.9)
    both = Mesh(torch.cat([inner.verts, outer.verts]), torch.cat([inner.faces, outer.faces + len(inner.verts)]),
                vertex_colors=torch.cat([inner.vertex_colors, outer.vertex_colors]))  # fmt: skip
    texture, deformation = radial_uv_maps(both, TEMPLATE, 8, 8)
    radius = 1 + deformation[0]
    assert float(radius.max()) <= 0.9 + 1e-5 and float(radius.min()) > 0.9 * 0.9
    expected = radius[..., None] * TEMPLATE.directions(8, 8)  # (8, 8, 3) hit points
    torch.testing.assert_close(texture.permute(1, 2, 0), expected, atol=1e-5, rtol=0)


def test_radial_maps_of_rays_that_miss():
    """A sphere beside the centre: texels whose ray misses get radius 0.1 (module docstring) and the mean colour."""
    mesh = _coloured_sphere(0.4, centre=(0.0, 0.0, 0.6))
    texture, deformation = radial_uv_maps(mesh, TEMPLATE, 8, 8)
    dirs = TEMPLATE.directions(8, 8)
    miss = dirs[..., 2] < math.cos(math.radians(45))  # outside the sphere's cone, half-angle asin(0.4 / 0.6) = 41.8
    hit = dirs[..., 2] > math.cos(math.radians(38))
    assert bool(miss.any()) and bool(hit.any())
    torch.testing.assert_close(deformation[0][miss], torch.full((int(miss.sum()),), 0.1 - 1.0))
    mean = mesh.vertex_colors.mean(0) * 2 - 1
    torch.testing.assert_close(texture.permute(1, 2, 0)[miss], mean.expand(int(miss.sum()), 3), atol=1e-6, rtol=0)
    # far intersection along a ray at angle a from +Z: 0.6 cos a + sqrt(0.4^2 - 0.6^2 sin^2 a) (facets inscribed)
    cos_a = dirs[..., 2][hit].double()
    far = 0.6 * cos_a + (0.16 - 0.36 * (1 - cos_a**2)).sqrt()
    assert bool(((deformation[0][hit] + 1).double() - far).abs().max() < 0.03)


def test_moving_average_generator_keeps_batch_norm_statistics_and_a_fresh_run_starts_a_fresh_log(tmp_path):
    """The saved generator (eval mode uses BatchNorm running statistics) carries the trained generator's running
    statistics, not the initial mean 0 / variance 1; ``resume=False`` in a used folder starts the log anew."""
    from safetensors.torch import load_file

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY | {"steps": 2}))
    out = tmp_path / "run"
    train_meshgan(config_path, out, progress=False)
    checkpoint = load_file(str(out / "checkpoint.safetensors"))
    ema = load_file(str(out / "generator.safetensors"))
    running = [name for name in ema if "running_" in name or "num_batches" in name]
    assert running
    for name in running:
        assert torch.equal(ema[name], checkpoint[f"generator.{name}"]), name
    assert int(ema["trunk.0.norm.num_batches_tracked"]) == 2
    assert not torch.equal(ema["trunk.0.norm.running_mean"], torch.zeros_like(ema["trunk.0.norm.running_mean"]))
    train_meshgan(config_path, out, resume=False, progress=False)
    steps = [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1"]


def test_training_set_cache_follows_the_settings_that_shape_the_data(tmp_path, monkeypatch):
    """The cached set is reused when only a training setting changes (learning rate) and rebuilt when a data setting
    changes (image size: the cached renders must have the new size)."""
    from safetensors.torch import load_file

    from monorecon.models.meshgan import train as meshgan_train

    builds = []
    original = meshgan_train._build_training_set
    monkeypatch.setattr(meshgan_train, "_build_training_set", lambda *a: builds.append(1) or original(*a))
    config_path = tmp_path / "tiny.yaml"
    out = tmp_path / "run"
    for settings, n_builds in (({}, 1), ({"lr_g": 5e-4}, 1), ({"image_size": 16}, 2)):
        config_path.write_text(yaml.safe_dump(TINY | {"steps": 1} | settings))
        train_meshgan(config_path, out, resume=False, progress=False)
        assert len(builds) == n_builds
    assert load_file(str(out / "training_set.safetensors"))["views"].shape[-2:] == (16, 16)
