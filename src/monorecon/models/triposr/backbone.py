"""Triplane tokens, the transformer that writes them from image tokens, and the upsampling to the scene code.

Module and parameter names follow the TripoSR checkpoint (``tokenizer.embeddings``, ``backbone.transformer_blocks.{i}
.attn1.to_q.weight``, ``post_processor.upsample.weight``, ...), so its state_dict loads unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig, PostProcessorConfig, TokenizerConfig

__all__ = ["TriplaneTokenizer", "TriplaneTransformer", "TriplaneUpsampler"]


class TriplaneTokenizer(nn.Module):
    """Learned triplane tokens ``embeddings`` (3, C, P, P), read plane-major (plane, row, column)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.plane_size, self.num_channels = config.plane_size, config.num_channels
        shape = (3, config.num_channels, config.plane_size, config.plane_size)
        self.embeddings = nn.Parameter(torch.randn(shape) / math.sqrt(config.num_channels))

    def forward(self, batch_size: int) -> torch.Tensor:
        """-> (B, C, 3 P P) tokens (channels first, as the backbone takes them)."""
        tokens = self.embeddings.permute(1, 0, 2, 3).reshape(self.num_channels, -1)
        return tokens[None].expand(batch_size, -1, -1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, 3 P P) -> (B, 3, C, P, P)."""
        batch, channels, n_tokens = tokens.shape
        if channels != self.num_channels or n_tokens != 3 * self.plane_size**2:
            raise ValueError(
                f"tokens must be (B, {self.num_channels}, {3 * self.plane_size**2}), got {tuple(tokens.shape)}"
            )
        planes = tokens.reshape(batch, channels, 3, self.plane_size, self.plane_size)
        return planes.permute(0, 2, 1, 3, 4)


class _Attention(nn.Module):
    """Multi-head attention, q/k/v without bias, output projection with bias, scale 1/sqrt(head_dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # checkpoint key: to_out.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch = x.shape[0]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))


class _GEGLU(nn.Module):
    """Linear to 2 x inner, split into value and gate: value * gelu(gate) (exact GELU)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class _FeedForward(nn.Module):
    """GEGLU feed-forward ``dim -> 4 dim -> dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # Index 1 held a dropout in the original layout: an Identity keeps the keys net.0 / net.2.
        self.net = nn.Sequential(_GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the image tokens, GEGLU feed-forward (4x), residuals."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = _Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = _FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """GroupNorm -> ``proj_in`` -> blocks -> ``proj_out`` -> plus the input (residual around the whole stack)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        inner = config.num_heads * config.head_dim
        self.norm = nn.GroupNorm(config.norm_num_groups, config.in_channels, eps=1e-6)
        self.proj_in = nn.Linear(config.in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            _TransformerBlock(inner, config.num_heads, config.head_dim, config.cross_attention_dim)
            for _ in range(config.num_layers)
        )
        self.proj_out = nn.Linear(inner, config.in_channels)

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, N) triplane tokens and (B, T, D) image tokens -> (B, C, N)."""
        x = self.proj_in(self.norm(tokens).transpose(1, 2))
        for block in self.transformer_blocks:
            x = block(x, image_tokens)
        return self.proj_out(x).transpose(1, 2) + tokens


class TriplaneUpsampler(nn.Module):
    """Per-plane ``ConvTranspose2d(kernel 2, stride 2)``: (B, 3, C_in, P, P) -> (B, 3, C_out, 2P, 2P)."""

    def __init__(self, config: PostProcessorConfig) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(config.in_channels, config.out_channels, kernel_size=2, stride=2)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        batch = planes.shape[0]
        out = self.upsample(planes.reshape(batch * 3, *planes.shape[2:]))
        return out.reshape(batch, 3, *out.shape[1:])
