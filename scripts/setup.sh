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
# UCI SpamBase: one file (kernlab/data/spam.rda) from Debian's r-cran-kernlab, extracted from the .deb
# rather than installed (installing it pulls in R). Skipped, with a note, where apt cannot download.
SPAM_CACHE="${ASYMCERT_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/asymcert}/spambase"
if [ ! -f "$SPAM_CACHE/spam.rda" ] && [ ! -f /usr/lib/R/site-library/kernlab/data/spam.rda ]; then
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    SPAM_TMP="$(mktemp -d)"
    if (cd "$SPAM_TMP" && apt-get download -qq r-cran-kernlab >/dev/null 2>&1 \
        && dpkg-deb -x r-cran-kernlab_*.deb kl); then
      mkdir -p "$SPAM_CACHE" && cp "$SPAM_TMP/kl/usr/lib/R/site-library/kernlab/data/spam.rda" "$SPAM_CACHE/"
    else
      echo "note: SpamBase not fetched (apt-get download r-cran-kernlab failed); the spambase task needs it" >&2
    fi
    rm -rf "$SPAM_TMP"
  fi
fi
touch "$VENV/.installed"
