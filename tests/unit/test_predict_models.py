"""Models on tiles: loading, running, assembling (dense and scalar) against brute-force paints."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from mask_first.assembly.heatmaps import read_heatmap_tiff
from mask_first.io import read_table, write_table
from mask_first.pipeline import write_tiles
from mask_first.predict import OnnxModel, load_model, model_source, predict_slide, read_predictions, run_model


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """tmp_path as the working directory, with its user modules forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("usermodel", "mask_first_user_model_")):
            del sys.modules[name]


def _grid(tmp_path, slide, *, tile, stride, keep_every=1, seed=0):
    """Slide info + a retained table (a random subset of the grid when keep_every > 1)."""
    info, tiles = tmp_path / "info.parquet", tmp_path / "tiles.parquet"
    write_tiles(str(slide), str(info), str(tiles), slide_id="s", mpp=None, level=0, tile_extent=tile,
                stride=stride, last="keep")
    table = read_table(tiles)
    keep = np.random.default_rng(seed).random(table.num_rows) < 1 / keep_every if keep_every > 1 else \
        np.ones(table.num_rows, bool)
    retained = tmp_path / "retained.parquet"
    write_table(retained, table.append_column("retained", pa.array(keep)))
    return info, retained, table.column("x").to_numpy()[keep], table.column("y").to_numpy()[keep]


def _run(tmp_path, info, retained, slide, **kw):
    out = {k: str(tmp_path / f"out.{k}") for k in ("parquet", "tiff", "png")}
    n = predict_slide(str(retained), str(info), out["parquet"], out["tiff"], out["png"], slide_path=str(slide),
                      storage="inmemory", size=64, **kw)
    return n, out


