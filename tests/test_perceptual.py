"""Perceptual features and losses (monorecon.losses.perceptual): SSIM against a direct numpy implementation, VGG
layer layout and weight loading, LPIPS formula, substitutes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monorecon.losses.perceptual import (
    MS_SSIM_WEIGHTS,
    GradientPyramidFeatures,
    PerceptualLoss,
    VGGFeatures,
    chamfer_feature_extractor,
    gradient_l1,
    ms_ssim,
    perceptual_min_size,
    ssim,
)


# --------------------------------------------------------------------------------------------------------------------
# Direct SSIM reference: explicit loop over window positions with the 2-D Gaussian weights (Wang et al. 2004).
# --------------------------------------------------------------------------------------------------------------------
def _ssim_numpy(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of two (C, H, W) images over valid windows."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    ssims, css = [], []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                mu_a, mu_b = (w * a).sum(), (w * b).sum()
                var_a = (w * (a - mu_a) ** 2).sum()
                var_b = (w * (b - mu_b) ** 2).sum()
                cov = (w * (a - mu_a) * (b - mu_b)).sum()
                cs = (2 * cov + c2) / (var_a + var_b + c2)
                lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
                ssims.append(lum * cs)
                css.append(cs)
    return float(np.mean(ssims)), float(np.mean(css))


def _pool2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def _images(seed: int, shape=(2, 3, 20, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_ssim_matches_direct_numpy():
    x, y = _images(0)
    expected = [_ssim_numpy(x[b].numpy(), y[b].numpy())[0] for b in range(2)]
    assert np.allclose(ssim(x, y).numpy(), expected, atol=1e-6)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_ms_ssim_matches_direct_numpy():
    x, y = _images(1, (1, 3, 48, 44))  # 48 -> 24 -> 12: three scales (6 < 11)
    scales = 3
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    a, b = x[0].numpy(), y[0].numpy()
    value = 1.0
    for level in range(scales):
        s, cs = _ssim_numpy(a, b)
        value *= max(s if level == scales - 1 else cs, 1e-6) ** weights[level]
        a, b = _pool2(a), _pool2(b)
    assert abs(float(ms_ssim(x, y)[0]) - value) < 1e-6
    assert abs(float(ms_ssim(x, x)[0]) - 1.0) < 1e-12


def test_ssim_rejects_bad_input():
    x, y = _images(2)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(x[..., :10, :10], y[..., :10, :10])
    with pytest.raises(ValueError, match="image shapes differ"):
        ssim(x, y[..., :-1])
    with pytest.raises(ValueError, match="x must have shape"):
        ssim(x[0], y[0])


def test_gradient_l1_hand_case():
    ramp = torch.arange(4.0).repeat(4, 1)[None, None]  # x-gradient 1, y-gradient 0
    flat = torch.zeros_like(ramp)
    # one scale: 0.5 * (mean |dx| + mean |dy|) = 0.5 * (1 + 0)
    assert abs(float(gradient_l1(ramp, flat, scales=1)[0]) - 0.5) < 1e-6


def test_substitute_perceptual_loss_orders_distortions():
    loss = PerceptualLoss()
    assert not loss.uses_vgg
    x, _ = _images(3, (1, 3, 64, 64))
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    values = [float(loss(x, (x + s * noise).clamp(0, 1))[0]) for s in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] < 1e-9
    assert values == sorted(values)


VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


@pytest.mark.parametrize(("arch", "convs"), [("vgg16", VGG16_CONVS), ("vgg19", VGG19_CONVS)])
def test_vgg_state_dict_keys_match_torchvision(arch, convs):
    keys = VGGFeatures(arch, layers=("relu1_1",)).state_dict().keys()
    assert sorted(keys) == sorted([f"features.{i}.{p}" for i in convs for p in ("weight", "bias")])


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_vgg_activations_match_a_hand_written_forward_pass(tmp_path, arch):
    """The first three blocks' activations against a forward pass written here from torchvision's layer indices
    (convolutions 0, 2 | pool | 5, 7 | pool | 10 of ``features``), on inputs normalised by ImageNet's mean and std."""
    torch.save(VGGFeatures(arch, layers=("relu1_1",), seed=7).state_dict(), tmp_path / "vgg.pth")
    state = torch.load(tmp_path / "vgg.pth")
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(8))

    def conv_relu(h: torch.Tensor, index: int) -> torch.Tensor:
        weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        return torch.nn.functional.conv2d(h, weight, bias, padding=1).clamp_min(0)

    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    relu1_2 = conv_relu(conv_relu((x - mean) / std, 0), 2)
    relu2_2 = conv_relu(conv_relu(torch.nn.functional.max_pool2d(relu1_2, 2), 5), 7)
    relu3_1 = conv_relu(torch.nn.functional.max_pool2d(relu2_2, 2), 10)
    out = VGGFeatures(arch, tmp_path / "vgg.pth", layers=("relu1_2", "relu2_2", "relu3_1"))(x)
    for name, expected in (("relu1_2", relu1_2), ("relu2_2", relu2_2), ("relu3_1", relu3_1)):
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-5)


