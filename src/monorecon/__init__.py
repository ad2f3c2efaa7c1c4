"""monorecon: single-image 3D reconstruction and fitting by differentiable rendering on one PyTorch core.

Quick start::

    import monorecon
    model = monorecon.load_model()                 # the bundled default model
    mesh = monorecon.reconstruct("examples/mug.png", model)
    monorecon.save_mesh(mesh, "mug.glb")           # +Y up, the photo's front facing +Z
"""

from .api import ReconstructOptions, load_model, reconstruct, reconstruct_full
from .core.mesh import Mesh
from .io.mesh_io import load_mesh, save_mesh
from .preprocess import PreprocessConfig

__version__ = "0.1.0"

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
