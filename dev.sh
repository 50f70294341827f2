#!/usr/bin/env bash
# One entry point for newcomers and CI:
#   ./dev.sh demo   set up .venv (first run only) and run the offline demo on scikit-learn's digits
#   ./dev.sh test   set up .venv (first run only) and run the test suite
#   ./dev.sh setup  only set up .venv
# torch==2.13.0 is installed FIRST: a bare `torch` requirement resolved before it pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${EDGECOMPRESS_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.edgecompress-installed" ] || [ pyproject.toml -nt "$VENV/.edgecompress-installed" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e ".[build,plot,test]"
    "$PY" -m pip install -q -e ".[tflite]"      # litert-torch + ai-edge-litert: --target tflite and its tests
    touch "$VENV/.edgecompress-installed"
  fi
}

case "${1:-demo}" in
  setup) setup ;;
  demo) setup; shift || true; "$VENV/bin/edgecompress" demo "$@" ;;
  test) setup; shift || true; "$PY" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh [demo|test|setup] [extra args]" >&2; exit 2 ;;
esac
