"""MeshInversion (SPEC §3): generator, losses and inversion checked against hand-computed / brute-force references.

Written from a mutation audit of ``monorecon.models.meshgan.networks``, ``monorecon.fit.invert`` and
``monorecon.losses.fitting``: each test pins a behaviour that a plausible slip in the code changes while the other
tests kept passing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monorecon.fit.invert import invert
from monorecon.losses.fitting import chamfer_mask_loss, chamfer_texture_loss, image_points, squared_distances
from monorecon.models.meshgan.networks import MeshGenerator, UVDiscriminator, _positional_encoding
from monorecon.models.meshgan.template import UVSphereTemplate

TEMPLATE = UVSphereTemplate()
NO_LOSS = {"mask": 0.0, "pixel": 0.0, "feature": 0.0, "latent": 0.0, "smoothness": 0.0, "silhouette": 0.0}


def _generator(displacement_scale: float = 0.2) -> MeshGenerator:
    """Tiny seeded generator with its zero-initialised displacement head randomised (z moves the mesh)."""
    torch.manual_seed(0)
    generator = MeshGenerator(latent_dim=8, texture_size=32, channels=16, displacement_scale=displacement_scale)
    torch.nn.init.normal_(generator.mesh_head.weight, std=0.5)
    return generator.eval()


def _rectangle_image(size: int = 32, rows=(4, 12), cols=(16, 28)) -> torch.Tensor:
    """(S, S, 4) RGBA: an orange rectangle (rows / cols half-open ranges) on white."""
    alpha = torch.zeros(size, size)
    alpha[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    rgb = torch.tensor([0.9, 0.5, 0.1]) * alpha[..., None] + (1 - alpha)[..., None]
    return torch.cat([rgb, alpha[..., None]], -1)


# --------------------------------------------------------------------------------------------------------------------
# Losses (monorecon.losses.fitting)
# --------------------------------------------------------------------------------------------------------------------
def test_image_points_read_values_at_row_then_column():
    """Values come from ``image[:, row, col]`` of each foreground pixel: off the diagonal of a 3 x 3 image with value
    10 row + col, the pixel (row 0, col 2) at NDC (2/3, 2/3) holds 2 and (row 2, col 1) at (0, -2/3) holds 21."""
    image = (10 * torch.arange(3.0)[:, None] + torch.arange(3.0)[None, :])[None]
    mask = torch.zeros(3, 3)
    mask[0, 2] = mask[2, 1] = 1.0
    pos, values = image_points(image, mask, 0.5)
    torch.testing.assert_close(pos, torch.tensor([[2 / 3, 2 / 3], [0.0, -2 / 3]]), atol=1e-6, rtol=0)
    assert values[:, 0].tolist() == [2.0, 21.0]


def test_chamfer_mask_loss_matches_brute_force_on_sets_of_different_sizes():
    """``mean_i min_j |p_i - t_j|^2 + mean_j min_i |p_i - t_j|^2`` per batch item, by Python loops (N != M, B = 2)."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 2, generator=g), torch.randn(7, 2, generator=g)
    expected = []
    for b in range(2):
        d = [[float(((pred[b, i] - target[j]) ** 2).sum()) for j in range(7)] for i in range(5)]
        forward = sum(min(row) for row in d) / 5
        backward = sum(min(d[i][j] for i in range(5)) for j in range(7)) / 7
        expected.append(forward + backward)
    torch.testing.assert_close(chamfer_mask_loss(pred, target), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_squared_distances_never_negative_under_cancellation():
    """Documented ``>= 0``: far from the origin, ``|a|^2 + |b|^2 - 2 a.b`` cancels in float32; the distance of each
    point to itself must still not be negative (a Chamfer minimum below 0 would reward nothing)."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(200, 2, generator=g) * 10 + 1000
    d = squared_distances(points, points)
    assert float(d.min()) >= 0.0


def test_chamfer_texture_subsampling_draws_uniformly_and_anew_each_call():
    """``max_points`` keeps a random subset, redrawn at every call: over 200 calls with one generator, each of 20
    points is kept about 200 * 5 / 20 = 50 times (binomial, sd 6.1; bounds at about +-4.9 sd), never a fixed subset.
    The kept predictions are those with a gradient (one target point at the origin, value 0: C_i = v_i^2 + 1)."""
    n, k = 20, 5
    values = ((torch.arange(n, dtype=torch.float32) + 1) / n)[:, None]
    generator = torch.Generator().manual_seed(7)
    counts = torch.zeros(n)
    for _ in range(200):
        pred_values = values.clone().requires_grad_(True)
        loss = chamfer_texture_loss(torch.zeros(n, 2), pred_values, torch.zeros(1, 2), torch.zeros(1, 1),
                                    max_points=k, generator=generator)  # fmt: skip
        loss.backward()
        kept = pred_values.grad[:, 0] != 0
        assert int(kept.sum()) == k
        counts += kept.float()
    assert int(counts.min()) > 20 and int(counts.max()) < 80, counts.tolist()


# --------------------------------------------------------------------------------------------------------------------
# Generator and discriminator (monorecon.models.meshgan.networks)
# --------------------------------------------------------------------------------------------------------------------
def test_displacement_is_proportional_to_displacement_scale():
    """The displacement head's output is multiplied by ``displacement_scale``: the same weights with 0.5 instead of
    0.2 give 2.5 times the displacement map, and 0 gives the undeformed sphere."""
    small = _generator(0.2)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    large = MeshGenerator(latent_dim=8, texture_size=32, channels=16, displacement_scale=0.5)
    large.load_state_dict(small.state_dict())
    flat = MeshGenerator(latent_dim=8, texture_size=32, channels=16, displacement_scale=0.0)
    flat.load_state_dict(small.state_dict())
    with torch.no_grad():
        d_small, d_large, d_flat = small(z)[1], large.eval()(z)[1], flat.eval()(z)[1]
        verts_flat = flat.meshes(z)[0]
    assert float(d_small.abs().max()) > 0.01
    torch.testing.assert_close(d_large, 2.5 * d_small, atol=1e-6, rtol=1e-5)
    assert torch.equal(d_flat, torch.zeros_like(d_flat))
    torch.testing.assert_close(verts_flat.norm(dim=-1), torch.ones(2, TEMPLATE.verts.shape[0]), atol=1e-5, rtol=0)


def test_mesh_colours_are_the_texture_mapped_from_minus_one_one_to_zero_one():
    """``meshes`` returns textures in [0, 1] as ``(t + 1) / 2`` of the generator's tanh texture in [-1, 1] (dark
    texels stay distinguishable, nothing is clipped); the texture itself never leaves [-1, 1]."""
    generator = _generator()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        texture = generator(z)[0]
        colours = generator.meshes(z)[1]
    assert float(texture.min()) < -0.01  # some negative texels, where clipping would differ
    torch.testing.assert_close(colours, (texture + 1) / 2, atol=1e-6, rtol=0)
    with torch.no_grad():  # far-out codes saturate the tanh: close to +-1, never beyond
        extreme = generator(1000 * z)[0]
    assert float(extreme.abs().max()) <= 1.0 and float(extreme.abs().max()) > 0.99


@pytest.mark.parametrize("size", [16, 1024, 96])
def test_generator_refuses_texture_sizes_outside_32_to_512(size):
    with pytest.raises(ValueError, match="texture_size"):
        MeshGenerator(latent_dim=8, texture_size=size, channels=4)


def test_positional_encoding_at_texel_centres():
    """(1, 4, H, W) = cos / sin of the azimuth, cos / sin of the polar angle at texel centres: H = 2, W = 4 gives
    polar angles pi/4, 3pi/4 (rows) and azimuths pi/4, 3pi/4, 5pi/4, 7pi/4 (columns)."""
    pe = _positional_encoding(2, 4, torch.zeros(1))
    theta = torch.tensor([math.pi / 4, 3 * math.pi / 4])[:, None].expand(2, 4)
    phi = torch.tensor([1.0, 3.0, 5.0, 7.0])[None, :].expand(2, 4) * math.pi / 4
    expected = torch.stack([phi.cos(), phi.sin(), theta.cos(), theta.sin()])[None]
    torch.testing.assert_close(pe, expected, atol=1e-6, rtol=0)


def test_uv_discriminator_wraps_the_azimuth():
    """With circular padding along the azimuth (width) and the position channels switched off, the discriminator is
    a convolution on a cylinder: rolling the UV maps by 4 columns (its total stride) rolls the 8 x 8 logits by one
    column, the seam included."""
    torch.manual_seed(0)
    disc = UVDiscriminator(8).eval()
    with torch.no_grad():
        disc.conv1.parametrizations.weight.original[:, 6:] = 0.0  # positional encoding channels
    g = torch.Generator().manual_seed(3)
    texture, displacement = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        logits = disc(texture, displacement)
        rolled = disc(texture.roll(4, dims=-1), displacement.roll(4, dims=-1))
    torch.testing.assert_close(rolled, logits.roll(1, dims=-1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Inversion (monorecon.fit.invert)
# --------------------------------------------------------------------------------------------------------------------
def test_initial_camera_is_half_the_larger_box_side_at_the_centroid():
    """Camera start (no optimisation step): a 8-row x 12-column rectangle at rows 4..11, columns 16..27 of a 32 px
    image. Larger side 12 px = 0.75 NDC, so scale 0.375 (+ the 1e-4 floor); centroid at column 22 -> x = 0.375,
    row 8 -> y = 0.5 (NDC y up)."""
    result = invert(_rectangle_image(), _generator(), n_init=2, init_batch=2, stage_steps=(0,), z_lrs=(0.1,),
                    camera_lrs=(0.01,), weights=NO_LOSS)  # fmt: skip
    assert float(result.scale[0]) == pytest.approx(0.375 + 1e-4, abs=1e-6)
    torch.testing.assert_close(result.translation, torch.tensor([[0.375, 0.5]]), atol=1e-6, rtol=0)


def test_inversion_optimisers_betas_and_learning_rate_of_every_step(monkeypatch):
    """SPEC §3: two Adam optimisers with betas (0, 0.99), one on z and one on the camera (scale, translation,
    quaternion); each step uses its stage's learning rates (stages of 1, 2, 0 and 1 steps here)."""
    created = []

    class SpyAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            self.lrs = []
            created.append(self)

        def step(self, closure=None):
            self.lrs.append([group["lr"] for group in self.param_groups])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    z_lrs, camera_lrs = (0.4, 0.3, 0.2, 0.1), (0.04, 0.03, 0.02, 0.01)
    invert(_rectangle_image(), _generator(), n_init=2, init_batch=2, stage_steps=(1, 2, 0, 1), z_lrs=z_lrs,
           camera_lrs=camera_lrs, weights=NO_LOSS | {"latent": 0.05})  # fmt: skip
    assert len(created) == 2
    shapes = [[tuple(p.shape) for group in opt.param_groups for p in group["params"]] for opt in created]
    z_opt, cam_opt = created if shapes[0] == [(1, 8)] else created[::-1]
    assert sorted([tuple(p.shape) for group in cam_opt.param_groups for p in group["params"]]) == [(1,), (1, 2), (1, 4)]
    for opt in (z_opt, cam_opt):
        assert all(tuple(group["betas"]) == (0.0, 0.99) for group in opt.param_groups)
    per_step = [0, 1, 1, 3]  # stage of each step
    assert z_opt.lrs == [[z_lrs[s]] * len(z_opt.param_groups) for s in per_step]
    assert cam_opt.lrs == [[camera_lrs[s]] * len(cam_opt.param_groups) for s in per_step]


