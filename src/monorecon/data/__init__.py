"""Data: procedural 3-D objects, multi-view synthetic datasets and their reader (see ``docs/dataset_format.md``)."""

from .dataset import ZERO123_FOV_DEG, MultiViewDataset, ObjaverseConvention
from .shapes import (
    CLASSIC_CLASSES,
    ORGANIC_CLASSES,
    SHAPE_CLASSES,
    load_normalized_mesh,
    make_object,
    normalize_vertices,
)
from .synth import ViewSampling, camera_distance, synthesize_dataset, write_index, write_object

__all__ = [
    "CLASSIC_CLASSES",
    "ORGANIC_CLASSES",
    "SHAPE_CLASSES",
    "ZERO123_FOV_DEG",
    "MultiViewDataset",
    "ObjaverseConvention",
    "ViewSampling",
    "camera_distance",
    "load_normalized_mesh",
    "make_object",
    "normalize_vertices",
    "synthesize_dataset",
    "write_index",
    "write_object",
]
