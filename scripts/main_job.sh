#!/usr/bin/env bash
# The main job on the embedded default: everything on this machine, nothing to start by hand —
# a local Ray started by each step (on loopback, with Ray's token auth: the token is generated
# once into .grec/ray_auth_token), MLflow on .grec/mlflow.db, the SQLite online store, and the
# real MovieLens-100K data. Each step is a plain `grec` command, so the same steps run against a
# Ray cluster (--address / RAY_ADDRESS), an MLflow server (--tracking-uri) or Redis
# (--online-store redis://...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(pwd)/.cache/torch_extensions}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

HOME_DIR=.grec
DATA=$HOME_DIR/data/movielens-100k
ONLINE=$HOME_DIR/online.sqlite
MODEL=grec-movielens            # configs/movielens_grec.yaml registers under this name
REPORT=$HOME_DIR/reports/$MODEL-challenger
PORT=${GREC_PORT:-8000}
export GREC_API_TOKEN=${GREC_API_TOKEN:-demo-token}
started=$(date +%s)

echo "== 1/6 prepare MovieLens-100K: offline store, point-in-time training sets (each user's last 20% of ratings test), transforms"
grec data prepare --dataset movielens-100k --split user_time --out "$DATA" --overwrite

echo "== 2/6 materialize the latest features, behavior sequences and seen sets into the online store"
grec data materialize --data "$DATA" --online-store "$ONLINE"

echo "== 3/6 train GRec with DeepSpeed on 2 local Ray workers; register as $MODEL@challenger"
grec train --config configs/movielens_grec.yaml --epochs 4 --no-progress

echo "== 4/6 fit the challenger's recommendation stage: co-visitation, the next-item transformer, recent popularity, blends per task"
grec build-index --model "models:/$MODEL@challenger" --data "$DATA"

echo "== 5/6 evaluate the challenger on the test split (its top-N lists against tuned peers too); promote it if it beats the champion"
grec evaluate --model "models:/$MODEL@challenger" --data "$DATA" --out "$REPORT" --promote

echo "== 6/6 serve models:/$MODEL@champion on 127.0.0.1:$PORT and ask it for recommendations"
grec serve --model "models:/$MODEL@champion" --online-store "$ONLINE" --port "$PORT" &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
python scripts/demo_requests.py --url "http://127.0.0.1:$PORT" --data "$DATA" --online-store "$ONLINE" --user 1 -k 5

cat <<MSG

Done in $(( $(date +%s) - started )) s.
  evaluation report:  $REPORT/report.md
  MLflow UI:          .venv/bin/mlflow ui --backend-store-uri sqlite:///$HOME_DIR/mlflow.db
  serve it yourself:  GREC_API_TOKEN=... .venv/bin/grec serve --model models:/$MODEL@champion --online-store $ONLINE
MSG
