"""Volume renderer: ray/box clipping, sampling, compositing, depth regulariser and analytic renders."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.checks import NonFiniteError
from monorecon.core.volume import (
    DepthKernel,
    VolumeRenderConfig,
    VolumeRenderer,
    composite,
    depth_regularize,
    depth_window_samples,
    distortion_loss,
    importance_samples,
    ray_aabb,
    uniform_samples,
)

F64 = torch.float64


# --------------------------------------------------------------------------------------------------------------------
# Test fields and references (independent of the module)
# --------------------------------------------------------------------------------------------------------------------
def smooth_field(amplitude: float | torch.Tensor = 6.0, color_shift: torch.Tensor | None = None):
    """Gaussian blob of density and a smoothly varying colour."""

    def field(points: torch.Tensor):
        density = amplitude * torch.exp(-(points**2).sum(-1, keepdim=True) / 0.15)
        shift = torch.zeros(3, dtype=points.dtype) if color_shift is None else color_shift
        rgb = torch.sigmoid(
            points @ torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [2.0, 0.1, 1.0]], dtype=points.dtype) + shift
        )
        return density, rgb

    return field


def sphere_field(center, radius: float, density: float, color):
    def field(points: torch.Tensor):
        inside = ((points - points.new_tensor(center)) ** 2).sum(-1, keepdim=True) < radius**2
        return inside.to(points.dtype) * density, points.new_tensor(color).expand(points.shape[0], 3)

    return field


def random_rays(n: int, seed: int, spread: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=gen, dtype=F64)
    origins = 2.0 * origins / origins.norm(dim=-1, keepdim=True)
    target = (torch.rand(n, 3, generator=gen, dtype=F64) - 0.5) * 2 * spread
    directions = target - origins
    return origins, directions / directions.norm(dim=-1, keepdim=True)


def reference_slab(o: np.ndarray, d: np.ndarray, lo: float, hi: float):
    """Classic slab test with explicit handling of direction components equal to 0."""
    near, far = -math.inf, math.inf
    for k in range(3):
        if d[k] == 0:
            if not lo <= o[k] <= hi:
                return None
            continue
        t0, t1 = (lo - o[k]) / d[k], (hi - o[k]) / d[k]
        near, far = max(near, min(t0, t1)), min(far, max(t0, t1))
    return max(near, 0.0), far


def reference_triposr_render(field, origins: torch.Tensor, directions: torch.Tensor, n: int = 128):
    """Per-ray loop of TripoSR's renderer as described in SPEC §1 (box 0.87 * (1 - 1e-3), bin midpoints,
    delta = 1 / n, exclusive transmittance with + 1e-10, white background, rays shorter than 0.01 skipped)."""
    radius = 0.87 * (1 - 1e-3)
    rgb_out, opacity_out = [], []
    for o, d in zip(origins.numpy(), directions.numpy(), strict=True):
        seg = reference_slab(o, d, -radius, radius)
        if seg is None or seg[1] - seg[0] <= 0.01:
            rgb_out.append([1.0, 1.0, 1.0])
            opacity_out.append(0.0)
            continue
        near, far = seg
        transmittance, color, opacity = 1.0, np.zeros(3), 0.0
        for k in range(n):
            m = (k + 0.5) / n
            t = near * (1 - m) + far * m
            sigma, c = field(torch.from_numpy(o + t * d)[None])
            alpha = 1 - math.exp(-sigma.item() / n)
            color += alpha * transmittance * c[0].numpy()
            opacity += alpha * transmittance
            transmittance *= 1 - alpha + 1e-10
        rgb_out.append(color + (1 - opacity))
        opacity_out.append(opacity)
    return np.array(rgb_out), np.array(opacity_out)


def reference_composite(density, rgb, t, deltas, background, depth_eps=1e-3):
    n_rays, n_samples = density.shape
    background = np.broadcast_to(background, (n_rays, 3))
    out_rgb, out_opacity, out_depth = np.zeros((n_rays, 3)), np.zeros(n_rays), np.zeros(n_rays)
    for r in range(n_rays):
        transmittance = 1.0
        for s in range(n_samples):
            alpha = 1 - math.exp(-density[r, s] * deltas[r, s])
            w = alpha * transmittance
            out_rgb[r] += w * rgb[r, s]
            out_opacity[r] += w
            out_depth[r] += w * t[r, s]
            transmittance *= 1 - alpha + 1e-10
        out_rgb[r] += (1 - out_opacity[r]) * background[r]
        out_depth[r] /= out_opacity[r] + depth_eps
    return out_rgb, out_opacity, out_depth


# --------------------------------------------------------------------------------------------------------------------
# Ray / box
# --------------------------------------------------------------------------------------------------------------------
def test_ray_aabb_known_cases():
    origins = torch.tensor([[0.0, 0, 2], [0.0, 0, 0], [0.0, 2, 2], [0.5, 0.2, -3]], dtype=F64)
    directions = torch.tensor([[0.0, 0, -1], [1.0, 0, 0], [0.0, 0, -1], [0.0, 0, 2]], dtype=F64)
    t_near, t_far, hit = ray_aabb(origins, directions, (-1, -1, -1), (1, 1, 1))
    assert hit.tolist() == [True, True, False, True]
    np.testing.assert_allclose(t_near.numpy(), [1.0, 0.0, 0.0, 1.0], atol=1e-12)  # origin inside -> 0; miss -> 0
    np.testing.assert_allclose(t_far.numpy(), [3.0, 1.0, 0.0, 2.0], atol=1e-12)  # t in units of |d|
    t_near, t_far, _ = ray_aabb(origins[:1], directions[:1], (-1, -1, -1), (1, 1, 1), shrink=1e-3)
    assert t_near.item() == pytest.approx(1.001) and t_far.item() == pytest.approx(2.999)
    _, _, hit = ray_aabb(origins[:1], directions[:1], (-1, -1, -1), (1, 1, 1), min_length=2.5)
    assert not hit.item()
    # A direction along a box face (a zero component), at any length: the segment in units of |d| scales by 1 / length.
    origin, direction = torch.tensor([[0.5, 0.0, 2.0]], dtype=F64), torch.tensor([[0.25, 0.0, -1.0]], dtype=F64)
    t_near, t_far, _ = ray_aabb(origin, direction, (-0.87,) * 3, (0.87,) * 3)
    np.testing.assert_allclose([t_near.item(), t_far.item()], [1.13, 1.48], rtol=1e-12)  # enters z = 0.87, leaves x
    for scale in (2e-6, 1e6):
        scaled = ray_aabb(origin, direction * scale, (-0.87,) * 3, (0.87,) * 3)
        np.testing.assert_allclose([scaled[0].item() * scale, scaled[1].item() * scale], [1.13, 1.48], rtol=1e-9)


def test_ray_aabb_brute_force():
    origins, directions = random_rays(200, seed=0, spread=1.6)
    lo, hi = torch.tensor([-0.5, -0.7, -0.3], dtype=F64), torch.tensor([0.6, 0.4, 0.9], dtype=F64)
    t_near, t_far, hit = ray_aabb(origins, directions, lo, hi)
    ts = torch.linspace(0, 5, 50001, dtype=F64)
    points = origins[:, None] + ts[None, :, None] * directions[:, None]
    inside = ((points >= lo) & (points <= hi)).all(-1)
    step = ts[1].item()
    assert 20 < int(hit.sum()) < 200
    for r in range(200):
        if not inside[r].any():
            assert not hit[r]
            continue
        idx = inside[r].nonzero().flatten()
        assert hit[r]
        assert abs(t_near[r].item() - ts[idx[0]].item()) <= step and abs(t_far[r].item() - ts[idx[-1]].item()) <= step


def test_ray_aabb_rejects_bad_input():
    o, d = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="box_min"):
        ray_aabb(o, d, (1, 0, 0), (0, 1, 1))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        ray_aabb(o, d[:1], (-1, -1, -1), (1, 1, 1))
    with pytest.raises(ValueError, match="origins"):
        ray_aabb(torch.full((2, 3), float("nan")), d, (-1, -1, -1), (1, 1, 1))


# --------------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------------
def test_uniform_samples_midpoints_and_stratified():
    near, far = torch.tensor([0.5, 1.0], dtype=F64), torch.tensor([1.5, 4.0], dtype=F64)
    edges, mids = uniform_samples(near, far, 4)
    np.testing.assert_allclose(edges.numpy(), [[0.5, 0.75, 1.0, 1.25, 1.5], [1.0, 1.75, 2.5, 3.25, 4.0]], atol=1e-12)
    np.testing.assert_allclose(mids.numpy(), [[0.625, 0.875, 1.125, 1.375], [1.375, 2.125, 2.875, 3.625]], atol=1e-12)
    _, a = uniform_samples(near, far, 4, True, torch.Generator().manual_seed(3))
    _, b = uniform_samples(near, far, 4, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, mids)
    assert bool(((a >= edges[:, :-1]) & (a <= edges[:, 1:])).all())
    with pytest.raises(ValueError, match="n must"):
        uniform_samples(near, far, 0)


def test_importance_samples_follow_weights():
    edges = torch.linspace(0, 2, 5, dtype=F64).expand(3, 5)
    uniform = importance_samples(edges, torch.ones(3, 4, dtype=F64), 8, deterministic=True)
    np.testing.assert_allclose(uniform[0].numpy(), 2 * (np.arange(8) + 0.5) / 8, atol=1e-12)
    peaked = importance_samples(edges, torch.tensor([[0.0, 0, 1, 0]] * 3, dtype=F64), 50, deterministic=True)
    assert bool(((peaked >= 1.0) & (peaked <= 1.5)).all())
    weights = torch.tensor([[1.0, 2, 3, 4]], dtype=F64)
    samples = importance_samples(edges[:1], weights, 20000, generator=torch.Generator().manual_seed(0))
    assert bool((samples[:, 1:] >= samples[:, :-1]).all())
    counts = np.histogram(samples.numpy(), bins=np.linspace(0, 2, 5))[0] / 20000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.015)
    with pytest.raises(ValueError, match="non-negative"):
        importance_samples(edges, -torch.ones(3, 4, dtype=F64), 4)
    with pytest.raises(ValueError, match="weights"):
        importance_samples(edges, torch.ones(3, 5, dtype=F64), 4)


def test_depth_window_samples():
    out = depth_window_samples(torch.tensor([5.0, 4.2], dtype=F64), 32)
    np.testing.assert_allclose(out.numpy(), np.array([5.0, 4.2])[:, None] + np.linspace(-0.05, 0.05, 32), atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Compositing and depth regulariser
# --------------------------------------------------------------------------------------------------------------------
def composite_inputs(seed: int = 0, n_rays: int = 3, n_samples: int = 6):
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand(n_rays, n_samples, 1, generator=gen, dtype=F64) * 4
    rgb = torch.rand(n_rays, n_samples, 3, generator=gen, dtype=F64)
    deltas = torch.rand(n_rays, n_samples, generator=gen, dtype=F64) * 0.5
    t = 1.0 + torch.cumsum(deltas, dim=-1)
    return density, rgb, t, deltas


def test_composite_matches_loop_reference():
    density, rgb, t, deltas = composite_inputs()
    background = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    out = composite(density, rgb, t, deltas, background)
    ref_rgb, ref_opacity, ref_depth = reference_composite(
        density[..., 0].numpy(), rgb.numpy(), t.numpy(), deltas.numpy(), background.numpy()
    )
    np.testing.assert_allclose(out["rgb"].numpy(), ref_rgb, atol=1e-12)
    np.testing.assert_allclose(out["opacity"][:, 0].numpy(), ref_opacity, atol=1e-12)
    np.testing.assert_allclose(out["depth"][:, 0].numpy(), ref_depth, atol=1e-12)
    np.testing.assert_allclose(out["weights"].sum(-1).numpy(), ref_opacity, atol=1e-12)
    # (R, S) density, per-ray background and a different depth epsilon.
    per_ray_bg = torch.rand(3, 3, dtype=F64)
    out = composite(density[..., 0], rgb, t, deltas, per_ray_bg, depth_eps=0.0)
    ref_rgb, _, ref_depth = reference_composite(
        density[..., 0].numpy(), rgb.numpy(), t.numpy(), deltas.numpy(), per_ray_bg.numpy(), 0.0
    )
    np.testing.assert_allclose(out["rgb"].numpy(), ref_rgb, atol=1e-12)
    np.testing.assert_allclose(out["depth"][:, 0].numpy(), ref_depth, atol=1e-12)


def test_composite_gradcheck():
    density, rgb, t, deltas = composite_inputs(seed=1, n_rays=2, n_samples=4)
    density, rgb = density.requires_grad_(), rgb.requires_grad_()
    background = torch.tensor([1.0, 1.0, 1.0], dtype=F64)

    def fn(density, rgb):
        out = composite(density, rgb, t, deltas, background)
        return out["rgb"], out["opacity"], out["depth"]

    assert torch.autograd.gradcheck(fn, (density, rgb))


def test_composite_rejects_bad_input():
    density, rgb, t, deltas = composite_inputs()
    bg = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="rgb"):
        composite(density, rgb[:, :-1], t, deltas, bg)
    with pytest.raises(ValueError, match="background"):
        composite(density, rgb, t, deltas, torch.ones(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="non-negative"):
        composite(-density, rgb, t, deltas, bg)
    bad = t.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="t_mid"):
        composite(density, rgb, bad, deltas, bg)


def reference_kernel(t: np.ndarray, target: np.ndarray, scale=1.25, width=0.03, k_min=0.05, k_max=1.0) -> np.ndarray:
    return np.clip(scale * np.exp(-((t - target[:, None]) ** 2) / width), k_min, k_max)


@pytest.mark.parametrize("kernel", [None, DepthKernel(scale=2.0, width=0.1, k_min=0.1, k_max=1.5)])
def test_depth_regularization_scales_gradients_exactly(kernel):
    gen = torch.Generator().manual_seed(4)
    alpha = torch.rand(4, 16, generator=gen, dtype=F64, requires_grad=True)
    rgb = torch.rand(4, 16, 3, generator=gen, dtype=F64, requires_grad=True)
    t = torch.linspace(4.0, 6.0, 16, dtype=F64).expand(4, 16)
    target = torch.tensor([4.5, 5.0, 5.2, 5.9], dtype=F64)
    alpha_out, rgb_out = depth_regularize(alpha, rgb, t, target, kernel)
    assert torch.equal(alpha_out, alpha) and torch.equal(rgb_out, rgb)
    grad_alpha, grad_rgb = torch.randn(4, 16, generator=gen, dtype=F64), torch.randn(4, 16, 3, generator=gen, dtype=F64)
    torch.autograd.backward((alpha_out, rgb_out), (grad_alpha, grad_rgb))
    params = {} if kernel is None else dict(scale=2.0, width=0.1, k_min=0.1, k_max=1.5)
    k = reference_kernel(t.numpy(), target.numpy(), **params)
    assert k.min() < 0.2 and k.max() == pytest.approx(params.get("k_max", 1.0))  # both clamps active
    np.testing.assert_allclose(alpha.grad.numpy(), grad_alpha.numpy() * k, rtol=1e-14)
    np.testing.assert_allclose(rgb.grad.numpy(), grad_rgb.numpy() * k[..., None], rtol=1e-14)


def test_depth_kernel_rejects_bad_options():
    with pytest.raises(ValueError, match="width"):
        DepthKernel(width=0.0)
    with pytest.raises(ValueError, match="k_min"):
        DepthKernel(k_min=2.0, k_max=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------------------------------
def test_triposr_mode_matches_per_ray_reference():
    origins, directions = random_rays(40, seed=5, spread=1.5)
    # Axis-aligned rays with exactly-zero direction components, one grazing the box edge region, one missing.
    origins = torch.cat([origins, torch.tensor([[0.0, 0.0, 1.9], [0.3, -0.2, -1.9], [0.0, 1.5, 1.9]], dtype=F64)])
    directions = torch.cat([directions, torch.tensor([[0.0, 0, -1], [0.0, 0, 1], [0.0, 0, -1]], dtype=F64)])
    field = smooth_field()
    renderer = VolumeRenderer(VolumeRenderConfig.triposr(chunk_size=16))
    out = renderer.render(field, origins, directions)
    ref_rgb, ref_opacity = reference_triposr_render(field, origins, directions)
    assert 0 < (ref_opacity == 0).sum() < 20 and ref_opacity.max() > 0.5
    np.testing.assert_allclose(out["rgb"].numpy(), ref_rgb, atol=1e-10)
    np.testing.assert_allclose(out["opacity"][:, 0].numpy(), ref_opacity, atol=1e-10)


def test_sphere_silhouette_and_depth():
    center, radius, color = (0.1, -0.05, 0.0), 0.45, (0.2, 0.6, 0.9)
    size = 32
    cameras = PerspectiveCameras(orbit_c2w(30.0, 20.0, 2.2).to(F64), size, size, fov_y_deg=40.0)
    origins, directions = cameras.get_rays()
    config = VolumeRenderConfig(n_samples=48, n_importance=48, deterministic_importance=True, chunk_size=300)
    out = VolumeRenderer(config).render(sphere_field(center, radius, 1e3, color), origins[0], directions[0])
    # Analytic ray / sphere intersection.
    oc = origins[0] - torch.tensor(center, dtype=F64)
    b = (oc * directions[0]).sum(-1)
    disc = b**2 - ((oc**2).sum(-1) - radius**2)
    inside = disc > 0
    t_hit = -b - disc.clamp_min(0).sqrt()
    # Signed distance (world units) of each pixel ray from the sphere outline; a pixel spans ~2.2 tan(20 deg) / 16.
    miss_distance = ((oc**2).sum(-1) - b**2).sqrt() - radius
    pixel = 2.2 * math.tan(math.radians(20)) / (size / 2)
    opacity = out["opacity"][..., 0]
    silhouette = opacity > 0.5
    mismatch = silhouette != inside
    assert 150 < int(inside.sum()) < 900
    assert bool((miss_distance[mismatch].abs() < pixel).all())
    core = miss_distance < -pixel
    assert float((1 - opacity[core]).abs().max()) < 1e-3
    np.testing.assert_allclose(out["rgb"][core].numpy(), np.broadcast_to(color, (int(core.sum()), 3)), atol=1e-3)
    assert float((out["depth"][..., 0][core] - t_hit[core]).abs().max()) < 1e-2
    outside = miss_distance > pixel
    assert float(opacity[outside].max()) < 1e-6 and float((out["rgb"][outside] - 1).abs().max()) < 1e-6


def test_direction_length_only_rescales_depth():
    origins, directions = random_rays(30, seed=6)
    field = smooth_field()
    renderer = VolumeRenderer(VolumeRenderConfig(n_samples=32))
    unit = renderer.render(field, origins, directions)
    doubled = renderer.render(field, origins, 2 * directions)
    np.testing.assert_allclose(doubled["rgb"].numpy(), unit["rgb"].numpy(), atol=1e-12)
    np.testing.assert_allclose(doubled["opacity"].numpy(), unit["opacity"].numpy(), atol=1e-12)
    np.testing.assert_allclose(2 * doubled["depth"].numpy(), unit["depth"].numpy(), atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(stratified=True, n_importance=16, return_weights=True),
        dict(n_importance=16, depth_window_probability=1.0, return_weights=True),
    ],
)
def test_chunking_does_not_change_results(options):
    origins, directions = random_rays(57, seed=7, spread=1.5)
    target = torch.full((57,), 1.9, dtype=F64)
    outputs = []
    for chunk in (5, 1000):
        renderer = VolumeRenderer(VolumeRenderConfig(n_samples=24, chunk_size=chunk, **options))
        gen = torch.Generator().manual_seed(11)
        outputs.append(renderer.render(smooth_field(), origins, directions, target_depth=target, generator=gen))
    assert outputs[0].keys() == outputs[1].keys()
    for key in outputs[0]:
        np.testing.assert_allclose(outputs[0][key].detach().numpy(), outputs[1][key].detach().numpy(), atol=1e-12)


def test_depth_window_fine_samples_and_missed_rays():
    origins = torch.tensor([[0.0, 0, 3], [0.0, 5, 3]], dtype=F64)
    directions = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]], dtype=F64)
    config = VolumeRenderConfig(
        n_samples=4, n_importance=5, box_radius=1.0, near_far_shrink=0.0, depth_window_probability=1.0,
        return_weights=True, background=(0.0, 0.5, 1.0),
    )  # fmt: skip
    out = VolumeRenderer(config).render(
        smooth_field(), origins, directions, target_depth=torch.tensor([3.0, 3.0]).to(F64)
    )
    expected = np.sort(np.concatenate([2.0 + (np.arange(4) + 0.5) / 2, 3.0 + np.linspace(-0.05, 0.05, 5)]))
    np.testing.assert_allclose(out["t"][0].numpy(), expected, atol=1e-12)
    # The missed ray: background, zero opacity / depth / weights.
    np.testing.assert_allclose(out["rgb"][1].numpy(), [0.0, 0.5, 1.0])
    assert out["opacity"][1].item() == 0 and out["depth"][1].item() == 0 and out["weights"][1].abs().sum() == 0
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.7, 0.8, 0.9]], dtype=F64)
    out = VolumeRenderer(config).render(smooth_field(), origins, directions, background=bg)
    np.testing.assert_allclose(out["rgb"][1].numpy(), [0.7, 0.8, 0.9])


def test_render_gradcheck_field_parameters_and_origins():
    origins, directions = random_rays(4, seed=8, spread=0.3)
    amplitude = torch.tensor(4.0, dtype=F64, requires_grad=True)
    shift = torch.tensor([0.1, -0.2, 0.3], dtype=F64, requires_grad=True)
    origins = origins.clone().requires_grad_()
    # No importance samples: their positions depend on the field but are (by design) not differentiated.
    renderer = VolumeRenderer(VolumeRenderConfig(n_samples=8))

    def fn(amplitude, shift, origins):
        out = renderer.render(smooth_field(amplitude, shift), origins, directions)
        return out["rgb"], out["depth"]

    assert torch.autograd.gradcheck(fn, (amplitude, shift, origins))


def test_render_target_depth_keeps_forward_and_changes_gradients():
    origins, directions = random_rays(6, seed=9, spread=0.3)
    amplitude = torch.tensor(4.0, dtype=F64, requires_grad=True)
    renderer = VolumeRenderer(VolumeRenderConfig(n_samples=16))
    plain = renderer.render(smooth_field(amplitude), origins, directions)
    guided = renderer.render(
        smooth_field(amplitude), origins, directions, target_depth=torch.full((6,), 2.5, dtype=F64)
    )
    assert torch.equal(plain["rgb"], guided["rgb"]) and torch.equal(plain["depth"], guided["depth"])
    (g_plain,) = torch.autograd.grad(plain["rgb"].sum(), amplitude)
    (g_guided,) = torch.autograd.grad(guided["rgb"].sum(), amplitude)
    assert abs(g_guided.item()) < abs(g_plain.item())  # far-from-surface samples are damped (k <= 1)


def test_render_rejects_bad_input():
    origins, directions = random_rays(4, seed=10)
    renderer = VolumeRenderer(VolumeRenderConfig(n_samples=4))
    field = smooth_field()
    bad = origins.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="origins"):
        renderer.render(field, bad, directions)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        renderer.render(field, origins, directions[:3])
    zero = directions.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="zero-length"):
        renderer.render(field, origins, zero)
    with pytest.raises(ValueError, match="target_depth"):
        renderer.render(field, origins, directions, target_depth=torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="density"):
        renderer.render(lambda p: (torch.ones(p.shape[0], 2, dtype=F64), torch.ones(p.shape[0], 3, dtype=F64)),
                        origins, directions)  # fmt: skip
    with pytest.raises(ValueError, match="field_fn returned negative densities"):
        renderer.render(lambda p: (-torch.ones(p.shape[0], 1, dtype=F64), torch.ones(p.shape[0], 3, dtype=F64)),
                        origins, directions)  # fmt: skip
    with pytest.raises(NonFiniteError, match="field_fn returned NaN densities"):  # a ValueError too
        renderer.render(lambda p: (torch.full((p.shape[0], 1), float("nan"), dtype=F64),
                                   torch.ones(p.shape[0], 3, dtype=F64)), origins, directions)  # fmt: skip
    with pytest.raises(ValueError, match="n_samples"):
        VolumeRenderConfig(n_samples=0)
    for chunk in (0, 10**9, 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            VolumeRenderConfig(chunk_size=chunk)
    with pytest.raises(ValueError, match="box_min"):
        VolumeRenderConfig(box_min=(0, 0, 0))
    with pytest.raises(ValueError, match="background"):
        VolumeRenderConfig(background=(1.0, float("nan"), 0.0))


def test_distortion_loss_matches_the_double_sum_and_closed_forms():
    gen = torch.Generator().manual_seed(3)
    weights = torch.rand(6, 9, generator=gen, dtype=F64)
    edges = torch.sort(torch.rand(6, 10, generator=gen, dtype=F64), dim=-1).values
    mids, widths = (edges[:, 1:] + edges[:, :-1]) / 2, edges.diff(dim=-1)
    brute = (weights[:, :, None] * weights[:, None, :] * (mids[:, :, None] - mids[:, None, :]).abs()).sum((1, 2))
    brute = brute + (weights**2 * widths).sum(-1) / 3
    np.testing.assert_allclose(distortion_loss(weights, edges).numpy(), brute.numpy(), rtol=1e-12)
    # One interval of width d holding weight w: w^2 d / 3. Two point-like masses: 2 w1 w2 |m1 - m2|.
    one = distortion_loss(torch.tensor([[0.0, 0.8, 0.0]], dtype=F64), torch.tensor([[0.0, 0.1, 0.4, 1.0]], dtype=F64))
    assert float(one) == pytest.approx(0.64 * 0.3 / 3)
    two = distortion_loss(torch.tensor([[0.3, 0.0, 0.5]], dtype=F64), torch.tensor([[0.1, 0.1, 0.7, 0.7]], dtype=F64))
    assert float(two) == pytest.approx(2 * 0.3 * 0.5 * 0.6)
    # Unit weight spread evenly over a width W: W / 3 (the continuous limit), whatever the bin count.
    for width in (0.1, 0.5):
        n = 400
        spread = distortion_loss(
            torch.full((1, n), 1.0 / n, dtype=F64), torch.linspace(0, width, n + 1, dtype=F64)[None]
        )
        assert float(spread) == pytest.approx(width / 3, rel=1e-4)
    with pytest.raises(ValueError, match="ascending"):
        distortion_loss(torch.ones(1, 2), torch.tensor([[0.0, 0.5, 0.2]]))
    with pytest.raises(ValueError, match="edges"):
        distortion_loss(torch.ones(1, 2), torch.tensor([[0.0, 1.0]]))


def test_renderer_edges_are_the_sample_intervals_in_fractions_of_the_ray():
    config = VolumeRenderConfig(n_samples=4, box_radius=1.0, near_far_shrink=0.0, return_weights=True)
    origins = torch.tensor([[0.0, 0, 3], [0.0, 5, 3]], dtype=F64)
    directions = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]], dtype=F64)
    out = VolumeRenderer(config).render(smooth_field(), origins, directions)
    np.testing.assert_allclose(out["edges"][0].numpy(), [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-12)
    assert out["edges"][1].abs().sum() == 0  # missed ray
    assert "edges" not in VolumeRenderer(dataclasses.replace(config, return_weights=False)).render(
        smooth_field(), origins, directions
    )
    # A thin shell concentrates the weights: lower distortion than a diffuse cloud of the same opacity.
    shell = lambda p: (40.0 * (((p**2).sum(-1, keepdim=True).sqrt() - 0.5).abs() < 0.05), torch.ones_like(p))  # noqa: E731
    cloud = lambda p: (2.2 * ((p**2).sum(-1, keepdim=True) < 0.64), torch.ones_like(p))  # noqa: E731
    renderer = VolumeRenderer(dataclasses.replace(config, n_samples=256))
    shell_out, cloud_out = (
        renderer.render(shell, origins[:1], directions[:1]),
        renderer.render(cloud, origins[:1], directions[:1]),
    )
    assert float(shell_out["opacity"]) == pytest.approx(float(cloud_out["opacity"]), abs=0.05)
    assert float(distortion_loss(shell_out["weights"], shell_out["edges"])) < 0.3 * float(
        distortion_loss(cloud_out["weights"], cloud_out["edges"])
    )


def test_explicit_box_and_replaced_radius():
    config = VolumeRenderConfig(box_min=(0.5, -1.0, -1.0), box_max=(1.0, 1.0, 1.0), near_far_shrink=0.0,
                                return_weights=True, n_samples=4)  # fmt: skip
    origins = torch.tensor([[0.0, 0, 3], [0.75, 0, 3]], dtype=F64)
    directions = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]], dtype=F64)
    out = VolumeRenderer(config).render(smooth_field(), origins, directions)
    assert out["opacity"][0].item() == 0 and out["opacity"][1].item() > 0
    np.testing.assert_allclose(out["t"][1].numpy(), [2.25, 2.75, 3.25, 3.75], atol=1e-12)
    assert dataclasses.replace(VolumeRenderConfig(), box_radius=2.0).box_bounds == ((-2.0,) * 3, (2.0,) * 3)
