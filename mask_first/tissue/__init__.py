"""Tissue: detection on a low-resolution pyramid level, and the aligned mask overlay TIFF.

The detector is imported on first use: it loads OpenCV (~0.2 s), which the jobs
that only read or write overlays (tiles, filter, pixels) do not need.
"""

from mask_first.tissue.overlay import check_mask_alignment, read_mask_overlay, write_mask_overlay

__all__ = ["tissue_mask", "tissue_mask_with_info", "write_mask_overlay", "read_mask_overlay", "check_mask_alignment"]

_DETECTION = ("tissue_mask", "tissue_mask_with_info")


def __getattr__(name: str):
    if name in _DETECTION:
        from mask_first.tissue import detection

        return getattr(detection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_DETECTION))
