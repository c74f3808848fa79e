#!/usr/bin/env bash
# The README's two commands:  bash run.sh demo   and   bash run.sh test
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
bash scripts/bootstrap.sh
venv="${SCALENMF_VENV:-$here/.venv}"
cmd="${1:-demo}"; shift || true
case "$cmd" in
    demo) exec "$venv/bin/scalenmf" demo "$@" ;;
    test)
        bash scripts/ensure_chromium.sh
        echo "test: $venv/bin/python -m pytest -q $* (the whole suite: 10-15 minutes)" >&2
        exec "$venv/bin/python" -m pytest -q "$@" ;;
    lint) "$venv/bin/ruff" check scalenmf tests benchmarks && exec "$venv/bin/mypy" scalenmf ;;
    *) echo "usage: bash run.sh demo|test|lint [args...]" >&2; exit 2 ;;
esac
