"""mask-first: tissue masks first, RGB pixels only for the tiles that hold tissue.

The pipeline, one function per step::

    read_slides            slide table: level for a target µm/px, extents, stable id
    masks.tissue_mask      tissue mask from a low-resolution pyramid level
    masks.write_mask_overlay   aligned pyramidal TIFF overlay of the mask
    tiling.grid_tiles      tile coordinates of a slide level
    tiling.tile_overlay_overlap  per-tile mask coverage, no RGB decoding
    tiling.read_slide_tiles      RGB pixels of the kept tiles only

``import mask_first`` loads nothing but this file: the names below come from
:mod:`mask_first.slides` on first use, so a process that only needs a small
module (a job handing its work to the warm process, the Snakefile) does not
pay numpy's import.
"""

__all__ = ["SlideError", "open_slide", "read_slides"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from mask_first import slides

        return getattr(slides, name)
    raise AttributeError(f"module 'mask_first' has no attribute {name!r}")
