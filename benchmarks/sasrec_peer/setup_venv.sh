#!/usr/bin/env bash
# Creates the SASRec peer's own venv (default .cache/sasrec-venv; SASREC_VENV overrides) with RecTools
# and every dependency pinned in requirements.txt beside this file. Separate from grec's .venv because
# RecTools 0.19 pins numpy<2 on Python 3.11 and grec needs numpy 2. Idempotent: a stamp file records
# the hash of this script, the pins and the Python version, so a rerun with nothing changed returns
# at once.
#
# Order matters: torch==2.13.0 first and alone (the CPU build). Installed after anything that asks
# for torch, pip would resolve a multi-GB CUDA build instead.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
VENV=${SASREC_VENV:-$ROOT/.cache/sasrec-venv}
STAMP=$VENV/.sasrec-setup-stamp
REQUIREMENTS=$HERE/requirements.txt

version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $version != 3.11 ]]; then
  echo "setup_venv.sh: error: the pins are for Python 3.11, $PY is $version (set PYTHON)" >&2
  exit 2
fi

want=$( (cat "$HERE/setup_venv.sh" "$REQUIREMENTS"; "$PY" --version) | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  echo "setup_venv.sh: $VENV is up to date"
  exit 0
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup_venv.sh: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# -qq: pip's warnings about this machine's package sources are noise here; errors (a resolver
# conflict among them) still print, and `pip check` below fails the script on any broken requirement.
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -qq)
echo "setup_venv.sh: installing torch 2.13.0 (CPU)"
"${PIP[@]}" install torch==2.13.0
echo "setup_venv.sh: installing RecTools and its pinned dependencies"
"${PIP[@]}" install -r "$REQUIREMENTS"
"$VENV/bin/python" -m pip --disable-pip-version-check check >/dev/null || {
  "$VENV/bin/python" -m pip --disable-pip-version-check check >&2
  echo "setup_venv.sh: error: broken requirements in $VENV (above)" >&2
  exit 1
}

echo "$want" > "$STAMP"
echo "setup_venv.sh: done ($VENV: $("$VENV/bin/python" -c 'import rectools; print("RecTools", rectools.__version__)'))"