def _face_neighbours_by_edges(faces: list[list[int]]) -> list[list[int]]:
    """Neighbour across each directed edge (a, b) of a closed, consistently oriented mesh: the face holding (b, a)."""
    owner = {(f[k], f[(k + 1) % 3]): i for i, f in enumerate(faces) for k in range(3)}
    return [[owner[(f[(k + 1) % 3], f[k])] for k in range(3)] for f in faces]


def test_smoothness_term_when_switched_on():
    """With ``smoothness`` 2 (all else off, learning rates 0) the logged term is 2 x ``(F/2) sum_k mean_f
    (n_f . n_nb_k(f) - 1)^2`` of the returned mesh, face normals and neighbours computed here in numpy."""
    result = invert(_rectangle_image(), _generator(), n_init=2, init_batch=2, stage_steps=(1,), z_lrs=(0.0,),
                    camera_lrs=(0.0,), weights=NO_LOSS | {"smoothness": 2.0})  # fmt: skip
    faces = TEMPLATE.faces.tolist()
    neighbours = np.array(_face_neighbours_by_edges(faces))
    v = result.verts.double().numpy()[np.array(faces)]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    cos = np.einsum("fd,fkd->fk", normals, normals[neighbours])
    expected = len(faces) / 2 * ((cos - 1) ** 2).mean(0).sum()
    assert expected > 0.1  # a deformed sphere, far from flat
    assert {"smoothness", "total"} <= set(result.history[0])  # other terms logged with weight 0
    assert result.history[0]["smoothness"] == pytest.approx(2 * expected, rel=1e-4)
    assert result.history[0]["total"] == pytest.approx(2 * expected, rel=1e-4)


