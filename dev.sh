#!/usr/bin/env bash
# One entry point for newcomers and CI:
#   ./dev.sh demo     set up .venv from requirements.lock (first run only) and run the offline demo on digits
#   ./dev.sh test     same set-up, then the test suite (python -m pytest; extra args go to pytest)
#   ./dev.sh setup    only set up .venv
#   ./dev.sh lock     re-resolve every dependency to its newest allowed version in a scratch venv and
#                     write requirements.lock (nothing else changes)
#   ./dev.sh refresh  lock, then rebuild .venv from the new lock and run the tests: meet drift on purpose
# The environment is pinned: requirements.lock lists every package and version ./dev.sh installs,
# transitive ones included; pyproject.toml keeps ranges for users of the library.
# torch==2.13.0 is installed FIRST: a bare `torch` requirement resolved before it pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${EDGECOMPRESS_VENV:-.venv}
PY="$VENV/bin/python"
LOCK=requirements.lock
TORCH=torch==2.13.0
PIP_FLAGS=(-q --disable-pip-version-check)

say() { echo "dev.sh: $*" >&2; }

setup() {
  local marker="$VENV/.edgecompress-installed"
  if [ -f "$marker" ] && [ "$marker" -nt pyproject.toml ] && [ "$marker" -nt "$LOCK" ]; then
    return
  fi
  say "setting up $VENV from $LOCK (first run: ~5-10 min, ~2 GB: torch 2.13 CPU, onnxruntime, transformers, ray, LiteRT)"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  say "[1/3] $TORCH (CPU wheel, first so nothing pulls a CUDA build)"
  "$PY" -m pip install "${PIP_FLAGS[@]}" "$TORCH"
  say "[2/3] $(grep -c '==' "$LOCK") pinned packages from $LOCK"
  "$PY" -m pip install "${PIP_FLAGS[@]}" --no-deps -r "$LOCK"
  say "[3/3] edgecompress itself (editable) and a consistency check"
  "$PY" -m pip install "${PIP_FLAGS[@]}" --no-deps --no-build-isolation -e .   # setuptools comes from the lock
  "$PY" -m pip check >&2
  touch "$marker"
  say "ready: $VENV"
}

lock() {
  local scratch=.venv-lock
  say "resolving the newest versions pyproject.toml allows in a scratch venv ($scratch, ~5-10 min)"
  rm -rf "$scratch"
  python3 -m venv "$scratch"
  "$scratch/bin/python" -m pip install "${PIP_FLAGS[@]}" --upgrade pip
  "$scratch/bin/python" -m pip install "${PIP_FLAGS[@]}" "$TORCH"
  "$scratch/bin/python" -m pip install "${PIP_FLAGS[@]}" -e ".[dev]"
  {
    echo "# The development/CI environment, pinned: every package ./dev.sh installs (torch first), transitive ones"
    echo "# included. Made by './dev.sh lock' on $(date -u +%Y-%m-%d), $("$scratch/bin/python" -c 'import platform; print(platform.python_implementation(), platform.python_version(), platform.machine())')."
    echo "# Refresh to the newest versions and run the tests: ./dev.sh refresh"
    "$scratch/bin/python" -m pip freeze --exclude-editable --all | grep -v -E '^pip==' | LC_ALL=C sort -f
  } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  rm -rf "$scratch"
  say "wrote $LOCK ($(grep -c '==' "$LOCK") packages); git diff $LOCK shows what moved"
}

case "${1:-demo}" in
  setup) setup ;;
  demo) setup; shift || true; "$VENV/bin/edgecompress" demo "$@" ;;
  test) setup; shift || true; "$PY" -m pytest "$@" ;;
  lock) lock ;;
  refresh) lock; rm -f "$VENV/.edgecompress-installed"; setup; shift || true; "$PY" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh [demo|test|setup|lock|refresh] [extra args]" >&2; exit 2 ;;
esac
