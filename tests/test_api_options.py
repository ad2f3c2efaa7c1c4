"""The Python API refuses bad options and inputs up front, naming them (before any model work)."""

import numpy as np
import pytest
from PIL import Image

from monorecon.api import ReconstructOptions, prepare_input
from monorecon.preprocess import PreprocessConfig

BAD_OPTIONS = {
    "bake_texture": ({"bake_texture": "no"}, "bake_texture must be True or False, got 'no'"),  # "no" is truthy
    "carve": ({"carve": 0}, "carve must be True or False, got 0"),
    "remove_floaters": ({"remove_floaters": "false"}, "remove_floaters must be True or False"),
    "project_input": ({"project_input": "no"}, "project_input must be True or False"),
    "progress": ({"progress": None}, "progress must be True or False, got None"),
    "mc_resolution-str": ({"mc_resolution": "16"}, "mc_resolution must be an integer, got '16'"),
    "mc_resolution-float": ({"mc_resolution": 8.5}, "mc_resolution must be an integer, got 8.5"),
    "mc_resolution-range": ({"mc_resolution": 4}, r"mc_resolution must lie in \[8, 1024\], got 4"),
    "threshold-str": ({"threshold": "10"}, "threshold must be a number, got '10'"),
    "threshold-zero": ({"threshold": 0.0}, "threshold must be positive and finite, got 0.0"),
    "threshold-negative": ({"threshold": -1}, "threshold must be positive and finite, got -1"),
    "threshold-inf": ({"threshold": float("inf")}, "threshold must be positive and finite, got inf"),
    "target_faces": ({"target_faces": 10.5}, "target_faces must be an integer"),
    "seed-negative": ({"seed": -1}, r"seed must lie in \[0, 2147483647\], got -1"),
    "seed-huge": ({"seed": 2**64}, r"seed must lie in \[0, 2147483647\]"),
    "seed-float": ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    "object_height-tiny": ({"object_height": 1e-15}, r"object_height must lie in \[1e-06, 1000\], got 1e-15"),
    "object_height-str": ({"object_height": "0.1"}, "object_height must be a number, got '0.1'"),
    "preprocess": ({"preprocess": {"foreground_ratio": 0.5}}, "preprocess must be a PreprocessConfig, got dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_refused_with_their_name(case):
    options, message = BAD_OPTIONS[case]
    with pytest.raises(ValueError, match=f"^{message}"):
        ReconstructOptions(**options)


def test_good_options_pass():
    options = ReconstructOptions(mc_resolution=np.int64(64), threshold=np.float32(2.5), seed=2**31 - 1)
    assert options.mc_resolution == 64 and options.object_height is None


@pytest.mark.parametrize(
    ("image", "message"),
    [(None, "NoneType"), (b"/x.png", "bytes"), ([[0.5, 0.5, 0.5]], "list")],
)
def test_prepare_input_refuses_what_is_not_an_image(image, message):
    expected = rf"^image must be a path, a PIL image or an \(H, W, 3\|4\) array, got {message}$"
    with pytest.raises(ValueError, match=expected):
        prepare_input(image, PreprocessConfig())


def test_prepare_input_names_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not an image"):
        prepare_input(tmp_path, PreprocessConfig())


def test_prepare_input_reads_a_palette_pil_image_by_its_colours():
    """``np.asarray`` of a palette image gives its indices (H, W); the API reads its colours and transparency (the
    transparent hole in the square stays transparent: a flood fill from the border would keep it as foreground)."""
    indices = np.zeros((40, 60), np.uint8)
    indices[10:30, 20:40] = 1  # a red 20 x 20 square on palette entry 0, which is transparent
    indices[15:25, 25:35] = 0  # with a transparent hole
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette_image.info["transparency"] = 0
    rgba = np.zeros((40, 60, 4), np.float32)
    rgba[10:30, 20:40] = (1.0, 0.0, 0.0, 1.0)
    rgba[15:25, 25:35] = 0.0
    config = PreprocessConfig(output_size=None)
    from_pil, expected = prepare_input(palette_image, config), prepare_input(rgba, config)
    np.testing.assert_array_equal(from_pil.alpha, expected.alpha)
    np.testing.assert_array_equal(from_pil.rgb, expected.rgb)


def test_prepare_input_turns_a_pil_photo_upright_as_its_file(tmp_path):
    """A phone photo stores its pixels sideways with an EXIF orientation: opened with PIL and passed in, it is
    prepared exactly as the file itself is (upright: the tall object stays tall)."""
    pixels = np.full((20, 40, 3), 255, np.uint8)
    pixels[7:13, 5:35] = (200, 30, 30)  # a wide bar in the stored pixels: tall once turned a quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    config = PreprocessConfig(output_size=None)
    from_file = prepare_input(tmp_path / "phone.jpg", config)
    with Image.open(tmp_path / "phone.jpg") as opened:
        from_pil = prepare_input(opened, config)
    rows, cols = np.nonzero(from_file.alpha > 0.5)
    assert np.ptp(rows) > 2 * np.ptp(cols)  # upright: taller than wide
    np.testing.assert_array_equal(from_pil.alpha, from_file.alpha)
    np.testing.assert_array_equal(from_pil.rgb, from_file.rgb)


def test_reconstruction_records_the_options_that_ran_and_the_input_camera():
    """Options left None take the model's settings (the tiny model's config names none: TripoSR's 25, no fill,
    framing 0.85); the given ones are kept; unplaced, the camera is TripoSR's input camera (1.9 on +Z, fov 40) and
    the photo camera covers the photo, its focal length scaled by the square's side over the prepared size."""
    from pathlib import Path

    import torch

    from monorecon.api import load_model, reconstruct_full

    tiny = Path(__file__).parent / "data" / "triposr_ref"
    model = load_model(tiny / "model.safetensors", tiny / "config.yaml")
    photo = np.ones((40, 60, 3), np.float32)
    photo[10:30, 20:36] = 0.1  # 20 rows x 16 columns: the square's side is round(20 / 0.85) = 24
    result = reconstruct_full(photo, model, ReconstructOptions(mc_resolution=16, seed=4))
    ran = result.options
    assert (ran.threshold, ran.fill, ran.preprocess.foreground_ratio) == (25.0, False, 0.85)
    assert (ran.mc_resolution, ran.seed, ran.carve) == (16, 4, True)
    size = result.prepared.alpha.shape[0]
    torch.testing.assert_close(result.camera.c2w[0, :3, 3], torch.tensor([0.0, 0.0, 1.9]))
    assert float(result.camera.fov_y_deg.reshape(-1)[0]) == pytest.approx(40.0)
    focal = size / 2 / np.tan(np.radians(20.0))
    torch.testing.assert_close(result.photo_camera.focal[0], torch.tensor([focal * 24 / size] * 2, dtype=torch.float32))
    # The square starts (24 - 16) // 2 = 4 columns and (24 - 20) // 2 = 2 rows before the object: its centre is
    # (20 - 4 + 12, 10 - 2 + 12).
    torch.testing.assert_close(result.photo_camera.principal[0], torch.tensor([28.0, 20.0]))
    assert (result.photo_camera.width, result.photo_camera.height) == (60, 40)
    summary = result.summary()
    assert summary["options"]["threshold"] == 25.0 and "progress" not in summary["options"]
    assert summary["mesh"]["faces"] == result.mesh.num_faces and summary["timings"] == result.timings
