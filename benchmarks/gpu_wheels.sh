#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.py needs on a lent GPU machine that has torch, timm, numpy,
# pyarrow, PyYAML and Pillow but not these: pytest (and pytest-timeout, which pyproject.toml's
# `timeout` asks for) for the CUDA tests, pydantic for their study files; with the dependencies
# of each. CPython 3.12, manylinux x86_64, the versions of uv.lock, into .whl/ in the repository
# root, which git ignores (.git/info/exclude) and the device tool carries (`carry: [".whl"]`;
# docs/benchmarks.md, "The GPU suite").
#
#     benchmarks/gpu_wheels.sh        # needs python3 with pip (3.11+: uv.lock is read with tomllib)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(pytest pluggy iniconfig packaging pygments pytest-timeout
          pydantic pydantic-core annotated-types typing-extensions typing-inspection)

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

# NAME==VERSION of each, as uv.lock pins it
mapfile -t pins < <(python3 - "${PACKAGES[@]}" <<'EOF'
import sys, tomllib
locked = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
missing = [n for n in sys.argv[1:] if n not in locked]
if missing:
    sys.exit(f"not in uv.lock: {', '.join(missing)}")
print("\n".join(f"{n}=={locked[n]}" for n in sys.argv[1:]))
EOF
)

mkdir -p .whl
rm -f .whl/*.whl  # one version of each: two stop the install on the device
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
ls -l .whl
du -sh .whl
