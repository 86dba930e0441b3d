"""CLAM / TRIDENT coordinate files: what their readers access, and the right level-0 corners."""

import h5py
import numpy as np
import openslide
import pytest

from mask_first.interop.h5 import write_coords_h5
from mask_first.slides import open_slide

SLIDE = "CMU-1-Small-Region_generic-pyramid_jpeg.tif"


@pytest.fixture
def coords_file(shared_slides, tmp_path):
    """Tiles on level 1 of a real 5-level pyramid (downsample 2 per axis, rounded sizes)."""
    rng = np.random.default_rng(7)
    with open_slide(shared_slides / SLIDE) as slide:
        w1, h1 = slide.level_dimensions[1]
        x = rng.integers(0, w1 - 128, 25)
        y = rng.integers(0, h1 - 128, 25)
        path = write_coords_h5(tmp_path / "s.h5", x, y, level=1, tile_extent=(128, 128), stride=(96, 96),
                               slide=slide, name="cmu")
        ds = slide.levels[1].downsample_x, slide.levels[1].downsample_y
        mags = 10 / np.sqrt(slide.mpp_x * slide.mpp_y)
    return path, x, y, ds, mags


def test_coords_are_the_tiles_level0_corners(coords_file):
    path, x, y, ds, _ = coords_file
    with h5py.File(path, "r") as f:
        coords = f["coords"][:]
        assert f["coords"].dtype == np.int64 and coords.shape == (25, 2)
    assert np.array_equal(coords[:, 0], np.rint(x * ds[0]).astype(np.int64))
    assert np.array_equal(coords[:, 1], np.rint(y * ds[1]).astype(np.int64))


def test_clam_reader_reads_the_same_pixels(coords_file, shared_slides):
    """CLAM's Whole_Slide_Bag_FP: attrs patch_level, patch_size; read_region(coords[i], level, (size, size))."""
    path, x, y, _, _ = coords_file
    osr = openslide.OpenSlide(str(shared_slides / SLIDE))
    with h5py.File(path, "r") as f, open_slide(shared_slides / SLIDE) as slide:
        dset = f["coords"]
        patch_level = dset.attrs["patch_level"]
        patch_size = dset.attrs["patch_size"]
        assert (patch_level, patch_size) == (1, 128)
        # CLAM's create_patches also records these
        assert tuple(dset.attrs["level_dim"]) == osr.level_dimensions[1]
        assert tuple(dset.attrs["downsampled_level_dim"]) == osr.level_dimensions[1]
        # CLAM's WholeSlideImage keeps per-axis downsamples (w0 / w, h0 / h)
        (w0, h0), (w1, h1) = osr.level_dimensions[:2]
        assert np.allclose(dset.attrs["downsample"], (w0 / w1, h0 / h1))
        assert dset.attrs["name"] == "cmu"
        for i in (0, 7, 24):
            coord = dset[i]
            clam = np.asarray(osr.read_region(tuple(int(v) for v in coord), int(patch_level),
                                              (int(patch_size), int(patch_size))).convert("RGB"))
            ours = slide.read_region(1, int(x[i]), int(y[i]), 128, 128)
            # the same JPEG tiles through two decoders (chroma upsampling differs by a few levels)
            assert np.abs(clam.astype(float) - ours).mean() < 1.0
            shifted = slide.read_region(1, int(x[i]) + 2, int(y[i]), 128, 128)
            assert np.abs(clam.astype(float) - shifted).mean() > np.abs(clam.astype(float) - ours).mean()
    osr.close()


def test_trident_reader_gets_the_tile_size_and_magnifications(coords_file):
    """TRIDENT's read_coords + WSIPatcher: patch_size at target mag, level0/target magnification."""
    path, _, _, ds, mag0 = coords_file
    with h5py.File(path, "r") as f:  # trident.IO.read_coords
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    assert len(coords) == 25
    patch_size = attrs["patch_size"]
    src, dst = attrs["level0_magnification"], attrs["target_magnification"]
    assert src == pytest.approx(mag0) and src == pytest.approx(20.04, abs=0.01)  # 0.499 µm/px
    # WSIPatcher: level-0 pixels per patch = patch_size * src / dst
    assert patch_size * src / dst == pytest.approx(128 * ds[0], rel=1e-3)
    assert attrs["patch_size_level0"] == round(128 * ds[0])
    assert attrs["overlap"] == 128 - 96
    assert (attrs["level0_width"], attrs["level0_height"]) == (2220, 2967)
    assert attrs["name"] == "cmu" and "savetodir" in attrs


def test_empty_selection_writes_an_empty_coords_dataset(shared_slides, tmp_path):
    with open_slide(shared_slides / SLIDE) as slide:
        path = write_coords_h5(tmp_path / "e.h5", np.zeros(0), np.zeros(0), level=0, tile_extent=(64, 64),
                               stride=None, slide=slide, name="e")
    with h5py.File(path, "r") as f:
        assert f["coords"].shape == (0, 2) and f["coords"].attrs["overlap"] == 0
