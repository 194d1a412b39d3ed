#!/usr/bin/env bash
# GPU-machine helper for Python-only changes: installs the carried wheel (dist/) into /tmp/site,
# then overlays this tree's Python package on it (the native module stays the wheel's).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl
if ls .whl/liger*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/liger*.whl; fi
cp python/metalcore/*.py /tmp/site/metalcore/
cp python/metalcore/bench/*.py /tmp/site/metalcore/bench/
