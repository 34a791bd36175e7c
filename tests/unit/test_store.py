"""Packed frame store: exact round trip, resume after an interruption, refusals, damaged stores."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pitfalls.data import store as store_mod
from pitfalls.data.base import DataError, FileFrames, Video, decode_frame
from pitfalls.data.store import open_store, pack, progress_bar
from tests.conftest import ROOT

SIZE = (8, 6)  # (W, H) packed
PHASES = ("prep", "cut", "close")
TOOLS = ("grasper", "hook")


def write_frames(folder: Path, n: int, seed: int, suffix: str = ".png") -> list[Path]:
    """n random 16x12 images; PNG is lossless, so decode_frame's result is exactly known."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for t in range(n):
        path = folder / f"{t:05d}{suffix}"
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, len(PHASES), n).astype(np.int64),
            rng.integers(0, 2, (n, len(TOOLS))).astype(np.uint8))


@pytest.fixture
def videos(tmp_path) -> list[Video]:
    """3 videos, 5/12/7 frames: FileFrames without a size, with the packed size, and JPEG."""
    specs = [("v1", 5, ".png", None), ("v2", 12, ".png", SIZE), ("v3", 7, ".jpg", (4, 3))]
    out = []
    for i, (vid, n, suffix, size) in enumerate(specs):
        paths = write_frames(tmp_path / "src" / vid, n, seed=i, suffix=suffix)
        out.append(Video(vid, FileFrames(paths, size), *labels(n, seed=10 + i)))
    return out


def pack_args(tmp_path: Path, **kw) -> dict:
    return {"phase_names": PHASES, "tool_names": TOOLS, "size": SIZE, "dataset": "tiny",
            "source": str(tmp_path / "src"), "fps": 1.0, "workers": 2, **kw}


def do_pack(videos, out, tmp_path, **kw) -> Path:
    args = pack_args(tmp_path, **kw)
    return pack(videos, args.pop("phase_names"), args.pop("tool_names"), out, args.pop("size"),
                **args)


@pytest.fixture
def count_decodes(monkeypatch):
    """Paths decoded by pack (thread workers call the module's decode_frame)."""
    decoded: list[str] = []

    def counting(path, size):
        decoded.append(str(path))
        return decode_frame(path, size)

    monkeypatch.setattr(store_mod, "decode_frame", counting)
    return decoded


def store_bytes(out: Path) -> tuple[bytes, list]:
    return (out / "frames.u8").read_bytes(), pq.read_table(out / "index.parquet").to_pylist()


# ---------------------------------------------------------------------------------- round trip


def test_round_trip_frames_and_labels_exact(videos, tmp_path):
    out = do_pack(videos, tmp_path / "store", tmp_path)
    got = open_store(out)
    assert (got.dataset, got.source, got.size, got.fps) == ("tiny", str(tmp_path / "src"), SIZE,
                                                            1.0)
    assert got.phase_names == PHASES and got.tool_names == TOOLS
    assert [v.id for v in got.videos] == ["v1", "v2", "v3"]
    for want, have in zip(videos, got.videos):
        expected = np.stack([decode_frame(p, SIZE) for p in want.frames.paths])
        assert have.frames.shape == (len(want), 6, 8, 3) and have.frames.dtype == np.uint8
        assert np.array_equal(np.asarray(have.frames), expected)
        assert np.array_equal(have.phases, want.phases) and have.phases.dtype == np.int64
        assert np.array_equal(have.tools, want.tools) and have.tools.dtype == np.uint8
        assert isinstance(have.frames, np.memmap) and not have.frames.flags.writeable
        with pytest.raises(ValueError):
            have.frames[0, 0, 0, 0] = 1


