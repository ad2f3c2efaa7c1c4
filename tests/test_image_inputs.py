"""Reading image files: folder listing, EXIF orientation, bit depths and transparency, against hand-built files."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from monorecon.cli.reconstruct import collect_images
from monorecon.io.images import check_image_header, load_image, pil_to_array

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def test_folder_listing_ignores_suffix_case(tmp_path):
    """Cameras write ``IMG_0001.JPG``: upper- and mixed-case suffixes are images too; other files are not."""
    names = ["photo.JPG", "x.PNG", "scan.Jpeg", "a.png", "b.TIFF", "c.WebP"]
    for name in [*names, "notes.TXT", "model.obj"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.PNG").mkdir()
    assert collect_images([tmp_path]) == sorted(tmp_path / name for name in names)


def _quadrants():
    """A 32 x 48 (H x W) RGB image of four flat 16 x 24 blocks: red, green / blue, white (top / bottom rows)."""
    pixels = np.empty((32, 48, 3), np.uint8)
    pixels[:16, :24], pixels[:16, 24:], pixels[16:, :24], pixels[16:, 24:] = RED, GREEN, BLUE, WHITE
    return pixels


@pytest.mark.parametrize(("orientation", "quarter_turns"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, quarter_turns):
    """EXIF Orientation 3 / 6 / 8 means 'rotate 180 / 90 clockwise / 90 anticlockwise to view': phone photos
    store the sensor's pixels and this tag; read without it, the object lies on its side."""
    pixels = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "phone.jpg")
    expected = np.rot90(pixels, quarter_turns).astype(np.float32) / 255  # np.rot90: k > 0 turns anticlockwise
    assert loaded.shape == expected.shape
    # JPEG is lossy: compare block interiors, away from the edges where the blocks meet.
    inner = np.ones(expected.shape[:2], bool)
    inner[:, [0, -1]] = inner[[0, -1]] = False
    for axis in (0, 1):
        half = expected.shape[axis] // 2
        inner[(slice(None),) * axis + (slice(half - 3, half + 3),)] = False
    np.testing.assert_allclose(loaded[inner], expected[inner], atol=0.05)


