#!/usr/bin/env bash
# Start a Dask scheduler and N workers on this machine (or on a login node of a shared
# file system). Writes a scheduler file so that `scalenmf fit --scheduler-file` finds it.
#
#   bash deploy/local/start-cluster.sh [N_WORKERS] [RUN_DIR]
#   scalenmf fit counts.zarr -k 10 -o result.zarr --scheduler-file RUN_DIR/scheduler.json
#   bash deploy/local/stop-cluster.sh RUN_DIR
#
# Environment: HOST (default 127.0.0.1), PORT (8786), DASHBOARD (127.0.0.1:8787),
# THREADS per worker (1), MEMORY per worker (auto), TLS_CA/TLS_CERT/TLS_KEY for TLS.
set -euo pipefail
n="${1:-2}"
run="${2:-${TMPDIR:-/tmp}/scalenmf-cluster}"
host="${HOST:-127.0.0.1}"
port="${PORT:-8786}"
dashboard="${DASHBOARD:-127.0.0.1:8787}"
mkdir -p "$run"
tls_args=()
protocol=tcp
if [ -n "${TLS_CA:-}" ]; then
    tls_args=(--tls-ca-file "$TLS_CA" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
    protocol=tls
fi
export OMP_NUM_THREADS="${THREADS:-1}" OPENBLAS_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
dask scheduler --host "$host" --port "$port" --dashboard-address "$dashboard" \
    --scheduler-file "$run/scheduler.json" --protocol "$protocol" "${tls_args[@]}" \
    >"$run/scheduler.log" 2>&1 &
echo $! >"$run/pids"
for _ in $(seq 50); do [ -s "$run/scheduler.json" ] && break; sleep 0.2; done
[ -s "$run/scheduler.json" ] || { echo "scheduler did not start; see $run/scheduler.log" >&2; exit 1; }
for i in $(seq 1 "$n"); do
    dask worker --scheduler-file "$run/scheduler.json" --nthreads "${THREADS:-1}" \
        --memory-limit "${MEMORY:-auto}" --name "worker-$i" --no-dashboard --host "$host" \
        "${tls_args[@]}" >"$run/worker-$i.log" 2>&1 &
    echo $! >>"$run/pids"
done
echo "scheduler $protocol://$host:$port, $n workers; scheduler file $run/scheduler.json"
