"""Quality-control pictures: a slide thumbnail with the outline of every mask class and the retained tiles.

Class colours (labels of :data:`mask_first.tissue.detection.LABELS`, repeated
here so a QC job does not import the detector): tissue (255) red, ink (64)
blue, debris (32) orange; any other non-zero label of a user mask magenta.
"""

from __future__ import annotations

import numpy as np

from mask_first.slides import Slide

__all__ = ["thumbnail", "qc_thumbnail", "outline"]

MASK_COLOUR = np.array([230, 20, 20], np.uint8)
TILE_COLOUR = np.array([0, 150, 60], np.uint8)
#: outline colour per mask label (255 tissue, 64 ink, 32 debris)
CLASS_COLOURS = {255: MASK_COLOUR, 64: np.array([20, 60, 255], np.uint8), 32: np.array([255, 150, 0], np.uint8)}
OTHER_COLOUR = np.array([220, 0, 220], np.uint8)


def thumbnail(slide: Slide, size: int = 1024) -> tuple[np.ndarray, float, float]:
    """Slide thumbnail whose longer side is at most ``size`` pixels.

    Reads the coarsest pyramid level that is still at least as fine as the
    thumbnail, then shrinks it with an area filter.

    Returns
    -------
    (ndarray of uint8 (h, w, 3), mpp_x, mpp_y)
        The thumbnail and its resolution in µm/px.
    """
    import pyvips

    w0, h0 = slide.level_dimensions[0]
    target = max(w0 * slide.mpp_x, h0 * slide.mpp_y) / size  # µm/px of the thumbnail
    level = slide.best_level_for_mpp(target)
    img = slide.read_level(level)
    lmx, lmy = slide.level_mpp(level)
    tw = max(1, int(round(w0 * slide.mpp_x / target)))
    th = max(1, int(round(h0 * slide.mpp_y / target)))
    vimg = pyvips.Image.new_from_array(img)
    if (vimg.width, vimg.height) != (tw, th):
        vimg = vimg.resize(tw / vimg.width, vscale=th / vimg.height, kernel="linear")
    out = vimg.numpy()[:th, :tw]
    return np.ascontiguousarray(out), w0 * slide.mpp_x / out.shape[1], h0 * slide.mpp_y / out.shape[0]


def outline(mask: np.ndarray) -> np.ndarray:
    """Boolean image of the pixels of ``mask`` (bool, (H, W)) that touch a pixel of the other class."""
    m = mask.astype(bool)
    edge = np.zeros_like(m)
    edge[:-1] |= m[:-1] != m[1:]
    edge[1:] |= m[1:] != m[:-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    return edge & m


def _resample_nearest(mask: np.ndarray, mask_mpp, shape, mpp) -> np.ndarray:
    """Mask values at the centres of a (h, w) grid of ``mpp`` µm/px (nearest neighbour)."""
    h, w = shape
    rows = np.floor((np.arange(h) + 0.5) * mpp[1] / mask_mpp[1]).astype(np.int64)
    cols = np.floor((np.arange(w) + 0.5) * mpp[0] / mask_mpp[0]).astype(np.int64)
    ok_r = rows < mask.shape[0]
    ok_c = cols < mask.shape[1]
    out = np.zeros((h, w), mask.dtype)
    # two 1-D takes: a 2-D np.ix_ gather is several times slower
    out[: ok_r.sum(), : ok_c.sum()] = mask.take(rows[ok_r], axis=0).take(cols[ok_c], axis=1)
    return out


def qc_thumbnail(
    slide: Slide,
    tile_x: np.ndarray,
    tile_y: np.ndarray,
    tile_extent: tuple[int, int],
    tile_mpp: tuple[float, float],
    *,
    mask: tuple[np.ndarray, tuple[float, float]] | None = None,
    size: int = 1024,
) -> np.ndarray:
    """Thumbnail with the outline of each mask class (tissue red, ink blue, debris orange) and the retained tiles (green).

    Parameters
    ----------
    slide : Slide
    tile_x, tile_y : array of int, shape (N,)
        Top-left corners of the retained tiles in pixels of their level.
    tile_extent : (int, int)
        Tile (width, height) in pixels of that level.
    tile_mpp : (float, float)
        (mpp_x, mpp_y) of that level in µm/px.
    mask : (ndarray (H, W), (mpp_x, mpp_y)), optional
        Label mask (255 tissue, 64 ink, 32 debris, 0 background) and its resolution.
    size : int
        Longer side of the picture in pixels.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3)
    """
    img, tmx, tmy = thumbnail(slide, size)
    h, w = img.shape[:2]
    tile_x = np.asarray(tile_x, np.float64)
    tile_y = np.asarray(tile_y, np.float64)
    if len(tile_x):
        # rasterise all tile rectangles at once with a 2-D difference array
        sx = float(tile_mpp[0]) / tmx
        sy = float(tile_mpp[1]) / tmy
        x0 = np.clip(np.floor(tile_x * sx).astype(np.int64), 0, w)
        y0 = np.clip(np.floor(tile_y * sy).astype(np.int64), 0, h)
        x1 = np.clip(np.ceil((tile_x + tile_extent[0]) * sx).astype(np.int64), 0, w)
        y1 = np.clip(np.ceil((tile_y + tile_extent[1]) * sy).astype(np.int64), 0, h)
        diff = np.zeros((h + 1, w + 1), np.int32)
        np.add.at(diff, (y0, x0), 1)
        np.add.at(diff, (y0, x1), -1)
        np.add.at(diff, (y1, x0), -1)
        np.add.at(diff, (y1, x1), 1)
        covered = diff.cumsum(0).cumsum(1)[:h, :w] > 0
        grid = np.zeros((h, w), bool)
        cols = np.zeros(w + 1, bool)
        rows = np.zeros(h + 1, bool)
        cols[x0] = True
        rows[y0] = True
        grid |= cols[None, :w]
        grid |= rows[:h, None]
        # 3/4 slide, 1/4 tile colour, in integers and only where tiles are
        img[covered] = (3 * img[covered].astype(np.uint16) + TILE_COLOUR) // 4
        img[covered & grid] = TILE_COLOUR
    if mask is not None:
        m, mmpp = mask
        resampled = _resample_nearest(m, mmpp, (h, w), (tmx, tmy))
        # tissue last, so its outline wins where classes touch
        for value in sorted((int(v) for v in np.unique(resampled) if v), key=lambda v: (v == 255, v)):
            img[outline(resampled == value)] = CLASS_COLOURS.get(value, OTHER_COLOUR)
    return img
