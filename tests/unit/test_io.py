"""mask_first.io: the cohort TSV writer and reader, checked against pandas' own parser."""

from __future__ import annotations

import math

import pandas as pd

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
