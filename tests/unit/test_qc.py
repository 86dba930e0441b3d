"""QC pictures: outline and tile overlay positions against brute force."""

import numpy as np

from mask_first.qc import outline, qc_thumbnail, thumbnail
from mask_first.slides import open_slide


def test_outline_marks_foreground_pixels_with_a_background_4_neighbour():
    m = np.zeros((7, 7), bool)
    m[2:5, 2:6] = True
    got = outline(m)
    ref = np.zeros_like(m)
    for i in range(7):
        for j in range(7):
            if m[i, j]:
                nb = [m[i + di, j + dj] for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))
                      if 0 <= i + di < 7 and 0 <= j + dj < 7]
                ref[i, j] = not all(nb)
    np.testing.assert_array_equal(got, ref)


def test_thumbnail_size_and_resolution(small_tiff):
    with open_slide(small_tiff) as s:
        img, mx, my = thumbnail(s, size=175)
    assert img.shape == (150, 175, 3) and mx == my == 2.0  # level 2 of the 700 x 600 px, 0.5 µm/px slide


def test_retained_tiles_are_tinted_exactly_where_they_are(small_tiff):
    with open_slide(small_tiff) as s:
        base, _, _ = thumbnail(s, size=350)
        img = qc_thumbnail(s, np.array([0, 200]), np.array([0, 100]), (100, 100), (1.0, 1.0), size=350)
    changed = (img != base).any(axis=2)
    expected = np.zeros(changed.shape, bool)
    expected[0:100, 0:100] = True  # thumbnail is 1 µm/px: tile pixels map 1:1
    expected[100:200, 200:300] = True
    np.testing.assert_array_equal(changed, expected)


def test_each_mask_class_is_outlined_in_its_own_colour(small_tiff):
    from mask_first.qc import CLASS_COLOURS

    mask = np.zeros((30, 35), np.uint8)  # 10 µm/px
    mask[2:10, 2:12] = 255  # tissue
    mask[15:20, 20:30] = 64  # ink
    mask[22:25, 5:8] = 32  # debris
    with open_slide(small_tiff) as s:
        base, _, _ = thumbnail(s, size=350)
        img = qc_thumbnail(s, np.zeros(0), np.zeros(0), (1, 1), (1.0, 1.0), mask=(mask, (10.0, 10.0)), size=350)
    h, w = base.shape[:2]
    # the thumbnail is 1 µm/px: pixel (y, x) lies in mask pixel (y // 10, x // 10)
    labels = mask[np.arange(h)[:, None] // 10, np.arange(w)[None, :] // 10]
    for value, colour in CLASS_COLOURS.items():
        m = labels == value
        edge = np.zeros_like(m)
        edge[1:-1, 1:-1] = m[1:-1, 1:-1] & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
        edge[[0, -1], :] |= m[[0, -1], :]
        edge[:, [0, -1]] |= m[:, [0, -1]]
        assert edge.any()
        assert (img[edge] == colour).all(), value
    changed = (img != base).any(axis=2)
    assert not changed[labels == 0].any()  # background untouched


def test_nearest_resample_picks_the_mask_pixel_under_each_thumbnail_centre_and_zero_past_the_mask():
    from mask_first.qc import _resample_nearest

    rng = np.random.default_rng(3)
    mask = rng.integers(1, 255, (37, 53), dtype=np.uint8)
    # a thumbnail grid that runs past the mask's right and bottom edges
    out = _resample_nearest(mask, (8.0, 8.0), (30, 40), (11.0, 12.5))
    for i in range(30):
        for j in range(40):
            r, c = int((i + 0.5) * 12.5 / 8.0), int((j + 0.5) * 11.0 / 8.0)  # mpp is (x, y)
            assert out[i, j] == (mask[r, c] if r < 37 and c < 53 else 0)
