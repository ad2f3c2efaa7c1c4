"""Input preparation: alpha sources, crop / pad geometry, and bad images."""

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from monorecon.io.images import load_image
from monorecon.preprocess import PreprocessConfig, border_alpha, matting_alpha, preprocess_image, reframe_views


def _square_on(background, size=(60, 80), box=(10, 30, 20, 60), colour=(1.0, 0.0, 0.0)):
    img = np.empty((*size, 3), np.float32)
    img[:] = background
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1] = colour
    return img


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_rgba_crop_pad_and_composite():
    img = np.zeros((50, 70, 4), np.float32)
    img[5:25, 10:50] = (0.2, 0.4, 0.6, 1.0)  # a 20 x 40 object
    out = preprocess_image(img, PreprocessConfig(foreground_ratio=0.8, output_size=None))
    side = round(40 / 0.8)
    assert out.rgb.shape == (side, side, 3)
    r0, r1, c0, c1 = _bbox(out.alpha > 0.5)
    assert (c1 - c0, r1 - r0) == (40, 20)
    # Centred: equal margins (to a pixel) on both axes.
    assert abs(c0 - (side - c1)) <= 1 and abs(r0 - (side - r1)) <= 1
    np.testing.assert_allclose(out.rgb[0, 0], 0.5)
    np.testing.assert_allclose(out.rgb[(r0 + r1) // 2, (c0 + c1) // 2], (0.2, 0.4, 0.6), atol=1e-6)


def test_border_flood_fill_finds_object_on_plain_background():
    img = _square_on((1.0, 1.0, 1.0))
    img += np.random.default_rng(0).normal(0, 0.01, img.shape).astype(np.float32)  # sensor noise
    alpha = border_alpha(np.clip(img, 0, 1))
    assert _bbox(alpha > 0.5) == (10, 30, 20, 60)
    assert alpha.sum() == 20 * 40


def test_border_flood_fill_keeps_enclosed_background_as_foreground():
    # Documented limit: background enclosed by the object (a ring) is not reached by the fill.
    img = _square_on((1.0, 1.0, 1.0))
    img[15:25, 30:50] = 1.0
    alpha = border_alpha(img)
    assert alpha[20, 40] == 1.0


def test_cluttered_background_is_refused():
    noise = np.random.default_rng(1).uniform(size=(40, 40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="not plain"):
        preprocess_image(noise)


def test_empty_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha is empty"):
        preprocess_image(np.zeros((20, 20, 4), np.float32))


def test_no_remove_bg_keeps_image_and_pads_square():
    img = _square_on((0.1, 0.9, 0.1), size=(20, 40))
    out = preprocess_image(img, PreprocessConfig(remove_background=False, output_size=None))
    assert out.rgb.shape == (40, 40, 3)
    np.testing.assert_allclose(out.rgb[10:30], img)
    np.testing.assert_allclose(out.rgb[:10], 0.5)


def test_bad_arrays_and_options():
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        preprocess_image(np.full((4, 4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="foreground_ratio"):
        PreprocessConfig(foreground_ratio=0.0)
    eight_bit_as_float = _square_on((255.0, 255.0, 255.0), colour=(255.0, 0.0, 0.0))  # astype without / 255
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \[0, 255\] \(divide an 8-bit image by 255"):
        preprocess_image(eight_bit_as_float)
    with pytest.raises(ValueError, match="dtype int32"):
        preprocess_image(np.zeros((4, 4, 3), np.int32))
    wide = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (2, 20000, 3))  # as a 20000 px wide PNG is refused
    with pytest.raises(ValueError, match="image is 20000x2, larger than the maximum side 16384"):
        preprocess_image(wide)


def test_a_tensor_that_requires_grad_is_prepared_as_its_values():
    image = torch.from_numpy(_square_on((1.0, 1.0, 1.0), colour=(1.0, 0.0, 0.0)).copy()).requires_grad_(True)
    prepared = preprocess_image(image)
    np.testing.assert_array_equal(prepared.rgba(), preprocess_image(image.detach().numpy()).rgba())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_are_scaled_to_unit_floats(dtype):
    top = np.iinfo(dtype).max
    image = np.zeros((50, 70, 4), dtype)
    image[5:25, 10:50] = (top // 5, top // 2, top, top)  # an opaque 20 x 40 object
    config = PreprocessConfig(foreground_ratio=0.8, output_size=None)
    out = preprocess_image(image, config)
    expected = preprocess_image(image.astype(np.float32) / top, config)
    np.testing.assert_array_equal(out.rgb, expected.rgb)
    np.testing.assert_array_equal(out.alpha, expected.alpha)
    r0, r1, c0, c1 = _bbox(out.alpha > 0.5)
    np.testing.assert_allclose(out.rgb[(r0 + r1) // 2, (c0 + c1) // 2], (0.2, (top // 2) / top, 1.0), atol=1e-6)


def test_matting_model_onnx(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # A stand-in salient-object model: the saliency is the first (red) input channel.
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["starts"], value=helper.make_tensor("s", TensorProto.INT64, [1], [0])),
            helper.make_node("Constant", [], ["ends"], value=helper.make_tensor("e", TensorProto.INT64, [1], [1])),
            helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["saliency"]),
        ],
        "fake_u2net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, [1, 1, 320, 320])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "fake.onnx"
    onnx.save(model, path)
    img = _square_on((0.0, 0.0, 1.0), size=(64, 64), box=(16, 48, 8, 40))
    import onnxruntime

    loads = []
    session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: loads.append(a) or session(*a, **k))
    alpha = matting_alpha(img, path)
    assert _bbox(alpha > 0.5) == (16, 48, 8, 40)
    np.testing.assert_array_equal(matting_alpha(img, path), alpha)
    assert len(loads) == 1  # loaded once for a folder of photos
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                                doc_string="changed"), path)  # fmt: skip
    matting_alpha(img, path)
    assert len(loads) == 2  # a changed file is loaded again
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load matting model"):
        matting_alpha(img, tmp_path / "bad.onnx")


def test_load_image_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "corrupt.png")
    Image.new("L", (20000, 1)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="larger than"):
        load_image(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=f"^{tmp_path} is a folder, not an image$"):
        load_image(tmp_path)
    Image.fromarray(np.full((3, 4), 2.5, np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"a float image must hold values in \[0, 1\]"):
        load_image(tmp_path / "hdr.tif")


def test_load_image_is_silent_between_pils_bomb_warning_and_its_limit(tmp_path, monkeypatch):
    """``max_side`` decides what is too large: PIL's decompression-bomb warning must not reach the user."""
    import warnings

    Image.new("RGB", (12, 12), (10, 20, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: PIL warns above 100, refuses above 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "big.png").shape == (12, 12, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70)
    with pytest.raises(ValueError, match=r"cannot read image .*decompression bomb"):
        load_image(tmp_path / "big.png")


def test_load_image_modes(tmp_path):
    Image.new("LA", (4, 3), (128, 255)).save(tmp_path / "la.png")
    Image.new("I;16", (4, 3), 65535).save(tmp_path / "deep.png")
    la, deep = load_image(tmp_path / "la.png"), load_image(tmp_path / "deep.png")
    assert la.shape == (3, 4, 4) and la[0, 0, 3] == 1.0
    assert deep.shape == (3, 4, 3) and deep.max() == pytest.approx(1.0)
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(grey, mode="F").save(tmp_path / "float.tif")  # 32-bit float TIFF: read as it is, not as 0..255
    np.testing.assert_array_equal(load_image(tmp_path / "float.tif"), np.repeat(grey[..., None], 3, axis=-1))


def test_reframe_views_keeps_empty_images_and_refuses_bad_input():
    import torch

    images = torch.zeros(2, 16, 16, 4)
    images[1, 2:6, 9:15] = 1.0  # a 4 x 6 box centred at (u, v) = (12, 4)
    framed, zoom, shift = reframe_views(images, torch.tensor([0.5, 0.75]), 1.9, 40.0)
    assert torch.equal(framed[0], images[0]) and zoom[0] == 1.0 and shift[0].tolist() == [0.0, 0.0, 0.0]
    assert zoom[1].item() == pytest.approx(0.75 * 16 / 6)
    inside = framed[1, ..., 3] > 0.5
    rows, cols = inside.any(dim=1).nonzero()[:, 0], inside.any(dim=0).nonzero()[:, 0]
    assert (int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1) == (2, 14, 4, 12)  # 12 x 8, centred
    focal = 8 / np.tan(np.radians(20.0))
    assert shift[1, :2].tolist() == pytest.approx([2.0 * (8 - 12) * 1.9 / focal, -2.0 * (8 - 4) * 1.9 / focal])
    for bad_images, ratio in [
        (torch.zeros(2, 16, 12, 4), [0.5, 0.5]),
        (torch.zeros(2, 16, 16, 3), [0.5, 0.5]),
        (torch.zeros(16, 16, 4), [0.5]),
    ]:
        with pytest.raises(ValueError, match="square"):
            reframe_views(bad_images, torch.tensor(ratio), 1.9, 40.0)
    for ratio in ([0.0, 0.5], [0.5, 1.5], [float("nan"), 0.5], [0.5]):
        with pytest.raises(ValueError, match="ratio"):
            reframe_views(images, torch.tensor(ratio), 1.9, 40.0)


def test_composite_blends_half_transparent_pixels_with_the_background_grey():
    """Straight alpha over grey g: a pixel of colour c and alpha a becomes a c + (1 - a) g (g = 0.25 here, not the
    default, so a hard-coded 0.5 fails); the alpha itself is kept."""
    img = np.zeros((40, 50, 4), np.float32)
    img[10:30, 10:40] = (0.1, 0.2, 0.3, 1.0)  # opaque object: fixes the bounding box
    img[15:20, 15:20] = (1.0, 0.0, 0.4, 0.6)  # a translucent patch inside it
    img[22:25, 30:35] = (0.0, 1.0, 0.8, 0.2)  # a faint patch inside it (below alpha_threshold, still inside the box)
    out = preprocess_image(img, PreprocessConfig(background_gray=0.25, foreground_ratio=0.9, output_size=None))
    for colour, alpha, size in [((1.0, 0.0, 0.4), 0.6, 25), ((0.0, 1.0, 0.8), 0.2, 15), ((0.1, 0.2, 0.3), 1.0, 0)]:
        where = np.abs(out.alpha - alpha) < 1e-6
        if size:
            assert where.sum() == size
        expected = alpha * np.array(colour) + (1 - alpha) * 0.25
        np.testing.assert_allclose(out.rgb[where], np.broadcast_to(expected, (where.sum(), 3)), atol=1e-6)
    np.testing.assert_allclose(out.rgb[out.alpha == 0], 0.25)


def test_flood_fill_uses_the_median_border_colour_with_an_object_on_the_border():
    """An object touching the image border fills part of it: the background colour is the border's median (the
    majority), not its mean (pulled toward the object), and the mask is exactly the object."""
    img = _square_on((1.0, 1.0, 1.0), box=(0, 60, 0, 15))  # red column over the whole left edge
    img[20:30, 60:80] = (0.0, 0.0, 1.0)  # a blue block on the right edge: 98 of the 276 border pixels are object
    expected = np.zeros((60, 80), np.float32)
    expected[:, :15] = expected[20:30, 60:] = 1.0
    np.testing.assert_array_equal(border_alpha(img), expected)
    out = preprocess_image(img, PreprocessConfig(foreground_ratio=1.0, output_size=None))
    assert out.alpha.shape == (80, 80)  # the crop spans the whole width: 80 x 60, padded to 80 x 80
    np.testing.assert_array_equal(out.alpha[10:70], expected)
    np.testing.assert_array_equal(out.alpha[:10], 0.0)


def test_flood_fill_reaches_background_from_every_side():
    """Background only reachable through one image edge (inside a bracket open to the right) is background; and
    the background colour is read from all four edges: in a tall narrow image whose top and bottom rows are all
    object, the side columns are what make white the majority."""
    bracket = _square_on((1.0, 1.0, 1.0), box=(10, 14, 40, 80))
    bracket[46:50, 40:80] = bracket[10:50, 40:44] = (1.0, 0.0, 0.0)
    expected = np.zeros((60, 80), np.float32)
    expected[10:14, 40:] = expected[46:50, 40:] = expected[10:50, 40:44] = 1.0
    np.testing.assert_array_equal(border_alpha(bracket), expected)
    bars = _square_on((1.0, 1.0, 1.0), size=(100, 20), box=(0, 3, 0, 20))
    bars[97:] = (1.0, 0.0, 0.0)
    expected = np.zeros((100, 20), np.float32)
    expected[:3] = expected[97:] = 1.0
    np.testing.assert_array_equal(border_alpha(bars), expected)


@pytest.mark.parametrize("with_alpha", [False, True])
def test_tall_object_stays_tall_at_its_foreground_ratio_after_resizing(with_alpha):
    """A 80 x 10 (H x W) bar in a 100 x 60 photo, framed at ratio 0.5 and resized to 64: its box must be 32 x 4
    pixels (not 4 x 32: H and W swapped), centred, of its own colour; the longer side / 64 is the ratio."""
    img = _square_on((1.0, 1.0, 1.0), size=(100, 60), box=(10, 90, 25, 35), colour=(0.0, 0.5, 1.0))
    if with_alpha:
        img = np.concatenate([img, np.zeros((100, 60, 1), np.float32)], axis=-1)
        img[10:90, 25:35, 3] = 1.0
    out = preprocess_image(img, PreprocessConfig(foreground_ratio=0.5, output_size=64))
    assert out.rgb.shape == (64, 64, 3) and out.alpha.shape == (64, 64)
    r0, r1, c0, c1 = _bbox(out.alpha > 0.5)
    assert abs((r1 - r0) - 32) <= 1 and abs((c1 - c0) - 4) <= 1
    assert abs((r1 - r0) / 64 - 0.5) <= 1 / 64
    assert abs(r0 - (64 - r1)) <= 1 and abs(c0 - (64 - c1)) <= 1
    # Colour and alpha resampled alike (resizing is linear): every pixel is alpha * colour + (1 - alpha) * grey.
    expected = out.alpha[..., None] * np.array([0.0, 0.5, 1.0]) + (1 - out.alpha[..., None]) * 0.5
    np.testing.assert_allclose(out.rgb, expected, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.3, 0.65, 1.0])
def test_foreground_ratio_sets_the_object_size_in_the_output(ratio):
    """The object's longer bounding-box side is ``foreground_ratio`` of the output side, to a pixel; a 24 x 36
    object in a non-square 50 x 90 image, resized to 100."""
    img = np.zeros((50, 90, 4), np.float32)
    img[13:37, 40:76] = (0.9, 0.1, 0.1, 1.0)
    out = preprocess_image(img, PreprocessConfig(foreground_ratio=ratio, output_size=100))
    r0, r1, c0, c1 = _bbox(out.alpha > 0.5)
    assert abs((c1 - c0) - 100 * ratio) <= 1
    assert abs((r1 - r0) - 100 * ratio * 24 / 36) <= 1


def test_source_box_places_the_prepared_square_in_the_photo():
    """A 70 x 80 dark box at rows 50-119, columns 180-259 of a 300 x 200 white photo, framed at 0.85: the square's
    side is round(80 / 0.85) = 94, the box centred in it with (94 - 80) // 2 = 7 columns and (94 - 70) // 2 = 12
    rows before it, so the square starts at (180 - 7, 50 - 12). Without background removal the whole photo is padded
    to a 300-pixel square, 50 rows above it."""
    photo = np.ones((200, 300, 3), np.float32)
    photo[50:120, 180:260] = 0.2
    prepared = preprocess_image(photo, PreprocessConfig(foreground_ratio=0.85, output_size=64))
    assert prepared.source_box == (173.0, 38.0, 94.0) and prepared.source_size == (300, 200)
    # The box's edges land where the mapping q -> left + q * side / S says: source column 180 at q = 7 * 64 / 94.
    columns = np.nonzero(prepared.alpha.max(axis=0) > 0.5)[0]
    assert abs(columns[0] - 7 * 64 / 94) < 1 and abs(columns[-1] + 1 - 87 * 64 / 94) < 1
    whole = preprocess_image(photo, PreprocessConfig(remove_background=False, output_size=64))
    assert whole.source_box == (0.0, -50.0, 300.0) and whole.source_size == (300, 200)


def test_a_tiny_object_is_warned_about():
    """An object of a few pixels becomes a blur when enlarged to the model's input: the user is told."""
    tiny = _square_on((1.0, 1.0, 1.0), size=(200, 200), box=(100, 110, 100, 106))
    with pytest.warns(UserWarning, match="the object spans only 10 pixels"):
        preprocess_image(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess_image(_square_on((1.0, 1.0, 1.0), size=(200, 200), box=(50, 150, 60, 100)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha_threshold": math.nan}, r"alpha_threshold must lie in \[0, 1\], got nan"),
        ({"alpha_threshold": 1.0}, "alpha_threshold must be below 1"),
        ({"border_tolerance": -1.0}, "border_tolerance must lie in"),
        ({"min_plain_border": 5.0}, r"min_plain_border must lie in \[0, 1\]"),
        ({"remove_background": "no"}, "remove_background must be True or False, got 'no'"),  # "no" is truthy
        ({"foreground_ratio": "0.8"}, "foreground_ratio must be a number, got '0.8'"),
        ({"matting_model": 5}, "matting_model must be a path, got 5"),
    ],
)
def test_preprocess_options_are_checked(options, message):
    """alpha_threshold=nan failed later as 'no foreground: the alpha is empty'; the others passed silently or raised
    a bare TypeError."""
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**options)
