"""The seed API's ``masks`` import path, kept for its readers.

Tissue detection and overlays live in :mod:`mask_first.tissue`, the
MaskBuilder in :mod:`mask_first.assembly`; these are the same objects.
"""

from mask_first.assembly import (
    Aggregator,
    InMemoryStorage,
    MaskBuilder,
    MaskGeometry,
    MaxAggregator,
    MeanAggregator,
    MemmapStorage,
    Storage,
    mask_geometry,
)
from mask_first.masks import mask_builders
from mask_first.tissue import check_mask_alignment, read_mask_overlay, tissue_mask, tissue_mask_with_info, write_mask_overlay

__all__ = [
    "mask_builders",
    "tissue_mask",
    "tissue_mask_with_info",
    "write_mask_overlay",
    "read_mask_overlay",
    "check_mask_alignment",
    "MaskBuilder",
    "mask_geometry",
    "MaskGeometry",
    "Aggregator",
    "MeanAggregator",
    "MaxAggregator",
    "Storage",
    "InMemoryStorage",
    "MemmapStorage",
]
