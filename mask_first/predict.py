"""Run a model on the retained tiles and assemble its outputs into a heatmap.

A *model* is anything that maps a batch of RGB tiles to numbers:

* a Python callable named ``"module:function"`` (``module`` importable with
  the working directory on ``sys.path``, or a path ``dir/file.py``). It takes
  a ``(B, H, W, 3)`` uint8 array (tile, y, x, RGB) and, when it has a
  parameter named ``metadata``, a dict describing the batch (see
  :func:`batch_metadata`). A class is instantiated once (no arguments) and its
  instances are called. It returns scalar scores ``(B, C)`` (``(B,)`` is read
  as one channel) or dense maps ``(B, C, h, w)`` on its own output grid
  (``h, w`` output pixels cover the whole tile); numpy arrays, lists or
  tensors with ``.detach().cpu().numpy()``. If the object (or what the class
  makes) is a ``torch.nn.Module`` it is wrapped in :class:`TorchModel`: moved
  to the accelerator torch finds, fed normalised float tensors.
* an ONNX file run with onnxruntime (:class:`OnnxModel`), inputs normalised
  as configured, on the first execution providers onnxruntime finds (a GPU
  when one is there, the CPU otherwise).

:func:`predict_slide` streams the tiles through the model in batches (from a
pixel Parquet, or read from the slide), writes one row per tile and one column
per channel, and assembles the outputs with
:class:`~mask_first.assembly.mask_builders.MaskBuilder`: scalar scores over
the tile footprints (mean or max where tiles overlap), dense maps on the
model's output grid after edge clipping. The heatmap is written as the same
aligned pyramidal TIFF and PNG as :mod:`mask_first.assembly.heatmaps`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("mask_first")

__all__ = [
    "model_source",
    "load_model",
    "OnnxModel",
    "TorchModel",
    "torch_device",
    "batch_metadata",
    "run_model",
    "iter_tile_batches",
    "predict_slide",
    "read_predictions",
    "PREDICT_KEY",
]

#: Parquet schema-metadata key describing a predictions table (JSON)
PREDICT_KEY = b"mask_first.predict"


# ---------------------------------------------------------------------------
# finding and loading the model
# ---------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[str, str]:
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr:
        raise ValueError(f"predict.model must be 'module:function' (or 'path/file.py:function'), got {spec!r}")
    return module, attr


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def model_source(spec: str) -> str:
    """The Python file that defines the model named by ``spec`` (``"module:function"``).

    The workflow makes this file an input of the ``predict`` rule, so editing
    it reruns the predictions. ``module`` is a path to a ``.py`` file or a
    dotted module name looked up with the working directory first on
    ``sys.path`` (its parent packages are imported, the module itself is not).

    Raises
    ------
    ValueError
        The spec is malformed or the module cannot be found.
    """
    module, _ = _split_spec(spec)
    if _is_path(module):
        if not Path(module).is_file():
            raise ValueError(f"predict.model: file {module} not found")
        return module
    _cwd_on_path()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"predict.model: cannot import {module}: {exc}") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ValueError(f"predict.model: module {module} not found (working directory: {os.getcwd()})")
    origin = Path(found.origin)
    try:  # relative to the working directory when inside it: the workflow's paths stay portable
        return str(origin.relative_to(Path.cwd()))
    except ValueError:
        return str(origin)


def _cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_model(spec: str, normalisation: dict | None = None) -> Callable:
    """Import the callable named ``"module:function"``; a class is instantiated once.

    ``normalisation`` (``layout``, ``scale``, ``mean``, ``std``) applies when
    the object is a ``torch.nn.Module`` (see :class:`TorchModel`); plain
    callables receive the uint8 tiles as they are.
    """
    module_name, attr = _split_spec(spec)
    _cwd_on_path()
    if _is_path(module_name):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"predict.model: file {module_name} not found")
        name = f"mask_first_user_model_{path.stem}"
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"predict.model: {module_name} has no attribute {attr!r}") from None
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"predict.model: {spec} is not callable")
    if _is_torch_module(obj):
        obj = TorchModel(obj, **dict(normalisation or {}))
    return obj


def _is_torch_module(obj: Any) -> bool:
    # without importing torch (seconds) for models that do not use it
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def torch_device() -> str:
    """The accelerator torch finds: ``cuda``, then ``mps``, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class TorchModel:
    """A ``torch.nn.Module`` on uint8 tile batches: eval mode, no gradients, on the accelerator.

    The tiles become a float32 tensor ``(uint8 * scale - mean) / std`` in
    ``layout`` on ``device`` (default :func:`torch_device`); the module's
    output comes back as a numpy array.
    """

    def __init__(self, module, *, layout: str = "nchw", scale: float = 1 / 255,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 device: str | None = None) -> None:
        import torch

        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"predict.input.layout must be nchw or nhwc, got {layout!r}")
        self.torch = torch
        self.device = torch.device(device or torch_device())
        self.module = module.to(self.device).eval()
        self.layout = layout
        self.scale = float(scale)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).float()
            x = (x * self.scale - self.mean) / self.std
            if self.layout == "nchw":
                x = x.permute(0, 3, 1, 2).contiguous()
            return self.module(x).float().cpu().numpy()


