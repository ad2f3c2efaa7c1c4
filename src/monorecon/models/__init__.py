"""Reconstruction models built on the monorecon core."""

from .triposr import TripoSRConfig, TripoSRModel, load_triposr

__all__ = ["TripoSRConfig", "TripoSRModel", "load_triposr"]
