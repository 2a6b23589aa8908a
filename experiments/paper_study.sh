#!/usr/bin/env bash
# One window of the paper-scale study on a lent accelerator (experiments/paper_study.py):
#
#   run(command="bash experiments/paper_study.sh", carry=[".paper_carry", ".accel"],
#       timeout_s=590)
#
# .paper_carry is what `paper_study.py prepare` chose for this call; .accel/whl holds the
# ml_collections wheel (`bash experiments/accelerator_bench.sh prepare`), installed only where
# the image lacks it. Work folders stay in .paper_work (kept while the machine is warm, so a
# second call at once resumes there); what the next window needs goes to $OUT as a bundle
# (`paper_study.py collect` reads it here). PAPER_DEADLINE_S (default 480) bounds the runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/paper_site .accel/whl/ml_collections-*.whl || exit 1
  export PYTHONPATH=/tmp/paper_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:?OUT: the folder whose files come back}
exec "$PY" experiments/paper_study.py run --store=.paper_carry --work=.paper_work --out="$out" \
    --deadline_s="${PAPER_DEADLINE_S:-480}" --slots="${PAPER_SLOTS:-4}" "$@"