class OnnxModel:
    """An ONNX model run with onnxruntime on uint8 tile batches.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file. Its first input receives the tiles, its first
        output is returned.
    layout : {"nchw", "nhwc"}
        Axis order the model expects.
    scale, mean, std : float, sequence of 3 floats
        Normalisation: ``input = (uint8 * scale - mean) / std`` per RGB
        channel, in float32 (``scale = 1/255`` with ImageNet ``mean``/``std``
        is the usual recipe).
    providers : sequence of str, optional
        onnxruntime execution providers in order of preference; by default
        every available one (onnxruntime lists accelerators before the CPU).
    threads : int
        Intra-op threads of the CPU provider (0: onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, *, layout: str = "nchw", scale: float = 1 / 255,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 providers: Sequence[str] | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("predict.onnx needs onnxruntime: pip install 'mask-first[onnx]'") from None
        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"predict.input.layout must be nchw or nhwc, got {layout!r}")
        if not Path(path).is_file():
            raise ValueError(f"predict.onnx: file {path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        chosen = [p for p in (providers or available) if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.layout = layout
        self.scale = np.float32(scale)
        self.mean = np.asarray(mean, np.float32).reshape(3)
        self.std = np.asarray(std, np.float32).reshape(3)

    def preprocess(self, tiles: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> normalised float32 in the model's layout."""
        x = tiles.astype(np.float32)
        x *= self.scale
        x -= self.mean
        x /= self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.layout == "nchw" else x

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: self.preprocess(tiles)})[0]


def _wants_metadata(model: Callable) -> bool:
    try:
        return "metadata" in inspect.signature(model).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False


def _as_numpy(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor, possibly on an accelerator
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def run_model(model: Callable, tiles: np.ndarray, metadata: dict | None = None, *,
              name: str = "the model") -> np.ndarray:
    """One batch through the model, checked: (B, C) scores or (B, C, h, w) maps as float32.

    Raises
    ------
    ValueError
        The model raised (the message names ``name`` and the cause, on one
        line) or returned another shape.
    """
    try:
        out = model(tiles, metadata=metadata) if metadata is not None and _wants_metadata(model) else model(tiles)
        out = _as_numpy(out)
    except Exception as exc:  # the user's code: one line naming the model and the cause
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"model {name} failed: {type(exc).__name__}: {first}") from exc
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim not in (2, 4) or out.shape[0] != len(tiles):
        raise ValueError(
            f"model {name} returned shape {out.shape} for {len(tiles)} tiles; expected (B, C) scores "
            "or (B, C, h, w) maps"
        )
    return out


def batch_metadata(rows: dict[str, np.ndarray], sl: slice, info: dict) -> dict:
    """What a model with a ``metadata`` parameter receives with each batch.

    ``x``, ``y`` (tile top-left, pixels of ``level``) and ``tile_id`` as
    arrays of the batch; ``slide_id``, ``level``, ``tile_extent_x/y``
    (pixels of ``level``), ``mpp_x/y`` (µm/px of ``level``) and
    ``tile_mpp_x/y`` (µm/px of the pixels handed over) as scalars.
    """
    return {"x": rows["x"][sl], "y": rows["y"][sl], "tile_id": rows["tile_id"][sl], **info}


