"""Phase and anticipation metrics against hand-computed values on small examples."""

import math
import pickle

import numpy as np
import pytest
import torch

from pitfalls.train.anticipation import (
    OUTSIDE,
    anticipation_errors,
    anticipation_loss,
    anticipation_targets,
    merge_errors,
    predicted_minutes,
    split_output,
    summarize_anticipation,
)
from pitfalls.train.metrics import phase_scores, summarize_phase

# ---------------------------------------------------------------------------------------------
# Phase metrics


def test_phase_scores_hand_computed_and_absent_phase_not_counted():
    target = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 1])
    # phase 0: tp 2 (frames 0,1), fp 0, fn 1 (frame 2) -> P 1, R 2/3, F1 0.8, J 2/3
    # phase 1: tp 2 (frames 3,5), fp 1 (frame 2), fn 1 (frame 4) -> P 2/3, R 2/3, F1 2/3, J 2/4
    # phase 2: predicted at frame 4 but absent from the ground truth -> not counted
    # (counting it would add P = 0 and pull macro precision down to 5/9)
    s = phase_scores(pred, target, num_classes=3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert s["jaccard"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_phase_never_predicted_has_zero_precision_and_f1():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0])
    # phase 0: tp 2, fp 2, fn 0 -> P 1/2, R 1, F1 2/3, J 1/2
    # phase 1: tp 0, fp 0, fn 2 -> P 0 (never predicted), R 0, F1 0, J 0
    s = phase_scores(pred, target, num_classes=2)
    assert s == pytest.approx(
        {"accuracy": 0.5, "precision": 0.25, "recall": 0.5, "f1": 1 / 3, "jaccard": 0.25})


def test_phase_scores_are_plain_picklable_floats():
    s = phase_scores(np.array([1, 1]), np.array([1, 0]), num_classes=2)
    assert all(type(v) is float for v in s.values())
    assert pickle.loads(pickle.dumps(s)) == s


def test_phase_scores_reject_out_of_range_labels():
    with pytest.raises(ValueError):
        phase_scores(np.array([0, 3]), np.array([0, 1]), num_classes=3)


def test_summarize_phase_means_over_videos_and_sample_std():
    per_video = [
        {"accuracy": 0.5, "precision": 0.2, "recall": 0.4, "f1": 0.3, "jaccard": 0.1},
        {"accuracy": 1.0, "precision": 0.4, "recall": 0.6, "f1": 0.5, "jaccard": 0.3},
        {"accuracy": 0.75, "precision": 0.6, "recall": 0.8, "f1": 0.7, "jaccard": 0.5},
    ]
    s = summarize_phase(per_video, prefix="test_")
    # accuracy deviations from 0.75: -0.25, 0.25, 0 -> sample var 0.125/2 -> std 0.25
    assert s == pytest.approx({"test_accuracy": 0.75, "test_accuracy_std": 0.25,
                               "test_precision": 0.4, "test_recall": 0.6, "test_f1": 0.5,
                               "test_jaccard": 0.3})
    assert summarize_phase(per_video[:1])["val_accuracy_std"] == 0.0


def test_targets_hand_computed_with_exact_minutes():
    # fps = 1/15: one frame every 15 s = 0.25 min; horizon 0.75 min = 3 frames
    tools = np.array([
        # A  B  C  D
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 1, 0],
    ])
    t = anticipation_targets(tools, horizon=0.75, fps=1 / 15)
    # A: frames until next [4,3,2,1,0,never] -> minutes [1, .75, .5, .25, 0, inf]
    # B: present at 0,1 then never again     -> [0, 0, inf, inf, inf, inf]
    # C: present at the last frame           -> [1.25, 1, .75, .5, .25, 0]  (.75 = h is outside)
    # D: never present                       -> inf everywhere
    h = 0.75
    expected_minutes = np.array([
        [h, 0, h, h],
        [h, 0, h, h],
        [0.5, h, h, h],
        [0.25, h, 0.5, h],
        [0, h, 0.25, h],
        [h, h, 0, h],
    ])
    expected_classes = np.array([
        [1, 0, 1, 1],
        [1, 0, 1, 1],
        [2, 1, 1, 1],
        [2, 1, 2, 1],
        [0, 1, 2, 1],
        [1, 1, 0, 1],
    ])
    np.testing.assert_array_equal(t.minutes, expected_minutes)
    np.testing.assert_array_equal(t.regression, (expected_minutes / h).astype(np.float32))
    np.testing.assert_array_equal(t.classes, expected_classes)
    assert t.minutes.dtype == np.float32 and t.regression.dtype == np.float32
    assert t.classes.dtype == np.int64


