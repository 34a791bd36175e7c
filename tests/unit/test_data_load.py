"""A study's dataset spec -> videos: the source files, or the packed store made by the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from pitfalls.cli import main
from pitfalls.config import StudyError, parse_study
from pitfalls.data.base import decode_frame
from pitfalls.data.load import load_data
from tests.datasets import FRAME_TOOLS, write_cholec80, write_frames_dataset
from tests.helpers import tiny_study


def _spec(dataset: dict, **overrides):
    return parse_study(tiny_study(dataset=dataset, **overrides))


def test_frames_dataset_from_files_and_from_its_packed_store(tmp_path, capsys):
    fx = write_frames_dataset(tmp_path / "data", {"a": 6, "b": 5, "c": 7, "d": 6})
    from_files = load_data(_spec({"name": "frames", "options": {
        "root": str(tmp_path / "data"), "frame_size": [8, 8], "tool_columns": list(FRAME_TOOLS)}}).dataset)
    # the split column: first video val, second test, the rest train
    assert [v.id for v in from_files.val] == ["a"] and [v.id for v in from_files.test] == ["b"]
    assert sorted(v.id for v in from_files.train) == ["c", "d"]

    assert main(["data", "pack", "frames", str(tmp_path / "data"), str(tmp_path / "store"),
                 "--size", "8x8", "--tool-columns", ",".join(FRAME_TOOLS)]) == 0
    assert "packed 4 videos, 24 frames at 8x8" in capsys.readouterr().out
    from_store = load_data(_spec({"name": "frames", "options": {
        "store": str(tmp_path / "store"), "frame_size": [8, 8]}}).dataset)
    assert {k: [v.id for v in vs] for k, vs in from_store.splits.items()} == \
           {k: [v.id for v in vs] for k, vs in from_files.splits.items()}
    for a, b in zip(from_files.train, from_store.train):
        assert np.array_equal(a.phases, b.phases) and np.array_equal(a.tools, b.tools)
        assert isinstance(b.frames, np.memmap)
        assert np.array_equal(np.asarray(b.frames[1:3]), a.frames[1:3])  # decoded once, same pixels
    assert np.array_equal(from_store.val[0].frames[0], decode_frame(fx["videos"]["a"]["paths"][0], (8, 8)))


def test_store_with_another_frame_size_is_refused_up_front(tmp_path):
    write_cholec80(tmp_path / "data", {1: 5, 2: 5, 3: 6})
    assert main(["data", "pack", "cholec80", str(tmp_path / "data"), str(tmp_path / "store"),
                 "--size", "8x8"]) == 0
    with pytest.raises(StudyError) as e:
        _spec({"name": "cholec80", "options": {"store": str(tmp_path / "store"), "frame_size": [16, 16],
                                               "split": {"train": [1, 2], "val": [3]}}})
    assert "frames are 8x8, the study's frame_size is 16x16" in str(e.value)
    with pytest.raises(StudyError) as e:  # the standard split needs all 80 videos
        _spec({"name": "cholec80", "options": {"store": str(tmp_path / "store"), "frame_size": [8, 8]}})
    assert "40/8/32" in str(e.value) or "not found" in str(e.value)


def test_study_checks_seq_len_and_tools_against_the_real_data(tmp_path):
    write_cholec80(tmp_path / "data", {1: 5, 2: 7, 3: 6})
    raw = tiny_study(dataset={"name": "cholec80", "options": {
        "root": str(tmp_path / "data"), "frame_size": [8, 8], "split": {"train": [1, 2], "val": [3]}}},
        task={"name": "anticipation", "tools": ["Clipper", "Scalpel"]}, metric={})
    raw["search_space"]["factors"].update(seq_len=[6], videos_per_batch=[3])
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    msg = str(e.value)
    assert "seq_len[0]: 6 is longer than the shortest training video (5 frames)" in msg
    assert "videos_per_batch[0]: 3 exceeds the 2 training videos" in msg
    assert "task.tools[1]: 'Scalpel' is not an instrument of the dataset" in msg


def test_data_check_prints_a_table_or_json_and_fails_with_the_problems(tmp_path, capsys):
    import json

    fx = write_cholec80(tmp_path / "data", {1: 4, 2: 5})
    assert main(["data", "check", "cholec80", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "2 videos, 9 frames: OK" in out and "[SpecimenBag]" in out
    assert main(["data", "check", "cholec80", str(tmp_path / "data"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    v1 = report["videos"][0]
    assert v1["frames"] == 4 and sum(v1["phases"].values()) == 4
    assert v1["tools"]["Grasper"] == int(fx[1]["tools"][:, 0].sum())
    (tmp_path / "data" / "tool_annotations" / "video02-tool.txt").unlink()
    assert main(["data", "check", "cholec80", str(tmp_path / "data")]) == 2
    assert "video02-tool.txt is missing" in capsys.readouterr().err



def test_every_study_snippet_in_docs_data_md_parses():
    import re

    import yaml

    from tests.conftest import ROOT

    text = (ROOT / "docs" / "data.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        parse_study(tiny_study(**yaml.safe_load(block)), check_environment=False)
