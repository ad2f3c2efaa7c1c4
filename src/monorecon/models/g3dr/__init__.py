"""G3DR (Reddy et al., CVPR 2024): RGB-D image -> triplanes, trained with depth-regularised volume rendering, plus a
small class-conditional RGB-D diffusion model whose samples the generator lifts to 3-D.

Modules: :mod:`.generator` (network, frames, rendering), :mod:`.schedule` (view and loss-weight schedule),
:mod:`.losses`, :mod:`.data` (RGB-D views and the depth PNG format), :mod:`.trainer` (``train_g3dr``),
:mod:`.inference` (reconstruction, turntables, files), :mod:`.evaluate` (metrics against ground-truth meshes) and
:mod:`.diffusion` (DDPM training, DDIM sampling).
"""

from .data import RGBDViews, load_rgbd_pair, save_rgbd_pair, views_from_folder, views_from_synthetic
from .diffusion import DiffusionTrainConfig, RGBDDiffusion, load_rgbd_diffusion, sample_to_folder, train_rgbd_diffusion
from .generator import G3DRGenerator, G3DRModelConfig, view_c2w
from .inference import G3DRScene, g3dr_reconstruct, load_g3dr, reconstruct_to_folder, save_reconstruction, turntable
from .trainer import G3DRTrainConfig, train_g3dr

__all__ = [
    "DiffusionTrainConfig",
    "G3DRGenerator",
    "G3DRModelConfig",
    "G3DRScene",
    "G3DRTrainConfig",
    "RGBDDiffusion",
    "RGBDViews",
    "g3dr_reconstruct",
    "load_g3dr",
    "load_rgbd_diffusion",
    "load_rgbd_pair",
    "reconstruct_to_folder",
    "sample_to_folder",
    "save_reconstruction",
    "save_rgbd_pair",
    "train_g3dr",
    "train_rgbd_diffusion",
    "turntable",
    "view_c2w",
    "views_from_folder",
    "views_from_synthetic",
]
