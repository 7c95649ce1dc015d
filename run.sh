#!/usr/bin/env bash
# One entry point that sets up everything keras_qrobust needs (once) and runs a job.
#
#   ./run.sh demo [ARGS]         the main job on the embedded default: keras-qrobust guard --quick
#                                on Fashion-MNIST, from the committed robust cnn_small (TRADES, trained
#                                by benchmarks/demo_model.py): quantize, attack, choose, export to
#                                int8 TFLite, re-measure, report in results/guard (candidates w8a8
#                                and w4a4; ARGS override, e.g. --candidates w8a8,w6a6,w4a4)
#   ./run.sh test [PYTEST ARGS]  run the test suite (it also builds the docs site, strict), one test
#                                file per worker process (KQ_TEST_WORKERS, default min(CPUs, 4))
#   ./run.sh bench NAME [ARGS]   run benchmarks/NAME.py (writes JSON + Markdown results)
#   ./run.sh setup               only set up
#
# Set-up: the Debian package dataset-fashion-mnist (unless KERAS_QROBUST_DATA points at the
# IDX files), for the tests also Debian's chromium (the report is rendered headless), and a
# Python 3.11 virtual environment in .venv (KQ_VENV to move it) with the package, its extras
# and the pinned stack of constraints.txt; skipped when nothing it depends on changed.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${KQ_VENV:-$ROOT/.venv}
EXTRAS="test,akida,bench,docs,ray"
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_MODEL=benchmarks/checkpoints/fashion_mnist_cnn_small_e15_s0_fit_dropout0.0_attacktrades_beta3.0_eps0.1_steps7_lrdrop_ema0.999.keras

say() { printf '[run.sh] %s\n' "$*" >&2; }

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  say "Python 3.11 not found: the pinned stack (constraints.txt) is tested on Python 3.11."
  say "Install it (e.g. apt-get install python3.11 python3.11-venv, or pyenv install 3.11) and rerun."
  exit 1
}

# apt_install PACKAGE WHAT_ELSE: install a Debian package (as root or through sudo), or say how.
apt_install() {
  local package=$1 otherwise=$2
  if ! command -v apt-get >/dev/null 2>&1; then
    say "$package is missing and apt-get is not available: $otherwise"; exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      say "Installing $package needs root: run 'apt-get install $package' as root, or $otherwise"; exit 1
    fi
  fi
  say "installing the Debian package $package"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "$package" >/dev/null; }
}

install_fashion_mnist() {
  if [ -n "${KERAS_QROBUST_DATA:-}" ] || [ -f "$FMNIST" ]; then return 0; fi
  apt_install dataset-fashion-mnist "set KERAS_QROBUST_DATA to a folder holding the four Fashion-MNIST IDX .gz files."
}

install_chromium() {
  if [ -n "${KQ_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then return 0; fi
  apt_install chromium "set KQ_CHROMIUM to a Chromium executable (the report rendering test needs one)."
}

setup() {
  install_fashion_mnist
  local stamp="$VENV/.keras-qrobust-setup"
  local want
  want=$(cat pyproject.toml constraints.txt "$0" | sha256sum | cut -d' ' -f1)-$EXTRAS
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  say "installing keras_qrobust[$EXTRAS] with the pinned stack (a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]"
  # tf_keras and cnn2snn also require the `tensorflow` wheel (a CUDA build), whose files land
  # on top of tensorflow-cpu's: put the CPU build back on top (same version, no CUDA probing).
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
      -c constraints.txt tensorflow-cpu
  fi
  "$VENV/bin/python" -m pip check >/dev/null
  echo "$want" > "$stamp"
}

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  demo)  setup; exec "$VENV/bin/keras-qrobust" guard --quick --model "$DEMO_MODEL" --candidates w8a8,w4a4 "$@" ;;
  test)  # one test file per worker process (pytest-xdist): KQ_TEST_WORKERS, default min(CPUs, 4)
         setup; install_chromium
         workers=${KQ_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}; [ "$workers" -gt 4 ] && workers=4
         exec "$VENV/bin/python" -m pytest -n "$workers" --dist loadfile "$@" ;;
  bench)
    [ $# -ge 1 ] || { say "usage: ./run.sh bench NAME [ARGS]  (NAME: $(ls benchmarks/*.py | xargs -n1 basename | sed 's/\.py$//' | grep -v '^_' | tr '\n' ' '))"; exit 2; }
    name=$1; shift; setup; exec "$VENV/bin/python" "benchmarks/$name.py" "$@" ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