# ---------------------------------------------------------------------------
# tiles in, outputs out
# ---------------------------------------------------------------------------


def iter_tile_batches(
    *, pixels: str | None = None, slide_path: str | None = None, rows: dict[str, np.ndarray] | None = None,
    tile_extent: tuple[int, int] = (0, 0), level: int = 0, batch_size: int = 32, threads: int = 1,
    resample_to: tuple[int, int] | None = None,
    mpp_override: float | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Batches of tile pixels, in the order of ``rows`` (the retained tiles).

    From the pixel Parquet when ``pixels`` is given (its rows are the retained
    tiles in order; each tile is decoded at the size stored there), otherwise
    read from ``slide_path`` at ``level`` with ``tile_extent`` (x, y) pixels,
    area-averaged to ``resample_to`` (width, height) pixels when given.

    Yields
    ------
    (slice, ndarray of uint8, shape (B, H, W, 3))
        Positions of the batch among the tiles and its pixels.
    """
    if pixels is not None:
        from mask_first.tiles.pixels import load_tile_pixels

        batch: list[np.ndarray] = []
        start = 0
        for i, (row, arr) in enumerate(load_tile_pixels(pixels, columns=["x", "y"])):
            if rows is not None and (row["x"] != rows["x"][i] or row["y"] != rows["y"][i]):
                raise ValueError(f"{Path(pixels).name}: tile {i} is at ({row['x']}, {row['y']}), "
                                 "not where the retained table puts it; the pixel table is stale")
            batch.append(arr)
            if len(batch) == batch_size:
                yield slice(start, start + len(batch)), np.stack(batch)
                start += len(batch)
                batch = []
        if batch:
            yield slice(start, start + len(batch)), np.stack(batch)
        return
    from mask_first.tiles.pixels import iter_slide_tiles

    yield from iter_slide_tiles(slide_path, rows["x"], rows["y"], tile_extent[0], tile_extent[1], level,
                                batch_size=batch_size, threads=threads, mpp_override=mpp_override,
                                resample_to=resample_to)


class _Assembler:
    """MaskBuilder over a slide's tile grid, created when the first batch shows the output kind."""

    #: largest heatmap (cells x channels) assembled; the TIFF writer holds it in memory (4 GiB)
    max_values = 1 << 30

    def __init__(self, info: dict, coords_yx: np.ndarray, n_channels: int | None, *, aggregation: str,
                 storage: str, edge_clipping) -> None:
        self.info = info
        self.coords = coords_yx
        self.n_channels = n_channels
        self.aggregation = aggregation
        self.storage = storage
        self.edge_clipping = edge_clipping
        self.builder = None
        self.kind: str | None = None
        self.map_shape: tuple[int, int] | None = None

    def _make(self, kind: str, n_channels: int, out_extent: tuple[int, int] | None) -> None:
        from mask_first.assembly.mask_builders import MaskBuilder, MaxAggregator, MeanAggregator

        tile = (int(self.info["tile_extent_y"]), int(self.info["tile_extent_x"]))
        stride = (int(self.info["stride_y"]), int(self.info["stride_x"]))
        if kind == "scalar":
            # one heatmap pixel per stride cell; tiles off the stride lattice (last="shift")
            # need a finer cell dividing their coordinates too
            cell = [math.gcd(t, s, *np.unique(self.coords[:, a]).tolist()) for a, (t, s) in
                    enumerate(zip(tile, stride))]
            out_extent = (tile[0] // cell[0], tile[1] // cell[1])
        from mask_first.assembly.mask_builders import mask_geometry

        geometry = mask_geometry((int(self.info["extent_y"]), int(self.info["extent_x"])), tile, out_extent, stride)
        n_values = int(np.prod(geometry.mask_extents)) * n_channels
        if n_values > self.max_values:
            raise ValueError(
                f"a heatmap of {' x '.join(map(str, geometry.mask_extents.tolist()))} cells x {n_channels} channel(s) "
                f"({n_values * 4 / 2**30:.1f} GiB) is too large; let the model return a coarser map "
                f"(it returned {out_extent[0]} x {out_extent[1]} per tile)"
            )
        agg = (MeanAggregator(fill_value=np.nan) if self.aggregation == "mean"
               else MaxAggregator(fill_value=np.nan))
        self.builder = MaskBuilder(
            source_extents=(int(self.info["extent_y"]), int(self.info["extent_x"])),
            source_tile_extent=tile, output_tile_extent=out_extent, stride=stride, n_channels=n_channels,
            storage=self.storage, aggregation=agg, dtype=np.float32,
        )
        self.kind, self.n_channels = kind, n_channels
        self.map_shape = out_extent if kind == "dense" else None

    def add(self, out: np.ndarray, sl: slice) -> None:
        kind = "scalar" if out.ndim == 2 else "dense"
        if self.builder is None:
            if self.n_channels is not None and out.shape[1] != self.n_channels:
                raise ValueError(f"the model returned {out.shape[1]} channel(s) but predict.columns names "
                                 f"{self.n_channels}")
            self._make(kind, out.shape[1], tuple(out.shape[2:]) if kind == "dense" else None)
        elif kind != self.kind or out.shape[1] != self.n_channels or (
                kind == "dense" and tuple(out.shape[2:]) != self.map_shape):
            raise ValueError(f"the model returned shape {out.shape[1:]} per batch after {self.shape_text()}")
        clip = self.edge_clipping if kind == "dense" else 0
        self.builder.update_batch(out, self.coords[sl], edge_clipping=clip)

    def shape_text(self) -> str:
        return f"({self.n_channels},)" if self.kind == "scalar" else f"({self.n_channels}, *{self.map_shape})"

    def finish(self) -> tuple[np.ndarray, tuple[float, float]]:
        """(C, H, W) float32 heatmap (NaN where no tile contributed) and its µm/px (x, y)."""
        if self.builder is None:  # no retained tile: an all-NaN scalar heatmap of the grid
            self._make("scalar", self.n_channels or 1, None)
        try:
            result = self.builder.finalize()
            heat = np.array(result["mask"] if isinstance(result, dict) else result, np.float32)
            cell_y, cell_x = (float(c) for c in self.builder.geometry.cell_size)
        finally:
            self.builder.cleanup()
        return heat, (float(self.info["mpp_x"]) * cell_x, float(self.info["mpp_y"]) * cell_y)


def _channel_names(columns: Sequence[str], n: int) -> list[str]:
    return list(columns) if columns else [f"channel_{i}" for i in range(n)]


def predict_slide(
    retained: str,
    slide_info: str,
    out_predictions: str,
    out_tiff: str,
    out_png: str,
    *,
    model: str = "",
    onnx: str = "",
    pixels: str | None = None,
    slide_path: str | None = None,
    columns: Sequence[str] = (),
    batch_size: int = 32,
    edge_clipping: int | Sequence = 0,
    map_dtype: str = "float16",
    normalisation: dict | None = None,
    providers: Sequence[str] = (),
    aggregation: str = "mean",
    storage: str = "memmap",
    size: int = 1024,
    threads: int = 1,
    mpp_override: float | None = None,
    resample_to: tuple[int, int] | None = None,
    user_code: Callable[[], Any] = contextlib.nullcontext,
) -> int:
    """The retained tiles of one slide through a model: predictions table, heatmap TIFF and PNG.

    Parameters
    ----------
    retained : str
        The filter step's table (``x``, ``y``, ``tile_id``, ``retained``, ...).
    slide_info : str
        The slide's row of the slide table (``extent_x/y``, ``tile_extent_x/y``
        and ``stride_x/y`` in pixels of the tiled level, ``mpp_x/y``).
    out_predictions : str
        Parquet, one row per retained tile: ``slide_id``, ``tile_id``,
        ``level``, ``x``, ``y``, ``tile_extent_x/y``, ``mpp_x/y`` and one
        float32 column per channel (a dense map's mean over the tile after edge
        clipping), plus for dense outputs a ``<channel>_map`` column holding
        each map as ``map_dtype`` bytes of shape (h, w) in C order. The schema
        metadata ``mask_first.predict`` (JSON) records the model, the kind
        (``scalar``/``dense``), the channels, ``map_shape`` and ``map_dtype``.
    out_tiff, out_png : str
        The assembled (C, H, W) float32 heatmap, one pixel per MaskBuilder cell
        (µm/px in the resolution tags), and channel 0 drawn as a picture.
    model, onnx : str
        ``"module:function"`` or an ONNX file; exactly one.
    pixels, slide_path : str
        Tiles from the pixel Parquet when given, else read from the slide.
    resample_to : (int, int), optional
        Tiles read from the slide are area-averaged to this (width, height)
        in pixels (the pixel step's delivered size); None: native pixels.
    normalisation : dict
        ``layout``, ``scale``, ``mean``, ``std`` of the float input of ONNX
        models and torch modules (see :class:`OnnxModel`).
    providers : sequence of str
        onnxruntime execution providers; empty: every available one.
    user_code : callable returning a context manager
        Entered around loading and calling the model (the workflow lifts its
        pandas block there: the model may import what it likes).
    edge_clipping : int, 2 ints or 2 (start, end) pairs
        Output pixels dropped at the borders of dense maps before assembly.

    Returns
    -------
    int
        Number of tiles predicted.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mask_first.assembly.heatmaps import write_heatmap_tiff
    from mask_first.io import atomic_path, read_table

    if bool(model) == bool(onnx):
        raise ValueError("set exactly one of predict.model and predict.onnx")
    if map_dtype not in ("float16", "float32"):
        raise ValueError(f"predict.map_dtype must be float16 or float32, got {map_dtype!r}")
    info = read_table(slide_info).to_pylist()[0]
    table = read_table(retained)
    tile_columns = [c for c in ("slide_id", "tile_id", "level", "x", "y", "tile_extent_x", "tile_extent_y", "mpp_x",
                                "mpp_y") if c in table.column_names]
    # numpy selection: Table.filter would load pyarrow.compute (~0.25 s per job)
    kept = np.flatnonzero(table.column("retained").to_numpy(zero_copy_only=False))
    table = pa.table({c: pa.array(table.column(c).to_numpy(zero_copy_only=False)[kept], table.schema.field(c).type)
                      for c in tile_columns})
    names: list[str] = []  # the model's channels, known after the first batch
    rows = {c: table.column(c).to_numpy() for c in ("x", "y", "tile_id")}
    n = table.num_rows
    coords = np.stack([rows["y"], rows["x"]], axis=1).astype(np.int64) if n else np.zeros((0, 2), np.int64)
    level = int(info["level"])
    tile_extent = (int(info["tile_extent_x"]), int(info["tile_extent_y"]))
    if model:
        with user_code():
            runner = load_model(model, normalisation)
        name = model
        if isinstance(runner, TorchModel):
            log.info("torch device: %s", runner.device)
    else:
        opts = dict(normalisation or {})
        with user_code():
            runner = OnnxModel(onnx, providers=providers or None, threads=threads, **opts)
        log.info("onnxruntime providers: %s", ", ".join(runner.providers))
        name = str(onnx)
    meta = {"slide_id": info.get("slide_id"), "level": level, "tile_extent_x": tile_extent[0],
            "tile_extent_y": tile_extent[1], "mpp_x": float(info["mpp_x"]), "mpp_y": float(info["mpp_y"])}
    assembler = _Assembler(info, coords, len(columns) or None, aggregation=aggregation, storage=storage,
                           edge_clipping=edge_clipping)
    wants_meta = _wants_metadata(runner)

    writer = None
    with atomic_path(out_predictions) as tmp:
        try:
            batches = iter_tile_batches(pixels=pixels, slide_path=slide_path, rows=rows, tile_extent=tile_extent,
                                        level=level, batch_size=batch_size, threads=threads,
                                        mpp_override=mpp_override, resample_to=resample_to) if n else iter(())
            for sl, tiles in batches:
                if wants_meta:
                    m = batch_metadata(rows, sl, meta)
                    m["tile_mpp_x"] = meta["mpp_x"] * tile_extent[0] / tiles.shape[2]
                    m["tile_mpp_y"] = meta["mpp_y"] * tile_extent[1] / tiles.shape[1]
                else:
                    m = None
                with user_code():
                    out = run_model(runner, tiles, m, name=name)
                if not np.isfinite(out).all():
                    log.warning("model %s returned non-finite values for tiles %d-%d", name, sl.start, sl.stop - 1)
                assembler.add(out, sl)
                names = names or _channel_names(columns, out.shape[1])
                chunk = table.slice(sl.start, sl.stop - sl.start)
                chunk = _append_outputs(chunk, out, names, assembler, map_dtype, pa)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, chunk.schema.with_metadata(
                        {PREDICT_KEY: json.dumps(_description(name, assembler, names, map_dtype, edge_clipping))}),
                        compression="zstd")
                writer.write_table(chunk)
            if writer is None:  # no retained tile: an empty table with the configured channels
                names = _channel_names(columns, 1)
                empty = table.slice(0, 0)
                for c in names:
                    empty = empty.append_column(c, pa.array([], pa.float32()))
                writer = pq.ParquetWriter(tmp, empty.schema.with_metadata(
                    {PREDICT_KEY: json.dumps(_description(name, assembler, names, map_dtype, edge_clipping))}),
                    compression="zstd")
                writer.write_table(empty)
        finally:
            if writer is not None:
                writer.close()
        heat, mpp = assembler.finish()
        write_heatmap_tiff(out_tiff, heat, mpp, description={
            "generator": "mask_first.predict", "model": name, "columns": names, "kind": assembler.kind or "scalar",
            "aggregation": aggregation, "slide_id": info.get("slide_id"), "mpp": list(mpp),
        })
        _write_picture(out_png, heat[0], size)
    log.info("%d tiles predicted by %s (%s outputs, channels %s)", n, name, assembler.kind or "no", ", ".join(names))
    return n


def _description(name, assembler, names, map_dtype, edge_clipping) -> dict:
    return {"model": name, "kind": assembler.kind or "scalar", "columns": names,
            "map_shape": list(assembler.map_shape) if assembler.map_shape else None,
            "map_dtype": map_dtype if assembler.kind == "dense" else None,
            "edge_clipping": edge_clipping if assembler.kind == "dense" else None}


def _clip_slices(edge_clipping, shape: tuple[int, int]) -> tuple[slice, slice]:
    clip = np.asarray(edge_clipping, np.int64)
    if clip.ndim == 0:
        clip = np.full((2, 2), int(clip))
    elif clip.ndim == 1:
        clip = np.stack([clip, clip], axis=1)
    return tuple(slice(int(a), e - int(b)) for (a, b), e in zip(clip, shape))


def _append_outputs(chunk, out: np.ndarray, names: list[str], assembler: _Assembler, map_dtype: str, pa):
    if out.ndim == 2:
        for c, name in enumerate(names):
            chunk = chunk.append_column(name, pa.array(out[:, c]))
        return chunk
    ys, xs = _clip_slices(assembler.edge_clipping, out.shape[2:])
    means = out[:, :, ys, xs].mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
    for c, name in enumerate(names):
        chunk = chunk.append_column(name, pa.array(means[:, c]))
    for c, name in enumerate(names):
        maps = np.ascontiguousarray(out[:, c].astype(map_dtype))
        chunk = chunk.append_column(f"{name}_map", pa.array([m.tobytes() for m in maps], pa.binary()))
    return chunk


def _write_picture(path: str, values: np.ndarray, size: int) -> None:
    """Channel 0 on a colour ramp stretched to its finite range, longer side ``size`` px."""
    import pyvips

    from mask_first.assembly.heatmaps import colourise
    from mask_first.io import write_png

    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rgb = colourise(values, vmin, vmax if vmax > vmin else vmin + 1)
    scale = size / max(rgb.shape[:2])
    img = pyvips.Image.new_from_array(rgb)
    if scale != 1:
        img = img.resize(scale, kernel="nearest")
    write_png(path, img.numpy())


def read_predictions(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """A predictions table as numpy columns, dense maps decoded to (N, h, w) float32, and its description."""
    from mask_first.io import read_table

    table = read_table(path)
    desc = json.loads(table.schema.metadata[PREDICT_KEY])
    cols: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name.endswith("_map") and desc.get("kind") == "dense":
            h, w = desc["map_shape"]
            raw = table.column(name).to_pylist()
            cols[name] = (np.frombuffer(b"".join(raw), desc["map_dtype"]).reshape(len(raw), h, w)
                          .astype(np.float32))
        else:
            cols[name] = table.column(name).to_numpy()
    return cols, desc
