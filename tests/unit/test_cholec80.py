"""The Cholec80 loader on tiny fixtures written in the exact distributed format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pitfalls.data import cholec80
from pitfalls.data.base import DataError
from pitfalls.data.cholec80 import PHASES, TOOLS, load, read_videos, resolve_split, video_ids
from pitfalls.data.frames import MAX_PER_KIND
from tests.datasets import PALETTE, frame_path, write_cholec80, write_image, write_phase_file, write_tool_file

PHASE1 = "phase_annotations/video01-phase.txt"
TOOL1 = "tool_annotations/video01-tool.txt"


def problems(fn, *args, **kwargs) -> str:
    """The DataError message `fn` raises (the test fails if it raises nothing)."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def edit_line(path: Path, lineno: int, text: str | None) -> None:
    """Replace (or with None delete) 1-based line `lineno` of a text file."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def hand_built(root: Path, start: int, frames: int = 4, ext: str = ".png", folder: str = "01") -> np.ndarray:
    """Video 1 by hand: 100 frames at 25 fps, Preparation 0-29, Calot 30-79, Clipping 80-99.

    The phase changes at 25-fps frames 30 and 80 fall between the 1-fps samples 25|50 and 75|100.
    Tool rows at 0, 25, 50, 75. Returns the tool rows.
    """
    write_phase_file(root / PHASE1, [0] * 30 + [1] * 50 + [2] * 20)
    tools = np.array([[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]])
    write_tool_file(root / TOOL1, tools)
    for k in range(frames):
        write_image(root / "frames" / folder / f"{k + start:08d}{ext}", PALETTE[k])
    return tools


# ---------------------------------------------------------------- alignment

@pytest.mark.parametrize("start", [0, 1])
def test_hand_built_alignment_at_1fps(tmp_path, start):
    tools = hand_built(tmp_path, start)
    [video] = read_videos(tmp_path)
    assert video.id == "video01" and len(video) == 4
    assert video.phases.tolist() == [0, 0, 1, 1]  # frame 25 is before the change at 30; 75 before 80
    assert np.array_equal(video.tools, tools) and video.tools.dtype == np.uint8
    assert video.frames.paths[0].endswith(f"{start:08d}.png")


def test_hand_built_alignment_at_2fps(tmp_path):
    """At 2 fps frame k shows 25-fps frame round(12.5 k), halves up: 0 13 25 38 50 63 75 88."""
    hand_built(tmp_path, start=1, frames=8)
    [video] = read_videos(tmp_path, fps=2.0)
    assert video.phases.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert video.tools[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # tool rows 0 0 1 1 2 2 3 3
    assert video.tools[:, 6].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_extra_trailing_frame_is_dropped_and_a_missing_one_is_fine(tmp_path):
    hand_built(tmp_path, start=1, frames=5)
    assert len(read_videos(tmp_path)[0]) == 4
    shutil.rmtree(tmp_path / "frames")
    hand_built(tmp_path, start=1, frames=3)
    [video] = read_videos(tmp_path)
    assert video.phases.tolist() == [0, 0, 1]


@pytest.mark.parametrize("start", [0, 1])
def test_generated_videos_match_expected_labels(tmp_path, start):
    expected = write_cholec80(tmp_path, {1: 12, 2: 7, 3: 20}, start=start, seed=start)
    videos = read_videos(tmp_path)
    assert [v.id for v in videos] == ["video01", "video02", "video03"]
    for v, e in zip(videos, expected.values(), strict=True):
        assert np.array_equal(v.phases, e["phases"]) and np.array_equal(v.tools, e["tools"])
        assert v.frames.paths == [str(p) for p in e["paths"]]
        assert len(set(e["phases"].tolist())) > 1  # the fixture really changes phase


def test_generated_at_half_fps(tmp_path):
    expected = write_cholec80(tmp_path, {4: 21}, fps=0.5)
    [video] = read_videos(tmp_path, fps=0.5)
    assert len(video) == len(expected[4]["phases"]) == 11
    assert np.array_equal(video.phases, expected[4]["phases"])
    assert np.array_equal(video.tools, expected[4]["tools"])


@pytest.mark.parametrize("folder", ["{:d}", "video{:02d}"])
def test_frame_folder_names_and_png(tmp_path, folder):
    expected = write_cholec80(tmp_path, {7: 6}, ext=".png", folder=folder)
    assert video_ids(tmp_path) == [7]
    [video] = read_videos(tmp_path)
    assert video.id == "video07" and np.array_equal(video.phases, expected[7]["phases"])


def test_decoded_frames_match_written_images_and_resize(tmp_path):
    expected = write_cholec80(tmp_path, {1: 5, 2: 5}, size=(8, 6))
    write_cholec80(tmp_path / "png", {1: 5}, size=(8, 6), ext=".png")
    png = read_videos(tmp_path / "png")[0].frames[:]
    assert png.shape == (5, 6, 8, 3) and np.array_equal(png, np.broadcast_to(
        expected[1]["colours"][:, None, None], png.shape))
    jpg = read_videos(tmp_path)[0].frames
    assert np.abs(jpg[:].astype(int) - expected[1]["colours"][:, None, None]).max() <= 12
    small = read_videos(tmp_path, size=(4, 2))[0].frames
    assert small.shape == (5, 2, 4, 3) and small[1:3].shape == (2, 2, 4, 3)


def test_fast_and_line_by_line_parsers_agree(tmp_path):
    write_cholec80(tmp_path, {1: 30})
    for path, is_phase in ((tmp_path / PHASE1, True), (tmp_path / TOOL1, False)):
        header = cholec80.PHASE_HEADER if is_phase else cholec80.TOOL_HEADER
        fast = cholec80._fast_parse(path, header, is_phase)
        slow = cholec80._slow_parse(cholec80._lines(path), header, is_phase, "x", cholec80.Problems())
        assert fast is not None and slow is not None
        assert np.array_equal(fast.frames, slow.frames) and np.array_equal(fast.values, slow.values)
        assert fast.values.dtype == slow.values.dtype


def test_space_separated_tool_file_and_crlf_phase_file_are_accepted(tmp_path):
    tools = hand_built(tmp_path, start=1)
    (tmp_path / TOOL1).write_text((tmp_path / TOOL1).read_text().replace("\t", "  "))
    (tmp_path / PHASE1).write_bytes((tmp_path / PHASE1).read_bytes().replace(b"\n", b"\r\n"))
    [video] = read_videos(tmp_path)
    assert video.phases.tolist() == [0, 0, 1, 1] and np.array_equal(video.tools, tools)


# ---------------------------------------------------------------- splits

def test_standard_splits_by_name():
    every = list(range(1, 81))
    s = resolve_split("40/8/32", every)
    assert s == {"train": list(range(1, 41)), "val": list(range(41, 49)), "test": list(range(49, 81))}
    s = resolve_split("32/8/40", every)
    assert s == {"train": list(range(1, 33)), "val": list(range(33, 41)), "test": list(range(41, 81))}


def test_load_standard_split_on_80_videos(tmp_path):
    write_cholec80(tmp_path, dict.fromkeys(range(1, 81), 2), images=False)
    data = load(tmp_path, "32/8/40")
    assert data.name == "cholec80" and data.phase_names == PHASES and data.tool_names == TOOLS
    assert [v.id for v in data.val] == [f"video{i}" for i in range(33, 41)]
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 40)
    assert data.test[-1].id == "video80" and data.fps == 1.0
    data = load(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 8, 32)


def test_custom_split_reads_only_its_videos(tmp_path):
    write_cholec80(tmp_path, {1: 5, 2: 5, 3: 5, 4: 5})
    (tmp_path / "phase_annotations/video04-phase.txt").write_text("")  # broken, but not requested
    data = load(tmp_path, {"train": [3, 1], "val": [2]}, size=(4, 4))
    assert [v.id for v in data.train] == ["video03", "video01"] and [v.id for v in data.val] == ["video02"]
    assert "test" not in data.splits and data.train[0].frames.shape == (5, 4, 4, 3)


@pytest.mark.parametrize("split, message", [
    ("40/8/40", "unknown split '40/8/40'; valid: 40/8/32, 32/8/40"),
    ({"train": [1, 9], "val": [2]}, "custom split: train video(s) 9 not found in the dataset root (found videos: 1-3)"),
    ({"train": [1, 2], "val": [2]}, "custom split: video 2 is in both train and val"),
    ({"train": [], "val": [2]}, "custom split: 'train' is empty"),
    ({"train": [1]}, "custom split: 'val' is empty"),
    ({"train": [1], "val": [2], "tst": [3]}, "unknown part 'tst'"),
])
def test_split_errors(split, message):
    assert message in problems(resolve_split, split, [1, 2, 3])


def test_standard_split_names_the_missing_videos():
    assert "split 40/8/32: test video(s) 49-80 not found" in problems(resolve_split, "40/8/32", range(1, 49))


# ---------------------------------------------------------------- errors: each names file and line

@pytest.fixture
def one(tmp_path) -> Path:
    """Video 1 (6 s) well formed; tests break one thing."""
    write_cholec80(tmp_path, {1: 6}, seed=3)
    read_videos(tmp_path)  # sanity: loads before it is broken
    return tmp_path


def test_frame_count_far_off(one):
    for k in range(6, 9):
        write_image(frame_path(one, 1, k), PALETTE[0])
    msg = problems(read_videos, one)
    assert f"frames/01/ has 9 frames but {PHASE1} annotates" in msg and "= 6 frames at 1 fps (+3" in msg


def test_frame_count_far_off_at_2fps_names_both_counts_and_paths(tmp_path):
    hand_built(tmp_path, start=1)
    msg = problems(read_videos, tmp_path, fps=2.0)
    assert f"frames/01/ has 4 frames but {PHASE1} annotates 100 frames at 25 fps = 8 frames at 2 fps (-4" in msg


def test_gap_in_frame_numbering_names_expected_path(tmp_path):
    write_cholec80(tmp_path, {3: 8})
    frame_path(tmp_path, 3, 4).unlink()  # file 00000005.jpg
    assert "missing frame file frames/03/00000005.jpg" in problems(read_videos, tmp_path)


def test_frame_numbering_must_start_at_0_or_1(tmp_path):
    write_cholec80(tmp_path, {3: 4}, start=5)
    assert "frames/03/: frame numbering starts at 5 (frames/03/00000005.jpg)" in problems(read_videos, tmp_path)


def test_two_files_for_one_frame(one):
    write_image(one / "frames/01/1.png", PALETTE[0])
    assert "frames/01/: several files for frame 1" in problems(read_videos, one)


def test_missing_annotation_files(tmp_path):
    write_cholec80(tmp_path, {1: 5, 2: 5})
    (tmp_path / "phase_annotations/video02-phase.txt").unlink()
    (tmp_path / TOOL1).unlink()
    msg = problems(read_videos, tmp_path)
    assert "video 2: phase_annotations/video02-phase.txt is missing for frames/02/ (5 frames)" in msg
    assert f"video 1: {TOOL1} is missing for frames/01/" in msg


def test_annotations_without_frames_when_requested(tmp_path):
    write_cholec80(tmp_path, {1: 5, 2: 5})
    shutil.rmtree(tmp_path / "frames/02")
    assert "video 2: phase_annotations/video02-phase.txt exists but there is no frame folder frames/02/" in \
        problems(load, tmp_path, {"train": [1], "val": [2]})
    write_cholec80(tmp_path, {3: 5})
    assert len(load(tmp_path, {"train": [1], "val": [3]}).val) == 1  # not requested: not an error


def test_unknown_phase_names_file_line_value_and_valid_names(one):
    edit_line(one / PHASE1, 7, "5\tPreperation")
    msg = problems(read_videos, one)
    assert f"{PHASE1}:7: unknown phase 'Preperation'; valid phases: Preparation, CalotTriangleDissection" in msg
    assert "GallbladderRetraction" in msg


def test_unknown_phase_repeated_is_reported_once_with_count(one):
    text = (one / PHASE1).read_text().replace("Preparation", "prep")
    (one / PHASE1).write_text(text)
    msg = problems(read_videos, one)
    assert f"{PHASE1}:2: unknown phase 'prep' (" in msg and msg.count("'prep'") == 1


@pytest.mark.parametrize("path, lineno, text, message", [
    (PHASE1, 5, "3\tPreparation\textra", ":5: expected 2 fields (Frame, Phase), got 3: '3\\tPreparation\\textra'"),
    (PHASE1, 6, "", ":6: expected 2 fields (Frame, Phase), got 0: blank line"),
    (PHASE1, 4, "2.0\tPreparation", ":4: Frame '2.0' is not an integer"),
    (PHASE1, 1, "frame\tphase", ":1: wrong header 'frame\\tphase', expected 'Frame\\tPhase'"),
    (TOOL1, 3, "25\t1\t0\t2\t0\t0\t0\t0", ":3: Hook is '2', expected 0 or 1"),
    (TOOL1, 2, "0\t1\t0\t0", ":2: expected 8 fields (Frame, Grasper, Bipolar"),
    (TOOL1, 1, "Frame\tGrasper", ":1: wrong header 'Frame\\tGrasper', expected 'Frame\\tGrasper\\tBipolar"),
    (PHASE1, 10, "7\tPreparation", ":10: Frame 7 is not greater than the previous Frame 7 (line 9)"),
    (PHASE1, 2, "1\tPreparation", ":2: first Frame is 1; annotations must start at Frame 0"),
])
def test_malformed_lines_name_file_and_line(one, path, lineno, text, message):
    edit_line(one / path, lineno, text)
    assert path + message in problems(read_videos, one)


def test_non_monotonic_frame_names_value_and_previous(one):
    edit_line(one / PHASE1, 20, "3\tPreparation")
    assert f"{PHASE1}:20: Frame 3 is not greater than the previous Frame 17 (line 19)" in problems(read_videos, one)


@pytest.mark.parametrize("content, message", [("", "empty annotation file"),
                                              ("Frame\tPhase\n", "empty annotation file (a header but no rows)")])
def test_empty_annotation_file(one, content, message):
    (one / PHASE1).write_text(content)
    assert f"{PHASE1}: {message}" in problems(read_videos, one)


def test_all_problems_of_all_videos_come_in_one_error(tmp_path):
    write_cholec80(tmp_path, {1: 6, 2: 6, 3: 6, 5: 6})
    edit_line(tmp_path / PHASE1, 3, "1\tNope")
    edit_line(tmp_path / "tool_annotations/video02-tool.txt", 4, "50\t1\t1")
    frame_path(tmp_path, 3, 2).unlink()
    (tmp_path / "phase_annotations/video05-phase.txt").write_text("")
    with pytest.raises(DataError) as info:
        load(tmp_path, {"train": [1, 2, 9], "val": [3, 5]})
    msg = str(info.value)
    assert len(info.value.problems) == 5, msg
    for part in (f"{PHASE1}:3: unknown phase 'Nope'", "tool_annotations/video02-tool.txt:4: expected 8 fields",
                 "frames/03/00000003.jpg", "phase_annotations/video05-phase.txt: empty annotation file",
                 "train video(s) 9 not found"):
        assert part in msg


def test_many_errors_in_one_file_are_capped(one):
    lines = (one / PHASE1).read_text().splitlines()
    (one / PHASE1).write_text("\n".join([lines[0]] + [f"x{i}\tPreparation" for i in range(40)]) + "\n")
    msg = problems(read_videos, one)
    assert msg.count("is not an integer") == MAX_PER_KIND
    assert f"{PHASE1}: ... and 30 more frame problem(s)" in msg


def test_not_a_dataset(tmp_path):
    assert "none of frames/, phase_annotations/, tool_annotations/ found" in problems(video_ids, tmp_path)
    assert "dataset folder not found" in problems(load, tmp_path / "nope")
