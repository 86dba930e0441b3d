"""Tiles: the grid of tile coordinates, each tile's mask coverage and the keep rule, tile pixels.

The names below load their submodule on first use (PEP 562), so a job that
imports one submodule (the tile job: ``grid``; the filter job: ``coverage``)
does not pay for the others.
"""

import importlib

#: public name -> submodule that defines it
_WHERE = {
    "grid_shape": "grid",
    "grid_tiles": "grid",
    "overlap_fractions": "coverage",
    "summed_area_table": "coverage",
    "tile_overlay_overlap": "coverage",
    "retain": "coverage",
    "iter_slide_tiles": "pixels",
    "load_tile_pixels": "pixels",
    "read_slide_tiles": "pixels",
    "tile_pixel_std": "pixels",
    "write_tile_pixels": "pixels",
}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"mask_first.tiles.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