DENSE_MODEL = """
import numpy as np

def maps(tiles, metadata):
    # a pseudo-random (1, 16, 16) map per tile, reproducible from the tile's position
    out = np.empty((len(tiles), 2, 16, 16), np.float32)
    for i, (x, y) in enumerate(zip(metadata["x"], metadata["y"])):
        out[i] = np.random.default_rng([int(x), int(y)]).random((2, 16, 16))
    return out
"""


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_dense_maps_assemble_like_a_brute_force_paint(in_tmp, small_tiff, aggregation):
    (in_tmp / "usermodel_dense.py").write_text(DENSE_MODEL)
    # 64-px tiles every 32 px, 16 x 16 outputs: one output pixel is 4 source px;
    # 2 output px clipped at every edge, so neighbours overlap by 16 - 8 = 8 output px... per axis
    info, retained, xs, ys = _grid(in_tmp, small_tiff, tile=64, stride=32, keep_every=2)
    n, out = _run(in_tmp, info, retained, small_tiff, model="usermodel_dense:maps", columns=["a", "b"],
                  edge_clipping=2, aggregation=aggregation, batch_size=7)
    assert n == len(xs) > 10
    heat, mpp, desc = read_heatmap_tiff(out["tiff"])
    assert mpp == pytest.approx((2.0, 2.0))  # 4 source px at 0.5 µm/px
    assert desc["kind"] == "dense" and desc["columns"] == ["a", "b"]

    # brute force at source resolution: every clipped output pixel painted over its 4 x 4 source px
    span = (heat.shape[1] * 4, heat.shape[2] * 4)
    acc = np.full((2, *span), -np.inf) if aggregation == "max" else np.zeros((2, *span))
    count = np.zeros(span)
    for x, y in zip(xs, ys):
        m = np.random.default_rng([int(x), int(y)]).random((2, 16, 16))
        up = np.repeat(np.repeat(m, 4, axis=1), 4, axis=2)[:, 8:-8, 8:-8]
        region = (slice(None), slice(y + 8, y + 56), slice(x + 8, x + 56))
        acc[region] = np.maximum(acc[region], up) if aggregation == "max" else acc[region] + up
        count[region[1:]] += 1
    expected = acc / np.maximum(count, 1) if aggregation == "mean" else acc
    expected[:, count == 0] = np.nan
    got = np.repeat(np.repeat(heat, 4, axis=1), 4, axis=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    # the table: one row per tile, the clipped mean per channel and the maps (float16) in full
    cols, d = read_predictions(out["parquet"])
    assert d["map_shape"] == [16, 16] and d["map_dtype"] == "float16"
    for i, (x, y) in enumerate(zip(cols["x"], cols["y"])):
        m = np.random.default_rng([int(x), int(y)]).random((2, 16, 16))
        np.testing.assert_allclose(cols["a_map"][i], m[0], atol=1e-3)
        assert cols["b"][i] == pytest.approx(m[1, 2:-2, 2:-2].mean(), rel=1e-5)


SCALAR_MODEL = """
import numpy as np

class Redness:
    calls = 0

    def __init__(self):
        self.weight = 1 / 255  # "weights" loaded once

    def __call__(self, tiles):
        Redness.calls += 1
        return (tiles[..., 0].mean(axis=(1, 2)) * self.weight).tolist()  # (B,), a list
"""


def test_scalar_scores_from_a_class_land_on_their_tiles(in_tmp, small_tiff, textured_image):
    (in_tmp / "usermodel_scalar.py").write_text(SCALAR_MODEL)
    info, retained, xs, ys = _grid(in_tmp, small_tiff, tile=128, stride=128, keep_every=2, seed=3)
    n, out = _run(in_tmp, info, retained, small_tiff, model="usermodel_scalar:Redness", batch_size=4)
    heat, mpp, _ = read_heatmap_tiff(out["tiff"])
    assert mpp == pytest.approx((64.0, 64.0))
    # independent pixels: the lossless image itself, white past the slide edge
    padded = np.full((768, 768, 3), 255, np.uint8)
    padded[:600, :700] = textured_image
    expected = np.full(heat.shape[1:], np.nan)
    for x, y in zip(xs, ys):
        expected[y // 128, x // 128] = padded[y:y + 128, x:x + 128, 0].mean() / 255
    np.testing.assert_allclose(heat[0], expected, atol=1e-6)
    cols, desc = read_predictions(out["parquet"])
    assert desc["kind"] == "scalar" and list(cols) [-1] == "channel_0"
    assert sys.modules["usermodel_scalar"].Redness.calls == -(-n // 4)


def test_no_retained_tile_gives_an_empty_table_and_an_all_nan_heatmap(in_tmp, small_tiff):
    (in_tmp / "usermodel_scalar.py").write_text(SCALAR_MODEL)
    info, retained, _, _ = _grid(in_tmp, small_tiff, tile=128, stride=128, keep_every=10**9)
    n, out = _run(in_tmp, info, retained, small_tiff, model="usermodel_scalar:Redness", columns=["red"])
    heat, _, _ = read_heatmap_tiff(out["tiff"])
    assert n == 0 and np.isnan(heat).all() and heat.shape == (1, 5, 6)
    assert read_table(out["parquet"]).column_names[-1] == "red"


def test_model_specs_resolve_to_their_source_files(in_tmp):
    (in_tmp / "pkg").mkdir()
    (in_tmp / "pkg" / "__init__.py").write_text("")
    (in_tmp / "pkg" / "usermodel_m.py").write_text("def f(tiles):\n    return tiles[:, :1, 0, 0]\n")
    assert model_source("pkg.usermodel_m:f") == "pkg/usermodel_m.py"
    assert model_source("pkg/usermodel_m.py:f") == "pkg/usermodel_m.py"
    tiles = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    for spec in ("pkg.usermodel_m:f", "pkg/usermodel_m.py:f"):
        np.testing.assert_array_equal(run_model(load_model(spec), tiles), [[0], [48]])
    for bad, why in [("nocolon", "module:function"), ("nosuchmodule_xyz:f", "not found"),
                     ("pkg/none.py:f", "not found")]:
        with pytest.raises(ValueError, match=why):
            model_source(bad)
    with pytest.raises(ValueError, match="no attribute 'g'"):
        load_model("pkg.usermodel_m:g")


def test_model_failures_and_bad_shapes_are_one_line_errors():
    tiles = np.zeros((3, 4, 4, 3), np.uint8)

    def broken(t):
        raise RuntimeError("CUDA out of memory\nlong traceback text")

    with pytest.raises(ValueError, match=r"^model m failed: RuntimeError: CUDA out of memory$"):
        run_model(broken, tiles, name="m")
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\) for 3 tiles"):
        run_model(lambda t: np.zeros((2, 1)), tiles, name="m")
    with pytest.raises(ValueError, match=r"returned shape \(3, 1, 2\)"):
        run_model(lambda t: np.zeros((3, 1, 2)), tiles, name="m")


def test_channel_count_must_match_the_configured_columns(in_tmp, small_tiff):
    (in_tmp / "usermodel_scalar.py").write_text(SCALAR_MODEL)
    info, retained, _, _ = _grid(in_tmp, small_tiff, tile=128, stride=128)
    with pytest.raises(ValueError, match=r"1 channel\(s\) but predict.columns names 2"):
        _run(in_tmp, info, retained, small_tiff, model="usermodel_scalar:Redness", columns=["a", "b"])
    assert not (in_tmp / "out.parquet").exists() and not (in_tmp / "out.tiff").exists()


def test_a_heatmap_too_large_to_write_is_refused_before_any_work(in_tmp, small_tiff, monkeypatch):
    from mask_first.predict import _Assembler

    (in_tmp / "usermodel_dense.py").write_text(DENSE_MODEL)
    info, retained, _, _ = _grid(in_tmp, small_tiff, tile=64, stride=32)
    monkeypatch.setattr(_Assembler, "max_values", 2 * 152 * 176 - 1)  # one value short of the 2-channel grid
    with pytest.raises(ValueError, match=r"heatmap of 152 x 176 cells x 2 channel\(s\).*coarser map"):
        _run(in_tmp, info, retained, small_tiff, model="usermodel_dense:maps")
    monkeypatch.setattr(_Assembler, "max_values", 2 * 152 * 176)
    _run(in_tmp, info, retained, small_tiff, model="usermodel_dense:maps")


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


def _onnx_model(path, *, dense: bool):
    """Tiny ONNX graphs: per-channel mean @ W -> (N, 1), or a 4 x 4 average pool -> (N, 3, H/4, W/4)."""
    onnx = pytest.importorskip("onnx", reason="the onnx package builds the test models (pip install onnx)")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    if dense:
        nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[4, 4], strides=[4, 4])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "h", "w"])
        inits = []
    else:
        w = numpy_helper.from_array(np.array([[0.5], [-1.0], [2.0]], np.float32), "w")
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["y"])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
        inits = [w]
    graph = helper.make_graph(nodes, "t", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_onnx_model_normalises_its_input_as_configured(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'mask-first[onnx]'")
    path = _onnx_model(tmp_path / "m.onnx", dense=False)
    tiles = np.random.default_rng(1).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    model = OnnxModel(path, mean=MEAN, std=STD)
    assert "CPUExecutionProvider" in model.providers
    norm = (tiles / 255.0 - np.array(MEAN)) / np.array(STD)
    expected = norm.mean(axis=(1, 2)) @ np.array([[0.5], [-1.0], [2.0]])
    np.testing.assert_allclose(run_model(model, tiles), expected, rtol=1e-5, atol=1e-5)


def test_onnx_dense_model_in_the_slide_step(in_tmp, small_tiff, textured_image):
    pytest.importorskip("onnxruntime", reason="pip install 'mask-first[onnx]'")
    path = _onnx_model(in_tmp / "pool.onnx", dense=True)
    info, retained, xs, ys = _grid(in_tmp, small_tiff, tile=64, stride=64)
    n, out = _run(in_tmp, info, retained, small_tiff, onnx=str(path), columns=["r", "g", "b"],
                  normalisation={"layout": "nchw", "scale": 1.0, "mean": (0, 0, 0), "std": (1, 1, 1)})
    heat, mpp, desc = read_heatmap_tiff(out["tiff"])
    assert desc["kind"] == "dense" and mpp == pytest.approx((2.0, 2.0)) and n == len(xs)
    padded = np.full((heat.shape[1] * 4, heat.shape[2] * 4, 3), 255.0)
    padded[:600, :700] = textured_image
    pooled = padded.reshape(heat.shape[1], 4, heat.shape[2], 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(heat, np.moveaxis(pooled, -1, 0), rtol=1e-5)
    assert json.loads(json.dumps(desc))["model"] == str(path)


# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------

TORCH_MODEL = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(4)
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):  # (N, 3, H, W) float -> (N, 1, H/4, W/4)
        return (self.pool(x) * self.w[None, :, None, None]).sum(dim=1, keepdim=True)
"""


def test_torch_module_runs_on_normalised_tensors_and_assembles(in_tmp, small_tiff, textured_image):
    pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    (in_tmp / "usermodel_torch.py").write_text(TORCH_MODEL)
    model = load_model("usermodel_torch:Net", {"layout": "nchw", "scale": 1 / 255, "mean": MEAN, "std": STD})
    assert str(model.device) in ("cpu", "cuda", "mps")
    info, retained, xs, ys = _grid(in_tmp, small_tiff, tile=64, stride=64, keep_every=2, seed=5)
    n, out = _run(in_tmp, info, retained, small_tiff, model="usermodel_torch:Net",
                  normalisation={"layout": "nchw", "scale": 1 / 255, "mean": MEAN, "std": STD})
    heat, mpp, desc = read_heatmap_tiff(out["tiff"])
    assert desc["kind"] == "dense" and mpp == pytest.approx((2.0, 2.0))
    padded = np.full((heat.shape[1] * 4, heat.shape[2] * 4, 3), 255.0)
    padded[:600, :700] = textured_image
    norm = (padded / 255 - np.array(MEAN)) / np.array(STD)
    pooled = norm.reshape(heat.shape[1], 4, heat.shape[2], 4, 3).mean(axis=(1, 3)) @ np.array([0.5, -1.0, 2.0])
    expected = np.full(heat.shape[1:], np.nan)
    for x, y in zip(xs, ys):
        expected[y // 4 : y // 4 + 16, x // 4 : x // 4 + 16] = pooled[y // 4 : y // 4 + 16, x // 4 : x // 4 + 16]
    np.testing.assert_allclose(heat[0], expected, rtol=1e-4, atol=1e-4)


def test_the_step_stays_pandas_free_but_a_model_may_import_pandas(in_tmp, small_tiff):
    """Under run_step (as in a job) our code never loads pandas; the user's model still can."""
    import subprocess

    from conftest import REPO

    (in_tmp / "usermodel_plain.py").write_text("def f(tiles):\n    return tiles[..., 0].mean(axis=(1, 2)) / 255\n")
    (in_tmp / "usermodel_pd.py").write_text(
        "import pandas as pd\n\ndef f(tiles):\n"
        "    return pd.DataFrame({'r': tiles[..., 0].mean(axis=(1, 2)) / 255}).to_numpy()\n")
    info, retained, _, _ = _grid(in_tmp, small_tiff, tile=128, stride=128)
    results = {}
    for mod in ("usermodel_plain", "usermodel_pd"):
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                "from mask_first.pipeline import run_step, write_predictions\n"
                f"run_step('s', None, write_predictions, 'retained.parquet', 'info.parquet', '{mod}.parquet', "
                f"'{mod}.tiff', '{mod}.png', model='{mod}:f', slide_path={str(small_tiff)!r})\n"
                "print('pandas' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", code], cwd=in_tmp, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results[mod] = proc.stdout.strip()
        results[mod + " heat"] = read_heatmap_tiff(in_tmp / f"{mod}.tiff")[0]
    assert results["usermodel_plain"] == "False" and results["usermodel_pd"] == "True"
    np.testing.assert_array_equal(results["usermodel_plain heat"], results["usermodel_pd heat"])


def test_tiles_read_from_the_slide_reach_the_model_at_the_delivered_size(in_tmp, small_tiff, textured_image):
    # no pixel table: the model must still see the pixel step's tiles, 128-px
    # regions area-averaged to 64 px, not the level's native 128 px
    (in_tmp / "usermodel_size.py").write_text(
        "import numpy as np\n\ndef f(tiles):\n"
        "    return np.stack([np.full(len(tiles), tiles.shape[1], np.float32),\n"
        "                     tiles[..., 0].mean(axis=(1, 2))], axis=1)\n")
    info, retained, xs, ys = _grid(in_tmp, small_tiff, tile=128, stride=128)
    n, out = _run(in_tmp, info, retained, small_tiff, model="usermodel_size:f", columns=["height", "red"],
                  resample_to=(64, 64))
    cols, _ = read_predictions(out["parquet"])
    assert n == len(xs) and (cols["height"] == 64).all()
    for i in range(n):
        x, y = int(cols["x"][i]), int(cols["y"][i])
        region = np.full((128, 128), 255.0)  # white past the slide's edge
        crop = textured_image[y : y + 128, x : x + 128, 0]
        region[: crop.shape[0], : crop.shape[1]] = crop
        block = np.rint(region.reshape(64, 2, 64, 2).mean(axis=(1, 3)))  # what a 2 x 2 area average gives
        assert abs(cols["red"][i] - block.mean()) < 0.5
