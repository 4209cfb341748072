#!/usr/bin/env bash
# The GPU check of issue 5, in one go (every stage under `timeout`: 7 min 50 s at most). On a machine
# with a CUDA device and no network:
#   1. install the pure-Python wheels carried in .whl/ (array-api-compat, -extra, -strict, threadpoolctl)
#      into /tmp/site;
#   2. run the test suite with the cupy backend (tests/conftest.py adds cupy wherever a CUDA device is
#      usable): first the cupy-parametrised tests, then the rest in the time left (oracle tests skip
#      without TensorFlow);
#   3. benchmark arraycnn (CuPy) against PyTorch CUDA (cuDNN) at batch 64/256/1024 and a Fashion-MNIST
#      epoch, and print ONE Markdown table (saved to $OUT/gpu-table.md when $OUT is set).
#
# Usage (from anywhere):  benchmarks/gpu.sh [--dry-run] [FASHION_MNIST_IDX_DIR]
#   FASHION_MNIST_IDX_DIR defaults to /usr/share/datasets/fashion-mnist; without its IDX files the epoch
#   runs on synthetic data of the same shape (the table says so).
#   --dry-run checks the script on a machine without a GPU: no CUDA check, pytest only collects, and the
#   benchmark runs its CPU stand-in (python -m benchmarks.gpu --dry-run).
# Environment: PYTHON (default python3), GPU_PYTEST_ARGS (extra pytest arguments).
# Exit status: 0 when every stage passed, else the first failing stage's status.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY_RUN=()
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=(--dry-run); shift; fi
DATA_DIR="${1:-/usr/share/datasets/fashion-mnist}"
SITE=/tmp/site
OUT_DIR="${OUT:-/tmp/arraycnn-gpu}"
mkdir -p "$OUT_DIR"
status=0
tests=()

fail() { [ "$status" -ne 0 ] || status="$1"; }

summary() {  # the last line of a pytest log, e.g. "120 passed, 8 skipped in 41.2s", or why there is none
    local rc="$1" log="$2"
    case "$rc" in
        0) tail -n 1 "$log" ;;
        5) echo "no tests selected" ;;
        124) echo "did not finish within the stage's time limit" ;;
        *) echo "FAILED (exit $rc): $(tail -n 1 "$log")" ;;
    esac
}

echo "== 1/3 wheels from .whl/ into $SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
    timeout 40 "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" .whl/*.whl || fail 10
else
    echo "no .whl/*.whl here: relying on what is installed"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ${#DRY_RUN[@]} -gt 0 ]; then
    echo "dry run: no CUDA check"
else
    timeout 40 "$PYTHON" -c "
import cupy, array_api_compat, arraycnn
from arraycnn.backend import cuda_available
print('cupy', cupy.__version__, '| devices', cupy.cuda.runtime.getDeviceCount(), '| arraycnn', arraycnn.__version__)
raise SystemExit(0 if cuda_available() else 'arraycnn.backend.cuda_available() is False')
" || { echo "no usable CuPy/CUDA device or arraycnn import failed: stopping"; exit 11; }
fi
pytest_mode=()
[ ${#DRY_RUN[@]} -eq 0 ] || pytest_mode=(--collect-only)

echo "== 2/3 tests with the cupy backend"
# shellcheck disable=SC2086  # GPU_PYTEST_ARGS is a list of words on purpose
timeout 170 "$PYTHON" -m pytest -q -x -p no:cacheprovider "${pytest_mode[@]}" -k cupy ${GPU_PYTEST_ARGS:-} tests 2>&1 \
    | tee "$OUT_DIR/pytest-cupy.log"
rc=${PIPESTATUS[0]}
tests+=("cupy-parametrised tests: $(summary "$rc" "$OUT_DIR/pytest-cupy.log")")
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || fail "$rc"
# shellcheck disable=SC2086
timeout 80 "$PYTHON" -m pytest -q -x -p no:cacheprovider "${pytest_mode[@]}" -k "not cupy" ${GPU_PYTEST_ARGS:-} tests 2>&1 \
    | tail -n 5 > "$OUT_DIR/pytest-rest.log"
rc=${PIPESTATUS[0]}
tests+=("the other tests: $(summary "$rc" "$OUT_DIR/pytest-rest.log")")
[ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || fail "$rc"

echo "== 3/3 benchmark: arraycnn (CuPy) vs PyTorch CUDA"
data_args=()
[ -d "$DATA_DIR" ] && data_args=(--data-dir "$DATA_DIR")
test_args=()
for line in "${tests[@]}"; do test_args+=(--tests "$line"); done
timeout 140 "$PYTHON" -m benchmarks.gpu "${DRY_RUN[@]}" "${data_args[@]}" "${test_args[@]}" --out "$OUT_DIR/gpu-table.md" \
    || { rc=$?; echo "benchmark: exit $rc"; fail "$rc"; printf '%s\n' "${tests[@]}"; }
echo "== done (status $status); table: $OUT_DIR/gpu-table.md"
exit "$status"
