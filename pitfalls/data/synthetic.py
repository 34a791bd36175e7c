"""Procedural "surgical-like" videos: no download, deterministic from a seed.

Each video runs through `num_phases` phases in a fixed order with random durations. A frame's
appearance depends on its phase (a grating whose orientation and frequency are phase-specific,
tinted by a phase colour), drifts over time (motion), carries a per-video brightness/contrast
offset (videos differ like patients and cameras do, which is what makes single-video BN batches
leak video identity), shows a blob per present instrument, and has pixel noise. Neighbouring
phases share part of their look, so single frames are ambiguous and temporal context helps.
`shared_looks` goes further (off by default): a later phase rendered exactly like an earlier one
(pattern, colour and instrument rates), as when a surgeon returns to an earlier kind of activity;
only what happened in between tells them apart, which takes context longer than a phase.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np

from pitfalls.data.base import Video, VideoData
from pitfalls.fields import FORBID_EXTRA, Float, Int, ListOf, Problem


@dataclass(frozen=True)
class SyntheticOptions:
    """The generator's options (`dataset.options` of a synthetic study)."""

    __pydantic_config__ = FORBID_EXTRA

    # bounds above keep a typo (num_videos: 1e6 ...) from making videos no machine holds
    num_videos: Annotated[int, Int(ge=2, le=10_000)] = 12
    val_videos: Annotated[int, Int(ge=1)] = 4  # the first `val_videos` videos are the validation split
    # the test split: videos rendered after the `num_videos` (train and val stay what they were)
    test_videos: Annotated[int, Int(ge=0, le=10_000)] = 4
    num_phases: Annotated[int, Int(ge=2, le=64)] = 5
    num_tools: Annotated[int, Int(ge=0, le=64)] = 4
    min_phase_frames: Annotated[int, Int(ge=1, le=100_000)] = 6
    max_phase_frames: Annotated[int, Int(ge=1, le=100_000)] = 18
    frame_size: Annotated[int, Int(ge=16, le=1024)] = 32
    noise: Annotated[float, Float(ge=0)] = 0.35
    video_shift: Annotated[float, Float(ge=0)] = 1.0  # spread of the per-video gain/offset (camera, patient, lighting)
    # std of an instrument's blob, in half frame widths (0.3: ~a quarter of the frame)
    tool_size: Annotated[float, Float(gt=0)] = 0.1
    # (phase, like) pairs, phases numbered from 1 as named (phase1, ...): `phase` is rendered with
    # the look and instrument rates of the earlier phase `like` ([[4, 2]]: phase 4 looks like 2)
    shared_looks: Annotated[tuple, ListOf("must be a list of [phase, like] pairs, e.g. [[4, 2]]")] = ()
    seed: Annotated[int, Int(ge=0)] = 0

    def problems(self) -> list[Problem]:
        """What no single field can say: ranges that relate fields, and the shared looks."""
        out = []
        if self.max_phase_frames < self.min_phase_frames:
            out.append(Problem("max_phase_frames", self.max_phase_frames,
                               f"must be >= min_phase_frames ({self.min_phase_frames})",
                               ("min_phase_frames",)))
        if self.val_videos >= self.num_videos:
            out.append(Problem("val_videos", self.val_videos, "must leave at least one training "
                               f"video (num_videos is {self.num_videos})", ("num_videos",)))
        return out + [replace(x, uses=("num_phases",))
                      for x in _shared_look_problems(self.shared_looks, self.num_phases)]


def _shared_look_problems(looks: tuple, num_phases: int) -> list[Problem]:
    """[[phase, like], ...]: each a later phase rendered like an earlier, unshared one."""
    out, pairs = [], []
    for i, pair in enumerate(looks):
        where = f"shared_looks[{i}]"
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in pair)):
            out.append(Problem(where, _listed(pair), "must be a pair of phase numbers [phase, like]"))
        elif not 1 <= pair[1] < pair[0] <= num_phases:
            out.append(Problem(where, _listed(pair), "must name a phase and an earlier phase it "
                               f"looks like, both in 1..{num_phases} (num_phases)"))
        else:
            pairs.append((i, pair[0], pair[1]))
    shared = [a for _, a, _ in pairs]
    for i, a, b in pairs:
        if shared.count(a) > 1:
            out.append(Problem(f"shared_looks[{i}]", [a, b], f"phase {a} is given more than one look"))
        elif b in shared:
            out.append(Problem(f"shared_looks[{i}]", [a, b], f"phase {b} is itself rendered like "
                               "another phase; name the original one"))
    return out


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def _phase_durations(opts: SyntheticOptions) -> list[np.ndarray]:
    rng = np.random.default_rng([opts.seed, 0])
    return [rng.integers(opts.min_phase_frames, opts.max_phase_frames + 1, size=opts.num_phases)
            for _ in range(opts.num_videos + opts.test_videos)]


