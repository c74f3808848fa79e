#!/usr/bin/env bash
# Stop the processes start-cluster.sh started (by the pids it recorded).
set -euo pipefail
run="${1:-${TMPDIR:-/tmp}/scalenmf-cluster}"
[ -f "$run/pids" ] || { echo "no $run/pids" >&2; exit 1; }
# Workers first, the scheduler (first line) last.
tac "$run/pids" | while read -r pid; do kill "$pid" 2>/dev/null || true; done
rm -f "$run/pids" "$run/scheduler.json"
