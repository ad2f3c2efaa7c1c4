"""Growing a trained TripoSR model deeper without changing what it computes (warm start for a larger model).

A pre-norm residual block ``x + f(norm(x))`` whose output projections are zero is the identity. Inserting such blocks
(copies of their neighbours with the output projections zeroed, so norms and attention weights start at sensible
values) gives a deeper model with the same outputs as the trained one; fine-tuning then uses the new depth. The
zeroed projections receive gradients from the first step (their input activations are not zero), and the rest of a
new block learns once they have moved.
"""

from __future__ import annotations

import re

import torch

__all__ = ["BACKBONE_BLOCKS", "ENCODER_BLOCKS", "deepen_triposr_weights", "interleave_identity_blocks"]

# (key prefix of the numbered blocks, key infixes of each block's output projections: weight and bias zeroed)
BACKBONE_BLOCKS = ("backbone.transformer_blocks.", ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2."))
ENCODER_BLOCKS = ("image_tokenizer.model.encoder.layer.", ("attention.output.dense.", "output.dense."))


def interleave_identity_blocks(
    state_dict: dict[str, torch.Tensor], prefix: str, output_keys: tuple[str, ...], n_blocks: int
) -> dict[str, torch.Tensor]:
    """Weights with ``n_blocks`` residual blocks under ``prefix`` instead of the present ``n``, the same function.

    New block ``k`` is inserted right after old block ``k`` (``k < n_blocks - n``), as its copy with every parameter
    whose name (after ``prefix{i}.``) starts with one of ``output_keys`` set to zero.

    Args:
        state_dict: model weights (checkpoint key layout); not modified.
        prefix: key prefix of the numbered blocks, e.g. ``"backbone.transformer_blocks."``.
        output_keys: key infixes of the projections that write into the residual stream.
        n_blocks: the new block count, ``n <= n_blocks <= 2 n``.

    Returns:
        A new state dict; tensors not under ``prefix`` are shared with the input.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = value
        else:
            out[key] = value
    n_old = len(blocks)
    if n_old == 0 or sorted(blocks) != list(range(n_old)):
        raise ValueError(f"no blocks numbered 0..n-1 under the prefix {prefix!r}")
    if not n_old <= n_blocks <= 2 * n_old:
        raise ValueError(f"n_blocks must lie in [{n_old}, {2 * n_old}] for a model with {n_old} blocks, got {n_blocks}")
    zeroed = [name for name in blocks[0] if name.startswith(output_keys)]
    if not zeroed:
        raise ValueError(f"no parameter of block 0 under {prefix!r} starts with one of {output_keys}")
    new_index = 0
    for old_index in range(n_old):
        copies = [False, True] if old_index < n_blocks - n_old else [False]
        for is_identity in copies:
            for name, value in blocks[old_index].items():
                if is_identity:
                    value = torch.zeros_like(value) if name in zeroed else value.clone()
                out[f"{prefix}{new_index}.{name}"] = value
            new_index += 1
    return out


def deepen_triposr_weights(
    state_dict: dict[str, torch.Tensor], encoder_layers: int | None = None, backbone_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """TripoSR weights with more ViT encoder layers and/or backbone transformer blocks, computing the same scene code.

    Load the result into a model whose config has ``image_encoder.num_layers = encoder_layers`` and
    ``backbone.num_layers = backbone_layers`` (``None`` keeps a part as it is).
    """
    out = dict(state_dict)
    for (prefix, output_keys), n_blocks in ((ENCODER_BLOCKS, encoder_layers), (BACKBONE_BLOCKS, backbone_layers)):
        if n_blocks is not None:
            out = interleave_identity_blocks(out, prefix, output_keys, n_blocks)
    return out
