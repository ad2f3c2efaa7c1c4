"""Audit of ``monorecon.models.meshgan.train`` (MeshInversion's UV-space mesh GAN training), against independent
references: rotation matrices written out by hand, analytic ray hits, a small numpy ray caster, the projected
vertices of the object, and the hinge / generator losses recomputed from the discriminator outputs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import yaml

from monorecon.data.shapes import make_object
from monorecon.models.meshgan import train as mt
from monorecon.models.meshgan.networks import ImageDiscriminator, MeshGenerator, UVDiscriminator
from monorecon.models.meshgan.template import UVSphereTemplate
from monorecon.models.meshgan.train import (
    MeshGANConfig,
    _farthest_hits,
    load_generator,
    render_generated,
    view_quaternion,
    weak_cameras,
)

TEMPLATE = UVSphereTemplate()


# --------------------------------------------------------------------------------------------------------------------
# Hand-written references
# --------------------------------------------------------------------------------------------------------------------
def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _quat_to_matrix(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (textbook formula)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _numpy_farthest_hits(verts: np.ndarray, faces: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Farthest positive ray-plane hit inside each triangle (barycentric test), -1 where none: a plain re-derivation
    solving ``t d = v0 + u e1 + v e2`` with numpy's linear solver."""
    tri = verts[faces].astype(np.float64)
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    out = np.full(len(dirs), -1.0)
    for k, d in enumerate(dirs.astype(np.float64)):
        mats = np.stack([np.broadcast_to(d, e1.shape), -e1, -e2], axis=-1)  # (F, 3, 3): [d, -e1, -e2] (t, u, v) = v0
        ok = np.abs(np.linalg.det(mats)) > 1e-12
        sol = np.linalg.solve(mats[ok], v0[ok][..., None])[..., 0]
        t, u, v = sol.T
        hit = (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 1e-9)
        if hit.any():
            out[k] = t[hit].max()
    return out


