"""Input preparation for single-image reconstruction: foreground alpha, crop, square pad, grey composite.

The pipeline (TripoSR convention, SPEC §1): find the object's alpha, crop to its bounding box, pad to a square in which
the object spans ``foreground_ratio`` of the side, and composite on grey 0.5.

Where the alpha comes from, in order:

1. an RGBA image's own alpha channel;
2. a user-supplied salient-object ONNX model (``matting_model``: the U2Net / ISNet files that rembg uses), run with
   onnxruntime; nothing is downloaded;
3. otherwise, for an RGB image on a plain background, a flood fill from the image border over pixels within
   ``border_tolerance`` of the border's median colour.

Limits of the border flood fill: it needs a plain, evenly lit background that touches the image border all around
(at least ``min_plain_border`` of the border pixels close to the median colour); background regions enclosed by the
object (the inside of a mug's handle) are not reached and stay foreground; object parts of the same colour as the
background and connected to the border are cut away. Photos with clutter need an RGBA input or ``matting_model``.

:func:`reframe_views` applies the same framing to batches of renders (training with ``data.reframe``, ``monorecon
eval --prepare``) and gives the motion of the scene that matches it.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from .core.checks import check_bool, check_int, check_real
from .io.images import MAX_IMAGE_SIDE

#: Object framing when neither the caller nor a model gives one (TripoSR's).
DEFAULT_FOREGROUND_RATIO = 0.85
#: Sides of the prepared square image :class:`PreprocessConfig` accepts (``output_size``).
OUTPUT_SIZE_RANGE = (16, 4096)
#: How far outside [0, 1] a float image may stray (resampling overshoot) before it is refused; it is then clipped.
_UNIT_TOLERANCE = 1e-3
#: An object spanning fewer pixels than this is warned about: its prepared input is a blur.
_MIN_OBJECT_PIXELS = 32


@dataclass
class PreprocessConfig:
    """Options of :func:`preprocess_image`.

    Attributes:
        remove_background: if False the image is used as it is (only padded to a square with grey, no crop; an RGBA
            image keeps its alpha, composited over the grey).
        foreground_ratio: fraction of the square's side taken by the object's larger bounding-box side; None: the
            model's own framing when :mod:`monorecon.api` reconstructs (``TripoSRConfig.foreground_ratio``), else
            :data:`DEFAULT_FOREGROUND_RATIO`.
        background_gray: grey level of the composite background.
        border_tolerance: max RGB distance (Euclidean, [0, 1] units) to the border colour counted as background.
        min_plain_border: fraction of border pixels that must match the border colour for the flood fill to apply.
        alpha_threshold: alpha above which a pixel counts for the bounding box.
        matting_model: optional ONNX salient-object model (U2Net / ISNet layout).
        output_size: side of the returned square image; None keeps the padded crop's own size.
    """

    remove_background: bool = True
    foreground_ratio: float | None = None
    background_gray: float = 0.5
    border_tolerance: float = 0.1
    min_plain_border: float = 0.6
    alpha_threshold: float = 0.5
    matting_model: str | Path | None = None
    output_size: int | None = 512

    def __post_init__(self) -> None:
        check_bool(self.remove_background, "remove_background")
        if self.foreground_ratio is not None:
            check_real(self.foreground_ratio, "foreground_ratio", 0.05, 1.0)
        check_real(self.background_gray, "background_gray", 0.0, 1.0)
        check_real(self.border_tolerance, "border_tolerance", 0.0, math.sqrt(3.0))  # the largest RGB distance
        check_real(self.min_plain_border, "min_plain_border", 0.0, 1.0)
        if not check_real(self.alpha_threshold, "alpha_threshold", 0.0, 1.0) < 1.0:
            raise ValueError("alpha_threshold must be below 1 (no pixel's alpha is above 1)")
        if self.matting_model is not None and not isinstance(self.matting_model, str | os.PathLike):
            raise ValueError(f"matting_model must be a path, got {self.matting_model!r}")
        if self.output_size is not None:
            check_int(self.output_size, "output_size", *OUTPUT_SIZE_RANGE)


@dataclass
class PreparedImage:
    """A prepared input.

    Attributes:
        rgb: (S, S, 3) float32 in [0, 1], object composited on grey.
        alpha: (S, S) float32 in [0, 1], the object's alpha in the same frame.
        source_box: ``(left, top, side)`` of the square of the source image (upright, in its pixels, edges at
            integers) that the prepared image shows: prepared pixel position ``q`` (pixel edges at integers) is
            source position ``(left, top) + q * side / S``. The square may reach past the source's border (padding).
            None when unknown.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    source_box: tuple[float, float, float] | None = None
    source_size: tuple[int, int] | None = None

    def rgba(self) -> np.ndarray:
        """(S, S, 4) image with the alpha as fourth channel (for saving the processed input)."""
        return np.concatenate([self.rgb, self.alpha[..., None]], axis=-1)


