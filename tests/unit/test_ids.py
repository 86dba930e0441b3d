import os
import subprocess
import sys

import numpy as np

from mask_first.ids import row_hash, stable_id


def test_stable_id_ignores_int_types_and_key_order():
    a = stable_id({"path": "a.svs", "level": 1, "tile": 256, "mpp": 0.5})
    b = stable_id({"mpp": np.float32(0.5), "tile": np.int64(256), "level": np.int32(1), "path": "a.svs"})
    assert a == b


def test_stable_id_differs_when_a_parameter_differs():
    base = {"path": "a.svs", "level": 1, "tile": 256}
    assert stable_id(base) != stable_id(base | {"tile": 512})
    assert stable_id(base) != stable_id(base | {"path": "b.svs"})


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


def test_stable_id_is_stable_across_processes_with_hash_randomisation():
    code = "from mask_first.ids import stable_id; print(stable_id({'path': 'x.tif', 'level': 2, 'mpp': 0.25}))"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": "", **_pythonpath()}).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert outs == {stable_id({"path": "x.tif", "level": 2, "mpp": 0.25})}
    # pinned value: a change here silently renames every cached artifact
    assert outs == {"a65bb580a3a745b7"}


def test_row_hash_is_the_seeds_map_function_on_dicts_and_pandas_rows():
    import hashlib

    import pandas as pd

    row = {"path": "a.svs", "level": np.int64(1), "mpp_x": 0.5}
    out = row_hash(dict(row))
    # the row comes back with an "id": the full SHA-256 of the canonical form, whose prefix is stable_id
    assert set(out) == {"path", "level", "mpp_x", "id"} and len(out["id"]) == 64
    assert out["id"].startswith(stable_id(row)) and out["id"] == hashlib.sha256(
        b'{"level":1,"mpp_x":"0.5","path":"a.svs"}').hexdigest()
    # re-hashing a hashed row (its old id excluded) gives the same id
    assert row_hash(dict(out))["id"] == out["id"]
    slides = pd.DataFrame([row, {"path": "b.svs", "level": 0, "mpp_x": 0.25}])
    hashed = slides.apply(row_hash, axis=1)
    assert list(hashed.columns) == ["path", "level", "mpp_x", "id"]
    assert hashed["id"].tolist() == [row_hash(r)["id"] for r in slides.to_dict("records")]
    assert row_hash({"a": 1}, column="slide_id", algorithm=hashlib.md5)["slide_id"] == hashlib.md5(b'{"a":1}').hexdigest()
