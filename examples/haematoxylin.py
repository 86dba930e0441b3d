"""Example models for ``predict.model``: haematoxylin by colour deconvolution, no download.

Ruifrok & Johnston's colour deconvolution turns RGB into stain amounts: the
optical density ``OD = -log10(I / 255)`` of each channel is a linear mix of the
haematoxylin, eosin and DAB stain vectors, so ``OD @ inv(stains)`` gives the
amount of each stain per pixel (as in ``skimage.color.rgb2hed``).

* ``score``: mean haematoxylin amount per tile, ``(B, 1)`` (nuclear density)
* ``haematoxylin_map``: per-pixel haematoxylin averaged over blocks of
  ``POOL x POOL`` pixels, ``(B, 1, H / POOL, W / POOL)``, a dense map on a
  coarser output grid, as a segmentation network would return

Run on the demo cohort (from the repository root)::

    snakemake --cores 2 --config predict='{model: examples/haematoxylin.py:score, columns: [haematoxylin]}'
"""

import numpy as np

#: stain optical-density vectors (rows: haematoxylin, eosin, DAB), as in scikit-image
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

#: optical density of each 8-bit value; 0 is read as 1 so OD stays finite
_OD = -np.log10(np.maximum(np.arange(256), 1) / 255.0)
#: haematoxylin contribution of each value of the R, G and B channels
_H_LUT = (_OD[:, None] * HED_FROM_RGB[:, 0][None, :]).astype(np.float32)  # (256, 3)

#: output pixel of the dense map, in tile pixels
POOL = 8


def haematoxylin(tiles: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W) float32 haematoxylin amount (OD units, >= 0)."""
    h = _H_LUT[tiles[..., 0], 0]
    h += _H_LUT[tiles[..., 1], 1]
    h += _H_LUT[tiles[..., 2], 2]
    return np.maximum(h, 0, out=h)


def score(tiles: np.ndarray) -> np.ndarray:
    """Mean haematoxylin amount of each tile, (B, 1) float32."""
    h = haematoxylin(tiles)
    return h.reshape(len(h), -1).mean(axis=1, dtype=np.float64).astype(np.float32)[:, None]


def haematoxylin_map(tiles: np.ndarray) -> np.ndarray:
    """Haematoxylin averaged over POOL x POOL blocks, (B, 1, H // POOL, W // POOL) float32."""
    b, height, width = tiles.shape[:3]
    if height % POOL or width % POOL:
        raise ValueError(f"tiles of {width} x {height} px are not a multiple of POOL={POOL}")
    h = haematoxylin(tiles).reshape(b, height // POOL, POOL, width // POOL, POOL)
    return h.mean(axis=(2, 4))[:, None]