def border_pixels(image: np.ndarray) -> np.ndarray:
    """(N, ...) the pixels of an (H, W, ...) image's outer frame, each once (N = 2 (H + W) - 4)."""
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]], axis=0)


def border_alpha(rgb: np.ndarray, tolerance: float = 0.1, min_plain_border: float = 0.6) -> np.ndarray:
    """Alpha of an object on a plain background by flood fill from the image border.

    Args:
        rgb: (H, W, 3) float in [0, 1].

    Returns:
        (H, W) float32 alpha: 0 on background connected to the border, 1 elsewhere.

    Raises:
        ValueError: if the border is not plain enough, or nothing but background is found.
    """
    background = np.median(border_pixels(rgb), axis=0)
    close = np.linalg.norm(rgb - background, axis=-1) <= tolerance
    if border_pixels(close).mean() < min_plain_border:
        raise ValueError(
            "background is not plain: give an RGBA image (alpha = the object), a matting model, or turn background "
            "removal off (command line: --matting-model FILE.onnx or --no-remove-bg)"
        )
    labels, _ = ndimage.label(close)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    is_background = np.isin(labels, edge_labels[edge_labels > 0])
    alpha = (~is_background).astype(np.float32)
    if alpha.sum() == 0:
        raise ValueError("no foreground found: the image is all background")
    return alpha


def matting_session(model_path: str | Path) -> Any:
    """The ``onnxruntime`` session of a salient-object model, loaded once per file (a changed file is loaded again).

    Raises:
        ValueError: onnxruntime missing, or the file missing or not a model onnxruntime can load.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ValueError(f"matting model not found: {model_path}")
    stat = model_path.stat()
    return _load_matting_session(str(model_path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_matting_session(path: str, mtime_ns: int, size: int) -> Any:
    """The session of ``path``; ``mtime_ns`` and ``size`` only key the cache, so that a changed file is reloaded."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("--matting-model needs onnxruntime (pip install onnxruntime)") from None
    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for corrupt files
        raise ValueError(f"cannot load matting model {path}: {str(err).splitlines()[0]}") from None


