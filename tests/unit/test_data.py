"""TileDataset: a plain sequence, and a DataLoader source with worker processes where torch exists."""

import numpy as np
import openslide
import pytest

from mask_first.data import TileDataset
from mask_first.io import write_table
from mask_first.tiles.pixels import load_tile_pixels, write_tile_pixels

SLIDE = "CMU-1-Small-Region.svs"


@pytest.fixture
def retained(shared_slides, tmp_path):
    """A retained table of 40 tiles (30 kept) of 96 x 80 px on level 0 of a real SVS."""
    rng = np.random.default_rng(3)
    n = 40
    keep = np.zeros(n, bool)
    keep[rng.choice(n, 30, replace=False)] = True
    table = {
        "slide_id": ["cmu"] * n, "tile_id": np.arange(n, dtype=np.int64), "level": np.zeros(n, np.int32),
        "x": rng.integers(0, 2220 - 96, n).astype(np.int64), "y": rng.integers(0, 2967 - 80, n).astype(np.int64),
        "tile_extent_x": np.full(n, 96, np.int32), "tile_extent_y": np.full(n, 80, np.int32),
        "fraction_255": rng.random(n), "retained": keep,
    }
    write_table(tmp_path / "retained.parquet", table)
    return tmp_path / "retained.parquet", table


def _openslide_tile(osr, x, y, w, h):
    rgba = np.asarray(osr.read_region((int(x), int(y)), 0, (w, h))).astype(np.float64)
    a = rgba[..., 3:] / 255
    return rgba[..., :3] * a + 255 * (1 - a)


def test_from_slide_matches_openslide_read_region(shared_slides, retained):
    path, table = retained
    ds = TileDataset.from_slide(path, shared_slides / SLIDE)
    kept = np.flatnonzero(table["retained"])
    assert len(ds) == 30
    osr = openslide.OpenSlide(str(shared_slides / SLIDE))
    for i in (0, 13, 29, -1):
        pixels, meta = ds[i]
        k = kept[i]
        assert pixels.dtype == np.uint8 and pixels.shape == (80, 96, 3)
        assert (meta["x"], meta["y"], meta["tile_id"]) == (table["x"][k], table["y"][k], k)
        assert np.abs(pixels - _openslide_tile(osr, meta["x"], meta["y"], 96, 80)).mean() < 1.0
    osr.close()
    with pytest.raises(IndexError):
        ds[30]
    assert len(TileDataset.from_slide(path, shared_slides / SLIDE, all_tiles=True)) == 40


def test_from_pixels_equals_load_tile_pixels_across_row_groups(shared_slides, retained, tmp_path):
    path, table = retained
    out = tmp_path / "pixels.parquet"
    write_tile_pixels(out, shared_slides / SLIDE, table, level=0, tile_extent_x=96, tile_extent_y=80,
                      row_group_tiles=7)  # 6 row groups: indexing crosses their edges
    ref = list(load_tile_pixels(out))
    ds = TileDataset.from_pixels(out, transform=lambda a: a.astype(np.float32) / 255)
    assert len(ds) == len(ref) == 40
    for i in (39, 0, 6, 7, 20, 13):  # out of order: row groups are re-read as needed
        pixels, meta = ds[i]
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels, ref[i][1].astype(np.float32) / 255)
        assert meta["tile_id"] == ref[i][0]["tile_id"] and "pixels" not in meta


def test_dataloader_with_worker_processes(shared_slides, retained, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch; a CPU wheel is enough)")
    from torch.utils.data import DataLoader

    path, table = retained
    out = tmp_path / "pixels.parquet"
    write_tile_pixels(out, shared_slides / SLIDE, table, level=0, tile_extent_x=96, tile_extent_y=80,
                      row_group_tiles=8)
    ref = {row["tile_id"]: arr for row, arr in load_tile_pixels(out)}
    for ds in (TileDataset.from_pixels(out), TileDataset.from_slide(path, shared_slides / SLIDE, all_tiles=True)):
        ds[0]  # the parent opens its handle first: workers must not share it
        loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        seen = []
        for pixels, meta in loader:
            assert pixels.shape[1:] == (80, 96, 3) and pixels.dtype == torch.uint8
            for k, tid in enumerate(meta["tile_id"].tolist()):
                # the same tiles whichever process decoded them
                assert np.abs(pixels[k].numpy().astype(float) - ref[tid]).mean() < 1.0
                seen.append(tid)
        assert sorted(seen) == list(range(40))


def test_from_slide_delivers_the_asked_size_as_the_block_mean_of_the_region(shared_slides, retained):
    path, table = retained
    ds = TileDataset.from_slide(path, shared_slides / SLIDE, resample_to=(48, 40))
    kept = np.flatnonzero(table["retained"])
    osr = openslide.OpenSlide(str(shared_slides / SLIDE))
    mpp0 = float(osr.properties["openslide.mpp-x"])
    for i in (0, 7, 29):
        pixels, meta = ds[i]
        k = kept[i]
        assert pixels.shape == (40, 48, 3)
        assert (meta["tile_extent_x"], meta["tile_extent_y"], meta["read_extent_x"], meta["read_extent_y"]) == \
            (48, 40, 96, 80)
        assert meta["mpp_x"] == pytest.approx(2 * mpp0)
        # 96 x 80 -> 48 x 40 is an exact 2 x 2 block mean: OpenSlide's region averaged by hand
        native = _openslide_tile(osr, table["x"][k], table["y"][k], 96, 80)
        block = native.reshape(40, 2, 48, 2, 3).mean(axis=(1, 3))
        assert np.abs(pixels - block).max() <= 1.0
    osr.close()
