#!/usr/bin/env bash
# Act kernel tuning sweep (vectors per thread per iteration x blocks per SM), run on the GPU machine
# after `./dev.sh wheel` here (carry dist/). Prints device times per knob setting.
set -u
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site dist/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
for shape in "8192 14336 bfloat16" "8192 14336 float32"; do
  echo "### $shape"
  for u in 1 2; do
    for b in 16 64 256 1024; do
      METALCORE_ACT_UNROLL=$u METALCORE_ACT_BLOCKS_PER_SM=$b python3 scripts/sweep_act.py $shape
    done
  done
done
