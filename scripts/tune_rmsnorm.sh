#!/usr/bin/env bash
# RMSNorm kernel tuning sweep, run on the GPU machine after `./dev.sh wheel` here (carry dist/).
# Prints device times per knob setting; results of one run: bench/results/rmsnorm-tuning-nvidia-h200.md
set -u
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site dist/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
for shape in "8192 4096 bfloat16" "16384 8192 bfloat16" "65536 1024 bfloat16" "8192 4096 float32"; do
  echo "### $shape"
  for c in "16 1" "32 1" "32 4" "32 8" "64 1" "64 4"; do set -- $c
    METALCORE_NORM_ELEMS_FWD=$1 METALCORE_NORM_MINB_FWD=$2 python3 scripts/sweep_rmsnorm.py $shape
  done
  for c in "8 1" "8 2" "8 3" "8 4" "16 3" "16 4"; do set -- $c
    METALCORE_NORM_ELEMS_BWD=$1 METALCORE_NORM_MINB_BWD=$2 python3 scripts/sweep_rmsnorm.py $shape
  done
done
