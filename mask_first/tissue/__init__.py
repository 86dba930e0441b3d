"""Tissue: detection on a low-resolution pyramid level, and the aligned mask overlay TIFF."""

from mask_first.tissue.detection import tissue_mask, tissue_mask_with_info
from mask_first.tissue.overlay import check_mask_alignment, read_mask_overlay, write_mask_overlay

__all__ = ["tissue_mask", "tissue_mask_with_info", "write_mask_overlay", "read_mask_overlay", "check_mask_alignment"]
