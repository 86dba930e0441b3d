"""Tile grids, tile/mask overlap and retained-tile pixel reads."""
