#!/usr/bin/env bash
# A/B timing of kernel variants on the GPU machine: wheels built here into .wv/<name>/ (git-ignored;
# carry .wv), each installed apart, then scripts/sweep_rmsnorm.py alternated between them twice.
VARIANTS=${VARIANTS:-$(ls .wv)}
for v in $VARIANTS; do python3 -m pip install -q --no-index --no-deps --target /tmp/s_$v .wv/$v/*.whl; done
for rep in 1 2; do for v in $VARIANTS; do for shape in "16384 8192 bfloat16" "8192 4096 bfloat16"; do echo -n "$v "; PYTHONPATH=/tmp/s_$v python3 scripts/sweep_rmsnorm.py $shape; done; done; done