# --------------------------------------------------------------------------------------------------------------------
# view_quaternion
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("az", "el"), [(30.0, 20.0), (-75.0, 50.0), (200.0, -35.0), (90.0, 0.0), (0.0, 60.0)])
def test_view_quaternion_is_rx_of_elevation_times_ry_of_minus_azimuth(az, el):
    q = view_quaternion(torch.tensor([az]), torch.tensor([el]))[0]
    assert q.shape == (4,) and float(q.norm()) == pytest.approx(1.0, abs=1e-6)
    expected = _rot_x(el) @ _rot_y(-az)
    np.testing.assert_allclose(_quat_to_matrix(q.numpy()), expected, atol=1e-6)
    # the object point that then faces the camera (+Z) is the spherical direction (az, el) of core.cameras
    facing = expected.T @ np.array([0.0, 0.0, 1.0])
    sph = [
        math.cos(math.radians(el)) * math.sin(math.radians(az)),
        math.sin(math.radians(el)),
        math.cos(math.radians(el)) * math.cos(math.radians(az)),
    ]
    np.testing.assert_allclose(facing, sph, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# render_generated
# --------------------------------------------------------------------------------------------------------------------
def test_render_generated_lambert_headlight_and_texture_orientation():
    """The unit template sphere, scale 0.5, identity rotation, 32 px, hard rasterised: a disc of NDC radius 0.5 on
    white; the northern half of the texture (top rows) red, the southern blue; Lambert with the headlight gives
    ``albedo * (0.35 + 0.55 n.z)`` with ``n.z = sqrt(1 - (rho / 0.5)^2)``."""
    size, t = 32, 32
    red, blue = torch.tensor([0.8, 0.2, 0.2]), torch.tensor([0.2, 0.3, 0.9])
    texture = torch.empty(1, 3, t, t)
    texture[0, :, : t // 2] = red[:, None, None]
    texture[0, :, t // 2 :] = blue[:, None, None]
    camera = weak_cameras(torch.tensor([0.5]), torch.zeros(1, 2), torch.tensor([[1.0, 0, 0, 0]]), size)
    out = render_generated(TEMPLATE, TEMPLATE.verts[None].clone(), texture, camera, soft=False)[0]
    assert out.shape == (4, size, size)
    centres = (torch.arange(size) + 0.5) * 2 / size - 1
    x = centres[None, :].expand(size, size)
    y = -centres[:, None].expand(size, size)  # row 0 is the top (NDC y = +1)
    rho = (x**2 + y**2).sqrt()
    inside, outside = rho < 0.45, rho > 0.55
    assert bool((out[3][inside] == 1).all()) and bool((out[3][outside] == 0).all())
    assert bool((out[:3][:, outside] == 1).all())  # white background
    nz = (1 - (rho / 0.5).clamp(max=1) ** 2).sqrt()
    shade = 0.35 + 0.55 * nz
    for mask, albedo in ((inside & (y > 0.1)), red), ((inside & (y < -0.1)), blue):
        expected = albedo[:, None] * shade[mask][None]
        torch.testing.assert_close(out[:3][:, mask], expected, atol=0.03, rtol=0)
    # the pixels at the disc centre: nearly 0.9 * albedo (no specular highlight)
    centre = out[:3, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1]
    assert float((centre[:, :1] - (0.9 * red)[:, None, None]).abs().max()) < 0.015
    assert float((centre[:, 1:] - (0.9 * blue)[:, None, None]).abs().max()) < 0.015


# --------------------------------------------------------------------------------------------------------------------
# _farthest_hits
# --------------------------------------------------------------------------------------------------------------------
def test_farthest_hits_single_triangles_hand_computed():
    """Triangle v0 = (-1, -1, 2), v1 = (3, -1, 2), v2 = (-1, 3, 2) (plane z = 2): the ray through (0.5, 0, 2) hits at
    t = |(0.5, 0, 2)| with barycentrics u = 1.5 / 4 (vertex 1), v = 1 / 4 (vertex 2), for both windings; a ray through
    (2.5, 2.5, 2) (u + v > 1) and one pointing away (-Z) do not hit (-1); a second triangle at z = 3 is the farther
    hit."""
    verts = torch.tensor([[-1.0, -1, 2], [3, -1, 2], [-1, 3, 2], [-1, -1, 3], [3, -1, 3], [-1, 3, 3]])
    p = torch.tensor([[0.5, 0.0, 2.0], [2.5, 2.5, 2.0], [0.0, 0.0, -1.0], [0.1, 0.2, 2.0], [0.3, -0.2, 2.0]])
    dirs = torch.nn.functional.normalize(p, dim=-1)
    for faces in (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])):
        t, face, uv = _farthest_hits(verts, faces, dirs, chunk=2)  # chunks of 2: three chunks
        assert t[1] == -1 and t[2] == -1
        assert float(t[0]) == pytest.approx(float(p[0].norm()), abs=1e-5)
        hit = (p[0] - verts[0])[:2] / 4  # (u, v) of vertices 1 and 2 for the first winding
        expected = hit if faces[0, 1] == 1 else hit.flip(0)
        torch.testing.assert_close(uv[0], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(t[3:], p[3:].norm(dim=-1), atol=1e-5, rtol=0)
    t, face, uv = _farthest_hits(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), dirs[:1])
    assert int(face[0]) == 1 and float(t[0]) == pytest.approx(float(p[0].norm() * 1.5), abs=1e-5)


def test_farthest_hits_on_a_cube_and_a_shape_against_a_numpy_ray_caster():
    """Cube [-1, 1]^3 (outward faces): distance 1 / max|d_i| along any direction; a procedural vase: the same as a
    plain numpy ray caster, direction by direction (random directions, which pass through no facet edge)."""
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    g = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, generator=g), dim=-1)
    t, _, _ = _farthest_hits(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces), dirs)
    torch.testing.assert_close(t, 1 / dirs.abs().amax(-1), atol=1e-5, rtol=0)
    mesh = make_object("vase", 1, radius=1.0)
    dirs = torch.nn.functional.normalize(torch.randn(30, 3, generator=g), dim=-1)  # generic: through no edge
    t, _, _ = _farthest_hits(mesh.verts.float(), mesh.faces, dirs)
    expected = _numpy_farthest_hits(mesh.verts.numpy(), mesh.faces.numpy(), dirs.numpy())
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-4)


