"""mask_first.io: the cohort TSV writer and reader, checked against pandas' own parser; drop-behind writes."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from mask_first.io import read_tsv, write_tsv


def test_tsv_reads_back_in_pandas_with_empty_cells_for_missing_values(tmp_path):
    rows = [
        {"slide_id": "a", "tiles": 300, "fraction": 0.123456789, "error": None, "seconds_tiles": 1.5},
        {"slide_id": "b\tc", "tiles": None, "fraction": math.nan, "error": 'bad "header"\nsecond line'},
        {"slide_id": "d", "tiles": 12345678, "fraction": 1e-7, "flags": "ink; border"},
    ]
    write_tsv(tmp_path / "t.tsv", rows)
    df = pd.read_csv(tmp_path / "t.tsv", sep="\t", dtype=str, keep_default_na=False)
    # columns in order of first appearance, keys missing from a row empty
    assert list(df.columns) == ["slide_id", "tiles", "fraction", "error", "seconds_tiles", "flags"]
    assert df.slide_id.tolist() == ["a", "b\tc", "d"]
    assert df.tiles.tolist() == ["300", "", "12345678"]  # ints stay exact, not %g-rounded
    assert df.fraction.tolist() == ["0.123457", "", "1e-07"]
    assert df.error.tolist() == ["", 'bad "header"\nsecond line', ""]
    assert df.seconds_tiles.tolist() == ["1.5", "", ""] and df["flags"].tolist() == ["", "", "ink; border"]
    assert [dict(r) for r in read_tsv(tmp_path / "t.tsv")] == df.to_dict("records")


def test_tsv_write_leaves_no_file_when_a_row_fails(tmp_path):
    class Bad:
        def __str__(self):
            raise RuntimeError("unprintable")

    try:
        write_tsv(tmp_path / "t.tsv", [{"a": 1}, {"a": Bad()}])
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def _resident_pages(path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages in all), by mincore(2) over a mapping of it."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        vec = ctypes.create_string_buffer(pages)
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw), pages


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise (macOS)")
def test_drop_behind_evicts_the_written_part_of_a_file_from_the_page_cache(tmp_path):
    from mask_first.io import drop_behind

    chunk = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    kept, dropped = tmp_path / "kept.bin", tmp_path / "dropped.bin"
    for path in (kept, dropped):
        with open(path, "wb") as f:
            with drop_behind(path) as release:
                for _ in range(4):
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())  # clean pages: released now rather than once written back
                    if path == dropped:
                        release()
    resident, pages = _resident_pages(kept)
    assert resident > 0.9 * pages  # the control: a fresh write stays cached
    resident, pages = _resident_pages(dropped)
    assert resident < 0.1 * pages
    assert dropped.read_bytes() == chunk * 4  # evicted, not lost
