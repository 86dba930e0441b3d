"""Assembly: per-tile predictions back into slide-sized masks (MaskBuilder) and heatmaps."""

from mask_first.assembly.mask_builders import (
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

__all__ = [
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
