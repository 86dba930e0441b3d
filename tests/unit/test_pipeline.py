"""Workflow steps: per-slide jobs stay lean (no pandas), and their outputs are right."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq

from mask_first.synthetic import write_synthetic_slide
from mask_first.tiles.grid import grid_tiles

_STEPS = """
import sys
from mask_first.pipeline import filter_tiles, make_tissue_mask, run_step, write_tiles
d = sys.argv[1]
run_step("s", None, write_tiles, f"{d}/s.tiff", f"{d}/info.parquet", f"{d}/tiles.parquet", slide_id="s",
         mpp=1.0, level=None, tile_extent=128, stride=96, last="keep")
print("CV2_AFTER_TILES", "cv2" in sys.modules)
run_step("s", None, make_tissue_mask, f"{d}/s.tiff", f"{d}/mask.tiff", slide_id="s", mpp=8.0, method="otsu")
run_step("s", None, filter_tiles, f"{d}/tiles.parquet", f"{d}/s.tiff", f"{d}/retained.parquet", f"{d}/qc.png",
         method="mask", threshold=0.5, mask=f"{d}/mask.tiff", qc_size=256)
print("PANDAS_LOADED", "pandas" in sys.modules)
"""


def test_per_slide_steps_run_without_loading_pandas(tmp_path):
    write_synthetic_slide(tmp_path / "s.tiff", 1024, 768, mpp=0.5, seed=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_STEPS), str(tmp_path)], capture_output=True,
                          text=True, env=env, check=True)
    assert "PANDAS_LOADED False" in proc.stdout, proc.stdout + proc.stderr
    assert "CV2_AFTER_TILES False" in proc.stdout  # the tile job does not load the tissue detector's OpenCV
    # and the tables are what they should be: the grid of the level read (1 µm/px = level 1 of 0.5 µm/px)
    tiles = pq.read_table(tmp_path / "tiles.parquet").to_pydict()
    ref = grid_tiles((512, 384), (128, 128), (96, 96), last="keep")
    assert list(zip(tiles["x"], tiles["y"])) == [tuple(r) for r in ref.tolist()]
    assert set(tiles["level"]) == {1} and set(tiles["slide_id"]) == {"s"}
    retained = pq.read_table(tmp_path / "retained.parquet")
    frac = retained.column("fraction_255").to_numpy()
    np.testing.assert_array_equal(retained.column("retained").to_numpy(), frac >= 0.5)


def test_shell_step_runner_writes_what_the_step_function_writes(tmp_path):
    """workflow/scripts/step.py (the per-slide shell jobs) on its JSON arguments == the pipeline call."""
    import json
    from pathlib import Path

    from mask_first.pipeline import write_tiles

    write_synthetic_slide(tmp_path / "s.tiff", 1024, 768, mpp=0.5, seed=4)
    runner = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "step.py"
    files = {"slide": "s", "input": {"slide": str(tmp_path / "s.tiff")},
             "output": {"info": str(tmp_path / "info.parquet"), "tiles": str(tmp_path / "tiles.parquet")}}
    settings = {"mpp": 1.0, "level": None, "tile_extent": 128, "stride": 96, "last": "keep", "mpp_override": None}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "logs" / "tiles" / "s.log"
    subprocess.run([sys.executable, str(runner), "tiles", str(log), "1", json.dumps(files), json.dumps(settings)],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    write_tiles(str(tmp_path / "s.tiff"), str(tmp_path / "info_ref.parquet"), str(tmp_path / "tiles_ref.parquet"),
                slide_id="s", **settings)
    assert pq.read_table(tmp_path / "tiles.parquet").equals(pq.read_table(tmp_path / "tiles_ref.parquet"))
    assert pq.read_table(tmp_path / "info.parquet").equals(pq.read_table(tmp_path / "info_ref.parquet"))
    assert "write_tiles done" in log.read_text()
    bad = subprocess.run([sys.executable, str(runner), "no_such_step", str(log), "1", "{}", "{}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "usage: step.py" in bad.stderr
