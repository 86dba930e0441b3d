"""Tissue masks, mask overlays and assembly of tile predictions into masks."""

from mask_first.masks.mask_builders import (
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
from mask_first.masks.overlay import check_mask_alignment, read_mask_overlay, write_mask_overlay
from mask_first.masks.tissue import tissue_mask, tissue_mask_with_info

__all__ = [
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
