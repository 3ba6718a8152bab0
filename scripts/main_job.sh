#!/usr/bin/env bash
# The main job on the embedded default: everything on this machine, nothing to start by hand.
# Each step is a plain `grec` command, so the same steps run against a Ray cluster
# (--address / RAY_ADDRESS), an MLflow server (--tracking-uri) or Redis (--online-store redis://...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(pwd)/.cache/torch_extensions}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

HOME_DIR=${GREC_HOME:-.grec}
DATA=$HOME_DIR/data/movielens-100k

echo "== 1/2 prepare MovieLens-100K into the offline store and build point-in-time training sets"
grec data prepare --dataset movielens-100k --out "$DATA"

echo "== 2/2 materialize the latest features into the online store (SQLite)"
grec data materialize --data "$DATA" --online-store "$HOME_DIR/online.sqlite"
