#!/usr/bin/env bash
# The prepared accelerator benchmark (docs/BENCHMARKS.md, "Accelerator"); see experiments/accelerator_bench.py.
#
#   bash experiments/accelerator_bench.sh prepare         # on the development machine, once
#   bash experiments/accelerator_bench.sh run OUT_DIR     # on the GPU/TPU machine (no network there)
#   ACCEL_BENCH_SMOKE=1 bash experiments/accelerator_bench.sh run OUT_DIR   # tiny sizes on CPU
#
# `prepare` fills the git-ignored .accel/ (it travels with the working tree): wheels of what the
# accelerator image lacks (ml_collections, pure Python) and a copy of the PyTorch reference.
# `run` installs those wheels into a temporary site dir only if the package is missing there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  prepare)
    mkdir -p .accel/whl
    src=${TORCH_REFERENCE_SRC:-../shared/bench/torch_reference.py}
    cp "$src" .accel/torch_reference.py || exit 1
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .accel/whl ml_collections || exit 1
    ls -l .accel .accel/whl
    ;;
  run)
    out=${2:?usage: accelerator_bench.sh run OUT_DIR}
    if ! "$PY" -c "import ml_collections" 2>/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --target /tmp/accel_site .accel/whl/*.whl || exit 1
      export PYTHONPATH=/tmp/accel_site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    ref=.accel/torch_reference.py
    [ -f "$ref" ] || ref=../shared/bench/torch_reference.py
    if [ "${ACCEL_BENCH_SMOKE:-0}" = 1 ]; then
      exec "$PY" experiments/accelerator_bench.py "$out" --torch_reference "$ref" --smoke --device cpu \
          --ks 2 --budget_s 600 "${@:3}"
    fi
    # One XLA trace of the bf16 k = 5 synthesis call, KD step and epoch, packed into one file
    # (the device tool returns files at most two folders down).
    "$PY" experiments/accelerator_bench.py "$out" --torch_reference "$ref" \
        --profile_dir="$out/profile" "${@:3}"
    rc=$?
    [ -d "$out/profile" ] && tar czf "$out/profile.tgz" -C "$out" profile && rm -rf "$out/profile"
    exit $rc
    ;;
  *) echo "usage: bash experiments/accelerator_bench.sh prepare | run OUT_DIR [driver flags]" >&2; exit 2 ;;
esac
