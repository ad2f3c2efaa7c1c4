"""Triplane lookup, G3DR pyramid and the triplane decoder, checked against independent numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monorecon.core.fields import TriplaneDecoder, trunc_exp
from monorecon.core.triplane import sample_triplane, sample_triplane_pyramid, triplane_pyramid

PLANE_PAIRS = ((0, 1), (0, 2), (1, 2))  # (column coordinate, row coordinate) per plane, from the spec


def bilinear_zero_pad(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Reference bilinear read of image (C, H, W) at grid coords x (column), y (row), align_corners=False."""
    _, height, width = image.shape
    ix, iy = ((x + 1) * width - 1) / 2, ((y + 1) * height - 1) / 2
    x0, y0 = math.floor(ix), math.floor(iy)
    out = np.zeros(image.shape[0])
    for yi in (y0, y0 + 1):
        for xi in (x0, x0 + 1):
            if 0 <= xi < width and 0 <= yi < height:
                out += (1 - abs(ix - xi)) * (1 - abs(iy - yi)) * image[:, yi, xi]
    return out


def reference_lookup(planes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(B, 3, C, H, W), (B, N, 3) -> (B, N, 3, C) per-plane features by explicit loops."""
    batch, n_points = points.shape[:2]
    out = np.zeros((batch, n_points, 3, planes.shape[2]))
    for b in range(batch):
        for n in range(n_points):
            for k, (col, row) in enumerate(PLANE_PAIRS):
                out[b, n, k] = bilinear_zero_pad(planes[b, k], points[b, n, col], points[b, n, row])
    return out


@pytest.fixture
def planes_and_points():
    gen = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 4, 5, 7, generator=gen, dtype=torch.float64)  # non-square: catches H/W swaps
    points = torch.rand(2, 50, 3, generator=gen, dtype=torch.float64) * 2.2 - 1.1  # some outside (zero padding)
    return planes, points


def test_sample_triplane_matches_manual_bilinear(planes_and_points):
    planes, points = planes_and_points
    ref = reference_lookup(planes.numpy(), points.numpy())
    concat = sample_triplane(planes, points, "concat").numpy()
    np.testing.assert_allclose(concat, ref.reshape(2, 50, 12), atol=1e-12)
    np.testing.assert_allclose(sample_triplane(planes, points, "mean").numpy(), ref.mean(axis=2), atol=1e-12)
    np.testing.assert_allclose(sample_triplane(planes, points, "sum").numpy(), ref.sum(axis=2), atol=1e-12)


def test_sample_triplane_pixel_centres_and_plane_order():
    # Plane k holds value 10 k + 1 at one pixel only; a point at that pixel centre reads it exactly.
    planes = torch.zeros(1, 3, 1, 4, 8, dtype=torch.float64)
    row, col = 1, 5
    for k in range(3):
        planes[0, k, 0, row, col] = 10 * k + 1
    x_col, y_row = (2 * col + 1) / 8 - 1, (2 * row + 1) / 4 - 1
    point = torch.tensor([[[x_col, y_row, 0.9]]], dtype=torch.float64)  # (p0, p1) hits plane 0 only
    assert sample_triplane(planes, point).flatten().tolist() == [1.0, 0.0, 0.0]
    point = torch.tensor([[[x_col, 0.9, y_row]]], dtype=torch.float64)  # (p0, p2) hits plane 1 only
    assert sample_triplane(planes, point).flatten().tolist() == [0.0, 11.0, 0.0]
    point = torch.tensor([[[0.9, x_col, y_row]]], dtype=torch.float64)  # (p1, p2) hits plane 2 only
    assert sample_triplane(planes, point).flatten().tolist() == [0.0, 0.0, 21.0]


def test_sample_triplane_gradients_flow(planes_and_points):
    planes, points = planes_and_points
    planes, points = planes.clone().requires_grad_(), (points * 0.8).requires_grad_()
    sample_triplane(planes, points).sum().backward()
    assert planes.grad.abs().sum() > 0 and points.grad.abs().sum() > 0


def test_sample_triplane_rejects_bad_input(planes_and_points):
    planes, points = planes_and_points
    with pytest.raises(ValueError, match="reduce"):
        sample_triplane(planes, points, "max")
    with pytest.raises(ValueError, match="planes"):
        sample_triplane(planes[:, :2], points)
    with pytest.raises(ValueError, match="points"):
        sample_triplane(planes, points[..., :2])
    with pytest.raises(ValueError, match="batch"):
        sample_triplane(planes, points[:1])
    with pytest.raises(ValueError, match="dtype"):
        sample_triplane(planes, points.float())
    bad = points.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sample_triplane(planes, bad)


def test_pyramid_levels_use_antialiased_filter():
    gen = torch.Generator().manual_seed(1)
    planes = torch.rand(1, 3, 2, 16, 32, generator=gen, dtype=torch.float64)
    levels = triplane_pyramid(planes, 3)
    assert [tuple(level.shape) for level in levels] == [(1, 3, 2, 16, 32), (1, 3, 2, 8, 16), (1, 3, 2, 4, 8)]
    assert levels[0] is planes
    # Antialiased bilinear downsampling by 2 = separable triangle filter [1, 3, 3, 1] / 8 (away from the border).
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
    image = planes[0, 1, 0].numpy()
    for i in range(1, 7):
        for j in range(1, 15):
            window = image[2 * i - 1 : 2 * i + 3, 2 * j - 1 : 2 * j + 3]
            assert levels[1][0, 1, 0, i, j].item() == pytest.approx(taps @ window @ taps, abs=1e-12)


def test_pyramid_sum_over_levels_mean_over_planes_constant():
    values = torch.tensor([[1.0, -2.0], [3.0, 0.5], [2.0, 4.0]], dtype=torch.float64)  # (plane, channel)
    planes = values[None, :, :, None, None].expand(1, 3, 2, 32, 32).contiguous()
    points = (torch.rand(1, 40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5) * 1.5
    out = sample_triplane_pyramid(triplane_pyramid(planes, 3), points)
    expected = 3 * values.mean(dim=0)  # 3 levels summed, planes averaged
    np.testing.assert_allclose(out[0].numpy(), expected.expand(40, 2).numpy(), atol=1e-12)


def test_pyramid_linear_ramp():
    # Plane k, channel c: a x_col + b y_row + offset on pixel centres; filters and bilinear reads preserve it inside.
    height, width = 32, 64
    coeffs = np.array([[[0.5, -1.0, 0.2], [2.0, 0.3, -0.1]], [[-0.7, 0.4, 1.0], [0.0, 1.5, 0.3]],
                       [[1.2, 0.8, -0.5], [-0.3, -0.6, 0.9]]])  # fmt: skip
    y_row = (2 * np.arange(height) + 1) / height - 1
    x_col = (2 * np.arange(width) + 1) / width - 1
    ramp = np.stack([np.stack([a * x_col[None, :] + b * y_row[:, None] + c for a, b, c in plane]) for plane in coeffs])
    planes = torch.from_numpy(ramp)[None]
    points = (torch.rand(1, 60, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1) * 0.6
    out = sample_triplane_pyramid(triplane_pyramid(planes, 3), points)[0].numpy()
    p = points[0].numpy()
    per_plane = np.stack(
        [coeffs[k, :, 0] * p[:, [col]] + coeffs[k, :, 1] * p[:, [row]] + coeffs[k, :, 2]
         for k, (col, row) in enumerate(PLANE_PAIRS)]
    )  # fmt: skip
    np.testing.assert_allclose(out, 3 * per_plane.mean(axis=0), atol=1e-10)


def test_pyramid_rejects_bad_input():
    planes = torch.zeros(1, 3, 2, 12, 12)
    with pytest.raises(ValueError, match="halved"):
        triplane_pyramid(planes, 4)
    with pytest.raises(ValueError, match="n_levels"):
        triplane_pyramid(planes, 0)
    with pytest.raises(ValueError, match="at least one"):
        sample_triplane_pyramid([], torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="channel"):
        sample_triplane_pyramid([planes, torch.zeros(1, 3, 3, 6, 6)], torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------------------------
def numpy_mlp(decoder: TriplaneDecoder, features: np.ndarray, hidden) -> np.ndarray:
    state = {k: v.detach().numpy() for k, v in decoder.state_dict().items()}
    n_linear = len(state) // 2
    h = features
    for i in range(n_linear):
        h = h @ state[f"layers.{2 * i}.weight"].T + state[f"layers.{2 * i}.bias"]
        if i < n_linear - 1:
            h = hidden(h)
    return h


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_decoder_triposr_keys_and_values():
    torch.manual_seed(0)
    decoder = TriplaneDecoder.triposr().double()
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    expected = {"layers.0.weight": (64, 120), "layers.0.bias": (64,), "layers.18.weight": (4, 64),
                "layers.18.bias": (4,)}  # fmt: skip
    expected |= {
        f"layers.{i}.{p}": (64, 64) if p == "weight" else (64,) for i in range(2, 18, 2) for p in ("weight", "bias")
    }
    assert shapes == expected
    # TripoSR checkpoint keys load unchanged.
    decoder.load_state_dict({k: torch.randn(s, dtype=torch.float64) * 0.2 for k, s in shapes.items()}, strict=True)
    features = np.random.default_rng(0).normal(size=(5, 7, 120))
    raw = numpy_mlp(decoder, features, lambda x: x * sigmoid(x))
    out = decoder(torch.from_numpy(features))
    assert out["density"].shape == (5, 7, 1) and out["rgb"].shape == (5, 7, 3)
    np.testing.assert_allclose(out["density"].detach().numpy(), np.exp(raw[..., :1] - 1.0), rtol=1e-12)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), sigmoid(raw[..., 1:]), rtol=1e-12)


def test_decoder_g3dr_activations():
    torch.manual_seed(1)
    decoder = TriplaneDecoder.g3dr().double()
    assert [type(m).__name__ for m in decoder.layers] == ["Linear", "Softplus", "Linear"]
    features = np.random.default_rng(1).normal(size=(9, 64))
    raw = numpy_mlp(decoder, features, lambda x: np.log1p(np.exp(x)))
    out = decoder(torch.from_numpy(features))
    np.testing.assert_allclose(out["density"].detach().numpy(), np.log1p(np.exp(raw[:, :1] - 1)), rtol=1e-12)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), sigmoid(raw[:, 1:]) * 1.002 - 0.001, rtol=1e-12)


def test_decoder_relu_and_trunc_exp():
    decoder = TriplaneDecoder(6, 8, 2, activation="relu", density_activation="trunc_exp", density_bias=0.5).double()
    features = np.random.default_rng(2).normal(size=(4, 6))
    raw = numpy_mlp(decoder, features, lambda x: np.maximum(x, 0))
    out = decoder(torch.from_numpy(features))
    np.testing.assert_allclose(out["density"].detach().numpy(), np.exp(raw[:, :1] + 0.5), rtol=1e-12)


def test_trunc_exp_gradient_is_clamped():
    x = torch.tensor([-3.0, 0.0, 10.0, 15.0, 20.0, 40.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    np.testing.assert_allclose(y.detach().numpy(), np.exp(x.detach().numpy()), rtol=1e-12)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(np.minimum(x.detach().numpy(), 15.0)), rtol=1e-12)


def test_decoder_rejects_bad_settings():
    with pytest.raises(ValueError, match="activation"):
        TriplaneDecoder(activation="tanh")
    with pytest.raises(ValueError, match="density_activation"):
        TriplaneDecoder(density_activation="relu")
    with pytest.raises(ValueError, match="color_activation"):
        TriplaneDecoder(color_activation="tanh")
    with pytest.raises(ValueError, match="n_hidden_layers"):
        TriplaneDecoder(n_hidden_layers=0)
    with pytest.raises(ValueError, match="weight_init"):
        TriplaneDecoder(weight_init="xavier")
    with pytest.raises(ValueError, match=r"\(\.\.\., 120\)"):
        TriplaneDecoder()(torch.zeros(3, 64))
