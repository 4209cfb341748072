#!/usr/bin/env bash
# The GPU check of issue 13 in one call, sized for a short loan with room for a rerun: every stage runs
# under `timeout`, 5 min 50 s at most in all. On a machine with a CUDA device and no network:
#   1. install the pure-Python wheels carried in .whl/ (array-api-compat, array-api-strict) into /tmp/site;
#   2. check that CuPy sees a device;
#   3. the tests parametrised over cupy, WITHOUT -x: a first run must show every failure;
#   4. examples/mnist.py --backend cupy: one epoch with --save, then --resume to a second;
#   5. python -m benchmarks.gpu with an EMPTY CuPy kernel cache (a fresh CUPY_CACHE_DIR): kernel compile time
#      apart from the step times, a NumPy-vs-CuPy parity check (gradients, a few Adam steps, evaluate), array
#      ops per step, CuPy against PyTorch CUDA at batch 64, 256 and 1024 in the same precision (stated), and
#      a Fashion-MNIST epoch; ONE Markdown table, saved to $OUT/gpu-table.md when $OUT is set.
# Nothing runs on the CPU alone: the CPU figures come from benchmarks/cpu.py on a CPU machine.
#
# Usage (from anywhere):  benchmarks/gpu.sh [--dry-run] [FASHION_MNIST_IDX_DIR]
#   FASHION_MNIST_IDX_DIR defaults to /usr/share/datasets/fashion-mnist; without its IDX files the epoch runs
#   on synthetic data of the same shape (the table says so).
#   --dry-run checks the script without a GPU: no CUDA check, pytest only collects, array-api-strict stands
#   in for CuPy (mnist.py, and python -m benchmarks.gpu --dry-run), tiny sizes.
# Environment: PYTHON (default python3), GPU_PRECISION (fp32, the default, or tf32: both engines alike),
#   GPU_TESTS (default: tests), GPU_PYTEST_ARGS (extra pytest arguments).
# Exit status: 0 when every stage passed, else the first failing stage's status.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY_RUN=()
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=(--dry-run); shift; fi
DATA_DIR="${1:-/usr/share/datasets/fashion-mnist}"
SITE=/tmp/site
OUT_DIR="${OUT:-/tmp/arraycnn-gpu}"
WORK="$(mktemp -d)"
mkdir -p "$OUT_DIR"
status=0
stages=()

fail() { [ "$status" -ne 0 ] || status="$1"; }

outcome() {  # one line for the summary: "passed", "no tests selected", a timeout, or the failure
    local rc="$1" detail="$2"
    case "$rc" in
        0) echo "passed${detail:+: $detail}" ;;
        5) echo "no tests selected" ;;
        124) echo "did not finish within the stage's time limit${detail:+ ($detail)}" ;;
        *) echo "FAILED (exit $rc)${detail:+: $detail}" ;;
    esac
}

if [ ${#DRY_RUN[@]} -gt 0 ]; then
    BACKEND=array_api_strict; MNIST_SIZES=(--train-size 128 --test-size 64)
else
    BACKEND=cupy; MNIST_SIZES=(--train-size 2000 --test-size 500)
fi

echo "== 1/5 wheels from .whl/ into $SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
    timeout 20 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl \
        || fail 10
else
    echo "no .whl/*.whl here: relying on what is installed"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR="$WORK/kernels-tests"  # the tests and mnist.py share one cache; the benchmark gets its own

echo "== 2/5 CUDA check"
if [ ${#DRY_RUN[@]} -gt 0 ]; then
    echo "dry run: no CUDA check"
else
    timeout 20 "$PYTHON" -c "
import cupy, array_api_compat, arraycnn
from arraycnn.backend import cuda_available
print('cupy', cupy.__version__, '| devices', cupy.cuda.runtime.getDeviceCount(), '| arraycnn', arraycnn.__version__)
raise SystemExit(0 if cuda_available() else 'arraycnn.backend.cuda_available() is False')
" || { echo "no usable CuPy/CUDA device or arraycnn import failed: stopping"; exit 11; }
fi

echo "== 3/5 the tests parametrised over cupy (no -x: every failure shows)"
pytest_mode=()
if [ ${#DRY_RUN[@]} -gt 0 ]; then
    pytest_mode=(--collect-only)
else  # ~250 tests: 4 workers share the GPU (pytest-xdist), and no single test may eat the stage (pytest-timeout)
    "$PYTHON" -c "import xdist" 2> /dev/null && pytest_mode+=(-n 4)
    "$PYTHON" -c "import pytest_timeout" 2> /dev/null && pytest_mode+=(--timeout=90)
fi
# shellcheck disable=SC2086  # GPU_TESTS and GPU_PYTEST_ARGS are lists of words on purpose
timeout 140 "$PYTHON" -m pytest -q -p no:cacheprovider "${pytest_mode[@]}" -k cupy ${GPU_PYTEST_ARGS:-} \
    ${GPU_TESTS:-tests} 2>&1 | tee "$OUT_DIR/pytest-cupy.log"
rc=${PIPESTATUS[0]}
stages+=("cupy tests: $(outcome "$rc" "$(tail -n 1 "$OUT_DIR/pytest-cupy.log")")")
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || fail "$rc"

echo "== 4/5 examples/mnist.py --backend $BACKEND: --save after epoch 1, --resume to epoch 2"
ckpt="$WORK/mnist-run.npz"
{
    timeout 30 "$PYTHON" examples/mnist.py --backend "$BACKEND" --source bundled "${MNIST_SIZES[@]}" --epochs 1 \
        --batch-size 64 --save "$ckpt" \
    && timeout 30 "$PYTHON" examples/mnist.py --backend "$BACKEND" --resume "$ckpt" --epochs 2 --save "$ckpt"
} > "$OUT_DIR/mnist.log" 2>&1
rc=$?
cat "$OUT_DIR/mnist.log"
if [ "$rc" -eq 0 ] && ! grep -q "epoch 2/2" "$OUT_DIR/mnist.log"; then rc=12; fi  # the resumed run trained epoch 2
stages+=("mnist.py save and resume: $(outcome "$rc" "$(grep "epoch 2/2" "$OUT_DIR/mnist.log" | tail -n 1)")")
[ "$rc" -eq 0 ] || fail "$rc"

echo "== 5/5 benchmark: compile time, parity, ops, arraycnn ($BACKEND) vs PyTorch, precision ${GPU_PRECISION:-fp32}"
data_args=()
[ -d "$DATA_DIR" ] && data_args=(--data-dir "$DATA_DIR")
test_args=()
for line in "${stages[@]}"; do test_args+=(--tests "$line"); done
CUPY_CACHE_DIR="$WORK/kernels-empty" timeout 110 "$PYTHON" -m benchmarks.gpu "${DRY_RUN[@]}" "${data_args[@]}" \
    "${test_args[@]}" --precision "${GPU_PRECISION:-fp32}" --repeats 5 --run-seconds 0.3 \
    --out "$OUT_DIR/gpu-table.md" 2>&1 | tee "$OUT_DIR/gpu-bench.log"
rc=${PIPESTATUS[0]}
stages+=("benchmark: $(outcome "$rc" "")")
[ "$rc" -eq 0 ] || fail "$rc"

rm -rf "$WORK"
echo "== done (status $status); table: $OUT_DIR/gpu-table.md"
printf '  %s\n' "${stages[@]}"
exit "$status"
