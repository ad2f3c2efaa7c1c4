"""Reading and writing images with clear errors for bad files.

Images are numpy arrays ``(H, W, C)`` of float32 in [0, 1], C = 3 (RGB) or 4 (RGBA, straight alpha), row 0 at the top.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest accepted image side when reading (pixels); larger inputs are refused rather than slowly processed.
MAX_IMAGE_SIDE = 16384

#: Per-channel mean and standard deviation of ImageNet's RGB in [0, 1]: the input normalisation of networks trained
#: on it (the DINO ViT of TripoSR's encoder, VGG features of the perceptual loss).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | os.PathLike, *, max_side: int = MAX_IMAGE_SIDE, exif_transpose: bool = True) -> np.ndarray:
    """Read an image file as float32 RGB or RGBA in [0, 1], EXIF orientation applied (unless ``exif_transpose`` is
    False: the pixels as stored, e.g. a render whose camera refers to them).

    Greyscale and palette images become RGB (RGBA if they carry transparency); 16-bit images are scaled to [0, 1];
    32-bit float greyscale images (TIFF) must already lie in [0, 1]. Every pixel is decoded, so corrupt compressed
    data is found here.

    Raises:
        ValueError: missing, empty, unreadable or corrupt file, or a side longer than ``max_side``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"image file is empty: {path}")
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 M pixels, which max_side allows; beyond twice that it refuses (caught below)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_side(img, path, max_side)
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
                img.load()
                return pil_to_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise _open_error(err, path, max_side) from None


def check_image_header(data: bytes, name: str, *, max_side: int = MAX_IMAGE_SIDE) -> tuple[int, int]:
    """(width, height) of image file bytes, read from the header alone (no pixels decoded): a quick first check of
    an upload before the slower decoding by :func:`load_image`, which can still find the pixel data corrupt.

    Raises:
        ValueError: empty data, a format that cannot be read, or a side longer than ``max_side`` (``name`` in the
            message).
    """
    if not data:
        raise ValueError(f"image {name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_side(img, name, max_side)
                return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise _open_error(err, name, max_side) from None


def _open_error(err: Exception, name: object, max_side: int) -> ValueError:
    """The one-line error of an image PIL cannot open: no object addresses (PIL's "cannot identify image file
    <_io.BytesIO object at 0x...>"), and the side limit rather than PIL's decompression-bomb check where that
    limit alone refuses the image."""
    if isinstance(err, UnidentifiedImageError):
        return ValueError(f"cannot read image {name}: not an image PIL can read")
    refused = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses above twice its limit, before the size is known
    if isinstance(err, Image.DecompressionBombError) and max_side**2 <= refused:
        return ValueError(f"image {name} is larger than the maximum side {max_side} (over {refused:,} pixels)")
    return ValueError(f"cannot read image {name}: {err}")


def _check_side(img: Image.Image, name: object, max_side: int) -> None:
    if max(img.size) > max_side:
        raise ValueError(f"image {name} is {img.width}x{img.height}, larger than the maximum side {max_side}")


def pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image -> (H, W, 3|4) float32 array in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        # 16-bit modes hold 0..65535 however dark the image; a 32-bit "I" image is taken as 16-bit above 255
        arr = arr / (65535.0 if img.mode != "I" or arr.max() > 255 else 255.0)
        return np.repeat(arr[..., None], 3, axis=-1).clip(0, 1)
    if img.mode == "F":  # 32-bit float (TIFF): intensities in [0, 1], as float arrays are read
        arr = np.asarray(img, dtype=np.float32)
        if not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise ValueError("a float image must hold values in [0, 1] (NaN, infinite or out-of-range pixels)")
        return np.repeat(arr[..., None], 3, axis=-1)
    # "transparency" in info: a palette's transparent entries, or the transparent grey / colour key of a PNG (tRNS)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("image has no pixels")
    return arr


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (rounded, clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W[, C]) image -> PNG file bytes: floats in [0, 1] are rounded to 8 bits, uint8 arrays written as they are."""
    image = np.asarray(image)
    buffer = io.BytesIO()
    Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a float [0, 1] (H, W[, C]) image atomically (temporary file, then rename). Format from the suffix."""
    from .atomic import atomic_write

    image = np.asarray(image)
    if image.ndim not in (2, 3) or not np.isfinite(image).all():
        raise ValueError(f"cannot save image of shape {image.shape} (or with NaN values)")
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image format for {path}")
    pixels = to_uint8(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:  # (H, W, 1) grey; only that axis: an image may be 1 pixel wide
        pixels = pixels[..., 0]
    with atomic_write(path) as f:
        Image.fromarray(pixels).save(f, format=fmt)
    return path
