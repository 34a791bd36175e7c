"""The Cholec80 evaluation protocols against the original MATLAB scripts, and `pitfalls evaluate`.

The expected values were produced once by running the M2CAI16/Cholec80 scripts (Main.m's
aggregation, Evaluate.m, ReadPhaseLabel.m) under GNU Octave 7.3 with the `image` package and a
two-line nanmean/nanstd shim, on exactly the files `_write` makes from `fixture_sets()`; they are
recorded here (percent, 8 decimals). The scripts themselves are not part of this repository.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pitfalls.cli import main
from pitfalls.data.cholec80 import PHASES
from pitfalls.scoring.protocols import evaluate_videos, pooled, relaxed_diff, score_video


def _runs(*pairs):
    return np.concatenate([np.full(n, p) for p, n in pairs]).astype(int)


def _noisy(gt, rng, shift=3, flip=0.05, k=7):
    pred = gt.copy()
    for e in np.flatnonzero(np.diff(gt)) + 1:  # late and early transitions at each boundary
        s = int(rng.integers(-shift, shift + 1))
        if s > 0:
            pred[e:e + s] = gt[e - 1]
        elif s < 0:
            pred[e + s:e] = gt[e]
    m = rng.random(len(gt)) < flip
    pred[m] = rng.integers(0, k, m.sum())
    return pred


def fixture_sets() -> dict[str, tuple[float, list[tuple[np.ndarray, np.ndarray]]]]:
    """name -> (rows per second, [(truth, prediction)]), 0-based Cholec80 phases."""
    rng = np.random.default_rng(7)
    out = {}
    vids = []
    for _ in range(4):
        gt = _runs(*[(p, int(rng.integers(15, 60))) for p in range(7)])
        vids.append((gt, _noisy(gt, rng, shift=12, flip=0.08)))
    out["full"] = (1.0, vids)
    # short phases (shorter than the boundary), a phase absent from a video, predictions of a
    # phase the video lacks, the 4/5 and 6/7 jumps
    g1 = _runs((0, 30), (1, 4), (2, 25), (3, 40), (4, 3), (5, 20), (6, 12))
    p1 = g1.copy()
    p1[28:34], p1[59:64], p1[100:103], p1[95:99], p1[110:114] = 1, 4, 6, 5, 3
    g2 = _runs((0, 20), (1, 35), (3, 30), (4, 25), (6, 15), (5, 10))
    p2 = g2.copy()
    p2[10:15], p2[55:60], p2[86:92], p2[90:95], p2[108:112] = 2, 4, 5, 6, 4
    g3 = _runs((0, 9), (1, 50), (2, 8), (3, 60), (4, 5), (6, 30))
    p3 = _noisy(g3, rng, shift=6, flip=0.1)
    p3[p3 == 5] = 6
    out["edge"] = (1.0, [(g1, p1), (g2, p2), (g3, p3)])
    # a phase absent from every video and one never predicted
    vids = []
    for _ in range(3):
        gt = _runs(*[(p, int(rng.integers(8, 30))) for p in range(6)])
        pred = _noisy(gt, rng, shift=5, flip=0.1, k=7)
        pred[pred == 2] = 1
        vids.append((gt, pred))
    out["absent"] = (1.0, vids)
    vids = []
    for _ in range(3):
        gt = _runs(*[(p, int(rng.integers(6, 40))) for p in range(7)])
        vids.append((gt, _noisy(gt, rng, shift=8, flip=0.05)))
    out["half"], out["fast"] = (0.5, vids), (2.5, vids)
    gt = _runs((0, 12), (1, 30), (2, 9), (3, 40), (4, 11), (5, 7), (6, 14))
    out["single"] = (1.0, [(gt, np.full(len(gt), 3))])
    vids = []
    for _ in range(3):
        gt = _runs(*[(p, int(rng.integers(20, 50))) for p in range(7)])
        vids.append((gt, rng.integers(0, 7, len(gt))))
    out["random"] = (1.0, vids)
    out["full_noheader"], out["edge_noheader"] = out["full"], out["edge"]
    return out


# Octave's Main.m results: [mean, std] of accuracy, Jaccard, precision, recall; per phase means
# (None: NaN).
OCTAVE = json.loads("""
{"full": {"acc": [87.42614647, 2.25219153], "jaccard": [79.15258963, 6.15374401], "precision": [90.85515335, 3.93971777], "recall": [90.62263213, 4.01867002], "per_phase_jaccard": [87.44013062, 76.79771074, 70.93670448, 73.64841726, 79.53279919, 79.1407984, 86.57156673], "per_phase_precision": [95.31492948, 86.72771673, 89.52850877, 85.12760039, 93.14058957, 91.26036484, 94.88636364], "per_phase_recall": [92.92105263, 89.81812761, 82.64957265, 90.90909091, 89.65212264, 93.60465116, 94.8038073]},
 "edge": {"acc": [88.94539647, 2.76642684], "jaccard": [76.00645386, 14.16548119], "precision": [89.47654734, 8.69575038], "recall": [93.33333333, 6.52779748], "per_phase_jaccard": [79.18803419, 85.25252525, 80.0, 83.99470899, 46.06481481, 71.13095238, 86.41414141], "per_phase_precision": [91.66666667, 88.88888889, 100.0, 98.0952381, 76.08695652, 80.45112782, 91.14695341], "per_phase_recall": [89.44444444, 99.33333333, 100.0, 88.05555556, 84.0, 92.5, 100.0]},
 "absent": {"acc": [84.29954157, 4.29975642], "jaccard": [null, null], "precision": [91.87333425, 6.87629238], "recall": [null, null], "per_phase_jaccard": [96.875, 74.01515152, 59.19117647, 69.33545986, 79.08232119, 78.56481481, null], "per_phase_precision": [98.88888889, 82.15811966, 100.0, 86.77419355, 92.30769231, 91.11111111, null], "per_phase_recall": [100.0, 100.0, 59.19117647, 83.07692308, 87.5, 90.42735043, null]},
 "half": {"acc": [83.17932146, 3.87502299], "jaccard": [69.01440837, 9.39734384], "precision": [84.07317471, 9.66943069], "recall": [82.68548663, 7.41492734], "per_phase_jaccard": [84.5631529, 65.07177033, 64.92857143, 74.43609023, 57.40685046, 61.60784314, 75.08658009], "per_phase_precision": [96.74603175, 87.55334282, 84.38228438, 92.15686275, 72.32142857, 70.50378788, 84.84848485], "per_phase_recall": [87.17948718, 76.26262626, 83.33333333, 82.15686275, 70.59259259, 86.11111111, 93.16239316]},
 "fast": {"acc": [93.0031958, 3.84477044], "jaccard": [89.0166278, 3.9401782], "precision": [95.86418563, 4.50319192], "recall": [96.61680912, 4.16849255], "per_phase_jaccard": [85.72412156, 87.75917065, 89.5952381, 92.77360067, 82.45614035, 92.78431373, 92.02380952], "per_phase_precision": [97.5, 91.91559981, 94.87179487, 100.0, 88.0952381, 98.66666667, 100.0], "per_phase_recall": [89.31623932, 93.51851852, 98.61111111, 100.0, 100.0, 100.0, 94.87179487]},
 "single": {"acc": [53.65853659, 0.0], "jaccard": [49.22394678, 48.61879403], "precision": [88.41463415, 23.17073171], "recall": [55.84415584, 52.33621215], "per_phase_jaccard": [0.0, 0.0, 100.0, 53.65853659, 90.90909091, 100.0, 0.0], "per_phase_precision": [null, null, 100.0, 53.65853659, 100.0, 100.0, null], "per_phase_recall": [0.0, 0.0, 100.0, 100.0, 90.90909091, 100.0, 0.0]},
 "random": {"acc": [22.26834577, 3.66159251], "jaccard": [16.5757465, 1.56800945], "precision": [31.28418504, 2.97924579], "recall": [31.98499423, 4.66959913], "per_phase_jaccard": [13.52311026, 16.58410733, 15.59329559, 17.95046625, 17.25681566, 17.85451317, 17.26791727], "per_phase_precision": [28.56125356, 30.9470846, 28.0613149, 36.64215686, 33.30725462, 31.71921922, 29.75101152], "per_phase_recall": [23.57346357, 30.03093298, 33.5188216, 31.35385207, 32.04508857, 34.5302795, 38.84252132]},
 "full_noheader": {"acc": [87.37834083, 2.2626207], "jaccard": [79.11433372, 6.09418023], "precision": [90.83868757, 3.91815374], "recall": [90.60094405, 4.00458345], "per_phase_jaccard": [87.17233926, 76.79771074, 70.93670448, 73.64841726, 79.53279919, 79.1407984, 86.57156673], "per_phase_precision": [95.19966906, 86.72771673, 89.52850877, 85.12760039, 93.14058957, 91.26036484, 94.88636364], "per_phase_recall": [92.76923607, 89.81812761, 82.64957265, 90.90909091, 89.65212264, 93.60465116, 94.8038073]},
 "edge_noheader": {"acc": [88.86630919, 2.79172717], "jaccard": [75.81075019, 14.12360131], "precision": [89.36832223, 8.66862174], "recall": [93.25972978, 6.58163706], "per_phase_jaccard": [77.81810849, 85.25252525, 80.0, 83.99470899, 46.06481481, 71.13095238, 86.41414141], "per_phase_precision": [90.90909091, 88.88888889, 100.0, 98.0952381, 76.08695652, 80.45112782, 91.14695341], "per_phase_recall": [88.9292196, 99.33333333, 100.0, 88.05555556, 84.0, 92.5, 100.0]}}