def test_vgg_loads_local_weights_and_layer_shapes(tmp_path):
    source = VGGFeatures("vgg19", layers=("relu3_1",), seed=1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier: ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = VGGFeatures("vgg19", path, layers=("relu1_2", "relu3_1"), seed=2)
    x = torch.rand(1, 3, 32, 40)
    out = loaded(x)
    assert out["relu1_2"].shape == (1, 64, 32, 40)
    assert out["relu3_1"].shape == (1, 256, 8, 10)
    assert torch.allclose(out["relu3_1"], source(x)["relu3_1"])
    assert torch.allclose(chamfer_feature_extractor(path)(x), source(x)["relu3_1"])
    del state["features.0.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing VGG tensors"):
        VGGFeatures("vgg19", path)
    with pytest.raises(ValueError, match="unknown or no VGG layers"):
        VGGFeatures("vgg19", layers=("relu9_9",))
    with pytest.raises(ValueError, match="weights file not found"):
        VGGFeatures("vgg16", tmp_path / "missing.pth")


def test_lpips_formula_with_local_weights(tmp_path):
    vgg = VGGFeatures("vgg16", layers=("relu1_2", "relu2_2"), seed=3)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    g = torch.Generator().manual_seed(5)
    lin = {"lin0.model.1.weight": torch.rand(1, 64, 1, 1, generator=g),
           "lin1.model.1.weight": torch.rand(1, 128, 1, 1, generator=g)}  # fmt: skip
    torch.save(lin, tmp_path / "lpips.pth")
    loss = PerceptualLoss(tmp_path / "vgg16.pth", tmp_path / "lpips.pth", layers=("relu1_2", "relu2_2"))
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    fx, fy = vgg(x), vgg(y)
    expected = torch.zeros(2)
    for k, name in enumerate(("relu1_2", "relu2_2")):
        a = fx[name] / (fx[name].norm(dim=1, keepdim=True) + 1e-10)
        b = fy[name] / (fy[name].norm(dim=1, keepdim=True) + 1e-10)
        weight = lin[f"lin{k}.model.1.weight"].reshape(1, -1, 1, 1)
        expected += ((a - b) ** 2 * weight).sum(1).mean((1, 2))
    assert torch.allclose(loss(x, y), expected, atol=1e-5)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="needs weights_path"):
        PerceptualLoss(lpips_weights_path=tmp_path / "lpips.pth")


