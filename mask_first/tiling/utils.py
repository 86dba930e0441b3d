"""The seed API's ``tiling.utils`` import path; the code lives in :mod:`mask_first.ids`."""

from mask_first.ids import row_hash, stable_id

__all__ = ["row_hash", "stable_id"]
