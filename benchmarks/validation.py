"""How long validating a study takes, in a fresh process as a user runs it.

Prints the median wall time of (1) `pitfalls run BAD.yaml` until it exits with its error (a
study with an unknown norm, a backbone's stage count exceeded and a sequence longer than the
videos: every kind of check runs), and (2) validating each shipped study the way `pitfalls run`
starts (`load_study`, the data read where it is on this machine), each in a new interpreter:
imports included, as a user waits for them. Also says whether torch or timm was imported.

    uv run python benchmarks/validation.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BAD = {
    "name": "bad", "dataset": {"name": "synthetic", "options": {"num_videos": 6, "val_videos": 2}},
    "model": {"backbone": "test_resnet"}, "seeds": [0],
    "search_space": {"factors": {"norm": ["batch", "bogus"], "frozen_stages": [9],
                                 "seq_len": [500], "videos_per_batch": [2]}},
}
REPORT = "; print(sorted(m for m in ('torch', 'timm') if m in sys.modules), file=sys.stderr)"


def _seconds(code: str, *args: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    return time.perf_counter() - t0, proc.stderr.strip().splitlines()[-1], proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text(yaml.safe_dump(BAD))
        run = ("import sys; from pitfalls.cli import main; rc = main(['run', sys.argv[1], "
               f"'--storage', sys.argv[2]]){REPORT}; sys.exit(rc)")
        times, imported = [], ""
        for _ in range(args.repeat):
            s, imported, rc = _seconds(run, str(bad), str(Path(tmp) / "runs"))
            assert rc == 2, "the bad study must be refused with exit code 2"
            times.append(s)
        print(f"# study validation, fresh process each time; {platform.processor() or platform.machine()}, "
              f"Python {platform.python_version()}, median of {args.repeat}")
        print(f"pitfalls run BAD.yaml (3 problems, exit 2): {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}); torch/timm imported: {imported}")
        studies = sorted((ROOT / "studies").rglob("*.yaml"))
        check = ("import sys; from pitfalls.config import load_study; "
                 "load_study(sys.argv[1], check_data='paper' not in sys.argv[1], "
                 "check_weights='paper' not in sys.argv[1])" + REPORT)
        worst = (0.0, "")
        for study in studies:
            s = statistics.median(_seconds(check, str(study))[0] for _ in range(max(1, args.repeat // 2)))
            worst = max(worst, (s, study.relative_to(ROOT).as_posix()))
        print(f"load_study of each of the {len(studies)} shipped studies: at most {worst[0]:.2f} s "
              f"({worst[1]}); torch/timm imported: {_seconds(check, str(studies[0]))[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
