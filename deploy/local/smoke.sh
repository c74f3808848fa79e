#!/usr/bin/env bash
# Smoke test: two workers on 127.0.0.1, a fit through the scheduler file, then stop.
set -euo pipefail
run="$(mktemp -d)"
trap 'bash "$(dirname "$0")/stop-cluster.sh" "$run" || true; rm -rf "$run"' EXIT
PORT="${PORT:-0}" DASHBOARD="${DASHBOARD:-127.0.0.1:0}" bash "$(dirname "$0")/start-cluster.sh" 2 "$run"
python - "$run/x.zarr" <<'PY'
import sys, numpy as np, scalenmf
rng = np.random.default_rng(0)
X = rng.poisson(rng.gamma(1, 1, (96, 4)) @ rng.gamma(1, 1, (4, 400)) * 5)
scalenmf.write_matrix(sys.argv[1], X.astype(float), block_cols=100)
PY
scalenmf fit "$run/x.zarr" -k 4 -o "$run/out.zarr" --scheduler-file "$run/scheduler.json" --max-iter 30 --no-progress
scalenmf info "$run/out.zarr"
