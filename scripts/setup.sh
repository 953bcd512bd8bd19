#!/usr/bin/env bash
# Set up everything asymcert needs on a fresh machine: a venv with the CPU build of PyTorch,
# the package with its dev extras (pytest, hypothesis, ruff, mypy), and Debian's Fashion-MNIST
# (the default task's data).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch first, pinned: the project's own range (torch>=2.2,<2.15) would otherwise pull a CUDA build.
"$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not installed; run 'sudo apt-get install dataset-fashion-mnist'" \
         "or put the IDX files in \$ASYMCERT_DATA/fashion-mnist" >&2
  fi
fi
touch "$VENV/.installed"
