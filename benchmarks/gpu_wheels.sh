#!/usr/bin/env bash
# Download into ./.whl the wheels gpu_check.sh installs on a GPU machine without a package
# index (Python 3.12, x86-64 manylinux): scalenmf's dependencies that such images lack, at
# the versions of this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
mkdir -p .whl
for name in dask distributed zarr numcodecs donfig crc32c fast_matrix_market isal partd \
    locket tblib zict tornado sortedcontainers cloudpickle toolz msgpack tqdm; do
    version=$($py -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null) \
        || { echo "not installed here: $name"; continue; }
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "$name==$version" \
        || echo "no wheel: $name==$version"
done
ls .whl