def test_targets_at_one_fps_and_two_fps():
    tools = np.array([[0], [0], [0], [1]])
    # fps 1, horizon 2 s = 2/60 min: frames until [3,2,1,0] -> seconds [3,2,1,0] -> clip at 2 s
    t1 = anticipation_targets(tools, horizon=2 / 60, fps=1.0)
    np.testing.assert_allclose(t1.minutes[:, 0], np.array([2, 2, 1, 0]) / 60, rtol=1e-6)
    np.testing.assert_array_equal(t1.classes[:, 0], [1, 1, 2, 0])
    # fps 2, horizon 1 s: the same frames are [1.5, 1, 0.5, 0] s -> clip at 1 s
    t2 = anticipation_targets(tools, horizon=1 / 60, fps=2.0)
    np.testing.assert_allclose(t2.minutes[:, 0], np.array([1, 1, 0.5, 0]) / 60, rtol=1e-6)
    np.testing.assert_allclose(t2.regression[:, 0], [1, 1, 0.5, 0], rtol=1e-6)
    np.testing.assert_array_equal(t2.classes[:, 0], [1, 1, 2, 0])


def _reference_minutes(tools: np.ndarray, horizon: float, fps: float) -> np.ndarray:
    """Plain double loop: the definition, for checking the vectorized version."""
    T, K = tools.shape
    out = np.full((T, K), horizon)
    for k in range(K):
        for t in range(T):
            nxt = next((s for s in range(t, T) if tools[s, k]), None)
            if nxt is not None:
                out[t, k] = min((nxt - t) / fps / 60, horizon)
    return out


def test_targets_match_a_naive_loop_on_random_presence():
    rng = np.random.default_rng(0)
    tools = (rng.random((400, 5)) < [0.002, 0.01, 0.05, 0.3, 0.0]).astype(np.uint8)
    t = anticipation_targets(tools, horizon=3.0, fps=1.0)
    ref = _reference_minutes(tools, 3.0, 1.0)
    np.testing.assert_allclose(t.minutes, ref, rtol=1e-6)
    np.testing.assert_array_equal(t.classes == 0, tools == 1)
    np.testing.assert_array_equal(t.classes == OUTSIDE, ref >= 3.0)
    assert (t.regression >= 0).all() and (t.regression <= 1).all()


# ---------------------------------------------------------------------------------------------
# Anticipation metrics

H = 1.0
# video A, two instruments, horizon 1 min (e range: 0 < y < 0.1)
Y_A = np.array([[0, 1], [0.0625, 1], [0.5, 1], [1, 0], [1, 0], [0.03125, 0]])
P_A = np.array([[0.25, 0.5], [0.125, 1], [0.25, 1], [0.75, 0], [1.5, 0], [-0.5, 0]])
# instrument 0 (predictions clipped to [0, 1]):
#   frame 0: y 0 (present, in no range)       err .25
#   frame 1: y .0625 (in, e)                  err .0625
#   frame 2: y .5 (in)                        err .25
#   frame 3: y 1 (out)                        err .25
#   frame 4: y 1 (out), pred 1.5 -> 1         err 0
#   frame 5: y .03125 (in, e), pred -.5 -> 0  err .03125
#   in: sum .34375 / 3, out: .25 / 2 = .125, e: .09375 / 2 = .046875
# instrument 1: out frames 0,1,2 with errs .5, 0, 0 -> 1/6; no in or e frames -> skipped there
IN0, OUT0, E0, OUT1 = 0.34375 / 3, 0.125, 0.046875, 1 / 6


def test_anticipation_errors_hand_computed():
    e = anticipation_errors(P_A, Y_A, H)
    assert e["in_count"] == [3, 0] and e["out_count"] == [2, 3] and e["e_count"] == [2, 0]
    assert e["in_sum"] == pytest.approx([0.34375, 0])
    assert e["out_sum"] == pytest.approx([0.25, 0.5])
    assert e["e_sum"] == pytest.approx([0.09375, 0])
    s = summarize_anticipation(e)
    # instrument 1 has no in-horizon frames: it is left out of inMAE, eMAE and wMAE
    assert s == pytest.approx({"val_inMAE": IN0, "val_outMAE": (OUT0 + OUT1) / 2,
                               "val_eMAE": E0, "val_wMAE": (IN0 + OUT0) / 2})


# video B: instrument 0 y [.5, .25] pred [1, .25] -> in errs .5, 0
#          instrument 1 y [.5, 0]  pred [.25, 0] -> in err .25 (frame 1 present)
Y_B = np.array([[0.5, 0.5], [0.25, 0]])
P_B = np.array([[1.0, 0.25], [0.25, 0]])


