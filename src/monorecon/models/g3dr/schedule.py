"""G3DR's training schedule: which view to render at each step and how the loss weights change (official code values).

With ``T`` total steps and ``s`` the current step (1-based in the official loop; any real step works here):

* a step renders a **novel view** with probability ``P(novel) = min(0.4, 2 s / T)``, else the canonical view;
* the novel camera's yaw offset is ``U(-1, 1) * pi / d`` with ``d`` going linearly from 24 to 6 over the first third
  of training (``d = max(6, 24 - 18 s / (T // 3))``), so the yaw range grows from +-7.5 deg to +-30 deg; the pitch
  offset is ``U(-1, 1) * 10`` deg;
* the opacity term ``mean(1 - sum w)`` has weight ``min(1, s / (T // 2))`` (0 -> 1 over the first half);
* the canonical perceptual (and semantic) terms are on only in the second half (``s > T // 2``).

The thirds and halves are the official code's integer divisions (``T // 3``, ``T // 2``: a ramp ends up to a step
earlier than ``T / 3`` would say), floored at one step so that runs shorter than 3 steps have a ramp too.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "canonical_extras_active",
    "novel_view_probability",
    "opacity_weight",
    "sample_novel_angles",
    "use_novel_view",
    "yaw_divisor",
]


def _check(step: float, total: int) -> None:
    if int(total) != total or total < 1:
        raise ValueError(f"total steps must be a positive integer, got {total}")
    if not (math.isfinite(step) and step >= 0):
        raise ValueError(f"step must be finite and >= 0, got {step}")


def novel_view_probability(step: float, total: int, max_probability: float = 0.4) -> float:
    """``min(max_probability, 2 step / total)``."""
    _check(step, total)
    return min(max_probability, 2.0 * step / total)


def use_novel_view(step: float, total: int, generator: torch.Generator | None = None) -> bool:
    """Draw whether this step renders a novel view (True with :func:`novel_view_probability`)."""
    return float(torch.rand((), generator=generator)) < novel_view_probability(step, total)


def yaw_divisor(step: float, total: int, start: float = 24.0, end: float = 6.0) -> float:
    """``d`` of the yaw range ``pi / d``: linear from ``start`` to ``end`` over the first ``total // 3`` steps, then
    ``end``."""
    _check(step, total)
    ramp_steps = max(total // 3, 1)
    return max(end, start - (start - end) * step / ramp_steps)


def sample_novel_angles(
    batch: int, step: float, total: int, generator: torch.Generator | None = None, pitch_max_deg: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch,) yaw and pitch offsets in degrees: yaw ``U(-1, 1) * 180 / d``, pitch ``U(-1, 1) * pitch_max_deg``."""
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")
    d = yaw_divisor(step, total)
    yaw = (torch.rand(batch, generator=generator) * 2 - 1) * (180.0 / d)
    pitch = (torch.rand(batch, generator=generator) * 2 - 1) * pitch_max_deg
    return yaw, pitch


def opacity_weight(step: float, total: int) -> float:
    """Weight of the opacity term: ``min(1, step / (total // 2))``."""
    _check(step, total)
    return min(1.0, step / max(total // 2, 1))


def canonical_extras_active(step: float, total: int) -> bool:
    """Whether the canonical view's perceptual and semantic terms are on (second half: ``step > total // 2``)."""
    _check(step, total)
    return step > total // 2
