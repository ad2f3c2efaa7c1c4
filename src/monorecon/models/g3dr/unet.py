"""A small convolutional U-Net shared by the G3DR generator (RGB-D -> triplanes) and the RGB-D diffusion model.

Layout: a 3x3 input convolution, then per resolution level ``n_res_blocks`` residual blocks and a stride-2 downsampling
convolution (none after the last level), a middle pair of residual blocks, and the mirror path up with skip
connections (channel concatenation), nearest-neighbour upsampling + 3x3 convolution, GroupNorm + SiLU and a 3x3
output convolution. Residual blocks optionally take a conditioning vector (diffusion: time step + class) that scales
and shifts the normalised features (FiLM, as in improved DDPM). Output has the input's spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monorecon.core.checks import check_tensor

__all__ = ["UNet"]


def _group_norm(channels: int) -> nn.GroupNorm:
    # Largest group count <= 8 dividing the channels (small models have few channels).
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cond_dim: int | None) -> None:
        super().__init__()
        self.norm1, self.conv1 = _group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class UNet(nn.Module):
    """Convolutional U-Net ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.

    Args:
        in_channels, out_channels: image channels in and out.
        base_channels: channels at full resolution; level ``l`` has ``base_channels * channel_mults[l]``.
        channel_mults: one entry per resolution level (H and W must be divisible by ``2**(len - 1)``).
        n_res_blocks: residual blocks per level.
        cond_dim: size of the optional conditioning vector given to :meth:`forward` (None: unconditional).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        n_res_blocks: int = 1,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("n_res_blocks", n_res_blocks)):  # fmt: skip
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if len(channel_mults) == 0 or any(int(m) != m or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {tuple(channel_mults)}")
        self.in_channels, self.cond_dim = int(in_channels), cond_dim
        self.n_levels = len(channel_mults)
        widths = [base_channels * int(m) for m in channel_mults]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        skip_widths, width = [], widths[0]
        for level, level_width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(n_res_blocks):
                blocks.append(_ResBlock(width, level_width, cond_dim))
                width = level_width
            self.down_blocks.append(blocks)
            skip_widths.append(width)
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = nn.ModuleList([_ResBlock(width, width, cond_dim), _ResBlock(width, width, cond_dim)])
        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for i in range(n_res_blocks):
                blocks.append(_ResBlock(width + (skip_widths[level] if i == 0 else 0), widths[level], cond_dim))
                width = widths[level]
            self.up_blocks.append(blocks)
            self.upsample.append(nn.Conv2d(width, width, 3, padding=1) if level > 0 else nn.Identity())
        self.out_norm = _group_norm(width)
        self.out_conv = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_ch, H, W) images [+ (B, cond_dim) conditioning] -> (B, out_ch, H, W)."""
        check_tensor(x, "unet input", (None, self.in_channels, None, None), floating=True)
        factor = 2 ** (self.n_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"unet input size {tuple(x.shape[-2:])} must be divisible by {factor}")
        if (cond is None) != (self.cond_dim is None):
            raise ValueError("conditioning vector given to an unconditional U-Net, or missing for a conditional one")
        if cond is not None:
            check_tensor(cond, "cond", (x.shape[0], self.cond_dim), floating=True)
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsample, strict=True):
            for block in blocks:
                h = block(h, cond)
            skips.append(h)
            h = down(h)
        for block in self.middle:
            h = block(h, cond)
        for blocks, up in zip(self.up_blocks, self.upsample, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, cond)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out_conv(F.silu(self.out_norm(h)))
