"""ConvMesh-style generator and its two discriminators (UV space and image space), small enough for a CPU.

Generator: ``z`` (latent_dim) -> linear -> (C, 4, 2) -> upsampling conv blocks -> half UV maps (phi in [0, pi]):
a 32 x 16 deformation map (3 channels: displacement along the template normal, tangent, bitangent; read out at
32 x 32 after mirroring) and a ``texture_size`` x ``texture_size / 2`` texture (tanh, in [-1, 1]), mirrored to full
maps by :meth:`UVSphereTemplate.mirror`, hence left-right symmetric. The paper's texture is 512 x 512; here
``texture_size`` is 64 or 128 (config) to train in minutes on 2 CPU cores. Convolutions pad the half maps by
replication along the azimuth (the even mirror at phi = 0 and phi = pi, exact for 3 x 3 kernels) and along the rows.

Discriminators (spectral norm, LeakyReLU 0.2, PatchGAN logits; hinge loss in training):

* :class:`UVDiscriminator` sees the full deformation map with the texture average-pooled to its size and a
  positional encoding (cos/sin of azimuth and polar angle), with circular padding along the azimuth.
* :class:`ImageDiscriminator` sees RGBA renders (colour composited on the background and the alpha channel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from monorecon.core.checks import check_tensor

from .template import UVSphereTemplate

__all__ = ["ImageDiscriminator", "MeshGenerator", "UVDiscriminator"]

DEFORMATION_SIZE = 32


class _UpBlock(nn.Module):
    """Nearest 2x upsampling (optional), 3x3 convolution with replicate padding, batch norm, LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(c_in, c_out, 3, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.leaky_relu(self.norm(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))), 0.2)


class MeshGenerator(nn.Module):
    """z -> (texture (B, 3, T, T) in [-1, 1], displacement map (B, 3, 32, 32)), both left-right symmetric.

    Args:
        latent_dim: size of z (64 as the paper).
        texture_size: side of the full texture map (power of two, 32..512).
        channels: width of the first block (halved twice on the way to the texture).
        displacement_scale: the displacement head's output is multiplied by this (keeps early samples sphere-like).
    """

    def __init__(
        self, latent_dim: int = 64, texture_size: int = 64, channels: int = 128, displacement_scale: float = 0.2
    ) -> None:
        super().__init__()
        if texture_size < DEFORMATION_SIZE or texture_size > 512 or texture_size & (texture_size - 1):
            raise ValueError(f"texture_size must be a power of two in [32, 512], got {texture_size}")
        if latent_dim < 1 or channels < 4:
            raise ValueError(f"latent_dim must be >= 1 and channels >= 4, got {latent_dim}, {channels}")
        self.latent_dim, self.texture_size, self.channels = latent_dim, texture_size, channels
        self.displacement_scale = displacement_scale
        self.template = UVSphereTemplate()
        self.fc = nn.Linear(latent_dim, channels * 4 * 2)
        self.trunk = nn.ModuleList(
            [_UpBlock(channels, channels), _UpBlock(channels, channels // 2), _UpBlock(channels // 2, channels // 2)]
        )  # 4x2 -> 32x16
        self.mesh_block = _UpBlock(channels // 2, channels // 4, upsample=False)
        self.mesh_head = nn.Conv2d(channels // 4, 3, 3)
        n_up = int(math.log2(texture_size // DEFORMATION_SIZE))
        widths = [channels // 2] + [max(channels // 4, 8)] * n_up
        self.texture_blocks = nn.ModuleList([_UpBlock(widths[k], widths[k + 1]) for k in range(n_up)])
        self.texture_block = _UpBlock(widths[-1], max(channels // 4, 8), upsample=False)
        self.texture_head = nn.Conv2d(max(channels // 4, 8), 3, 3)
        nn.init.zeros_(self.mesh_head.weight)
        nn.init.zeros_(self.mesh_head.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, latent_dim) -> texture (B, 3, T, T) in [-1, 1], displacement (B, 3, 32, 32) (channels n, t, b)."""
        check_tensor(z, "z", (None, self.latent_dim), floating=True)
        x = F.leaky_relu(self.fc(z).view(-1, self.channels, 4, 2), 0.2)
        for block in self.trunk:
            x = block(x)
        half_disp = self.mesh_head(F.pad(self.mesh_block(x), (1, 1, 1, 1), mode="replicate"))
        t = x
        for block in self.texture_blocks:
            t = block(t)
        half_tex = torch.tanh(self.texture_head(F.pad(self.texture_block(t), (1, 1, 1, 1), mode="replicate")))
        displacement = self.template.mirror(half_disp * self.displacement_scale, tangent_channel=1)
        return self.template.mirror(half_tex), displacement

    def meshes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, latent_dim) -> vertices (B, V, 3) of the template topology and textures (B, 3, T, T) in [0, 1]."""
        texture, displacement = self(z)
        return self.template.vertex_positions(displacement), (texture + 1) * 0.5


def _positional_encoding(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 4, H, W): cos/sin of the texel-centre azimuth and polar angle."""
    theta = (torch.arange(height, dtype=like.dtype, device=like.device) + 0.5) * math.pi / height
    phi = (torch.arange(width, dtype=like.dtype, device=like.device) + 0.5) * 2 * math.pi / width
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack([p.cos(), p.sin(), t.cos(), t.sin()])[None]


class UVDiscriminator(nn.Module):
    """Patch discriminator on UV maps: (texture (B, 3, T, T), displacement (B, 3, 32, 32)) -> (B, 1, 8, 8) logits."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.conv1 = spectral_norm(nn.Conv2d(10, c, 5, padding=(2, 0)))
        self.conv2 = spectral_norm(nn.Conv2d(c, 2 * c, 4, stride=2, padding=(1, 0)))
        self.conv3 = spectral_norm(nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=(1, 0)))
        self.conv4 = spectral_norm(nn.Conv2d(4 * c, 1, 3, padding=(1, 0)))

    def forward(self, texture: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        check_tensor(displacement, "displacement", (None, 3, None, None), floating=True)
        check_tensor(texture, "texture", (displacement.shape[0], 3, None, None), floating=True)
        size = displacement.shape[-2:]
        small_texture = F.adaptive_avg_pool2d(texture, size)
        pos = _positional_encoding(size[0], size[1], displacement).expand(displacement.shape[0], -1, -1, -1)
        x = torch.cat([small_texture, displacement, pos], dim=1)

        def circular(t: torch.Tensor, amount: int) -> torch.Tensor:  # wrap the azimuth (width) only
            return torch.cat([t[..., -amount:], t, t[..., :amount]], dim=-1)

        x = F.leaky_relu(self.conv1(circular(x, 2)), 0.2)
        x = F.leaky_relu(self.conv2(circular(x, 1)), 0.2)
        x = F.leaky_relu(self.conv3(circular(x, 1)), 0.2)
        return self.conv4(circular(x, 1))


class ImageDiscriminator(nn.Module):
    """PatchGAN on (B, 4, S, S) RGBA renders -> (B, 1, S/8, S/8) logits."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.layers = nn.ModuleList(
            [
                spectral_norm(nn.Conv2d(4, c, 4, stride=2, padding=1)),
                spectral_norm(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)),
                spectral_norm(nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)),
            ]
        )
        self.head = spectral_norm(nn.Conv2d(4 * c, 1, 3, padding=1))

    def forward(self, rgba: torch.Tensor) -> torch.Tensor:
        x = check_tensor(rgba, "rgba", (None, 4, None, None), floating=True)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return self.head(x)