def test_a_ray_through_a_shared_edge_of_a_closed_mesh_hits_it():
    """``make_object('vase', 1)`` is closed around its centre; the texel directions of a 6 x 6 map at azimuth 90 and
    270 deg (rows 4 and 5) pass through edges of its facets: the farthest hit must still be found (0.586 / 0.959 by
    the numpy ray caster, which accepts barycentrics within 1e-9 of the triangle)."""
    mesh = make_object("vase", 1, radius=1.0)
    dirs = TEMPLATE.directions(6, 6).reshape(-1, 3)[[25, 28, 31]]
    expected = _numpy_farthest_hits(mesh.verts.numpy(), mesh.faces.numpy(), dirs.numpy())
    assert (expected > 0).all()
    t, _, _ = _farthest_hits(mesh.verts.float(), mesh.faces, dirs)
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# Training set
# --------------------------------------------------------------------------------------------------------------------
def test_training_set_maps_views_and_cameras():
    """One vase (first_seed 3), 24 views at scale 0.4, elevation in [20, 30]:

    * deformation maps are 32 x 32 whatever the texture size; their normal channel is ``r - 1`` with r the farthest
      hit of the texel ray on ``make_object('vase', 3)`` (numpy ray caster; 0.1 where it misses);
    * each camera looks from azimuth in [0, 360) (both halves used) and elevation in [20, 30];
    * hard renders (alpha 0 or 1) whose silhouette spans the object's vertices projected by hand, ``R(q) 0.4 v``.
    """
    config = MeshGANConfig(classes=["vase"], train_objects_per_class=1, first_seed=3, views_per_object=24,
                           image_size=32, texture_size=16, camera_scale=0.4, elevation_range=(20.0, 30.0),
                           seed=5)  # fmt: skip
    data = mt._build_training_set(config, TEMPLATE, False)
    assert data["textures"].shape == (1, 3, 16, 16) and data["deformations"].shape == (1, 3, 32, 32)
    assert data["views"].shape == (1, 24, 4, 32, 32) and data["quaternions"].shape == (1, 24, 4)
    mesh = make_object("vase", 3, radius=1.0)
    # deformation: radii on a subset of the 32 x 32 texels (every 4th row and column)
    dirs = TEMPLATE.directions(32, 32)[::4, ::4].reshape(-1, 3)
    radius = _numpy_farthest_hits(mesh.verts.numpy(), mesh.faces.numpy(), dirs.numpy())
    radius = np.where(radius < 0, 0.1, radius)
    np.testing.assert_allclose(data["deformations"][0, 0, ::4, ::4].reshape(-1).numpy(), radius - 1, atol=1e-4)
    assert bool((data["deformations"][0, 1:] == 0).all())
    # cameras
    rotations = [_quat_to_matrix(q) for q in data["quaternions"][0].numpy()]
    facing = np.stack([r.T @ np.array([0.0, 0, 1]) for r in rotations])
    elevation = np.degrees(np.arcsin(facing[:, 1]))
    azimuth = np.degrees(np.arctan2(facing[:, 0], facing[:, 2])) % 360
    assert elevation.min() >= 20 - 1e-3 and elevation.max() <= 30 + 1e-3
    assert azimuth.min() < 90 and azimuth.max() > 270 and ((azimuth > 180) & (azimuth < 270)).any()
    # renders
    alpha = data["views"][0, :, 3]
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    pix = 2 / 32
    centres = (torch.arange(32) + 0.5) * pix - 1
    for k, rot in enumerate(rotations):
        projected = (0.4 * mesh.verts.double().numpy()) @ rot.T
        rows, cols = torch.nonzero(alpha[k] > 0.5, as_tuple=True)
        xs, ys = centres[cols].numpy(), -centres[rows].numpy()
        for got, want in ((xs.min(), projected[:, 0].min()), (xs.max(), projected[:, 0].max()),
                          (ys.min(), projected[:, 1].min()), (ys.max(), projected[:, 1].max())):  # fmt: skip
            assert abs(got - want) <= pix, (k, got, want)