def test_gradient_pyramid_features():
    features = GradientPyramidFeatures(stride=4)
    colour = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    out = features(colour.expand(2, 3, 16, 20))
    assert out.shape == (2, features.out_channels, 4, 5)
    assert torch.allclose(out[:, :3], colour.expand(2, 3, 4, 5))  # cell colour
    assert torch.allclose(out[:, 6:], torch.zeros(2, 9, 4, 5), atol=1e-5)  # no gradients, no edges
    slope = 0.01
    ramp = (torch.arange(16.0) * slope).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    grads = features(ramp)[:, 6:12]
    # central differences are exact for a ramp except at the replicated border: check interior cells.
    assert torch.allclose(grads[:, :3, :, 1:-1], torch.full((1, 3, 4, 2), slope * 4), atol=1e-6)
    assert torch.allclose(grads[:, 3:], torch.zeros(1, 3, 4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the feature stride"):
        features(torch.rand(1, 3, 2, 2))
    assert math.isclose(float(chamfer_feature_extractor()(torch.rand(1, 3, 8, 8)).shape[1]), 15)


def _gradient_l1_numpy(x: np.ndarray, y: np.ndarray, scales: int) -> float:
    """Forward-difference gradient L1 of two (C, H, W) images, averaged over ``scales`` 2x mean-pooled levels."""
    values = []
    for _ in range(scales):
        if min(x.shape[1:]) < 2:  # a level of one pixel has no gradient
            break
        d = x - y
        values.append(0.5 * (np.abs(np.diff(d, axis=2)).mean() + np.abs(np.diff(d, axis=1)).mean()))
        x, y = _pool2(x), _pool2(y)
    return float(np.mean(values))


def test_gradient_l1_averages_the_pyramid_levels():
    """Three levels against the direct numpy form: the levels are 2x mean-pooled (not subsampled) and their mean
    (not their sum) is returned; a level of 3 pixels counts, one of a single pixel is skipped (12 x 20: levels
    12 x 20, 6 x 10, 3 x 5; 4 x 6: 4 x 6, 2 x 3 and a skipped 1 x 1)."""
    for shape in ((2, 3, 12, 20), (2, 3, 4, 6)):
        x, y = _images(6, shape)
        expected = [_gradient_l1_numpy(x[b].numpy(), y[b].numpy(), 3) for b in range(2)]
        np.testing.assert_allclose(gradient_l1(x, y, scales=3).numpy(), expected, rtol=1e-9)


def test_substitute_perceptual_loss_is_one_minus_ms_ssim_plus_weighted_gradients():
    """Without VGG weights the loss is ``(1 - MS-SSIM) + grad_weight * gradient_l1`` (module docstring): both terms
    from the direct numpy forms (24 x 26 images: two SSIM scales, weights renormalised), with grad_weight 0.7."""
    x, y = _images(7, (1, 3, 24, 26))
    a, b = x[0].numpy(), y[0].numpy()
    weights = np.array(MS_SSIM_WEIGHTS[:2]) / sum(MS_SSIM_WEIGHTS[:2])
    cs0 = _ssim_numpy(a, b)[1]
    s1 = _ssim_numpy(_pool2(a), _pool2(b))[0]
    structure = cs0 ** weights[0] * s1 ** weights[1]
    expected = (1.0 - structure) + 0.7 * _gradient_l1_numpy(a, b, 3)
    assert float(PerceptualLoss(grad_weight=0.7)(x, y)[0]) == pytest.approx(expected, rel=1e-9)
    # The default weight of the gradient term is 1.
    assert float(PerceptualLoss()(x, y)[0]) == pytest.approx(expected + 0.3 * _gradient_l1_numpy(a, b, 3), rel=1e-9)


def test_lpips_without_linear_weights_sums_unit_normalised_squared_differences(tmp_path):
    """With VGG weights but no LPIPS linear layers every channel weighs 1: per layer, the spatial mean of the squared
    distance between channel-unit-normalised activations, summed over the layers."""
    vgg = VGGFeatures("vgg16", layers=("relu1_2", "relu2_2"), seed=9)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    loss = PerceptualLoss(tmp_path / "vgg16.pth", layers=("relu1_2", "relu2_2"))
    g = torch.Generator().manual_seed(10)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    fx, fy = vgg(x), vgg(y)
    expected = np.zeros(2)
    for name in ("relu1_2", "relu2_2"):
        a, b = fx[name].double().numpy(), fy[name].double().numpy()
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        expected += ((a - b) ** 2).sum(1).mean((1, 2))
    np.testing.assert_allclose(loss(x, y).numpy(), expected, rtol=1e-4)


def test_images_too_small_for_the_loss_are_refused_in_one_line(tmp_path):
    """The smallest side each loss scores: 11 (MS-SSIM's window) for the substitute; for VGG, 2 to the number of
    2x2 poolings before the deepest layer (relu5_3: 4 -> 16, relu2_2: 1 -> 2, pool2: 2 -> 4). Smaller images get a
    clear error, not VGG's 'output size is too small' from deep inside the network."""
    assert perceptual_min_size(False) == 11
    assert perceptual_min_size(True) == 16
    assert perceptual_min_size(True, ("relu1_2", "relu2_2")) == 2 and perceptual_min_size(True, ("pool2",)) == 4
    torch.save(VGGFeatures("vgg16", seed=1).state_dict(), tmp_path / "vgg16.pth")
    loss = PerceptualLoss(tmp_path / "vgg16.pth")
    assert loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)).shape == (1,)
    with pytest.raises(ValueError, match=r"images of size \(15, 20\) are smaller than 16"):
        loss(torch.rand(1, 3, 15, 20), torch.rand(1, 3, 15, 20))