@pytest.mark.parametrize(("name", "byte_order", "mode"), [("le.png", "<u2", "I;16"), ("be.tif", ">u2", "I;16B")])
@pytest.mark.parametrize(
    "values",
    [[[0, 1, 255, 256], [1000, 32768, 40000, 65535]], [[0, 10, 100], [200, 250, 255]]],
    ids=["gradient", "dark"],
)
def test_16_bit_greyscale_is_divided_by_65535(tmp_path, name, byte_order, mode, values):
    """16-bit greyscale (PNG; big-endian TIFF) holds 0..65535: pixel value v reads as v / 65535, whatever the
    brightest pixel is (a dark 16-bit image must not be scaled as if it were 8-bit: up to 257 times too bright)."""
    values = np.array(values, np.uint16)
    Image.fromarray(values.astype(byte_order)).save(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        assert img.mode == mode  # how PIL opens it: the branch under test
    expected = values.astype(np.float64) / 65535
    np.testing.assert_allclose(load_image(tmp_path / name), np.repeat(expected[..., None], 3, axis=-1), rtol=1e-6)


def _png_rgb16(path, rgb16):
    """Write (H, W, 3) uint16 as a 48-bit RGB PNG (which PIL cannot write): signature, IHDR, one IDAT, IEND."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = rgb16.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_16_bit_rgb_reads_within_8_bit_precision(tmp_path):
    """PIL reads a 48-bit RGB PNG as 8-bit RGB: each channel v must come back as v / 65535 to within 1 / 255."""
    rgb16 = np.array([[[0, 65535, 30000], [1000, 50000, 65535]], [[65535, 0, 0], [12345, 54321, 257]]], np.uint16)
    _png_rgb16(tmp_path / "deep.png", rgb16)
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.shape == (2, 2, 3)
    np.testing.assert_allclose(loaded, rgb16 / 65535, atol=1 / 255)


def test_palette_transparency_from_png_and_gif(tmp_path):
    """A palette file with a transparent index: that index reads alpha 0, the others alpha 1 with their colours."""
    indices = np.zeros((6, 8), np.uint8)
    indices[2:4, 2:6] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([*BLUE, *RED, *GREEN] + [0] * 759)
    expected = np.zeros((6, 8, 4), np.float32)
    expected[..., 2] = 1.0  # the transparent index is blue
    expected[2:4, 2:6] = (1.0, 0.0, 0.0, 1.0)
    for name in ("p.png", "p.gif"):
        image.save(tmp_path / name, transparency=0)
        np.testing.assert_array_equal(load_image(tmp_path / name), expected, err_msg=name)
    image.save(tmp_path / "opaque.png")  # no transparency: plain RGB
    np.testing.assert_array_equal(load_image(tmp_path / "opaque.png"), expected[..., :3])


@pytest.mark.parametrize(("mode", "colour", "key"), [("L", 90, 90), ("RGB", (10, 20, 30), (10, 20, 30))])
def test_greyscale_and_rgb_transparency_key(tmp_path, mode, colour, key):
    """A PNG tRNS chunk marks one grey level / RGB colour transparent (as the docstring promises for greyscale):
    pixels of exactly that value read alpha 0, the rest alpha 1."""
    image = Image.new(mode, (5, 4), colour)
    image.paste(Image.new(mode, (2, 2), 200 if mode == "L" else (200, 150, 100)), (1, 1))
    image.save(tmp_path / "keyed.png", transparency=key)
    loaded = load_image(tmp_path / "keyed.png")
    assert loaded.shape == (4, 5, 4)
    expected_alpha = np.zeros((4, 5), np.float32)
    expected_alpha[1:3, 1:3] = 1.0
    np.testing.assert_array_equal(loaded[..., 3], expected_alpha)
    inside = (200, 200, 200) if mode == "L" else (200, 150, 100)
    np.testing.assert_array_equal(loaded[2, 2, :3], np.array(inside, np.float32) / 255)


def test_alpha_is_straight_not_premultiplied(tmp_path):
    """A half-transparent RGBA / LA pixel keeps its colour: (200, 100, 50, 128) reads (200, 100, 50, 128) / 255,
    not a colour darkened by its alpha (the module documents straight alpha)."""
    Image.new("RGBA", (3, 2), (200, 100, 50, 128)).save(tmp_path / "rgba.png")
    Image.new("LA", (3, 2), (160, 64)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png")[1, 2], np.float32([200, 100, 50, 128]) / 255)
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[1, 2], np.float32([160, 160, 160, 64]) / 255)


def test_pil_palette_alpha_image():
    """A PIL 'PA' image (palette colour plus alpha band) reads its palette colours and its alpha band."""
    image = Image.new("PA", (3, 2), (1, 77))
    image.putpalette([*BLUE, *RED] + [0] * 762)
    np.testing.assert_array_equal(pil_to_array(image)[0, 0], np.float32([255, 0, 0, 77]) / 255)


def test_image_header_check_reads_size_and_refuses_what_the_header_shows(tmp_path):
    """``check_image_header`` gives the size from the header alone: a PNG cut after its header passes it (the
    decoding by ``load_image`` then refuses it); empty data, text and a side over the limit are refused at once."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert check_image_header(data, "full.png") == (40, 30)
    cut = data[: len(data) // 2]
    assert check_image_header(cut, "cut.png") == (40, 30)
    (tmp_path / "cut.png").write_bytes(cut)
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "cut.png")
    for bad, message in ((b"", "image x is empty"), (b"hello", "cannot read image x"), (data, "larger than the max")):
        with pytest.raises(ValueError, match=message):
            check_image_header(bad, "x", max_side=32)
