"""TripoSR-compatible single-image reconstruction model (loads the official checkpoint unchanged).

See :class:`TripoSRModel` for the API and its frame conventions, :func:`load_triposr` for loading.
"""

from .config import (
    BackboneConfig,
    DecoderConfig,
    ImageEncoderConfig,
    PostProcessorConfig,
    RendererConfig,
    TokenizerConfig,
    TripoSRConfig,
)
from .loading import check_state_dict, load_triposr
from .model import TripoSRModel

__all__ = [
    "BackboneConfig",
    "DecoderConfig",
    "ImageEncoderConfig",
    "PostProcessorConfig",
    "RendererConfig",
    "TokenizerConfig",
    "TripoSRConfig",
    "TripoSRModel",
    "check_state_dict",
    "load_triposr",
]
