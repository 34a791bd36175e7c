"""Per-frame predictions of a trial's selected checkpoint, written where other tools read them.

    <dir>/<split>/<video>-phase.txt     Cholec80's annotation format (`Frame<TAB>Phase`, the
                                        dataset's frame indices, phase names): phase task
    <dir>/<split>/probabilities.parquet video, frame, truth, prediction, p_<phase> per phase
    <dir>/<split>/scores.json           the split's relaxed and strict scores with their per-phase
                                        table (`pitfalls evaluate --json`'s shape)
    <dir>/<split>/anticipation.parquet  video, frame, and per instrument the predicted and true
                                        minutes until it appears (clipped at the horizon)

`pitfalls evaluate --gt <annotations> --pred <dir>/test` scores the phase files; they are also
the trial's MLflow artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pitfalls.data.base import Video, VideoData
from pitfalls.scoring.phase_files import phase_file_name, write_phase_file
from pitfalls.train.tasks import AnticipationTask, Task


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def write_predictions(directory: Path, split: str, data: VideoData, task: Task,
                      videos: list[Video], outputs: list[np.ndarray]) -> None:
    """The files of one split; `outputs[i]` is the model's (T, outputs) output for `videos[i]`."""
    import torch

    from pitfalls.fileio import atomic_open, atomic_write

    out = Path(directory) / split
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {"video": [], "frame": []}
    for video, output in zip(videos, outputs):
        frames = data.frame_numbers(video)
        columns["video"].append(np.full(len(video), video.id, dtype=object))
        columns["frame"].append(frames)
        if isinstance(task, AnticipationTask):
            from pitfalls.train.anticipation import predicted_minutes

            pred = predicted_minutes(torch.from_numpy(output), task.horizon).numpy()
            true = task._targets(video).minutes
            for j, k in enumerate(task.tool_index):
                name = data.tool_names[k]
                columns.setdefault(f"{name}_minutes", []).append(pred[:, j].astype(np.float32))
                columns.setdefault(f"{name}_true", []).append(true[:, j].astype(np.float32))
        else:
            pred = output.argmax(-1)
            write_phase_file(out / phase_file_name(video.id), frames, pred, data.phase_names)
            prob = _softmax(output.astype(np.float64)).astype(np.float32)
            columns.setdefault("truth", []).append(video.phases)
            columns.setdefault("prediction", []).append(pred)
            for c, name in enumerate(data.phase_names):
                columns.setdefault(f"p_{name}", []).append(prob[:, c])
    if not isinstance(task, AnticipationTask):
        import json

        from pitfalls.scoring.protocols import evaluate_videos

        ev = evaluate_videos([(v.phases, o.argmax(-1)) for v, o in zip(videos, outputs)],
                             len(data.phase_names), data.fps, task.protocol)
        atomic_write(out / "scores.json", json.dumps({"fps": data.fps, **ev.as_json(data.phase_names)}, indent=2))
    table = pa.table({k: np.concatenate(v) for k, v in columns.items()})
    table = table.replace_schema_metadata({"pitfalls.fps": str(data.fps),  # for scoring them again
                                           "pitfalls.protocol": getattr(task, "protocol", "")})
    name = "anticipation.parquet" if isinstance(task, AnticipationTask) else "probabilities.parquet"
    with atomic_open(out / name) as f:
        pq.write_table(table, pa.PythonFile(f, mode="w"))
