"""ConvMesh-style textured-mesh GAN used by MeshInversion: UV-sphere template, networks, training."""

from .networks import ImageDiscriminator, MeshGenerator, UVDiscriminator
from .template import UVSphereTemplate
from .train import MeshGANConfig, load_generator, train_meshgan

__all__ = [
    "ImageDiscriminator",
    "MeshGANConfig",
    "MeshGenerator",
    "UVDiscriminator",
    "UVSphereTemplate",
    "load_generator",
    "train_meshgan",
]