def matting_alpha(rgb: np.ndarray, model_path: str | Path) -> np.ndarray:
    """Alpha from a salient-object ONNX model (U2Net-family or ISNet input layout).

    The model takes (1, 3, S, S) float input; S is read from the model (320 for U2Net, 1024 for ISNet). Input
    normalisation follows each family: U2Net divides by the image maximum and applies ImageNet mean/std; ISNet
    subtracts 0.5. The first output's first channel, min-max normalised, is the alpha.

    Args:
        rgb: (H, W, 3) float in [0, 1].

    Returns:
        (H, W) float32 alpha in [0, 1].

    Raises:
        ValueError: as :func:`matting_session`.
    """
    session = matting_session(model_path)
    spec = session.get_inputs()[0]
    side = spec.shape[-1] if isinstance(spec.shape[-1], int) else 320
    resized = np.asarray(
        Image.fromarray((rgb * 255).astype(np.uint8)).resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32
    )
    resized = resized / 255.0
    if side >= 1024:  # ISNet family
        normalised = resized - 0.5
    else:  # U2Net family
        normalised = resized / max(float(resized.max()), 1e-6)
        normalised = (normalised - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    batch = normalised.transpose(2, 0, 1)[None].astype(np.float32)
    prediction = np.asarray(session.run(None, {spec.name: batch})[0], dtype=np.float32)
    mask = prediction.reshape(-1, *prediction.shape[-2:])[0]
    lo, hi = float(mask.min()), float(mask.max())
    mask = (mask - lo) / (hi - lo) if hi - lo > 1e-8 else np.zeros_like(mask)
    height, width = rgb.shape[:2]
    alpha = Image.fromarray((mask * 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(alpha, dtype=np.float32) / 255.0


def foreground_alpha(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(H, W) alpha of the object in ``image`` ((H, W, 3|4) float [0, 1]) from the sources in the module docstring."""
    if image.shape[-1] == 4:
        return image[..., 3].astype(np.float32)
    if config.matting_model is not None:
        return matting_alpha(image, config.matting_model)
    return border_alpha(image, config.border_tolerance, config.min_plain_border)


def unit_float_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) float32 in [0, 1] from a float array (or tensor) already in [0, 1] or a uint8 / uint16 one
    (scaled); sides up to :data:`~monorecon.io.images.MAX_IMAGE_SIDE`, as for image files.

    A float array outside [0, 1] (beyond a rounding tolerance, which is clipped) is refused: it is usually an 8-bit
    image converted to float without the division by 255, which would otherwise pass as a white, opaque image.
    """
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"image must have shape (H, W, 3|4), got {image.shape}")
    if max(image.shape[:2]) > MAX_IMAGE_SIDE:  # as for image files
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, larger than the maximum side {MAX_IMAGE_SIDE}")
    if image.dtype in (np.uint8, np.uint16):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1], uint8 or uint16, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -_UNIT_TOLERANCE or high > 1 + _UNIT_TOLERANCE:
        raise ValueError(
            f"float image values must lie in [0, 1], got [{low:.4g}, {high:.4g}] "
            "(divide an 8-bit image by 255, or pass it as uint8)"
        )
    return np.clip(image, 0.0, 1.0)


def preprocess_image(image: np.ndarray, config: PreprocessConfig | None = None) -> PreparedImage:
    """Prepare an image for reconstruction: alpha, crop, pad to a square, grey composite, resize.

    Args:
        image: (H, W, 3|4) float in [0, 1], or uint8 / uint16 (as ``np.asarray`` of a PIL image), straight alpha.

    Raises:
        ValueError: empty/all-transparent alpha, non-plain background without alpha, bad array (shape, NaN, a float
            image outside [0, 1], an integer type other than uint8 / uint16).
    """
    config = config or PreprocessConfig()
    image = unit_float_image(image)
    rgb = image[..., :3]
    if not config.remove_background:  # framed as it is; an RGBA image keeps its alpha, over the background grey
        alpha = image[..., 3] if image.shape[-1] == 4 else np.ones(image.shape[:2], dtype=np.float32)
        rgb = rgb * alpha[..., None] + config.background_gray * (1.0 - alpha[..., None])
        square_rgb, square_alpha, (left, top) = _pad_to_square(rgb, alpha, 1.0, config.background_gray)
        return _finish(square_rgb, square_alpha, config, (-left, -top), image.shape[1::-1])

    alpha = foreground_alpha(image, config)
    rows, cols = np.nonzero(alpha > config.alpha_threshold)
    if rows.size == 0:
        raise ValueError("no foreground: the alpha is empty (fully transparent image?)")
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    if extent < _MIN_OBJECT_PIXELS:
        warnings.warn(
            f"the object spans only {extent} pixels of the image: the prepared input is enlarged from them and "
            "blurred (give a larger photo of the object)",
            stacklevel=2,
        )
    rgb_c, alpha_c = rgb[crop], alpha[crop]
    composite = rgb_c * alpha_c[..., None] + config.background_gray * (1.0 - alpha_c[..., None])
    ratio = DEFAULT_FOREGROUND_RATIO if config.foreground_ratio is None else config.foreground_ratio
    square_rgb, square_alpha, (left, top) = _pad_to_square(composite, alpha_c, ratio, config.background_gray)
    return _finish(square_rgb, square_alpha, config, (cols.min() - left, rows.min() - top), image.shape[1::-1])


def reframe_views(
    rgba: torch.Tensor, ratio: torch.Tensor, distance: float, fov_y_deg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame (B, H, W, 4) renders as :func:`preprocess_image` frames a photo, and the matching motion of the scene.

    Each image is resampled (bilinear, transparent outside) so that its alpha's bounding box (alpha > 0.5) is centred
    and its longer side is ``ratio`` of the image side: pixel ``q`` of the result is pixel
    ``c + (q - centre) / k`` of the input, ``c`` the box centre, ``k`` the zoom. Seen by the canonical camera
    (``orbit_c2w(0, 0, distance)``, vertical fov ``fov_y_deg``), the same motion of the image is made by the
    similarity ``x -> k x + t`` of the scene, with ``t = (k (centre - c)_u, -k (centre - c)_v, 0) * distance / f``
    (``f`` the focal length in pixels): exactly for points in the plane z = 0 through the origin, approximately
    (perspective) for the rest of the object. A supervision camera at ``p`` sees the moved scene as the original
    one from ``k p + t``.

    Args:
        rgba: (B, H, W, 4) square input views, alpha last.
        ratio: (B,) the bounding box's longer side as a fraction of the image side.
        distance, fov_y_deg: the canonical input camera.

    Returns:
        ``(reframed rgba (B, H, W, 4), k (B,), t (B, 3))``; an image without foreground is left as it is (k 1, t 0).

    Raises:
        ValueError: images that are not (B, H, W, 4) and square, or ratios that are not (B,) in (0, 1].
    """
    if rgba.dim() != 4 or rgba.shape[-1] != 4 or rgba.shape[1] != rgba.shape[2]:
        raise ValueError(f"reframe_views needs square (B, H, W, 4) images, got {tuple(rgba.shape)}")
    batch, height, width = rgba.shape[:3]
    ratio = torch.as_tensor(ratio)
    if ratio.shape != (batch,) or not bool(((ratio > 0) & (ratio <= 1)).all()):  # NaN fails both comparisons
        raise ValueError(f"reframe_views needs one ratio in (0, 1] per image, got {ratio.tolist()}")
    inside = rgba[..., 3] > 0.5
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # (B, H), (B, W)
    index = torch.arange(width, dtype=rgba.dtype, device=rgba.device)
    big = torch.full_like(index, float(width))

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # first pixel edge, last pixel edge
        return torch.where(hit, index, big).amin(dim=1), torch.where(hit, index + 1, -big).amax(dim=1)

    (top, bottom), (left, right) = span(rows), span(cols)
    empty = ~inside.flatten(1).any(dim=1)
    side = torch.maximum(bottom - top, right - left)
    zoom = torch.where(empty, torch.ones_like(side), ratio.to(rgba) * width / side.clamp_min(1.0))
    centre_u = torch.where(empty, torch.full_like(side, width / 2), (left + right) / 2)
    centre_v = torch.where(empty, torch.full_like(side, width / 2), (top + bottom) / 2)
    # grid_sample (align_corners=False): normalised x = 2 u / W - 1, y = 2 v / H - 1 (down).
    theta = torch.zeros(batch, 2, 3, dtype=rgba.dtype, device=rgba.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2], theta[:, 1, 2] = 2 * centre_u / width - 1, 2 * centre_v / width - 1
    grid = F.affine_grid(theta, (batch, 4, height, width), align_corners=False)
    reframed = F.grid_sample(rgba.permute(0, 3, 1, 2), grid, align_corners=False).permute(0, 2, 3, 1)
    focal = 0.5 * width / math.tan(math.radians(fov_y_deg) / 2)
    shift = torch.zeros(batch, 3, dtype=rgba.dtype, device=rgba.device)
    shift[:, 0] = zoom * (width / 2 - centre_u) * distance / focal
    shift[:, 1] = -zoom * (width / 2 - centre_v) * distance / focal
    return reframed, zoom, shift


def _pad_to_square(
    rgb: np.ndarray, alpha: np.ndarray, ratio: float, gray: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Centre ``rgb``/``alpha`` in a grey square whose side is ``max(h, w) / ratio``; also the ``(left, top)`` pixel
    of the square where they start."""
    height, width = alpha.shape
    side = max(round(max(height, width) / ratio), height, width)
    top, left = (side - height) // 2, (side - width) // 2
    out_rgb = np.full((side, side, 3), gray, dtype=np.float32)
    out_alpha = np.zeros((side, side), dtype=np.float32)
    out_rgb[top : top + height, left : left + width] = rgb
    out_alpha[top : top + height, left : left + width] = alpha
    return out_rgb, out_alpha, (left, top)


def _finish(
    rgb: np.ndarray, alpha: np.ndarray, config: PreprocessConfig, corner: tuple[int, int], source_size: tuple[int, int]
) -> PreparedImage:
    """Resize the square to the output size; ``corner``: its top-left pixel in the source image of ``(width,
    height)`` ``source_size``."""
    side = rgb.shape[0]
    if config.output_size is not None and rgb.shape[0] != config.output_size:
        size = (config.output_size, config.output_size)
        rgb = np.stack(
            [np.asarray(Image.fromarray(c).resize(size, Image.Resampling.BILINEAR)) for c in rgb.transpose(2, 0, 1)],
            axis=-1,
        )
        alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BILINEAR))
    source_box = (float(corner[0]), float(corner[1]), float(side))
    rgb, alpha = np.clip(rgb, 0, 1).astype(np.float32), np.clip(alpha, 0, 1).astype(np.float32)
    return PreparedImage(rgb, alpha, source_box, (int(source_size[0]), int(source_size[1])))
