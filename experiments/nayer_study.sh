#!/usr/bin/env bash
# NAYER-5 against Fast-5 on the one-hour CIFAR-10 budget: three teachers x three seeds x both
# methods side by side on one accelerator, at the reduced H200 study's setting (the rows of
# experiments/cifar_study.py, `--config.loop=host`), in one lent window.
#
#   bash experiments/nayer_study.sh OUT DATA
#
# One experiments/accelerator_study.sh per teacher, the three at once. Each trains its teacher
# into $STUDY_ROOT/t_<arch> (unless a checkpoint is there) with the recipe of docs/RESULTS.md
# ("Teachers"; bfloat16, resnet20 / wrn16_2 / vgg8), then runs nayer5_s{0,1,2} and
# fast5_s{0,1,2} on it: 18 rows. STUDY_END_S (default 520 s) bounds each; unfinished rows
# checkpoint at their epoch's end, and the same command again on the still-warm machine resumes
# them (STUDY_END_S=240). OUT gets, per teacher, <arch>.tgz (records.tgz with every row's
# summary, metrics, config and log; the teacher's log; environment.json) and, where it is under
# 15 MB, t_<arch>.tgz (the teacher's workdir, checkpoint included). Collecting them here:
# experiments/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: nayer_study.sh OUT DATA} data=${2:?usage: nayer_study.sh OUT DATA}
root=${STUDY_ROOT:-/tmp/nayer_study}
PY=${PYTHON:-python3}
export STUDY_END_S=${STUDY_END_S:-520}
source experiments/accelerator_site.sh && accel_site || exit 1
# Install and decode once here, so the three studies below find both done.
"$PY" -c "from fastdfkd_jax.data import datasets; datasets.load_dataset('cifar10', '$data')" || exit 1
declare -A recipe=(
  [resnet20]="--config.dtype=bfloat16 --config.epochs=8"
  [wrn16_2]="--config.dtype=bfloat16 --config.model=wrn16_2 --config.epochs=4 --config.optim.lr=0.05 --config.optim.schedule=poly --config.optim.warmup_epochs=1"
  [vgg8]="--config.dtype=bfloat16 --config.model=vgg8 --config.epochs=5 --config.optim.optimizer=adam --config.optim.lr=0.001 --config.optim.weight_decay=0.0001"
)
rows=nayer5_s0,nayer5_s1,nayer5_s2,fast5_s0,fast5_s1,fast5_s2
mkdir -p "$out"
pids=()
for arch in resnet20 wrn16_2 vgg8; do
  mkdir -p "$root/$arch/out"
  STUDY_TEACHER_FLAGS="${recipe[$arch]}" STUDY_WORK="$root/$arch/runs" STUDY_SLOTS=6 \
      bash experiments/accelerator_study.sh "$root/$arch/out" "$root/t_$arch" "$data" "$rows" \
      --teacher_arch=$arch "--flags=--config.loop=host" > "$root/$arch/out/study.log" 2>&1 &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
for arch in resnet20 wrn16_2 vgg8; do
  tar czf "$out/$arch.tgz" -C "$root/$arch/out" --exclude=teacher.tgz . || rc=1
  t=$root/$arch/out/teacher.tgz
  if [ -f "$t" ] && [ "$(stat -c %s "$t")" -lt 15000000 ]; then cp "$t" "$out/t_$arch.tgz"; fi
done
echo "nayer_study: rc=$rc after $SECONDS s"
exit $rc