def test_layout_of_index_and_meta(videos, tmp_path):
    out = do_pack(videos, tmp_path / "store", tmp_path, fps=25.0)
    table = pq.read_table(out / "index.parquet")
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {"video": "string", "frame": "int32", "row": "int64", "phase": "int16",
                     "tool:grasper": "uint8", "tool:hook": "uint8"}
    assert table.column("row").to_pylist() == list(range(24))
    assert table.column("frame").to_pylist() == [*range(5), *range(12), *range(7)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "pitfalls-frame-store" and meta["version"] == 1
    assert meta["size"] == [8, 6] and meta["frames"] == 24 and meta["complete"] is True
    assert meta["fps"] == 25.0 and meta["phase_names"] == list(PHASES)
    assert meta["videos"] == [{"id": "v1", "start": 0, "length": 5},
                              {"id": "v2", "start": 5, "length": 12},
                              {"id": "v3", "start": 17, "length": 7}]
    assert (out / "frames.u8").stat().st_size == 24 * 6 * 8 * 3


def test_process_pool_and_in_memory_frames_give_the_same_store(videos, tmp_path):
    a = do_pack(videos, tmp_path / "threads", tmp_path)
    b = do_pack(videos, tmp_path / "processes", tmp_path, pool="process")
    assert store_bytes(a) == store_bytes(b)
    # frames already in memory (synthetic data, another store's memmap) are copied, not decoded
    in_memory = [Video(v.id, np.asarray(w.frames), v.phases, v.tools)
                 for v, w in zip(videos, open_store(a).videos)]
    c = do_pack(in_memory, tmp_path / "memory", tmp_path)
    assert store_bytes(a) == store_bytes(c)


def test_progress_reaches_total_monotonically(videos, tmp_path):
    seen: list[tuple[int, int]] = []
    do_pack(videos, tmp_path / "store", tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 24) and seen[-1] == (24, 24)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


# ---------------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_interrupted_pack_resumes_without_decoding_finished_videos(videos, tmp_path, monkeypatch,
                                                                   count_decodes):
    monkeypatch.setattr(store_mod, "CHUNK", 4)  # v2 (12 frames) is written in 3 tasks

    def stop_inside_v2(done, total):
        if done >= 5 + 4:  # v1 recorded, one chunk of v2 written but v2 not finished
            raise Interrupt

    out = tmp_path / "store"
    with pytest.raises(Interrupt):
        do_pack(videos, out, tmp_path, workers=1, progress=stop_inside_v2)
    assert json.loads((out / "progress.json").read_text())["done"] == ["v1"]
    assert not (out / "index.parquet").exists()
    with pytest.raises(DataError, match=r"1 of 3 videos packed.*pitfalls data pack"):
        open_store(out)

    count_decodes.clear()
    do_pack(videos, out, tmp_path)
    v1 = {str(p) for p in videos[0].frames.paths}
    assert not v1 & set(count_decodes)  # the finished video is not decoded again
    assert sorted(count_decodes) == sorted(str(p) for v in videos[1:] for p in v.frames.paths)
    assert store_bytes(out) == store_bytes(do_pack(videos, tmp_path / "fresh", tmp_path))