def _stub_maps(mesh, template, deformation_size=32, texture_size=64):
    """Cheap stand-in for the UV maps (the tests using it look at the views and the training loop): constant maps
    that differ from object to object."""
    value = float(mesh.verts.abs().sum()) % 1
    texture = torch.full((3, texture_size, texture_size), value)
    return texture, torch.full((3, deformation_size, deformation_size), -value)


def test_training_set_views_follow_the_seed(monkeypatch):
    """The random views are drawn from ``seed``: another seed gives other cameras (and the cache key holds it)."""
    monkeypatch.setattr(mt, "radial_uv_maps", _stub_maps)
    base = {"classes": ["vase"], "train_objects_per_class": 1, "views_per_object": 2, "image_size": 16,
            "texture_size": 32}  # fmt: skip
    first = mt._build_training_set(MeshGANConfig(**base, seed=0), TEMPLATE, False)
    second = mt._build_training_set(MeshGANConfig(**base, seed=1), TEMPLATE, False)
    assert not torch.allclose(first["quaternions"], second["quaternions"])


def test_cache_key_leaves_out_exactly_the_training_only_settings():
    """Settings read when building the training set (objects, views, renders, their random seed) are in the cache
    key; the others (networks, optimisation, checkpoints) are not."""
    data_settings = {"classes", "train_objects_per_class", "first_seed", "views_per_object", "image_size",
                     "texture_size", "camera_scale", "elevation_range", "soft_render", "soft_sigma", "faces_per_pixel",
                     "seed"}  # fmt: skip
    names = {f.name for f in dataclasses.fields(MeshGANConfig)}
    assert mt._TRAINING_ONLY == names - data_settings


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------
def test_config_bounds():
    MeshGANConfig(elevation_range=[10, 10], ema_decay=0.0, betas=[0.0, 0.0], steps=1, checkpoint_every=1)
    for settings in ({"ema_decay": 1.0}, {"betas": [0.0, 1.0]}, {"betas": [1.0, 0.5]}, {"steps": 0},
                     {"checkpoint_every": 0}, {"faces_per_pixel": 0}, {"elevation_range": [-90, 10]},
                     {"elevation_range": [0, 90]}, {"camera_scale": 0.0}, {"lr_g": 0.0}, {"lr_d": -1.0},
                     {"image_size": 15}, {"classes": []}):  # fmt: skip
        with pytest.raises(ValueError):
            MeshGANConfig(**settings)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    """The resume check compares every setting but ``steps``, ``checkpoint_every`` and the learning rates (here
    ``ema_decay``) with the configuration stored in the checkpoint; it runs before anything is built."""
    from safetensors.torch import save_file

    out = tmp_path / "run"
    out.mkdir()
    saved = yaml.safe_dump(MeshGANConfig(classes=["vase"]).to_dict(), sort_keys=True)
    save_file({"step": torch.tensor(1)}, str(out / "checkpoint.safetensors"), metadata={"step": "1", "config": saved})
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"classes": ["vase"], "ema_decay": 0.9}))
    with pytest.raises(ValueError, match=r"another configuration \(ema_decay changed\)"):
        mt.train_meshgan(config_path, out, progress=False)
    assert not (out / "config.yaml").exists()