def video_lengths(opts: SyntheticOptions) -> list[int]:
    """Frame count of every video but the test ones, without rendering (cheap: for validation)."""
    return [int(d.sum()) for d in _phase_durations(opts)[:opts.num_videos]]


def test_lengths(opts: SyntheticOptions) -> list[int]:
    """Frame count of each test video (rendered after the others)."""
    return [int(d.sum()) for d in _phase_durations(opts)[opts.num_videos:]]


def _phase_looks(opts: SyntheticOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([opts.seed, 1])
    angles = np.linspace(0, np.pi, opts.num_phases, endpoint=False) + rng.uniform(0, 0.3)
    freqs = rng.uniform(1.5, 4.0, size=opts.num_phases)
    base = rng.uniform(0.2, 0.8, size=(opts.num_phases, 3))
    # neighbours share half their colour: a single frame is ambiguous near phase changes
    colours = 0.5 * base + 0.5 * np.roll(base, 1, axis=0)
    return angles, freqs, colours


def look_of_phase(opts: SyntheticOptions) -> np.ndarray:
    """Per phase (0-based), the phase whose look and instrument rates it is rendered with."""
    looks = np.arange(opts.num_phases)
    for phase, like in opts.shared_looks:
        looks[phase - 1] = like - 1
    return looks


def _tool_presence(durations: np.ndarray, looks: np.ndarray, num_tools: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Per phase, each tool appears in one random interval with a probability set by the phase's
    look."""
    total = int(durations.sum())
    tools = np.zeros((total, num_tools), dtype=np.uint8)
    start = 0
    for p, d in enumerate(durations):
        for k in range(num_tools):
            if rng.random() < 0.15 + 0.7 * ((looks[p] + k) % 3 == 0):
                a = int(rng.integers(0, d))
                b = int(rng.integers(a + 1, d + 1))
                tools[start + a:start + b, k] = 1
        start += int(d)
    return tools


def make_video(opts: SyntheticOptions, index: int) -> Video:
    """Render video `index` (deterministic from opts.seed and index)."""
    durations = _phase_durations(opts)[index]
    angles, freqs, colours = _phase_looks(opts)
    rng = np.random.default_rng([opts.seed, 2, index])
    phases = np.repeat(np.arange(opts.num_phases), durations).astype(np.int64)
    looks = look_of_phase(opts)
    look = looks[phases]  # what each frame looks like (its phase unless shared)
    t = np.arange(len(phases), dtype=np.float32)
    tools = _tool_presence(durations, looks, opts.num_tools, rng)

    s = opts.frame_size
    yy, xx = np.meshgrid(np.linspace(-1, 1, s, dtype=np.float32),
                         np.linspace(-1, 1, s, dtype=np.float32), indexing="ij")
    ang = angles[look][:, None, None]
    proj = np.cos(ang) * xx + np.sin(ang) * yy
    drift = 0.15 * t[:, None, None]  # motion: the pattern drifts frame to frame
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * freqs[look][:, None, None] * proj + drift)
    img = grating[..., None] * colours[look][:, None, None, :]

    for k in range(opts.num_tools):  # one moving blob per present instrument
        cx = 0.6 * np.cos(2 * np.pi * k / max(opts.num_tools, 1) + 0.05 * t)
        cy = 0.6 * np.sin(2 * np.pi * k / max(opts.num_tools, 1) + 0.05 * t)
        d2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
        blob = np.exp(-d2 / (2 * opts.tool_size ** 2))
        img += 0.6 * (tools[:, k, None, None] * blob)[..., None]

    shift = opts.video_shift  # per-video camera/patient
    gain, offset = 1 + rng.uniform(-0.3, 0.3) * shift, rng.uniform(-0.15, 0.15) * shift
    img = gain * img + offset + opts.noise * rng.standard_normal(img.shape, dtype=np.float32)
    frames = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Video(id=f"synthetic-{index:03d}", frames=frames, phases=phases, tools=tools)


def make_videos(opts: SyntheticOptions) -> tuple[list[Video], list[Video]]:
    """(train, val) videos; the first `val_videos` are validation."""
    videos = [make_video(opts, i) for i in range(opts.num_videos)]
    return videos[opts.val_videos:], videos[:opts.val_videos]


def synthetic_data(opts: SyntheticOptions) -> VideoData:
    """The synthetic dataset as a `VideoData` (1 frame = 1 second, tools named tool1..toolK)."""
    train, val = make_videos(opts)
    splits = {"train": train, "val": val}
    if opts.test_videos:
        splits["test"] = [make_video(opts, opts.num_videos + i) for i in range(opts.test_videos)]
    return VideoData(name="synthetic", phase_names=tuple(f"phase{i + 1}" for i in range(opts.num_phases)),
                     tool_names=tuple(f"tool{k + 1}" for k in range(opts.num_tools)),
                     splits=splits, fps=1.0)
