# Sourced by the accelerator scripts (accelerator_study.sh, nayer_study.sh): `accel_site`
# installs, into one temporary site dir, the wheels of .accel/whl whose package the image
# lacks (ml_collections, Pillow; `bash experiments/accelerator_bench.sh prepare` fetches them)
# and puts the repository and that dir on PYTHONPATH. Needs PY (the interpreter).
accel_site() {
  local site=/tmp/accel_site pair
  for pair in ml_collections:ml_collections PIL:pillow; do
    if ! PYTHONPATH=$site "$PY" -c "import ${pair%%:*}" 2>/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --target $site .accel/whl/"${pair##*:}"-*.whl \
          || return 1
    fi
  done
  export PYTHONPATH="$PWD:$site"
}
