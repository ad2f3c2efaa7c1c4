"""sRGB <-> linear colour values (IEC 61966-2-1).

monorecon holds colours as sRGB display values (what images store); glTF ``COLOR_0`` and ``baseColorFactor`` and
USD ``displayColor`` are linear, so their readers and writers convert.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(colours: np.ndarray) -> np.ndarray:
    """sRGB display values in [0, 1] -> linear values (float64, same shape)."""
    colours = np.asarray(colours, dtype=np.float64)
    return np.where(colours <= 0.04045, colours / 12.92, ((colours + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(colours: np.ndarray) -> np.ndarray:
    """Linear values in [0, 1] (clipped to it) -> sRGB display values (float64; the inverse of
    :func:`srgb_to_linear`)."""
    colours = np.clip(np.asarray(colours, dtype=np.float64), 0.0, 1.0)
    return np.where(colours <= 0.0031308, colours * 12.92, 1.055 * colours ** (1 / 2.4) - 0.055)