def test_inversion_uses_the_generator_in_eval_mode_and_leaves_it_unchanged():
    """The generator is used in eval mode and frozen: a generator handed over in training mode gives the meshes of
    its eval-mode self for the returned code, and its weights and batch-norm statistics are untouched."""
    generator = _generator().train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    result = invert(_rectangle_image(), generator, n_init=4, init_batch=2, stage_steps=(2,), z_lrs=(0.1,),
                    camera_lrs=(0.01,), weights=NO_LOSS | {"mask": 10.0, "latent": 0.05})  # fmt: skip
    for key, value in generator.state_dict().items():
        assert torch.equal(value, before[key]), key
    reference = _generator()  # same seed and initialisation, eval mode
    with torch.no_grad():
        verts, colours = reference.meshes(result.z)
    torch.testing.assert_close(result.verts, verts[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.texture, colours[0], atol=1e-5, rtol=0)


def test_invert_refuses_small_images_and_inconsistent_options():
    generator = _generator()
    with pytest.raises(ValueError, match="too small"):
        invert(_rectangle_image(8, rows=(2, 6), cols=(2, 6)), generator)
    image = _rectangle_image()
    with pytest.raises(ValueError, match="same length"):
        invert(image, generator, stage_steps=(1, 1), z_lrs=(0.1,), camera_lrs=(0.01, 0.01))
    with pytest.raises(ValueError, match="same length"):
        invert(image, generator, stage_steps=(1,), z_lrs=(0.1, 0.05), camera_lrs=(0.01,))
    with pytest.raises(ValueError, match="non-negative"):
        invert(image, generator, stage_steps=(-1,), z_lrs=(0.1,), camera_lrs=(0.01,))
    for option in ("init_batch", "init_views", "max_points"):
        with pytest.raises(ValueError, match=option):
            invert(image, generator, **{option: 0})
    # A separate mask must lie in [0, 1] as the image does: a 0 / 255 mask would swamp the silhouette term.
    rgb, alpha = image[..., :3], image[..., 3]
    with pytest.raises(ValueError, match=r"mask.*\[0, 1\]"):
        invert(rgb, generator, mask=alpha * 255)


def test_saved_views_go_round_the_object_every_30_degrees_from_30_degrees_up(tmp_path):
    """``views/NN.png`` look at the mesh from azimuth 30 NN deg at elevation 30 deg. On the unit sphere textured with
    red = (1 + cos phi) / 2 (azimuth, even in phi), blue = (1 + cos theta) / 2 (polar angle), green = 1, the centre
    pixel of a view sees the point at phi = +-azimuth, theta = 60 deg (camera 30 deg above the equator); the Lambert
    shading scales the three channels alike, so red / green = (1 + cos azimuth) / 2 and blue / green = 0.75."""
    from PIL import Image

    from monorecon.fit.invert import InversionResult, save_inversion_result

    centres = torch.arange(64, dtype=torch.float32) + 0.5
    theta, phi = torch.meshgrid(centres * math.pi / 64, centres * 2 * math.pi / 64, indexing="ij")  # texel centres
    texture = torch.stack([(1 + phi.cos()) / 2, torch.ones(64, 64), (1 + theta.cos()) / 2])
    verts = TEMPLATE.verts.clone()
    result = InversionResult(
        z=torch.zeros(1, 8), scale=torch.ones(1), translation=torch.zeros(1, 2),
        quaternion=torch.tensor([[1.0, 0.0, 0.0, 0.0]]), verts=verts, texture=texture,
        mesh=TEMPLATE.to_mesh(verts, texture), render=torch.ones(8, 8, 4), iou=1.0, init_iou=1.0,
    )  # fmt: skip
    paths = save_inversion_result(result, tmp_path / "out", view_size=64)
    for index in (0, 2, 3, 4, 6, 9):
        image = np.asarray(Image.open(paths[f"view{index:02d}"]).convert("RGB"), dtype=np.float64) / 255
        centre = image[31:33, 31:33].reshape(-1, 3).mean(0)
        azimuth = math.radians(30 * index)
        assert centre[0] / centre[1] == pytest.approx((1 + math.cos(azimuth)) / 2, abs=0.04), index
        assert centre[2] / centre[1] == pytest.approx(0.75, abs=0.04), index


def test_texture_terms_get_the_callers_tolerance_and_point_budget(monkeypatch):
    """``xy_threshold`` and ``max_points`` reach both Chamfer texture terms; only the feature term is bidirectional
    (SPEC §3: pixel term one way, feature term both directions). Recorded at the call, then computed as usual."""
    import importlib

    invert_module = importlib.import_module("monorecon.fit.invert")
    calls = []
    original = invert_module.chamfer_texture_loss

    def spy(*args, **kwargs):
        calls.append({key: kwargs.get(key) for key in ("xy_threshold", "max_points", "bidirectional")})
        return original(*args, **kwargs)

    monkeypatch.setattr(invert_module, "chamfer_texture_loss", spy)
    invert(_rectangle_image(), _generator(), n_init=2, init_batch=2, stage_steps=(1,), z_lrs=(0.0,),
           camera_lrs=(0.0,), weights=NO_LOSS | {"pixel": 1.0, "feature": 0.04}, max_points=37,
           xy_threshold=0.2)  # fmt: skip
    assert len(calls) == 2
    assert {(c["xy_threshold"], c["max_points"], bool(c["bidirectional"])) for c in calls} == {
        (0.2, 37, False),
        (0.2, 37, True),
    }


def test_feature_points_keep_cells_whose_pooled_mask_is_at_least_one_half():
    """Feature points (module docstring): the mask average-pooled to the 2 x 2 feature grid is 0.5 / 0.25 (top row)
    and 1 / 0.75 (bottom row); cells with >= 0.5 are kept (exactly 0.5 included), at their NDC centres
    (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5), with unit-length features: (3, 4) -> (0.6, 0.8)."""
    from monorecon.fit.invert import _feature_points

    mask = torch.tensor(
        [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]]
    )  # cells: TL 2/4, TR 1/4, BL 4/4, BR 3/4
    feature_map = torch.tensor([[[3.0, 1.0], [0.0, -2.0]], [[4.0, 1.0], [5.0, 0.0]]])  # (C=2, 2, 2)
    pos, feat = _feature_points(feature_map, mask)
    torch.testing.assert_close(pos, torch.tensor([[-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(feat, torch.tensor([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]), atol=1e-6, rtol=0)
    empty_pos, empty_feat = _feature_points(feature_map, torch.zeros(4, 4))
    assert empty_pos.shape == (0, 2) and empty_feat.shape == (0, 2)
