"""Reconstruction models built on the monorecon core.

The names below are imported on first use (PEP 562): the other models (``monorecon.models.meshgan``, ``g3dr``) and
the commands built on them (``fit-pose``, ``invert``) then load without TripoSR's ``transformers`` (seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .triposr import TripoSRConfig, TripoSRModel, load_triposr

#: Public name -> the submodule that defines it.
_LAZY = {"TripoSRConfig": ".triposr", "TripoSRModel": ".triposr", "load_triposr": ".triposr"}

__all__ = ["TripoSRConfig", "TripoSRModel", "load_triposr"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
