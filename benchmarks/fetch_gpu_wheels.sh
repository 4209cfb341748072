#!/usr/bin/env bash
# Download the pure-Python wheels that benchmarks/gpu.sh installs on a GPU machine without network, into
# .whl/ (git-ignored; carry it to that machine: the device tool's `carry: [".whl"]`). Versions are those of
# this checkout's venv when it has them, so the GPU run tests what passed here. Only what that machine
# lacks (its image has NumPy, CuPy for CUDA 13, PyTorch, pytest, hypothesis, threadpoolctl and tqdm).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
pins=()
for dist in array-api-compat array-api-strict threadpoolctl; do
    version="$("$PY" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)"
    pins+=("$dist${version:+==$version}")
done
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --dest .whl "${pins[@]}"
ls -l .whl
