"""The driver's per-trial bookkeeping cost as a study grows (target: cost(1000) / cost(10) <= 2).

    uv run python benchmarks/bookkeeping.py            # N = 1, 10, 100, 1000 trials (~20 s on 2 cores)
    uv run python benchmarks/bookkeeping.py --quick    # N = 1, 10, 100

No Ray and no training: a study of N trials is simulated through the real
`pitfalls.sweep.callbacks.ResultsRecorder`, called as Tune calls it (`setup`, then per trial a
start, E epoch reports with the metric dicts a phase trial reports, the last one carrying the
whole history as `tune_metrics` sends it, and a completion), then `compact` as the driver does
when the study ends. Twice: on local storage, and on simulated object storage (a local
directory behind a pyarrow file system that counts the bytes and objects written to it,
presented to the recorder as a bucket through `StudyStorage(uri=...)`).

Printed per N: mean bookkeeping time per trial (every callback and the final compaction, in
this process; the machine is noisy, so all figures come from one run), bytes uploaded per
trial and objects written per trial (deterministic), and the ratios cost(N) / cost(10).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pitfalls.config import parse_study
from pitfalls.config.metrics import AFTER_TRAINING, METRICS
from pitfalls.sweep.callbacks import ResultsRecorder
from pitfalls.sweep.storage import StudyStorage, local_storage

SIZES, QUICK_SIZES = (1, 10, 100, 1000), (1, 10, 100)
EPOCHS = 10
STUDY = {
    "name": "bookkeeping",
    "dataset": {"name": "synthetic", "options": {"num_videos": 6, "val_videos": 2}},
    "task": "phase",
    "model": {"backbone": "test_resnet", "temporal_head": {"type": "lstm", "hidden_size": 16}},
    "budget": {"epochs": EPOCHS, "steps_per_epoch": 3},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "searcher": {"type": "grid"},
    "seeds": [0],
    "metric": {"name": "val_accuracy", "mode": "max"},
    "search_space": {"factors": {"norm": ["batch", "group"], "frozen_stages": [1], "seq_len": [4],
                                 "videos_per_batch": [2]}},
}
EPOCH_METRICS = [n for n, m in METRICS.items()
                 if m.task in ("phase", None) and m.when != AFTER_TRAINING and m.split != "test"]
TEST_METRICS = [n for n, m in METRICS.items() if m.task in ("phase", None) and m.split == "test"]


class CountingHandler(pafs.FileSystemHandler):
    """A file system that forwards to another and counts what is written to it."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs, self.bytes, self.objects = fs, 0, 0

    def __eq__(self, other) -> bool:
        return other is self

    def __ne__(self, other) -> bool:
        return other is not self

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("", missing_dir_ok=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.objects += 1
        return pa.PythonFile(_Counted(self.fs.open_output_stream(path), self), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("object storage has no append")


class _Counted:
    def __init__(self, stream, counter: CountingHandler):
        self.stream, self.counter, self.closed = stream, counter, False

    def write(self, data) -> int:
        self.counter.bytes += len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def tell(self) -> int:
        return self.stream.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True


def fake_bucket(workdir: Path) -> tuple[StudyStorage, CountingHandler]:
    """A study on simulated object storage: its bucket is `workdir/bucket`."""
    (workdir / "bucket" / "study").mkdir(parents=True)
    counter = CountingHandler(pafs.SubTreeFileSystem(str(workdir / "bucket"), pafs.LocalFileSystem()))
    storage = StudyStorage(workdir / "copy", pafs.PyFileSystem(counter), "study",
                           uri="s3://bench/study")
    storage.local.mkdir(parents=True)
    return storage, counter


def epoch_metrics(rng: np.random.Generator, epoch: int) -> dict:
    """One epoch's report as Tune hands it to a callback: the trial's metrics and Tune's keys."""
    return {**{m: float(rng.random()) for m in EPOCH_METRICS}, "epoch": epoch,
            "epoch_s": float(rng.random() * 30), "train_frames_per_s": float(rng.random() * 900),
            "timestamp": 1_790_000_000 + epoch, "time_this_iter_s": 12.5, "done": False,
            "training_iteration": epoch, "date": "2026-12-01_10-00-00", "time_total_s": 12.5 * epoch,
            "pid": 4242, "hostname": "node-1", "node_ip": "10.0.0.1", "time_since_restore": 1.0,
            "iterations_since_restore": epoch, "config": {"norm": "batch", "seed": 0}}


def simulate(recorder: ResultsRecorder, n_trials: int, epochs: int = EPOCHS, seed: int = 0) -> float:
    """Run a study of `n_trials` through the recorder; return the seconds spent in it."""
    rng = np.random.default_rng(seed)
    spent = 0.0

    def call(method, *args) -> None:
        nonlocal spent
        t0 = time.perf_counter()
        method(*args)
        spent += time.perf_counter() - t0

    call(recorder.setup)
    for i in range(n_trials):
        config = {"norm": ("batch", "group")[i % 2], "frozen_stages": 1, "seq_len": 4,
                  "videos_per_batch": 2, "lr": 1e-3, "weight_decay": 1e-4, "seed": i}
        trial = SimpleNamespace(trial_id=f"bk{seed:03d}_{i:05d}", config=config, last_result=None)
        call(recorder.on_trial_start, 0, [], trial)
        history = []
        for epoch in range(1, epochs + 1):
            result = epoch_metrics(rng, epoch)
            history.append({k: v for k, v in result.items() if k in EPOCH_METRICS or k == "epoch"})
            if epoch == epochs:  # the last report: test scores, and the whole history
                result = {**result, **{m: float(rng.random()) for m in TEST_METRICS},
                          "history": list(history)}
            call(recorder.on_trial_result, 0, [], trial, result)
        trial.last_result = result
        call(recorder.on_trial_complete, 0, [], trial)
    call(recorder.compact)  # the driver's, when the study ends
    return spent


@dataclass(frozen=True)
class Cost:
    trials: int
    seconds_per_trial: float
    bytes_per_trial: float  # uploaded to the bucket (0 on local storage)
    objects_per_trial: float


def measure(n_trials: int, remote: bool, epochs: int = EPOCHS) -> Cost:
    """One simulated study in a temporary directory, on local or simulated object storage."""
    spec = parse_study(STUDY, check_data=False)
    with tempfile.TemporaryDirectory(prefix="pitfalls-bookkeeping-") as tmp:
        if remote:
            storage, counter = fake_bucket(Path(tmp))
        else:
            storage, counter = local_storage(Path(tmp) / "study"), None
            storage.local.mkdir(parents=True)
        spent = simulate(ResultsRecorder(spec, storage), n_trials, epochs)
    return Cost(n_trials, spent / n_trials, counter.bytes / n_trials if counter else 0.0,
                counter.objects / n_trials if counter else 0.0)


def _table(costs: list[Cost], remote: bool) -> list[str]:
    base = next((c for c in costs if c.trials == 10), costs[0])
    head = "| N | ms / trial | x N=10 |" + (" KB up / trial | objects / trial | x N=10 |" if remote else "")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for c in costs:
        line = f"| {c.trials} | {c.seconds_per_trial * 1e3:.2f} | {c.seconds_per_trial / base.seconds_per_trial:.2f} |"
        if remote:
            line += (f" {c.bytes_per_trial / 1e3:.1f} | {c.objects_per_trial:.1f} |"
                     f" {c.bytes_per_trial / base.bytes_per_trial:.2f} |")
        lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 100 (~10 s)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per trial (default {EPOCHS})")
    args = ap.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"pyarrow {pa.__version__}; {args.epochs} epoch reports per trial")
    measure(3, remote=True, epochs=args.epochs)  # warm-up: imports, first writes
    verdict = 0
    for remote in (False, True):
        costs = [measure(n, remote, args.epochs) for n in sizes]
        print(f"\n{'simulated object storage' if remote else 'local storage'}:")
        print("\n".join(_table(costs, remote)))
        by_n = {c.trials: c for c in costs}
        if 1000 in by_n:
            ratio = by_n[1000].seconds_per_trial / by_n[10].seconds_per_trial
            ok = ratio <= 2
            verdict |= not ok
            print(f"time cost(1000) / cost(10) = {ratio:.2f} ({'ok' if ok else 'FAILS'}: target <= 2)")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
