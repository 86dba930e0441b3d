"""The contact sheet: every slide's card, rendered by a real browser."""

from __future__ import annotations

import base64

import imagecodecs
import numpy as np

from browser import Cards, dump_dom
from mask_first.report import small_jpeg, write_contact_sheet


def test_small_jpeg_is_a_box_filtered_thumbnail():
    rng = np.random.default_rng(0)
    pic = np.zeros((400, 1000, 3), np.uint8)
    pic[:, :500] = 200  # left half light, right half dark
    pic[:, 500:] = rng.integers(0, 60, (400, 500, 3), dtype=np.uint8)
    thumb = imagecodecs.jpeg8_decode(base64.b64decode(small_jpeg(pic, size=100)))
    assert thumb.shape == (40, 100, 3)  # factor ceil(1000 / 100) = 10
    # box means of the dark noise are ~29.5: JPEG keeps them within a few levels
    assert abs(float(thumb[:, 60:].mean()) - pic[:, 600:].reshape(40, 10, 40, 10, 3).mean(axis=(1, 3)).mean()) < 3
    assert abs(float(thumb[:, :40].mean()) - 200) < 3


def test_contact_sheet_renders_every_slide_in_chromium_and_sorts_by_flag(tmp_path):
    pic = np.full((64, 96, 3), 120, np.uint8)
    rows = [
        {"slide_id": "a", "status": "done", "tiles_total": 10, "tiles_retained": 4, "tissue_area_mm2": 1.5},
        {"slide_id": "b<&>", "status": "failed", "failed_step": "tiles", "error": "b.svs: file is truncated"},
        {"slide_id": "c", "status": "done", "tiles_total": 6, "tiles_retained": 0, "tissue_area_mm2": 0.0},
        {"slide_id": "d", "status": "incomplete", "error": "not run or interrupted"},
    ]
    flags = [[], ["failed"], ["no tissue found", "nothing retained"], ["incomplete"]]
    thumbs = [small_jpeg(pic), None, small_jpeg(pic), None]
    out = tmp_path / "sheet.html"
    write_contact_sheet(str(out), rows, flags, thumbs)

    cards = Cards(dump_dom(out, tmp=tmp_path)).cards
    assert [c["data-slide"] for c in cards] == ["a", "b<&>", "c", "d"]  # sheet order, names escaped
    # the page's script marks each card once the browser decoded its thumbnail
    assert [c.get("data-rendered") for c in cards] == ["image", "text", "image", "text"]
    by = {c["data-slide"]: c for c in cards}
    assert "tiles: 4 of 10 retained" in by["a"]["text"]
    assert "tiles: b.svs: file is truncated" in by["b<&>"]["text"] and by["b<&>"]["imgs"] == 0
    assert "no tissue found" in by["c"]["text"] and by["c"]["data-flags"] == "no tissue found;nothing retained"

    # "#sort=<flag>": cards with that flag first, then the rest in sheet order
    sorted_cards = Cards(dump_dom(out, "#sort=no%20tissue%20found", tmp=tmp_path)).cards
    assert [c["data-slide"] for c in sorted_cards] == ["c", "a", "b<&>", "d"]
    by_count = Cards(dump_dom(out, "#sort=flags", tmp=tmp_path)).cards
    assert [c["data-slide"] for c in by_count] == ["c", "b<&>", "d", "a"]
