#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv with the dev extras installed.
# Idempotent: it reinstalls only when pyproject.toml, setup.py or the compiled kernel's
# C source changed since the last install (the editable install builds that kernel in place).
# Says what it does on stderr: the first install takes minutes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SCALENMF_VENV:-$here/.venv}"
py="${PYTHON:-python3}"
say() { echo "set-up: $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtualenv $venv with $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
fi
stamp="$venv/.scalenmf-installed"
want="$(cat "$here/pyproject.toml" "$here/setup.py" "$here"/scalenmf/kernels/*.c | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing scalenmf and its dev extras (torch, matplotlib, anndata, pytest, ...) into"
    say "  $venv: a few minutes the first time; log: $venv/.install.log"
    start=$SECONDS
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q -e "$here[dev]" --config-settings editable_mode=compat >"$venv/.install.log" 2>&1 || { cat "$venv/.install.log" >&2; exit 1; }
    echo "$want" > "$stamp"
    say "installed in $((SECONDS - start))s; put scalenmf on PATH with: source $venv/bin/activate"
fi
