"""Input validation shared by the core: clear ``ValueError`` messages instead of failures deep inside.

Shape specs are tuples whose entries are an int (exact size), ``None`` (any size) or a string (a named size that
must agree across the tensors checked with the same ``sizes`` dict).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch

ShapeSpec = Sequence[int | str | None]

#: Sides of a baked texture, in texels, that every entry point accepts.
TEXTURE_RESOLUTION_RANGE = (64, 8192)

#: Face counts that ``target_faces`` (reconstruct, convert) accepts: a mesh decimated to fewer than 4 is no solid.
TARGET_FACES_RANGE = (4, 1 << 31)

#: Seeds that reconstruction and evaluation accept (those a browser's number field holds exactly).
SEED_RANGE = (0, 2**31 - 1)


class NonFiniteError(ValueError):
    """A tensor holds NaN or infinite values. Bad input at inference; inside a training step, a diverged run
    (:func:`monorecon.train.utils.diverges_on_non_finite`)."""


class SkippedInputWarning(UserWarning):
    """An input (an object of a dataset, a mesh file of an evaluation folder) that was reported and left out."""


def check_tensor(
    x: object,
    name: str,
    shape: ShapeSpec | None = None,
    *,
    sizes: dict[str, int] | None = None,
    finite: bool = True,
    floating: bool | None = None,
    unit_range: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given shape (and finite; with ``unit_range``, within [0, 1]); return it.

    Raises:
        ValueError: naming ``name`` and what is wrong with it.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        if x.dim() != len(shape):
            raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(x.shape)}")
        for axis, (want, got) in enumerate(zip(shape, x.shape, strict=True)):
            if want is None:
                continue
            if isinstance(want, str):
                if sizes is None:
                    continue
                if want in sizes and sizes[want] != got:
                    raise ValueError(f"{name} has {got} along axis {axis} ('{want}'), expected {sizes[want]}")
                sizes.setdefault(want, got)
            elif want != got:
                raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and x.is_floating_point():
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    if ((finite and x.is_floating_point()) or unit_range) and x.numel():
        # One pass for both ends (NaN propagates to them): several times faster than isfinite(x).all() on the CPU,
        # and this runs on every field query.
        low, high = (float(end) for end in torch.aminmax(x.detach()))
        if finite and x.is_floating_point() and not (math.isfinite(low) and math.isfinite(high)):
            raise NonFiniteError(f"{name} contains NaN or infinite values")
        if unit_range and not (0 <= low and high <= 1):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    return x


def check_int(value: object, name: str, low: int, high: int) -> int:
    """Check an integer option (not a bool, a float or a string) lies in ``[low, high]``; return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """Check a flag is True or False (not a string such as ``"no"``, which Python would read as true); return it."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_positive(value: object, name: str) -> float:
    """Check a real option (not a bool or a string) is finite and above 0; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def check_real(value: object, name: str, low: float, high: float) -> float:
    """Check a real option (not a bool, a string or NaN) lies in ``[low, high]``; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:  # NaN fails too
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value}")
    return float(value)


def check_non_negative(value: object, name: str) -> float:
    """Check a real option (a loss weight, a decay; not a bool or a string) is finite and >= 0; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_device(device: str | torch.device) -> torch.device:
    """Resolve a device: "auto" (CUDA when this machine has it, else the CPU), "cpu", "cuda" or "cuda:N".

    Raises:
        ValueError: another kind of device, or a CUDA device this machine does not have.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA device (use 'auto' or 'cpu')")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def warn_if_slow_bfloat16(device: str | torch.device, what: str) -> None:
    """Warn that bfloat16 ``what`` on ``device`` will be slower than float32: a CPU without AVX512-BF16 or AMX
    emulates bfloat16 matrix products (training steps ran 12x slower than float32 on an AVX2-only CPU)."""
    if torch.device(device).type != "cpu":
        return
    capabilities = torch.cpu.get_capabilities()
    if not (capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")):
        warnings.warn(
            f"bfloat16 {what} on this CPU (no AVX512-BF16 or AMX) is much slower than float32; use float32 here",
            stacklevel=3,
        )


def check_image_size(height: int, width: int, *, max_side: int = 16384) -> tuple[int, int]:
    """Check an image size (pixels) is positive and not absurd; return it as ints."""
    for label, v in (("height", height), ("width", width)):
        try:
            whole = int(v) == v
        except (TypeError, ValueError, OverflowError):  # None, a word, NaN, an infinity
            whole = False
        if not whole or v < 1:
            raise ValueError(f"image {label} must be a positive integer, got {v}")
        if v > max_side:
            raise ValueError(f"image {label} {v} is larger than the maximum {max_side}")
    return int(height), int(width)


def _fmt(shape: ShapeSpec) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
