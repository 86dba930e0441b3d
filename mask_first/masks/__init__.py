"""Tissue masks, mask overlays and assembly of tile predictions into masks."""
