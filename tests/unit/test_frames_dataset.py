"""The generic frames layout: one folder per video plus a CSV/Parquet labels file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pitfalls.data.base import DataError
from pitfalls.data.frames import expected_name, load, read_videos
from tests.datasets import FRAME_PHASES, FRAME_TOOLS, PALETTE, write_frames_dataset, write_image

VIDEOS = {"case-a": 5, "case-b": 4, "case-c": 6, "case-d": 3}


def problems(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def rewrite_labels(path: Path, edit) -> list[dict]:
    """Read the CSV labels sorted by (video, frame), apply `edit(rows)`, write back; the rows as written."""
    rows = sorted(pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={"video": pa.string()})).to_pylist(), key=lambda r: (r["video"], r["frame"]))
    rows = edit(rows) or rows
    pcsv.write_csv(pa.Table.from_pylist(rows), path, pcsv.WriteOptions(quoting_style="none"))
    return rows


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_load_matches_written_labels(tmp_path, fmt):
    fx = write_frames_dataset(tmp_path, VIDEOS, fmt=fmt)
    data = load(tmp_path, labels=f"labels.{fmt}", tool_columns=FRAME_TOOLS, fps=2.0)
    assert data.name == "frames" and data.fps == 2.0
    assert data.phase_names == ("closure", "dissection", "incision") and data.tool_names == FRAME_TOOLS
    assert {k: [v.id for v in vs] for k, vs in data.splits.items()} == {
        "train": ["case-c", "case-d"], "val": ["case-a"], "test": ["case-b"]}
    for v in data.train + data.val + data.test:
        e = fx["videos"][v.id]
        assert [data.phase_names[p] for p in v.phases] == e["phases"]  # in frame order, not row order
        assert np.array_equal(v.tools, e["tools"]) and v.phases.dtype == np.int64
        assert v.frames.paths == [str(p) for p in e["paths"]]  # the unlabelled img_9999 is not there


def test_decoded_frames_match_and_resize(tmp_path):
    fx = write_frames_dataset(tmp_path, {"v1": 3, "v2": 3}, size=(8, 6))
    data = load(tmp_path)
    v = data.val[0]
    colours = PALETTE[[FRAME_PHASES.index(p) for p in fx["videos"][v.id]["phases"]]]
    assert np.array_equal(v.frames[:], np.broadcast_to(colours[:, None, None], (3, 6, 8, 3)))
    small = load(tmp_path, size=(4, 3)).val[0].frames
    assert small[0:2].shape == (2, 3, 4, 3) and small.shape == (3, 3, 4, 3)


def test_given_phases_fix_the_class_order(tmp_path):
    write_frames_dataset(tmp_path, VIDEOS)
    data = load(tmp_path, phases=FRAME_PHASES + ("extra",))
    assert data.phase_names == FRAME_PHASES + ("extra",)
    assert data.val[0].phases[0] == 0  # first frame is "incision", index 0 in FRAME_PHASES


def test_integer_phases(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 4, "v2": 4})
    rows = rewrite_labels(tmp_path / "labels.csv",
                          lambda rows: [{**r, "phase": FRAME_PHASES.index(r["phase"])} for r in rows])
    data = load(tmp_path)
    assert data.phase_names == tuple(str(i) for i in range(max(r["phase"] for r in rows) + 1))
    v1 = [r["phase"] for r in rows if r["video"] == "v1"]
    assert data.val[0].phases.tolist() == v1
    assert load(tmp_path, phases=("a", "b", "c", "d")).phase_names == ("a", "b", "c", "d")


def test_integer_phase_out_of_range_names_row(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 4, "v2": 4})
    rewrite_labels(tmp_path / "labels.csv", lambda rows: [{**r, "phase": 2 if i == 2 else 0}
                                                          for i, r in enumerate(rows)])
    assert "labels.csv:4: phase 2 is not a valid class index, expected 0..1 (a, b)" in \
        problems(load, tmp_path, phases=("a", "b"))


def test_explicit_split_overrides_column_and_reads_only_its_videos(tmp_path):
    write_frames_dataset(tmp_path, VIDEOS, with_split=False)
    (tmp_path / "case-d" / "img_0002.png").unlink()  # broken, but not requested
    data = load(tmp_path, split={"train": ["case-c", "case-a"], "val": ["case-b"]})
    assert [v.id for v in data.train] == ["case-c", "case-a"] and "test" not in data.splits
    names, tools, videos, splits = read_videos(tmp_path, split={"train": ["case-a"], "val": ["case-b"]})
    assert splits == {"train": ["case-a"], "val": ["case-b"]} and [v.id for v in videos] == ["case-a", "case-b"]


def test_read_videos_without_split_column_returns_no_splits(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3}, with_split=False, fmt="parquet")
    names, tools, videos, splits = read_videos(tmp_path, labels=tmp_path / "labels.parquet")  # absolute
    assert splits is None and [v.id for v in videos] == ["v1", "v2"] and tools == ()
    assert "no split given and the labels file has no 'split' column" in \
        problems(load, tmp_path, labels="labels.parquet")


@pytest.mark.parametrize("split, message", [
    ({"train": ["case-a", "nope"], "val": ["case-b"]}, "split: train lists video 'nope', which is not in the labels"),
    ({"train": ["case-a"], "val": ["case-a"]}, "split: video 'case-a' is in both train and val"),
    ({"train": ["case-a"]}, "split: 'val' is empty"),
    ({"train": ["case-a"], "val": ["case-b"], "holdout": ["case-c"]}, "split: unknown split 'holdout'"),
])
def test_split_errors(tmp_path, split, message):
    write_frames_dataset(tmp_path, VIDEOS)
    assert message in problems(load, tmp_path, split=split)


def test_split_column_errors(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})

    def edit(rows):
        rows[1]["split"] = "validation"  # v1 frame 5, line 3
        rows[5]["split"] = "val"  # v2 (train, from line 5 on) frame 8, line 7

    rewrite_labels(tmp_path / "labels.csv", edit)
    msg = problems(load, tmp_path)
    assert "labels.csv:3: split 'validation' is not one of train, val, test" in msg
    assert "labels.csv:7: video 'v2' has split 'val' but labels.csv:5 says 'train'" in msg


# ---------------------------------------------------------------- errors

def test_missing_image_names_path_and_labels_row(tmp_path):
    write_frames_dataset(tmp_path, VIDEOS)
    rows = rewrite_labels(tmp_path / "labels.csv", lambda rows: None)
    line = 2 + next(i for i, r in enumerate(rows) if r["video"] == "case-b" and r["frame"] == 5)
    (tmp_path / "case-b" / "img_0005.png").unlink()
    assert f"case-b/img_0005.png: no image file for frame 5 (labelled at labels.csv:{line})" in problems(load, tmp_path)


def test_duplicate_rows(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})
    rewrite_labels(tmp_path / "labels.csv", lambda rows: rows + [dict(rows[1])])
    assert "labels.csv:8: duplicate row for video 'v1' frame 5 (also labels.csv:3)" in problems(load, tmp_path)


def test_missing_columns_named_with_the_present_ones(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})
    msg = problems(load, tmp_path, phase_column="label", tool_columns=("tool_a", "tool_z"))
    assert "labels.csv: missing column 'label'; columns present: video, frame, phase, tool_a, tool_b, split" in msg
    assert "labels.csv: missing column 'tool_z'" in msg


def test_tool_values_must_be_0_or_1(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3}, fmt="parquet")
    table = pq.read_table(tmp_path / "labels.parquet")
    tool = table.column("tool_b").to_pylist()
    tool[4] = 3
    pq.write_table(table.set_column(table.column_names.index("tool_b"), "tool_b", pa.array(tool)),
                   tmp_path / "labels.parquet")
    assert "labels.parquet row 5: tool 'tool_b' is 3, expected 0 or 1" in \
        problems(load, tmp_path, labels="labels.parquet", tool_columns=FRAME_TOOLS)


def test_string_phase_not_in_given_phases(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})
    rewrite_labels(tmp_path / "labels.csv", lambda rows: rows.__setitem__(2, {**rows[2], "phase": "sewing"}))
    assert "labels.csv:4: unknown phase 'sewing' (1 row(s)); valid phases: incision, dissection, closure" in \
        problems(load, tmp_path, phases=FRAME_PHASES)


def test_missing_video_folder_and_everything_else_in_one_error(tmp_path):
    write_frames_dataset(tmp_path, VIDEOS)
    rewrite_labels(tmp_path / "labels.csv", lambda rows: rows + [dict(rows[0])])
    for p in (tmp_path / "case-c").iterdir():
        p.unlink()
    (tmp_path / "case-c").rmdir()
    (tmp_path / "case-d" / "img_0008.png").unlink()
    with pytest.raises(DataError) as info:
        load(tmp_path)
    msg = str(info.value)
    assert len(info.value.problems) == 3, msg
    assert "case-c/: video folder not found under" in msg and "labelled at labels.csv:" in msg
    assert "case-d/img_0008.png: no image file for frame 8" in msg
    assert "duplicate row for video 'case-a' frame 2" in msg


def test_frame_column_must_be_integers(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})
    rewrite_labels(tmp_path / "labels.csv", lambda rows: None)
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert lines[1].startswith("v1,2,")
    lines[1] = lines[1].replace("v1,2,", "v1,two,")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    assert "labels.csv: column 'frame' must hold int values, found str" in problems(load, tmp_path)


def test_two_images_for_one_labelled_frame(tmp_path):
    write_frames_dataset(tmp_path, {"v1": 3, "v2": 3})
    write_image(tmp_path / "v1" / "other_2.jpg", PALETTE[0])
    assert "v1/: several image files for frame 2" in problems(load, tmp_path)


def test_expected_name_keeps_prefix_and_padding():
    assert expected_name("img_0002.png", 17) == "img_0017.png"
    assert expected_name("frame7_x.jpg", 12) == "frame12_x.jpg"
    assert expected_name("/a/00000001.jpg", 5) == "00000005.jpg"