def test_errors_pool_frames_over_videos():
    s = summarize_anticipation(merge_errors([anticipation_errors(P_A, Y_A, H),
                                             anticipation_errors(P_B, Y_B, H)]), prefix="")
    in0 = (0.34375 + 0.5) / 5  # pooled frames: not the mean of the two videos' MAEs
    in1 = 0.25
    assert s["inMAE"] == pytest.approx((in0 + in1) / 2)
    assert s["outMAE"] == pytest.approx((OUT0 + OUT1) / 2)  # video B has no out frames
    assert s["eMAE"] == pytest.approx(E0)
    assert s["wMAE"] == pytest.approx(((in0 + OUT0) / 2 + (in1 + OUT1) / 2) / 2)


def test_merge_errors_is_additive_and_picklable():
    parts = [anticipation_errors(P_A, Y_A, H), anticipation_errors(P_B, Y_B, H)]
    whole = anticipation_errors(np.concatenate([P_A, P_B]), np.concatenate([Y_A, Y_B]), H)
    merged = merge_errors(parts)
    assert merged.keys() == whole.keys()
    for key in whole:
        assert merged[key] == pytest.approx(whole[key])
    assert all(type(v) is int for v in merged["in_count"])
    assert all(type(v) is float for v in merged["in_sum"])
    assert pickle.loads(pickle.dumps(merged)) == merged
    # merging rank-level merges gives the same as merging all videos at once
    assert merge_errors([merged, parts[0]])["in_sum"] == pytest.approx(
        merge_errors([*parts, parts[0]])["in_sum"])


def test_no_frames_in_range_gives_nan():
    present = np.zeros((4, 2))  # everything present all the time: no in, out or e frames
    s = summarize_anticipation(anticipation_errors(present + 0.3, present, H))
    assert all(math.isnan(v) for v in s.values())


def test_float32_targets_at_the_horizon_count_as_outside():
    # horizon 0.7 min = 42 frames at 1 fps; float32(0.7) < 0.7, so a plain y == h (or y >= h)
    # test would miss the clipped frames. Frames 0, 1 are 43 and 42 frames away: outside.
    tools = np.zeros((44, 1))
    tools[-1] = 1
    t = anticipation_targets(tools, horizon=0.7, fps=1.0)
    assert (t.classes[:2] == OUTSIDE).all() and (t.classes[2:-1] == 2).all()
    e = anticipation_errors(t.minutes, t.minutes, 0.7)
    assert e["out_count"] == [2] and e["in_count"] == [41] and e["out_sum"] == [0.0]


# ---------------------------------------------------------------------------------------------
# Loss and output layout


def test_split_output_shapes_and_layout():
    K = 3
    out = torch.arange(2 * 5 * 4 * K, dtype=torch.float32).reshape(2, 5, 4 * K)
    reg, logits = split_output(out)
    assert reg.shape == (2, 5, K) and logits.shape == (2, 5, K, 3)
    assert torch.equal(reg, out[..., :K])
    assert torch.equal(logits[0, 0, 1], out[0, 0, K + 3:K + 6])  # instrument-major logits
    with pytest.raises(ValueError):
        split_output(torch.zeros(2, 7))


def test_predicted_minutes_clamps_to_horizon():
    out = torch.cat([torch.tensor([[-0.5, 0.5, 1.5]]), torch.zeros(1, 9)], dim=-1)
    assert torch.allclose(predicted_minutes(out, 3.0), torch.tensor([[0.0, 1.5, 3.0]]))


def _perfect_output(regression: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.one_hot(classes, 3).float() * 40 - 20  # CE ~ 2 exp(-40)
    return torch.cat([regression, logits.flatten(-2)], dim=-1)


def test_anticipation_loss_vanishes_at_perfect_and_falls_toward_it():
    t = anticipation_targets(np.array([[0, 1], [0, 0], [1, 0], [0, 0]]), horizon=0.75, fps=1 / 15)
    regression, classes = torch.from_numpy(t.regression), torch.from_numpy(t.classes)
    perfect = _perfect_output(regression, classes)
    assert anticipation_loss(perfect, regression, classes).item() < 1e-6
    bad = _perfect_output(1 - regression, (classes + 1) % 3)
    losses = [anticipation_loss(a * perfect + (1 - a) * bad, regression, classes).item()
              for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x > y for x, y in zip(losses, losses[1:])), losses


def test_anticipation_loss_gives_gradient_outside_unit_range():
    regression, classes = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.int64)
    out = torch.tensor([[1.5, 0.0, 0.0, 0.0]], requires_grad=True)
    anticipation_loss(out, regression, classes).backward()
    assert out.grad[0, 0] > 0  # an overshoot above 1 is still pushed down
