"""monorecon: single-image 3D reconstruction and fitting by differentiable rendering on one PyTorch core.

Quick start::

    import monorecon
    model = monorecon.load_model()                 # the bundled default model
    mesh = monorecon.reconstruct("examples/mug.png", model)
    monorecon.save_mesh(mesh, "mug.glb")           # +Y up, the photo's front facing +Z

The names below are imported on first use (PEP 562), not with the package: ``monorecon --help`` and every
command's argument errors then answer without loading PyTorch (seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .api import ReconstructOptions, load_model, reconstruct, reconstruct_full
    from .core.mesh import Mesh
    from .io.mesh_io import load_mesh, save_mesh
    from .preprocess import PreprocessConfig

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_LAZY = {
    "Mesh": ".core.mesh",
    "PreprocessConfig": ".preprocess",
    "ReconstructOptions": ".api",
    "load_mesh": ".io.mesh_io",
    "load_model": ".api",
    "reconstruct": ".api",
    "reconstruct_full": ".api",
    "save_mesh": ".io.mesh_io",
}

__all__ = [
    "Mesh",
    "PreprocessConfig",
    "ReconstructOptions",
    "__version__",
    "load_mesh",
    "load_model",
    "reconstruct",
    "reconstruct_full",
    "save_mesh",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
