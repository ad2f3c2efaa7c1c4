"""Fitting by differentiable rendering: camera pose estimation (:mod:`.pose`) and MeshInversion (:mod:`.invert`)."""

from .invert import InversionResult, invert, save_inversion_result
from .pose import PoseFitResult, fit_pose, save_pose_result

__all__ = [
    "InversionResult",
    "PoseFitResult",
    "fit_pose",
    "invert",
    "save_inversion_result",
    "save_pose_result",
]
