"""Tiles: the grid of tile coordinates, each tile's mask coverage and the keep rule, tile pixels."""

from mask_first.tiles.coverage import overlap_fractions, retain, summed_area_table, tile_overlay_overlap
from mask_first.tiles.grid import grid_shape, grid_tiles
from mask_first.tiles.pixels import (
    iter_slide_tiles,
    load_tile_pixels,
    read_slide_tiles,
    tile_pixel_std,
    write_tile_pixels,
)

__all__ = [
    "grid_shape",
    "grid_tiles",
    "overlap_fractions",
    "summed_area_table",
    "tile_overlay_overlap",
    "retain",
    "iter_slide_tiles",
    "load_tile_pixels",
    "read_slide_tiles",
    "tile_pixel_std",
    "write_tile_pixels",
]