""")
TOLERANCE = 1e-6  # percentage points (the issue asks for 0.01; the values carry 8 decimals)


def _write(root, name, fps, videos):
    """Cholec80-format files (header, 25-fps frame indices, names), or the 1-fps numeric exports
    other repositories publish (no header) for the `_noheader` sets."""
    step = int(round(25 / fps))
    for kind in ("gt", "pred"):
        (root / kind).mkdir(parents=True)
    for i, (g, p) in enumerate(videos):
        for kind, labels in (("gt", g), ("pred", p)):
            if name.endswith("_noheader"):
                text = "".join(f"{k * step}\t{x}\n" for k, x in enumerate(labels))
            else:
                text = "Frame\tPhase\n" + "".join(f"{k * step}\t{PHASES[x]}\n" for k, x in enumerate(labels))
            (root / kind / f"video{i + 1:02d}-phase.txt").write_text(text)


def _evaluate(capsys, *args) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    rc = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 and "--json" in args else None), out.err


def _close(got, want):
    if want is None:
        return got is None
    return got is not None and abs(got - want) <= TOLERANCE


@pytest.mark.parametrize("name", list(OCTAVE))
def test_matlab_protocol_equals_the_octave_run_of_the_scripts(name, tmp_path, capsys):
    fps, videos = fixture_sets()[name]
    _write(tmp_path, name, fps, videos)
    rc, got, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--json")
    assert rc == 0, err
    assert got["fps"] == fps  # from the frame indices: rows every 25/fps 25-fps frames
    want, relaxed = OCTAVE[name], got["relaxed"]
    for ours, theirs in (("accuracy", "acc"), ("jaccard", "jaccard"), ("precision", "precision"),
                         ("recall", "recall")):
        assert _close(relaxed[ours]["mean"], want[theirs][0]), (ours, relaxed[ours], want[theirs])
        assert _close(relaxed[ours]["std"], want[theirs][1]), (ours, relaxed[ours], want[theirs])
    for score in ("jaccard", "precision", "recall"):
        ours = [relaxed["per_phase"][p][score]["mean"] for p in PHASES]
        assert all(_close(a, b) for a, b in zip(ours, want[f"per_phase_{score}"])), (score, ours)


def test_the_scripts_quirks_and_their_corrections():
    # phase 0 for 20 frames, then phase 1; predicted 1 from frame 15 (an early transition of 5
    # frames, within the 10-frame boundary) and 0 again for frame 1 (not a transition)
    gt = np.array([0] * 20 + [1] * 20)
    pred = gt.copy()
    pred[15:20] = 1
    pred[2] = 1
    # matlab: the allowance for the last 10 frames is applied to the first 10 through the mask
    # of the last 10: frames 5..9 are "forgiven" (they were right anyway) and 15..19 are not
    diff = relaxed_diff(gt, pred, 2, 10, "matlab")
    assert np.count_nonzero(diff) == 6 and diff[2] == 1 and all(diff[15:20] == 1)
    fixed = relaxed_diff(gt, pred, 2, 10, "corrected")
    assert np.count_nonzero(fixed) == 1 and fixed[2] == 1
    m, c = score_video(gt, pred, 2, 10, "matlab"), score_video(gt, pred, 2, 10, "corrected")
    assert m.accuracy == pytest.approx(100 * 34 / 40) and c.accuracy == pytest.approx(100 * 39 / 40)
    # matlab's phase-1 "true positives" include the relaxed frames of phase 0 predicted as 1:
    # precision and recall above 100 before clipping; corrected counts what each one means
    late = np.array([0] * 10 + [1] * 10)
    p2 = late.copy()
    p2[10:14] = 0  # a late transition: 4 frames of phase 1 still predicted as 0
    m2, c2 = score_video(late, p2, 2, 10, "matlab"), score_video(late, p2, 2, 10, "corrected")
    assert m2.recall[0] == pytest.approx(140.0) and m2.precision[1] == pytest.approx(1000 / 6)
    assert c2.recall[0] == pytest.approx(100.0) and c2.precision[1] == pytest.approx(100.0)
    assert m2.jaccard[1] == c2.jaccard[1] == pytest.approx(100.0)
    # a phase never predicted: matlab gives NaN (0/0) or 100 (tp/0 clipped), corrected 0
    never = np.array([0] * 10 + [1] * 3 + [2] * 10)
    guess = np.array([0] * 10 + [0] * 3 + [2] * 10)
    assert math.isinf(score_video(never, guess, 3, 10, "matlab").precision[1])
    assert score_video(never, guess, 3, 10, "corrected").precision[1] == 0.0
    # matlab averages Jaccard and recall over phases with `mean`: NaN when a phase is absent
    # from every video; corrected ignores it
    ev_m = evaluate_videos([(gt, pred)], 3, 1.0, "matlab")
    ev_c = evaluate_videos([(gt, pred)], 3, 1.0, "corrected")
    assert math.isnan(ev_m.kinds["relaxed"].summary["jaccard"][0])
    assert not math.isnan(ev_c.kinds["relaxed"].summary["jaccard"][0])
    assert not math.isnan(ev_m.kinds["relaxed"].summary["precision"][0])  # nanmean there


def test_strict_scores_have_no_allowance_and_pooled_scores_pool_frames():
    gt = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 2, 0])
    for protocol in ("matlab", "corrected"):
        s = score_video(gt, pred, 3, 0, protocol)
        assert s.accuracy == pytest.approx(75.0)
        assert s.jaccard[0] == pytest.approx(100 * 2 / 4) and s.recall[2] == pytest.approx(50.0)
    cm = np.array([[2, 1, 0], [0, 3, 0], [1, 0, 1]])  # rows true, columns predicted
    p = pooled(cm)
    precision = [2 / 3, 3 / 4, 1 / 1]
    recall = [2 / 3, 3 / 3, 1 / 2]
    assert p["pooled_accuracy"] == pytest.approx(6 / 8)
    assert p["pooled_precision"] == pytest.approx(np.mean(precision))
    assert p["pooled_recall"] == pytest.approx(np.mean(recall)) == pytest.approx(p["balanced_accuracy"])
    f1 = [2 * a * b / (a + b) for a, b in zip(precision, recall)]
    assert p["pooled_f1"] == pytest.approx(np.mean(f1))
    assert p["pooled_jaccard"] == pytest.approx(np.mean([2 / 4, 3 / 4, 1 / 2]))
    # a phase only ever predicted counts in sklearn's macro (labels in truth or prediction)
    # but not in balanced accuracy (recall over the phases that occur in the truth)
    cm2 = np.array([[1, 1], [0, 0]])
    assert pooled(cm2)["pooled_recall"] == pytest.approx(0.25) and pooled(cm2)["balanced_accuracy"] == 0.5


def test_cholec80_annotations_against_one_fps_predictions(tmp_path, capsys):
    """25-fps ground truth rows with names; 1-fps predictions at frames 0, 25, 50, ...: matched
    by frame index, scored at 1 row per second."""
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    labels25 = np.repeat([0, 1, 2], [300, 260, 240])  # 800 frames at 25 fps
    (tmp_path / "gt" / "video41-phase.txt").write_text(
        "Frame\tPhase\n" + "".join(f"{f}\t{PHASES[x]}\n" for f, x in enumerate(labels25)))
    frames = np.arange(0, 800, 25)
    pred = labels25[frames].copy()
    pred[12] = 1  # frame 300 is phase 1: right; frame 275 predicted 1: an early transition
    pred[11] = 1
    (tmp_path / "pred" / "video41-phase.txt").write_text(
        "".join(f"{f}\t{x}\n" for f, x in zip(frames, pred)))  # numeric, no header
    rc, got, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred",
                             "--protocol", "corrected", "--json")
    assert rc == 0, err
    assert got["fps"] == 1.0 and got["videos"] == 1
    assert got["strict"]["accuracy"]["mean"] == pytest.approx(100 * 31 / 32)
    assert got["relaxed"]["accuracy"]["mean"] == pytest.approx(100.0)
    rc, same, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--json")
    assert rc == 0 and same["strict"]["accuracy"] == got["strict"]["accuracy"] and "skipped" not in err


def _bad_pair(tmp_path, pred_text, gt_rows=6):
    for kind in ("gt", "pred"):
        (tmp_path / kind).mkdir(exist_ok=True)
    (tmp_path / "gt" / "video01-phase.txt").write_text(
        "Frame\tPhase\n" + "".join(f"{25 * k}\t{PHASES[min(k, 6)]}\n" for k in range(gt_rows)))
    (tmp_path / "pred" / "video01-phase.txt").write_text(pred_text)
    return tmp_path / "pred" / "video01-phase.txt"


BAD_PREDICTIONS = {
    "lacks frames at the end": ("Frame\tPhase\n0\t0\n25\t1\n50\t2\n75\t3\n", "lacks frames: it ends at frame 75"),
    "lacks frames inside": ("Frame\tPhase\n0\t0\n25\t1\n50\t2\n100\t3\n125\t4\n", ":5: lacks frames: nothing between frame 50 and 100"),
    "lacks the first frames": ("Frame\tPhase\n50\t2\n75\t3\n100\t4\n125\t5\n", "lacks frames: it starts at frame 50"),
    "an extra frame": ("Frame\tPhase\n0\t0\n25\t1\n50\t2\n75\t3\n100\t4\n125\t5\n150\t6\n", ":8: frame 150 is not in the ground truth"),
    "a frame off the grid": ("Frame\tPhase\n0\t0\n25\t1\n50\t2\n76\t3\n100\t4\n125\t5\n", ":5: frame 76 is not in the ground truth"),
    "out of order": ("Frame\tPhase\n0\t0\n50\t2\n25\t1\n75\t3\n100\t4\n125\t5\n", ":4: frame 25 does not come after frame 50"),
    "a repeated frame": ("Frame\tPhase\n0\t0\n25\t1\n25\t1\n50\t2\n75\t3\n100\t4\n125\t5\n", ":4: frame 25 does not come after frame 25"),
    "an unknown phase name": ("Frame\tPhase\n0\t0\n25\tPreperation\n", ":3: unknown phase 'Preperation'"),
    "an unknown phase number": ("0\t0\n25\t7\n", ":2: unknown phase '7'"),
    "a non-integer frame": ("Frame\tPhase\n0\t0\n25.5\t1\n", ":3: frame '25.5' is not a non-negative integer"),
    "three fields": ("Frame\tPhase\n0\t0\textra\n", ":2: expected two fields"),
    "no rows": ("Frame\tPhase\n", "holds no rows"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_bad_prediction_files_get_one_error_naming_the_file_and_line(case, tmp_path, capsys):
    text, expected = BAD_PREDICTIONS[case]
    path = _bad_pair(tmp_path, text)
    before = sorted(p for p in tmp_path.rglob("*"))
    rc, _, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--json")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err and sorted(tmp_path.rglob("*")) == before  # nothing written


def test_evaluate_refuses_what_it_cannot_score(tmp_path, capsys):
    rc, _, err = _evaluate(capsys, "--gt", tmp_path / "nope", "--pred", tmp_path)
    assert rc == 2 and "--gt" in err and "not a directory" in err
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "video07-phase.txt").write_text("0\t0\n1\t0\n")
    rc, _, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred")
    assert rc == 2 and "no ground truth for video07-phase.txt" in err
    (tmp_path / "gt" / "video07-phase.txt").write_text("0\t0\n1\t0\n2\t0\n")
    (tmp_path / "pred" / "video07-phase.txt").write_text("0\t0\n1\t0\n2\t0\n")
    # consecutive indices with numeric phases: a 1-fps export numbered by second, said so
    rc, got, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--json")
    assert rc == 0 and got["fps"] == 1.0 and "assumed 1 row per second" in err and "pass --fps" in err
    rc, got, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--fps", "1",
                             "--protocol", "corrected", "--json")
    assert rc == 0 and got["relaxed"]["accuracy"]["mean"] == 100.0
    rc, _, err = _evaluate(capsys, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--fps", "0")
    assert rc == 2 and "--fps" in err
