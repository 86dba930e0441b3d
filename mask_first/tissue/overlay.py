"""Mask overlays: pyramidal TIFF files holding a label mask aligned with its slide.

Format written by :func:`write_mask_overlay`
--------------------------------------------
* BigTIFF, one top-level IFD per pyramid level, level 0 first. Levels > 0
  have NewSubfileType = 1 (reduced-resolution image): OpenSlide 4's
  ``generic-tiff`` driver only takes such IFDs as pyramid levels (without the
  bit it shows a single level).
* Every level: 8-bit greyscale (SamplesPerPixel = 1, Photometric =
  MinIsBlack), tiled ``tile_size`` x ``tile_size``, compressed (default
  Deflate, TIFF compression 8 "Adobe Deflate"; OpenSlide 4 decodes it through
  libtiff's RGBA path and returns grey as R = G = B).
* Level ``k`` has size ``ceil(w_{k-1} / 2) x ceil(h_{k-1} / 2)`` until both
  sides fit in one tile; its pixel ``(i, j)`` is the **mode** (majority label)
  of the 2x2 block ``(2i..2i+1, 2j..2j+1)`` of level ``k-1`` (a block cut by
  an odd edge uses its existing pixels only). Ties go to the **largest**
  label value (so for a 0/255 tissue mask a 2-2 block is tissue). Levels
  therefore contain only label values.
* XResolution = YResolution = ``1e4 / (mpp * 2**k)`` pixels per centimetre,
  ResolutionUnit = centimetre on every page (the pixel pitch of level ``k``
  is exactly ``2**k`` mask pixels; OpenSlide's ``openslide.mpp-x`` is the mask
  mpp).
* ImageDescription of level 0: the provenance as compact JSON (sorted keys).
  No DateTime and no Software tag: the same mask, mpp and provenance give
  byte-identical files.
* The file is written to a hidden temporary name in the destination directory
  and moved into place with :func:`os.replace` only when complete, so an
  interrupted job never leaves a file at the final path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mask_first.io import atomic_path
from mask_first.slides import Slide, open_slide

__all__ = [
    "build_pyramid",
    "check_mask_alignment",
    "mode_downsample_2x2",
    "read_mask_overlay",
    "write_mask_overlay",
]

_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # ResolutionUnit inch, centimetre -> µm


class _OverlayError(ValueError):
    """An invalid overlay (raised as ValueError; lets other errors be wrapped)."""


def mode_downsample_2x2(labels: np.ndarray) -> np.ndarray:
    """Halve a label image by the majority label of each 2x2 block.

    Parameters
    ----------
    labels : ndarray of uint8, shape (h, w)

    Returns
    -------
    ndarray of uint8, shape (ceil(h / 2), ceil(w / 2))
        Pixel ``(i, j)`` is the most frequent value of
        ``labels[2i:2i+2, 2j:2j+2]``; ties go to the largest value. Blocks cut
        by an odd last row/column count only their existing pixels (the edge is
        replicated, which doubles every count alike).
    """
    a = np.asarray(labels)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 label image, got {a.ndim}-D {a.dtype}")
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)), mode="edge")
    p = (a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2])
    best = None
    for i, v in enumerate(p):
        # key = count * 256 + value: the max key is the most frequent value,
        # the largest one among equally frequent values
        count = np.ones(v.shape, np.uint16)
        for j, u in enumerate(p):
            if j != i:
                count += v == u
        key = (count << 8) | v
        best = key if best is None else np.maximum(best, key, out=best)
    return (best & 0xFF).astype(np.uint8)


def build_pyramid(mask: np.ndarray, tile_size: int = 256) -> list[np.ndarray]:
    """Level 0 = ``mask``, then :func:`mode_downsample_2x2` until both sides fit in one tile."""
    levels = [mask]
    while max(levels[-1].shape) > tile_size:
        levels.append(mode_downsample_2x2(levels[-1]))
    return levels


def write_mask_overlay(
    path: str | os.PathLike,
    mask: np.ndarray,
    mpp: float | tuple[float, float],
    *,
    provenance: dict[str, Any] | None = None,
    tile_size: int = 256,
    compression: str = "zlib",
    compression_level: int | None = None,
) -> Path:
    """Write a label mask as a tiled pyramidal BigTIFF overlay (see the module docstring).

    Parameters
    ----------
    path : path-like
        Output file; its directory is created if needed.
    mask : ndarray of uint8, shape (height, width)
        Label image in (y, x) order (e.g. 0 = background, 255 = tissue).
    mpp : float or (float, float)
        Mask resolution in µm/px, (x, y) if a pair.
    provenance : dict, optional
        JSON-serialisable description stored in the ImageDescription of level 0.
    tile_size : int
        Tile edge in pixels, a multiple of 16 (TIFF requirement).
    compression : str
        tifffile compression name: ``"zlib"`` (Deflate, default), ``"lzw"``,
        ``"zstd"`` (not readable by every libtiff), ``"none"``.
    compression_level : int, optional
        Codec level (e.g. 1-9 for zlib).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import tifffile

    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"{path.name}: mask must be a 2-D uint8 array, got {mask.ndim}-D {mask.dtype}")
    if mask.size == 0:
        raise ValueError(f"{path.name}: mask is empty")
    mpp_x, mpp_y = _mpp_pair(mpp, path.name)
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a positive multiple of 16, got {tile_size}")
    description = json.dumps(provenance or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    comp = None if compression in (None, "none", "None") else compression
    comp_args = {"level": compression_level} if (comp and compression_level is not None) else None
    levels = build_pyramid(np.ascontiguousarray(mask), tile_size)

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            with tifffile.TiffWriter(fh, bigtiff=True) as tif:
                for k, arr in enumerate(levels):
                    scale = 2**k
                    tif.write(
                        arr,
                        photometric="minisblack",
                        tile=(tile_size, tile_size),
                        compression=comp,
                        compressionargs=comp_args,
                        subfiletype=1 if k else 0,
                        resolution=(1e4 / (mpp_x * scale), 1e4 / (mpp_y * scale)),
                        resolutionunit="CENTIMETER",
                        description=description if k == 0 else None,
                        software=False,
                        metadata=None,
                    )
    return path


def _mpp_pair(mpp, name: str) -> tuple[float, float]:
    if np.ndim(mpp) == 0:
        mx = my = float(mpp)
    else:
        mx, my = (float(v) for v in mpp)
    if not (mx > 0 and my > 0 and math.isfinite(mx) and math.isfinite(my)):
        raise ValueError(f"{name}: mask mpp must be positive, got {mpp}")
    return mx, my


def read_mask_overlay(path: str | os.PathLike) -> tuple[np.ndarray, float, float, dict[str, Any]]:
    """Read level 0 of a mask overlay.

    Parameters
    ----------
    path : path-like
        A TIFF written by :func:`write_mask_overlay`, or any TIFF whose first
        page is a 2-D uint8 image with resolution tags (user masks).

    Returns
    -------
    mask : ndarray of uint8, shape (height, width)
    mpp_x, mpp_y : float
        µm/px from the XResolution/YResolution tags of level 0.
    provenance : dict
        The JSON ImageDescription; ``{}`` when there is none, and
        ``{"description": text}`` when it is not a JSON object.

    Raises
    ------
    ValueError
        One line naming the file: missing/unreadable file, not a TIFF,
        not 2-D uint8, missing or unusable resolution tags.
    """
    import tifffile

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ValueError(f"{path}: mask overlay file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if page.samplesperpixel != 1 or page.dtype != np.uint8 or len(page.shape) != 2:
                raise _OverlayError(
                    f"{name}: not a mask overlay: level 0 must be a 2-D uint8 image "
                    f"(1 sample), got shape {page.shape} {page.dtype}"
                )
            tags = page.tags
            unit_tag = tags.get("ResolutionUnit")
            unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
            if "XResolution" not in tags or "YResolution" not in tags:
                raise _OverlayError(f"{name}: not a mask overlay: no XResolution/YResolution tags (mask mpp unknown)")
            if unit not in _UM_PER_UNIT:
                raise _OverlayError(
                    f"{name}: not a mask overlay: ResolutionUnit {unit} has no physical unit "
                    "(centimetre or inch needed for the mask mpp)"
                )
            mpps = []
            for tag in ("XResolution", "YResolution"):
                num, den = tags[tag].value
                if not num or not den:
                    raise _OverlayError(f"{name}: not a mask overlay: {tag} is {num}/{den}")
                mpps.append(_UM_PER_UNIT[unit] * den / num)
            description = page.description or ""
            mask = page.asarray()
    except _OverlayError:
        raise
    except Exception as exc:  # tifffile errors, truncated files, ...
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise _OverlayError(f"{name}: not a readable mask overlay TIFF ({cause})") from None
    provenance: dict[str, Any] = {}
    if description.strip():
        try:
            parsed = json.loads(description)
        except json.JSONDecodeError:
            parsed = None
        provenance = parsed if isinstance(parsed, dict) else {"description": description}
    return np.ascontiguousarray(mask), mpps[0], mpps[1], provenance


def check_mask_alignment(
    mask_shape: Sequence[int],
    mask_mpp: float | tuple[float, float],
    slide,
    *,
    mpp_override: float | None = None,
    mask_name: str | None = None,
) -> tuple[int, int]:
    """Check that a mask of ``mask_shape`` at ``mask_mpp`` covers ``slide`` (bring-your-own mask).

    The mask's physical extent (``width * mpp_x``, ``height * mpp_y`` µm) must
    equal the slide's level-0 extent to within one mask pixel on each axis.

    Parameters
    ----------
    mask_shape : (height, width)
        Mask size in pixels, (y, x) order (``mask.shape``).
    mask_mpp : float or (float, float)
        Mask µm/px, (x, y) if a pair.
    slide : Slide or path-like
        The slide (a path is opened with ``mpp_override``).
    mask_name : str, optional
        Name used in the error message.

    Returns
    -------
    (int, int)
        The expected (height, width) of a mask at ``mask_mpp`` for this slide
        (``ceil`` of the slide extent over the mask mpp).

    Raises
    ------
    ValueError
        One line with the mask and slide sizes in pixels and µm and the
        expected mask size.
    """
    if not isinstance(slide, Slide):
        with open_slide(slide, mpp_override) as opened:
            return check_mask_alignment(mask_shape, mask_mpp, opened, mask_name=mask_name)
    label = mask_name or "mask"
    if len(mask_shape) < 2:
        raise ValueError(f"{label}: mask shape {tuple(mask_shape)} is not 2-D")
    h, w = int(mask_shape[0]), int(mask_shape[1])
    mx, my = _mpp_pair(mask_mpp, label)
    w0, h0 = slide.level_dimensions[0]
    ext_x, ext_y = w0 * slide.mpp_x, h0 * slide.mpp_y
    expect = (max(1, math.ceil(ext_y / my - 1e-6)), max(1, math.ceil(ext_x / mx - 1e-6)))
    dx, dy = abs(w * mx - ext_x), abs(h * my - ext_y)
    if dx > mx * (1 + 1e-6) or dy > my * (1 + 1e-6):
        raise ValueError(
            f"{label}: does not fit slide {slide.path.name}: mask is {w} x {h} px at "
            f"{mx:g} x {my:g} µm/px = {w * mx:.1f} x {h * my:.1f} µm, slide is {w0} x {h0} px at "
            f"{slide.mpp_x:g} µm/px = {ext_x:.1f} x {ext_y:.1f} µm; expected a mask of "
            f"{expect[1]} x {expect[0]} px (width x height) at that mpp (tolerance: one mask pixel)"
        )
    return expect
