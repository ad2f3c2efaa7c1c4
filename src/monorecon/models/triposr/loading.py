"""Loading TripoSR checkpoints: ``model.ckpt`` (torch) or ``.safetensors``, local or from the Hugging Face Hub.

Loading is strict: every key of the architecture must be present with its shape, and nothing else. Problems raise
``ValueError`` naming the file and the first offending keys.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import torch

from ...core.checks import warn_if_slow_bfloat16
from ...io.weights import read_state_dict, state_dict_mismatch
from .config import TripoSRConfig
from .model import TripoSRModel

__all__ = ["check_state_dict", "load_triposr"]

_WEIGHT_NAMES = ("model.safetensors", "model.ckpt")
_CONFIG_NAME = "config.yaml"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
_SHOWN = 5  # offending keys listed in error messages


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str) -> None:
    """Check ``state`` has exactly the keys of ``expected`` with the same shapes.

    Raises:
        ValueError: naming the first few missing, unexpected or mis-shaped keys (or saying that the checkpoint is of
            another architecture when it shares few keys with the model).
    """
    missing = [key for key in expected if key not in state]
    if len(missing) > len(expected) / 2:
        raise ValueError(
            f"{source} is not a TripoSR checkpoint of this configuration: {len(missing)} of {len(expected)} "
            f"expected keys are missing (its first keys: {list(state)[:_SHOWN]})"
        )
    problems = state_dict_mismatch(state, expected, _SHOWN)
    if problems:
        raise ValueError(f"{source} does not match the TripoSR architecture: " + "; ".join(problems))


#: Suffixes of weight files (the official ``model.ckpt``, safetensors, other torch pickles).
_WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face Hub's host cannot be looked up (no network), or None when it can."""
    import socket

    import huggingface_hub

    try:
        socket.getaddrinfo(urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname, 443)
    except OSError as err:
        return str(err)
    return None


def _hub_download(repo_id: str, filename: str) -> Path:
    import logging

    import huggingface_hub

    failed = f"{repo_id!r} is no local file or folder, and downloading its {filename} from the Hugging Face Hub failed"
    offline = _hub_unreachable()
    if offline:  # the hub client would retry for half a minute, logging each try
        raise ValueError(f"{failed}: no network ({offline})")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retries' log lines: the error below says what happened, in one line
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as err:  # network, authentication, missing file: all mean "not available"
        raise ValueError(f"{failed}: {err}") from err
    finally:
        hub_logger.setLevel(level)


def _resolve_paths(weights_path: str | os.PathLike, config_path: str | os.PathLike | None) -> tuple[Path, Path]:
    """Local file, folder, or Hugging Face repo id -> (weights file, config file)."""
    location = Path(weights_path)
    if location.is_dir():
        candidates = [location / name for name in _WEIGHT_NAMES if (location / name).is_file()]
        if not candidates:
            raise ValueError(f"no {' or '.join(_WEIGHT_NAMES)} in the folder {location}")
        weights = candidates[0]
    elif location.is_file():
        if location.suffix.lower() not in _WEIGHT_SUFFIXES:  # e.g. a mesh or an image given by mistake
            raise ValueError(f"{location} is not a weights file (a {', '.join(_WEIGHT_SUFFIXES)} file or its folder)")
        weights = location
    elif (
        isinstance(weights_path, str)
        and _REPO_ID.match(weights_path)
        and not weights_path.startswith(".")
        and location.suffix.lower() not in _WEIGHT_SUFFIXES
    ):
        weights = _hub_download(weights_path, "model.ckpt")
        if config_path is None:
            config_path = _hub_download(weights_path, _CONFIG_NAME)
    else:
        raise ValueError(f"weights not found: {weights_path} (neither a file, a folder nor a Hugging Face repo id)")
    if config_path is not None:
        config = Path(config_path)
        if not config.is_file():
            raise ValueError(f"config file not found: {config}")
    else:
        config = weights.parent / _CONFIG_NAME
        if not config.is_file():
            raise ValueError(
                f"config file not found: no {_CONFIG_NAME} beside {weights} (give the model's config: --config on "
                "the command line, config_path in Python)"
            )
    return weights, config


def load_triposr(
    weights_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TripoSRModel:
    """Load a TripoSR model in eval mode.

    Args:
        weights_path: ``model.ckpt`` or ``*.safetensors`` file, a folder holding one (``model.safetensors`` if it
            holds both) and its ``config.yaml``, or a Hugging Face repo id such as ``"stabilityai/TripoSR"``
            (``config.yaml`` and ``model.ckpt`` are downloaded with ``huggingface_hub.hf_hub_download``).
        config_path: ``config.yaml`` (official or monorecon layout); default beside the weights.
        device: torch device of the model.
        dtype: ``torch.float32``, or ``torch.bfloat16`` to run the image encoder and backbone under autocast
            (weights stay float32; scene codes, decoder and rendering are float32).

    Raises:
        ValueError: missing or unreadable files, an unsupported dtype, or weights that do not match the architecture.
    """
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {_SUPPORTED_DTYPES}, got {dtype}")
    weights, config_file = _resolve_paths(weights_path, config_path)
    config = TripoSRConfig.load(config_file)
    state = read_state_dict(weights)
    # Built on the meta device: no time or memory spent on a random initialisation that is overwritten anyway.
    with torch.device("meta"):
        model = TripoSRModel(config)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_dict(state, expected, str(weights))
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    broken = [key for key, value in state.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if broken:  # every image would fail later, in the scene code
        raise ValueError(f"weights {weights} hold NaN or infinite values ({len(broken)} tensors, e.g. {broken[0]})")
    model.load_state_dict(state, strict=True, assign=True)
    model.autocast_dtype = None if dtype == torch.float32 else dtype
    if dtype == torch.bfloat16:
        warn_if_slow_bfloat16(device, "inference")
    return model.to(device).eval()
