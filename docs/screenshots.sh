#!/usr/bin/env bash
# Rebuild the README's screenshots: a live prefect server and mlflow server on 127.0.0.1, the deployments
# served with their cron schedules, two nights through the nightly deployment on a small budget (the second
# with other tuning settings, so that a new version is compared with the champion), then headless Chromium
# on the two UIs. Needs Debian's chromium (apt-get install chromium).
#   bash docs/screenshots.sh            (from the repository root; takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
WORK=$(mktemp -d /tmp/vae-shots.XXXX)
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export PREFECT_HOME=$WORK/prefect PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=4200
export PREFECT_API_URL=http://127.0.0.1:4200/api
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { for _ in $(seq 120); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 1; done; echo "no answer from $1"; exit 1; }
setsid "$BIN/prefect" server start --host 127.0.0.1 >"$WORK/prefect.log" 2>&1 & pids+=($!)
setsid "$BIN/mlflow" server --host 127.0.0.1 --port 5000 --workers 1 \
  --backend-store-uri "sqlite:///$WORK/mlflow.db" --artifacts-destination "$WORK/artifacts" >"$WORK/mlflow.log" 2>&1 & pids+=($!)
wait_for http://127.0.0.1:4200/api/health
wait_for http://127.0.0.1:5000/health

cd "$WORK"
setsid "$BIN/python" -m flows.deploy --tracking-uri http://127.0.0.1:5000 --trials 4 >"$WORK/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 60); do "$BIN/prefect" deployment inspect vae-pipeline/nightly >/dev/null 2>&1 && break; sleep 1; done
night() {  # the nightly deployment once, with these -p parameters
  "$BIN/prefect" deployment run vae-pipeline/nightly "$@" --watch >>"$WORK/run.log" 2>&1 \
    || { tail -40 "$WORK/run.log"; exit 1; }
}
night -p trials=6 -p epochs=20 -p iw_samples=100
night -p trials=6 -p epochs=30 -p iw_samples=100  # new settings: a new study and candidate

shoot() {  # URL OUT
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --no-first-run --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars --window-size=1400,1000 \
    --virtual-time-budget=30000 --screenshot="$2" "$1" >/dev/null 2>&1
}
api() { curl -fsS "http://127.0.0.1:5000/api/2.0/mlflow/$1"; }
py() { "$BIN/python" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
latest=$(api "registered-models/get?name=vae-mnist-5k" | py "max(int(v['version']) for v in d['registered_model']['latest_versions'])")
version=$(api "model-versions/get?name=vae-mnist-5k&version=$latest" | py "json.dumps(d['model_version'])")
run_id=$(echo "$version" | py "d['run_id']")
model_id=$(echo "$version" | py "d.get('model_id') or d['source'].split('/')[-1]")
exp_id=$(api "runs/get?run_id=$run_id" | py "d['run']['info']['experiment_id']")
dep_id=$(curl -fsS -X POST http://127.0.0.1:4200/api/deployments/filter -H 'Content-Type: application/json' -d '{}' \
  | "$BIN/python" -c "import json,sys; print([d['id'] for d in json.load(sys.stdin) if d['name']=='nightly'][0])")
flow_run=$(curl -fsS -X POST http://127.0.0.1:4200/api/flow_runs/filter -H 'Content-Type: application/json' \
  -d '{"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}' \
  | "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
shoot "http://127.0.0.1:5000/#/experiments/$exp_id/runs" "$ROOT/docs/mlflow-nights.png"
shoot "http://127.0.0.1:5000/#/experiments/$exp_id/runs/$run_id/model-metrics" "$ROOT/docs/mlflow-run.png"
shoot "http://127.0.0.1:5000/#/experiments/$exp_id/models/$model_id" "$ROOT/docs/mlflow-logged-model.png"
shoot "http://127.0.0.1:5000/#/experiments/$exp_id/runs/$run_id/artifacts/comparison/reconstructions.png" \
  "$ROOT/docs/mlflow-comparison.png"
shoot "http://127.0.0.1:5000/#/models/vae-mnist-5k/versions/$latest" "$ROOT/docs/mlflow-registered-model.png"
shoot "http://127.0.0.1:4200/deployments/deployment/$dep_id" "$ROOT/docs/prefect-deployment.png"
shoot "http://127.0.0.1:4200/runs/flow-run/$flow_run" "$ROOT/docs/prefect-flow-run.png"
echo "screenshots in docs/ (work folder $WORK)"
