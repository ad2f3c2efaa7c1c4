"""Reading weight files: ``.safetensors`` or PyTorch pickles, with one-line errors for bad files.

Every loader of trained weights (TripoSR checkpoints, perceptual-loss networks, G3DR, the RGB-D diffusion model and
the MeshInversion generator) reads through here, so a missing, truncated or foreign file is a ``ValueError`` naming
the file, never a reader's traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["read_safetensors_metadata", "read_state_dict", "state_dict_mismatch"]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``torch.load(weights_only=True)``), on the CPU; the format
    is told by the file's first bytes, not its suffix.

    A pickle whose top level is ``{"state_dict": {...}}`` (as PyTorch Lightning saves) or ``{"model": {...}, ...}``
    (a monorecon training checkpoint, ``RUN/checkpoints/step_N.pt``) is unwrapped, and the ``module.`` prefix that
    DistributedDataParallel gives every key is dropped.

    Raises:
        ValueError: missing file, truncated or corrupt file, a pickle holding Python objects beyond tensors, or
            content that is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader failure means the same thing to the caller
        reason = _reader_error(err)
        if "Unsupported global" in reason:  # a readable pickle, but of objects that unpickling could run code for
            raise ValueError(
                f"cannot read weights {path}: it holds Python objects beside its tensors ({reason}); save the "
                "model's state_dict alone (torch.save(model.state_dict(), path)) or as .safetensors"
            ) from err
        raise ValueError(f"cannot read weights {path}: the file is truncated or corrupt ({reason})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"weights {path} do not hold a state_dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts as safetensors do: a little-endian 8-byte header length, then the JSON header."""
    with path.open("rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def state_dict_mismatch(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], shown: int = 5
) -> list[str]:
    """How ``state`` differs from the keys and shapes a model expects, one phrase per kind (empty: it matches).

    The phrases count the missing keys, the unexpected keys and the keys of another shape, each naming the first
    ``shown`` (a shape as ``name (checkpoint shape) vs model (model shape)``).
    """
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} vs model {tuple(shape)}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:shown]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:shown]}")
    if shapes:
        problems.append(f"{len(shapes)} keys of the wrong shape: {shapes[:shown]}")
    return problems


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` header (empty when it has none).

    Raises:
        ValueError: missing file, or a file that is not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # a foreign or truncated file: the reader's own error types vary
        raise ValueError(f"cannot read weights {path}: the file is truncated or corrupt ({err})") from err


def _reader_error(err: Exception) -> str:
    """What a reader's error says about the file, in one line: torch's refusal of a pickle (``weights_only``) is
    mostly advice to load it unsafely, which does not apply; its ``WeightsUnpickler error`` is the fact."""
    text = str(err)
    _, found, fact = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (fact if found else text).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0].split(". Please use")[0] if found else lines[0]