# --------------------------------------------------------------------------------------------------------------------
# load_generator
# --------------------------------------------------------------------------------------------------------------------
def test_load_generator_from_a_folder_and_refusals(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    kwargs = {"latent_dim": 8, "texture_size": 32, "channels": 16}
    generator = MeshGenerator(**kwargs)
    weights = {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()}
    save_file(weights, str(tmp_path / "generator.safetensors"), metadata={"generator": json.dumps(kwargs)})
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    loaded = load_generator(tmp_path)  # a folder: its generator.safetensors
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
    other = tmp_path / "other.safetensors"
    save_file(weights, str(other), metadata={"generator": json.dumps(kwargs | {"channels": 8})})
    with pytest.raises(ValueError, match="does not match"):
        load_generator(other)
    save_file(weights, str(other), metadata={"step": "1"})
    with pytest.raises(ValueError, match="no generator configuration"):
        load_generator(other)
    with pytest.raises(ValueError, match="not found"):
        load_generator(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------------------------
# One training run, watched
# --------------------------------------------------------------------------------------------------------------------
def _hinge(real: torch.Tensor, fake: torch.Tensor) -> float:
    real, fake = real.double().numpy(), fake.double().numpy()
    return float(np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean())


def test_training_steps_losses_optimisers_batches_and_log_resume(tmp_path, monkeypatch):
    """Two steps with every piece watched:

    * Adam for the generator with ``lr_g``, for both discriminators with ``lr_d``, both with the configured betas;
    * discriminator loss = hinge(UV) + w_img hinge(image), generator loss = -mean D_uv(fake) - w_img mean
      D_img(fake) + w_smooth smoothness, recomputed from the discriminator outputs;
    * each real image of a batch comes with its own camera and its own object's UV maps (from the cached set);
      generated meshes are rendered with textures mapped to [0, 1]; the latent codes differ from step to step;
    * a resumed run drops log rows of the steps it runs again (a stale row of step 2 here).
    """
    settings = {"classes": ["vase"], "train_objects_per_class": 2, "views_per_object": 3, "image_size": 32,
                "texture_size": 32, "latent_dim": 8, "generator_channels": 16, "discriminator_channels": 8,
                "batch_size": 4, "steps": 2, "checkpoint_every": 1, "lr_g": 2e-4, "lr_d": 3e-4, "betas": [0.0, 0.9],
                "image_loss_weight": 0.5, "smoothness_weight": 0.3}  # fmt: skip
    adams = []
    original_adam = torch.optim.Adam

    class SpyAdam(original_adam):
        def __init__(self, params, **kwargs):
            params = list(params)
            adams.append(([tuple(p.shape) for p in params], kwargs))
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    monkeypatch.setattr(mt, "radial_uv_maps", _stub_maps)
    uv_calls, img_calls, gen_calls, losses, smooth, cams, renders = [], [], [], [], [], [], []
    uv_forward, img_forward, gen_forward = UVDiscriminator.forward, ImageDiscriminator.forward, MeshGenerator.forward

    def uv_spy(self, texture, displacement):
        out = uv_forward(self, texture, displacement)
        uv_calls.append((texture.detach().clone(), displacement.detach().clone(), out.detach().clone()))
        return out

    def img_spy(self, rgba):
        out = img_forward(self, rgba)
        img_calls.append((rgba.detach().clone(), out.detach().clone()))
        return out

    def gen_spy(self, z):
        texture, displacement = gen_forward(self, z)
        gen_calls.append((z.clone(), texture.detach().clone(), displacement.detach().clone()))
        return texture, displacement

    original_check, original_smooth = mt.check_finite_loss, mt.smoothness_loss
    original_cameras, original_render = mt.weak_cameras, mt.render_generated
    monkeypatch.setattr(UVDiscriminator, "forward", uv_spy)
    monkeypatch.setattr(ImageDiscriminator, "forward", img_spy)
    monkeypatch.setattr(MeshGenerator, "forward", gen_spy)
    monkeypatch.setattr(mt, "check_finite_loss",
                        lambda loss, *a: losses.append(float(loss.detach())) or original_check(loss, *a))  # fmt: skip
    monkeypatch.setattr(mt, "smoothness_loss", lambda *a: smooth.append(original_smooth(*a)) or smooth[-1])
    monkeypatch.setattr(mt, "weak_cameras",
                        lambda s, t, q, size: cams.append(q.clone()) or original_cameras(s, t, q, size))  # fmt: skip
    monkeypatch.setattr(mt, "render_generated", lambda tpl, v, tex, c, **k: renders.append(tex.detach().clone())
                        or original_render(tpl, v, tex, c, **k))  # fmt: skip

    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    mt.train_meshgan(config_path, out, progress=False)

    # optimisers
    generator_shapes = [tuple(p.shape) for p in MeshGenerator(latent_dim=8, texture_size=32, channels=16).parameters()]
    assert len(adams) == 2
    (g_shapes, g_kwargs), (d_shapes, d_kwargs) = adams
    assert g_shapes == generator_shapes and len(d_shapes) > 0
    assert g_kwargs["lr"] == 2e-4 and d_kwargs["lr"] == 3e-4
    assert tuple(g_kwargs["betas"]) == (0.0, 0.9) and tuple(d_kwargs["betas"]) == (0.0, 0.9)

    from safetensors.torch import load_file

    data = load_file(str(out / "training_set.safetensors"))
    views = data["views"].flatten(0, 1)  # (objects * views, 4, S, S)
    n_views = data["views"].shape[1]
    assert len(gen_calls) == 2 and len(uv_calls) == 6 and len(img_calls) == 6 and len(losses) == 4
    # the training set's cameras (weak_cameras is also called while building it, once per object)
    step_cams = cams[-2:]
    for step in range(2):
        uv_real, uv_fake, uv_gen = uv_calls[3 * step : 3 * step + 3]
        img_real, img_fake, img_gen = img_calls[3 * step : 3 * step + 3]
        _, texture, displacement = gen_calls[step]
        d_total = _hinge(uv_real[2], uv_fake[2]) + 0.5 * _hinge(img_real[1], img_fake[1])
        assert losses[2 * step] == pytest.approx(d_total, rel=1e-5, abs=1e-6)
        g_total = -float(uv_gen[2].double().mean()) - 0.5 * float(img_gen[1].double().mean())
        g_total += 0.3 * float(smooth[step].detach().double().mean())
        assert losses[2 * step + 1] == pytest.approx(g_total, rel=1e-5, abs=1e-6)
        # fakes: the generator's outputs; rendered with colours in [0, 1]
        assert torch.equal(uv_fake[0], texture) and torch.equal(uv_fake[1], displacement)
        torch.testing.assert_close(renders[step], (texture + 1) / 2)
        # reals: image, camera and UV maps of the same (object, view)
        for i in range(4):
            matches = [k for k in range(len(views)) if torch.equal(img_real[0][i], views[k] - 0.5)]
            assert len(matches) == 1
            obj, view = divmod(matches[0], n_views)
            assert torch.equal(step_cams[step][i], data["quaternions"][obj, view])
            assert torch.equal(uv_real[0][i], data["textures"][obj])
            assert torch.equal(uv_real[1][i], data["deformations"][obj])
    assert not torch.equal(gen_calls[0][0], gen_calls[1][0])

    # resume: a stale row of step 2 (say, from an earlier longer run) is dropped before step 2 runs again
    log = out / "log.csv"
    log.write_text(log.read_text() + "2,9,9,9,9,9,0.0\n")
    config_path.write_text(yaml.safe_dump(settings | {"steps": 3}))
    mt.train_meshgan(config_path, out, progress=False)
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and rows[2][1] != "9"