def test_sigkilled_pack_resumes(videos, tmp_path, count_decodes):
    """A real SIGKILL mid-pack (in a subprocess), then a rerun here."""
    out = tmp_path / "store"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from pitfalls.data.base import FileFrames, Video
        from pitfalls.data.store import pack
        specs = {[(v.id, [str(p) for p in v.frames.paths], v.frames.size) for v in videos]!r}
        videos = [Video(i, FileFrames(p, s), np.zeros(len(p), np.int64),
                        np.zeros((len(p), 2), np.uint8)) for i, p, s in specs]

        def die_after_v1(done, total):
            if done >= 5:
                os.kill(os.getpid(), signal.SIGKILL)

        pack(videos, {list(PHASES)!r}, {list(TOOLS)!r}, {str(out)!r}, (8, 6), dataset="tiny",
             source={str(tmp_path / "src")!r}, workers=1, progress=die_after_v1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((out / "progress.json").read_text())["done"] == ["v1"]

    do_pack(videos, out, tmp_path)
    assert not {str(p) for p in videos[0].frames.paths} & set(count_decodes)
    assert store_bytes(out) == store_bytes(do_pack(videos, tmp_path / "fresh", tmp_path))


def test_rerun_of_a_complete_store_decodes_nothing_and_updates_labels(videos, tmp_path,
                                                                      count_decodes):
    out = do_pack(videos, tmp_path / "store", tmp_path)
    frames = (out / "frames.u8").read_bytes()
    count_decodes.clear()
    relabelled = [Video(v.id, v.frames, (v.phases + 1) % 3, 1 - v.tools) for v in videos]
    do_pack(relabelled, out, tmp_path, fps=5.0)
    assert count_decodes == []
    got = open_store(out)
    assert got.fps == 5.0 and (out / "frames.u8").read_bytes() == frames
    assert all(np.array_equal(a.phases, b.phases) and np.array_equal(a.tools, b.tools)
               for a, b in zip(relabelled, got.videos))


@pytest.mark.parametrize("change, expected", [
    ({"size": (4, 3)}, r"size: store has \[8, 6\], inputs have \[4, 3\]"),
    ({"dataset": "other"}, r"dataset: store has 'tiny', inputs have 'other'"),
    ({"source": "/elsewhere"}, r"source: store has .*inputs have '/elsewhere'"),
    ({"drop_frame": True},
     r"video #1: store has 'v2' \(12 frames\), inputs have 'v2' \(11 frames\)"),
    ({"drop_video": True}, r"videos: store has 3, inputs have 2"),
])
def test_pack_refuses_a_store_packed_from_other_inputs(videos, tmp_path, change, expected):
    out = tmp_path / "store"
    with pytest.raises(Interrupt):  # an incomplete store is refused as well as a complete one
        do_pack(videos, out, tmp_path, workers=1, progress=_raise_after(5))
    before = (out / "frames.u8").read_bytes(), (out / "progress.json").read_text()
    if change.pop("drop_frame", False):
        v = videos[1]
        videos[1] = Video(v.id, FileFrames(v.frames.paths[:-1], SIZE), v.phases[:-1], v.tools[:-1])
    if change.pop("drop_video", False):
        videos = videos[:2]
    with pytest.raises(DataError, match="packed from other inputs") as err:
        do_pack(videos, out, tmp_path, **change)
    assert str(out) in str(err.value)
    assert any(re.search(expected, p) for p in err.value.problems), err.value
    assert ((out / "frames.u8").read_bytes(), (out / "progress.json").read_text()) == before


def _raise_after(frames: int):
    def progress(done, total):
        if done >= frames:
            raise Interrupt
    return progress


def test_pack_refuses_bad_inputs(videos, tmp_path):
    v = videos[0]
    bad = [v, Video(v.id, v.frames, v.phases, v.tools),
           Video("short", v.frames, v.phases[:-1], v.tools[:-1])]
    with pytest.raises(DataError) as err:
        do_pack(bad, tmp_path / "store", tmp_path)
    text = str(err.value)
    assert "duplicate video ids: ['v1']" in text and "short: 5 frames but 4 phase labels" in text
    with pytest.raises(DataError, match="size must be two positive integers"):
        do_pack(videos, tmp_path / "store", tmp_path, size=(0, 6))


def test_undecodable_frame_names_its_file(videos, tmp_path):
    broken = videos[1].frames.paths[3]
    Path(broken).write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{broken}: cannot decode"):
        do_pack(videos, tmp_path / "store", tmp_path)


# ---------------------------------------------------------------------------------- damaged


def _damage(out: Path, how: str) -> str:
    """Damage the store `out` in one way; the error message expected from open_store."""
    if how == "missing dir":  # open_store is pointed at tmp_path / "nowhere"
        return "not a frame store: the directory does not exist"
    if how == "no meta":
        (out / "meta.json").unlink()
        return "has no meta.json"
    if how == "garbage meta":
        (out / "meta.json").write_text("{not json")
        return "(?s)meta.json.*unreadable"
    if how == "foreign meta":
        (out / "meta.json").write_text(json.dumps({"format": "something-else"}))
        return "not a pitfalls-frame-store meta file"
    if how == "short frames":
        with open(out / "frames.u8", "r+b") as f:
            f.truncate(100)
        return "(?s)frames.u8.*100 bytes, expected 3456"
    if how == "no index":
        (out / "index.parquet").unlink()
        return "(?s)index.parquet.*unreadable"
    if how == "garbage index":
        (out / "index.parquet").write_bytes(b"PAR1 nope")
        return "(?s)index.parquet.*unreadable"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing dir", "no meta", "garbage meta", "foreign meta",
                                 "short frames", "no index", "garbage index"])
def test_damaged_or_missing_store_is_a_data_error_naming_the_path(videos, tmp_path, how):
    out = do_pack(videos, tmp_path / "store", tmp_path)
    expected = _damage(out, how)
    target = tmp_path / "nowhere" if how == "missing dir" else out
    with pytest.raises(DataError, match=expected) as err:
        open_store(target)
    assert str(target) in str(err.value)


def test_index_that_disagrees_with_meta_is_refused(videos, tmp_path):
    out = do_pack(videos, tmp_path / "store", tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta["videos"][0]["id"], meta["videos"][1]["id"] = "v2", "v1"
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="rows do not match meta.json's videos"):
        open_store(out)


# ---------------------------------------------------------------------------------- bar


def test_progress_bar_shows_frames_rate_and_ends_with_a_newline():
    """The pack progress bar is tqdm's: frames done of total, %, frames/s, closed at the end."""
    stream = io.StringIO()
    bar = progress_bar(200, "packing", stream=stream)
    for done in range(0, 201):
        bar(done, 200)
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert "packing" in last and "100%" in last and "200/200" in last and "frames/s" in last
    bar(200, 200)
    assert stream.getvalue() == text  # nothing after the end


def test_store_module_imports_no_cluster_packages():
    code = ("import sys, pitfalls.data.store; "
            "print(sorted(m for m in ('ray', 'optuna', 'mlflow', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
