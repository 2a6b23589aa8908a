#!/usr/bin/env bash
# Rows of the CIFAR-10 comparison study (experiments/cifar_study.py) side by side on one accelerator,
# for rows too long for a CPU session (CMI-50: about 3.5 one-core hours each).
#
#   bash experiments/accelerator_study.sh OUT TEACHER DATA RUN[,RUN...] [cifar_study.py flags]
#
# The runs are the study's own commands (`cifar_study.py --list`), one process each, not
# pinned. .accel/whl (bash experiments/accelerator_bench.sh prepare) supplies ml_collections and
# Pillow where the image lacks them (experiments/accelerator_site.sh). Workdirs stay in
# /tmp/study (STUDY_WORK) on the machine; OUT/records.tgz gets, per run, what fastdfkd_jax.table and .plot read
# (summary.json, metrics.jsonl), the config and the log, not the checkpoints (one archive:
# the device tool returns only a few files), and OUT/teacher.tgz the teacher's workdir, so
# a later session can rerun rows on the same teacher. STUDY_END_S (default 480 s
# after the script starts) bounds the runs: then the unfinished ones get SIGTERM, checkpoint
# and stop (killed after STUDY_GRACE_S, default 30 s), so a second call on the still-warm
# machine resumes them; records.tgz keeps their curves. TEACHER: docs/study_teacher, the
# study's teacher (its checkpoint is not in git). Where TEACHER has no checkpoints/ it is trained first with
# configs/teacher.py:cifar10 and STUDY_TEACHER_FLAGS (the recipe: "--config.epochs=8").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:?usage: accelerator_study.sh OUT TEACHER DATA RUN[,RUN...]}
teacher=${2:?teacher workdir} data=${3:?data archive} runs=${4:?run names}
source experiments/accelerator_site.sh && accel_site || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# One persistent compilation cache for all runs: a second call on the same machine resumes the
# stopped runs from their checkpoints without compiling again (runs compiled 91-138 s each
# when 14 started at once). A cached executable is the one the compile gives.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/study_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# Decode the archive once before the runs start, so they do not all write its cache at once.
"$PY" -c "from fastdfkd_jax.data import datasets; datasets.load_dataset('cifar10', '$data')" || exit 1
"$PY" - "$out" <<'EOF' || exit 1
import json, os, subprocess, sys
import jax
sys.path.insert(0, "experiments")
from accelerator_bench import environment   # python, nvidia-smi: the benchmark's own record
env = dict(environment(jax.default_backend()), jax=jax.__version__,
           devices=[d.device_kind for d in jax.devices()],
           commit=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip())
os.makedirs(sys.argv[1], exist_ok=True)
with open(os.path.join(sys.argv[1], "environment.json"), "w") as f:
  json.dump(env, f, indent=1)
EOF
if [ ! -d "$teacher/checkpoints" ]; then
  "$PY" -m fastdfkd_jax.main --workdir="$teacher" --config=configs/teacher.py:cifar10 \
      --config.dataset.data_dir="$data" ${STUDY_TEACHER_FLAGS:-} > "$out/teacher.log" 2>&1 || exit 1
  echo "teacher trained in $SECONDS s"
fi
n=$(tr ',' '\n' <<<"$runs" | grep -c .)
work=${STUDY_WORK:-/tmp/study}
slots=${STUDY_SLOTS:-$n}
"$PY" experiments/cifar_study.py --out=$work --teacher="$teacher" --data_dir="$data" --runs="$runs" \
    --cores="$(seq -s, 0 $((slots - 1)))" --no_pin --python="$PY" "${@:5}" &
study=$!
deadline=${STUDY_END_S:-480}
runs_pat="[f]astdfkd_jax.main --workdir=$work"   # the runs, never this script's own shell
while kill -0 $study 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 2; done
if kill -0 $study 2>/dev/null; then
  # SIGTERM: each run checkpoints at its next safe point (its epoch's end) and exits 0, so a
  # second call resumes it from there; a run still alive after STUDY_GRACE_S is killed (it
  # resumes from its previous checkpoint, or from the start without one). The grace must
  # outlast one epoch: about 3 s on the H200 with 14 runs sharing it, 30-60 s on one CPU core.
  echo "deadline: stopping $(pgrep -fc "$runs_pat") unfinished runs"
  kill $study; wait $study 2>/dev/null
  pkill -TERM -f "$runs_pat"
  grace=$((SECONDS + ${STUDY_GRACE_S:-30}))
  while pgrep -f "$runs_pat" >/dev/null && [ $SECONDS -lt $grace ]; do
    sleep 1
  done
  pkill -KILL -f "$runs_pat"
  rc=124   # as timeout(1): the records of what ran still follow
else
  wait $study; rc=$?
fi
rec=$(mktemp -d)
for d in "$work"/*/; do
  name=$(basename "$d")
  mkdir -p "$rec/$name"
  find "$d" -maxdepth 1 -type f -size -20M ! -name .lock -exec cp {} "$rec/$name/" \;
  cp "$work/$name.log" "$rec/$name/" 2>/dev/null
done
tar czf "$out/records.tgz" -C "$rec" . && rm -rf "$rec"
tar czf "$out/teacher.tgz" -C "$(dirname "$teacher")" --exclude=.lock "$(basename "$teacher")"
exit $rc
