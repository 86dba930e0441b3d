"""JPEG tiles decoded straight into a tile array, through libjpeg-turbo's TurboJPEG API.

A 512-px tile over 256-px stored tiles is four stored tiles side by side;
their rows are not contiguous in the tile, and imagecodecs' decoders only
write contiguous arrays, so each stored tile would be decoded into a scratch
buffer and copied. ``tjDecompress2`` takes a row pitch and writes each stored
tile into its quadrant directly (and was measured faster per tile as well:
``benchmarks/bench_pixels.py``).

The library is the system's ``libturbojpeg`` (Debian: ``apt install
libturbojpeg0``), loaded with :mod:`ctypes`, which releases the GIL during the
call, so decoder threads run in parallel. Without it :func:`decoder` returns
None and the readers keep their imagecodecs path (same pixels, tested).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

__all__ = ["TurboDecoder", "decoder", "abbreviated_prefix"]

_TJPF_RGB = 0
_TJERR_WARNING = 0
#: APP14 "Adobe" segment, transform 0: the components are R, G, B. Aperio writes
#: RGB-coded JPEG tiles without a JFIF or Adobe marker, which libjpeg would take
#: for YCbCr; OpenSlide and libvips insert the same marker.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOI = b"\xff\xd8"

_lib = None
_tried = False


def _load():
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("MASK_FIRST_TURBOJPEG", "1") == "0":  # off switch (and the tests' fallback runs)
        return None
    name = ctypes.util.find_library("turbojpeg")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjDestroy.argtypes = [ctypes.c_void_p]
        lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.tjDecompress2.restype = ctypes.c_int
        lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        lib.tjDecompressHeader3.restype = ctypes.c_int
        lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
    except (OSError, AttributeError):  # too old a libturbojpeg (< 2.0): no tjGetErrorCode
        return None
    _lib = lib
    return lib


def available() -> bool:
    """True when libturbojpeg was found and loads."""
    return _load() is not None


def abbreviated_prefix(tables: bytes | None, rgb_coded: bool) -> bytes:
    """Bytes that make a TIFF JPEG tile a complete stream when put before its data minus SOI.

    Parameters
    ----------
    tables : bytes or None
        The page's JPEGTables (SOI, DQT/DHT segments, EOI), shared by all its tiles.
    rgb_coded : bool
        The components are R, G, B (TIFF photometric RGB without a JFIF marker).
    """
    body = tables[2:-2] if tables else b""
    return _SOI + (_ADOBE_RGB if rgb_coded else b"") + body


class TurboDecoder:
    """One TurboJPEG decompressor; not thread-safe: one per thread, closed after use."""

    def __init__(self, lib) -> None:
        self._lib = lib
        self._h = lib.tjInitDecompress()
        if not self._h:
            raise MemoryError("tjInitDecompress failed")
        self._dims = [ctypes.c_int() for _ in range(4)]
        self._refs = [ctypes.byref(v) for v in self._dims]

    def decode_into(self, stream: bytes, dst: np.ndarray) -> str | None:
        """Decode a complete JPEG stream into ``dst``, (height, width, 3) uint8 with rows of any pitch.

        Returns
        -------
        None on success, else TurboJPEG's message (warnings included: the
        caller falls back to a decoder that decides what a warning means).
        """
        h, w = dst.shape[:2]
        if dst.dtype != np.uint8 or dst.shape[2] != 3 or dst.strides[1:] != (3, 1) or not dst.flags.writeable:
            raise ValueError("dst must be a writeable (h, w, 3) uint8 view with contiguous pixels")
        # a stream of another size would be scaled to fit or leave part of dst unwritten
        if self._lib.tjDecompressHeader3(self._h, stream, len(stream), *self._refs) == 0:
            if (self._dims[0].value, self._dims[1].value) != (w, h):
                return f"stream is {self._dims[0].value} x {self._dims[1].value} px, expected {w} x {h}"
            rc = self._lib.tjDecompress2(self._h, stream, len(stream), dst.ctypes.data, w, dst.strides[0], h,
                                         _TJPF_RGB, 0)
            if rc == 0:
                return None
        return (self._lib.tjGetErrorStr2(self._h) or b"").decode(errors="replace")

    def close(self) -> None:
        if self._h:
            self._lib.tjDestroy(self._h)
            self._h = None

    def __enter__(self) -> "TurboDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decoder() -> TurboDecoder | None:
    """A new decompressor, or None when libturbojpeg is not available."""
    lib = _load()
    return None if lib is None else TurboDecoder(lib)
