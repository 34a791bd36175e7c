"""Evaluation with several videos as lanes: the schedule covers every frame once, in order, and
the metrics are those of evaluating one video at a time in 64-frame chunks (the evaluation
before lanes, rebuilt here from `forward_video` as the reference)."""

import numpy as np
import pytest
import torch

from pitfalls.config import PerformanceSpec
from pitfalls.data.base import Video
from pitfalls.data.synthetic import SyntheticOptions, make_videos
from pitfalls.models.frame_head import FrameClassifier
from pitfalls.models.heads import GRUHead, LSTMHead, TCNHead
from pitfalls.models.video_model import build_model, chunk_bounds, forward_video
from pitfalls.train.evaluation import evaluate, lane_schedule
from pitfalls.train.fast import resolve
from pitfalls.train.tasks import AnticipationTask, PhaseTask

CPU = torch.device("cpu")


def test_the_schedule_covers_every_frame_once_in_order_with_resets_at_starts():
    lengths = [7, 30, 1, 12, 12, 5]
    steps = lane_schedule(lengths, lanes=3, chunk=4)
    assert all(len(s.pieces) == 3 for s in steps)  # one shape for every pass
    seen: dict[int, list[int]] = {}
    lane_of: dict[int, int] = {}
    for s in steps:
        for lane, (piece, start) in enumerate(zip(s.pieces, s.starts)):
            if piece is None:
                assert not start
                continue
            video, a, b = piece
            assert 0 < b - a <= 4 and start == (a == 0)
            assert lane_of.setdefault(video, lane) == lane  # a video stays on its lane
            assert seen.get(video, [0])[-1] == a  # consecutive
            seen.setdefault(video, [0]).append(b)
        # a pass is a whole chunk unless every lane has less left
        assert s.length == max(p[2] - p[1] for p in s.pieces if p)
        assert s.length == 4 or all(p is None or p[2] - p[1] < 4 for p in s.pieces)
    assert {v: ends[-1] for v, ends in seen.items()} == dict(enumerate(lengths))
    first = [p[0] for p in steps[0].pieces]
    assert first == [1, 3, 4]  # longest first
    assert lane_schedule([5, 3], lanes=8, chunk=4)[0].pieces == ((0, 0, 4), (1, 0, 3))
    assert lane_schedule([], lanes=4, chunk=4) == []


def _reference(model, videos, task):
    """The evaluation before lanes: one video at a time, 64-frame chunks, state carried."""
    fast = resolve(PerformanceSpec(), CPU)
    records, loss_sum, outputs = [], 0.0, []
    model.eval()
    with torch.no_grad():
        for video in videos:
            labels, outs = task.labels(video), []
            for a, b, out in forward_video(model, video.frames, chunk_bounds(len(video), 64), CPU,
                                           autocast=fast.autocast):
                y = [torch.from_numpy(lab[None, a:b]) for lab in labels]
                loss_sum += task.loss(out, y).item() * (b - a)
                outs.append(out[0].numpy())
            outputs.append(np.concatenate(outs))
            records.append(task.video_record(outputs[-1], video))
    return records, loss_sum, outputs


def _videos():
    train, val = make_videos(SyntheticOptions(num_videos=7, val_videos=7, test_videos=0, frame_size=16,
                                              min_phase_frames=3, max_phase_frames=30, num_tools=2))
    return val + [Video("one-frame", val[0].frames[:1], val[0].phases[:1], val[0].tools[:1])]


@pytest.mark.parametrize("head", [LSTMHead(hidden_size=8), GRUHead(hidden_size=8),
                                  TCNHead(stages=2, layers=3, feature_maps=8), None],
                         ids=["lstm", "gru", "tcn", "frames"])
@pytest.mark.parametrize("lanes,chunk", [(3, 5), (8, 128), (1, 64)])
def test_lanes_give_the_metrics_of_one_video_at_a_time(head, lanes, chunk):
    videos = _videos()
    task = PhaseTask(5)
    torch.manual_seed(0)
    model = build_model(backbone="test_resnet", norm="batch", frozen_stages=0, num_classes=5,
                        head_options=head, temporal_head=head.type if head else None)
    if head is None:
        assert isinstance(model.head, FrameClassifier)
    model.eval()
    want_records, want_loss, want_outputs = _reference(model, videos, task)
    outputs: list = []
    records, loss, frames = evaluate(model, videos, task, CPU, outputs_of=outputs, lanes=lanes,
                                     chunk=chunk)
    assert frames == sum(len(v) for v in videos)
    for got, want in zip(outputs, want_outputs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert task.summarize(records) == task.summarize(want_records)
    assert loss == pytest.approx(want_loss, rel=1e-5)


def test_anticipation_metrics_are_unchanged_too():
    videos = _videos()
    task = AnticipationTask((0, 1), horizon=0.5, fps=1.0)
    torch.manual_seed(0)
    model = build_model(backbone="test_resnet", norm="group", frozen_stages=0,
                        num_classes=task.outputs, head_options=LSTMHead(hidden_size=8))
    want_records, want_loss, _ = _reference(model, videos, task)
    records, loss, _ = evaluate(model, videos, task, CPU, lanes=4, chunk=6)
    got, want = task.summarize(records), task.summarize(want_records)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert loss == pytest.approx(want_loss, rel=1e-5)
