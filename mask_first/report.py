"""The cohort contact sheet: one self-contained HTML page, every slide of the sheet on it.

Each slide is a card with its QC thumbnail (embedded as a base64 JPEG, so the
page also works inside the Snakemake report and when mailed on its own), its
status, tile counts, tissue area and QC flags; failed slides show the step
that failed and its cause instead of a picture. A few lines of JavaScript sort
the cards (by number of flags, by one flag, by status, by slide id, by
retained tiles) and filter them by flag; ``#sort=<key>`` in the address picks
the initial order. Without JavaScript the page still shows every card in sheet
order.

The thumbnails are made by the filter step (:func:`small_jpeg`, about 5-10 kB
each) and carried in the retained table's Parquet metadata, so writing the
sheet of a 10,000-slide cohort opens no picture file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["small_jpeg", "contact_sheet_html", "write_contact_sheet"]

#: longer side of the contact-sheet thumbnails in pixels
THUMB_SIZE = 192


def small_jpeg(picture: np.ndarray, size: int = THUMB_SIZE, quality: int = 80) -> str:
    """A picture shrunk to at most ``size`` px on its longer side (box filter), as base64 JPEG.

    Parameters
    ----------
    picture : ndarray of uint8, shape (height, width, 3)
        E.g. the QC thumbnail (:func:`mask_first.qc.qc_thumbnail`).
    """
    import imagecodecs

    img = np.asarray(picture, np.uint8)
    f = max(1, -(-max(img.shape[:2]) // size))
    if f > 1:
        h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
        if h and w:
            import pyvips  # the filter job has it loaded; its box shrink is ~20x numpy's mean over 4-D axes

            img = pyvips.Image.new_from_array(np.ascontiguousarray(img[:h, :w])).shrink(f, f).numpy()
        else:  # thinner than the factor: keep every f-th pixel
            img = np.ascontiguousarray(img[::f, ::f])
    return base64.b64encode(bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(img), level=quality))).decode()


_CSS = """
body{font-family:sans-serif;margin:1em;background:#fafafa}
header{margin-bottom:.8em}
#cards{display:flex;flex-wrap:wrap;gap:10px}
.card{width:210px;border:1px solid #ccc;border-radius:4px;background:#fff;padding:6px;font-size:12px}
.card.failed,.card.incomplete{border-color:#c00;background:#fff4f4}
.card h3{font-size:13px;margin:0 0 4px 0;word-break:break-all}
.card img{max-width:198px;max-height:198px;display:block;margin:0 auto 4px auto}
.noimg{height:90px;display:flex;align-items:center;justify-content:center;color:#a00;border:1px dashed #c99}
.flag{display:inline-block;background:#fde2b3;border-radius:3px;padding:0 3px;margin:1px}
.flag.failed,.flag.incomplete{background:#f7b3b3}
.cause{color:#a00;word-break:break-word}
"""

_JS = """
(function(){
  var box=document.getElementById('cards');
  var cards=Array.prototype.slice.call(box.children);
  function flags(c){return c.dataset.flags?c.dataset.flags.split(';'):[];}
  var keys={
    flags:function(c){return -flags(c).length;},
    status:function(c){return {failed:0,incomplete:1,done:2}[c.dataset.status];},
    slide:function(c){return c.dataset.slide;},
    retained:function(c){return +c.dataset.retained;}
  };
  function sortBy(key){
    var f=keys[key]||function(c){return flags(c).indexOf(key)<0?1:0;};
    var order=cards.map(function(c,i){return [f(c),i,c];});
    order.sort(function(a,b){return a[0]<b[0]?-1:a[0]>b[0]?1:a[1]-b[1];});
    order.forEach(function(o){box.appendChild(o[2]);});
    document.body.dataset.sortedBy=key;
  }
  function filterBy(flag){
    cards.forEach(function(c){c.style.display=(!flag||flags(c).indexOf(flag)>=0)?'':'none';});
  }
  document.getElementById('sort').addEventListener('change',function(e){sortBy(e.target.value);});
  document.getElementById('filter').addEventListener('change',function(e){filterBy(e.target.value);});
  var m=/sort=([^&]+)/.exec(location.hash);
  if(m){var k=decodeURIComponent(m[1]);document.getElementById('sort').value=k;sortBy(k);}
  function mark(){
    cards.forEach(function(c){
      var img=c.querySelector('img');
      c.dataset.rendered=img?((img.complete&&img.naturalWidth>0)?'image':'broken'):'text';
    });
  }
  if(document.readyState==='complete'){mark();}else{window.addEventListener('load',mark);}
})();
"""


def _card(row: Mapping[str, Any], flags: Sequence[str], thumbnail: str | None) -> str:
    import html  # here, not at the top: the filter job imports this module for the thumbnail only

    e = html.escape
    sid = str(row["slide_id"])
    status = str(row.get("status") or "done")
    retained = row.get("tiles_retained")
    retained = None if retained is None or (isinstance(retained, float) and np.isnan(retained)) else int(retained)
    total = row.get("tiles_total")
    total = None if total is None or (isinstance(total, float) and np.isnan(total)) else int(total)
    area = row.get("tissue_area_mm2")
    parts = [f'<div class="card {e(status)}" data-slide="{e(sid)}" data-status="{e(status)}" '
             f'data-flags="{e(";".join(flags))}" data-retained="{retained if retained is not None else -1}">',
             f"<h3>{e(sid)}</h3>"]
    if thumbnail:
        parts.append(f'<img alt="QC thumbnail of {e(sid)}" src="data:image/jpeg;base64,{thumbnail}">')
    else:
        parts.append(f'<div class="noimg">no QC picture ({e(status)})</div>')
    parts.append(f'<div class="status">status: <b>{e(status)}</b></div>')
    if status != "done":
        step = row.get("failed_step")
        parts.append(f'<div class="cause">{e(f"{step}: " if step else "")}{e(str(row.get("error") or ""))}</div>')
    if total is not None:
        parts.append(f'<div class="counts">tiles: {retained} of {total} retained</div>')
    if isinstance(area, (int, float)) and not np.isnan(area):
        parts.append(f'<div class="area">tissue: {area:.3g} mm²</div>')
    if flags:
        parts.append('<div class="flags">' + "".join(
            f'<span class="flag {e(f)}">{e(f)}</span>' for f in flags) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def contact_sheet_html(rows: Sequence[Mapping[str, Any]], flags: Sequence[Sequence[str]],
                       thumbnails: Sequence[str | None], *, title: str = "mask-first contact sheet") -> str:
    """The contact sheet as one HTML string: one card per row, in the given order.

    ``rows`` are summary rows (``slide_id``, ``status``, ``failed_step``,
    ``error``, ``tiles_total``, ``tiles_retained``, ``tissue_area_mm2``),
    ``flags`` their QC flags, ``thumbnails`` base64 JPEGs (None: no picture).
    """
    import html

    from mask_first.cohort import FLAGS

    e = html.escape
    n_failed = sum(1 for r in rows if (r.get("status") or "done") != "done")
    present = [f for f in FLAGS if any(f in fl for fl in flags)]
    sort_opts = "".join(f'<option value="{k}">{e(t)}</option>' for k, t in (
        ("sheet", "sheet order"), ("flags", "most flags first"), ("status", "failed first"),
        ("slide", "slide id"), ("retained", "fewest retained tiles")))
    sort_opts += "".join(f'<option value="{e(f)}">flag: {e(f)}</option>' for f in present)
    filter_opts = '<option value="">all slides</option>' + "".join(
        f'<option value="{e(f)}">only: {e(f)}</option>' for f in present)
    cards = "\n".join(_card(r, fl, t) for r, fl, t in zip(rows, flags, thumbnails))
    counts = json.dumps({f: sum(1 for fl in flags if f in fl) for f in present})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p id=\"totals\">{len(rows)} slides, {len(rows) - n_failed} done, "
        f"{n_failed} failed or incomplete. Flag counts: {e(counts)}</p>"
        f"<label>sort <select id=\"sort\">{sort_opts}</select></label> "
        f"<label>show <select id=\"filter\">{filter_opts}</select></label></header>"
        f"<div id=\"cards\">\n{cards}\n</div><script>{_JS}</script></body></html>\n"
    )


def write_contact_sheet(out: str, rows: Sequence[Mapping[str, Any]], flags: Sequence[Sequence[str]],
                        thumbnails: Sequence[str | None]) -> None:
    """Write :func:`contact_sheet_html` atomically to ``out``."""
    from pathlib import Path

    from mask_first.io import atomic_path

    with atomic_path(out) as tmp:
        Path(tmp).write_text(contact_sheet_html(rows, flags, thumbnails), encoding="utf-8")
