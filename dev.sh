#!/usr/bin/env bash
# metalcore developer entry point. Every command first does the whole set-up (idempotent):
# a virtualenv in .venv, the Python requirements from PyPI, and a release build of the package.
#
#   ./dev.sh bench [--gpu] [--quick] [--out DIR]   benchmark table of ours vs PyTorch (CPU by default)
#   ./dev.sh test                                  every test: cargo test + pytest
#   ./dev.sh wheel                                 abi3 wheel into dist/ (for the GPU machine)
#   ./dev.sh setup                                 set-up only
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

setup() {
    local py=${PYTHON:-}
    if [ -z "$py" ]; then
        for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { py=$c; break; }; done
    fi
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    local stamp=.venv/.requirements.sha
    local want
    want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -r requirements-dev.txt
        echo "$want" > "$stamp"
    fi
    if ! VIRTUAL_ENV=$ROOT/.venv PATH=$ROOT/.venv/bin:$PATH .venv/bin/maturin develop --release -q >.venv/build.log 2>&1; then
        cat .venv/build.log; echo "build failed" >&2; exit 1
    fi
}

nvrtc_lib() {
    .venv/bin/python - <<'PY'
import glob, os, sys
for base in sys.path:
    for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
        if glob.glob(os.path.join(base, sub, "libnvrtc.so*")):
            print(os.path.join(base, sub)); sys.exit(0)
PY
}

cmd=${1:-help}
shift || true
case "$cmd" in
    setup) setup ;;
    bench)
        setup
        .venv/bin/python -m metalcore.bench "$@" ;;
    test)
        setup
        export METALCORE_REQUIRE_NVRTC=1
        LD_LIBRARY_PATH="$(nvrtc_lib):${LD_LIBRARY_PATH:-}" cargo test -p metalcore-core --release
        .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
        # The CPU kernels also ship a baseline (non-AVX2) copy: run the CPU tests through it too.
        METALCORE_CPU_BASELINE=1 .venv/bin/python -m pytest tests -q -p no:cacheprovider -k "cpu" "$@"
        # Activations, softmax, cross-entropy and RoPE also ship an AVX-512 copy: where the CPU
        # runs that one by default, run their CPU tests through the AVX2 copy as well.
        METALCORE_CPU_ISA=avx2 .venv/bin/python -m pytest tests/test_activations.py tests/test_softmax.py \
            tests/test_cross_entropy.py tests/test_rope.py -q -p no:cacheprovider -k "cpu" "$@" ;;
    wheel)
        setup
        .venv/bin/maturin build --release -q -o dist >.venv/wheel.log 2>&1 || { cat .venv/wheel.log; exit 1; }
        ls -1 dist/*.whl ;;
    *)
        sed -n '2,9p' "$0"; exit 2 ;;
esac
